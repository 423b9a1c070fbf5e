"""Running pipelines: fan-out and join, cache reuse and precise invalidation, kill -9 and resume, accounting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rlaif.pipeline.run import run_pipeline
from rlaif.pipeline.runner import AccountingError
from rlaif.pipeline.spec import load_pipeline

TESTS_DIR = Path(__file__).parents[1]


def write_pipeline(tmp_path: Path, steps: str, records: int = 40, extra: str = "") -> Path:
    with (tmp_path / "data.jsonl").open("w") as handle:
        for i in range(records):
            handle.write(json.dumps({"id": i, "text": f"record {i}" + (" boom" if i == 7 else "")}) + "\n")
    path = tmp_path / "pipe.yaml"
    path.write_text(f"name: t\nsteps:\n{steps}{extra}")
    return path


def saved_rows(dataset_dir: Path) -> list[dict]:
    files = sorted((dataset_dir / "data").glob("*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


FAN = """\
  - {name: src, type: load, path: data.jsonl, batch_size: 8}
  - {name: upper, type: plugins.Upper, from: src, batch_size: 8}
  - {name: even, type: plugins.DropOdd, from: src}
  - {name: joined, type: plugins.Slow, from: [upper, even], seconds: 0}
"""


def test_fan_out_and_join_with_accounting(tmp_path):
    pipeline = load_pipeline(write_pipeline(tmp_path, FAN))
    summary = run_pipeline(pipeline, run_dir=tmp_path / "run")
    stats = summary.stats
    assert stats["src"]["records_out"] == 40
    assert stats["even"] == {**stats["even"], "records_in": 40, "records_out": 20, "dropped": {"odd id": 20}}
    # A join reads the union of its upstreams, in `from` order; it sees only the columns all of them share.
    assert stats["joined"]["records_in"] == 60
    rows = saved_rows(summary.datasets["joined"])
    assert len(rows) == 60 and [r["id"] for r in rows[:3]] == [0, 1, 2] and rows[40]["id"] == 0
    assert pipeline.columns["joined"] == {"id", "text", "tag", "pid"}
    for name, s in stats.items():
        assert s["records_in"] == s["records_out"] + sum(s["dropped"].values()) + sum(s["quarantined"].values())
        assert (
            json.loads((tmp_path / "run" / "steps" / name / "stats.json").read_text())["records_in"] == s["records_in"]
        )


def test_rerun_reuses_everything_and_a_change_recomputes_only_descendants(tmp_path):
    path = write_pipeline(tmp_path, FAN)
    first = run_pipeline(load_pipeline(path), run_dir=tmp_path / "run")
    again = run_pipeline(load_pipeline(path), run_dir=tmp_path / "run")
    assert all(s.get("cached") for s in again.stats.values())
    assert saved_rows(again.datasets["joined"]) == saved_rows(first.datasets["joined"])

    changed = run_pipeline(load_pipeline(path, ["steps.upper.column=id"]), run_dir=tmp_path / "run")
    cached = {name for name, s in changed.stats.items() if s.get("cached")}
    assert cached == {"src", "even"}  # upper changed, joined descends from it; the rest is reused
    assert saved_rows(changed.datasets["joined"])[0]["upper"] == "0"

    fresh = run_pipeline(load_pipeline(path), run_dir=tmp_path / "run", fresh=True)
    assert not any(s.get("cached") for s in fresh.stats.values())


def test_changing_a_data_file_invalidates_its_source(tmp_path):
    path = write_pipeline(tmp_path, FAN)
    run_pipeline(load_pipeline(path), run_dir=tmp_path / "run")
    with (tmp_path / "data.jsonl").open("a") as handle:
        handle.write(json.dumps({"id": 40, "text": "late"}) + "\n")
    rerun = run_pipeline(load_pipeline(path), run_dir=tmp_path / "run")
    assert not any(s.get("cached") for s in rerun.stats.values())
    assert rerun.stats["src"]["records_out"] == 41


def test_failures_are_quarantined_with_reasons_and_counted(tmp_path):
    steps = """\
  - {name: src, type: load, path: data.jsonl}
  - {name: flaky, type: plugins.Flaky, from: src, batch_size: 10}
"""
    path = write_pipeline(tmp_path, steps)
    with (tmp_path / "data.jsonl").open("a") as handle:
        handle.write("{not json\n[1, 2]\n")
    summary = run_pipeline(load_pipeline(path), run_dir=tmp_path / "run")
    assert summary.stats["src"]["quarantined"] == {"invalid JSON": 1, "not a JSON object": 1}
    assert summary.stats["src"]["records_in"] == 42
    assert summary.stats["flaky"]["quarantined"] == {"step raised RuntimeError": 1}
    assert summary.stats["flaky"]["records_out"] == 39
    quarantine = [json.loads(line) for line in (tmp_path / "run" / "quarantine" / "flaky.jsonl").open()]
    assert json.loads(quarantine[0]["record"])["id"] == 7 and quarantine[0]["detail"] == "exploded on boom"
    bad_lines = [json.loads(line) for line in (tmp_path / "run" / "quarantine" / "src.jsonl").open()]
    assert bad_lines[0]["detail"].startswith("data.jsonl:41:") and bad_lines[0]["raw_output"] == "{not json\n"


def test_a_step_that_loses_records_is_an_error(tmp_path):
    path = write_pipeline(
        tmp_path, "  - {name: src, type: load, path: data.jsonl}\n  - {name: liar, type: plugins.Liar, from: src}\n"
    )
    with pytest.raises(AccountingError, match=r"40 records in, but 39 out \+ 0 dropped \+ 0 quarantined"):
        run_pipeline(load_pipeline(path), run_dir=tmp_path / "run")


def test_dry_run_caches_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = run_pipeline(load_pipeline(write_pipeline(tmp_path, FAN)), dry_run=5)
    assert summary.stats["src"]["records_out"] == 5
    assert summary.rows["joined"] == 5 + 3  # 5 upper-cased + the even ids 0, 2, 4
    assert summary.samples["joined"][0]["id"] == 0
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_equals_an_uninterrupted_run(tmp_path):
    steps = """\
  - {name: src, type: load, path: data.jsonl}
  - {name: slow, type: plugins.Slow, from: src, batch_size: 10, seconds: 0.3}
  - {name: even, type: plugins.DropOdd, from: slow}
"""
    path = write_pipeline(tmp_path, steps, records=300)
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR)}
    command = [sys.executable, "-m", "rlaif.cli", "run", str(path), "--no-progress"]
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen([*command, "--run-dir", str(killed_dir)], env=env, start_new_session=True)
    markers = killed_dir / "steps" / "slow"
    deadline = time.monotonic() + 120
    while len(list(markers.glob("batch-*.done"))) < 5:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(markers.glob("batch-*.done")))
    assert 5 <= done_before < 30 and not (markers / "COMPLETE").exists()

    subprocess.run([*command, "--run-dir", str(killed_dir)], env=env, check=True, timeout=300)
    subprocess.run([*command, "--run-dir", str(tmp_path / "clean")], env=env, check=True, timeout=300)
    resumed = saved_rows(killed_dir / "dataset")
    clean = saved_rows(tmp_path / "clean" / "dataset")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "pid"} for r in rows]  # noqa: E731
    assert strip(resumed) == strip(clean) and len(clean) == 150
    # The batches finished before the kill were reused, not redone: two processes wrote the resumed output.
    assert len({r["pid"] for r in resumed}) == 2
    stats = json.loads((killed_dir / "stats.json").read_text())
    assert stats["slow"]["records_in"] == 300 and stats["even"]["dropped"] == {"odd id": 150}


def test_inline_source_and_loading_a_saved_dataset_by_id(tmp_path):
    """`inline` records, then a `load` with `dataset:` (the datasets-library path used for Hub ids) reading the
    dataset the first run saved, with a column renamed."""
    first = tmp_path / "first.yaml"
    first.write_text(
        "name: first\nsteps:\n"
        "  - name: rows\n    type: inline\n    records:\n"
        "      - {question: 'What is 2+2?', id: 1}\n      - {question: 'Name a colour.', id: 2}\n"
        f"output: {{save: {tmp_path / 'saved'}}}\n"
    )
    run_pipeline(load_pipeline(first), run_dir=tmp_path / "run1")
    second = tmp_path / "second.yaml"
    second.write_text(
        "name: second\nsteps:\n"
        f"  - {{name: hub, type: load, dataset: {tmp_path / 'saved'}, columns: {{question: text}}}}\n"
        "  - {name: up, type: plugins.Upper, from: hub}\n"
    )
    summary = run_pipeline(load_pipeline(second), run_dir=tmp_path / "run2")
    rows = saved_rows(summary.datasets["up"])
    assert [(r["id"], r["upper"]) for r in rows] == [(1, "WHAT IS 2+2?"), (2, "NAME A COLOUR.")]


def test_cli_validate_show_run_and_push_failure(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from rlaif.cli import app

    runner = CliRunner()
    path = write_pipeline(tmp_path, FAN)
    assert runner.invoke(app, ["validate", str(path)]).exit_code == 0
    shown = runner.invoke(app, ["show", str(path)])
    assert "flowchart TD" in shown.output and "upper --> joined" in shown.output and "even --> joined" in shown.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\nsteps:\n  - {name: s, type: lod}\n")
    failed = runner.invoke(app, ["validate", str(path), str(bad)])
    assert failed.exit_code == 2 and f"{bad}:3:" in failed.output
    ran = runner.invoke(
        app, ["run", str(path), "steps.even.batch_size=4", "--run-dir", str(tmp_path / "r"), "--no-progress"]
    )
    assert ran.exit_code == 0, ran.output
    assert "saved joined: 60 rows" in ran.output and "run summary" in ran.output
    # No Hub here: the push fails, the data stays on disk, and the retry command is printed.
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
    pushed = runner.invoke(app, ["push", str(tmp_path / "r"), "--repo", "me/data"])
    assert pushed.exit_code == 1
    assert "rlaif push" in pushed.output and "--repo me/data" in pushed.output and "x" * 30 not in pushed.output


def test_store_keeps_keys_missing_from_the_first_record(tmp_path):
    from rlaif.pipeline.store import StepStore
    from rlaif.steps.base import BatchResult

    store = StepStore(tmp_path / "s", "key")
    rows = [{"id": 1}, {"id": 2, "note": "only here"}]
    store.write_batch(0, BatchResult(records=rows), {"records_in": 2})
    assert [r for batch in store.records() for r in batch] == [{"id": 1, "note": None}, rows[1]]
    assert StepStore(tmp_path / "s", "other key").done_batches() == {}  # another key: nothing is reused


def test_shard_slices_give_the_batches_the_runner_cuts_from_a_join(tmp_path):
    """What a Ray task reads for itself (InputSlices) is exactly the batch the driver would have read: a union of
    two upstream steps, shards of uneven sizes, a retry's shard after the first pass, batches across shards."""
    from rlaif.pipeline.runner import _batches
    from rlaif.pipeline.store import InputSlices, StepStore, input_slices
    from rlaif.steps.base import BatchResult, Step, StepContext, StepParams

    stores = [StepStore(tmp_path / "a", "key"), StepStore(tmp_path / "b", "key")]
    number = iter(range(1000))
    for store, sizes in zip(stores, ([3, 7, 1, 5], [4, 4, 9]), strict=True):
        for index, size in enumerate(sizes):
            rows = [{"n": next(number), "text": f"row {index}"} for _ in range(size)]
            store.write_batch(index, BatchResult(records=rows), {"records_in": size})
    retried = [{"n": next(number), "text": "recovered"}]
    stores[0].write_retry(1, BatchResult(records=retried), [], {"records_in": 7, "retries": 1})
    step = Step("join", StepParams(), tmp_path)
    for size in (1, 4, 6, 100):
        expected = list(_batches(step, StepContext(), stores, size, None))
        sliced = list(input_slices(stores, size))
        assert all(isinstance(batch, InputSlices) for batch in sliced)
        assert [batch.read() for batch in sliced] == expected, size
    # Step a's first pass, its retry's row, then step b.
    assert [row["n"] for batch in expected for row in batch] == [*range(16), 33, *range(16, 33)]


def test_stateful_step_restarts_from_its_first_batch_and_dropped_records_are_kept(tmp_path):
    path = write_pipeline(
        tmp_path,
        "  - {name: src, type: load, path: data.jsonl}\n"
        "  - {name: even, type: plugins.DropOdd, from: src, batch_size: 10}\n",
    )
    pipeline = load_pipeline(path)
    run_pipeline(pipeline, run_dir=tmp_path / "run")
    step_dir = tmp_path / "run" / "steps" / "even"
    dropped = [r for f in sorted(step_dir.glob("*.dropped.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(dropped) == 20 and dropped[0]["reason"] == "odd id" and json.loads(dropped[0]["record"])["id"] == 1

    # Simulate a kill after two batches: the marker of the step is gone, batches 2-3 never finished.
    (step_dir / "COMPLETE").unlink()
    for index in (2, 3):
        (step_dir / f"batch-{index:06d}.done").unlink()
    first_marker = step_dir / "batch-000000.done"
    first_marker.write_text(first_marker.read_text().replace('"records_in"', '"records_in" ', 1))
    type(pipeline.steps["even"].step).stateful = True
    try:
        resumed = run_pipeline(pipeline, run_dir=tmp_path / "run")
    finally:
        type(pipeline.steps["even"].step).stateful = False
    assert resumed.stats["even"]["records_in"] == 40 and resumed.rows["even"] == 20
    assert sorted(int(p.name[6:12]) for p in step_dir.glob("batch-*.done")) == [0, 1, 2, 3]
    assert '"records_in" ' not in first_marker.read_text(), "a stateful step redoes its finished batches too"
