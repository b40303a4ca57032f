"""The job lifecycle: one run from its config to its summary, as the CLI and the Python API run it.

    run_job(run, run_dir)      in this process, under `accelerate launch`, or on a launched backend
    AlignmentJob(run, run_dir) builds model, tokenizer, data, rewards and the engine's trainer (errors surface here)
    .train()                   trains, saves, evaluates, writes summary.json; returns the final metrics

The job builds the engine's trainer through the registry's builder: `build(BuildInputs) -> Built` (core/inputs.py);
the builder gets what the job set up and loaders for the rest, and returns the trainer plus what the job needs back.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from aligntune.config.schema import RunConfig
from aligntune.core.inputs import BuildInputs, Built
from aligntune.core.registry import builder_target, check_launch, entry, load_target, resolve_backend
from aligntune.errors import ConfigError


def run_job(run: RunConfig, run_dir: str | Path, overrides: list[str] | None = None,
            parallel_jobs: int = 1) -> dict[str, Any]:
    """One job as the CLI runs it: in this process, under `accelerate launch`, or on a launched backend.
    `parallel_jobs`: how many jobs of a sweep run at once on this machine (their torch threads share the cores)."""
    overrides = list(overrides or [])
    check_launch(run)
    if entry(run).launched:
        return load_target(builder_target(run))(run, run_dir, overrides)
    from aligntune.distributed import launch

    if launch.wanted(run):
        return launch.launch(run, run_dir, overrides)
    return AlignmentJob(run, run_dir, overrides, parallel_jobs=parallel_jobs).train()


class AlignmentJob:
    """One run: model, tokenizer, data, rewards and the engine's trainer, writing to one run directory.

    Building it loads everything (errors surface here, before training); `.train()` runs it and
    returns the final metrics. `.trainer` is the engine's own trainer (e.g. `trl.GRPOTrainer`).
    """

    def __init__(self, run: RunConfig, run_dir: str | Path, overrides: list[str] | None = None, parallel_jobs: int = 1):
        from aligntune.run import console, logs
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
                console.show_shadows(self.overrides)
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

    def _build(self) -> None:
        from transformers import set_seed

        from aligntune.models.loading import compute_precision, load_tokenizer, resolve_device
        from aligntune.run import console, memory
        from aligntune.run.callbacks import RichProgress, RunRecorder
        from aligntune.run.samples import SampleBook

        run = self.config
        set_seed(run.seed)  # fresh heads (reward model, critic) and LoRA adapters are initialised from the run's seed
        target = builder_target(run)
        build_trainer = load_target(target)
        self.device = resolve_device(run.device)
        from aligntune.backends.trl.common import check_rollout_engine
        from aligntune.models.loading import check_model_options

        check_model_options(run.model, self.device)  # GPU-only options refused before anything loads
        check_rollout_engine(run, self.device)
        self.precision = compute_precision(run.model, self.device)
        memory.use_keep_freed_memory(run.train.keep_freed_memory, self.device)  # before the weights load
        self.run_dir.record(device=self.device, compute_dtype=self.precision)
        if self.is_main:
            console.show_compute(self.device, self.precision)
        self.load_warning = None
        if self.device == "cpu":
            from aligntune.run import threads

            cores = threads.usable_cores()
            self.load_warning = threads.OtherLoadWarning(threads.configure(self.parallel_jobs, cores), cores)
        if resolve_backend(run) == "trl" and self.device == "cpu":
            from aligntune.patches import compact_fused_head_on_cpu, cpu_logprob_tiles

            compact_fused_head_on_cpu()  # TRL's LM head scores every position on CPU; its GPU path only completions
            cpu_logprob_tiles()  # and its tiles are sized for GPUs
        self.tokenizer = load_tokenizer(run.model)
        self.memory_estimate = memory.check(run, self.precision, self.device)  # before any weights are loaded
        if self.memory_estimate:
            self.run_dir.record(memory_estimate_gib=round(self.memory_estimate["total"] / 2**30, 3),
                                memory_baseline_gib=round(memory.process_rss() / 2**30, 3))
        self.book = SampleBook()
        from aligntune.run.guards import NonFiniteGuard

        self.nonfinite = NonFiniteGuard(run.train.on_nonfinite)
        weights = {name: spec.weight for name, spec in run.rewards.items()}
        self.recorder = RunRecorder(self.run_dir, self.book, run.train.log_samples, weights)
        self.progress = RichProgress()
        from aligntune.run.phases import PhaseTimer

        self.phases = PhaseTimer()
        self.callbacks = [self.recorder, self.phases] + ([] if run.verbose else [self.progress])
        self.inputs = BuildInputs(config=run, device=self.device, precision=self.precision, tokenizer=self.tokenizer,
                                  callbacks=self.callbacks, checkpoint_dir=self.run_dir.checkpoints, book=self.book,
                                  world_size=self.world_size, is_main=self.is_main,
                                  on_data_lengths=self._refine_memory_estimate)
        built = build_trainer(self.inputs)
        if not isinstance(built, Built):
            raise TypeError(f"the builder {target} returned {type(built).__name__}, not aligntune.core.inputs.Built")
        self.trainer = built.trainer
        self.master_weights = built.master_weights  # low-precision weights: the optimizer keeps fp32 masters
        self.fp32_originals = built.fp32_originals  # the fp32 weights a full-weight bf16 policy was rounded from
        if self.master_weights and hasattr(self.trainer, "create_optimizer"):
            from aligntune.models.precision import use_master_weights

            use_master_weights(self.trainer, self.fp32_originals)
        from aligntune.models.decoding import use_fast_decoding
        from aligntune.run.phases import instrument

        use_fast_decoding(self.trainer, run.rollout, self.device)
        if resolve_backend(run) == "trl":
            from aligntune.backends.trl.shared_prefix import use_shared_prefix

            use_shared_prefix(self.trainer, run.train.shared_prefix, run.algorithm.name, self.device)
        instrument(self.trainer, self.phases)  # after: the weights' preparation counts as generation time
        from aligntune.run.trackers import place

        handler = getattr(self.trainer, "callback_handler", None)  # transformers' Trainer; the native engine: .callbacks
        place(handler.callbacks if handler is not None else getattr(self.trainer, "callbacks", []), self.run_dir.path)
        self._add_guards()
        if not run.verbose and hasattr(self.trainer, "remove_callback"):
            from transformers.trainer_callback import PrinterCallback, ProgressCallback

            self.trainer.remove_callback(PrinterCallback)
            self.trainer.remove_callback(ProgressCallback)

    def _refine_memory_estimate(self, longest: int) -> None:
        """The data's longest sequence is known (TRL pads each batch to its longest, not to max_length): estimate
        again with it, before the weights load, and record that estimate. It warns where it can exceed the first
        estimate: prompts longer than the length that one assumed (memory.PROMPT_TOKENS)."""
        from aligntune.run import memory

        longer = memory.batch_shape(self.config, longest)[1] > memory.batch_shape(self.config)[1]
        refined = memory.check(self.config, self.precision, self.device, tokens=longest, warn=longer)
        if refined:
            self.memory_estimate = refined
            self.run_dir.record(memory_estimate_gib=round(refined["total"] / 2**30, 3))

    def _add_guards(self) -> None:
        """Clean interruption, atomic checkpoints (transformers trainers) and the divergence guards."""
        from aligntune.run.checkpoints import InterruptGuard, make_atomic
        from aligntune.run.guards import TrainingWarnings

        can_checkpoint = hasattr(self.trainer, "_save_checkpoint")
        if can_checkpoint:
            make_atomic(self.trainer, self.run_dir.config_file)
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
            if getattr(self.trainer, "eval_dataset", None) is not None and not self.config.eval.after_training \
                    and not _engine_evaluated_last_step(self.trainer):
                self.trainer.evaluate()  # final held-out metrics, logged (eval_*) like the periodic ones
            if self.master_weights:
                from aligntune.models.precision import restore_fp32_weights

                restore_fp32_weights(self.trainer)  # save the fp32 master weights, not their bf16 rounding
            self.trainer.save_model(str(self.run_dir.model))  # every process: sharded engines gather; rank 0 writes
            if not self.is_main:
                return {}
            from aligntune.run.memory import release_training_state

            release_training_state(self.trainer)  # room for the merge's fp32 base and the evaluation's models
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
        merged = merge_into_fp32_base(model, self.inputs.load_fp32_base)
        merged.save_pretrained(str(self.run_dir.model_merged))
        self.tokenizer.save_pretrained(str(self.run_dir.model_merged))

    def _restore_token_count(self) -> None:
        """The num_tokens count continues from the last logged value (patches.set_token_count)."""
        from aligntune.patches import set_token_count

        counted = [h["num_tokens"] for h in self.recorder.history if isinstance(h.get("num_tokens"), (int, float))]
        if counted:
            set_token_count(self.trainer, counted[-1])

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


def _engine_evaluated_last_step(trainer) -> bool:
    """Whether the engine already evaluated at the last step: transformers' DefaultFlowCallback does whenever
    eval_strategy is "steps" and training reached max_steps, so a final evaluate() would repeat the same pass (the same
    on every process of a launched run: no rank skips a collective the others enter)."""
    args, state = getattr(trainer, "args", None), getattr(trainer, "state", None)
    strategy = getattr(getattr(args, "eval_strategy", None), "value", getattr(args, "eval_strategy", None))
    return strategy == "steps" and state is not None and state.global_step >= state.max_steps > 0


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
