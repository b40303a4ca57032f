"""PPO on aligntune's native engine: the ONE mapping from RunConfig to the engine's config, and the build.

PPO for language models as in Ziegler et al. 2019 (arXiv:1909.08593) and Stiennon et al. 2020
(arXiv:2009.01325): a policy, a separate critic (value model), a frozen reference, rewards from the
run's reward functions with a per-token KL penalty to the reference, GAE advantages and PPO's clipped
objective (Schulman et al. 2017). The math is in `ppo_math.py`, the models in `ppo_models.py`, the
training loop in `ppo_trainer.py`.

Batch arithmetic (one step = one rollout):
    train.batch_size          prompts per step, one completion each (the rollout batch)
    algorithm.num_mini_batches  the rollout is shuffled and split into this many mini-batches
                              -> one optimizer update each, algorithm.ppo_epochs times over
    train.micro_batch_size    sequences per forward/backward (gradient accumulation within a
                              mini-batch; rollout forwards and generation run in chunks of it too)
So a step makes ppo_epochs x num_mini_batches optimizer updates; the learning-rate schedule advances
once per step (as TRL's former PPOTrainer did). Steps: train.max_steps, or num_epochs passes over the
prompts (ceil(num_epochs x rows / batch_size)).

Held-out prompts (dataset.eval_split / eval_fraction) are scored every train.eval_steps and after training:
the mean reward of sampled completions, logged as eval_reward and eval_rewards/<name>/mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aligntune.config.schema import PPOAlgorithmConfig, RunConfig
from aligntune.core.inputs import BuildInputs, Built

# aligntune key -> the PPOEngineConfig field it sets (tests check every algorithm.* and train.* key is here or below).
MAPPED_FIELDS = {
    "seed": "seed", "device": "device", "model.dtype": "precision", "model.trust_remote_code": "trust_remote_code",
    "train.batch_size": "batch_size", "algorithm.num_mini_batches": "mini_batch_size",
    "train.micro_batch_size": "micro_batch_size", "train.max_steps": "max_steps", "train.num_epochs": "num_epochs",
    "dataset.shuffle": "shuffle", "train.learning_rate": "learning_rate", "train.lr_scheduler": "lr_scheduler",
    "train.warmup_ratio": "warmup_ratio", "train.weight_decay": "weight_decay", "train.max_grad_norm": "max_grad_norm",
    "train.gradient_checkpointing": "gradient_checkpointing", "train.logging_steps": "logging_steps",
    "algorithm.temperature": "temperature", "algorithm.top_p": "top_p",
    "algorithm.max_completion_length": "max_completion_length", "algorithm.missing_eos_penalty": "missing_eos_penalty",
    "rewards.<name>": "reward_names", "rewards.<name>.weight": "reward_weights", "algorithm.reward_clip": "reward_clip",
    "algorithm.whiten_rewards": "whiten_rewards", "algorithm.beta": "beta", "algorithm.kl_estimator": "kl_estimator",
    "algorithm.adaptive_kl": "adaptive_kl", "algorithm.target_kl": "target_kl", "algorithm.kl_horizon": "kl_horizon",
    "algorithm.gamma": "gamma", "algorithm.lam": "lam", "algorithm.cliprange": "cliprange",
    "algorithm.cliprange_value": "cliprange_value", "algorithm.vf_coef": "vf_coef", "algorithm.ppo_epochs": "ppo_epochs",
    "algorithm.early_stop_kl": "early_stop_kl", "algorithm.value_model": "value_model",
    "train.eval_steps": "eval_steps", "logger": "report_to", "train.save_steps": "save_steps",
    "train.save_total_limit": "save_total_limit",
}
# Keys that reach PPO another way, or are refused by the mapping because PPO has no use for them.
HANDLED_ELSEWHERE = {
    "train.log_samples": "the run recorder (samples.jsonl)",
    "dataset.eval_split": "the job's held-out prompts (PPOTrainer.evaluate: reward of sampled completions)",
    "dataset.eval_fraction": "the job's held-out prompts (PPOTrainer.evaluate: reward of sampled completions)",
    "dataset.max_prompt_length": "the job fits prompts to it (aligntune/data/lengths.py) before the engine sees them",
    "dataset.truncation_mode": "the job fits prompts to it (aligntune/data/lengths.py) before the engine sees them",
    "backend.trl_args": "refused: the native engine is not TRL",
    "train.on_nonfinite": "NonFiniteGuard: rewards as computed, gradients before each update, the logged loss",
    "train.log_completions": "refused for PPO by the schema (TRL's completions table is GRPO/RLOO's)",
    "train.shared_prefix": "refused by the registry for backend=native (it shares prompts in TRL's GRPO/RLOO scoring)",
    "train.keep_freed_memory": "the job, for the whole process (aligntune/run/memory.py keep_freed_memory)",
}


@dataclass(frozen=True)
class PPOEngineConfig:
    """Everything the native PPO engine reads. Built only by `ppo_engine_config`."""

    output_dir: str
    seed: int
    device: str  # cpu | cuda (resolved)
    precision: str  # fp32 | bf16 | fp16 (resolved compute precision; master weights fp32)
    # batches
    batch_size: int  # prompts (= sequences) per rollout step
    mini_batch_size: int  # sequences per optimizer update
    micro_batch_size: int  # sequences per forward/backward
    max_steps: int | None
    num_epochs: float
    shuffle: bool
    # optimisation
    learning_rate: float
    lr_scheduler: str
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    gradient_checkpointing: bool
    logging_steps: int
    eval_steps: int | None  # evaluate on held-out prompts every N steps (and at the end, through the job)
    report_to: tuple[str, ...]  # experiment trackers, as transformers' TrainingArguments.report_to
    save_steps: int | None  # checkpoint every N steps (and at the last); null: only when interrupted or diverging
    save_total_limit: int | None  # keep the last N checkpoints (null: all)
    # rollouts
    temperature: float
    top_p: float
    max_completion_length: int
    missing_eos_penalty: float | None
    reward_names: tuple[str, ...]
    reward_weights: tuple[float, ...]
    reward_clip: float | None
    whiten_rewards: bool
    # KL penalty
    beta: float
    kl_estimator: str
    adaptive_kl: bool
    target_kl: float
    kl_horizon: int
    # advantages and losses
    gamma: float
    lam: float
    cliprange: float
    cliprange_value: float
    vf_coef: float
    ppo_epochs: int
    early_stop_kl: float | None
    # critic
    value_model: str
    trust_remote_code: bool = field(default=False)


def ppo_engine_config(run: RunConfig, output_dir: str) -> PPOEngineConfig:
    """The native PPO engine's config for `run`. Pure (no I/O): unit-tested key by key.

    Keys that have no meaning for PPO (backend.trl_args) are refused by the pre-flight (core/registry.py), and the
    batch arithmetic by the schema.
    """
    from aligntune.models.loading import compute_precision, resolve_device

    algo, t = run.algorithm, run.train
    if not isinstance(algo, PPOAlgorithmConfig):
        raise TypeError(f"ppo_engine_config needs a PPO config, got {type(algo).__name__}")
    mini = t.batch_size // algo.num_mini_batches  # the schema checked that it divides (RunConfig.check_mini_batches)
    micro = t.micro_batch_size or mini
    device = resolve_device(run.device)
    return PPOEngineConfig(
        output_dir=output_dir,
        seed=run.seed,
        device=device,
        precision=compute_precision(run.model, device),
        batch_size=t.batch_size,
        mini_batch_size=mini,
        micro_batch_size=micro,
        max_steps=t.max_steps,
        num_epochs=t.num_epochs,
        shuffle=run.dataset.shuffle,
        learning_rate=t.learning_rate,
        # transformers' "constant" schedule ignores warmup: with warmup asked for, warm up then hold (as common_args)
        lr_scheduler="constant_with_warmup" if t.lr_scheduler == "constant" and t.warmup_ratio > 0 else t.lr_scheduler,
        warmup_ratio=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        gradient_checkpointing=t.gradient_checkpointing,
        logging_steps=t.logging_steps,
        eval_steps=t.eval_steps,
        report_to=tuple(run.logger),
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        temperature=algo.temperature,
        top_p=algo.top_p,
        max_completion_length=algo.max_completion_length,
        missing_eos_penalty=algo.missing_eos_penalty,
        reward_names=tuple(run.rewards),
        reward_weights=tuple(r.weight for r in run.rewards.values()),
        reward_clip=algo.reward_clip,
        whiten_rewards=algo.whiten_rewards,
        beta=algo.beta,
        kl_estimator=algo.kl_estimator,
        adaptive_kl=algo.adaptive_kl,
        target_kl=algo.target_kl,
        kl_horizon=algo.kl_horizon,
        gamma=algo.gamma,
        lam=algo.lam,
        cliprange=algo.cliprange,
        cliprange_value=algo.cliprange_value,
        vf_coef=algo.vf_coef,
        ppo_epochs=algo.ppo_epochs,
        early_stop_kl=algo.early_stop_kl,
        value_model=algo.value_model,
        trust_remote_code=run.model.trust_remote_code,
    )


def build(inputs: BuildInputs) -> Built:
    """A native `PPOTrainer` for the run. Every check that can fail runs here, before training starts:
    config, data, rewards, the value model's kind and tokenizer, then the models load."""
    from transformers import set_seed

    from aligntune.backends.native import ppo_models
    from aligntune.backends.native.ppo_trainer import PPOTrainer

    cfg = ppo_engine_config(inputs.config, str(inputs.checkpoint_dir))
    dataset, held_out = inputs.prompt_splits()
    reward_funcs = inputs.reward_functions([dataset[i] for i in range(min(len(dataset), 4))])  # checked on real rows
    value_source = None
    if cfg.value_model != "policy":
        value_source = ppo_models.check_value_model(cfg.value_model, inputs.tokenizer, cfg.trust_remote_code)
    set_seed(cfg.seed)  # the critic's fresh value head and sampling are reproducible
    policy = inputs.load_policy(fp32_weights=True)  # the engine computes in bf16/fp16 under autocast
    models = ppo_models.build_models(policy.model, policy.peft_config, value_source, cfg)
    trainer = PPOTrainer(cfg, models, inputs.tokenizer, dataset, reward_funcs, inputs.callbacks, eval_dataset=held_out)
    return Built.of(trainer, policy)
