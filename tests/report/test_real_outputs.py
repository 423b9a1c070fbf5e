"""Reports of real outputs: a 1-round verifier loop of the tiny random Llama (hf backend, ifeval labels, QLoRA DPO,
verifier eval) through ``rlaif loop``, which writes the loop's page itself; then the pages of its round's training
output and data pipeline run. Every figure in the pages is the one the loop wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from report_pages import parse
from test_report_browser import CHROMIUM, open_page
from typer.testing import CliRunner

from rlaif.cli import app
from rlaif.report import render
from rlaif.report.page import rate_text

ROOT = Path(__file__).resolve().parents[2]
TOPICS = str(ROOT / "pipelines" / "data" / "verified_topics.jsonl")
pytestmark = [pytest.mark.model, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def write_loop(tmp_path: Path, model: Path) -> Path:
    policy = {"backend": "hf", "model": str(model), "temperature": 1.0, "max_tokens": 8}
    head = [
        {"name": "prompts", "type": "load", "path": TOPICS},
        {"name": "constrained", "type": "add_constraints", "from": "prompts", "k": 1, "seed": 0,
         "types": ["no_commas", "all_lowercase", "word_count"]},
    ]  # fmt: skip
    files = {}
    for name, n, last, sampling in (
        ("data", 4, {"name": "pairs", "type": "make_pairs", "from": "verified", "score_column": "rewards"}, {}),
        ("eval", 1, None, {"temperature": 0.0}),
    ):
        steps = head + [
            {"name": "responses", "type": "generate_responses", "from": "constrained", "model": "policy", "n": n},
            {"name": "verified", "type": "verify", "from": "responses", "verifier": "ifeval", "unverifiable": "keep"},
        ]
        spec = {
            "name": name,
            "seed": 0,
            "models": {"policy": {**policy, **sampling}},
            "steps": steps + [last] * bool(last),
        }
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump(spec, sort_keys=False))
    loop = {
        "name": "tiny_report_loop",
        "rounds": 1,
        "output_dir": str(tmp_path / "run"),
        "prompts": {"path": TOPICS, "held_out": 8, "per_round": 12},
        "pipeline": {"file": str(files["data"])},
        "train": {
            "file": str(ROOT / "pipelines" / "train" / "dpo.yaml"),
            "overrides": [
                f"model.name={model}",
                "data.test_size=0",
                "train.max_steps=2",
                "train.save_steps=1",
                "train.learning_rate=1.0e-3",
                "train.max_length=64",
            ],
        },  # fmt: skip
        "eval": {"kind": "verifier", "file": str(files["eval"])},
    }
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(loop, sort_keys=False))
    return path


def test_a_real_loop_and_its_round_report_what_they_wrote(tiny_model_dir, tmp_path):
    result = CliRunner().invoke(app, ["loop", str(write_loop(tmp_path, tiny_model_dir)), "--no-progress"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    rows = json.loads((run / "summary.json").read_text())
    page = (run / "report.html").read_text()  # written by `rlaif loop` itself
    assert f"report: {run / 'report.html'}" in result.output
    assert parse(page).sections == ["rounds", "round-training", "round-data"]
    table = parse(page).table_with("held-out pass rate")
    for row, line in zip(rows, table[1:], strict=True):
        ev = row["eval"]
        assert line[0] == str(row["round"]) and line[7] == rate_text(ev["pass_rate"], ev["pass_rate_ci95"], ev["n"])
    assert table[2][4] == str(rows[1]["kept"])

    training = render(run / "round-1" / "train")  # a real TRL DPO output: metrics.jsonl, eval.json, the card
    titles = [
        t for t in ("loss", "reward margin (DPO, RM)", "reward accuracy (DPO, RM)") if f'aria-label="{t}"' in training
    ]
    assert titles == ["loss", "reward margin (DPO, RM)", "reward accuracy (DPO, RM)"]
    steps = [json.loads(line) for line in (run / "round-1" / "train" / "metrics.jsonl").read_text().splitlines()]
    logged = sum(1 for s in steps if "loss" in s and "event" not in s)
    assert f"{logged:,} logged steps" in training

    data = render(run / "round-1" / "data")
    stats = json.loads((run / "round-1" / "data" / "stats.json").read_text())
    steps_table = parse(data).table_with("quarantined")
    assert [r[0] for r in steps_table[1:]] == list(stats)
    assert [int(r[3]) for r in steps_table[1:]] == [s["records_out"] for s in stats.values()]
    assert "verifiers" in parse(data).sections and "pairs" in parse(data).sections
    if CHROMIUM:  # the real loop's page in the browser too: no console message, not blank, every section
        dom = open_page(run / "report.html", tmp_path)
        assert parse(dom).sections == ["rounds", "round-training", "round-data"] and parse(dom).scripts == 0
