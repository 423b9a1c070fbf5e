"""Math final answers: equivalence with `math-verify` (Hugging Face's maintained grader; LaTeX and plain
expressions parsed to sympy and compared symbolically and numerically). Reads the ``answer`` column (the reference).

A completion's final answer is the text after its last GSM8K ``####`` marker when it has one, else what math-verify
extracts (a ``\\boxed{}`` first, then the last LaTeX or plain number/expression). No parseable answer → unverifiable
(``Verdict(None, None, "no final answer")``), never a silent 0. Model output is never executed: math-verify parses
LaTeX with its own grammar and plain expressions only from digits and operators; answers with huge exponents or
factorials are refused before parsing (they could stall sympy). math-verify bounds its work with SIGALRM timeouts,
which only the main thread may set: elsewhere (a worker thread, Ray actor thread) they are switched off
(its documented ``parsing_timeout=None`` / ``timeout_seconds=None``).
"""

from __future__ import annotations

import functools
import re
import threading
from typing import Any

from rlaif.verifiers import Verdict

_GSM8K = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)
_HUGE = re.compile(r"(?:\^|\*\*)\s*[{(]?\s*-?\d{4,}|\d{4,}\s*!|\\(?:underbrace|overbrace)")
_LATEX = re.compile(r"[\\^{]")
_TIMEOUT_S = 5


def _timeout() -> int | None:
    return _TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse(text: str) -> list:
    from math_verify import parse

    return parse(text, parsing_timeout=_timeout())


def parse_reference(answer: Any) -> list:
    """The reference answer as math-verify's parse result ([] when unparseable): a number, LaTeX with or without
    ``$``, or a GSM8K answer field (``... #### 42``)."""
    return [] if answer is None else list(_reference(str(answer).strip()))


@functools.lru_cache(maxsize=4096)
def _reference(text: str) -> tuple:
    # Cached: a row's n sampled responses share one reference, parsed once.
    if match := _GSM8K.search(text):
        text = match.group(1)
    if not text or _HUGE.search(text):
        return ()
    return tuple(_parse(text) or _latex(text))


def _latex(text: str) -> list:
    # Bare LaTeX (``\sqrt{2}``) parses only between dollars; plain words must not (``a bird`` would become a*b*d*i*r).
    return _parse(f"${text}$") if _LATEX.search(text) else []


def final_answer(completion: str) -> list:
    """The completion's final answer as math-verify's parse result ([] when none can be found)."""
    if _HUGE.search(completion):
        return []
    tail = completion.rsplit("####", 1)
    if len(tail) == 2 and tail[1].strip():
        line = tail[1].strip().splitlines()[0]
        return _parse(line) or _latex(line)
    return _parse(completion)


def check_math(completion: str, answer: Any) -> Verdict:
    """One completion against one reference answer."""
    from math_verify import verify

    if answer is None or not str(answer).strip():
        return Verdict(None, None, "no reference answer")
    gold = parse_reference(answer)
    if not gold:
        return Verdict(None, None, "unparseable reference answer")
    target = final_answer(completion or "")
    if not target:
        return Verdict(None, None, "no final answer")
    ok = verify(gold, target, timeout_seconds=_timeout())
    return Verdict(1.0 if ok else 0.0, bool(ok))


def verify_math(prompts: list, completions: list[str], columns: dict[str, list]) -> list[Verdict]:
    """The ``math`` verifier: each completion against its row's ``answer``."""
    answers = columns.get("answer")
    if answers is None:
        return [Verdict(None, None, "no answer column") for _ in completions]
    return [check_math(c, a) for c, a in zip(completions, answers, strict=True)]
