"""Typed configuration: the dataclass schemas every YAML option is validated against.

Hydra composes `configs/train.yaml` on top of `RunConfig`; each option of the `algorithm` group
brings its own schema (registered below as `algorithm/<name>_schema`). OmegaConf checks key
names and types while composing; `__post_init__` checks values and cross-field rules when the
composed config becomes objects (`OmegaConf.to_object`). Nothing here imports torch.

Vocabulary (one name per concept, see DESIGN.md): `train.batch_size` counts prompts (GRPO) or
pairs (DPO) per optimizer step; a GRPO step holds batch_size x group_size completions and
`train.micro_batch_size` bounds how many completions go through one forward/backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from aligntune.errors import ConfigError

DTYPES = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
DATASET_FORMATS = ("auto", "prompt", "messages")
GRPO_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo")
SCALE_REWARDS = ("group", "batch", "none")
IMPORTANCE_LEVELS = ("token", "sequence")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")


def _check(ok: bool, problem: str, fix: str) -> None:
    if not ok:
        raise ConfigError(problem, fix)


def _one_of(key: str, value: Any, allowed: tuple) -> None:
    _check(value in allowed, f"{key}={value!r} is not a valid choice.", f"Use one of: {', '.join(map(str, allowed))}.")


def _positive(key: str, value: float, fix: str = "") -> None:
    _check(value > 0, f"{key}={value} must be greater than 0.", fix or f"Set {key} to a positive value.")


@dataclass
class LoraConfig:
    """PEFT LoRA adapter. With LoRA on, the reference model is the adapter-disabled base (no copy)."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: List[str] = field(default_factory=lambda: ["all-linear"])

    def __post_init__(self):
        if self.enabled:
            _positive("model.lora.r", self.r)
            _positive("model.lora.alpha", self.alpha)
            _check(0 <= self.dropout < 1, f"model.lora.dropout={self.dropout} is outside [0, 1).",
                   "Use a dropout probability such as 0.05.")
            _check(len(self.target_modules) > 0, "model.lora.target_modules is empty.",
                   "Name the modules to adapt (e.g. [q_proj, v_proj]) or use [all-linear].")


@dataclass
class ModelConfig:
    """The policy. `name_or_path`: a shipped preset (`aligntune:tiny`), a local directory or a hub id."""

    name_or_path: str = MISSING
    dtype: str = "auto"  # compute precision; master weights stay fp32. auto: bf16 on GPUs that support it, else fp32
    trust_remote_code: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self):
        _one_of("model.dtype", self.dtype, DTYPES)
        _check(bool(self.name_or_path.strip()), "model.name_or_path is empty.",
               "Pick a preset (model=tiny) or set model.name_or_path to a local directory or hub id.")


@dataclass
class DatasetConfig:
    """Where prompts come from. `name`: a shipped dataset, a local file/directory or a hub id."""

    name: str = MISSING
    format: str = "auto"  # how rows become canonical columns; auto-detected from the columns
    subset: Optional[str] = None  # hub configuration name, e.g. "main" for openai/gsm8k
    split: str = "train"
    columns: Dict[str, str] = field(default_factory=dict)  # canonical name -> column in the source
    max_samples: Optional[int] = None  # keep the first N rows (after shuffling with the run seed)
    shuffle: bool = True  # shuffle with the run seed, before max_samples and by the trainer's sampler
    system_prompt: Optional[str] = None  # prepended as a system message to conversational prompts

    def __post_init__(self):
        _one_of("dataset.format", self.format, DATASET_FORMATS)
        if self.max_samples is not None:
            _positive("dataset.max_samples", self.max_samples, "Set it to a row count, or null for all rows.")
        _check(bool(self.name.strip()), "dataset.name is empty.",
               "Pick a preset (dataset=letters) or set dataset.name to a file, directory or hub id.")


@dataclass
class AlgorithmConfig:
    """Common base of the `algorithm` group's schemas; `name` selects the engine mapping."""

    name: str = MISSING


@dataclass
class GRPOAlgorithmConfig(AlgorithmConfig):
    """Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300).

    Defaults follow the seed: group_size 8, beta 0.01, cliprange 0.2, temperature 0.7, and the
    paper's loss (per-sequence mean, then batch mean: TRL `loss_type="grpo"`).
    """

    name: str = "grpo"
    group_size: int = 8  # completions sampled per prompt (TRL num_generations)
    beta: float = 0.01  # KL coefficient to the reference policy; 0 skips loading a reference model
    cliprange: float = 0.2  # PPO-style ratio clip epsilon (TRL epsilon)
    cliprange_high: Optional[float] = None  # upper clip (DAPO "clip-higher"); null = cliprange
    temperature: float = 0.7  # sampling temperature of rollouts
    top_p: float = 1.0
    max_completion_length: int = 256  # tokens generated per completion: cost grows linearly
    num_iterations: int = 1  # optimisation passes per generated batch (mu in the paper)
    loss_type: str = "grpo"  # grpo | dr_grpo | dapo | bnpo | cispo | sapo (TRL loss aggregation)
    scale_rewards: str = "group"  # divide advantages by the group's reward std (group), batch std, or none
    importance_sampling_level: str = "token"  # token (GRPO) | sequence (GSPO)
    mask_truncated_completions: bool = False  # drop completions that hit max_completion_length from the loss

    def __post_init__(self):
        _check(self.group_size >= 2, f"algorithm.group_size={self.group_size} is too small: GRPO compares "
               "completions within a group, so it needs at least 2 per prompt.",
               "Set group_size (algorithm.group_size) to 2 or more; the default is 8.")
        _check(self.beta >= 0, f"algorithm.beta={self.beta} is negative.", "Use 0 (no KL penalty) or a positive KL coefficient such as 0.01.")
        _positive("algorithm.cliprange", self.cliprange, "A typical value is 0.2.")
        if self.cliprange_high is not None:
            _check(self.cliprange_high >= self.cliprange, f"algorithm.cliprange_high={self.cliprange_high} is below "
                   f"algorithm.cliprange={self.cliprange}.", "Set cliprange_high >= cliprange (DAPO uses 0.28 with 0.2), or null.")
        _positive("algorithm.temperature", self.temperature, "A typical value is 0.7; use 1.0 for unmodified sampling.")
        _check(0 < self.top_p <= 1, f"algorithm.top_p={self.top_p} is outside (0, 1].", "Use 1.0 to disable nucleus sampling.")
        _positive("algorithm.max_completion_length", self.max_completion_length)
        _positive("algorithm.num_iterations", self.num_iterations)
        _one_of("algorithm.loss_type", self.loss_type, GRPO_LOSS_TYPES)
        _one_of("algorithm.scale_rewards", self.scale_rewards, SCALE_REWARDS)
        _one_of("algorithm.importance_sampling_level", self.importance_sampling_level, IMPORTANCE_LEVELS)


@dataclass
class TrainConfig:
    """Optimisation. Counts are per optimizer step and global (across processes)."""

    batch_size: int = 2  # prompts per optimizer step (GRPO: x group_size completions)
    micro_batch_size: Optional[int] = None  # completions per forward/backward (memory); null = the whole step
    learning_rate: float = 1e-6
    num_epochs: float = 1.0
    max_steps: Optional[int] = None  # overrides num_epochs when set
    lr_scheduler: str = "constant"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False  # recompute activations: less memory, ~20-30% slower steps
    logging_steps: int = 1  # optimizer steps between metric lines (metrics.jsonl, progress bar)
    log_samples: int = 4  # completions written to samples.jsonl at each logging step

    def __post_init__(self):
        _check(self.batch_size >= 1, f"train.batch_size={self.batch_size} must be at least 1.", "It counts prompts per optimizer step.")
        if self.micro_batch_size is not None:
            _check(self.micro_batch_size >= 1, f"train.micro_batch_size={self.micro_batch_size} must be at least 1.",
                   "Use null for the whole step, or a divisor of the completions per step.")
        _positive("train.learning_rate", self.learning_rate, "Typical values: 1e-6 for real models, 1e-3 for model=tiny.")
        _positive("train.num_epochs", self.num_epochs)
        if self.max_steps is not None:
            _positive("train.max_steps", self.max_steps, "Use null to train for train.num_epochs instead.")
        _one_of("train.lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        _check(0 <= self.warmup_ratio < 1, f"train.warmup_ratio={self.warmup_ratio} is outside [0, 1).", "Use e.g. 0.05.")
        _check(self.weight_decay >= 0, f"train.weight_decay={self.weight_decay} is negative.", "Use 0 or a small positive value.")
        _positive("train.max_grad_norm", self.max_grad_norm)
        _positive("train.logging_steps", self.logging_steps)
        _check(self.log_samples >= 0, f"train.log_samples={self.log_samples} is negative.", "Use 0 to log no samples.")


@dataclass
class BackendConfig:
    """The engine. `trl_args`: extra `trl.<Algorithm>Config` fields the schema does not model."""

    name: str = "trl"
    trl_args: Dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardConfig:
    """One reward: `fn` is a registry name, `module:function` or `path/file.py:function`
    (default: the entry's own key); `weight` scales it in the total; `args` are bound as keywords."""

    fn: Optional[str] = None
    weight: float = 1.0
    args: Dict[str, Any] = field(default_factory=dict)


def _reward_config(name: str, spec: Any) -> RewardConfig:
    if isinstance(spec, RewardConfig):
        return spec
    fields = {"fn", "weight", "args"}
    _check(isinstance(spec, dict), f"rewards.{name} must be a mapping with fn/weight/args, not {spec!r}.",
           f"Write e.g. rewards.{name}.weight=1.0 (fn defaults to the entry's name).")
    unknown = sorted(set(spec) - fields)
    _check(not unknown, f"rewards.{name} has unknown key(s) {unknown}.",
           f"A reward entry takes fn, weight and args; pass function arguments as rewards.{name}.args.<name>=value.")
    weight = spec.get("weight", 1.0)
    _check(isinstance(weight, (int, float)) and not isinstance(weight, bool),
           f"rewards.{name}.weight={weight!r} is not a number.", "Use a number such as 1.0 or 0.2.")
    args = spec.get("args") or {}
    _check(isinstance(args, dict), f"rewards.{name}.args must be a mapping, not {args!r}.",
           f"Pass arguments as rewards.{name}.args.<name>=value.")
    fn = spec.get("fn")
    _check(fn is None or isinstance(fn, str), f"rewards.{name}.fn={fn!r} is not a string.",
           "Use a registry name, 'module:function' or 'path/to/file.py:function'.")
    return RewardConfig(fn=fn, weight=float(weight), args=dict(args))


@dataclass
class RunConfig:
    """Everything one run needs. The only object that crosses from config to training."""

    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda
    verbose: bool = False  # full engine logs (transformers, TRL) on the console
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    algorithm: Any = MISSING  # the selected option's schema, e.g. GRPOAlgorithmConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    # name -> RewardConfig. Typed Any so that `+rewards.new.weight=0.2` can create an entry; the entries
    # are checked and converted in __post_init__.
    rewards: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        _one_of("device", self.device, DEVICES)
        self.rewards = {name: _reward_config(name, spec) for name, spec in self.rewards.items()}
        if isinstance(self.algorithm, GRPOAlgorithmConfig):
            self._check_grpo_batch()
            _check(len(self.rewards) > 0, "GRPO needs at least one reward, and none is configured.",
                   "Pick a dataset preset that brings rewards (dataset=letters) or add one, e.g. "
                   "'+rewards.my_reward.fn=path/to/file.py:my_reward'.")

    def _check_grpo_batch(self) -> None:
        per_step = self.train.batch_size * self.algorithm.group_size
        micro = self.train.micro_batch_size
        if micro is not None:
            divisors = [d for d in range(1, per_step + 1) if per_step % d == 0]
            _check(per_step % micro == 0,
                   f"train.micro_batch_size={micro} does not divide the {per_step} completions of one step "
                   f"(train.batch_size={self.train.batch_size} prompts x algorithm.group_size={self.algorithm.group_size}).",
                   f"Use one of {divisors}, or null for the whole step.")


# One place lists the algorithm schemas; compose.py registers them with Hydra's ConfigStore.
ALGORITHM_SCHEMAS: dict[str, type] = {"grpo": GRPOAlgorithmConfig}
