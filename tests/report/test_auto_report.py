"""``rlaif run``, ``rlaif train`` and ``rlaif loop`` end by writing report.html in their output directory; a report
that cannot be drawn is a warning, never the run's failure (its exit code stays the run's own)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from test_training_loop_report import VERIFIER_ROWS, write_metrics
from typer.testing import CliRunner

import rlaif.report.build
from rlaif.cli import app

FAN = """\
name: auto
steps:
  - {name: src, type: load, path: data.jsonl}
  - {name: upper, type: plugins.Upper, from: src}
  - {name: even, type: plugins.DropOdd, from: upper}
"""


def run_cli(tmp_path: Path) -> tuple[object, Path]:
    with (tmp_path / "data.jsonl").open("w") as handle:
        handle.writelines(json.dumps({"id": i, "text": f"<b>record</b> {i}"}) + "\n" for i in range(10))
    (tmp_path / "pipe.yaml").write_text(FAN)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(tmp_path / "pipe.yaml"), "--run-dir", str(run_dir), "--no-progress"])
    return result, run_dir


def test_rlaif_run_writes_its_report(tmp_path):
    result, run_dir = run_cli(tmp_path)
    assert result.exit_code == 0, result.output
    page = (run_dir / "report.html").read_text()
    assert f"report: {run_dir / 'report.html'}" in result.output
    assert 'id="steps"' in page and "odd id" in page and "&lt;b&gt;record&lt;/b&gt;" in page


def test_a_report_that_fails_leaves_the_run_ok(tmp_path, monkeypatch):
    def broken(root: Path, out: Path | None = None) -> Path:
        raise RuntimeError("no room to draw")

    monkeypatch.setattr(rlaif.report.build, "write_report", broken)
    result, run_dir = run_cli(tmp_path)
    assert result.exit_code == 0, result.output
    assert "warning: report not written: RuntimeError: no room to draw" in result.output
    assert not (run_dir / "report.html").exists() and (run_dir / "dataset").is_dir()


def test_rlaif_train_writes_its_report(tmp_path, monkeypatch):
    out = tmp_path / "out"
    write_metrics(out)
    cfg = types.SimpleNamespace(train=types.SimpleNamespace(output_dir=str(out)))
    result = types.SimpleNamespace(
        output_dir=out, adapter_dir=out / "adapter", merged_dir=None, metrics={"loss": 0.5}, resumed_from=None
    )
    recipes = types.ModuleType("rlaif.train.recipes")
    recipes.run_recipe = lambda cfg, resume=False: result  # the trainer's part is tested in tests/train
    monkeypatch.setitem(sys.modules, "rlaif.train.recipes", recipes)
    monkeypatch.setattr("rlaif.train.cli.load_config", lambda *args, **kwargs: cfg)
    cli = CliRunner().invoke(app, ["train", "dpo", "pipelines/train/dpo.yaml"])
    assert cli.exit_code == 0, cli.output
    assert f"report: {out / 'report.html'}" in cli.output and 'id="curves"' in (out / "report.html").read_text()


@pytest.mark.parametrize("broken", [False, True])
def test_rlaif_loop_writes_its_report(tmp_path, monkeypatch, broken):
    import rlaif.loop.config
    import rlaif.loop.rounds

    root = tmp_path / "loop"

    def run_loop(cfg, reporter=None, on_round=None):  # noqa: ANN001, ANN202 - the rounds are tested in tests/loop
        root.mkdir(parents=True, exist_ok=True)
        (root / "summary.json").write_text("[{" if broken else json.dumps(VERIFIER_ROWS))
        return [] if broken else VERIFIER_ROWS

    monkeypatch.setattr(
        rlaif.loop.config, "load_loop_config", lambda *a, **k: types.SimpleNamespace(run_dir=lambda: root)
    )
    monkeypatch.setattr(rlaif.loop.rounds, "run_loop", run_loop)
    result = CliRunner().invoke(app, ["loop", "pipelines/loop_quickstart.yaml", "--no-progress"])
    assert result.exit_code == 0, result.output
    if broken:  # an unreadable summary.json: the loop's own exit code, a warning naming the file
        assert "warning: report not written" in result.output and "summary.json" in result.output
        assert not (root / "report.html").exists()
    else:
        assert f"report: {root / 'report.html'}" in result.output
        assert "0.729 [0.590-0.834] (n=48)" in (root / "report.html").read_text()
