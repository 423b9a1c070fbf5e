"""The loop's report on synthetic rounds (no model): split verdicts counted as ties, consistency, parse failures,
intervals, round 0 and rounds that trained nothing, and the round table within 80 columns."""

from __future__ import annotations

import pytest
from rich.console import Console

from rlaif.loop.report import base_row, judge_figures, rounds_table, trained
from rlaif.rates import wilson


def test_all_wins():
    f = judge_figures(["A"] * 8, [True] * 8)
    assert (f["wins"], f["losses"], f["ties"], f["win_rate"], f["consistency"]) == (8, 0, 0, 1.0, 1.0)
    assert f["win_rate_ci95"] == pytest.approx(list(wilson(8, 8)))


def test_all_ties():
    f = judge_figures(["tie"] * 6, [True] * 6)
    assert f["win_rate"] == 0.5 and f["ties"] == 6 and f["win_rate_ci95"] == pytest.approx(list(wilson(3, 6)))


def test_fifty_fifty_with_inconsistency_counts_split_verdicts_as_ties():
    # 4 consistent wins, 4 consistent losses, 2 whose orders disagree (the logprobs leaned to A: still ties).
    prefs = ["A"] * 4 + ["B"] * 4 + ["A", "A"]
    flags = [True] * 8 + [False, False]
    f = judge_figures(prefs, flags, quarantined={"judge parse failure": 1, "judge failed": 1})
    assert (f["wins"], f["losses"], f["ties"], f["inconsistent"]) == (4, 4, 2, 2)
    assert f["win_rate"] == 0.5 and f["consistency"] == 0.8
    assert f["consistency_ci95"] == pytest.approx(list(wilson(8, 10)))
    assert f["parse_failures"] == 1 and f["not_judged"] == 2
    assert f["parse_failure_rate"] == pytest.approx(1 / 12)


def test_no_comparisons_have_no_rate_and_no_interval():
    f = judge_figures([], [], quarantined={"judge parse failure": 3})
    assert f["win_rate"] is None and f["win_rate_ci95"] is None and f["consistency"] is None
    assert f["parse_failure_rate"] == 1.0


def test_soft_preference_and_missing_consistency():
    f = judge_figures(["A", "B"], None, [0.9, 0.3])
    assert f["mean_p_a"] == pytest.approx(0.6) and f["consistency"] is None and f["consistency_ci95"] is None


def test_a_round_that_trained_nothing_says_why():
    assert trained(0, {"skipped": "no rows kept"}) == "no rows kept"
    assert trained(5, {"steps": 0}) == "zero training steps"
    assert trained(5, {"steps": 3, "loss": 0.6}) is None


def _row(k, wins=None, not_trained=None):
    return {
        "round": k,
        "prompts": 12,
        "made": 24,
        "kept": 11 if not not_trained else 0,
        "dropped": {"pairs: length ratio": 1},
        "quarantined": {},
        "trained": not_trained is None,
        "not_trained": not_trained,
        "train": {"loss": 0.6931, "rewards/margins": 0.01, "steps": 6},
        "eval": wins,
        "seconds": {
            "generate": 40.0,
            "label": 20.0,
            "filter": 0.1,
            "train": 80,
            "hand_off": 30,
            "eval": 60,
            "total": 230.1,
        },  # fmt: skip
    }


def test_the_round_table_shows_base_intervals_consistency_and_untrained_rounds_in_80_columns():
    wins = judge_figures(["A"] * 4 + ["B"] * 1 + ["A"], [True] * 5 + [False], quarantined={"judge parse failure": 2})
    rows = [base_row(), _row(1, wins), _row(2, None, "no rows kept")]
    console = Console(width=80, record=True)
    console.print(rounds_table(rows))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "base policy" in text and "not trained" in text
    assert "0.750 [0.365-0.940]" in text  # (4 + 1/2) / 6 with its Wilson interval
    assert "0.83" in text  # consistency 5/6
    line = next(line for line in text.splitlines() if line.lstrip().startswith("2 "))
    assert "0.500" not in line  # an untrained round is not scored as a tie


def test_round_zero_is_the_base_policy():
    row = base_row()
    assert row["round"] == 0 and row["trained"] is False and row["eval"] is None
