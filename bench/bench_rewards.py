"""Reward cost vs generation cost: is any built-in reward a bottleneck next to a GRPO generation step?

Scores a batch of 1,024 GSM8K-style completions (~200 characters, <think>/<answer> layout, half of
them right) with every built-in text reward, and a smaller batch of code completions with
`code_execution` (sandboxed subprocesses, so its cost is per completion, not per batch). In the
same run it times the tiny policy (`aligntune:tiny`) generating a batch of 32 completions of 12 new
tokens with `model.generate` (sampling, temperature 0.7), the generation half of a GRPO step, and
prints per-completion reward time / per-completion generation time. Both sides use one core (torch
with one thread, code_execution with one worker), which keeps the ratio stable on a shared machine.
A ratio well below 1 means the reward is noise next to generation even for the tiny model, whose
generation is about as cheap as generation gets; real policies generate far slower per completion.
`reward_model` is left out: its cost is a forward pass of whatever model is chosen.

Each reward timing is the median of --repeats runs after one warm-up (the first call pays imports);
generation is timed once between consecutive reward measurements, and its median is the reference.

Run: .venv/bin/python bench/bench_rewards.py [--batch 1024] [--code-batch 32] [--repeats 3]
Writes bench/results/rewards.json.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from common import machine, write_json

from aligntune.rewards.registry import BUILTIN, resolve


def gsm8k_batch(n: int, seed: int = 0) -> tuple[list[str], list[str], list[list[int]]]:
    """(completions, reference answers, fake token ids) in the shape GRPO passes them."""
    rng = random.Random(seed)
    completions, answers, ids = [], [], []
    for _ in range(n):
        a, b = rng.randint(2, 999), rng.randint(2, 999)
        right = a + b
        said = right if rng.random() < 0.5 else right + rng.randint(1, 9)
        text = (f"<think>Ben has {a:,} apples and buys {b:,} more, so he has {a:,} + {b:,} = {said:,} apples in total. "
                f"Let me double check: {said:,} - {b:,} is {said - b:,}.</think><answer>{said:,}</answer>")
        completions.append(text)
        answers.append(str(right))
        ids.append([rng.randrange(100) for _ in range(len(text) // 4)])
    return completions, answers, ids


def symbolic_batch(n: int) -> tuple[list[str], list[str]]:
    """Answers that need math-verify (fractions in LaTeX vs decimals), the slow path of `correctness`."""
    pairs = [("<answer>\\frac{1}{2}</answer>", "0.5"), ("<answer>\\frac{3}{4}</answer>", "0.75"),
             ("\\boxed{\\sqrt{2}}", "\\sqrt{2}"), ("<answer>2/3</answer>", "0.5")]
    return [pairs[i % 4][0] for i in range(n)], [pairs[i % 4][1] for i in range(n)]


def code_batch(n: int) -> tuple[list[str], list[list[str]]]:
    right = "```python\ndef add(a, b):\n    return a + b\n```"
    wrong = "```python\ndef add(a, b):\n    return a - b\n```"
    tests = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(10, 32) == 42"]
    return [right if i % 2 else wrong for i in range(n)], [tests] * n


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: imports, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def generation_timer(batch: int, new_tokens: int):
    """A function that times one `model.generate` of `batch` completions and returns seconds per completion."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aligntune.models import tiny

    torch.manual_seed(0)
    torch.set_num_threads(1)  # one core, like the rewards: stable on a shared machine (2 threads thrash under load)
    directory = tiny.resolve("aligntune:tiny")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"Repeat the letter {chr(97 + i % 26)}."}],
                                             tokenize=False, add_generation_prompt=True) for i in range(batch)]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)

    def once() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True,
                           temperature=0.7, pad_token_id=tokenizer.pad_token_id)
        return (time.perf_counter() - start) / batch

    once()  # warm-up
    return once


def measure(batch: int, code_n: int, repeats: int) -> dict:
    completions, answers, ids = gsm8k_batch(batch)
    prompts = ["How many apples?"] * batch
    calls = {
        "correctness": lambda f: f(completions, prompts=prompts, answer=answers),
        "format": lambda f: f(completions, prompts=prompts),
        "length": lambda f: f(completions, prompts=prompts, target=200),
        "overlong": lambda f: f(completions, prompts=prompts, completion_ids=ids, max_length=64, cache=16),
        "repetition": lambda f: f(completions, prompts=prompts),
        "charset": lambda f: f(completions, prompts=prompts, allowed="en"),
        "keywords": lambda f: f(completions, prompts=prompts, include=["apples", "total"], exclude=["sorry"]),
        "max_words": lambda f: f(completions, prompts=prompts, limit=50),
        "valid_json": lambda f: f(completions, prompts=prompts),
        "letter_match": lambda f: f(completions, prompts=prompts, answer=["a"] * batch),
    }
    missing = set(BUILTIN) - set(calls) - {"code_execution", "reward_model"}
    assert not missing, f"bench the new built-in rewards too: {sorted(missing)}"
    sym_completions, sym_answers = symbolic_batch(batch)
    correctness = resolve("correctness")
    code, tests = code_batch(code_n)
    run_code = resolve("code_execution")
    jobs = [(name, batch, lambda fn=resolve(name), call=call: call(fn)) for name, call in calls.items()]  # noqa: B008
    jobs += [("correctness (math-verify path)", batch, lambda: correctness(sym_completions, answer=sym_answers)),
             ("code_execution (3 asserts, 1 worker)", code_n, lambda: run_code(code, tests=tests, workers=1))]
    # Generation is timed between the reward measurements (A B A B ...), so drift on a shared machine hits both.
    generate = generation_timer(32, 12)
    samples, rows = [generate()], []
    for name, n, job in jobs:
        rows.append({"reward": name, "batch": n, "seconds": timed(job, repeats)})
        samples.append(generate())
    generation = statistics.median(samples)
    for row in rows:
        row["us_per_completion"] = row["seconds"] / row["batch"] * 1e6
        row["ratio_to_generation"] = row["seconds"] / row["batch"] / generation
    return {"generation_us_per_completion": generation * 1e6, "generation": "tiny model, 32 x 12 new tokens, sampled",
            "generation_samples_us": [round(s * 1e6, 1) for s in samples], "rows": rows}


def render(result: dict) -> str:
    head = ("reward", "batch", "total ms", "us/completion", "reward/generation")
    cells = [head] + [(r["reward"], str(r["batch"]), f"{r['seconds'] * 1e3:.1f}", f"{r['us_per_completion']:.1f}",
                       f"{r['ratio_to_generation']:.4f}") for r in result["rows"]]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    line = lambda c: "  ".join(s.ljust(w) if i == 0 else s.rjust(w) for i, (s, w) in enumerate(zip(c, widths)))
    return "\n".join([line(head), "  ".join("-" * w for w in widths), *map(line, cells[1:])])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024, help="completions per text-reward call")
    parser.add_argument("--code-batch", type=int, default=32, help="completions per code_execution call")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    args = parser.parse_args()
    result = measure(args.batch, args.code_batch, args.repeats)
    write_json("rewards", result)
    m = machine()
    print(f"machine: {m['cores']} cores, {m['cpu']}, Python {m['python']}; medians of {args.repeats} runs")
    spread = result["generation_samples_us"]
    print(f"generation: {result['generation']}: {result['generation_us_per_completion']:.0f} us per completion "
          f"(median of {len(spread)} timings between the rewards (min {min(spread):.0f}, max {max(spread):.0f}))")
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
