"""Typed configuration: the dataclass schemas every YAML option is validated against.

Hydra composes `configs/train.yaml` on top of `RunConfig`; each option of the `algorithm` group
brings its own schema (registered below as `algorithm/<name>_schema`). OmegaConf checks key
names and types while composing; `__post_init__` checks values and cross-field rules when the
composed config becomes objects (`OmegaConf.to_object`). Nothing here imports torch.

Vocabulary (one name per concept, see DESIGN.md): `train.batch_size` counts prompts per rollout (one
generation round: GRPO, RLOO, PPO), or pairs (DPO, reward models), rows (KTO) and sequences (SFT) per optimizer step.
A GRPO/RLOO rollout holds batch_size x group_size completions and is learned in
`algorithm.num_mini_batches` optimizer steps (1 by default: rollout and step coincide);
`train.micro_batch_size` bounds how many completions go through one forward/backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from aligntune.errors import ConfigError

DTYPES = ("auto", "fp32", "bf16", "fp16")
QUANTIZATIONS = ("none", "4bit", "8bit")  # bitsandbytes, through transformers' BitsAndBytesConfig (CUDA, LoRA only)
QUANT_TYPES = ("nf4", "fp4")
ATTN_IMPLEMENTATIONS = ("auto", "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
ROLLOUT_ENGINES = ("hf", "vllm")
SAMPLERS = ("auto", "multinomial", "inverse_cdf")
VLLM_MODES = ("colocate", "server")
DEVICES = ("auto", "cpu", "cuda")
DATASET_FORMATS = ("auto", "prompt", "messages", "prompt_completion", "hh_rlhf", "ultrafeedback",
                   "prompt_chosen_rejected", "gsm8k", "unpaired")
GRPO_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo")
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
# DPO loss types label_smoothing acts on: TRL's own four, and sigmoid (aligntune's conservative DPO, backends/trl/dpo.py)
DPO_SMOOTHED_LOSS_TYPES = ("sigmoid", "robust", "exo_pair", "aot", "aot_unpaired")
KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")  # TRL KTOConfig.loss_type
TRUNCATION_MODES = ("keep_start", "keep_end")
PPO_KL_ESTIMATORS = ("k1",)  # the KL penalty in PPO's per-token reward; k3 is refused there (PPOAlgorithmConfig)
GRPO_KL_ESTIMATORS = ("k3", "k3_is")  # TRL GRPO: use_bias_correction_kl False | True
SCALE_REWARDS = ("group", "batch", "none")
IMPORTANCE_LEVELS = ("token", "sequence")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
DISTRIBUTED_STRATEGIES = ("ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3")
NONFINITE_POLICIES = ("stop", "skip")
TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")  # logger=...; aligntune/run/trackers.py wires each one


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
    save_merged: bool = False  # also write model_merged/: the adapter merged into the base (algorithm=reward: model/ is)
    use_dora: bool = False  # DoRA (Liu et al. 2024): magnitude + direction; slower steps, often closer to full fine-tuning
    use_rslora: bool = False  # rank-stabilised scaling alpha/sqrt(r) (Kalajdzievski 2023) instead of alpha/r
    modules_to_save: List[str] = field(default_factory=list)  # modules trained in full beside the adapter (e.g. [lm_head])

    def __post_init__(self):
        if not self.enabled:
            for key, value, default in (("use_dora", self.use_dora, False), ("use_rslora", self.use_rslora, False),
                                        ("modules_to_save", self.modules_to_save, [])):
                _check(value == default, f"model.lora.{key}={value} configures the LoRA adapter, and LoRA is off.",
                       f"Set model.lora.enabled=true, or drop model.lora.{key}.")
        _check(self.enabled or not self.save_merged, "model.lora.save_merged=true, but LoRA is off "
               "(model.lora.enabled=false), so there is no adapter to merge: the run's model/ is already full weights.",
               "Drop model.lora.save_merged, or set model.lora.enabled=true.")
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
    dtype: str = "auto"  # compute precision (models/precision.py). auto: bf16 where measured faster, else fp32
    trust_remote_code: bool = False
    revision: Optional[str] = None  # a hub model's branch, tag or commit (hub ids only)
    tokenizer: Optional[str] = None  # a different tokenizer (local directory or hub id); null: the model's own
    # A chat template for the tokenizer: a Jinja file, or the name of one TRL ships (trl/chat_templates/<name>.jinja)
    chat_template: Optional[str] = None
    attn_implementation: str = "auto"  # auto (transformers' choice) | eager | sdpa | flash_attention_2 | ...
    # Weights quantised by bitsandbytes for QLoRA (Dettmers et al. 2023): 4bit | 8bit; CUDA and LoRA only.
    quantization: str = "none"
    quant_type: str = "nf4"  # 4bit: nf4 (QLoRA's NormalFloat) | fp4
    double_quant: bool = True  # 4bit: quantise the quantisation constants too (~0.4 bit/param saved)
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self):
        _one_of("model.dtype", self.dtype, DTYPES)
        _one_of("model.attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        _one_of("model.quantization", self.quantization, QUANTIZATIONS)
        _one_of("model.quant_type", self.quant_type, QUANT_TYPES)
        _check(self.quantization == "none" or self.lora.enabled,
               f"model.quantization={self.quantization} freezes quantised weights, which only a LoRA adapter can train "
               "on (QLoRA), and LoRA is off.", "Add model.lora.enabled=true, or drop model.quantization.")
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
    eval_split: Optional[str] = None  # a held-out split of the dataset itself (e.g. "test")
    eval_fraction: Optional[float] = None  # or: hold out this fraction of the training split (seeded)
    # Prompts (grpo, rloo, ppo) longer than this many tokens are cut to it, and the count is reported; null: a prompt
    # that leaves the model's context too short for max_completion_length stops the run (aligntune/data/lengths.py).
    max_prompt_length: Optional[int] = None
    truncation_mode: str = "keep_end"  # what max_prompt_length keeps: keep_end (the question, usually) | keep_start
    # algorithm=kto: turn each preference pair into two unpaired rows (chosen: label true, rejected: label false)
    unpair: bool = False

    def __post_init__(self):
        _one_of("dataset.format", self.format, DATASET_FORMATS)
        _check(not (self.unpair and self.format == "unpaired"),
               "dataset.unpair=true turns preference pairs into unpaired rows, and dataset.format=unpaired says the "
               "data is unpaired already.", "Drop dataset.unpair, or set dataset.format to the pairs' format (auto).")
        if self.max_prompt_length is not None:
            _positive("dataset.max_prompt_length", self.max_prompt_length, "It counts prompt tokens; or null.")
        _one_of("dataset.truncation_mode", self.truncation_mode, TRUNCATION_MODES)
        _check(self.max_prompt_length is not None or self.truncation_mode == "keep_end",
               f"dataset.truncation_mode={self.truncation_mode} says how dataset.max_prompt_length cuts prompts, and "
               "dataset.max_prompt_length is not set, so nothing is cut.",
               "Set dataset.max_prompt_length=<tokens> too, or drop dataset.truncation_mode.")
        _check(self.eval_split is None or self.eval_fraction is None,
               f"dataset.eval_split={self.eval_split!r} and dataset.eval_fraction={self.eval_fraction} are both set.",
               "Choose one: the dataset's own held-out split, or a fraction of the training split.")
        if self.eval_fraction is not None:
            _check(0 < self.eval_fraction < 1, f"dataset.eval_fraction={self.eval_fraction} is outside (0, 1).",
                   "Use e.g. 0.1 to hold out 10% of the rows, or null.")
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
    paper's loss (per-sequence mean, then batch mean: TRL `loss_type="grpo"`) with its KL estimator
    (k3 per token, no importance weighting).

    The published variants are presets over this schema (configs/algorithm/<variant>.yaml keep
    `name: grpo`, so the same engine mapping runs, and record themselves in `variant`): dr_grpo
    (Liu et al. 2025), dapo (Yu et al. 2025), gspo (Zheng et al. 2025). Every knob they set is
    here, so a run can mix its own variant from plain `algorithm=grpo`.

    Batch arithmetic: one rollout samples `train.batch_size` prompts x `group_size` completions and
    is split into `num_mini_batches` optimizer steps (1: on-policy, one step per rollout).
    """

    name: str = "grpo"
    variant: str = "grpo"  # the preset this config was composed from (configs/algorithm/<variant>.yaml); a record
    group_size: int = 8  # completions sampled per prompt (TRL num_generations)
    beta: float = 0.01  # KL coefficient to the reference policy; 0 skips loading a reference model
    kl_estimator: str = "k3"  # k3 (the paper's) | k3_is: x importance ratio, unbiased KL gradient (DeepSeek-V3.2)
    cliprange: float = 0.2  # PPO-style ratio clip epsilon (TRL epsilon)
    cliprange_high: Optional[float] = None  # upper clip (DAPO "clip-higher"); null = cliprange
    temperature: float = 0.7  # sampling temperature of rollouts
    top_p: float = 1.0
    max_completion_length: int = 256  # tokens generated per completion: cost grows linearly
    num_iterations: int = 1  # optimisation passes per generated batch (mu in the paper)
    num_mini_batches: int = 1  # optimizer steps per rollout (the rollout is shuffled and split); >1 goes off-policy
    loss_type: str = "grpo"  # grpo | dr_grpo | dapo | bnpo | cispo | sapo (TRL loss aggregation)
    scale_rewards: str = "group"  # divide advantages by the group's reward std (group), batch std, or none
    importance_sampling_level: str = "token"  # token (GRPO) | sequence (GSPO)
    mask_truncated_completions: bool = False  # drop completions that hit max_completion_length from the loss
    overlong_buffer: Optional[int] = None  # DAPO soft overlong punishment: last N tokens before max_completion_length
    overlong_penalty: float = 0.5  # punishment at max_completion_length (linear from 0 over the buffer): half the
    # reward range, as in DAPO (1 against +-1 correctness); 0.5 for aligntune's 0/1 correctness
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal, sample more prompts to refill
    dynamic_sampling_max_retries: int = 9  # extra generation rounds per rollout before padding with dropped groups

    def __post_init__(self):
        _check(self.group_size >= 2, f"algorithm.group_size={self.group_size} is too small: GRPO compares "
               "completions within a group, so it needs at least 2 per prompt.",
               "Set group_size (algorithm.group_size) to 2 or more; the default is 8.")
        _check(bool(self.variant.strip()), "algorithm.variant is empty.",
               "It records the preset the config came from (grpo, dr_grpo, dapo, gspo); leave it as the preset set it.")
        _check(self.beta >= 0, f"algorithm.beta={self.beta} is negative.", "Use 0 (no KL penalty) or a positive KL coefficient such as 0.01.")
        _one_of("algorithm.kl_estimator", self.kl_estimator, GRPO_KL_ESTIMATORS)
        _positive("algorithm.cliprange", self.cliprange, "A typical value is 0.2.")
        if self.cliprange_high is not None:
            _check(self.cliprange_high >= self.cliprange, f"algorithm.cliprange_high={self.cliprange_high} is below "
                   f"algorithm.cliprange={self.cliprange}.", "Set cliprange_high >= cliprange (DAPO uses 0.28 with 0.2), or null.")
        _positive("algorithm.temperature", self.temperature, "A typical value is 0.7; use 1.0 for unmodified sampling.")
        _check(0 < self.top_p <= 1, f"algorithm.top_p={self.top_p} is outside (0, 1].", "Use 1.0 to disable nucleus sampling.")
        _positive("algorithm.max_completion_length", self.max_completion_length)
        _positive("algorithm.num_iterations", self.num_iterations)
        _positive("algorithm.num_mini_batches", self.num_mini_batches, "Use 1 for one optimizer step per rollout.")
        _one_of("algorithm.loss_type", self.loss_type, GRPO_LOSS_TYPES)
        _one_of("algorithm.scale_rewards", self.scale_rewards, SCALE_REWARDS)
        _one_of("algorithm.importance_sampling_level", self.importance_sampling_level, IMPORTANCE_LEVELS)
        if self.overlong_buffer is not None:
            _check(0 < self.overlong_buffer <= self.max_completion_length,
                   f"algorithm.overlong_buffer={self.overlong_buffer} is outside (0, algorithm.max_completion_length="
                   f"{self.max_completion_length}].",
                   "Use a fraction of max_completion_length (DAPO: 4096 of 20480, a fifth), or null for no overlong punishment.")
            _positive("algorithm.overlong_penalty", self.overlong_penalty,
                      "Use half the reward range: 0.5 for 0/1 correctness (DAPO's 1.0 is against +-1 rewards).")
        _check(self.dynamic_sampling_max_retries >= 0,
               f"algorithm.dynamic_sampling_max_retries={self.dynamic_sampling_max_retries} is negative.",
               "Use 0 (one round; dropped groups become inert padding) or a bound such as 9 (DAPO: 10 rounds in all).")


@dataclass
class RLOOAlgorithmConfig(AlgorithmConfig):
    """REINFORCE Leave-One-Out (Ahmadian et al. 2024, Back to Basics, arXiv:2402.14740) on TRL's RLOOTrainer.

    Each completion's baseline is the mean reward of the other group_size - 1 completions of its prompt;
    the KL to the reference (k1, summed over the sequence) is subtracted from the reward, as in the paper.
    Deviation: TRL's loss is PPO's clipped surrogate on the sequence ratio; with num_iterations=1 and
    num_mini_batches=1 (the defaults) the ratio is 1 up to rounding, the clip never binds, and the update
    is the paper's REINFORCE.
    Knobs share GRPO's names where they mean the same thing.
    """

    name: str = "rloo"
    group_size: int = 4  # samples per prompt (the paper's k; it reports k = 2 and 4)
    beta: float = 0.05  # KL coefficient, applied to the reward; 0 skips loading a reference model
    cliprange: float = 0.2  # only acts off-policy (num_iterations or num_mini_batches > 1)
    cliprange_high: Optional[float] = None
    temperature: float = 1.0
    top_p: float = 1.0
    max_completion_length: int = 256
    num_iterations: int = 1
    num_mini_batches: int = 1  # optimizer steps per rollout, as for GRPO
    normalize_advantages: bool = False  # standardise advantages over the rollout (not in the paper)
    reward_clip: Optional[float] = None  # clip the total reward to [-c, c] before the baseline
    mask_truncated_completions: bool = False

    def __post_init__(self):
        _check(self.group_size >= 2, f"algorithm.group_size={self.group_size} is too small: the leave-one-out baseline "
               "of a completion is the mean of the others of its prompt, so RLOO needs at least 2 per prompt.",
               "Set group_size (algorithm.group_size) to 2 or more; the default is 4.")
        _check(self.beta >= 0, f"algorithm.beta={self.beta} is negative.", "Use 0 (no KL penalty) or a positive coefficient such as 0.05.")
        _positive("algorithm.cliprange", self.cliprange, "A typical value is 0.2.")
        if self.cliprange_high is not None:
            _check(self.cliprange_high >= self.cliprange, f"algorithm.cliprange_high={self.cliprange_high} is below "
                   f"algorithm.cliprange={self.cliprange}.", "Set cliprange_high >= cliprange, or null.")
        _positive("algorithm.temperature", self.temperature, "Use 1.0 for unmodified sampling.")
        _check(0 < self.top_p <= 1, f"algorithm.top_p={self.top_p} is outside (0, 1].", "Use 1.0 to disable nucleus sampling.")
        _positive("algorithm.max_completion_length", self.max_completion_length)
        _positive("algorithm.num_iterations", self.num_iterations)
        _positive("algorithm.num_mini_batches", self.num_mini_batches, "Use 1 for one optimizer step per rollout.")
        if self.reward_clip is not None:
            _positive("algorithm.reward_clip", self.reward_clip, "Or null for no clipping.")


@dataclass
class DPOAlgorithmConfig(AlgorithmConfig):
    """Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290) on TRL's DPOTrainer."""

    name: str = "dpo"
    beta: float = 0.1  # strength of the implicit KL to the reference (temperature of the preference model)
    loss_type: List[str] = field(default_factory=lambda: ["sigmoid"])  # several = weighted sum (loss_weights)
    loss_weights: Optional[List[float]] = None
    # Assumed probability that a pair's label is flipped: sigmoid -> conservative DPO (Mitchell 2023), robust -> rDPO
    label_smoothing: float = 0.0
    max_length: int = 1024  # tokens of prompt + completion; longer pairs are truncated (truncation_mode)
    truncation_mode: str = "keep_start"  # keep_start | keep_end
    reference_free: bool = False  # compare policy log-probs directly (reference log-probs taken as 0)
    precompute_ref_log_probs: bool = False  # one reference pass before training, then no reference in memory

    def __post_init__(self):
        _positive("algorithm.beta", self.beta, "DPO's usual value is 0.1.")
        _check(len(self.loss_type) > 0, "algorithm.loss_type is empty.", "Use e.g. [sigmoid].")
        for lt in self.loss_type:
            _one_of("algorithm.loss_type", lt, DPO_LOSS_TYPES)
        if self.loss_weights is not None:
            _check(len(self.loss_weights) == len(self.loss_type),
                   f"algorithm.loss_weights has {len(self.loss_weights)} weights for {len(self.loss_type)} loss types.",
                   "Give one weight per loss type, or null for equal weights.")
        _check(0 <= self.label_smoothing < 0.5, f"algorithm.label_smoothing={self.label_smoothing} is outside [0, 0.5).",
               "Use 0 (plain DPO) or a small flip probability such as 0.1.")
        _check(self.label_smoothing == 0 or any(lt in DPO_SMOOTHED_LOSS_TYPES for lt in self.loss_type),
               f"algorithm.label_smoothing={self.label_smoothing} would be ignored: none of algorithm.loss_type="
               f"{list(self.loss_type)} reads it (only {', '.join(DPO_SMOOTHED_LOSS_TYPES)} do).",
               "Set algorithm.label_smoothing=0, or add a loss type that models flipped labels, e.g. "
               "algorithm.loss_type=[sigmoid] (conservative DPO).")
        _positive("algorithm.max_length", self.max_length)
        _one_of("algorithm.truncation_mode", self.truncation_mode, TRUNCATION_MODES)
        _check(not (self.reference_free and self.precompute_ref_log_probs),
               "algorithm.reference_free and algorithm.precompute_ref_log_probs are both true.",
               "A reference-free run has no reference log-probs to precompute; set one of them to false.")


@dataclass
class KTOAlgorithmConfig(AlgorithmConfig):
    """Kahneman-Tversky Optimization (Ethayarajh et al. 2024, arXiv:2402.01306) on TRL's KTOTrainer.

    Learns from unpaired rows (prompt, completion, label: desirable or not) rather than pairs. Paired data is
    converted on request (`dataset.unpair=true`). The KL reference point z0 of the paper is estimated, as TRL does,
    from mismatched (prompt, completion) pairs within each micro-batch, so a micro-batch needs at least 2 rows.
    """

    name: str = "kto"
    beta: float = 0.1  # higher: stay closer to the reference; lower: follow the labels harder
    desirable_weight: float = 1.0  # lambda_D: weight of the desirable rows' losses
    undesirable_weight: float = 1.0  # lambda_U: weight of the undesirable rows' losses (the paper: keep
    # lambda_D * n_D / (lambda_U * n_U) in [1, 4/3])
    loss_type: str = "kto"  # kto (the paper's) | apo_zero_unpaired (APO-zero, D'Oosterlinck et al. 2024; no KL term)
    max_length: int = 1024  # tokens of prompt + completion; longer rows are truncated at the end
    precompute_ref_log_probs: bool = False  # one reference pass up front, no reference model during training

    def __post_init__(self):
        _positive("algorithm.beta", self.beta, "KTO's usual value is 0.1.")
        _positive("algorithm.desirable_weight", self.desirable_weight, "Use 1.0, or raise it when desirable rows are rarer.")
        _positive("algorithm.undesirable_weight", self.undesirable_weight,
                  "Use 1.0, or raise it when undesirable rows are rarer.")
        _one_of("algorithm.loss_type", self.loss_type, KTO_LOSS_TYPES)
        _positive("algorithm.max_length", self.max_length)


# Why PPO refuses kl_estimator=k3 (native engine and verl alike). PPO adds -beta x the KL estimate to each token's
# reward, and a reward is not differentiated: its policy gradient is E_pi[k * grad log pi]. For k1 = log(pi/ref)
# that is exactly grad KL(pi||ref). For k3 = ref/pi - 1 - log(ref/pi) it is grad KL(pi||ref) - grad KL(ref||pi)
# (Tang & Munos 2025, "On a few pitfalls in KL divergence gradient estimation for RL"): k3 estimates the KL's
# value with low variance, but as a reward it regularises towards something else. GRPO's k3 is a loss term,
# differentiated directly, which is sound, and stays available there.
K3_IN_REWARD = (
    "algorithm.kl_estimator=k3 is not available for PPO: PPO puts the KL estimate into each token's reward, and there "
    "k3 = ref/pi - 1 - log(ref/pi) does not penalise KL(pi||ref). A reward is not differentiated, so its policy "
    "gradient is E[k3 x grad log pi] = grad KL(pi||ref) - grad KL(ref||pi) (Tang & Munos 2025): k3 estimates the "
    "KL's value with low variance, but as a reward it optimises a different regulariser (GRPO, which adds k3 to its "
    "loss and differentiates it, is unaffected).",
    "Use algorithm.kl_estimator=k1 (the log-ratio, the default), whose expected gradient as a reward is exactly "
    "grad KL(pi||ref).")


@dataclass
class PPOAlgorithmConfig(AlgorithmConfig):
    """PPO for RLHF on aligntune's native engine (Schulman et al. 2017; GAE, Schulman et al. 2016;
    KL control, Ziegler et al. 2019). TRL removed its PPO trainer in 1.13."""

    name: str = "ppo"
    temperature: float = 0.7
    top_p: float = 1.0
    max_completion_length: int = 64
    missing_eos_penalty: Optional[float] = None  # subtracted from the score of completions that never emit EOS
    # Scores come from `rewards` like GRPO's; a reward model is a reward entry too
    # (rewards.rm.fn=reward_model rewards.rm.args.model=<checkpoint>).
    value_model: str = "policy"  # critic initialised from the policy, or from a sequence-classification checkpoint path
    beta: float = 0.05  # KL coefficient (per token, added to the reward); the initial value if adaptive_kl
    kl_estimator: str = "k1"  # k1 (log-ratio), the only valid reward penalty; k3 is refused (K3_IN_REWARD)
    adaptive_kl: bool = False  # Ziegler et al. 2019 proportional controller
    target_kl: float = 6.0  # controller target (nats per sequence)
    kl_horizon: int = 10000  # controller horizon (samples)
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    ppo_epochs: int = 4  # passes over each rollout batch
    num_mini_batches: int = 1  # mini-batches per pass (shuffled)
    whiten_rewards: bool = False
    reward_clip: Optional[float] = None  # clip scores to [-c, c]
    early_stop_kl: Optional[float] = None  # end a step's remaining PPO updates once a mini-batch's approx-KL exceeds this

    def __post_init__(self):
        _positive("algorithm.temperature", self.temperature)
        _check(0 < self.top_p <= 1, f"algorithm.top_p={self.top_p} is outside (0, 1].", "Use 1.0 to disable nucleus sampling.")
        _positive("algorithm.max_completion_length", self.max_completion_length)
        _check(self.beta >= 0, f"algorithm.beta={self.beta} is negative.", "Use 0 or a positive coefficient such as 0.05.")
        _check(self.kl_estimator != "k3", *K3_IN_REWARD)
        _one_of("algorithm.kl_estimator", self.kl_estimator, PPO_KL_ESTIMATORS)
        _positive("algorithm.target_kl", self.target_kl)
        _positive("algorithm.kl_horizon", self.kl_horizon)
        _check(0 <= self.gamma <= 1, f"algorithm.gamma={self.gamma} is outside [0, 1].", "Use 1.0 for episodic RLHF.")
        _check(0 <= self.lam <= 1, f"algorithm.lam={self.lam} is outside [0, 1].", "Use 0.95.")
        _positive("algorithm.cliprange", self.cliprange, "PPO's usual value is 0.2.")
        _positive("algorithm.cliprange_value", self.cliprange_value, "PPO's usual value is 0.2.")
        _check(self.vf_coef >= 0, f"algorithm.vf_coef={self.vf_coef} is negative.", "Use e.g. 0.1.")
        _positive("algorithm.ppo_epochs", self.ppo_epochs)
        _positive("algorithm.num_mini_batches", self.num_mini_batches)
        if self.reward_clip is not None:
            _positive("algorithm.reward_clip", self.reward_clip, "Or null for no clipping.")
        if self.early_stop_kl is not None:
            _positive("algorithm.early_stop_kl", self.early_stop_kl, "Or null to never stop early.")


@dataclass
class RewardModelAlgorithmConfig(AlgorithmConfig):
    """Pairwise reward model (Bradley-Terry; Ouyang et al. 2022) on TRL's RewardTrainer."""

    name: str = "reward"
    max_length: int = 1024
    center_rewards_coefficient: Optional[float] = None  # Eisenstein et al. 2023: pull mean reward to 0

    def __post_init__(self):
        _positive("algorithm.max_length", self.max_length)


@dataclass
class SFTAlgorithmConfig(AlgorithmConfig):
    """Supervised fine-tuning on TRL's SFTTrainer; loss on completions only by default."""

    name: str = "sft"
    max_length: int = 1024
    completion_only_loss: bool = True  # prompt/completion data: no loss on the prompt
    assistant_only_loss: bool = False  # messages data: loss on assistant turns only
    packing: bool = False

    def __post_init__(self):
        _positive("algorithm.max_length", self.max_length)


@dataclass
class TrainConfig:
    """Optimisation. Counts are global (across processes): `batch_size` is prompts per rollout for GRPO, RLOO
    and PPO (split into algorithm.num_mini_batches optimizer steps), pairs or sequences per optimizer step for
    DPO, reward models and SFT."""

    batch_size: int = 2  # prompts per rollout (GRPO/RLOO: x group_size completions); DPO: pairs per optimizer step
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
    eval_steps: Optional[int] = None  # evaluate on the held-out split every N steps (null: only at the end)
    log_samples: int = 4  # completions written to samples.jsonl at each logging step
    save_steps: Optional[int] = None  # checkpoint every N optimizer steps (null: only when interrupted or diverging)
    save_total_limit: Optional[int] = 2  # keep the last N checkpoints (null: all); each holds model + optimizer state
    on_nonfinite: str = "stop"  # NaN/inf loss, gradient or reward: stop (after checkpointing the last good state) | skip the step
    # GRPO/RLOO: TRL's own completions table (console, and W&B/trackio tables with logger=...), next to samples.jsonl
    log_completions: bool = False
    # GRPO/RLOO/DPO on TRL: score a batch's log-probs (policy, reference, old policy) with each distinct prompt run
    # once for its completions (backends/trl/shared_prefix.py). null: on for GRPO/RLOO on CPU, where it is measured
    # faster; off on CUDA (not measured there) and for DPO (not measured faster: true turns it on). Off by itself
    # where it cannot apply (gradient checkpointing, dropout, several processes, multimodal or sliding-window
    # models); true there is refused.
    shared_prefix: Optional[bool] = None
    # Keep the memory freed tensors leave in glibc's heap for the next ones, instead of faulting fresh pages in at
    # every step (run/memory.py keep_freed_memory; process-wide for the rest of the process). null: on for CPU runs,
    # where it is measured faster, unless the environment set the allocator (MALLOC_*_, GLIBC_TUNABLES, a malloc in
    # LD_PRELOAD); off on CUDA (not measured there). true without glibc (musl, macOS) is refused.
    keep_freed_memory: Optional[bool] = None

    def __post_init__(self):
        _check(self.batch_size >= 1, f"train.batch_size={self.batch_size} must be at least 1.",
               "It counts prompts per rollout (GRPO, RLOO, PPO), or pairs/sequences per optimizer step (DPO, reward, SFT).")
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
        if self.eval_steps is not None:
            _positive("train.eval_steps", self.eval_steps, "Or null to evaluate only at the end.")
        _check(self.log_samples >= 0, f"train.log_samples={self.log_samples} is negative.", "Use 0 to log no samples.")
        if self.save_steps is not None:
            _positive("train.save_steps", self.save_steps, "Or null to checkpoint only when interrupted.")
        if self.save_total_limit is not None:
            _positive("train.save_total_limit", self.save_total_limit, "Keep at least 1 checkpoint, or null to keep all.")
        _one_of("train.on_nonfinite", self.on_nonfinite, NONFINITE_POLICIES)


@dataclass
class HubConfig:
    """Push the final model (or adapter) with its model card to the Hugging Face Hub at the end of the run."""

    push: bool = False
    model_id: Optional[str] = None  # <user or org>/<name>
    private: bool = True  # a new repo is private unless set false
    revision: Optional[str] = None  # a branch to push to (created if missing); null: main

    def __post_init__(self):
        if not self.push:
            for key, value, default in (("model_id", self.model_id, None), ("private", self.private, True),
                                        ("revision", self.revision, None)):
                _check(value == default, f"hub.{key}={value} configures the Hub push, and hub.push=false.",
                       f"Add hub.push=true, or drop hub.{key}.")


@dataclass
class EvalConfig:
    """Settings of `aligntune eval`, `AlignmentJob.evaluate()` and, with `after_training`, of the side-by-side
    evaluation at the end of `aligntune train`."""

    num_prompts: int = 64  # held-out prompts (or pairs) evaluated
    samples: int = 4  # completions per prompt; pass@k uses k = samples
    temperature: Optional[float] = None  # null: the algorithm's sampling temperature; 0: greedy
    max_new_tokens: Optional[int] = None  # null: algorithm.max_completion_length (or 128)
    compare_base: bool = True  # evaluate the starting model too, side by side
    # completions generated together. Decoding reads every weight once per token for the whole batch, so larger
    # batches are faster (SmolLM2 on 2 CPU cores: 100 answers 1.4x faster in one batch than in batches of 32);
    # lower it if evaluation runs out of memory (its KV cache grows with batch x length). Preference pairs
    # (DPO, reward, KTO) are scored one at a time.
    batch_size: int = 128
    after_training: bool = False  # train ends with this evaluation (replaces the engine's own final held-out eval)

    def __post_init__(self):
        _positive("eval.num_prompts", self.num_prompts)
        _positive("eval.samples", self.samples)
        _positive("eval.batch_size", self.batch_size)
        if self.temperature is not None:
            _check(self.temperature >= 0, f"eval.temperature={self.temperature} is negative.", "Use 0 for greedy decoding.")
        if self.max_new_tokens is not None:
            _positive("eval.max_new_tokens", self.max_new_tokens)


@dataclass
class DistributedConfig:
    """Several processes (and machines) under `accelerate launch`; aligntune/distributed/ writes the launch files.

    `num_processes` counts processes on all machines together (accelerate's meaning). Batch counts stay
    global: `train.batch_size` per rollout (GRPO, RLOO, PPO) or optimizer step (DPO, reward, SFT) whatever the
    process count, split evenly across them.
    """

    strategy: str = "ddp"  # ddp | fsdp | deepspeed_zero2 | deepspeed_zero3 (the presets: distributed=<strategy>)
    num_processes: int = 1  # all processes on all machines; > 1 launches under `accelerate launch`
    num_machines: int = 1
    machine_rank: int = 0  # this machine's rank (0 is the main one, which writes the run directory)
    main_process_ip: Optional[str] = None  # the rank-0 machine's address (needed with num_machines > 1)
    main_process_port: int = 29500
    # A user's accelerate config file, or a TRL preset (zero1 | zero2 | zero3 | fsdp1 | fsdp2 | multi_gpu), launched
    # as it is instead of distributed.strategy's file; its num_processes counts (config/accelerate_file.py)
    config_file: Optional[str] = None

    def __post_init__(self):
        _one_of("distributed.strategy", self.strategy, DISTRIBUTED_STRATEGIES)
        if self.config_file is not None:
            for key, value, default in (("strategy", self.strategy, "ddp"), ("num_machines", self.num_machines, 1),
                                        ("machine_rank", self.machine_rank, 0),
                                        ("main_process_ip", self.main_process_ip, None),
                                        ("main_process_port", self.main_process_port, 29500)):
                _check(value == default, f"distributed.{key}={value} and distributed.config_file={self.config_file} "
                       f"are both set, and the file is launched as it is.",
                       f"Set {'the strategy' if key == 'strategy' else key} in the file (or drop "
                       f"{'distributed=' + str(value) if key == 'strategy' else 'distributed.' + key}), or drop "
                       "distributed.config_file.")
        _positive("distributed.num_processes", self.num_processes, "Use 1 for one process, or the total over all machines.")
        _positive("distributed.num_machines", self.num_machines)
        _check(self.num_processes % self.num_machines == 0,
               f"distributed.num_processes={self.num_processes} cannot be spread evenly over "
               f"distributed.num_machines={self.num_machines} machines.",
               "num_processes counts all processes on all machines: use a multiple of num_machines.")
        _check(0 <= self.machine_rank < self.num_machines,
               f"distributed.machine_rank={self.machine_rank} is outside [0, {self.num_machines}).",
               "Give each machine its own rank, 0 for the main one.")
        _check(0 < self.main_process_port < 65536, f"distributed.main_process_port={self.main_process_port} is not a port.",
               "Use a free TCP port such as 29500.")


@dataclass
class VerlConfig:
    """backend=verl: verl runs in its own virtual environment (it pins its own transformers); aligntune
    translates the config into verl's Hydra overrides and launches `python -m verl.trainer.main_ppo` there."""

    python: Optional[str] = None  # the verl environment's interpreter, e.g. /opt/verl-venv/bin/python
    rollout: str = "vllm"  # verl's rollout engine: vllm | sglang
    project: str = "aligntune"  # trainer.project_name (the run directory's name is the experiment name)

    def __post_init__(self):
        _one_of("backend.verl.rollout", self.rollout, ("vllm", "sglang"))


@dataclass
class BackendConfig:
    """The engine. `trl_args`: extra `trl.<Algorithm>Config` fields the schema does not model."""

    name: str = "trl"
    trl_args: Dict[str, Any] = field(default_factory=dict)
    verl: VerlConfig = field(default_factory=VerlConfig)  # read only by backend=verl (refused elsewhere)


@dataclass
class RewardConfig:
    """One reward: `fn` is a registry name, `module:function` or `path/file.py:function`
    (default: the entry's own key); `weight` scales it in the total; `args` are bound as keywords;
    `timeout_s` bounds each call (rewards/watchdog.py): a reward that takes longer stops the run."""

    fn: Optional[str] = None
    weight: float = 1.0
    args: Dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 600.0  # seconds per call (one batch of completions); generous, so only a hang trips it


def _trackers(value) -> list[str]:
    """`logger` as given (null, "none", a name, or a list of names) -> the tracker names, checked."""
    if value is None or value == "none":
        return []
    names = [value] if isinstance(value, str) else list(value)
    bad = [n for n in names if not isinstance(n, str) or n not in TRACKERS]
    _check(not bad, f"logger={value!r}: {', '.join(map(repr, bad))} is not a tracker aligntune supports.",
           f"Use one or more of {', '.join(TRACKERS)}, e.g. logger=tensorboard or logger=[tensorboard,wandb], "
           "or logger=none.")
    return list(dict.fromkeys(names))


def _reward_config(name: str, spec: Any) -> RewardConfig:
    if isinstance(spec, RewardConfig):
        return spec
    fields = {"fn", "weight", "args", "timeout_s"}
    _check(isinstance(spec, dict), f"rewards.{name} must be a mapping with fn/weight/args, not {spec!r}.",
           f"Write e.g. rewards.{name}.weight=1.0 (fn defaults to the entry's name).")
    unknown = sorted(set(spec) - fields)
    _check(not unknown, f"rewards.{name} has unknown key(s) {unknown}.",
           f"A reward entry takes fn, weight, args and timeout_s; pass function arguments as "
           f"rewards.{name}.args.<name>=value.")
    weight = spec.get("weight", 1.0)
    _check(isinstance(weight, (int, float)) and not isinstance(weight, bool),
           f"rewards.{name}.weight={weight!r} is not a number.", "Use a number such as 1.0 or 0.2.")
    args = spec.get("args") or {}
    _check(isinstance(args, dict), f"rewards.{name}.args must be a mapping, not {args!r}.",
           f"Pass arguments as rewards.{name}.args.<name>=value.")
    fn = spec.get("fn")
    _check(fn is None or isinstance(fn, str), f"rewards.{name}.fn={fn!r} is not a string.",
           "Use a registry name, 'module:function' or 'path/to/file.py:function'.")
    timeout = spec.get("timeout_s", 600.0)
    _check(isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0,
           f"rewards.{name}.timeout_s={timeout!r} is not a positive number of seconds.",
           "Use e.g. 600 (the default): the longest one call of the reward may take.")
    return RewardConfig(fn=fn, weight=float(weight), args=dict(args), timeout_s=float(timeout))


@dataclass
class VllmConfig:
    """vLLM generation for GRPO/RLOO rollouts (TRL's use_vllm; `pip install 'aligntune[vllm]'`, CUDA only)."""

    mode: str = "colocate"  # colocate: vLLM shares the training GPUs | server: a `trl vllm-serve` process
    gpu_memory_utilization: float = 0.3  # colocate: the share of GPU memory vLLM may take (the rest trains)
    tensor_parallel_size: int = 1  # colocate: GPUs one vLLM engine spans
    enable_sleep: bool = False  # colocate: offload vLLM's weights and cache while training (less memory, slower)
    server_host: str = "0.0.0.0"  # server mode: where `aligntune vllm-serve` listens
    server_port: int = 8000
    server_timeout: float = 240.0  # server mode: seconds to wait for the server at start

    def __post_init__(self):
        _one_of("rollout.vllm.mode", self.mode, VLLM_MODES)
        _check(0 < self.gpu_memory_utilization <= 1, f"rollout.vllm.gpu_memory_utilization={self.gpu_memory_utilization} "
               "is outside (0, 1].", "Use a share such as 0.3.")
        _check(self.tensor_parallel_size >= 1, "rollout.vllm.tensor_parallel_size must be at least 1.", "Use 1 or more.")
        _positive("rollout.vllm.server_timeout", self.server_timeout)


@dataclass
class RolloutConfig:
    """How GRPO/RLOO sample their rollouts: hf (transformers' generate, every device) or vllm (CUDA)."""

    engine: str = "hf"
    # hf rollouts and the held-out evaluation's generation: linear layers decode on weights prepared once per
    # rollout (LoRA merged into a copy, oneDNN-packed on CPU; models/decoding.py). null: on for CPU, where it is
    # measured faster; off on CUDA (not measured there).
    prepared_weights: Optional[bool] = None
    # hf rollouts and sampled evaluation: how a token is drawn. auto: inverse_cdf on CPU (one uniform per row; the
    # same distribution as multinomial, measured faster), multinomial on CUDA (transformers' torch.multinomial).
    sampler: str = "auto"
    # hf rollouts and the held-out evaluation: each prompt's prefill runs once for its group_size rows (or
    # eval.samples), which copy its key/value cache, and the tokens all prompts of a batch start with (a system turn)
    # run once. null: on for CPU, where it is measured faster; off on CUDA (not measured there).
    shared_prefill: Optional[bool] = None
    vllm: VllmConfig = field(default_factory=VllmConfig)

    def __post_init__(self):
        _one_of("rollout.engine", self.engine, ROLLOUT_ENGINES)
        _check(self.engine == "vllm" or self.vllm == VllmConfig(), "rollout.vllm.* is set, but rollout.engine=hf.",
               "Add rollout.engine=vllm, or drop rollout.vllm.*.")
        _one_of("rollout.sampler", self.sampler, SAMPLERS)
        _check(self.engine == "hf" or (not self.prepared_weights and self.sampler == "auto"
                                       and not self.shared_prefill),
               "rollout.prepared_weights, rollout.sampler and rollout.shared_prefill shape transformers' generate, and "
               "rollout.engine=vllm generates in vLLM.",
               "Drop rollout.prepared_weights, rollout.sampler and rollout.shared_prefill, or use rollout.engine=hf.")


@dataclass
class RunConfig:
    """Everything one run needs. The only object that crosses from config to training."""

    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda
    verbose: bool = False  # full engine logs (transformers, TRL) on the console
    # Experiment trackers: a name or a list of tensorboard | wandb | mlflow | trackio (aligntune/run/trackers.py).
    # Typed Any so that both logger=tensorboard and logger=[tensorboard,wandb] compose; checked in __post_init__.
    logger: Any = field(default_factory=list)
    # The final metric (a summary.json key) the train task returns, e.g. for Optuna (hparams_search=...) to
    # optimise; null: `reward`. A run that does not log it fails with the list of the metrics it has.
    optimized_metric: Optional[str] = None
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    algorithm: Any = MISSING  # the selected option's schema, e.g. GRPOAlgorithmConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    dry_run: bool = False  # write the launch files and print the command, train nothing (backend=verl, distributed)
    # name -> RewardConfig. Typed Any so that `+rewards.new.weight=0.2` can create an entry; the entries
    # are checked and converted in __post_init__.
    rewards: Dict[str, Any] = field(default_factory=dict)
    # Continue an interrupted run: its directory, or "latest" (`aligntune train resume=...` resolves it).
    resume: Optional[str] = None
    resume_force: bool = False  # resume even though the config differs from the run's (the differences are listed)

    def __post_init__(self):
        _one_of("device", self.device, DEVICES)
        if self.distributed.config_file is not None:
            self._adopt_accelerate_file()
        self.logger = _trackers(self.logger)
        self.rewards = {name: _reward_config(name, spec) for name, spec in self.rewards.items()}
        _check(self.dataset.max_prompt_length is None or self.algorithm.name in ONLINE_ALGORITHMS,
               f"dataset.max_prompt_length={self.dataset.max_prompt_length} cuts the prompts of sampling algorithms "
               f"(grpo, rloo, ppo), and algorithm={self.algorithm.name} trains on whole sequences.",
               "Drop dataset.max_prompt_length; algorithm.max_length (and, for dpo, algorithm.truncation_mode) bounds "
               "them.")
        _check(not self.dataset.unpair or isinstance(self.algorithm, KTOAlgorithmConfig),
               f"dataset.unpair=true turns preference pairs into the unpaired rows KTO learns from, and "
               f"algorithm={self.algorithm.name} " + ("learns from the pairs themselves." if self.algorithm.name in
                                                      ("dpo", "reward") else "does not read labelled completions."),
               "Drop dataset.unpair, or use algorithm=kto.")
        _check(not isinstance(self.algorithm, KTOAlgorithmConfig) or self.dataset.unpair or not self.eval.after_training,
               "eval.after_training=true compares the trained and the starting model on held-out preference pairs, and "
               "this KTO run learns from unpaired rows (dataset.unpair=false), which have none.",
               "Drop eval.after_training: the run logs KTO's own held-out metrics (eval_rewards/*, eval_kl) with "
               "dataset.eval_fraction; or train on pairs with dataset.unpair=true.")
        if isinstance(self.algorithm, KTOAlgorithmConfig) and self.algorithm.loss_type == "kto":
            micro = self.train.micro_batch_size or max(1, self.train.batch_size // self.distributed.num_processes)
            _check(micro >= 2, f"KTO estimates its KL reference point from mismatched completions within a micro-batch, "
                   f"and a micro-batch here holds {micro} row (train.batch_size={self.train.batch_size}, "
                   f"train.micro_batch_size={self.train.micro_batch_size}, distributed.num_processes="
                   f"{self.distributed.num_processes}): the KL estimate would be the row's own reward.",
                   "Use at least 2 rows per micro-batch (train.batch_size, or train.micro_batch_size, of 2 or more per "
                   "process), or algorithm.loss_type=apo_zero_unpaired, which has no KL term.")
        _check(self.train.eval_steps is None or self.dataset.eval_split is not None or self.dataset.eval_fraction is not None,
               f"train.eval_steps={self.train.eval_steps}, but the dataset has no held-out rows to evaluate on.",
               "Set dataset.eval_split (the dataset's own held-out split) or dataset.eval_fraction, or drop train.eval_steps.")
        if isinstance(self.algorithm, (GRPOAlgorithmConfig, RLOOAlgorithmConfig, PPOAlgorithmConfig)):
            self.check_mini_batches()
        if isinstance(self.algorithm, (GRPOAlgorithmConfig, RLOOAlgorithmConfig)):
            if self.distributed.num_processes > 1:
                self._check_split(self.train.batch_size * self.algorithm.group_size // self.algorithm.num_mini_batches,
                                  "completions", f"train.batch_size={self.train.batch_size} prompts x algorithm.group_size="
                                  f"{self.algorithm.group_size}" + (f" / algorithm.num_mini_batches={self.algorithm.num_mini_batches}"
                                                                    if self.algorithm.num_mini_batches > 1 else ""))
        elif self.train.micro_batch_size is not None and not isinstance(self.algorithm, PPOAlgorithmConfig):
            b, m = self.train.batch_size, self.train.micro_batch_size
            _check(b % m == 0, f"train.micro_batch_size={m} does not divide train.batch_size={b}.",
                   f"Use one of {[d for d in range(1, b + 1) if b % d == 0]}, or null for the whole batch.")
        if not isinstance(self.algorithm, (GRPOAlgorithmConfig, RLOOAlgorithmConfig)) and self.distributed.num_processes > 1:
            unit = ("pairs" if self.algorithm.name in ("dpo", "reward") else "prompts" if self.algorithm.name == "ppo"
                    else "rows" if self.algorithm.name == "kto" else "sequences")
            self._check_split(self.train.batch_size, unit, f"train.batch_size={self.train.batch_size}")

    def _adopt_accelerate_file(self) -> None:
        """distributed.config_file's process count and machine settings (so the batch and launch checks use them), and its
        mixed precision, which accelerate puts in the environment, where transformers prefers it to fp32."""
        from aligntune.config.accelerate_file import read

        d = self.distributed
        path, preset, fields = read(d.config_file)
        n = fields["num_processes"]
        _check(preset or d.num_processes in (1, n), f"distributed.num_processes={d.num_processes}, and "
               f"distributed.config_file={d.config_file} launches num_processes={n}.",
               f"Drop distributed.num_processes (the file's {n} counts), or change num_processes in {path}.")
        if preset and d.num_processes == 1:
            d.num_processes = n  # TRL's placeholder (8), unless distributed.num_processes says otherwise
        elif not preset:
            d.num_processes = n
        # the machine settings as the file has them (distributed.* beside it are refused), for the launch checks
        d.num_machines, d.machine_rank = fields.get("num_machines", 1), fields.get("machine_rank", 0)
        d.main_process_ip, d.main_process_port = fields.get("main_process_ip"), fields.get("main_process_port", 29500)
        _check(d.num_processes % d.num_machines == 0, f"{d.num_processes} processes (distributed.config_file="
               f"{d.config_file}) cannot be spread evenly over the file's num_machines={d.num_machines}.",
               "Use a multiple of num_machines: num_processes counts all processes on all machines.")
        precision = fields.get("mixed_precision", "no") or "no"
        if precision != "no":
            _check(self.model.dtype in ("auto", precision),
                   f"model.dtype={self.model.dtype}, and distributed.config_file={d.config_file} asks accelerate for "
                   f"mixed_precision={precision}, which transformers would use instead.",
                   f"Set model.dtype={precision} (or auto), or mixed_precision: 'no' in {path}.")
            self.model.dtype = precision

    def _check_split(self, per_step: int, unit: str, origin: str) -> None:
        """Batch counts are global: one step's `per_step` items are split evenly over the processes."""
        n, micro = self.distributed.num_processes, self.train.micro_batch_size
        _check(per_step % n == 0,
               f"One optimizer step holds {per_step} {unit} ({origin}), which cannot be split evenly across "
               f"distributed.num_processes={n} processes ({per_step} / {n} = {per_step / n:g}).",
               f"Make the step a multiple of {n} (e.g. train.batch_size), or use a process count among "
               f"{[d for d in range(1, per_step + 1) if per_step % d == 0]}.")
        if micro is not None:
            _check((per_step // n) % micro == 0,
                   f"Each of the {n} processes gets {per_step // n} {unit} per step ({per_step} / {n}), which "
                   f"train.micro_batch_size={micro} does not divide.",
                   f"Use one of {[d for d in range(1, per_step // n + 1) if (per_step // n) % d == 0]}, or null.")

    def rollout_steps(self) -> int:
        """Optimizer steps one rollout is learned in (GRPO/RLOO); checkpoints fall on rollout boundaries."""
        algo = self.algorithm
        return algo.num_mini_batches * algo.num_iterations if isinstance(algo, (GRPOAlgorithmConfig, RLOOAlgorithmConfig)) else 1

    def check_mini_batches(self, by_prompts: bool = False, why: str = "") -> None:
        """algorithm.num_mini_batches splits one rollout into optimizer steps: by completions (GRPO/RLOO), or by
        prompts (PPO, and engines whose registry entry says so: `by_prompts`, `why`). The one place it is refused."""
        algo, b, micro = self.algorithm, self.train.batch_size, self.train.micro_batch_size
        minis, ppo = algo.num_mini_batches, isinstance(algo, PPOAlgorithmConfig)
        if by_prompts or ppo:
            rollout, what = b, f"{b} prompts of one rollout (train.batch_size={b})"
        else:
            rollout = b * algo.group_size
            what = (f"{rollout} completions of one rollout (train.batch_size={b} prompts x algorithm.group_size="
                    f"{algo.group_size})")
        _check(rollout % minis == 0, f"algorithm.num_mini_batches={minis} does not divide the {what}"
               + (f"; {why}" if why else "") + ".", f"Use one of {_divisors(rollout)}.")
        per_step = rollout // minis
        if ppo:
            _check(micro is None or per_step % micro == 0,
                   f"train.micro_batch_size={micro} does not divide a PPO mini-batch of {per_step} sequences "
                   f"(train.batch_size={b} / algorithm.num_mini_batches={minis}).",
                   f"Use one of {_divisors(per_step)}, or null for the whole mini-batch.")
            return
        if by_prompts:
            return
        steps = self.rollout_steps()
        if self.train.save_steps is not None and self.train.save_steps % steps:
            _check(False, f"train.save_steps={self.train.save_steps} would checkpoint in the middle of a rollout: one "
                   f"rollout takes {steps} optimizer steps (algorithm.num_mini_batches={minis} x "
                   f"algorithm.num_iterations={algo.num_iterations}), and a resume must start a new one.",
                   f"Use a multiple of {steps}.")
        if micro is not None:
            _check(per_step % micro == 0,
                   f"train.micro_batch_size={micro} does not divide the {per_step} completions of one step "
                   f"(train.batch_size={b} prompts x algorithm.group_size={algo.group_size}"
                   + (f" / algorithm.num_mini_batches={minis}" if minis > 1 else "") + ").",
                   f"Use one of {_divisors(per_step)}, or null for the whole step.")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# One place lists the algorithm schemas; compose.py registers them with Hydra's ConfigStore.
ALGORITHM_SCHEMAS: dict[str, type] = {
    "grpo": GRPOAlgorithmConfig,
    "rloo": RLOOAlgorithmConfig,
    "dpo": DPOAlgorithmConfig,
    "ppo": PPOAlgorithmConfig,
    "reward": RewardModelAlgorithmConfig,
    "sft": SFTAlgorithmConfig,
    "kto": KTOAlgorithmConfig,
}
# Algorithms that learn from sampled completions scored by rewards.
ONLINE_ALGORITHMS = ("grpo", "rloo", "ppo")
