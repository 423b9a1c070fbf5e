"""The catalogue of IFEval-family constraints: a spec is a dict ``{"type": NAME, **args}`` stored in the row, so a
check is reproducible. :data:`CONSTRAINTS` maps each type to its pydantic argument model (rlaif.verifiers.
constraint_types and constraint_formats); :func:`check` grades one response against one spec,
:func:`constraint_problems` says what is wrong with a list of specs (unknown types with a did-you-mean, ill-typed
or missing arguments, contradictions), :func:`sample_constraints` draws compatible specs, :func:`describe` writes
the instruction sentence a prompt carries."""

from __future__ import annotations

import difflib
import json
import random
from itertools import combinations
from typing import Any

from pydantic import ValidationError

from rlaif.verifiers import constraint_formats as f
from rlaif.verifiers import constraint_types as t

__all__ = [
    "CONSTRAINTS",
    "check",
    "constraint_problems",
    "contradiction",
    "describe",
    "parse_constraints",
    "sample_constraints",
]

_TYPES: list[type[t.Constraint]] = [
    t.WordCount, t.SentenceCount, t.ParagraphCount, t.NthParagraphFirstWord, t.KeywordsInclude, t.KeywordsExclude,
    t.KeywordFrequency, t.LetterFrequency, f.AllLowercase, f.AllUppercase, f.CapitalWordFrequency, f.StartsWith,
    f.EndsWith, f.JsonFormat, f.BulletCount, f.SectionCount, f.PlaceholderCount, f.HighlightedSections, f.NoCommas,
    f.Quotation, f.Title, f.Postscript, f.TwoResponses, f.RepeatPrompt, f.ConstrainedResponse,
]  # fmt: skip
CONSTRAINTS: dict[str, type[t.Constraint]] = {cls.model_fields["type"].default: cls for cls in _TYPES}

# Words keyword constraints draw from: lowercase, no commas, no letters outside [a-z], distinct.
KEYWORD_POOL = [
    "river", "garden", "window", "history", "science", "music", "energy", "market", "planet", "coffee", "winter",
    "summer", "ocean", "mountain", "bridge", "library", "forest", "engine", "signal", "pattern", "memory",
    "balance", "journey", "harvest", "silver", "thunder", "lantern", "compass", "anchor", "canvas", "meadow",
    "orbit", "puzzle", "rhythm", "shadow", "timber", "voyage", "whisper",
]  # fmt: skip

# At most one type of each group in a set: they ask for incompatible shapes of the whole response.
_EXCLUSIVE = [
    {"all_lowercase", "all_uppercase", "capital_word_frequency"},
    {"json_format", "quotation", "two_responses", "repeat_prompt"},
    {"paragraph_count", "nth_paragraph_first_word", "two_responses"},
]
_JSON_COMPATIBLE = {"word_count", "keywords_include", "keywords_exclude", "keyword_frequency", "letter_frequency",
                    "all_lowercase", "placeholder_count"}  # fmt: skip
_CONFLICTS = {
    frozenset(pair)
    for pair in [
        *(("json_format", name) for name in CONSTRAINTS if name not in _JSON_COMPATIBLE | {"json_format"}),
        ("quotation", "starts_with"),
        ("quotation", "ends_with"),
        ("ends_with", "postscript"),
        ("repeat_prompt", "starts_with"),
        ("constrained_response", "all_lowercase"),
        ("constrained_response", "all_uppercase"),
    ]  # fmt: skip
}
# Count types whose lower bound each needs at least that many words (for the word-budget contradiction).
_NEEDS_WORDS = ("sentence_count", "keyword_frequency", "capital_word_frequency", "placeholder_count",
                "highlighted_sections", "bullet_count", "paragraph_count", "section_count")  # fmt: skip


PARSED: dict[str, t.Constraint] = {}  # spec's repr -> its validated constraint; specs repeat across rows
_MAX_PARSED = 4096


def parse(spec: dict) -> t.Constraint:
    """The validated constraint of one spec; raises ValueError (unknown type, bad arguments). Cached by the spec's
    repr (3x cheaper than a sorted JSON key: an equal spec in another key order is only a cache miss)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise ValueError(f"a constraint is a mapping with a string 'type', got {spec!r}")
    key = repr(spec)
    if (constraint := PARSED.get(key)) is not None:
        return constraint
    if spec["type"] not in CONSTRAINTS:
        raise ValueError(_unknown(spec["type"]))
    try:
        constraint = CONSTRAINTS[spec["type"]].model_validate(spec)
    except ValidationError as exc:
        raise ValueError(_bad_args(spec["type"], exc)) from None
    if len(PARSED) >= _MAX_PARSED:
        PARSED.clear()
    PARSED[key] = constraint
    return constraint


def parse_constraints(value: Any) -> list[dict]:
    """A row's constraints as a list of specs: the list itself, or one decoded from a JSON string. Raises
    ValueError when it is neither.

    Specs stored as a list of mappings come back from Parquet as one struct type for the whole column: every spec
    carries every argument name of every type in the column, None where it has none. Those Nones are not the spec's
    arguments and are removed (no constraint argument is ever None)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"constraints are not valid JSON: {exc}") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError(f"constraints must be a list of specs, got {type(value).__name__}")
    return [{k: v for k, v in spec.items() if v is not None} if isinstance(spec, dict) else spec for spec in value]


def check(response: str, spec: dict) -> bool:
    """Does ``response`` satisfy the constraint ``spec``? Raises ValueError on a malformed spec."""
    return parse(spec).check(response)


def describe(spec: dict) -> str:
    """The instruction sentence for ``spec``, IFEval's wording (to append to a prompt)."""
    return parse(spec).describe()


def _unknown(name: str) -> str:
    match = difflib.get_close_matches(name, list(CONSTRAINTS), n=1)
    if match:
        return f"unknown constraint type {name!r} (did you mean {match[0]!r}?)"
    return f"unknown constraint type {name!r}; known: {', '.join(sorted(CONSTRAINTS))}"


def _bad_args(name: str, exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        if error["type"] == "extra_forbidden":
            fields = sorted(set(CONSTRAINTS[name].model_fields) - {"type"})
            parts.append(f"unexpected argument {where!r} (arguments: {', '.join(fields) or 'none'})")
        elif error["type"] == "missing":
            parts.append(f"missing argument {where!r}")
        else:
            parts.append(f"{where}: {error['msg']}")
    return f"constraint {name}: " + "; ".join(parts)


def _bounds(c: t.Constraint) -> tuple[float, float]:
    num = getattr(c, "num", getattr(c, "num_paragraphs", 0))
    relation = getattr(c, "relation", "exactly")
    return (num if relation != "at_most" else 0, num if relation != "at_least" else float("inf"))


def contradiction(a: t.Constraint, b: t.Constraint) -> str | None:
    """Why two constraints cannot both hold (or None): excluded pairs, empty count ranges, keywords both asked for
    and forbidden."""
    if frozenset((a.type, b.type)) in _CONFLICTS or any(
        a.type != b.type and {a.type, b.type} <= g for g in _EXCLUSIVE
    ):
        return f"{a.type} and {b.type} cannot both hold"
    if a.type == b.type and isinstance(a, t._Count) and getattr(a, "keyword", None) == getattr(b, "keyword", None):
        (lo_a, hi_a), (lo_b, hi_b) = _bounds(a), _bounds(b)
        if max(lo_a, lo_b) > min(hi_a, hi_b) and getattr(a, "letter", None) == getattr(b, "letter", None):
            return f"two {a.type} constraints with no count that meets both"
    for x, y in ((a, b), (b, a)):
        if isinstance(x, t.KeywordsExclude):
            banned = {k.lower() for k in x.keywords}
            wanted = getattr(y, "keywords", None) if isinstance(y, t.KeywordsInclude) else None
            if isinstance(y, t.KeywordFrequency) and _bounds(y)[0] > 0:
                wanted = [y.keyword]
            if wanted and banned & {k.lower() for k in wanted}:
                return f"{x.type} forbids a keyword {y.type} asks for"
    return None


def _word_budget(constraints: list[t.Constraint]) -> str | None:
    words = [c for c in constraints if isinstance(c, t.WordCount)]
    most = min((_bounds(c)[1] for c in words), default=float("inf"))
    need = sum(_bounds(c)[0] for c in constraints if c.type in _NEEDS_WORDS)
    if need > most:
        return f"the counts asked for need at least {need:g} words, but word_count allows at most {most:g}"
    return None


def constraint_problems(specs: Any) -> list[str]:
    """Everything wrong with a list of constraint specs (empty when fine): not a list, unknown types (did you
    mean...), ill-typed, missing or unexpected arguments, contradictory pairs. Messages read well after
    ``file:line: ``."""
    try:
        specs = parse_constraints(specs)
    except ValueError as exc:
        return [str(exc)]
    problems, parsed = [], []
    for i, spec in enumerate(specs):
        try:
            parsed.append(parse(spec))
        except ValueError as exc:
            problems.append(f"constraint {i + 1}: {exc}" if len(specs) > 1 else str(exc))
    if problems:
        return problems
    problems = [reason for a, b in combinations(parsed, 2) if (reason := contradiction(a, b))]
    if reason := _word_budget(parsed):
        problems.append(reason)
    return problems


def sample_constraints(rng: random.Random, k: int, types: list[str] | None = None) -> list[dict]:
    """``k`` compatible constraint specs drawn with ``rng`` (same seed, same specs), from ``types`` (default every
    type that can be drawn without knowing the prompt). Raises ValueError when ``k`` compatible ones do not exist."""
    names = sorted(types or [name for name, cls in CONSTRAINTS.items() if cls.sampled])
    if unknown := [n for n in names if n not in CONSTRAINTS]:
        raise ValueError(_unknown(unknown[0]))
    rng.shuffle(names)
    words = iter(rng.sample(KEYWORD_POOL, len(KEYWORD_POOL)))
    chosen: list[t.Constraint] = []
    for name in names:
        if len(chosen) == k:
            break
        candidate = CONSTRAINTS[name].model_validate(CONSTRAINTS[name].sample(rng, words))
        together = [*chosen, candidate]
        if not any(contradiction(c, candidate) for c in chosen) and not _word_budget(together):
            chosen = together
    if len(chosen) < k:
        raise ValueError(f"cannot draw {k} compatible constraints from {len(names)} types")
    return [c.model_dump() for c in chosen]
