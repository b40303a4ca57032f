"""Task-independent text checks: `repetition` (n-gram repetition penalty) and `charset` (script).

`repetition` is the penalty of "Demystifying Long Chain-of-Thought Reasoning" (Yeo et al. 2025,
arXiv:2502.03373, Appendix C.2), reused from TRL (`trl.rewards.get_repetition_penalty_reward`):
(1 - unique n-grams / all n-grams) x max_penalty, so 0.0 for no repeated n-gram and down to
`max_penalty` (-1.0) for a completion that is one n-gram over and over. Deviation: the paper (and
TRL) count token n-grams; the default here counts lower-cased word n-grams (`unit="words"`), which
does not depend on the tokenizer. `unit="tokens"` uses the trainer's `completion_ids` as TRL does.

`charset` is a language-consistency check in the spirit of DeepSeek-R1's language reward
(DeepSeek-AI 2025, arXiv:2501.12948): the fraction of the completion's letters that belong to the
allowed scripts. Only letters count (digits, punctuation and spaces are shared by all scripts), and
a completion without letters scores 0.0, so saying nothing is never a way to be "consistent".
"""

from __future__ import annotations

import functools
import unicodedata

from trl.rewards import get_repetition_penalty_reward

from aligntune.errors import RewardError
from aligntune.rewards.text import completion_text

# Language code -> the Unicode scripts its text is written in (the first word of a letter's Unicode name).
LANGUAGES: dict[str, tuple[str, ...]] = {
    "en": ("LATIN",), "fr": ("LATIN",), "de": ("LATIN",), "es": ("LATIN",), "it": ("LATIN",), "pt": ("LATIN",),
    "ru": ("CYRILLIC",), "uk": ("CYRILLIC",), "el": ("GREEK",), "ar": ("ARABIC",), "he": ("HEBREW",),
    "hi": ("DEVANAGARI",), "th": ("THAI",), "ko": ("HANGUL",), "zh": ("CJK",),
    "ja": ("CJK", "HIRAGANA", "KATAKANA"),
}


def repetition(completions: list, ngram: int = 3, max_penalty: float = -1.0, unit: str = "words",
               completion_ids: list | None = None, **kwargs) -> list[float]:
    """N-gram repetition penalty in [max_penalty, 0]: 0 without repeats, max_penalty (-1) for pure repetition."""
    if ngram < 1 or max_penalty > 0:
        raise RewardError(f"The repetition reward needs ngram >= 1 and max_penalty <= 0; got ngram={ngram}, "
                          f"max_penalty={max_penalty}.", "Use e.g. ngram=3, max_penalty=-1.0.")
    if unit == "words":
        sequences = [completion_text(c).lower().split() for c in completions]
    elif unit == "tokens" and completion_ids is not None:
        sequences = completion_ids
    else:
        raise RewardError(f"The repetition reward's unit={unit!r} cannot be used here (it is 'words' or 'tokens', and "
                          "'tokens' needs the completion_ids the trainer passes).", "Use unit='words'.")
    return get_repetition_penalty_reward(ngram_size=ngram, max_penalty=max_penalty)(sequences)


@functools.lru_cache(maxsize=4096)
def script_of(char: str) -> str:
    """The script of a letter: the first word of its Unicode name (LATIN, CYRILLIC, CJK, HIRAGANA, ...)."""
    return unicodedata.name(char, "UNKNOWN").split(" ", 1)[0]


@functools.lru_cache(maxsize=1)
def known_scripts() -> frozenset[str]:
    """Every script name a letter below U+30000 has (computed once, about 0.2 s)."""
    return frozenset(script_of(chr(i)) for i in range(0x30000) if chr(i).isalpha())


@functools.lru_cache(maxsize=64)
def allowed_scripts(allowed: str | tuple) -> frozenset[str]:
    """Scripts named by `allowed`: script names (latin, cjk, ...) and language codes (en, ja, ...)."""
    scripts: set[str] = set()
    for name in (allowed,) if isinstance(allowed, str) else allowed:
        scripts.update(LANGUAGES.get(str(name).lower(), (str(name).upper(),)))
    unknown = sorted(scripts - known_scripts())
    if unknown or not scripts:
        raise RewardError(f"The charset reward's allowed={allowed!r} names no known script ({', '.join(unknown) or 'empty'}).",
                          "Use Unicode script names (latin, cyrillic, greek, arabic, cjk, hiragana, katakana, hangul, ...) "
                          f"or language codes ({', '.join(LANGUAGES)}).")
    return frozenset(scripts)


def charset(completions: list, allowed="latin", **kwargs) -> list[float]:
    """Fraction of the completion's letters in the allowed scripts or languages (e.g. latin, cjk, 'ja'); 0 without letters."""
    scripts = allowed_scripts(allowed if isinstance(allowed, str) else tuple(allowed))
    scores = []
    for completion in completions:
        letters = [ch for ch in completion_text(completion) if ch.isalpha()]
        scores.append(sum(script_of(ch) in scripts for ch in letters) / len(letters) if letters else 0.0)
    return scores
