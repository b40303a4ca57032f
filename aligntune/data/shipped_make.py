"""Writes the datasets aligntune ships (aligntune/data/shipped/*.jsonl). Deterministic.

    python -m aligntune.data.shipped_make      # rewrite them; the diff must be empty

`letters`: "write this letter" prompts with the letter as the `answer` column. A task a random
tiny model can measurably learn in seconds, scored by the `letter_match` reward.
`letters_sft`: the same prompts with a demonstration completion (prompt/completion format).
`prefs` / `prefs_chat`: preference pairs over the letters task, plain text and conversational:
the chosen reply repeats the requested letter, the rejected one another letter or noise.
`prefs_unpaired`: the same task as KTO's unpaired rows (prompt, completion, label), drawn independently of the
pairs: about 45% desirable (the requested letter), the rest another letter or noise (label false).
`arith`: GSM8K-style word problems (`question`, `answer` ending in "#### <number>") with small
integers, which a small instruct model sometimes solves.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

SHIPPED = Path(__file__).parent / "shipped"

LETTER_TEMPLATES = [
    "Repeat the letter {c}.",
    "Write the letter {c} several times.",
    "Say {c} over and over.",
    "Type {c}.",
    "Only the letter {c}, please.",
]


def letters_rows(seed: int = 0) -> list[dict]:
    rows = [{"prompt": t.format(c=c), "answer": c} for c in string.ascii_lowercase for t in LETTER_TEMPLATES]
    random.Random(seed).shuffle(rows)
    return rows


def _reply(rng: random.Random, letter: str) -> str:
    return letter * rng.randint(4, 10)


def _wrong(rng: random.Random, letter: str) -> str:
    if rng.random() < 0.5:
        other = rng.choice([c for c in string.ascii_lowercase if c != letter])
        return other * rng.randint(4, 10)
    return "".join(rng.choice(string.ascii_letters + string.digits + " .,!?") for _ in range(rng.randint(4, 10)))


def letters_sft_rows(seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": r["prompt"], "completion": _reply(rng, r["answer"])} for r in letters_rows(seed)]


def prefs_rows(seed: int = 2, n: int = 400) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        letter = rng.choice(string.ascii_lowercase)
        prompt = rng.choice(LETTER_TEMPLATES).format(c=letter)
        rows.append({"prompt": prompt, "chosen": _reply(rng, letter), "rejected": _wrong(rng, letter)})
    return rows


def prefs_chat_rows(seed: int = 3, n: int = 400) -> list[dict]:
    def chat(row):
        return {"prompt": [{"role": "user", "content": row["prompt"]}],
                "chosen": [{"role": "assistant", "content": row["chosen"]}],
                "rejected": [{"role": "assistant", "content": row["rejected"]}]}

    return [chat(r) for r in prefs_rows(seed, n)]


def prefs_unpaired_rows(seed: int = 5, n: int = 400, desirable: float = 0.45) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        letter = rng.choice(string.ascii_lowercase)
        good = rng.random() < desirable
        rows.append({"prompt": rng.choice(LETTER_TEMPLATES).format(c=letter),
                     "completion": _reply(rng, letter) if good else _wrong(rng, letter), "label": good})
    return rows


ARITH_TEMPLATES = [
    ("{name} has {a} apples and buys {b} more. How many apples does {name} have now?", lambda a, b: a + b,
     "{name} has {a} + {b} = {r} apples."),
    ("{name} had {a} marbles and gave away {b}. How many marbles are left?", lambda a, b: a - b,
     "{a} - {b} = {r} marbles are left."),
    ("A box holds {a} pencils. How many pencils are in {b} boxes?", lambda a, b: a * b,
     "{b} boxes hold {a} * {b} = {r} pencils."),
    ("{name} reads {a} pages a day for {b} days. How many pages is that?", lambda a, b: a * b,
     "{a} * {b} = {r} pages."),
    ("There are {a} birds on a tree and {b} fly away. How many birds stay?", lambda a, b: a - b,
     "{a} - {b} = {r} birds stay."),
]
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo"]


def arith_rows(seed: int = 4, n: int = 500) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, op, worked = rng.choice(ARITH_TEMPLATES)
        a, b = rng.randint(2, 20), rng.randint(1, 9)
        if op(a, b) < 0:
            a, b = b + a, a
        r = op(a, b)
        name = rng.choice(NAMES)
        rows.append({"question": question.format(name=name, a=a, b=b),
                     "answer": worked.format(name=name, a=a, b=b, r=r) + f"\n#### {r:,}"})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    write_jsonl(SHIPPED / "letters.jsonl", letters_rows())
    write_jsonl(SHIPPED / "letters_sft.jsonl", letters_sft_rows())
    write_jsonl(SHIPPED / "prefs.jsonl", prefs_rows())
    write_jsonl(SHIPPED / "prefs_chat.jsonl", prefs_chat_rows())
    write_jsonl(SHIPPED / "prefs_unpaired.jsonl", prefs_unpaired_rows())
    write_jsonl(SHIPPED / "arith.jsonl", arith_rows())


if __name__ == "__main__":
    main()
