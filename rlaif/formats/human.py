"""Converters: human-preference datasets in their published formats -> TRL conversational preference rows.

Each converter is ``record -> list[row]`` and raises ``FormatError(reason, detail)`` on malformed input; the reader
quarantines the record under ``reason`` (DESIGN.md principle 3: foreign formats are converted at the reader, like a
datatrove reader's ``adapter=``). Rows are ``formats.preference_row``: ``prompt`` = messages ending with a user turn,
``chosen``/``rejected`` = [one assistant message], plus the per-format provenance columns in ``PROVENANCE``.

Floor level: imports only its package (``rlaif.formats``) and the stdlib, so the training half may use it too.
"""

from __future__ import annotations

import hashlib
import inspect
import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from statistics import mean
from typing import Any

from rlaif.formats import ROLES, Messages, as_messages, assistant, preference_row

Row = dict[str, Any]
Converter = Callable[..., list[Row]]


class FormatError(ValueError):
    """Malformed input. ``reason`` is a short stable label (quarantine stats count by it); ``detail`` says why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# -- shared helpers ---------------------------------------------------------------------------------------------
def _field(record: Mapping[str, Any], key: str, kind: type | tuple[type, ...] = str) -> Any:
    if record.get(key) is None:
        raise FormatError("missing field", f"no {key!r} field; the record has {sorted(record)}")
    value = record[key]
    if not isinstance(value, kind):
        raise FormatError("wrong field type", f"{key!r} is a {type(value).__name__}")
    return value


def _number(value: Any, what: str) -> float:
    """A rating as a float; ratings arrive as numbers (Parquet) or strings (UltraFeedback JSON, CSV)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise FormatError("invalid rating", f"{what} is {value!r}, not a number") from None


def _messages(value: Any, which: str) -> Messages:
    if not isinstance(value, list) or not value:
        raise FormatError("invalid messages", f"{which} must be a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise FormatError("invalid messages", f"{which}[{i}] is not a {{role, content}} message: {m!r:.120}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _split(chosen: Messages, rejected: Messages) -> tuple[Messages, str, str]:
    """Two whole conversations -> (shared prompt, final chosen turn, final rejected turn), as TRL's extract_prompt."""
    for which, conv in (("chosen", chosen), ("rejected", rejected)):
        if conv[-1]["role"] != "assistant":
            raise FormatError("no final assistant turn", f"{which} ends with a {conv[-1]['role']!r} message")
    if chosen[:-1] != rejected[:-1]:
        at = next(
            (i for i, (a, b) in enumerate(zip(chosen[:-1], rejected[:-1], strict=False)) if a != b),
            min(len(chosen), len(rejected)) - 1,
        )
        raise FormatError("prompts differ", f"chosen and rejected differ at message {at}, before the final turn")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def _pair(prompt: Messages, chosen: str, rejected: str, **provenance: Any) -> Row:
    if not prompt or prompt[-1]["role"] != "user":
        # TRL's chat templating adds the generation prompt after a user turn; anything else is not a preference prompt
        raise FormatError("prompt does not end with a user turn", f"prompt roles: {[m['role'] for m in prompt]}")
    if not chosen.strip() or not rejected.strip():
        raise FormatError("empty response", "chosen or rejected is empty")
    if chosen.strip() == rejected.strip():
        raise FormatError("chosen equals rejected", "identical responses carry no preference signal")
    return preference_row(prompt, chosen, rejected, **provenance)


def _stable_seed(text: str) -> int:
    # hash() is salted per process; a digest makes the "random" rejected pick identical on every run and machine
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


# -- Anthropic/hh-rlhf ------------------------------------------------------------------------------------------
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


def _hh_turns(text: str, which: str) -> Messages:
    if not text.startswith("\n\nHuman:"):
        raise FormatError("not an HH transcript", f"{which} does not start with '\\n\\nHuman:': {text[:60]!r}")
    parts = _HH_TURN.split(text)  # ['', 'Human', text, 'Assistant', text, ...]
    turns = [{"role": _HH_ROLE[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2], strict=True)]
    if turns[-1]["role"] != "assistant":
        raise FormatError("no final Assistant turn", f"{which} ends with a Human turn")
    for i in range(1, len(turns)):
        if turns[i]["role"] == turns[i - 1]["role"]:
            raise FormatError("turns do not alternate", f"{which} has two {turns[i]['role']} turns in a row at {i}")
    return turns


def hh_rlhf(record: Mapping[str, Any]) -> list[Row]:
    """Anthropic HH-RLHF (Bai et al. 2022, ``Anthropic/hh-rlhf``): ``chosen``/``rejected`` are whole transcripts
    ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` sharing every turn but the last. Split as TRL's
    ``examples/datasets/hh-rlhf-helpful-base.py`` does: prompt = the shared turns, chosen/rejected = the final ones."""
    chosen = _hh_turns(_field(record, "chosen"), "chosen")
    rejected = _hh_turns(_field(record, "rejected"), "rejected")
    for which, turns in (("chosen", chosen), ("rejected", rejected)):
        if not turns[-1]["content"]:
            raise FormatError("empty final turn", f"the final Assistant turn of {which} is empty")
    prompt, chosen_text, rejected_text = _split(chosen, rejected)
    return [_pair(prompt, chosen_text, rejected_text)]


# -- openbmb/UltraFeedback (raw) --------------------------------------------------------------------------------
UF_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def _uf_score(completion: Mapping[str, Any], score: str) -> float | None:
    if score == "overall":
        value = completion.get("overall_score")
        return None if value is None else _number(value, "overall_score")
    annotations = completion.get("annotations") or {}
    ratings = [(annotations.get(a) or {}).get("Rating") for a in UF_ASPECTS]
    # "N/A" marks an aspect the annotator judged not applicable: it is left out of the mean, not counted as 0
    numeric = [_number(r, "Rating") for r in ratings if r not in (None, "N/A", "")]
    return mean(numeric) if numeric else None


def ultrafeedback(
    record: Mapping[str, Any], *, strategy: str = "best_vs_random", score: str = "mean_aspects"
) -> list[Row]:
    """UltraFeedback raw (Cui et al. 2023, ``openbmb/UltraFeedback``): an ``instruction`` and 4 ``completions``, each
    with GPT-4 ``annotations`` rating 4 aspects 1-5 (as strings) and a critique ``overall_score``.

    Binarized as Zephyr / ``HuggingFaceH4/ultrafeedback_binarized``: the best completion is chosen; rejected is
    a random lower-scored one (``best_vs_random``, seeded by the instruction) or the lowest (``best_vs_worst``). The
    score is the mean of the 4 aspect ratings (``mean_aspects``, as Argilla's cleaned version, since the critique
    ``overall_score`` was found unreliable) or ``overall``. Completions tying with the best are never rejected."""
    if strategy not in ("best_vs_random", "best_vs_worst") or score not in ("mean_aspects", "overall"):
        raise ValueError(
            f"strategy must be best_vs_random|best_vs_worst and score mean_aspects|overall; "
            f"got {strategy!r}, {score!r}"
        )
    instruction = _field(record, "instruction")
    completions = _field(record, "completions", list)
    scored = [
        (s, c)
        for c in completions
        if isinstance(c, Mapping) and isinstance(c.get("response"), str) and (s := _uf_score(c, score)) is not None
    ]
    if len(scored) < 2:
        raise FormatError("fewer than 2 rated completions", f"{len(scored)} of {len(completions)} are rated")
    rng = random.Random(_stable_seed(instruction))
    best_score = max(s for s, _ in scored)
    best = rng.choice([c for s, c in scored if s == best_score])
    lower = [(s, c) for s, c in scored if s < best_score]
    if not lower:
        raise FormatError("all completions tie", f"all {len(scored)} completions score {best_score:g}")
    if strategy == "best_vs_worst":
        worst_score = min(s for s, _ in lower)
        lower = [(s, c) for s, c in lower if s == worst_score]
    rejected_score, rejected = rng.choice(lower)
    return [
        _pair(
            as_messages(instruction),
            best["response"],
            rejected["response"],
            chosen_model=best.get("model"),
            rejected_model=rejected.get("model"),
            chosen_score=float(best_score),
            rejected_score=float(rejected_score),
        )
    ]


# -- HuggingFaceH4/ultrafeedback_binarized ----------------------------------------------------------------------
def ultrafeedback_binarized(record: Mapping[str, Any]) -> list[Row]:
    """``HuggingFaceH4/ultrafeedback_binarized`` (Zephyr, Tunstall et al. 2023): ``prompt`` (str), ``chosen`` and
    ``rejected`` as whole conversations [user, assistant], ``score_chosen``/``score_rejected``. The TRL prompt is the
    conversation without its final assistant turn; it must match the ``prompt`` string."""
    prompt, chosen, rejected = _split(
        _messages(_field(record, "chosen", list), "chosen"), _messages(_field(record, "rejected", list), "rejected")
    )
    text = record.get("prompt")
    if isinstance(text, str) and prompt and prompt[-1]["content"].strip() != text.strip():
        raise FormatError("prompt does not match conversation", f"prompt {text[:60]!r} is not the last user turn")
    return [
        _pair(
            prompt,
            chosen,
            rejected,
            prompt_id=record.get("prompt_id"),
            chosen_score=_number(record.get("score_chosen"), "score_chosen"),
            rejected_score=_number(record.get("score_rejected"), "score_rejected"),
        )
    ]


# -- nvidia/HelpSteer2 ------------------------------------------------------------------------------------------
HELPSTEER2_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
# The scalar reward NVIDIA recommends for its HelpSteer2-trained Llama3-70B-SteerLM-RM (model card, HelpSteer2 paper
# Wang et al. 2024): 0.65*helpfulness + 0.8*correctness + 0.45*coherence + 0.55*complexity - 0.4*verbosity.
# Verbosity is negative so a longer answer with equal content does not win.
HELPSTEER2_WEIGHTS = dict(helpfulness=0.65, correctness=0.8, coherence=0.45, complexity=0.55, verbosity=-0.4)
_HS2_TURN = re.compile(r"\n?<extra_id_1>(User|Assistant)\n")


def _helpsteer2_prompt(prompt: str) -> Messages:
    """Multi-turn HelpSteer2 prompts inline earlier turns (NeMo-Aligner's SteerLM format):
    ``first user turn\\n<extra_id_1>Assistant\\n...\\n<extra_id_1>User\\n...``; the first turn has no marker."""
    parts = _HS2_TURN.split(prompt)
    messages = [{"role": "user", "content": parts[0].strip()}]
    messages += [{"role": r.lower(), "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2], strict=True)]
    return messages


def helpsteer2_pairs(rows: list[Mapping[str, Any]], weights: Mapping[str, float] | None = None) -> list[Row]:
    """The rows of ONE HelpSteer2 prompt (2 in the dataset) -> a pair: highest weighted score vs lowest."""
    weights = dict(HELPSTEER2_WEIGHTS if weights is None else weights)
    if unknown := set(weights) - set(HELPSTEER2_ATTRIBUTES):
        raise ValueError(f"unknown HelpSteer2 attribute(s) {sorted(unknown)}; known: {HELPSTEER2_ATTRIBUTES}")
    if len(rows) < 2:
        raise FormatError("prompt has one response", "HelpSteer2 pairs need 2 consecutive rows with the same prompt")
    prompt = _field(rows[0], "prompt")
    if any(r.get("prompt") != prompt for r in rows):
        raise FormatError("rows of different prompts", "rows grouped as one prompt have different prompts")
    # rounded, so two rating sets that weigh the same compare equal despite float summation order
    scored = [
        (round(sum(w * _number(_field(r, a, (int, float, str)), a) for a, w in weights.items()), 6), r) for r in rows
    ]
    best = max(scored, key=lambda item: item[0])
    worst = min(scored, key=lambda item: item[0])
    if best[0] == worst[0]:
        raise FormatError("responses tie", f"every response scores {best[0]:g}")
    return [
        _pair(
            _helpsteer2_prompt(prompt),
            _field(best[1], "response"),
            _field(worst[1], "response"),
            chosen_score=best[0],
            rejected_score=worst[0],
        )
    ]


def helpsteer2(record: Mapping[str, Any], *, weights: Mapping[str, float] | None = None) -> list[Row]:
    """HelpSteer2 (Wang et al. 2024, ``nvidia/HelpSteer2``) rates ONE response per row on 5 attributes (0-4); the two
    responses to a prompt sit on consecutive rows. The record here is a group ``{"prompt", "rows"}`` made by
    ``group_by_prompt``."""
    return helpsteer2_pairs(_field(record, "rows", list), weights)


def group_by_prompt(items: Iterable[Any], key: str = "prompt") -> Iterator[Any]:
    """Consecutive records with the same ``key`` -> one group ``{key, "rows"}``, streaming (no whole-file read).
    Items that are not mappings (a reader's error markers) pass through as they are."""
    group: list[Mapping[str, Any]] = []
    for item in items:
        if not isinstance(item, Mapping):
            yield item
            continue
        if group and item.get(key) != group[0].get(key):
            yield {key: group[0].get(key), "rows": group}
            group = []
        group.append(item)
    if group:
        yield {key: group[0].get(key), "rows": group}


# -- stanfordnlp/SHP --------------------------------------------------------------------------------------------
def shp(record: Mapping[str, Any], *, min_score_ratio: float | None = None) -> list[Row]:
    """Stanford Human Preferences (Ethayarajh et al. 2022, ``stanfordnlp/SHP``): a Reddit post ``history`` and two
    top-level comments ``human_ref_A``/``human_ref_B``; ``labels`` = 1 if A is preferred. The SHP authors suggest
    training on pairs whose ``score_ratio`` (higher / lower upvotes) is at least 2; ``min_score_ratio`` drops the
    rest (default: keep all)."""
    history = _field(record, "history")
    label = _number(_field(record, "labels", (int, float, str)), "labels")
    if label not in (0, 1):
        raise FormatError("invalid label", f"labels must be 0 or 1, got {record['labels']!r}")
    score_a = _number(record.get("score_A"), "score_A")
    score_b = _number(record.get("score_B"), "score_B")
    if min(score_a, score_b) <= 0:
        raise FormatError("invalid scores", f"score_A={score_a:g}, score_B={score_b:g} must be positive")
    ratio = max(score_a, score_b) / min(score_a, score_b)
    if min_score_ratio is not None and ratio < min_score_ratio:
        raise FormatError("score ratio below minimum", f"score ratio {ratio:.3g} < min_score_ratio {min_score_ratio}")
    a, b = _field(record, "human_ref_A"), _field(record, "human_ref_B")
    (chosen, s_chosen), (rejected, s_rejected) = ((a, score_a), (b, score_b))[:: 1 if label == 1 else -1]
    return [
        _pair(
            as_messages(history),
            chosen,
            rejected,
            post_id=record.get("post_id"),
            domain=record.get("domain"),
            score_ratio=ratio,
            chosen_score=s_chosen,
            rejected_score=s_rejected,
        )
    ]


# -- generic TRL rows -------------------------------------------------------------------------------------------
def generic(record: Mapping[str, Any]) -> list[Row]:
    """TRL preference rows in any of TRL's forms (``trl.data_utils``): standard (strings) or conversational (message
    lists), explicit ``prompt`` or implicit (``chosen``/``rejected`` hold the whole conversation) -> conversational."""
    chosen, rejected = record.get("chosen"), record.get("rejected")
    if chosen is None or rejected is None:
        raise FormatError("missing field", f"needs chosen and rejected; the record has {sorted(record)}")
    prompt = record.get("prompt")
    if prompt is None:
        if isinstance(chosen, str) or isinstance(rejected, str):
            raise FormatError("missing prompt", "plain-text chosen/rejected need a prompt (HH transcripts: hh_rlhf)")
        full_chosen, full_rejected = _messages(chosen, "chosen"), _messages(rejected, "rejected")
    else:
        head = as_messages(prompt) if isinstance(prompt, str) else _messages(prompt, "prompt")
        full_chosen = head + (assistant(chosen) if isinstance(chosen, str) else _messages(chosen, "chosen"))
        full_rejected = head + (assistant(rejected) if isinstance(rejected, str) else _messages(rejected, "rejected"))
    return [_pair(*_split(full_chosen, full_rejected))]


# -- registry ---------------------------------------------------------------------------------------------------
CONVERTERS: dict[str, Converter] = {
    "hh_rlhf": hh_rlhf,
    "ultrafeedback": ultrafeedback,
    "ultrafeedback_binarized": ultrafeedback_binarized,
    "helpsteer2": helpsteer2,
    "shp": shp,
    "generic": generic,
}
PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected", "source")
# Columns each converter adds beside TRL's (always present, maybe None), so a pipeline can check them statically.
# Named as make_pairs names its own (chosen_model, chosen_score...), so AI and human rows share columns in a mix.
PROVENANCE: dict[str, tuple[str, ...]] = {
    "hh_rlhf": (),
    "ultrafeedback": ("chosen_model", "rejected_model", "chosen_score", "rejected_score"),
    "ultrafeedback_binarized": ("prompt_id", "chosen_score", "rejected_score"),
    "helpsteer2": ("chosen_score", "rejected_score"),
    "shp": ("post_id", "domain", "score_ratio", "chosen_score", "rejected_score"),
    "generic": (),
}


def detect_format(columns: Iterable[str] | Mapping[str, Any]) -> str | None:
    """The format a record's keys name, or None. Given the record itself, its values settle HH vs implicit-prompt
    TRL rows (both have only chosen/rejected)."""
    keys = set(columns)
    if {"instruction", "completions"} <= keys:
        return "ultrafeedback"
    if {"history", "human_ref_A", "human_ref_B"} <= keys:
        return "shp"
    if {"prompt", "response", *HELPSTEER2_ATTRIBUTES} <= keys:
        return "helpsteer2"
    if {"prompt", "chosen", "rejected", "score_chosen", "score_rejected"} <= keys and "prompt_id" in keys:
        return "ultrafeedback_binarized"
    if {"chosen", "rejected"} <= keys and "prompt" not in keys:
        value = columns.get("chosen") if isinstance(columns, Mapping) else ""
        return "generic" if isinstance(value, list) else "hh_rlhf"
    if {"prompt", "chosen", "rejected"} <= keys:
        return "generic"
    return None


def converter_options(name: str) -> tuple[str, ...]:
    """The keyword options a converter takes (``strategy``, ``weights``...)."""
    params = inspect.signature(CONVERTERS[name]).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def convert(name: str, record: Mapping[str, Any], **options: Any) -> list[Row]:
    """Convert one record from format ``name``; rows gain ``source`` = the format name. Unknown names or options are
    ``ValueError`` (configuration); anything wrong with the record is ``FormatError``."""
    if name not in CONVERTERS:
        raise ValueError(f"unknown preference format {name!r}; known: {sorted(CONVERTERS)}")
    if unknown := set(options) - set(converter_options(name)):
        raise ValueError(f"format {name!r} takes no option(s) {sorted(unknown)}; it takes {converter_options(name)}")
    if not isinstance(record, Mapping):
        raise FormatError("not a record", f"expected a mapping, got {type(record).__name__}")
    try:
        rows = CONVERTERS[name](record, **options)
    except (KeyError, TypeError, AttributeError, IndexError) as exc:  # a shape no check anticipated
        raise FormatError("malformed record", f"{type(exc).__name__}: {exc}") from exc
    return [{**row, "source": name} for row in rows]
