"""Writes the datasets aligntune ships (aligntune/data/shipped/*.jsonl). Deterministic.

    python -m aligntune.data.shipped_make      # rewrite them; the diff must be empty

`letters`: "write this letter" prompts with the letter as the `answer` column. A task a random
tiny model can measurably learn in seconds, scored by the `letter_match` reward.
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


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    write_jsonl(SHIPPED / "letters.jsonl", letters_rows())


if __name__ == "__main__":
    main()
