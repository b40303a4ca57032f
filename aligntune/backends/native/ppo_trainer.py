"""The native PPO training loop: rollouts, rewards with a KL penalty, GAE, and clipped PPO updates.

One step (Ziegler et al. 2019, sec. 2; Stiennon et al. 2020, sec. 3.4; the procedure of Huang et al. 2022):
 1. Rollout: sample one completion per prompt from the policy (temperature, top_p, top_k off, stop at EOS or
    max_completion_length; tokens after the first EOS are padding, the EOS itself is an action).
 2. Score each completion once with the reward functions (weighted sum; `missing_eos_penalty` subtracted when
    no EOS was emitted; optional clip to [-reward_clip, reward_clip]). A completion for which every reward
    returned None is unscored: it is left out of the scores, advantages, value targets and losses (its tokens
    are masked, as TRL's GRPO zeroes such advantages) and counted per step as `rewards/unscored`; a step
    with no scored completion makes no update.
 3. Per-token rewards: -beta * KL(policy || reference) at each token (k1 estimate) and the score at the
    last token; optionally rescaled (`whiten_rewards`, without shifting the mean, as TRL did).
 4. GAE advantages (gamma, lam) with the critic's values, then whitened over the batch's tokens; returns =
    advantages + values are the value targets.
 5. ppo_epochs passes over shuffled mini-batches: clipped policy loss + vf_coef x clipped value loss, one
    optimizer (AdamW) over policy and critic, gradient clipping; once a mini-batch's approx-KL to the rollout
    policy exceeds `early_stop_kl`, that update and the step's remaining ones are skipped (as in OpenAI's
    Spinning Up PPO).
 6. The adaptive KL controller (when on) updates beta from the rollout's mean KL per sequence.

Deviations from the papers, all shared with TRL's former PPOTrainer: the score is not normalised by
reward-model statistics (lm-human-preferences does); losses are token means per micro-batch; the
learning-rate schedule advances once per rollout step; top_p < 1 samples from a truncated distribution
while the loss uses the full one (keep top_p=1 for exact on-policy rollouts).

Metrics go through transformers' TrainerCallback protocol (on_train_begin, on_step_begin, on_step_end, on_log,
on_pre_optimizer_step, on_train_end), so aligntune's run recorder, progress bar, interruption and divergence guards
work as with TRL trainers. Checkpoints (every cfg.save_steps steps, at the last step when save_steps is set, and
whenever a callback sets control.should_save) are written by `_save_checkpoint` (contents: ppo_checkpoint.py), and
`train(resume_from_checkpoint=...)` continues from one exactly: weights, optimizer, schedule, KL coefficient, data
position and every RNG stream.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerControl, TrainerState

from aligntune.backends.native import ppo_checkpoint
from aligntune.backends.native import ppo_math as pm
from aligntune.backends.native.ppo_models import PPOModels, values_of
from aligntune.errors import RewardError
from aligntune.run.guards import NonFinite
from aligntune.run.trackers import integration_callbacks, report_args

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
FUSED_ADAMW_DEVICES = ("cpu", "cuda")  # where torch's fused AdamW kernel runs (transformers' default, adamw_torch_fused)


def fused_adamw(device: torch.device, params: list) -> bool | None:
    """True where torch's fused AdamW runs these parameters (floating point, on CPU or CUDA), else None (torch's own
    choice). The fused kernel updates each parameter in one pass instead of a dozen elementwise ones: for SmolLM2's
    135M fp32 parameters 0.09 s against 0.40-0.88 s per step (for-loop) and 0.55-0.63 s (foreach), 2 AMD EPYC Zen 4
    cores; a full-weight SmolLM2 PPO step's optimizer phase (4 updates) 4.6-7.1 s -> 1.2 s (BENCHMARKS.md, ninth
    session). The TRL engines get it from transformers (`optim` adamw_torch_fused). The update differs from the
    for-loop one by fp32 rounding only."""
    if device.type in FUSED_ADAMW_DEVICES and params and all(p.is_floating_point() for p in params):
        return True
    return None


def _drop(*args, **kwargs) -> None:
    """log_extra: TRL adds such columns to its completions table; samples.jsonl records prompts, completions, rewards."""


class PPOTrainer:
    """Native PPO engine: `.train()` runs it, `.save_model(path)` writes the policy (an adapter with LoRA)."""

    def __init__(self, cfg, models: PPOModels, tokenizer, dataset, reward_funcs: list, callbacks: list, eval_dataset=None):
        from transformers import TrainingArguments, get_scheduler

        if "prompt" not in dataset.column_names or len(dataset) == 0:
            raise ValueError("PPO needs a dataset with rows and a 'prompt' column")
        if not reward_funcs or len(reward_funcs) != len(cfg.reward_weights):
            raise ValueError(f"{len(reward_funcs)} reward functions for {len(cfg.reward_weights)} weights")
        self.cfg, self.models, self.tokenizer, self.dataset = cfg, models, tokenizer, dataset
        self.eval_dataset = eval_dataset if eval_dataset is not None and len(eval_dataset) else None
        self.reward_funcs, self.callbacks = reward_funcs, list(callbacks)
        self.device = torch.device(cfg.device)
        self.total_steps = cfg.max_steps or math.ceil(cfg.num_epochs * len(dataset) / cfg.batch_size)
        self.kl_ctl = (pm.AdaptiveKLController(cfg.beta, cfg.target_kl, cfg.kl_horizon) if cfg.adaptive_kl
                       else pm.FixedKLController(cfg.beta))
        params = [(n, p) for m in (models.policy, models.critic) for n, p in m.named_parameters() if p.requires_grad]
        groups = [{"params": [p for _, p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for _, p in params if p.ndim < 2], "weight_decay": 0.0}]  # no decay on biases, norms
        self.params = [p for _, p in params]
        self._trained = nn.ModuleList([models.policy, models.critic])  # what the gradient guard checks
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=fused_adamw(self.device, self.params))
        self.scheduler = get_scheduler(cfg.lr_scheduler, self.optimizer,
                                       num_warmup_steps=math.ceil(cfg.warmup_ratio * self.total_steps),
                                       num_training_steps=self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        # output_dir is <run dir>/checkpoints: trackers name their run after the run directory.
        self.args = TrainingArguments(output_dir=cfg.output_dir, seed=cfg.seed, learning_rate=cfg.learning_rate,
                                      max_steps=self.total_steps, logging_steps=cfg.logging_steps,
                                      **report_args(list(cfg.report_to), Path(cfg.output_dir).parent.name),
                                      save_strategy="no", save_total_limit=cfg.save_total_limit, use_cpu=self.device.type == "cpu", disable_tqdm=True)
        self.callbacks += integration_callbacks(self.args)  # trackers, as transformers' Trainer adds them
        self.state = TrainerState(max_steps=self.total_steps, logging_steps=cfg.logging_steps,
                                  train_batch_size=cfg.batch_size, num_train_epochs=math.ceil(cfg.num_epochs))
        self.control = TrainerControl()
        self.pad_id = tokenizer.pad_token_id
        stop = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(models.policy, "generation_config", None), "eos_token_id", None)
        stop |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.stop_ids = sorted(i for i in stop if i is not None)
        self._generator = torch.Generator().manual_seed(cfg.seed)
        self._order: list[int] = []
        self.prompts_seen = 0
        self._window: list[dict] = []  # the steps' metrics since the last log (their means are logged)
        self._losses: list[float] = []  # every step's loss, for train_loss
        self._step_start: dict | None = None  # ppo_checkpoint.position() while a step is in progress
        self._applied = 0  # optimizer updates applied in the step in progress

    @property
    def model(self) -> nn.Module:
        """The policy (transformers' Trainer calls it `model`; the job's checkpoint path passes it back)."""
        return self.models.policy

    # ----------------------------------------------------------------------------------------------- loop
    def train(self, resume_from_checkpoint: str | None = None) -> dict:
        """Run the remaining steps; `resume_from_checkpoint`: a checkpoint folder this run wrote, to continue from."""
        cfg, state = self.cfg, self.state
        if resume_from_checkpoint is not None:
            ppo_checkpoint.load(self, Path(resume_from_checkpoint))
        start = time.time()
        self._event("on_train_begin")
        while state.global_step < self.total_steps and not self.control.should_training_stop:
            self._event("on_step_begin")
            self._step_start, self._applied = ppo_checkpoint.position(self), 0
            t0 = time.time()
            metrics = {"learning_rate": self.scheduler.get_last_lr()[0], "beta": self.kl_ctl.value}
            batch = self._rollout(self._next_rows())
            metrics.update(batch.pop("metrics"))
            try:
                metrics.update(self._update(batch))
            except NonFinite as found:  # the gradient guard stopped the run before this update ...
                found.applied = self._applied > 0  # ... but after earlier updates of the step: no clean last state
                raise
            self.kl_ctl.update(metrics["kl"], cfg.batch_size)
            self.scheduler.step()
            state.global_step += 1
            state.epoch = self.prompts_seen / len(self.dataset)
            self._step_start = None
            metrics["step_time"] = time.time() - t0
            self._window.append(metrics)
            self._losses.append(metrics["loss"])
            self._event("on_step_end")
            if state.global_step % cfg.logging_steps == 0 or state.global_step == self.total_steps:
                self._log(_window_means(self._window))
                self._window = []
            if cfg.eval_steps and state.global_step % cfg.eval_steps == 0 and state.global_step < self.total_steps:
                self.evaluate()  # the final evaluation is the caller's (AlignmentJob.train evaluates after training)
            if self.control.should_save or (cfg.save_steps and (state.global_step % cfg.save_steps == 0
                                                                 or state.global_step == self.total_steps)):
                self._save_checkpoint(self.model, trial=None)
            self.control.should_save = False
        runtime = time.time() - start
        losses = self._losses
        self._log({"train_runtime": runtime, "train_loss": sum(losses) / max(len(losses), 1),
                   "train_samples_per_second": state.global_step * cfg.batch_size / runtime,
                   "train_steps_per_second": state.global_step / runtime})
        self._event("on_train_end")
        return {"global_step": state.global_step, "train_runtime": runtime}

    def save_model(self, path: str) -> None:
        policy = self.models.policy
        if self.cfg.gradient_checkpointing:
            policy.config.use_cache = True
        policy.save_pretrained(path)

    def _get_output_dir(self, trial=None) -> str:
        """Where checkpoints go (<run dir>/checkpoints); run/checkpoints.make_atomic points it at its staging folder."""
        return self.args.output_dir

    def _save_checkpoint(self, model=None, trial=None) -> None:
        """checkpoint-<global_step> under `_get_output_dir()`, as transformers' Trainer._save_checkpoint. Mid-step (a
        reward failed during the rollout) it holds the last completed step: no update of the step in progress has
        been applied then, and the RNG streams and data position are those the step started from."""
        if self._step_start is not None and self._applied:
            raise RuntimeError("a PPO checkpoint cannot be written after some of a step's updates were applied")
        folder = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
        ppo_checkpoint.save(self, folder, at=self._step_start)

    def _event(self, name: str, **kwargs) -> None:
        kwargs = {"model": self.models.policy, **kwargs}
        for cb in self.callbacks:
            result = getattr(cb, name)(self.args, self.state, self.control, processing_class=self.tokenizer,
                                       optimizer=self.optimizer, lr_scheduler=self.scheduler, **kwargs)
            if result is not None:
                self.control = result

    def _log(self, logs: dict) -> None:
        logs = {**logs, "epoch": self.state.epoch}
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self._event("on_log", logs=logs)

    def _next_rows(self) -> dict:
        """The next train.batch_size rows: passes over the dataset, reshuffled each pass (seeded) when dataset.shuffle."""
        idx = []
        while len(idx) < self.cfg.batch_size:
            if not self._order:
                n = len(self.dataset)
                self._order = (torch.randperm(n, generator=self._generator) if self.cfg.shuffle else torch.arange(n)).tolist()
            idx.append(self._order.pop(0))
        self.prompts_seen += len(idx)
        return self.dataset[idx]

    def _autocast(self):
        dtype = AUTOCAST.get(self.cfg.precision)
        return torch.autocast(self.device.type, dtype=dtype) if dtype else nullcontext()

    def _chunks(self, n: int):
        return [slice(i, min(i + self.cfg.micro_batch_size, n)) for i in range(0, n, self.cfg.micro_batch_size)]

    # ------------------------------------------------------------------------------------------- forward
    def _inputs(self, query, qmask, response, rmask):
        ids, attn = torch.cat([query, response], 1), torch.cat([qmask, rmask], 1)
        return ids, attn, (attn.cumsum(1) - 1).clamp(min=0)  # positions skip left padding, as generate() does

    def _logits(self, model: nn.Module, query, qmask, response, rmask):
        ids, attn, pos = self._inputs(query, qmask, response, rmask)
        with self._autocast():
            logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).logits
        # The sampling distribution is softmax(logits / T): the loss must use the same (Huang et al. 2022).
        return logits[:, query.shape[1] - 1:-1].float() / self.cfg.temperature

    def _values(self, query, qmask, response, rmask):
        ids, attn, pos = self._inputs(query, qmask, response, rmask)
        with self._autocast():
            return values_of(self.models.critic, ids, attn, pos)[:, query.shape[1] - 1:-1]

    def _reference_logits(self, query, qmask, response, rmask):
        if self.models.reference is not None:
            return self._logits(self.models.reference, query, qmask, response, rmask)
        with self.models.policy.disable_adapter():  # LoRA: the base model is the reference
            return self._logits(self.models.policy, query, qmask, response, rmask)

    # ------------------------------------------------------------------------------------------- rollout
    @torch.no_grad()
    def _sample(self, rows: dict) -> dict:
        """Generate one completion per prompt (in micro-batches) and score it with the reward functions."""
        from transformers import GenerationConfig

        cfg, tok = self.cfg, self.tokenizer
        prompts = rows["prompt"]
        chat = isinstance(prompts[0], list)
        texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if chat else p for p in prompts]
        enc = tok(texts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False)
        query, qmask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        # Every setting that reshapes the distribution is pinned to neutral: unset (None) ones would be filled in
        # from the checkpoint's generation_config (e.g. top_k=20), and the rollouts would no longer be the policy's.
        gen = GenerationConfig(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0, min_p=0.0,
                               typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0,
                               no_repeat_ngram_size=0, min_new_tokens=0, max_new_tokens=cfg.max_completion_length,
                               pad_token_id=self.pad_id, eos_token_id=self.stop_ids, use_cache=True)
        self.models.policy.eval()
        parts = []
        for c in self._chunks(len(texts)):
            with self._autocast():
                out = self.models.policy.generate(input_ids=query[c], attention_mask=qmask[c], generation_config=gen)
            parts.append(out[:, query.shape[1]:])
        width = max(p.shape[1] for p in parts)
        response = torch.cat([nn.functional.pad(p, (0, width - p.shape[1]), value=self.pad_id) for p in parts])
        is_stop = torch.isin(response, torch.tensor(self.stop_ids, device=self.device))
        has_eos = is_stop.any(1)
        lengths = torch.where(has_eos, is_stop.int().argmax(1) + 1, response.shape[1])
        rmask = (torch.arange(response.shape[1], device=self.device)[None] < lengths[:, None]).long()
        response = response.masked_fill(rmask == 0, self.pad_id)

        ids = [response[i, : lengths[i]].tolist() for i in range(len(texts))]
        words = tok.batch_decode([x[:-1] if has_eos[i] else x for i, x in enumerate(ids)], skip_special_tokens=True)
        completions = [[{"role": "assistant", "content": w}] for w in words] if chat else words
        per_func, reward_logs = self._score(rows, prompts, completions, ids)
        scored = ~torch.isnan(per_func).all(1)  # some reward scored it (a None of one reward counts 0, as in TRL)
        total = (per_func * torch.tensor(cfg.reward_weights)).nansum(1)
        total[~scored] = math.nan  # unscored: no reward at all, not a reward of 0
        return {"query": query, "qmask": qmask, "response": response, "rmask": rmask, "has_eos": has_eos,
                "per_func": per_func, "total": total.to(self.device), "scored": scored.to(self.device),
                "reward_logs": reward_logs}

    def _reward_metrics(self, s: dict, prefix: str = "") -> dict:
        """Reward statistics over the scored completions (a statistic nothing was scored for is left out, not NaN:
        a logged NaN reward would read as divergence), and how many completions no reward could score."""
        total, lengths = s["total"][s["scored"]], s["rmask"].sum(1).float()
        out = {"completions/mean_length": lengths.mean().item(),
               "completions/clipped_ratio": (~s["has_eos"]).float().mean().item(),
               "rewards/unscored": float((~s["scored"]).sum().item())}
        if len(total):
            out.update({"reward": total.mean().item(), "reward_std": total.std().item() if len(total) > 1 else 0.0})
        for j, name in enumerate(self.cfg.reward_names):
            column = s["per_func"][:, j]
            if not torch.isnan(column).all():
                out[f"rewards/{name}/mean"] = torch.nanmean(column).item()
        return {prefix + k: v for k, v in out.items()}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean reward of sampled completions on the held-out prompts (eval_reward, eval_rewards/<name>/mean, ...)."""
        if self.eval_dataset is None:
            return {}
        parts = [self._sample(self.eval_dataset[i:i + self.cfg.batch_size])
                 for i in range(0, len(self.eval_dataset), self.cfg.batch_size)]
        width = max(p["rmask"].shape[1] for p in parts)
        joined = {"total": torch.cat([p["total"] for p in parts]), "has_eos": torch.cat([p["has_eos"] for p in parts]),
                  "scored": torch.cat([p["scored"] for p in parts]),
                  "per_func": torch.cat([p["per_func"] for p in parts]),
                  "rmask": torch.cat([nn.functional.pad(p["rmask"], (0, width - p["rmask"].shape[1])) for p in parts])}
        logs = self._reward_metrics(joined, prefix="eval_")
        self._log(logs)
        return logs

    @torch.no_grad()
    def _rollout(self, rows: dict) -> dict:
        cfg = self.cfg
        s = self._sample(rows)
        query, qmask, response, rmask, has_eos = s["query"], s["qmask"], s["response"], s["rmask"], s["has_eos"]
        logprobs, ref_logprobs, entropy, values = [], [], [], []
        for c in self._chunks(len(response)):
            args = (query[c], qmask[c], response[c], rmask[c])
            logits = self._logits(self.models.policy, *args)
            logprobs.append(pm.logprobs_of(logits, response[c]))
            entropy.append(pm.entropy_from_logits(logits))
            ref_logprobs.append(pm.logprobs_of(self._reference_logits(*args), response[c]))
            values.append(self._values(*args))
        logprobs, ref_logprobs, entropy, values = map(torch.cat, (logprobs, ref_logprobs, entropy, values))

        scored = s["scored"]
        score = s["total"].nan_to_num(0.0)  # unscored rows: masked out below, their 0 is never used
        if cfg.missing_eos_penalty is not None:
            score[~has_eos] -= cfg.missing_eos_penalty
        if cfg.reward_clip is not None:
            score = score.clamp(-cfg.reward_clip, cfg.reward_clip)

        kl = pm.kl_estimate(logprobs, ref_logprobs, cfg.kl_estimator) * rmask.float()  # every completion's drift
        mask = rmask.float() * scored[:, None]  # what trains: the tokens of scored completions
        rewards, non_score = pm.token_rewards(score, kl, mask, self.kl_ctl.value)
        if cfg.whiten_rewards:
            rewards = pm.whiten(rewards, mask, shift_mean=False)
        advantages, returns = pm.gae(rewards, values, mask, cfg.gamma, cfg.lam)
        advantages = pm.whiten(advantages, mask)

        kept = {}
        if scored.any():
            kept = {"score": score[scored].mean().item(), "non_score_reward": non_score.sum(1)[scored].mean().item(),
                    "rlhf_reward": (score + non_score.sum(1))[scored].mean().item()}
        metrics = {**self._reward_metrics(s), **kept, "kl": kl.sum(1).mean().item(),
                   "entropy": pm.masked_mean(entropy, mask).item(),
                   "values/mean": pm.masked_mean(values, mask).item(), "returns/mean": pm.masked_mean(returns, mask).item(),
                   "explained_variance": pm.explained_variance(values, returns, mask),
                   **s["reward_logs"]}  # what reward functions reported through log_metric(name, value)
        return {"query": query, "qmask": qmask, "response": response, "rmask": rmask, "lmask": mask, "logprobs": logprobs,
                "values": values, "advantages": advantages, "returns": returns, "metrics": metrics}

    def _score(self, rows: dict, prompts: list, completions: list, ids: list) -> tuple[torch.Tensor, dict]:
        """([batch, functions] scores, metrics the functions logged); each function gets every dataset column as
        a keyword list, plus completion_ids, trainer_state, log_metric and log_extra (TRL's GRPO signature)."""
        columns = {k: v for k, v in rows.items() if k not in ("prompt", "completion", "completion_ids")}
        extra: dict[str, float] = {}
        out = torch.full((len(prompts), len(self.reward_funcs)), float("nan"))
        for j, fn in enumerate(self.reward_funcs):
            name = getattr(fn, "__name__", f"reward_{j}")
            scores = fn(prompts=prompts, completions=completions, completion_ids=ids, trainer_state=self.state,
                        log_metric=extra.__setitem__, log_extra=_drop, **columns)
            scores = list(scores) if scores is not None else []
            if len(scores) != len(prompts):
                raise RewardError(f"Reward '{name}' returned {len(scores)} scores for {len(prompts)} completions.",
                                  "A reward function returns one float (or None) per completion.")
            try:
                out[:, j] = torch.tensor([math.nan if s is None else float(s) for s in scores])
            except (TypeError, ValueError) as exc:
                raise RewardError(f"Reward '{name}' returned a value that is not a number ({exc}).",
                                  "Return one float (or None) per completion.") from exc
        return out, {k: float(v) for k, v in extra.items()}

    # -------------------------------------------------------------------------------------------- update
    def _update(self, b: dict) -> dict:
        cfg = self.cfg
        policy, critic = self.models.policy, self.models.critic
        policy.train()
        critic.train()
        n = len(b["response"])
        sums = {"loss": 0.0, "loss/policy": 0.0, "loss/value": 0.0, "policy/clipfrac": 0.0, "value/clipfrac": 0.0,
                "policy/approx_kl": 0.0}
        updates, skipped, stopped = 0, 0, False
        for _ in range(cfg.ppo_epochs if b["lmask"].any() else 0):  # nothing scored: nothing to learn from
            order = torch.randperm(n, generator=self._generator).to(self.device)
            for start in range(0, n, cfg.mini_batch_size):
                mini = order[start:start + cfg.mini_batch_size]
                self.optimizer.zero_grad(set_to_none=True)
                stats = dict.fromkeys(sums, 0.0)
                for c in self._chunks(len(mini)):
                    i = mini[c]
                    args = (b["query"][i], b["qmask"][i], b["response"][i], b["rmask"][i])
                    mask = b["lmask"][i]  # response tokens of scored completions
                    logprobs = pm.logprobs_of(self._logits(policy, *args), b["response"][i])
                    values = self._values(*args)
                    pg, clipfrac, approx_kl = pm.policy_loss(logprobs, b["logprobs"][i], b["advantages"][i], mask,
                                                             cfg.cliprange)
                    vf, vclipfrac = pm.value_loss(values, b["values"][i], b["returns"][i], mask, cfg.cliprange_value)
                    loss = pg + cfg.vf_coef * vf
                    share = len(i) / len(mini)
                    self.scaler.scale(loss * share).backward()
                    for k, v in (("loss", loss), ("loss/policy", pg), ("loss/value", vf), ("policy/clipfrac", clipfrac),
                                 ("value/clipfrac", vclipfrac), ("policy/approx_kl", approx_kl)):
                        stats[k] += v.item() * share
                if cfg.early_stop_kl is not None and stats["policy/approx_kl"] > cfg.early_stop_kl:
                    stopped = True  # the policy already drifted this far: skip this update and the rest (Spinning Up)
                    self.optimizer.zero_grad(set_to_none=True)
                    break
                self.scaler.unscale_(self.optimizer)
                # transformers' pair of events around the step (the guards, the phase timer); not under fp16, where an
                # overflow is the GradScaler's to skip, not divergence
                guarded = not self.scaler.is_enabled()
                if guarded:
                    self._event("on_pre_optimizer_step", model=self._trained)  # the guards: stop, or drop the grads
                    if all(p.grad is None for p in self.params):
                        self._event("on_optimizer_step", model=self._trained)
                        skipped += 1  # train.on_nonfinite=skip: no optimizer step, moments untouched
                        continue
                torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if guarded:
                    self._event("on_optimizer_step", model=self._trained)
                updates += 1
                self._applied += 1
                for k in sums:
                    sums[k] += stats[k]
            if stopped:
                break
        policy.eval()
        critic.eval()
        # Means over the applied updates. In train() the first always applies: it starts at the rollout policy.
        out = {**{k: v / max(updates, 1) for k, v in sums.items()}, "ppo/updates": float(updates),
               "ppo/early_stopped": float(stopped)}
        if skipped:
            out["ppo/skipped_updates"] = float(skipped)
        return out


def _window_means(window: list[dict]) -> dict:
    """Each metric's mean over the steps of a logging window that have it (reward statistics are missing from a
    step where no completion was scored); a NaN still shows, so the divergence guard sees a NaN loss."""
    keys = dict.fromkeys(k for m in window for k in m)
    return {k: float(sum(vals) / len(vals)) for k in keys for vals in [[m[k] for m in window if k in m]]}
