"""aligntune's own engines, for algorithms TRL does not offer (PPO: TRL removed its PPOTrainer in 1.13)."""
