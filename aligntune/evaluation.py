"""Held-out evaluation and generation: what `aligntune eval`, `aligntune generate` and
`AlignmentJob.evaluate()` share.

Prompt tasks (GRPO/PPO data): sample `eval.samples` completions for each of `eval.num_prompts`
held-out prompts, score them with the run's rewards, and report the mean of each reward, the
weighted total, pass@1 and pass@k for binary rewards (the unbiased estimator of Chen et al. 2021,
arXiv:2107.03374, Eq. 1), and the mean completion length. Preference data (DPO/reward runs):
implicit-reward preference accuracy and margin on held-out pairs against the base model.

Prompts are formatted as in training (TRL's convention): chat messages through the tokenizer's
chat template, plain strings as they are. Sampling is seeded, so two evaluations of the same model
give the same numbers.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from aligntune.config.schema import RunConfig
from aligntune.errors import ConfigError, ModelError


def model_folder(location: str | Path) -> Path:
    """The folder that holds the model of `location` (a run directory's model/, else the location itself)."""
    from aligntune.run.rundir import RunFiles

    return RunFiles(location).weights()


def inference_placement(location: str | Path, device: str = "auto", dtype: str = "auto") -> tuple[str, str]:
    """(device, precision) to run the model at `location` in: `device` resolved (auto: CUDA when visible) and
    `dtype` resolved as for training (models.precision's rule; an adapter is sized by its base model)."""
    import json

    from aligntune.config.schema import ModelConfig
    from aligntune.models.loading import compute_precision, resolve_device

    device = resolve_device(device)
    path = model_folder(location)
    source = str(path if path.exists() else location)
    adapter = path / "adapter_config.json"
    if adapter.is_file():
        source = json.loads(adapter.read_text()).get("base_model_name_or_path") or source
    return device, compute_precision(ModelConfig(name_or_path=source, dtype=dtype), device)


def load_for_inference(location: str | Path, device: str = "cpu", precision: str = "fp32",
                       attn_implementation: str = "auto"):
    """(model, tokenizer) from a run directory, its model/ folder, a LoRA adapter folder, or a model path, on
    `device` with weights in `precision` (bf16/fp16 weights for inference: no optimizer, so no master copies).
    Plain weights load straight into that dtype (each tensor rounded as it loads: the same weights as loading fp32
    and casting, without the fp32 copy in memory). An adapter is merged into its base in fp32 first; a run's
    `model_merged/` already is that merge, so it is read instead where it exists. `attn_implementation`: the run's
    model.attn_implementation, so evaluation attends as training did (auto: on CPU the per-call kernel of
    models/attention.py, whose 16-bit decoding steps of a large batch, such as the held-out evaluation's, attend
    with two matmuls instead of SDPA's flash kernel; any other: that kernel)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aligntune.models import attention
    from aligntune.run.rundir import RunFiles

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16 if device != "cpu" else torch.float32}.get(precision,
                                                                                                     torch.float32)
    kernel = {} if attn_implementation == "auto" else {"attn_implementation": attn_implementation}
    path = model_folder(location)
    merged = RunFiles(location).merged_weights()
    if not path.exists():  # a hub id (the caller checked that the hub or its cache has it)
        model = AutoModelForCausalLM.from_pretrained(str(location), dtype=dtype, **kernel)
    elif (path / "adapter_config.json").is_file() and merged is not None:
        model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=dtype, **kernel)
    elif (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, **kernel).merge_and_unload()
    elif (path / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kernel)
    else:
        raise ModelError(f"{location} holds no model: no config.json or adapter_config.json (and no model/ folder).",
                         "Point run= at a run directory, its model/ folder, or a Hugging Face model directory.")
    model.to(device=device, dtype=dtype)
    attention.apply(model, attn_implementation, device)
    tokenizer = AutoTokenizer.from_pretrained(str(path) if path.exists() else str(location))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def format_prompt(tokenizer, prompt) -> str:
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return prompt


def generate(model, tokenizer, prompts: list, samples: int, temperature: float, max_new_tokens: int, seed: int,
             batch_size: int = 128, rollout=None) -> list[list[str]]:
    """`samples` completions for each prompt (greedy when temperature is 0). `rollout` (a RolloutConfig; None: its
    defaults): whether to decode on prepared weights, sample by inverse CDF and prefill each prompt once for its
    samples and the prompts' common start once (models/decoding.py)."""
    import torch

    from aligntune.config.schema import RolloutConfig
    from aligntune.models import decoding

    texts = [format_prompt(tokenizer, p) for p in prompts for _ in range(samples)]
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    prepared, sampler, shared = decoding.choices(rollout or RolloutConfig(), model.device.type)
    try:
        with decoding.fast_decoding(model, min(batch_size, len(texts)), prepared, sampler and temperature > 0, shared):
            completions = _generate_batches(model, tokenizer, texts, max_new_tokens, temperature, batch_size)
    finally:
        torch.random.set_rng_state(generator_state)
    return [completions[i * samples:(i + 1) * samples] for i in range(len(prompts))]


def _generate_batches(model, tokenizer, texts: list[str], max_new_tokens: int, temperature: float,
                      batch_size: int) -> list[str]:
    import torch

    out: list[str] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(model.device)
        with torch.no_grad():
            ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                 temperature=temperature if temperature > 0 else None, top_p=1.0,
                                 pad_token_id=tokenizer.pad_token_id)
        out += tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021, Eq. 1)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def score_prompts(model, tokenizer, rows, reward_funcs: dict, weights: dict, samples: int, temperature: float,
                  max_new_tokens: int, seed: int, batch_size: int = 128, rollout=None) -> dict:
    """Sample, score and aggregate on `rows` (a list of dicts with `prompt` and reward columns)."""
    prompts = [r["prompt"] for r in rows]
    completions = generate(model, tokenizer, prompts, samples, temperature, max_new_tokens, seed, batch_size=batch_size,
                           rollout=rollout)
    flat_prompts = [p for p in prompts for _ in range(samples)]
    flat = [c for group in completions for c in group]
    columns = {k: [r[k] for r in rows for _ in range(samples)] for k in rows[0] if k != "prompt"}
    metrics: dict = {"prompts": len(rows), "samples_per_prompt": samples}
    total = [0.0] * len(flat)
    for name, fn in reward_funcs.items():
        scores = fn(prompts=flat_prompts, completions=flat, **columns)
        valid = [s for s in scores if s is not None and not math.isnan(s)]
        metrics[f"rewards/{name}/mean"] = sum(valid) / len(valid) if valid else None
        for i, s in enumerate(scores):
            total[i] += weights.get(name, 1.0) * (s if s is not None and not math.isnan(s) else 0.0)
        if valid and all(s in (0.0, 1.0) for s in valid) and len(valid) == len(scores):
            correct = [sum(scores[i * samples:(i + 1) * samples]) for i in range(len(rows))]
            metrics[f"rewards/{name}/pass@1"] = sum(pass_at_k(samples, int(c), 1) for c in correct) / len(rows)
            metrics[f"rewards/{name}/pass@{samples}"] = sum(pass_at_k(samples, int(c), samples) for c in correct) / len(rows)
    metrics["reward"] = sum(total) / len(total)
    metrics["completions/mean_length"] = sum(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in flat) / len(flat)
    metrics["samples"] = [{"prompt": p, "completion": c} for p, c in zip(prompts[:3], [g[0] for g in completions[:3]])]
    return metrics


PAIRWISE = ("dpo", "reward")  # algorithms evaluated on held-out preference pairs (and kto with dataset.unpair)


def preference_metrics(model, reference, tokenizer, rows, beta: float) -> dict:
    """Implicit-reward preference accuracy and mean margin of `model` against `reference` on pairs."""
    import torch

    def logp(m, prompt, completion) -> float:
        p = format_prompt(tokenizer, prompt)
        c = completion if isinstance(completion, str) else "".join(x["content"] for x in completion)
        ids_p = tokenizer(p, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ids_p + tokenizer(c, add_special_tokens=False)["input_ids"]], device=m.device)
        with torch.no_grad():
            logits = m(ids).logits[0, :-1].float().log_softmax(-1)
        target = ids[0, 1:]
        token_logps = logits.gather(-1, target[:, None])[:, 0]
        return float(token_logps[len(ids_p) - 1:].sum())

    margins = []
    for r in rows:
        chosen = logp(model, r["prompt"], r["chosen"]) - logp(reference, r["prompt"], r["chosen"])
        rejected = logp(model, r["prompt"], r["rejected"]) - logp(reference, r["prompt"], r["rejected"])
        margins.append(beta * (chosen - rejected))
    return {"pairs": len(rows), "preference_accuracy": sum(m > 0 for m in margins) / len(margins),
            "margin": sum(margins) / len(margins)}


def held_out_rows(run: RunConfig, kind: str, limit: int) -> list[dict]:
    from aligntune.data.loading import load

    _, held_out = load(run.dataset, run.seed, kind)
    if held_out is None:
        raise ConfigError(f"Evaluation needs held-out rows, and dataset {run.dataset.name!r} has none configured.",
                          "Set dataset.eval_fraction=0.1 (or dataset.eval_split=<split>) for both training and eval.")
    return [held_out[i] for i in range(min(limit, len(held_out)))]


def history_name(result: dict) -> str:
    """<time>_<who>_<settings>, e.g. 20261124-100000_after_training_arith_n100_k1_t0: the file name of one evaluation."""
    import re
    import time

    settings = result.get("settings", {})
    parts = [time.strftime("%Y%m%d-%H%M%S", time.localtime(result.get("created", time.time()))), result.get("by", "eval")]
    if settings.get("dataset"):
        parts.append(re.sub(r"[^A-Za-z0-9.-]+", "-", Path(str(settings["dataset"])).stem).strip("-")[:40])
    parts.append(f"n{settings.get('num_prompts', '')}")
    if "samples" in settings:
        parts.append(f"k{settings['samples']}_t{settings['temperature']:g}")
    return "_".join(p for p in parts if p)


def write_result(result: dict, directory: Path, by: str = "eval") -> Path:
    """Keep every evaluation: <directory>/eval/<time>_<who>_<settings>.json, and eval.json, the latest (what
    `aligntune eval` and `eval.after_training` write). Returns the history file."""
    import json
    import time

    result = {"by": by, "created": round(time.time(), 3), **{k: v for k, v in result.items() if k not in ("by", "created")}}
    text = json.dumps(result, indent=2, default=str) + "\n"
    history = directory / "eval"
    history.mkdir(parents=True, exist_ok=True)
    name = history_name(result)
    path, n = history / f"{name}.json", 1
    while path.exists():  # two evaluations within a second
        n += 1
        path = history / f"{name}_{n}.json"
    path.write_text(text)
    (directory / "eval.json").write_text(text)
    return path


def history(directory: Path) -> list[dict]:
    """Every evaluation kept in <directory>/eval/, oldest first, each with its "file" (relative to `directory`);
    a run from before the history has only eval.json."""
    import json

    files = sorted((directory / "eval").glob("*.json"), key=lambda p: p.name) or [directory / "eval.json"]
    out = []
    for f in files:
        try:
            out.append({**json.loads(f.read_text()), "file": str(f.relative_to(directory))})
        except (OSError, ValueError):
            continue
    return out


def inference_attention(requested: str, device: str) -> str:
    """The attention kernel to evaluate with: the run's `model.attn_implementation`, except a flash kernel where it
    cannot run (a run trained on a GPU, evaluated on a CPU or without the package), which evaluates with `auto`
    instead: the kernel is a matter of speed, the function is the same."""
    import importlib.util

    from aligntune.models.loading import FLASH_PACKAGES

    if requested in FLASH_PACKAGES and (device != "cuda" or importlib.util.find_spec(FLASH_PACKAGES[requested]) is None):
        logging.getLogger("aligntune").info("evaluation: model.attn_implementation=%s cannot run on %s here; "
                                            "evaluating with auto", requested, device)
        return "auto"
    return requested


def evaluate(run: RunConfig, model_location: str | Path, base_location: str | Path | None = None) -> dict:
    """Metrics of the model at `model_location` (and of `base_location`, the starting model, side by side)."""
    from aligntune.models import loading
    from aligntune.rewards.registry import bind
    from aligntune.run.memory import return_freed_memory

    if run.algorithm.name == "kto" and not run.dataset.unpair:
        raise ConfigError(f"Preference evaluation of a KTO run compares the chosen and rejected completion of each "
                          f"held-out prompt, and dataset {run.dataset.name!r} holds unpaired rows.",
                          "Read the held-out KTO metrics the run logged (eval_rewards/*, eval_kl in metrics.jsonl and "
                          "summary.json), or train on preference pairs with dataset.unpair=true.")
    e = run.eval
    if base_location is None and e.compare_base:
        base_location = loading.model_location(run.model)
    device, precision = inference_placement(model_location, run.device, run.model.dtype)
    attn = inference_attention(run.model.attn_implementation, device)
    model, tokenizer = load_for_inference(model_location, device, precision, attn)
    result: dict = {"model": str(model_location), "base_model": str(base_location) if base_location else None,
                    "device": device, "compute_dtype": precision,
                    "settings": {"dataset": run.dataset.name, "num_prompts": e.num_prompts}}
    if run.algorithm.name in PAIRWISE or run.algorithm.name == "kto":  # KTO: the pairs it was trained on unpaired
        rows = held_out_rows(run, "preferences", e.num_prompts)
        reference = load_for_inference(base_location, device, precision, attn)[0] if base_location else None
        if reference is None:
            raise ConfigError("Preference evaluation compares against the starting model, and eval.compare_base=false.",
                              "Set eval.compare_base=true.")
        result["trained"] = preference_metrics(model, reference, tokenizer, rows, getattr(run.algorithm, "beta", 0.1))
        return result
    rows = held_out_rows(run, "prompts", e.num_prompts)
    funcs = {name: bind(name, spec.fn or name, spec.args) for name, spec in run.rewards.items()}
    if not funcs:
        raise ConfigError("Evaluation scores completions with the run's rewards, and none is configured.",
                          "Add one, e.g. rewards=arith or +rewards.mine.fn=path/to/file.py:score.")
    weights = {name: spec.weight for name, spec in run.rewards.items()}
    temperature = e.temperature if e.temperature is not None else getattr(run.algorithm, "temperature", 0.7)
    max_new = e.max_new_tokens or getattr(run.algorithm, "max_completion_length", 128)
    args = {"samples": e.samples, "temperature": temperature, "max_new_tokens": max_new, "seed": run.seed,
            "batch_size": e.batch_size}
    result["settings"].update(args, rewards={name: spec.weight for name, spec in run.rewards.items()})
    result["trained"] = score_prompts(model, tokenizer, rows, funcs, weights, **args, rollout=run.rollout)
    if base_location:
        del model  # one model in memory at a time
        return_freed_memory()
        base, base_tok = load_for_inference(base_location, device, precision, attn)
        result["base"] = score_prompts(base, base_tok, rows, funcs, weights, **args, rollout=run.rollout)
    return result
