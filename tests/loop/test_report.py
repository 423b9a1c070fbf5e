"""The loop's report on synthetic rounds (no model): split verdicts counted as ties, consistency, parse failures,
intervals, round 0 and rounds that trained nothing, and the round table within 80 columns."""

from __future__ import annotations

import pytest
from rich.console import Console

from rlaif.loop.report import base_row, data_summary, judge_figures, rounds_table, trained
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
    assert f["mean_p_a_n"] == 2 and f["mean_p_a_ci95"] == [0.0, 1.0]  # t(1) = 12.7: two values say little
    f = judge_figures(["A", "A", "B", "A"], [True] * 4, [0.6, 0.7, None, 0.8])  # a row without p_a is left out
    assert f["mean_p_a"] == pytest.approx(0.7) and f["mean_p_a_n"] == 3
    assert f["mean_p_a_ci95"] == pytest.approx([0.7 - 0.24841, 0.7 + 0.24841], abs=1e-4)  # t(2) * 0.1 / sqrt(3)
    assert judge_figures(["A"], [True])["mean_p_a_ci95"] is None


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


def test_the_table_names_the_baseline():
    wins = {**judge_figures(["A", "B"], [True, True]), "against": "base"}
    console = Console(width=80, record=True)
    console.print(rounds_table([base_row(), _row(1, wins)]))
    assert "win vs base [95% CI]" in console.export_text()


def test_round_zero_is_the_base_policy():
    row = base_row()
    assert row["round"] == 0 and row["trained"] is False and row["eval"] is None


def test_a_loop_round_that_keeps_no_rows_is_not_trained_nor_evaluated(tmp_path):
    """No model loads: the policy is the alphabetical plugin (every answer "A"), so both responses are equal, the
    judge calls every pair a tie, the filter drops ties, nothing is kept: no training, and no eval run (a policy
    compared with itself would read 0.500)."""
    import json
    from pathlib import Path

    import yaml

    from rlaif.loop.config import load_loop_config
    from rlaif.loop.rounds import run_loop

    pipelines = Path(__file__).resolve().parents[2] / "pipelines"
    fake = {"backend": "plugins.AlphabeticalJudge", "model": "builtin:smollm2-135m-instruct"}
    prompts = {"name": "prompts", "type": "load", "path": str(pipelines / "data" / "loop_prompts.jsonl")}

    def pipeline(name: str, models: dict, steps: list) -> str:
        path = tmp_path / f"{name}.yaml"
        body = {"name": name, "models": models, "steps": [prompts, *steps], "output": {"jsonl": True}}
        path.write_text(yaml.safe_dump(body, sort_keys=False))
        return str(path)

    responses = {"name": "responses", "type": "generate_responses", "from": "prompts", "n": 2}
    judged = {"name": "judged", "type": "pairwise_judge", "from": "responses", "model": "judge"}
    data = pipeline(
        "prefs",
        {"policy": fake, "judge": fake},
        [
            {**responses, "model": "policy"},
            judged,
            {"name": "kept", "type": "judge_filter", "from": "judged", "drop_ties": True},
            {"name": "pairs", "type": "make_pairs", "from": "kept"},
        ],
    )
    evaluation = pipeline(
        "eval",
        {"candidate": fake, "baseline": fake, "judge": fake},
        [{**responses, "model": ["candidate", "baseline"], "n": 1}, judged],
    )
    loop = {
        "name": "untrained",
        "rounds": 1,
        "output_dir": str(tmp_path / "run"),
        "prompts": {"path": str(pipelines / "data" / "loop_prompts.jsonl"), "held_out": 2, "per_round": 3},
        "pipeline": {"file": data},
        "train": {"file": str(pipelines / "train" / "dpo.yaml")},
        "eval": {"file": evaluation},
    }
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(loop, sort_keys=False))
    rows = run_loop(load_loop_config(tmp_path / "loop.yaml"))
    assert [r["round"] for r in rows] == [0, 1]
    [base, row] = rows
    assert base["eval"] is None and row["kept"] == 0
    assert row["trained"] is False and row["not_trained"] == "no rows kept" and row["eval"] is None
    assert not (tmp_path / "run" / "round-1" / "eval").exists()  # the eval pipeline never ran
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == rows


def test_records_made_are_the_answers_not_every_generate_phase_step():
    def step(kind, out, dropped=None):
        return {"type": kind, "records_out": out, "dropped": dropped or {}, "quarantined": {}}

    stats = {
        "prompts": step("load", 83),
        "constrained": step("add_constraints", 83),  # generate phase too: prompt preparation
        "responses": step("generate_responses", 83),
        "verified": step("verify", 83),
        "pairs": step("make_pairs", 60, {"no pair above margin": 23}),
    }
    summary = data_summary(stats, kept=60)
    assert summary["prompts"] == 83 and summary["made"] == 83 and summary["kept"] == 60
    assert summary["dropped"] == {"pairs: no pair above margin": 23}
