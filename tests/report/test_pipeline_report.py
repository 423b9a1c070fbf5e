"""The report of a real pipeline run (scripted policy and judge, tests/report/report_pages.py): every section, the
numbers of stats.json and of the step outputs in the page, hostile record text kept as text, the command line."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from report_pages import HOSTILE, HOSTILE_JUDGE, parse
from typer.testing import CliRunner

from rlaif.cli import app
from rlaif.rates import rate
from rlaif.report import ReportError, detect, render, report_after, write_report
from rlaif.report.page import rate_text
from rlaif.report.panels import NO_LOGPROBS, PARSE_FAILURE, raw_verdict
from rlaif.steps import verdicts


def outputs(run: Path, step: str) -> list[dict]:
    done = sorted((run / "steps" / step).glob("batch-*.done"))
    shards = [run / "steps" / step / (d.name.removesuffix(".done") + ".parquet") for d in done]
    return [row for shard in shards if shard.is_file() for row in pq.read_table(shard).to_pylist()]


def figure(successes: float, n: int) -> str:
    value = rate(successes, n).as_dict()
    return rate_text(value["rate"], value["ci95"])


@pytest.fixture(scope="module")
def page(pipeline_run: Path) -> str:
    return render(pipeline_run)


def test_every_pipeline_section_is_present(pipeline_run, page):
    assert detect(pipeline_run) == "pipeline"
    sections = parse(page).sections
    assert sections == ["steps", "reasons", "cost", "samples", "judges", "verifiers", "pairs", "scores"]
    assert "<svg" in page and 'aria-label="step DAG"' in page


def test_the_step_table_is_stats_json(pipeline_run, page):
    stats = json.loads((pipeline_run / "stats.json").read_text())
    rows = parse(page).table_with("quarantined")
    assert [r[0] for r in rows[1:]] == list(stats)
    for row in rows[1:]:
        s = stats[row[0]]
        assert row[1] == s["type"]
        numbers = [int(cell.replace(",", "")) for cell in row[2:8]]
        expected = [s["records_in"], s["records_out"], sum(s["dropped"].values()), sum(s["quarantined"].values())]
        assert numbers == expected + [s["tokens_in"], s["tokens_out"]]
    assert stats["judged"]["quarantined"] == {"judge parse failure": 2} and stats["kept"]["dropped"] == {"tie": 2}
    reasons = parse(page).table_with("reason")
    assert ["judged", "quarantined", "judge parse failure", "2"] in reasons
    assert ["kept", "dropped", "tie", "2"] in reasons


def test_judge_panel_matches_the_judged_records(pipeline_run, page):
    rows = outputs(pipeline_run, "judged")
    judged = len(rows)
    consistent = sum(r["consistent"] for r in rows)
    raw = [verdicts.parse_choice(t) for r in rows for t in r["judge_outputs"]]
    first = sum(v == "A" for v in raw)
    table = {r[0]: r[1:] for r in parse(page).table_with("figure")}
    assert table["position consistency (both orders agree)"] == [figure(consistent, judged), f"{consistent}/{judged}"]
    assert table["parse failures (of comparisons asked)"] == [figure(2, judged + 2), f"2/{judged + 2}"]
    sided = sum(v in ("A", "B") for v in raw)
    assert table["first-shown position named (raw verdicts; 0.5 = no bias)"][1] == f"{first}/{sided}"
    # The scripted judge: 8 consistent records (alpha preferred in both orders), 2 always "A" (ties), 2 unreadable.
    assert (judged, consistent, first, sided) == (10, 8, 12, 20)


def test_verifier_panel_counts_every_constraint(pipeline_run, page):
    counts: dict[str, list[int]] = {}
    responses = passed = 0
    for row in outputs(pipeline_run, "verified"):
        for v in row["verification"]:
            responses += 1
            passed += v["passed"] is True
            for c in v["constraints"]:
                counts.setdefault(c["type"], [0, 0])
                counts[c["type"]][0] += bool(c["passed"])
                counts[c["type"]][1] += 1
    verifier = next(t for t in parse(page).tables if any(r[0] == "responses passing every check" for r in t))
    table = {r[0]: r[1:] for r in verifier}
    assert table["responses passing every check"] == [figure(passed, responses), f"{passed}/{responses}"]
    for kind, (ok, n) in counts.items():
        assert table[f"constraint {kind}"] == [figure(ok, n), f"{ok}/{n}"]
    assert responses == 24 and counts


def test_length_panel_is_the_pairs(pipeline_run, page):
    pairs = outputs(pipeline_run, "pairs")
    chosen = [len(p["chosen"][-1]["content"]) for p in pairs]
    rejected = [len(p["rejected"][-1]["content"]) for p in pairs]
    longer = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    key = "chosen longer than rejected (ties 1/2; 0.5 = no length bias)"
    table = {r[0]: r[1:] for t in parse(page).tables if any(r[0] == key for r in t) for r in t}
    assert table[key] == [figure(longer, len(pairs)), f"{longer}/{len(pairs)}"]
    assert table["mean length, chosen"][0] == f"{sum(chosen) / len(chosen):.1f} characters"
    assert longer == len(pairs) == 8  # the scripted judge always prefers the long "alpha" answer


def test_hostile_record_text_stays_text(pipeline_run, page):
    # The policy wrote HOSTILE into a response; the judge's unreadable output (quarantined, shown as an example)
    # carries another. Neither may reach the page as markup; both must be readable as text.
    assert parse(page).scripts == 0
    assert not re.search(r"<script", page, re.IGNORECASE)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert HOSTILE in json.dumps(outputs(pipeline_run, "responses"))  # the record really holds it
    assert HOSTILE_JUDGE in (pipeline_run / "quarantine" / "judged.jsonl").read_text()


def test_report_command_writes_the_page_and_rejects_what_is_not_a_run(pipeline_run, tmp_path):
    runner = CliRunner()
    out = tmp_path / "sub" / "page.html"
    result = runner.invoke(app, ["report", str(pipeline_run), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and str(out) in result.output and parse(out.read_text()).sections[0] == "steps"
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["report", str(empty)])
    assert result.exit_code == 2 and "not an rlaif output" in result.output and "metrics.jsonl" in result.output
    assert runner.invoke(app, ["report", str(tmp_path / "missing")]).exit_code == 2


def test_unreadable_inputs_are_named(tmp_path):
    (tmp_path / "summary.json").write_text('{"round": 1}')
    with pytest.raises(ReportError, match=r"summary\.json: expected a JSON list"):
        render(tmp_path)
    (tmp_path / "summary.json").write_text("[{")
    with pytest.raises(ReportError, match=r"summary\.json: cannot read as JSON"):
        render(tmp_path)
    run = tmp_path / "run"
    (run / "steps").mkdir(parents=True)
    (run / "stats.json").write_text("not json")
    with pytest.raises(ReportError, match=r"stats\.json: cannot read"):
        render(run)
    (run / "stats.json").write_text("[1, 2]")
    with pytest.raises(ReportError, match=r"stats\.json: expected a JSON object of steps"):
        render(run)


def test_odd_but_readable_files_still_draw_and_stay_escaped(tmp_path):
    run = tmp_path / "run"
    (run / "steps").mkdir(parents=True)
    hostile = "<img src=x onerror=alert(1)>"
    (run / "stats.json").write_text(
        json.dumps({"a": {"type": "load"}, "b": {"records_in": 3, "dropped": {hostile: 3}}})
    )
    (run / "pipeline.yaml").write_text("steps: [{name: b, from: [a, zz]}, {name: a, from: b}]\n")  # a cycle, a typo
    page = render(run)
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert ["b", "dropped", hostile, "3"] in parse(page).table_with("reason")


def test_a_file_of_an_unexpected_shape_is_an_error_not_a_traceback(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps([{"round": 1, "made": 3, "dropped": ["not", "a", "dict"]}]))
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1 and "cannot draw the report: AttributeError" in result.output


def test_report_after_a_run_never_raises(tmp_path, caplog):
    (tmp_path / "summary.json").write_text("[{")
    with caplog.at_level(logging.WARNING, logger="rlaif.report.build"):
        assert report_after(tmp_path) is None
    assert "could not write" in caplog.text and "summary.json" in caplog.text
    assert report_after(None) is None and not (tmp_path / "report.html").exists()


def test_default_output_is_report_html_in_the_run(pipeline_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(pipeline_run, copy)
    assert write_report(copy) == copy / "report.html" and (copy / "report.html").stat().st_size > 10_000
    assert not list(copy.glob("*.tmp"))


@pytest.mark.parametrize(
    "text",
    ["A", "B", "tie", "Tie.", " a ", "**B**", "[[A]]", "so [[C]]", "[[A]] or [[B]]", "I cannot", "", "`A`", "A."],
)
def test_raw_verdicts_are_read_as_the_judges_parse_them(text):
    expected = verdicts.parse_choice(text) or verdicts.parse_brackets(text)
    assert raw_verdict(text) == expected


def test_the_reasons_the_report_counts_are_the_judges():
    assert (PARSE_FAILURE, NO_LOGPROBS) == (verdicts.PARSE_FAILURE, verdicts.NO_LOGPROBS)
