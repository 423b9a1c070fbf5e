"""User verifiers for the tests, reached by dotted path (``verifier_plugins.NAME``; pytest puts this folder on
sys.path)."""

from __future__ import annotations


def shouts(prompts, completions, **columns):
    """1 when the completion is all capitals, 0 otherwise, None when empty (binary: verdicts get ``passed``)."""
    return [None if not c else float(c.isupper()) for c in completions]


def length_ratio(prompts, completions, target, **_):
    """A graded score: verdicts carry no ``passed``."""
    return [min(1.0, len(c) / t) for c, t in zip(completions, target, strict=True)]


def wrong_length(prompts, completions, **_):
    return [1.0]


def not_a_number(prompts, completions, **_):
    return [float("nan") for _ in completions]


NOT_CALLABLE = 3
