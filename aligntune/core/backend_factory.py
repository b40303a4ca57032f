"""The backend factory: one dict from (backend, algorithm) to the function that builds the engine's
trainer, and the job object the CLI and the Python API share.

    from aligntune.core.backend_factory import create_rl_trainer
    trainer = create_rl_trainer(model_name="aligntune:tiny", dataset_name="letters", algorithm="grpo",
                                backend="trl", num_epochs=1, batch_size=2, learning_rate=1e-6)
    metrics = trainer.train()

Import paths, not imports: listing backends costs nothing, and torch loads only when a job is built.
"""

from __future__ import annotations

import importlib
import math
import os
import time
import traceback
from pathlib import Path
from typing import Any

from aligntune.config.schema import RunConfig
from aligntune.errors import ConfigError

BACKENDS: dict[str, dict[str, str]] = {
    "trl": {"grpo": "aligntune.backends.trl.grpo:build", "rloo": "aligntune.backends.trl.rloo:build",
            "dpo": "aligntune.backends.trl.dpo:build", "reward": "aligntune.backends.trl.reward:build",
            "sft": "aligntune.backends.trl.sft:build", "kto": "aligntune.backends.trl.kto:build"},
    "native": {"ppo": "aligntune.backends.native.ppo:build"},
    # verl runs in its own environment: these translate the config, export the data and launch verl's trainer.
    "verl": {"grpo": "aligntune.backends.verl.job:run", "ppo": "aligntune.backends.verl.job:run"},
}
# Backends whose engine runs in its own environment: their BACKENDS entry is `run(run, run_dir, overrides)`,
# not an in-process trainer builder.
LAUNCHED = ("verl",)
WHY_NOT = {("trl", "ppo"): "TRL removed its PPO trainer in version 1.13; aligntune's own PPO runs on backend=native."}


def resolve_backend(run: RunConfig) -> str:
    """backend=auto -> the first backend that has the algorithm; an explicit backend must have it."""
    name = run.backend.name
    if name == "auto":
        name = next((b for b, algos in BACKENDS.items() if run.algorithm.name in algos), "trl")
        if name != "trl" and run.backend.trl_args:
            raise ConfigError(f"backend.trl_args is set, but algorithm={run.algorithm.name} runs on backend={name}, "
                              "which is not TRL.", "Drop backend.trl_args.")
    return name


def builder_target(run: RunConfig) -> str:
    """'module:function' that builds the engine for `run`; raises ConfigError if there is none. No imports."""
    backend = resolve_backend(run)
    algorithms = BACKENDS.get(backend)
    if algorithms is None:
        raise ConfigError(f"backend={backend} is not a backend aligntune has.", f"Use one of: auto, {', '.join(BACKENDS)}.")
    target = algorithms.get(run.algorithm.name)
    if target is None:
        have = [b for b, algos in BACKENDS.items() if run.algorithm.name in algos]
        why = WHY_NOT.get((backend, run.algorithm.name), "")
        raise ConfigError(f"algorithm={run.algorithm.name} is not available on backend={backend}.{' ' + why if why else ''}",
                          f"Use backend={have[0]} (or backend=auto)." if have else f"backend={backend} offers: {', '.join(algorithms)}.")
    return target


def check_launch(run: RunConfig) -> None:
    """dry_run and the distributed settings apply to launched runs only; refused where they would do nothing."""
    from aligntune.config.schema import VerlConfig
    from aligntune.distributed import launch

    backend = resolve_backend(run)
    if backend != "verl" and run.backend.verl != VerlConfig():
        raise ConfigError(f"backend.verl.* is set, but the run is on backend={backend}.", "Drop backend.verl.*, or use backend=verl.")
    if backend == "verl":
        from aligntune.backends.verl.job import check

        check(run)
        return
    if launch.wanted(run):
        launch.check_launchable(run, backend)
    elif run.dry_run:
        raise ConfigError("dry_run=true writes the launch files and prints the command of a launched run, and this run "
                          f"is neither distributed nor on a launched backend (backend={backend}).",
                          "Add distributed.num_processes=N or backend=verl, or drop dry_run.")


def run_job(run: RunConfig, run_dir: str | Path, overrides: list[str] | None = None,
            parallel_jobs: int = 1) -> dict[str, Any]:
    """One job as the CLI runs it: in this process, under `accelerate launch`, or on a launched backend.
    `parallel_jobs`: how many jobs of a sweep run at once on this machine (their torch threads share the cores)."""
    overrides = list(overrides or [])
    check_launch(run)
    backend = resolve_backend(run)
    if backend in LAUNCHED:
        module, func = builder_target(run).split(":")
        return getattr(importlib.import_module(module), func)(run, run_dir, overrides)
    from aligntune.distributed import launch

    if launch.wanted(run):
        return launch.launch(run, run_dir, overrides)
    return AlignmentJob(run, run_dir, overrides, parallel_jobs=parallel_jobs).train()


def builder_for(run: RunConfig):
    module, func = builder_target(run).split(":")
    return getattr(importlib.import_module(module), func)


class AlignmentJob:
    """One run: model, tokenizer, data, rewards and the engine's trainer, writing to one run directory.

    Building it loads everything (errors surface here, before training); `.train()` runs it and
    returns the final metrics. `.trainer` is the engine's own trainer (e.g. `trl.GRPOTrainer`).
    """

    def __init__(self, run: RunConfig, run_dir: str | Path, overrides: list[str] | None = None, parallel_jobs: int = 1):
        from aligntune.run import logs
        from aligntune.run.rundir import RunDir

        self.config = run
        self.overrides = list(overrides or [])
        self.parallel_jobs = parallel_jobs
        # Under `accelerate launch` (aligntune.distributed) every process builds a job; global rank 0 writes.
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.is_main = int(os.environ.get("RANK", "0")) == 0
        self.run_dir = RunDir(run_dir, main=self.is_main)
        self.resume_from = self._resume_checkpoint(run)
        history = []
        if self.resume_from is not None:
            from aligntune.run.checkpoints import step_of

            history = self.run_dir.resume(run, overrides, step_of(self.resume_from))
        else:
            self.run_dir.start(run, overrides)
        try:
            if self.is_main:
                logs.setup(self.run_dir.path, run.verbose)
            self._build()
            self.recorder.history[:0] = history  # a resumed run's summary covers the steps before the checkpoint too
        except KeyboardInterrupt:
            self.run_dir.interrupt(0, "SIGINT", None)
            raise
        except BaseException as exc:
            self.run_dir.fail(exc)
            raise

    def _resume_checkpoint(self, run: RunConfig) -> Path | None:
        """The checkpoint to continue from when `run.resume` names this run directory (the CLI resolves it)."""
        from aligntune.run.checkpoints import latest

        if run.resume is None:
            return None
        if Path(run.resume).expanduser().resolve() != self.run_dir.path.resolve():
            raise ConfigError(f"resume={run.resume} names another directory than this run's ({self.run_dir.path}).",
                              "A run resumes in its own directory: `aligntune train resume=<run dir>`, or in Python "
                              "create_rl_trainer(..., output_dir=<run dir>, resume=<run dir>) with the run's config.")
        from aligntune.run import resume

        resume.check_resumable(self.run_dir.path, run)  # also for the Python API, where no CLI planned the resume
        return latest(self.run_dir.checkpoints)

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir.checkpoints

    def _build(self) -> None:
        from transformers import set_seed

        from aligntune.models.loading import load_tokenizer, resolve_device
        from aligntune.run import memory
        from aligntune.run.callbacks import RichProgress, RunRecorder
        from aligntune.run.samples import SampleBook

        from aligntune.models.loading import compute_precision
        from aligntune.run import console

        run = self.config
        set_seed(run.seed)  # fresh heads (reward model, critic) and LoRA adapters are initialised from the run's seed
        build_trainer = builder_for(run)
        self.device = resolve_device(run.device)
        from aligntune.backends.trl.common import check_rollout_engine
        from aligntune.models.loading import check_model_options

        check_model_options(run.model, self.device)  # GPU-only options refused before anything loads
        check_rollout_engine(run, self.device)
        self.precision = compute_precision(run.model, self.device)
        self.run_dir.record(device=self.device, compute_dtype=self.precision)
        if self.is_main:
            console.show_compute(self.device, self.precision)
        self.load_warning = None
        if self.device == "cpu":
            from aligntune.run import threads

            cores = threads.usable_cores()
            self.load_warning = threads.OtherLoadWarning(threads.configure(self.parallel_jobs, cores), cores)
        if resolve_backend(run) == "trl" and self.device == "cpu":
            from aligntune.backends.trl.cpu_speed import compact_fused_head_on_cpu

            compact_fused_head_on_cpu()  # TRL's LM head scores every position on CPU; its GPU path only completions
        self.tokenizer = load_tokenizer(run.model)
        self.memory_estimate = memory.check(run)  # before any weights are loaded
        self.book = SampleBook()
        from aligntune.run.guards import NonFiniteGuard

        self.nonfinite = NonFiniteGuard(run.train.on_nonfinite)
        weights = {name: spec.weight for name, spec in run.rewards.items()}
        self.recorder = RunRecorder(self.run_dir, self.book, run.train.log_samples, weights)
        self.progress = RichProgress()
        from aligntune.run.phases import PhaseTimer

        self.phases = PhaseTimer()
        self.callbacks = [self.recorder, self.phases] + ([] if run.verbose else [self.progress])
        self.master_weights = False  # set by load_policy when the weights are low precision
        self.fp32_originals: dict = {}  # set by load_policy: the fp32 weights a full-weight bf16 policy was rounded from
        self.trainer = build_trainer(run, self)
        if self.master_weights and hasattr(self.trainer, "create_optimizer"):
            from aligntune.models.precision import use_master_weights

            use_master_weights(self.trainer, self.fp32_originals)
        from aligntune.run.phases import instrument

        instrument(self.trainer, self.phases)
        from aligntune.run.trackers import place

        handler = getattr(self.trainer, "callback_handler", None)  # transformers' Trainer; the native engine: .callbacks
        place(handler.callbacks if handler is not None else getattr(self.trainer, "callbacks", []), self.run_dir.path)
        self._add_guards()
        if not run.verbose and hasattr(self.trainer, "remove_callback"):
            from transformers.trainer_callback import PrinterCallback, ProgressCallback

            self.trainer.remove_callback(PrinterCallback)
            self.trainer.remove_callback(ProgressCallback)

    def _add_guards(self) -> None:
        """Clean interruption, atomic checkpoints (transformers trainers) and the divergence guards."""
        from aligntune.run.checkpoints import InterruptGuard, make_atomic
        from aligntune.run.guards import TrainingWarnings

        can_checkpoint = hasattr(self.trainer, "_save_checkpoint")
        if can_checkpoint:
            make_atomic(self.trainer, self.run_dir.path / "config.yaml")
        self.interrupt = InterruptGuard(can_checkpoint, self.config.rollout_steps())
        self.book.check = self.nonfinite.check_rewards
        extra = [self.interrupt, self.nonfinite, TrainingWarnings(self.config)]
        if self.load_warning is not None:
            extra.append(self.load_warning)
        if hasattr(self.trainer, "add_callback"):
            for cb in extra:
                self.trainer.add_callback(cb)
        else:  # the native engine's list
            self.trainer.callbacks += extra

    # What builders ask the job for. Each loads on demand, so an algorithm pays only for what it uses.

    def load_policy(self, fp32_weights: bool = False):
        """The policy model and its PEFT config (None without LoRA). Its weights are in the compute precision's
        weight dtype (bf16 for bf16 on a CPU, with fp32 master copies kept by the optimizer; see models.precision),
        or fp32 with `fp32_weights` (engines that run autocast themselves).

        For bf16 weights of a full-weight run the model loads in fp32 and is rounded here, keeping the fp32 tensors
        as the optimizer's masters-to-be (so an untouched weight is saved exactly as loaded); a LoRA run's frozen
        base loads in bf16 directly (the merged model is built from an fp32 base at the end: `_save_merged`)."""
        import torch

        from aligntune.models.loading import load_model, peft_config
        from aligntune.models.precision import to_low_precision, weight_dtype

        dtype = torch.float32 if fp32_weights else weight_dtype(self.precision, self.device)
        self.master_weights = dtype != torch.float32
        lora = peft_config(self.config.model)
        if not self.master_weights or lora is not None:
            return load_model(self.config.model, dtype), lora
        model = load_model(self.config.model, torch.float32)
        self.fp32_originals = to_low_precision(model, dtype, keep=True)
        return model, lora

    def prompt_data(self):
        """Rows with a `prompt` column (plus the columns rewards read), shuffled with the run seed."""
        return self.prompt_splits()[0]

    def prompt_splits(self):
        """(train, held-out or None) prompt rows, each fitted to the model's context (data/lengths.py)."""
        return self._data("prompts")

    def preference_data(self):
        """(train, held-out or None) preference pairs: prompt/chosen/rejected, checked against the context."""
        return self._data("preferences")

    def sft_data(self):
        """(train, held-out or None) demonstrations: prompt/completion or messages, checked against the context."""
        return self._data("sft")

    def _data(self, kind: str):
        from aligntune.data.lengths import fitter
        from aligntune.data.loading import load

        return load(self.config.dataset, self.config.seed, kind, fit=fitter(self.config, self.tokenizer, kind))

    def reward_functions(self, rows: list[dict] | None = None) -> list:
        """The configured rewards in TRL's signature, each called once on a few dataset rows first (a broken
        reward fails before training), and recorded for samples.jsonl. `rows`: default the first 4 prompt rows."""
        from aligntune.rewards.check import check_rewards
        from aligntune.rewards.registry import bind
        from aligntune.rewards.watchdog import with_timeout

        bound = {name: with_timeout(name, bind(name, spec.fn or name, spec.args), spec.timeout_s)
                 for name, spec in self.config.rewards.items()}
        if rows is None:
            data = self.prompt_data()
            rows = [data[i] for i in range(min(len(data), 4))]
        check_rewards(bound, rows)
        return [self.book.wrap(name, fn, self.config.rewards[name].weight) for name, fn in bound.items()]

    def train(self) -> dict[str, Any]:
        from aligntune.errors import RunInterrupted, TrainingDiverged
        from aligntune.run import console, trackers
        from aligntune.run.guards import NonFinite, RewardFailure

        try:
            with self.interrupt:
                try:
                    if self.resume_from is not None:
                        self._restore_token_count()
                        self.trainer.train(resume_from_checkpoint=str(self.resume_from))
                    else:
                        self.trainer.train()
                except NonFinite:
                    pass  # self.nonfinite.diverged says what and where; handled below
                except RewardFailure as failure:
                    self.reward_failure = failure
            self.progress.close()
            if self.interrupt.interrupted:
                raise RunInterrupted(self._interrupted(self.interrupt.signal_name))
            if self.nonfinite.diverged is not None:
                raise self._diverged()
            if self.reward_failure is not None:
                raise self._reward_failed(self.reward_failure) from self.reward_failure.error
            if getattr(self.trainer, "eval_dataset", None) is not None and not self.config.eval.after_training:
                self.trainer.evaluate()  # final held-out metrics, logged (eval_*) like the periodic ones
            if self.master_weights:
                from aligntune.models.precision import restore_fp32_weights

                restore_fp32_weights(self.trainer)  # save the fp32 master weights, not their bf16 rounding
            self.trainer.save_model(str(self.run_dir.model))  # every process: sharded engines gather; rank 0 writes
            if not self.is_main:
                return {}
            self.tokenizer.save_pretrained(str(self.run_dir.model))
            if self.config.model.lora.save_merged:
                self._save_merged()
            if self.run_dir.checkpoints.is_dir() and not any(self.run_dir.checkpoints.iterdir()):
                self.run_dir.checkpoints.rmdir()  # the engine's working directory, unused without checkpoints
            final = final_metrics(self.recorder.history)
            if self.phases.history:
                from aligntune.run.phases import means

                final.update(means(self.phases.history))  # the run's mean seconds per step in each phase
            if self.config.eval.after_training:
                final.update(self._evaluate_after_training())
            self._model_card_and_push(final)
            summary = self.run_dir.finish(final)
        except (RunInterrupted, TrainingDiverged):
            raise
        except KeyboardInterrupt:  # a second Ctrl-C: out at once, no checkpoint of the step in progress
            self.progress.close()
            self.run_dir.interrupt(self._step(), "SIGINT (twice)", None)
            raise
        except BaseException as exc:
            self.progress.close()
            self.run_dir.fail(exc)
            trackers.finish(self.config.logger, failed=True)
            raise
        trackers.finish(self.config.logger)
        console.show_summary(summary, self.run_dir.path, self.recorder.first_samples, self.recorder.last_samples)
        if self.eval_result is not None:
            console.show_before_after(self.eval_result)
        from aligntune.run.report import write_run_report_or_warn

        write_run_report_or_warn(self.run_dir.path)  # plots + report.md; a plotting failure only warns
        return summary

    eval_result: dict | None = None

    def _model_card_and_push(self, final: dict) -> None:
        """model/README.md (the Hub's model card) and, with hub.push=true, the upload of model/ (aligntune.run.model_card)."""
        from aligntune.run import model_card

        summary = {**final, **self.run_dir.facts, "wall_time_s": round(time.time() - self.run_dir.started, 1)}
        model_card.write(self.run_dir.model, self.config, summary, self.overrides)
        if self.config.hub.push:
            from aligntune.errors import ModelError

            try:
                final["hub_url"] = model_card.push(self.run_dir.model, self.config)
            except Exception as exc:
                raise ModelError(f"Pushing {self.run_dir.model} to the Hub as {self.config.hub.model_id} failed: "
                                 f"{type(exc).__name__}: {exc}. The trained model is saved there.",
                                 f"Upload it yourself: hf upload {self.config.hub.model_id} {self.run_dir.model}") from exc

    def _evaluate_after_training(self) -> dict[str, float]:
        """eval.after_training: the trained and the starting model on held-out prompts, side by side (as
        `aligntune eval`); eval/<time>_after_training_<settings>.json and eval.json in the run directory; the numbers
        as eval/base/* and eval/trained/* in the summary."""
        from aligntune.evaluation import write_result
        from aligntune.run.logs import quiet_engines

        quiet_engines()
        self.eval_result = self.evaluate()
        write_result(self.eval_result, self.run_dir.path, by="after_training")
        return {f"eval/{side}/{key}": value for side in ("base", "trained") if side in self.eval_result
                for key, value in self.eval_result[side].items() if isinstance(value, (int, float))}

    def _save_merged(self) -> None:
        """model_merged/: the trained adapter merged into the base weights, loadable without PEFT. The base is the
        checkpoint as loaded in fp32 (not the bf16 copy a bf16 run trained against), so weights the adapter does not
        touch are exact and the adapter's delta is added in fp32."""
        from peft import PeftModel

        from aligntune.models.merging import merge_into_fp32_base

        model = getattr(self.trainer, "model", None) or getattr(getattr(self.trainer, "models", None), "policy", None)
        if not isinstance(model, PeftModel):  # e.g. the reward trainer already saves merged weights in model/
            return
        merged = merge_into_fp32_base(model, self.load_fp32_base)
        merged.save_pretrained(str(self.run_dir.path / "model_merged"))
        self.tokenizer.save_pretrained(str(self.run_dir.path / "model_merged"))

    def load_fp32_base(self):
        """The policy's starting weights in fp32 (what a merge adds an adapter's delta to)."""
        import torch

        from aligntune.models.loading import load_model

        return load_model(self.config.model, torch.float32, quantize=False)

    def _restore_token_count(self) -> None:
        """TRL's DPO/SFT/reward trainers count `num_tokens` in `_total_train_tokens`, which no checkpoint holds (GRPO
        uses the trainer state's count, which transformers restores); continue it from the last logged value."""
        counted = [h["num_tokens"] for h in self.recorder.history if isinstance(h.get("num_tokens"), (int, float))]
        if counted and hasattr(self.trainer, "_total_train_tokens"):
            self.trainer._total_train_tokens = type(self.trainer._total_train_tokens)(counted[-1])

    def _step(self) -> int:
        return int(getattr(getattr(self.trainer, "state", None), "global_step", 0) or 0)

    def _interrupted(self, signal_name: str) -> str:
        """Mark the run interrupted; the message that says how to resume."""
        from aligntune.run.checkpoints import latest, step_of

        checkpoint = latest(self.run_dir.checkpoints) if self.interrupt.can_checkpoint else None
        if checkpoint is not None and step_of(checkpoint) != self._step():
            checkpoint = None  # an older periodic one: say what is true
        self.run_dir.interrupt(self._step(), signal_name, checkpoint)
        if checkpoint is None:
            return (f"interrupted ({signal_name}) at step {self._step()}: {self.run_dir.path} is marked interrupted. "
                    f"algorithm={self.config.algorithm.name} does not checkpoint, so it cannot be resumed; start it again.")
        return (f"interrupted ({signal_name}) at step {self._step()}: checkpoint written to {checkpoint}; "
                f"{self.run_dir.path} is marked interrupted. Resume with:\n  aligntune train resume={self.run_dir.path}")

    def _checkpoint_last_good(self) -> Path | None:
        """Write a checkpoint of the trainer's state now (the step in progress not applied); None if it cannot."""
        if not self.interrupt.can_checkpoint:
            return None
        self.trainer._save_checkpoint(self.trainer.model, trial=None)
        from aligntune.run.checkpoints import latest

        return latest(self.run_dir.checkpoints)

    reward_failure = None  # the RewardFailure that stopped training, if one did

    def _reward_failed(self, failure):
        """A reward raised or hung mid-training: checkpoint the last good state (rewards are computed before the
        step's update, so it was not applied) and name the reward and the step. The caller marks the run failed."""
        import logging

        from aligntune.run.guards import reward_failure_error

        step = self.nonfinite.step
        logging.getLogger("aligntune").error("reward %r failed at step %d", failure.name, step, exc_info=failure.error)
        return reward_failure_error(failure, step, self._checkpoint_last_good(), self.run_dir.path)

    def _diverged(self):
        """Checkpoint the last good state (the bad step was not applied), mark the run failed, and say where."""
        from aligntune.errors import TrainingDiverged

        found = self.nonfinite.diverged
        what, step = found.what, found.step
        checkpoint = self._checkpoint_last_good() if not found.applied else None
        err = TrainingDiverged(
            f"Training diverged at step {step}: the {what} is NaN or infinite. "
            + ("The step was (at least partly) applied" if found.applied else
               "The step was not applied")
            + (f"; the last good state (step {step - 1}) is checkpointed in {checkpoint}." if checkpoint else "."),
            "Lower train.learning_rate or train.max_grad_norm, check the rewards for NaN/inf, or set "
            "train.on_nonfinite=skip to skip such steps" + (f" (resume with: aligntune train resume={self.run_dir.path} "
                                                               "train.on_nonfinite=skip)." if checkpoint else "."))
        self.run_dir.fail(err)
        return err

    def evaluate(self) -> dict[str, Any]:
        """Held-out metrics of the trained model beside the starting model's (as `aligntune eval` reports them)."""
        from aligntune.evaluation import evaluate

        if not (self.run_dir.model / "config.json").exists() and not (self.run_dir.model / "adapter_config.json").exists():
            raise ConfigError("evaluate() needs a trained model, and this job has not finished training.", "Call .train() first.")
        return evaluate(self.config, self.run_dir.model)


# Friendlier names for the held-out preference metrics DPO and reward models log.
SUMMARY_ALIASES = {"eval_rewards/accuracies": "eval_preference_accuracy", "eval_rewards/margins": "eval_margin",
                   "eval_accuracy": "eval_preference_accuracy"}


def final_metrics(history: list[dict]) -> dict[str, Any]:
    """The last value of every logged metric (training, held-out, the trainer's totals), and the reward's means over
    the first and last 20% of the logged steps with their standard errors (`_se`, from 10 steps on: two per window)."""
    out: dict[str, Any] = {"steps": max((h["step"] for h in history), default=0)}
    for h in history:
        out.update({k: v for k, v in h.items() if isinstance(v, (int, float)) and k not in ("step", "time_s", "epoch")})
    for key, alias in SUMMARY_ALIASES.items():
        if key in out:
            out[alias] = out[key]
    steps = [h for h in history if "train_runtime" not in h and not any(k.startswith("eval_") for k in h)]
    rewards = [h["reward"] for h in steps if isinstance(h.get("reward"), (int, float))]
    if rewards:
        k = max(1, len(rewards) // 5)
        for name, window in (("reward_first_20pct", rewards[:k]), ("reward_last_20pct", rewards[-k:])):
            out[name] = sum(window) / k
            if k >= 2:  # the standard error of that mean over its logged steps (sample std / sqrt(k))
                out[f"{name}_se"] = math.sqrt(sum((r - out[name]) ** 2 for r in window) / (k - 1) / k)
    return out


def create_rl_trainer(model_name: str | None = None, dataset_name: str | None = None, algorithm: str = "grpo",
                      backend: str = "trl", overrides: list[str] | None = None, output_dir: str | Path | None = None,
                      config_dir: str | Path | list | None = None, **config: Any) -> AlignmentJob:
    """Build a run from keyword arguments, through the same composition and checks as the CLI.

    Keywords are config keys: the seed's names and the shortcuts (`num_epochs`, `batch_size`,
    `learning_rate`, `group_size`, `beta`, ...), group selections (`experiment="smoke"`), or any
    dotted key (`**{"algorithm.beta": 0.0}`). `overrides` takes Hydra override strings as on the
    command line and is applied last. `output_dir` is the run directory (default
    outputs/<date>/<time>_<id>). `config_dir`: a team's config directory (or a list of them) on the search path,
    as `--config-dir` on the command line (ALIGNTUNE_CONFIG_PATH is read too), e.g.
    `create_rl_trainer(config_dir="configs", experiment="my_grpo")`.
    """
    from aligntune.config import compose, searchpath

    items: list[str] = [f"algorithm={algorithm}", f"backend={backend}"]
    if model_name is not None:
        items.append(f"model_name={model_name}")
    if dataset_name is not None:
        items.append(f"dataset_name={dataset_name}")
    items += [f"{key}={_override_value(value)}" for key, value in config.items()]
    items += list(overrides or [])
    dirs = [config_dir] if isinstance(config_dir, (str, Path)) else list(config_dir or [])
    _, items, found = searchpath.split([f"--config-dir={d}" for d in dirs], items)
    items += searchpath.as_override(found)
    from aligntune import inherited
    from aligntune.run.console import show_notice

    items, notices = inherited.apply(items)
    for text in notices:
        show_notice(text)
    run, _ = compose.load(items)
    from aligntune.distributed import launch

    if resolve_backend(run) in LAUNCHED or launch.wanted(run):
        raise ConfigError(f"backend={resolve_backend(run)} with distributed.num_processes={run.distributed.num_processes} "
                          "runs as launched processes, which the in-process Python API does not start.",
                          "Use the command line (aligntune train ...) for launched runs.")
    run_dir = Path(output_dir) if output_dir is not None else compose.default_run_dir()
    return AlignmentJob(run, run_dir, items)


def _override_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if isinstance(value, str) and any(c in value for c in " ,=[]{}()'\"\\:"):
        escaped = value.replace("\\", "\\\\").replace("'", "\\'")
        return f"'{escaped}'"
    return str(value)


def format_exception(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))
