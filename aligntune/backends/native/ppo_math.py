"""The math of PPO for RLHF, as pure functions on tensors (no models, no I/O), each tested against hand-computed values.

Sources:
- PPO: Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (arXiv:1707.06347): the clipped
  surrogate objective (eq. 7) and the clipped value loss of the OpenAI baselines implementation.
- GAE: Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage Estimation"
  (arXiv:1506.02438), eq. 16: A_t = sum_l (gamma * lam)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t.
- KL penalty in the reward and its adaptive coefficient: Ziegler et al. 2019, "Fine-Tuning Language Models
  from Human Preferences" (arXiv:1909.08593), sec. 2.2; Stiennon et al. 2020 (arXiv:2009.01325), eq. 1.
- k1/k3 KL estimators: J. Schulman, "Approximating KL Divergence" (2020, joschu.net/blog/kl-approx.html); why
  only k1 may sit in the reward: Y. Tang, R. Munos, "On a few pitfalls in KL divergence gradient estimation for
  RL" (2025).
- Implementation details (whitening, masked statistics, value clipping, approx-KL): Huang et al. 2022,
  "The N Implementation Details of RLHF with PPO" (ICLR blog track), following lm-human-preferences.

Conventions: tensors are [batch, tokens]; `mask` is 1 on response tokens and 0 on padding, and response
padding is on the right (so the valid tokens of a row are a prefix).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is 1 (over all elements, or along `dim`)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `values` where `mask` is 1; `unbiased` applies Bessel's correction n / (n - 1)."""
    centered = values - masked_mean(values, mask)
    var = masked_mean(centered**2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked elements (unbiased variance, as lm-human-preferences and TRL).

    With `shift_mean=False` the mean is added back: only the scale changes (used for rewards, whose sign
    carries meaning). Masked-out positions are returned as 0.
    """
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    out = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(values.dtype)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16) over each row's valid prefix.

    delta_t = r_t + gamma * V_{t+1} - V_t (V after the last valid token is 0: the episode ends there),
    A_t = delta_t + gamma * lam * A_{t+1}. Returns (advantages, returns = advantages + values), both 0 on
    padding. `returns` are the value targets (TD(lambda) returns).
    """
    m = mask.to(rewards.dtype)
    rewards, values = rewards * m, values * m
    steps = rewards.shape[-1]
    running = torch.zeros_like(rewards[..., 0])
    out = [running] * steps
    for t in reversed(range(steps)):
        next_value = values[..., t + 1] if t + 1 < steps else torch.zeros_like(running)
        delta = rewards[..., t] + gamma * next_value - values[..., t]
        running = delta + gamma * lam * running
        out[t] = running
    advantages = torch.stack(out, dim=-1) * m
    return advantages, (advantages + values) * m


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of the value of KL(pi || pi_ref) from tokens sampled by pi (Schulman 2020).

    k1 = log pi - log pi_ref (unbiased, can be negative per token);
    k3 = (r - 1) - log r with r = pi_ref / pi (unbiased for the value, never negative, lower variance).
    Only k1 is a valid reward penalty: as a reward (not differentiated), k3's policy gradient is
    grad KL(pi||ref) - grad KL(ref||pi) (Tang & Munos 2025), so the config refuses k3 for PPO
    (schema.K3_IN_REWARD) and the trainer only ever passes k1.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"Unknown KL estimator {estimator!r}; use 'k1' or 'k3'.")


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float):
    """Per-token rewards: -beta * KL at every response token, plus the sequence's score at its last token.

    Ziegler et al. 2019, eq. 2: R(x, y) = r(x, y) - beta * log(pi(y|x) / pi_ref(y|x)), spread over tokens
    so that GAE sees the KL penalty where it is incurred. Returns (rewards, non_score_rewards).
    """
    m = mask.to(kl.dtype)
    non_score = -beta * kl * m
    last = (m.sum(-1).long() - 1).clamp(min=0)
    rewards = non_score.clone()
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, non_score


def policy_loss(logprobs, old_logprobs, advantages, mask, cliprange: float):
    """PPO's clipped surrogate loss (Schulman et al. 2017, eq. 7), negated and averaged over response tokens.

    Returns (loss, clip fraction, approx-KL). clipfrac: share of tokens where the clipped term is the
    active one. approx-KL: 0.5 * mean((log pi - log pi_old)^2), the estimator of Huang et al. 2022.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clipfrac = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
    approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
    return loss, clipfrac.detach(), approx_kl.detach()


def value_loss(values, old_values, returns, mask, cliprange_value: float):
    """Clipped value loss (OpenAI baselines ppo2, kept by lm-human-preferences and TRL).

    V_clipped = V_old + clip(V - V_old, -c, c); loss = 0.5 * mean(max((V - R)^2, (V_clipped - R)^2)).
    Returns (loss, clip fraction: share of tokens where the clipped error is the larger one).
    """
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    err, err_clipped = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    clipfrac = masked_mean((err_clipped > err).to(values.dtype), mask)
    return loss, clipfrac.detach()


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns): 1 is a perfect critic, 0 no better than a constant, < 0 worse."""
    var_returns = masked_var(returns, mask)
    if var_returns <= 0:
        return float("nan")
    return float(1.0 - masked_var(returns - values, mask) / var_returns)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution softmax(logits), per position."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] per position."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@dataclass
class FixedKLController:
    """A constant KL coefficient beta."""

    value: float

    def update(self, current_kl: float, n_samples: int) -> None:
        pass


@dataclass
class AdaptiveKLController:
    """Ziegler et al. 2019 (sec. 2.2) proportional controller for the KL coefficient beta.

    e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n_samples / horizon),
    with KL the batch's mean KL per sequence (nats) and n_samples the sequences it was measured on.
    """

    value: float
    target: float
    horizon: int

    def update(self, current_kl: float, n_samples: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon
