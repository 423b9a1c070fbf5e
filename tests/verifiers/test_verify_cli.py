"""``rlaif verify``: grades a jsonl, Parquet file or saved dataset; prints the pass rate with its Wilson interval,
unverifiable counts by reason and the per-constraint-type breakdown; --json and --out."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from rlaif.cli import app
from rlaif.verify_cli import read_rows, responses_of

DATA = Path(__file__).parent / "data"


def _run(*args: str):
    return CliRunner().invoke(app, ["verify", *args])


def _error(*args: str) -> str:
    """A usage error's message, unwrapped from rich's box."""
    result = _run(*args)
    assert result.exit_code == 2, result.output
    return re.sub(r"[\s│╭╮╰╯─]+", " ", result.output)


def test_ifeval_report_prints_rate_interval_reasons_and_types():
    result = _run(str(DATA / "ifeval_responses.jsonl"), "--verifier", "ifeval")
    assert result.exit_code == 0, result.output
    assert "5 rows, 8 responses" in result.output
    assert "pass rate: 0.571 [0.250, 0.842] (95% Wilson interval, n=7)" in result.output
    # Scores 1, .5, .5, 1, 0, 1, 1 (fraction of constraints held): mean 0.714, t(6) interval, clipped at 1.
    assert "mean score: 0.714 [0.350, 1.000] (95% t interval, n=7)" in result.output
    assert (
        "unverifiable: 1" in result.output
        and "unknown constraint type 'titel' (did you mean 'title'?)" in result.output
    )
    assert "  bullet_count : 0.500 [0.095, 0.905] (95% Wilson interval, n=2)" in result.output


def test_json_summary_and_per_row_out(tmp_path):
    out = tmp_path / "graded" / "math.jsonl"
    result = _run(str(DATA / "math_responses.jsonl"), "--verifier", "math", "--answer-column", "solution",
                  "--json", "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["pass_rate"]["successes"] == 2 and summary["pass_rate"]["n"] == 3
    assert summary["pass_rate"]["ci95"] == pytest.approx([0.2077, 0.9385], abs=1e-4)
    assert summary["mean_score"] == pytest.approx(2 / 3) and summary["mean_score_ci95"] == [0.0, 1.0]  # n = 3: wide
    assert summary["unverifiable"] == {"no final answer": 1} and summary["by_type"] == {}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["passed"] for r in rows] == [True, True, False, None]
    assert rows[3]["reason"] == "no final answer"


def test_parquet_and_saved_dataset_dirs_and_response_column(tmp_path):
    table = pa.Table.from_pylist([
        {"prompt": "Capital of France?", "chosen": "Paris.", "answer": "paris"},
        {"prompt": "Capital of Italy?", "chosen": "Milan", "answer": "Rome"},
    ])  # fmt: skip
    (tmp_path / "run" / "dataset" / "data").mkdir(parents=True)
    pq.write_table(table, tmp_path / "run" / "dataset" / "data" / "train-00000-of-00001.parquet")
    pq.write_table(table, tmp_path / "pairs.parquet")
    for source in (tmp_path / "pairs.parquet", tmp_path / "run"):
        result = _run(str(source), "--verifier", "exact", "--response-column", "chosen", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["pass_rate"]["successes"] == 1


def test_bad_input_is_a_clear_error(tmp_path):
    assert "did you mean 'ifeval'" in _error(str(DATA / "ifeval_responses.jsonl"), "--verifier", "ifevl")
    assert "no such file" in _error(str(tmp_path / "nope.jsonl"), "--verifier", "math")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"completion": "#### 1", "answer": "1"}\nnot json\n[1]\n{"answer": "2"}\n')
    summary = json.loads(_run(str(broken), "--verifier", "math", "--json").output)
    assert summary["pass_rate"]["n"] == 1 and sum(summary["unverifiable"].values()) == 3
    assert any(reason.startswith("invalid JSON at line 2") for reason in summary["unverifiable"])
    assert "no response in column 'completion'" in summary["unverifiable"]


def test_helpers():
    assert responses_of("x") == ["x"] and responses_of(["a", "b"]) == ["a", "b"]
    conversation = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert responses_of(conversation) == ["a"] and responses_of([conversation, conversation]) == ["a", "a"]
    assert responses_of(None) == [None] and responses_of(3) == [None]
    assert len(read_rows(DATA / "ifeval_responses.jsonl")) == 5
