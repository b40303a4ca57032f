"""PPO math against values computed by hand (the arithmetic is written out next to each expectation)."""

from __future__ import annotations

import math

import pytest
import torch

from aligntune.backends.native import ppo_math as pm


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def close(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-6, rtol=0)


def test_gae_by_hand():
    # gamma 0.9, lam 0.8 -> gamma * lam = 0.72; V after the last token is 0.
    # t=2: delta = 1 + 0 - 0.7 = 0.3                  A2 = 0.3
    # t=1: delta = 0 + 0.9 * 0.7 - 0.6 = 0.03         A1 = 0.03 + 0.72 * 0.3 = 0.246
    # t=0: delta = 0 + 0.9 * 0.6 - 0.5 = 0.04         A0 = 0.04 + 0.72 * 0.246 = 0.21712
    # Row 2 has one valid token: delta = 0.5 - 1.0 = -0.5; its padding (values 9, rewards 7) must not leak in.
    rewards = t([0.0, 0.0, 1.0], [0.5, 7.0, 7.0])
    values = t([0.5, 0.6, 0.7], [1.0, 9.0, 9.0])
    mask = t([1, 1, 1], [1, 0, 0])
    adv, ret = pm.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    close(adv, [[0.21712, 0.246, 0.3], [-0.5, 0.0, 0.0]])
    close(ret, [[0.71712, 0.846, 1.0], [0.5, 0.0, 0.0]])


def test_gae_with_gamma_and_lambda_one_is_monte_carlo():
    # A_t = (sum of rewards from t on) - V_t; returns = reward-to-go = 1 everywhere.
    adv, ret = pm.gae(t([0.0, 0.0, 1.0]), t([0.5, 0.6, 0.7]), t([1, 1, 1]), gamma=1.0, lam=1.0)
    close(adv, [[0.5, 0.4, 0.3]])
    close(ret, [[1.0, 1.0, 1.0]])


def test_gae_with_lambda_zero_is_one_step_td():
    # lam 0: A_t = delta_t = r_t + gamma V_{t+1} - V_t  ->  [0 + 0.6 - 0.5, 0 + 0.7 - 0.6, 1 - 0.7]
    adv, _ = pm.gae(t([0.0, 0.0, 1.0]), t([0.5, 0.6, 0.7]), t([1, 1, 1]), gamma=1.0, lam=0.0)
    close(adv, [[0.1, 0.1, 0.3]])


def test_whiten_by_hand():
    # [2, 4, 6]: mean 4, unbiased var (4 + 0 + 4) / 2 = 4, std 2 -> [-1, 0, 1]; the masked 100 is ignored and zeroed.
    x, mask = t([2.0, 4.0, 6.0, 100.0]), t([1, 1, 1, 0])
    close(pm.whiten(x, mask), [[-1.0, 0.0, 1.0, 0.0]])
    # shift_mean=False keeps the mean: (x - 4) / 2 + 4 = [3, 4, 5]
    close(pm.whiten(x, mask, shift_mean=False), [[3.0, 4.0, 5.0, 0.0]])
    # [1, 2, 3, 4]: mean 2.5, unbiased var 5/3 -> (x - 2.5) / sqrt(5/3)
    s = math.sqrt(5 / 3)
    close(pm.whiten(t([1.0, 2.0, 3.0, 4.0]), t([1, 1, 1, 1])), [[-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]])


def test_kl_estimators_by_hand():
    # pi = 0.5, pi_ref = 0.25: k1 = log 2 = 0.693147; r = pi_ref / pi = 0.5, k3 = (r - 1) - log r = -0.5 + 0.693147
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert pm.kl_estimate(logp, ref, "k1").item() == pytest.approx(0.693147, abs=1e-6)
    assert pm.kl_estimate(logp, ref, "k3").item() == pytest.approx(0.193147, abs=1e-6)
    # pi < pi_ref: k1 is negative, k3 is not. pi = 0.25, pi_ref = 0.5: k1 = -log 2; r = 2, k3 = 1 - log 2 = 0.306853
    assert pm.kl_estimate(ref, logp, "k1").item() == pytest.approx(-0.693147, abs=1e-6)
    assert pm.kl_estimate(ref, logp, "k3").item() == pytest.approx(0.306853, abs=1e-6)
    assert pm.kl_estimate(logp, logp, "k3").item() == 0.0
    with pytest.raises(ValueError, match="k2"):
        pm.kl_estimate(logp, ref, "k2")


def test_as_a_reward_only_k1_has_the_gradient_of_kl():
    """Why PPO refuses k3 (schema.K3_IN_REWARD): a per-token reward k is not differentiated, so its policy gradient
    is E_pi[k grad log pi]. Computed exactly over a 5-token vocabulary (a sum over the support, no sampling): for
    k1 it equals grad KL(pi||ref); for k3 it equals grad KL(pi||ref) - grad KL(ref||pi) (Tang & Munos 2025)."""
    torch.manual_seed(0)
    theta = torch.randn(5, dtype=torch.float64, requires_grad=True)
    ref = torch.softmax(torch.randn(5, dtype=torch.float64), 0)

    def grad(f):
        return torch.autograd.grad(f(), theta, retain_graph=True)[0]

    def as_reward(estimator):  # sum_y pi(y) k(y) grad log pi(y), k held fixed
        logp = torch.log_softmax(theta, 0)
        k = pm.kl_estimate(logp.detach(), ref.log(), estimator)
        return grad(lambda: (logp.exp().detach() * k * logp).sum())

    kl_forward = grad(lambda: (torch.softmax(theta, 0) * (torch.log_softmax(theta, 0) - ref.log())).sum())
    kl_reverse = grad(lambda: (ref * (ref.log() - torch.log_softmax(theta, 0))).sum())
    assert torch.allclose(as_reward("k1"), kl_forward, atol=1e-12)
    assert torch.allclose(as_reward("k3"), kl_forward - kl_reverse, atol=1e-12)
    assert not torch.allclose(as_reward("k3"), kl_forward, atol=1e-3)


def test_token_rewards_put_the_score_on_the_last_valid_token():
    # beta 0.5: non-score = -0.5 * kl on valid tokens; score added at index (length - 1).
    kl = t([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    mask = t([1, 1, 1], [1, 1, 0])
    rewards, non_score = pm.token_rewards(torch.tensor([1.0, 2.0]), kl, mask, beta=0.5)
    close(non_score, [[-0.05, -0.1, -0.15], [-0.2, -0.25, 0.0]])
    close(rewards, [[-0.05, -0.1, 0.85], [-0.2, 1.75, 0.0]])


def test_clipped_policy_loss_by_hand():
    # eps 0.2. token 1: ratio 0.5/0.4 = 1.25, A = +1: unclipped -1.25, clipped -1.2 -> max -1.2 (clipped active)
    #          token 2: ratio 0.36/0.4 = 0.9, A = -1: both 0.9 (inside the range, not clipped)
    #          token 3: ratio 0.2/0.4 = 0.5, A = +1: unclipped -0.5, clipped -0.8 -> max -0.5 (pessimistic, not clipped)
    # loss = (-1.2 + 0.9 - 0.5) / 3 = -0.266667; clipfrac = 1/3
    # approx-KL = 0.5 * mean(log(1.25)^2, log(0.9)^2, log(0.5)^2) = 0.5 * (0.049793 + 0.011101 + 0.480453) / 3
    new = torch.log(t([0.5, 0.36, 0.2]))
    old = torch.log(t([0.4, 0.4, 0.4]))
    adv, mask = t([1.0, -1.0, 1.0]), t([1, 1, 1])
    loss, clipfrac, approx_kl = pm.policy_loss(new, old, adv, mask, cliprange=0.2)
    assert loss.item() == pytest.approx(-0.8 / 3, abs=1e-6)
    assert clipfrac.item() == pytest.approx(1 / 3, abs=1e-6)
    assert approx_kl.item() == pytest.approx(0.5 * (0.0497930 + 0.0111008 + 0.4804530) / 3, abs=1e-6)
    # The masked-out token does not count.
    loss2, clipfrac2, _ = pm.policy_loss(new, old, adv, t([1, 1, 0]), cliprange=0.2)
    assert loss2.item() == pytest.approx((-1.2 + 0.9) / 2, abs=1e-6) and clipfrac2.item() == pytest.approx(0.5)


def test_policy_loss_gradient_is_zero_where_clipped():
    new = torch.log(t([0.5, 0.36])).requires_grad_(True)
    loss, _, _ = pm.policy_loss(new, torch.log(t([0.4, 0.4])), t([1.0, -1.0]), t([1, 1]), cliprange=0.2)
    loss.backward()
    # token 1 is clipped (no gradient); token 2: d/dlogp of (-A * ratio) / 2 = (1 * 0.9) / 2
    close(new.grad, [[0.0, 0.45]])


def test_clipped_value_loss_by_hand():
    # c 0.2. token 1: V 1.5, V_old 1.0 -> clipped 1.2; R 2: err 0.25, clipped err 0.64 -> 0.64 (clipped counts)
    #        token 2: V 0.9, V_old 1.0 -> clipped 0.9; R 1: both 0.01 -> 0.01
    # loss = 0.5 * (0.64 + 0.01) / 2 = 0.1625; clipfrac 0.5
    loss, clipfrac = pm.value_loss(t([1.5, 0.9]), t([1.0, 1.0]), t([2.0, 1.0]), t([1, 1]), cliprange_value=0.2)
    assert loss.item() == pytest.approx(0.1625, abs=1e-6)
    assert clipfrac.item() == pytest.approx(0.5)


def test_adaptive_kl_controller_by_hand():
    # Ziegler et al.: e = clip(KL / target - 1, -0.2, 0.2); beta *= 1 + e * n / horizon
    ctl = pm.AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    ctl.update(current_kl=9.0, n_samples=100)  # e = clip(0.5) = 0.2 -> x 1.002
    assert ctl.value == pytest.approx(0.1002, rel=1e-9)
    ctl.update(current_kl=5.4, n_samples=100)  # e = -0.1 -> x 0.999
    assert ctl.value == pytest.approx(0.1002 * 0.999, rel=1e-9)
    ctl.update(current_kl=0.0, n_samples=1000)  # e = clip(-1) = -0.2 -> x 0.98
    assert ctl.value == pytest.approx(0.1002 * 0.999 * 0.98, rel=1e-9)
    fixed = pm.FixedKLController(0.05)
    fixed.update(100.0, 100)
    assert fixed.value == 0.05


def test_explained_variance_by_hand():
    # returns [1, 2, 3, 4] (unbiased var 5/3); residual [0, 0, 0, 1] (unbiased var 0.25) -> 1 - 0.25 / (5/3) = 0.85
    ev = pm.explained_variance(t([1.0, 2.0, 3.0, 3.0]), t([1.0, 2.0, 3.0, 4.0]), t([1, 1, 1, 1]))
    assert ev == pytest.approx(0.85, abs=1e-6)
    assert pm.explained_variance(t([1.0, 2.0]), t([1.0, 2.0]), t([1, 1])) == pytest.approx(1.0)


def test_entropy_and_logprobs_by_hand():
    assert pm.entropy_from_logits(t([0.0, 0.0])).item() == pytest.approx(math.log(2), abs=1e-6)
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # probabilities 0.25, 0.75
    assert pm.logprobs_of(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75), abs=1e-6)
    # H = -(0.25 log 0.25 + 0.75 log 0.75) = 0.562335
    assert pm.entropy_from_logits(logits).item() == pytest.approx(0.562335, abs=1e-6)


def test_masked_mean_ignores_padding():
    assert pm.masked_mean(t([1.0, 3.0, 100.0]), t([1, 1, 0])).item() == 2.0
    assert pm.masked_mean(t([1.0, 3.0], [5.0, 100.0]), t([1, 1], [1, 0]), dim=1).tolist() == [2.0, 5.0]
