"""GRPO and PPO on verl: the ONE mapping from RunConfig to verl's Hydra overrides for `verl.trainer.main_ppo`.

verl (Sheng et al. 2024, HybridFlow, arXiv:2409.19256) composes `verl/trainer/config/ppo_trainer.yaml`;
these overrides set every key aligntune has an equivalent for. A key with no verl equivalent is
refused when it is set away from its default (NOT_TRANSLATED says why); at its default, verl's own
behaviour applies, and the dry run lists those keys. Checked against verl 0.9's shipped config.

Batch arithmetic (the same global meaning as on TRL): `data.train_batch_size` = train.batch_size prompts,
each sampled `rollout.n` = group_size times; `actor.ppo_mini_batch_size` = batch_size / num_mini_batches
prompts per optimizer step (verl multiplies it by n); micro-batches count completions per GPU.
PPO samples one completion per prompt (n=1), learns a separate critic (`critic.*`, GAE with
algorithm.gamma/lam) and adds the KL penalty to the reward (`algorithm.use_kl_in_reward`), as
aligntune's native PPO does (Ziegler et al. 2019).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from aligntune.config.schema import GRPOAlgorithmConfig, PPOAlgorithmConfig, RunConfig
from aligntune.errors import ConfigError

A = "actor_rollout_ref.actor"
C = "critic"
R = "actor_rollout_ref.rollout"
M = "actor_rollout_ref.model"

# aligntune key -> the verl key(s) it sets. The dry run prints this; tests check each against verl's config.
TRANSLATED: dict[str, tuple[str, ...]] = {
    "algorithm.name": ("algorithm.adv_estimator",),
    "algorithm.group_size": (f"{R}.n",),
    "algorithm.beta": (f"{A}.use_kl_loss", f"{A}.kl_loss_coef", "algorithm.use_kl_in_reward", "algorithm.kl_ctrl.kl_coef"),
    "algorithm.kl_estimator": (f"{A}.kl_loss_type", "algorithm.kl_penalty"),
    "algorithm.cliprange": (f"{A}.clip_ratio", f"{A}.clip_ratio_low"),
    "algorithm.cliprange_high": (f"{A}.clip_ratio_high",),
    "algorithm.temperature": (f"{R}.temperature",),
    "algorithm.top_p": (f"{R}.top_p",),
    "algorithm.max_completion_length": ("data.max_response_length",),
    "algorithm.num_iterations": (f"{A}.ppo_epochs",),
    "algorithm.num_mini_batches": (f"{A}.ppo_mini_batch_size",),
    "algorithm.loss_type": (f"{A}.loss_agg_mode",),
    "algorithm.scale_rewards": ("algorithm.norm_adv_by_std_in_grpo",),
    "algorithm.importance_sampling_level": (f"{A}.policy_loss.loss_mode",),
    "model.name_or_path": (f"{M}.path",),
    "model.dtype": (f"{R}.dtype",),
    "model.trust_remote_code": (f"{M}.trust_remote_code", "data.trust_remote_code"),
    "model.lora.enabled": (f"{M}.lora_rank",),
    "model.lora.r": (f"{M}.lora_rank",),
    "model.lora.alpha": (f"{M}.lora_alpha",),
    "model.lora.target_modules": (f"{M}.target_modules",),
    "dataset.*": ("data.train_files", "data.val_files", "data.prompt_key"),
    "dataset.shuffle": ("data.shuffle",),
    "dataset.max_prompt_length": ("data.max_prompt_length", "data.truncation"),
    "dataset.truncation_mode": ("data.truncation",),
    "seed": ("data.seed", f"{R}.seed"),
    "train.batch_size": ("data.train_batch_size",),
    "train.micro_batch_size": (f"{A}.ppo_micro_batch_size_per_gpu", f"{R}.log_prob_micro_batch_size_per_gpu",
                               "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu", f"{C}.ppo_micro_batch_size_per_gpu"),
    "train.learning_rate": (f"{A}.optim.lr", f"{C}.optim.lr"),
    "train.num_epochs": ("trainer.total_epochs",),
    "train.max_steps": ("trainer.total_training_steps",),
    "train.lr_scheduler": (f"{A}.optim.lr_scheduler_type",),
    "train.warmup_ratio": (f"{A}.optim.lr_warmup_steps_ratio",),
    "train.weight_decay": (f"{A}.optim.weight_decay",),
    "train.max_grad_norm": (f"{A}.optim.clip_grad",),
    "train.gradient_checkpointing": (f"{M}.enable_gradient_checkpointing",),
    "train.eval_steps": ("trainer.test_freq",),
    "rewards": ("reward.custom_reward_function.path", "reward.custom_reward_function.name"),
    "distributed.num_processes": ("trainer.n_gpus_per_node",),
    "distributed.num_machines": ("trainer.nnodes",),
    "algorithm.value_model": (f"{C}.model.path",),
    "algorithm.adaptive_kl": ("algorithm.kl_ctrl.type",),
    "algorithm.target_kl": ("algorithm.kl_ctrl.target_kl",),
    "algorithm.kl_horizon": ("algorithm.kl_ctrl.horizon",),
    "algorithm.gamma": ("algorithm.gamma",),
    "algorithm.lam": ("algorithm.lam",),
    "algorithm.cliprange_value": (f"{C}.cliprange_value",),
    "algorithm.ppo_epochs": (f"{A}.ppo_epochs", f"{C}.ppo_epochs"),
    "backend.verl.rollout": (f"{R}.name",),
    "backend.verl.project": ("trainer.project_name",),
    "(run directory)": ("trainer.experiment_name", "trainer.default_local_dir", "trainer.save_freq"),
    "logger": ("trainer.logger",),
    "train.save_steps": ("trainer.save_freq",),
    "train.save_total_limit": ("trainer.max_actor_ckpt_to_keep", "trainer.max_critic_ckpt_to_keep"),  # verl's Tracking supports the same four trackers, plus its console
}

# aligntune key -> why verl cannot take it. Refused when set away from the schema default. (backend.trl_args, resume,
# train.on_nonfinite=skip, rollout.engine, train.log_completions and the mini-batch split are refused by what verl's
# registry entry declares: aligntune/core/registry.py.)
NOT_TRANSLATED: dict[str, str] = {
    "algorithm.mask_truncated_completions": "verl's main trainer has no truncated-completion mask",
    "algorithm.overlong_buffer": "verl's overlong punishment lives in its DAPO recipe, not verl.trainer.main_ppo",
    "algorithm.overlong_penalty": "verl's overlong punishment lives in its DAPO recipe",
    "algorithm.dynamic_sampling": "verl's group filtering lives in its DAPO recipe, not verl.trainer.main_ppo",
    "algorithm.dynamic_sampling_max_retries": "verl's group filtering lives in its DAPO recipe",
    "model.lora.dropout": "verl's LoRA has no dropout setting (set model.lora.dropout=0.0)",
    "resume_force": "verl resumes through its own trainer.resume_mode",
    "model.lora.save_merged": "verl writes its own checkpoints; merge the adapter from them with verl's model merger",
    "model.lora.use_dora": "verl's LoRA has no DoRA switch",
    "model.lora.use_rslora": "verl's LoRA has no rsLoRA switch",
    "model.lora.modules_to_save": "verl's LoRA trains only the adapter",
    "model.revision": "verl loads actor_rollout_ref.model.path itself (download the revision, give its directory)",
    "model.tokenizer": "verl loads the model's own tokenizer",
    "model.chat_template": "verl applies the model's own chat template",
    "model.attn_implementation": "verl picks its attention kernel (actor_rollout_ref.model.override_config)",
    "model.quantization": "verl trains unquantised weights",
    "model.quant_type": "verl trains unquantised weights",
    "model.double_quant": "verl trains unquantised weights",
    **{f"hub.{k}": "verl writes its own checkpoints (upload a merged one with hf upload)"
       for k in ("push", "model_id", "private", "revision")},
    **{f"rollout.vllm.{k}": "verl configures its vLLM rollout itself (actor_rollout_ref.rollout.*)"
       for k in ("mode", "gpu_memory_utilization", "tensor_parallel_size", "enable_sleep", "server_host", "server_port",
                 "server_timeout")},
    "train.logging_steps": "verl logs every step",
    "train.log_samples": "verl does not write aligntune's samples.jsonl",
    "distributed.strategy": "verl shards with its own FSDP workers; accelerate's strategies do not apply",
    "distributed.machine_rank": "verl places workers through Ray, not per-machine ranks",
    "distributed.main_process_ip": "verl places workers through Ray (start a Ray cluster)",
    "distributed.main_process_port": "verl places workers through Ray",
    "distributed.config_file": "verl places workers through Ray; an accelerate config file does not apply",
    "device": "verl trains on GPUs (trainer.device=cuda)",
    "algorithm.missing_eos_penalty": "verl's main trainer has no missing-EOS penalty",
    "algorithm.whiten_rewards": "verl's main trainer does not whiten rewards",
    "algorithm.reward_clip": "verl's main trainer does not clip rewards",
    "algorithm.early_stop_kl": "verl's main trainer has no KL early stop",
    "algorithm.vf_coef": "verl's critic has its own optimizer (critic.optim), so there is no value-loss coefficient",
    "eval.after_training": "verl trains in its own process and writes its own checkpoints; evaluate one afterwards "
                           "with `aligntune eval run=<checkpoint dir>`",
}
# Keys a preset may set that verl cannot honour and the run does without: when a recipe or preset (not the command
# line) set one, it is turned off with a notice (aligntune/inherited.py); typed on the command line, it is refused.
OFF_WHEN_INHERITED: dict[str, object] = {"eval.after_training": False}
# Keys that shape the launch or the record, not verl's training config.
LAUNCH_KEYS = {"backend.name": "selects this backend", "backend.verl.python": "the interpreter that runs verl",
               "algorithm.variant": "a record of the preset", "verbose": "aligntune's console",
               "dry_run": "print instead of launching", "eval": "aligntune eval's settings (after_training: refused above)",
               "optimized_metric": "what a hyper-parameter search reads from summary.json"}

TRUNCATION = {"keep_end": "left", "keep_start": "right"}  # dataset.truncation_mode -> verl's data.truncation
LOSS_AGG = {"grpo": "seq-mean-token-mean", "dapo": "token-mean", "dr_grpo": "seq-mean-token-sum-norm"}
KL_LOSS = {"k3": "low_var_kl"}
KL_PENALTY = {"k1": "kl"}  # PPO: the KL in the reward (k3, verl's low_var_kl, is refused there: schema.K3_IN_REWARD)
SCALE = {"group": True, "none": False}
POLICY_LOSS = {"token": "vanilla", "sequence": "gspo"}
SCHEDULERS = {"constant": "constant", "constant_with_warmup": "constant", "cosine": "cosine"}
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass
class Exported:
    """What export.py wrote, and the facts the translation needs from it."""

    train_file: str
    val_file: str | None
    reward_file: str
    train_rows: int
    model_path: str
    checkpoint_dir: str
    experiment: str
    value_model_path: str | None = None  # PPO's algorithm.value_model when it is a checkpoint (resolved)


def _default(cls, name: str):
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def refuse_untranslatable(run: RunConfig) -> None:
    """Every aligntune key either translates or is refused: this is the refusing half."""
    from aligntune.config import schema

    owners = {"": schema.RunConfig, "algorithm": type(run.algorithm), "model.lora": schema.LoraConfig, "train": schema.TrainConfig,
              "dataset": schema.DatasetConfig, "distributed": schema.DistributedConfig, "backend": schema.BackendConfig,
              "eval": schema.EvalConfig, "model": schema.ModelConfig, "rollout": schema.RolloutConfig,
              "rollout.vllm": schema.VllmConfig, "hub": schema.HubConfig}
    for key, why in NOT_TRANSLATED.items():
        owner, _, leaf = key.rpartition(".")
        if owner == "algorithm" and not hasattr(run.algorithm, leaf):
            continue
        value = _get(run, key)
        default = _default(owners[owner], leaf) if key != "device" else "auto"
        if key == "device" and value == "cuda":
            continue
        if key == "model.lora.dropout":
            if not run.model.lora.enabled:
                continue
            default = 0.0  # what verl's LoRA does
        if key == "distributed.strategy" and value == "fsdp":
            continue  # verl's own engine is FSDP
        if value != default:
            raise ConfigError(f"{key}={value!r} has no equivalent on backend=verl: {why}.",
                              f"Set it to {default!r} or use backend=trl.")
    algo = run.algorithm
    checks = [("train.lr_scheduler", run.train.lr_scheduler, SCHEDULERS)]
    if isinstance(algo, GRPOAlgorithmConfig):
        checks += [("algorithm.loss_type", algo.loss_type, LOSS_AGG), ("algorithm.kl_estimator", algo.kl_estimator, KL_LOSS),
                   ("algorithm.scale_rewards", algo.scale_rewards, SCALE)]
    for key, value, table in checks:
        if value not in table:
            raise ConfigError(f"{key}={value!r} has no equivalent in verl's trainer.",
                              f"Use one of {', '.join(table)} with backend=verl, or backend=trl.")
    if run.train.num_epochs != int(run.train.num_epochs):
        raise ConfigError(f"train.num_epochs={run.train.num_epochs} is fractional, and verl counts whole epochs "
                          "(trainer.total_epochs).", "Use a whole number, or train.max_steps.")


def samples_per_prompt(run: RunConfig) -> int:
    return run.algorithm.group_size if isinstance(run.algorithm, GRPOAlgorithmConfig) else 1


def gpus_per_node(run: RunConfig) -> int:
    return run.distributed.num_processes // run.distributed.num_machines


def micro_batch(run: RunConfig) -> int:
    """Completions per forward/backward per GPU: train.micro_batch_size, or a whole mini-batch's share."""
    if run.train.micro_batch_size is not None:
        return run.train.micro_batch_size
    per_step = run.train.batch_size // run.algorithm.num_mini_batches * samples_per_prompt(run)
    return max(1, per_step // run.distributed.num_processes)


def total_steps(run: RunConfig, rows: int) -> int:
    """Optimizer steps verl will run (its dataloader drops the last partial batch)."""
    if run.train.max_steps is not None:
        return run.train.max_steps
    return max(1, rows // run.train.batch_size) * int(run.train.num_epochs)


def verl_overrides(run: RunConfig, ex: Exported) -> dict[str, object]:
    """verl key -> value for `run`. Pure: unit-tested key by key against verl's composed config."""
    algo = run.algorithm
    if not isinstance(algo, (GRPOAlgorithmConfig, PPOAlgorithmConfig)):
        raise ConfigError(f"algorithm={algo.name} is not translated to verl; backend=verl runs GRPO (and its variants) "
                          "and PPO.", "Use backend=auto for this algorithm.")
    refuse_untranslatable(run)
    t, lora = run.train, run.model.lora
    micro = micro_batch(run)
    out = _grpo(algo) if isinstance(algo, GRPOAlgorithmConfig) else _ppo(run, algo, ex, micro)
    out.update({
        f"{R}.temperature": algo.temperature,
        f"{R}.top_p": algo.top_p,
        "data.max_response_length": algo.max_completion_length,
        f"{A}.ppo_mini_batch_size": t.batch_size // algo.num_mini_batches,
        f"{M}.path": ex.model_path,
        f"{M}.trust_remote_code": run.model.trust_remote_code,
        "data.trust_remote_code": run.model.trust_remote_code,
        f"{M}.lora_rank": lora.r if lora.enabled else 0,
        f"{M}.lora_alpha": lora.alpha,
        f"{M}.target_modules": "all-linear" if lora.target_modules == ["all-linear"] else list(lora.target_modules),
        f"{M}.enable_gradient_checkpointing": t.gradient_checkpointing,
        "data.train_files": ex.train_file,
        "data.val_files": ex.val_file if ex.val_file else ex.train_file,
        "data.prompt_key": "prompt",
        "data.shuffle": run.dataset.shuffle,
        "data.seed": run.seed,
        f"{R}.seed": run.seed,
        "data.train_batch_size": t.batch_size,
        f"{A}.ppo_micro_batch_size_per_gpu": micro,
        f"{R}.log_prob_micro_batch_size_per_gpu": micro,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": micro,
        f"{A}.optim.lr": t.learning_rate,
        f"{A}.optim.lr_scheduler_type": SCHEDULERS[t.lr_scheduler],
        f"{A}.optim.lr_warmup_steps_ratio": t.warmup_ratio,
        f"{A}.optim.weight_decay": t.weight_decay,
        f"{A}.optim.clip_grad": t.max_grad_norm,
        "trainer.total_epochs": int(t.num_epochs),
        "trainer.total_training_steps": t.max_steps,
        "trainer.test_freq": t.eval_steps if (t.eval_steps is not None and ex.val_file) else -1,
        "trainer.val_before_train": False,
        "reward.custom_reward_function.path": ex.reward_file,
        "reward.custom_reward_function.name": "compute_score",
        "trainer.n_gpus_per_node": gpus_per_node(run),
        "trainer.nnodes": run.distributed.num_machines,
        f"{R}.name": run.backend.verl.rollout,
        "trainer.project_name": run.backend.verl.project,
        "trainer.experiment_name": ex.experiment,
        "trainer.default_local_dir": ex.checkpoint_dir,
        # every train.save_steps steps, else one checkpoint at the last step
        "trainer.save_freq": t.save_steps if t.save_steps is not None else total_steps(run, ex.train_rows),
        "trainer.max_actor_ckpt_to_keep": t.save_total_limit,
        "trainer.max_critic_ckpt_to_keep": t.save_total_limit,
        "trainer.logger": ["console", *run.logger],
    })
    if run.model.dtype in DTYPES:
        out[f"{R}.dtype"] = DTYPES[run.model.dtype]
    if run.dataset.max_prompt_length is not None:  # else verl's own: 512 tokens, longer prompts are an error
        out["data.max_prompt_length"] = run.dataset.max_prompt_length
        out["data.truncation"] = TRUNCATION[run.dataset.truncation_mode]
    return out


def _grpo(algo: GRPOAlgorithmConfig) -> dict[str, object]:
    return {
        "algorithm.adv_estimator": "grpo",
        "algorithm.norm_adv_by_std_in_grpo": SCALE[algo.scale_rewards],
        "algorithm.use_kl_in_reward": False,  # GRPO's KL is a loss term (Shao et al. 2024), not a reward penalty
        f"{R}.n": algo.group_size,
        f"{A}.use_kl_loss": algo.beta > 0,
        f"{A}.kl_loss_coef": algo.beta,
        f"{A}.kl_loss_type": KL_LOSS[algo.kl_estimator],
        f"{A}.clip_ratio": algo.cliprange,
        f"{A}.clip_ratio_low": algo.cliprange,
        f"{A}.clip_ratio_high": algo.cliprange_high if algo.cliprange_high is not None else algo.cliprange,
        f"{A}.ppo_epochs": algo.num_iterations,
        f"{A}.loss_agg_mode": LOSS_AGG[algo.loss_type],
        f"{A}.policy_loss.loss_mode": POLICY_LOSS[algo.importance_sampling_level],
    }


def _ppo(run: RunConfig, algo: PPOAlgorithmConfig, ex: Exported, micro: int) -> dict[str, object]:
    """PPO with a critic and the KL in the reward (aligntune's native PPO, in verl's terms)."""
    t, lora = run.train, run.model.lora
    return {
        "algorithm.adv_estimator": "gae",
        "algorithm.gamma": algo.gamma,
        "algorithm.lam": algo.lam,
        "algorithm.use_kl_in_reward": algo.beta > 0,
        "algorithm.kl_penalty": KL_PENALTY[algo.kl_estimator],
        "algorithm.kl_ctrl.type": "adaptive" if algo.adaptive_kl else "fixed",
        "algorithm.kl_ctrl.kl_coef": algo.beta,
        "algorithm.kl_ctrl.target_kl": algo.target_kl,
        "algorithm.kl_ctrl.horizon": algo.kl_horizon,
        f"{R}.n": 1,
        f"{A}.use_kl_loss": False,
        f"{A}.clip_ratio": algo.cliprange,
        f"{A}.clip_ratio_low": algo.cliprange,
        f"{A}.clip_ratio_high": algo.cliprange,
        f"{A}.ppo_epochs": algo.ppo_epochs,
        f"{C}.ppo_epochs": algo.ppo_epochs,
        f"{C}.cliprange_value": algo.cliprange_value,
        f"{C}.model.path": ex.model_path if algo.value_model == "policy" else ex.value_model_path,
        f"{C}.model.trust_remote_code": run.model.trust_remote_code,
        f"{C}.model.enable_gradient_checkpointing": t.gradient_checkpointing,
        f"{C}.model.lora_rank": lora.r if lora.enabled else 0,
        f"{C}.model.lora_alpha": lora.alpha,
        f"{C}.model.target_modules": "all-linear" if lora.target_modules == ["all-linear"] else list(lora.target_modules),
        f"{C}.ppo_micro_batch_size_per_gpu": micro,
        f"{C}.optim.lr": t.learning_rate,
        f"{C}.optim.lr_scheduler_type": SCHEDULERS[t.lr_scheduler],
        f"{C}.optim.lr_warmup_steps_ratio": t.warmup_ratio,
        f"{C}.optim.weight_decay": t.weight_decay,
        f"{C}.optim.clip_grad": t.max_grad_norm,
    }


def format_value(value: object) -> str:
    """A value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, str) and any(c in value for c in " ,=[]{}()'\"\\:$"):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def override_strings(overrides: dict[str, object]) -> list[str]:
    return [f"{key}={format_value(value)}" for key, value in overrides.items()]
