"""The backend registry: one entry per engine, saying which algorithms it builds (import paths, not imports:
listing backends costs nothing, and torch loads only when a job is built) and what it supports. The pre-flight
and the job consult it; the schema knows no engine.

    trl     TRL's trainers, in this process (or under `accelerate launch`)
    native  aligntune's own PPO engine, in this process
    verl    launched: verl runs in its own environment; the entry translates the config, exports the data and
            launches verl's trainer (`run(run, run_dir, overrides)` instead of a trainer builder)

An in-process entry's targets are builders, `build(inputs: BuildInputs) -> Built` (core/inputs.py): the job hands
over what it set up (config, device, precision, tokenizer, callbacks, ...) and loaders for the policy, data and
rewards; the builder returns the engine's trainer and what the job needs back, and never sees the job.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from aligntune.config.schema import RunConfig, VerlConfig
from aligntune.errors import ConfigError


@dataclass(frozen=True)
class Backend:
    """What one engine offers. `why_not` says why something is missing (an algorithm, or a feature key below), and
    goes into the refusal."""

    algorithms: dict[str, str]  # algorithm -> "module:function": build(inputs) -> Built, or run(run, run_dir, overrides)
    launched: bool = False  # runs in its own environment, not in this process
    takes_trl_args: bool = False  # backend.trl_args reach the engine's config
    supports_resume: bool = True  # resume= continues from aligntune's checkpoints
    supports_skip_nonfinite: bool = True  # train.on_nonfinite=skip
    vllm_rollouts: tuple[str, ...] = ()  # algorithms whose rollouts rollout.engine=vllm generates
    hf_rollouts: bool = True  # rollouts through transformers' generate (rollout.prepared_weights, .sampler, .shared_prefill)
    completions_table: tuple[str, ...] = ()  # algorithms with TRL's completions table (train.log_completions)
    shared_prefix: tuple[str, ...] = ()  # algorithms whose scoring runs each distinct prompt once (train.shared_prefix)
    mini_batches_by_prompts: bool = False  # algorithm.num_mini_batches splits a rollout by prompts, not completions
    check: str | None = None  # "module:function": the engine's own torch-free refusals, check(run)
    why_not: dict[str, str] = field(default_factory=dict)


BACKENDS: dict[str, Backend] = {
    "trl": Backend(
        {"grpo": "aligntune.backends.trl.grpo:build", "rloo": "aligntune.backends.trl.rloo:build",
         "dpo": "aligntune.backends.trl.dpo:build", "reward": "aligntune.backends.trl.reward:build",
         "sft": "aligntune.backends.trl.sft:build", "kto": "aligntune.backends.trl.kto:build"},
        takes_trl_args=True, vllm_rollouts=("grpo", "rloo"), completions_table=("grpo", "rloo"),
        shared_prefix=("grpo", "rloo", "dpo"),
        why_not={"ppo": "TRL removed its PPO trainer in version 1.13; aligntune's own PPO runs on backend=native."}),
    "native": Backend(
        {"ppo": "aligntune.backends.native.ppo:build"},
        why_not={"rollout.engine": "runs on aligntune's native engine, whose rollouts use transformers' generate"}),
    "verl": Backend(
        {"grpo": "aligntune.backends.verl.job:run", "ppo": "aligntune.backends.verl.job:run"},
        launched=True, supports_resume=False, supports_skip_nonfinite=False, mini_batches_by_prompts=True,
        hf_rollouts=False,
        check="aligntune.backends.verl.job:check",
        why_not={"resume": "verl resumes through its own trainer.resume_mode from its checkpoints, not aligntune's",
                 "train.on_nonfinite=skip": "verl has no skip-the-step switch for NaN/inf (keep the default, stop)",
                 "rollout.engine": "is sampled by verl, whose rollout is backend.verl.rollout (vllm by default)",
                 "rollout.decoding": "samples through verl's rollout engine (backend.verl.rollout)",
                 "train.log_completions": "verl logs its own generations (trainer.log_val_generations)",
                 "num_mini_batches": "verl splits a rollout by prompts (actor.ppo_mini_batch_size)"}),
}
# The keys check_supported refuses on a backend that does not support them (backend=verl's translation lists the
# others: tests/backends/verl/test_verl.py).
REFUSED_BY_REGISTRY = ("backend.trl_args", "resume", "train.on_nonfinite", "rollout.engine", "train.log_completions",
                       "rollout.prepared_weights", "rollout.sampler", "rollout.shared_prefill", "train.shared_prefix",
                       "train.keep_freed_memory")


ROLLOUT_ALGORITHMS = ("grpo", "rloo", "ppo")  # the algorithms that sample rollouts


def resolve_backend(run: RunConfig) -> str:
    """backend=auto -> the first backend that has the algorithm."""
    name = run.backend.name
    if name == "auto":
        name = next((b for b, entry in BACKENDS.items() if run.algorithm.name in entry.algorithms), "trl")
    return name


def entry(run: RunConfig) -> Backend:
    """The registry entry of the run's backend; raises ConfigError if there is none."""
    backend = resolve_backend(run)
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend} is not a backend aligntune has.", f"Use one of: auto, {', '.join(BACKENDS)}.")
    return BACKENDS[backend]


def builder_target(run: RunConfig) -> str:
    """'module:function' that builds the engine for `run`; raises ConfigError if there is none. No imports."""
    backend, found = resolve_backend(run), entry(run)
    target = found.algorithms.get(run.algorithm.name)
    if target is None:
        have = [b for b, e in BACKENDS.items() if run.algorithm.name in e.algorithms]
        why = found.why_not.get(run.algorithm.name, "")
        raise ConfigError(f"algorithm={run.algorithm.name} is not available on backend={backend}.{' ' + why if why else ''}",
                          f"Use backend={have[0]} (or backend=auto)." if have else
                          f"backend={backend} offers: {', '.join(found.algorithms)}.")
    return target


def load_target(target: str):
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def check_supported(run: RunConfig) -> None:
    """What the run asks of its engine, against what the registry entry says the engine supports."""
    backend, found, algo = resolve_backend(run), entry(run), run.algorithm.name
    on = f"algorithm={algo} runs on backend={backend}"

    def why(key: str, default: str = "") -> str:
        text = found.why_not.get(key, default)
        return f": {text}" if text else ""

    if run.backend.trl_args and not found.takes_trl_args:
        raise ConfigError(f"backend.trl_args is set ({sorted(run.backend.trl_args)}), but {on}, which is not TRL.",
                          "Drop backend.trl_args; they are TRL's fields (the algorithm.* keys set the engine's).")
    if run.resume is not None and not found.supports_resume:
        raise ConfigError(f"resume={run.resume}: {on}, which cannot resume aligntune's checkpoints{why('resume')}.",
                          "Start the run again, or use backend=trl/native.")
    if run.train.on_nonfinite == "skip" and not found.supports_skip_nonfinite:
        raise ConfigError(f"train.on_nonfinite=skip: {on}, which cannot skip a step{why('train.on_nonfinite=skip')}.",
                          "Drop train.on_nonfinite (stop).")
    if run.rollout.engine != "hf" and algo not in found.vllm_rollouts:
        raise ConfigError(f"rollout.engine={run.rollout.engine} generates GRPO/RLOO rollouts through TRL, and "
                          f"algorithm={algo} on backend={backend} "
                          + (found.why_not.get("rollout.engine") or "samples no rollouts") + ".",
                          "Drop rollout.engine (hf).")
    decoding = [k for k, on in (("rollout.prepared_weights", run.rollout.prepared_weights is not None),
                                ("rollout.sampler", run.rollout.sampler != "auto"),
                                ("rollout.shared_prefill", run.rollout.shared_prefill is not None)) if on]
    if decoding and (not found.hf_rollouts or algo not in ROLLOUT_ALGORITHMS):
        raise ConfigError(f"{' and '.join(decoding)} shape{'' if len(decoding) > 1 else 's'} the rollouts of "
                          f"transformers' generate, and {on}, which "
                          + (found.why_not.get("rollout.decoding", "") if not found.hf_rollouts else
                             "samples no rollouts") + ".", f"Drop {', '.join(decoding)}.")
    if run.train.log_completions and algo not in found.completions_table:
        raise ConfigError(f"train.log_completions=true turns on TRL's completions table of GRPO and RLOO, and "
                          f"algorithm={algo} on backend={backend} has none{why('train.log_completions')}.",
                          "Drop it; samples.jsonl holds every run's samples.")
    if run.train.shared_prefix is not None and algo not in found.shared_prefix:
        raise ConfigError(f"train.shared_prefix scores the completions of each GRPO, RLOO or DPO prompt with one "
                          f"forward of the prompt, and {on}"
                          + (", whose rows do not share prompts" if backend == "trl" else
                             ", which computes its log-probs in its own engine") + ".", "Drop train.shared_prefix.")
    if run.train.keep_freed_memory is not None and found.launched:
        raise ConfigError(f"train.keep_freed_memory tunes the allocator of the process that trains, and {on}, which "
                          "launches its own processes.", "Drop train.keep_freed_memory.")
    if found.mini_batches_by_prompts and hasattr(run.algorithm, "num_mini_batches"):
        run.check_mini_batches(by_prompts=True, why=found.why_not.get("num_mini_batches", ""))
    if backend != "verl" and run.backend.verl != VerlConfig():
        raise ConfigError(f"backend.verl.* is set, but the run is on backend={backend}.", "Drop backend.verl.*, or use backend=verl.")


def check_launch(run: RunConfig) -> None:
    """What the engine supports, its own refusals, and: dry_run and the distributed settings apply to launched
    runs only; refused where they would do nothing."""
    from aligntune.distributed import launch

    check_supported(run)
    backend, found = resolve_backend(run), entry(run)
    if found.check:
        load_target(found.check)(run)
    if found.launched:
        return
    if launch.wanted(run):
        launch.check_launchable(run, backend)
    elif run.dry_run:
        raise ConfigError("dry_run=true writes the launch files and prints the command of a launched run, and this run "
                          f"is neither distributed nor on a launched backend (backend={backend}).",
                          "Add distributed.num_processes=N or backend=verl, or drop dry_run.")
