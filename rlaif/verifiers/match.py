"""Exact (normalised) and regex match against a reference column.

``exact`` compares the completion with the row's ``answer`` after normalising both: Unicode NFKC, case folded,
whitespace runs collapsed, punctuation stripped from both ends. A list of answers passes when any matches.
``regex`` searches the completion for the row's ``pattern`` (``re.search``; a list: all must match); a malformed
pattern makes the row unverifiable ("malformed pattern"), not a failure.
"""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from typing import Any

from rlaif.verifiers import Verdict

_SPACE = re.compile(r"\s+")
_ENDS = string.punctuation + "\u201c\u201d\u2018\u2019\u00ab\u00bb\u3002\uff0c\uff01\uff1f"


def normalise(text: str) -> str:
    """Case-, whitespace- and end-punctuation-insensitive form of ``text``."""
    text = _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return text.strip(_ENDS + " ")


def check_exact(completion: str, answer: Any) -> Verdict:
    if answer is None or (isinstance(answer, list | tuple) and not answer):
        return Verdict(None, None, "no reference answer")
    answers = answer if isinstance(answer, list | tuple) else [answer]
    ok = normalise(completion or "") in {normalise(str(a)) for a in answers}
    return Verdict(1.0 if ok else 0.0, ok)


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def check_regex(completion: str, pattern: Any) -> Verdict:
    if pattern is None or (isinstance(pattern, list | tuple) and not pattern):
        return Verdict(None, None, "no pattern")
    patterns = pattern if isinstance(pattern, list | tuple) else [pattern]
    try:
        compiled = [_compiled(str(p)) for p in patterns]
    except re.error as exc:
        return Verdict(None, None, f"malformed pattern: {exc}")
    ok = all(p.search(completion or "") for p in compiled)
    return Verdict(1.0 if ok else 0.0, ok)


def verify_exact(prompts: list, completions: list[str], columns: dict[str, list]) -> list[Verdict]:
    """The ``exact`` verifier: each completion against its row's ``answer`` (normalised equality)."""
    answers = columns.get("answer")
    if answers is None:
        return [Verdict(None, None, "no answer column") for _ in completions]
    return [check_exact(c, a) for c, a in zip(completions, answers, strict=True)]


def verify_regex(prompts: list, completions: list[str], columns: dict[str, list]) -> list[Verdict]:
    """The ``regex`` verifier: each completion searched for its row's ``pattern`` (or one ``pattern`` for all)."""
    patterns = columns.get("pattern")
    if patterns is None:
        return [Verdict(None, None, "no pattern column") for _ in completions]
    if isinstance(patterns, str):
        patterns = [patterns] * len(completions)
    return [check_regex(c, p) for c, p in zip(completions, patterns, strict=True)]
