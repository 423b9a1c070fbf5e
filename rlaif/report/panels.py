"""Panels for the steps that label: judges (position consistency, confidence, parse failures, position bias),
verifiers (pass rate by constraint type), pairs (chosen vs rejected length) and score distributions. Each returns ""
when the run has no such step. Every rate carries its 95% Wilson interval and n (rlaif.rates)."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from rlaif.rates import rate
from rlaif.report.page import esc, grid, note, rate_text, table
from rlaif.report.runfiles import RunFiles
from rlaif.report.svg import bar_chart, histogram

JUDGE_TYPES = ("pairwise_judge", "constitutional_judge")
# The judges' quarantine reasons for an unreadable verdict (rlaif.steps.verdicts; a test holds them equal). The
# report sits below the steps layer (rlaif.train.cli writes reports), so it reads raw verdicts itself, the way the
# judges' "choice" and "brackets" parsers do (a test holds them in agreement).
PARSE_FAILURE = "judge parse failure"
NO_LOGPROBS = "no answer-token logprobs"
_BRACKETS = re.compile(r"\[\[\s*(A|B|C|(?i:tie))\s*\]\]")
_WORDS = {"A": "A", "B": "B", "C": "tie", "tie": "tie"}
SCORE_COLUMNS = {"rating_judge": "ratings", "reward_model_score": "rewards", "verify": "rewards"}


def _steps_of(run: RunFiles, types: tuple[str, ...] | set[str]) -> list[str]:
    return [name for name, s in run.stats.items() if s.get("type") in types]


def _rate_row(label: str, successes: float, n: int) -> list[Any]:
    figure = rate(successes, n).as_dict()
    return [label, rate_text(figure["rate"], figure["ci95"]), f"{successes:g}/{n}"]


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [t for item in value for t in _texts(item)]
    return []


def raw_verdict(text: str) -> str | None:
    """ "A", "B" or "tie" as the judge wrote it (in the order it was shown); None when unreadable: a bare verdict
    (uppercase letters; "tie" in any case) or exactly one distinct ``[[X]]`` in a rationale."""
    word = text.strip().strip("\"'`*").rstrip(".").strip()
    word = word if len(word) == 1 else word.lower()
    if word in ("A", "B", "tie"):
        return word
    found = {_WORDS[m if len(m) == 1 else m.lower()] for m in _BRACKETS.findall(text)}
    return found.pop() if len(found) == 1 else None


def judge_panels(run: RunFiles) -> str:
    parts = []
    for name in _steps_of(run, JUDGE_TYPES):
        stats = run.stats[name]
        cols = run.column_values(name, ["preference", "confidence", "consistent", "judge_outputs", "p_a"])
        prefs = cols.get("preference", [])
        judged = len(prefs)
        quarantined = stats.get("quarantined") or {}
        failures = sum(quarantined.get(r, 0) for r in (PARSE_FAILURE, NO_LOGPROBS))
        asked = judged + sum(quarantined.values())
        # Raw verdicts in the order shown: "A" is whichever response came first. An unbiased judge names the first
        # position in half of its non-tie verdicts, whatever the responses.
        raw = [raw_verdict(t) for row in cols.get("judge_outputs", []) for t in _texts(row)]
        sided = [v for v in raw if v in ("A", "B")]
        rows = [
            _rate_row(
                "position consistency (both orders agree)", sum(bool(c) for c in cols.get("consistent", [])), judged
            )
            if "consistent" in cols
            else ["position consistency", "not written", "-"],
            _rate_row("parse failures (of comparisons asked)", failures, asked),
            _rate_row(
                "first-shown position named (raw verdicts; 0.5 = no bias)", sum(v == "A" for v in sided), len(sided)
            ),
            _rate_row("preference A (original order)", sum(p == "A" for p in prefs), judged),
            _rate_row("tie", sum(p == "tie" for p in prefs), judged),
        ]
        counts = Counter(prefs)
        charts = [
            bar_chart(
                f"{name}: verdicts", ["A", "B", "tie"], [("records", [counts.get(k, 0) for k in ("A", "B", "tie")])]
            ),
            histogram(
                f"{name}: confidence",
                [("confidence", [float(c) for c in cols.get("confidence", []) if isinstance(c, int | float)])],
                bins=20,
                x_label="confidence of the verdict",
                value_range=(0.0, 1.0),
            ),
        ]
        if "p_a" in cols:
            soft = [float(v) for v in cols["p_a"] if isinstance(v, int | float)]
            charts.append(histogram(f"{name}: P(A better)", [("p_a", soft)], x_label="p_a", value_range=(0.0, 1.0)))
        check = stats.get("check")
        check_html = (
            table(["judge check", "value"], [[k, v] for k, v in check.items()]) if isinstance(check, dict) else ""
        )
        parts.append(
            f"<h3>{esc(name)} ({esc(stats.get('type'))})</h3>"
            + table(["figure", "value [95% CI]", "count"], rows)
            + grid(charts)
            + check_html
        )
    return "".join(parts)


def verifier_panels(run: RunFiles) -> str:
    parts = []
    for name in _steps_of(run, {"verify"}):
        cols = run.column_values(name, ["verification"])
        by_type: dict[str, list[int]] = {}
        responses = passed = unverifiable = 0
        for row in cols.get("verification", []):
            for v in row if isinstance(row, list) else [row]:
                if not isinstance(v, dict):
                    continue
                responses += 1
                passed += v.get("passed") is True
                unverifiable += v.get("score") is None
                for c in v.get("constraints") or []:
                    if isinstance(c, dict) and c.get("passed") is not None:
                        counts = by_type.setdefault(str(c.get("type")), [0, 0])
                        counts[0] += bool(c["passed"])
                        counts[1] += 1
        if not responses:
            parts.append(f"<h3>{esc(name)}</h3>" + note("No verified responses among its output records."))
            continue
        types = sorted(by_type, key=lambda t: -by_type[t][1])
        rows = [_rate_row("responses passing every check", passed, responses)]
        rows += [_rate_row(f"constraint {t}", *by_type[t]) for t in types]
        chart = bar_chart(
            f"{name}: pass rate by constraint type",
            types,
            [("pass rate", [by_type[t][0] / by_type[t][1] for t in types])],
            value_fmt=lambda v: f"{v:.2f}",
        )
        parts.append(
            f"<h3>{esc(name)}</h3>"
            + table(["figure", "value [95% CI]", "count"], rows)
            + note(f"{responses:,} responses in its first output rows; {unverifiable:,} could not be checked.")
            + (grid([chart]) if types else "")
        )
    return "".join(parts)


def _length(message: Any) -> int | None:
    if isinstance(message, str):
        return len(message)
    if isinstance(message, list):
        texts = [m.get("content") for m in message if isinstance(m, dict) and m.get("role") == "assistant"]
        return sum(len(t) for t in texts if isinstance(t, str))
    return None


def length_panels(run: RunFiles) -> str:
    parts = []
    for name in run.stats:
        if not {"chosen", "rejected"} <= set(run.columns(name)):
            continue
        cols = run.column_values(name, ["chosen", "rejected"])
        pairs = [(_length(c), _length(r)) for c, r in zip(cols["chosen"], cols["rejected"], strict=True)]
        pairs = [(c, r) for c, r in pairs if c is not None and r is not None]
        if not pairs:
            continue
        longer = sum(c > r for c, r in pairs) + 0.5 * sum(c == r for c, r in pairs)
        chosen, rejected = [float(c) for c, _ in pairs], [float(r) for _, r in pairs]
        rows = [
            _rate_row("chosen longer than rejected (ties 1/2; 0.5 = no length bias)", longer, len(pairs)),
            ["mean length, chosen", f"{sum(chosen) / len(chosen):.1f} characters", str(len(pairs))],
            ["mean length, rejected", f"{sum(rejected) / len(rejected):.1f} characters", str(len(pairs))],
        ]
        chart = histogram(
            f"{name}: response length", [("chosen", chosen), ("rejected", rejected)], bins=25, x_label="characters"
        )
        parts.append(f"<h3>{esc(name)}</h3>" + table(["figure", "value [95% CI]", "count"], rows) + grid([chart]))
    return "".join(parts)


def score_panels(run: RunFiles) -> str:
    charts = []
    for name, s in run.stats.items():
        column = SCORE_COLUMNS.get(str(s.get("type")))
        if column is None:
            continue
        values = [float(v) for row in run.column_values(name, [column]).get(column, []) for v in _numbers(row)]
        if values:
            charts.append(histogram(f"{name}: {column} (n={len(values):,})", [(column, values)], x_label=column))
    return grid(charts)


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, list):
        return [v for item in value for v in _numbers(item)]
    return []
