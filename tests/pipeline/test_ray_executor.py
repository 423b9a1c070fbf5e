"""The Ray executor on a real local Ray cluster: the same dataset and accounting as the local executor, a worker
killed mid-run (Ray reruns its batch; without retries a re-run resumes), the real vLLM engine inside an engine actor,
and the bad inputs (unknown executor, replicas 0, a cluster that cannot be reached, an object-store run dir)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from rlaif.cli import app
from rlaif.config import ConfigError
from rlaif.pipeline.executor import BatchLost, ExecutorSpec
from rlaif.pipeline.run import run_pipeline
from rlaif.pipeline.spec import load_pipeline

TESTS_DIR = Path(__file__).parents[1]
RAY = ExecutorSpec(type="ray", workers=2, replicas=2, max_retries=3)

# Every kind of step: a source and dedup (stateful) in the driver, plugin filters as Ray tasks, a generation step on
# two engine actors (the judge plugin answers "A" to a plain prompt), a length filter as tasks after it; a side
# branch records which process ran its batches (pid).
MIXED = """\
name: mixed
models:
  echo: {backend: plugins.AlphabeticalJudge, model: builtin:smollm2-135m-instruct}
steps:
  - {name: src, type: load, path: data.jsonl, batch_size: 8}
  - {name: upper, type: plugins.Upper, from: src, batch_size: 8}
  - {name: flaky, type: plugins.Flaky, from: upper, batch_size: 8}
  - {name: odd, type: plugins.DropOdd, from: flaky, batch_size: 8}
  - {name: where, type: plugins.Slow, from: odd, seconds: 0, batch_size: 4}
  - {name: gen, type: generate_responses, from: odd, model: echo, prompt_column: text, n: 2, batch_size: 4}
  - {name: dedup, type: dedup, from: gen, column: upper, batch_size: 5}
  - {name: short, type: length, from: dedup, column: text, unit: chars, max: 8, batch_size: 3}
"""


def write(tmp_path: Path, text: str, records: int = 48) -> Path:
    with (tmp_path / "data.jsonl").open("w") as handle:
        for i in range(records):
            text_i = f"record {i % 30}" + (
                " boom" if i == 12 else ""
            )  # repeats for dedup; one record Flaky quarantines
            handle.write(json.dumps({"id": i, "text": text_i}) + "\n")
    path = tmp_path / "pipe.yaml"
    path.write_text(text)
    return path


def rows(dataset: Path) -> list[dict]:
    return [r for f in sorted((dataset / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def accounted(stats: dict) -> bool:
    """in = out (inputs that gave output) + dropped + quarantined."""
    return stats["records_in"] == stats["inputs_emitted"] + sum(stats["dropped"].values()) + sum(
        stats["quarantined"].values()
    )


@pytest.fixture(scope="module")
def cluster():
    """A real local Ray cluster, 2 CPUs, a small object store; its workers import the test plugins."""
    import ray

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), old) if p)  # workers inherit it
    ray.init(
        num_cpus=2,
        object_store_memory=200 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


@pytest.mark.slow
def test_ray_gives_the_local_dataset_row_for_row_and_the_same_accounting(cluster, tmp_path):
    path = write(tmp_path, MIXED)
    local = run_pipeline(load_pipeline(path), run_dir=tmp_path / "local")
    # The run directory as an fsspec file:// URL: the same local files.
    remote = run_pipeline(load_pipeline(path), run_dir=Path(f"file://{tmp_path}/ray"), executor=RAY)
    assert remote.run_dir == tmp_path / "ray" and (tmp_path / "ray" / "steps" / "gen" / "COMPLETE").is_file()
    assert local.outcome.status == remote.outcome.status
    expected, got = rows(local.datasets["short"]), rows(remote.datasets["short"])
    assert got == expected and 0 < len(got) < 48
    keys = ("records_in", "records_out", "inputs_emitted", "dropped", "quarantined", "tokens_in", "tokens_out")
    for name, stats in local.stats.items():
        assert {k: remote.stats[name][k] for k in keys} == {k: stats[k] for k in keys}, name
        assert accounted(remote.stats[name]), name
    assert remote.stats["flaky"]["quarantined"] == {"step raised RuntimeError": 1}
    assert remote.stats["dedup"]["dropped"] and remote.stats["gen"]["records_out"] == 24 - 1
    # The same shard + marker layout: one marker per batch, the same batch numbers.
    for name in local.stats:
        mine = sorted(p.name for p in (tmp_path / "local" / "steps" / name).glob("batch-*.done"))
        assert sorted(p.name for p in (tmp_path / "ray" / "steps" / name).glob("batch-*.done")) == mine
    # The plugin filter's batches ran in Ray worker processes, not in this one.
    pids = {r["pid"] for r in pq.read_table(tmp_path / "ray" / "steps" / "where" / "batch-000000.parquet").to_pylist()}
    assert pids and os.getpid() not in pids
    # The cache is the executor's neither: the local executor reuses every step the Ray run made.
    again = run_pipeline(load_pipeline(path), run_dir=tmp_path / "ray")
    assert all(s.get("cached") for s in again.stats.values())


DEDUP = """\
name: dedup
steps:
  - {name: src, type: load, path: data.jsonl, batch_size: 16}
  - {name: dedup, type: dedup, from: src, column: text, id_column: id, threshold: 0.5, batch_size: 16}
"""


@pytest.mark.slow
def test_dedup_prepares_its_batches_on_workers_and_decides_in_order(cluster, tmp_path, monkeypatch):
    """Dedup's hashing and MinHash run as Ray tasks, batches ahead; its index, in the driver, decides them in order;
    tasks write the outcome: the same kept records, the same duplicates pointing at the same kept ids, the same
    quarantine as locally. The JSONL source's lines are parsed in tasks too, a bad line quarantined with its place."""
    import random

    from rlaif.steps import dedup
    from rlaif.steps.dedup import Dedup
    from rlaif.steps.sources import Load

    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(400)]
    texts: list[str | None] = []
    for i in range(120):
        if i % 7 == 3 and texts:
            texts.append((rng.choice([t for t in texts if t]) or "").upper() + "!")  # an exact copy
        elif i % 7 == 5 and texts:
            words = (rng.choice([t for t in texts if t]) or "").split()
            words[rng.randrange(len(words))] = "changed"
            texts.append(" ".join(words))  # a near copy
        else:
            texts.append(None if i == 50 else " ".join(rng.choices(vocab, k=30)))
    lines = [json.dumps({"id": f"r{i}", "text": text}) + "\n" for i, text in enumerate(texts)]
    lines.insert(40, "{not json\n")  # line 41: the source quarantines it, wherever it parses
    (tmp_path / "data.jsonl").write_text("".join(lines))
    path = tmp_path / "pipe.yaml"
    path.write_text(DEDUP)
    sized: list[int | None] = []  # the keys each index of the deciding process is sized for

    class SizedIndex(dedup.KeyIndex):
        def __init__(self, *args, expected_keys: int | None = None, **kwargs) -> None:
            sized.append(expected_keys)
            super().__init__(*args, expected_keys=expected_keys, **kwargs)

    monkeypatch.setattr(dedup, "KeyIndex", SizedIndex)
    local = run_pipeline(load_pipeline(path), run_dir=tmp_path / "local")
    # The runner tells the step how many records it reads (the source's 120 good lines): the exact index is sized
    # for them, the near index for their band keys.
    bands = dedup.optimal_bands(0.5, 128)[0]
    assert sorted(sized) == [120, 120 * bands]
    sized.clear()

    def not_here(self, *batch):
        raise AssertionError(f"{type(self).__name__} prepared or finished a batch in the driver")

    # This process only: Ray's workers run the real ones (the source's lines are parsed there too).
    monkeypatch.setattr(Dedup, "prepare", not_here)
    monkeypatch.setattr(Dedup, "finish", not_here)
    monkeypatch.setattr(Load, "prepare", not_here)
    remote = run_pipeline(load_pipeline(path), run_dir=tmp_path / "ray", executor=RAY)
    assert sorted(sized) == [120, 120 * bands]  # decided in the driver, with the same count
    assert remote.stats["src"]["quarantined"] == local.stats["src"]["quarantined"] == {"invalid JSON": 1}
    assert remote.stats["src"]["records_out"] == 120
    assert rows(remote.datasets["dedup"]) == rows(local.datasets["dedup"])
    mine, theirs = local.stats["dedup"], remote.stats["dedup"]
    assert {k: theirs[k] for k in ("records_out", "dropped", "quarantined")} == {
        k: mine[k] for k in ("records_out", "dropped", "quarantined")
    }
    assert set(mine["dropped"]) == {"duplicate (exact)", "near-duplicate"} and mine["quarantined"] == {"not text": 1}

    def dropped(run: str) -> list[dict]:
        shards = sorted((tmp_path / run / "steps" / "dedup").glob("*.dropped.parquet"))
        return [json.loads(r["record"]) for f in shards for r in pq.read_table(f).to_pylist()]

    assert dropped("ray") == dropped("local") and all(d["_duplicate_of"].startswith("r") for d in dropped("ray"))


SLOW = """\
name: slow
steps:
  - {name: src, type: load, path: data.jsonl, batch_size: 4}
  - {name: slow, type: plugins.Slow, from: src, seconds: 0.6, batch_size: 4}
"""


def _kill_a_task_worker(killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first Ray worker seen running a batch of a task (its process title is ray::_task)."""
    import psutil

    while not stop.is_set() and not killed:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or ())
            if cmdline.startswith("ray::") and "_task" in cmdline and proc.info["pid"] != os.getpid():
                time.sleep(0.2)  # mid-batch: the step sleeps 0.6 s per batch
                os.kill(proc.info["pid"], signal.SIGKILL)
                killed.append(proc.info["pid"])
                return
        time.sleep(0.05)


def _run_with_a_kill(path: Path, run_dir: Path, spec: ExecutorSpec) -> tuple[list[int], object]:
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_a_task_worker, args=(killed, stop))
    killer.start()
    try:
        return killed, run_pipeline(load_pipeline(path), run_dir=run_dir, executor=spec)
    except BatchLost as exc:
        return killed, exc
    finally:
        stop.set()
        killer.join()


@pytest.mark.slow
def test_a_killed_worker_costs_only_its_batch(cluster, tmp_path):
    path = write(tmp_path, SLOW, records=24)
    # Ray reruns the killed worker's batch: the dataset is whole, nothing twice, accounting holds.
    killed, summary = _run_with_a_kill(path, tmp_path / "retried", RAY)
    assert killed and not isinstance(summary, Exception)
    ids = [r["id"] for r in rows(summary.datasets["slow"])]
    assert ids == list(range(24))
    stats = summary.stats["slow"]
    assert stats["records_in"] == stats["records_out"] == 24 and accounted(stats)
    assert len(list((tmp_path / "retried" / "steps" / "slow").glob("batch-*.done"))) == 6

    # Without retries the run stops with a named error; the finished batches stay, and a re-run redoes only the
    # batches that have no marker.
    killed, lost = _run_with_a_kill(path, tmp_path / "resumed", ExecutorSpec(type="ray", workers=2, max_retries=0))
    assert killed and isinstance(lost, BatchLost) and "run again to resume" in str(lost)
    step_dir = tmp_path / "resumed" / "steps" / "slow"
    kept = {p.name: p.read_text() for p in step_dir.glob("batch-*.done")}
    assert len(kept) < 6
    resumed = run_pipeline(load_pipeline(path), run_dir=tmp_path / "resumed", executor=RAY)
    assert [r["id"] for r in rows(resumed.datasets["slow"])] == list(range(24))
    assert all((step_dir / name).read_text() == text for name, text in kept.items())  # not redone
    assert resumed.stats["slow"]["records_out"] == 24 and accounted(resumed.stats["slow"])


ECHO = """\
name: echo
models:
  echo: {backend: plugins.SlowEcho, model: builtin:smollm2-135m-instruct, seconds: 0.6}
steps:
  - {name: src, type: load, path: data.jsonl, batch_size: 4}
  - {name: gen, type: generate_responses, from: src, model: echo, prompt_column: text, n: 1, batch_size: 4}
"""


@pytest.mark.slow
def test_a_killed_engine_actor_is_restarted_and_its_batch_rerun(cluster, tmp_path):
    import psutil

    path = write(tmp_path, ECHO, records=16)
    killed: list[int] = []

    def kill_the_actor() -> None:
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                if " ".join(proc.info["cmdline"] or ()).startswith("ray::_EngineWorker.run"):
                    time.sleep(0.2)  # mid-batch: a generate call takes 0.6 s
                    os.kill(proc.info["pid"], signal.SIGKILL)
                    killed.append(proc.info["pid"])
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_actor)
    killer.start()
    try:
        spec = ExecutorSpec(type="ray", replicas=1, max_retries=3)
        summary = run_pipeline(load_pipeline(path), run_dir=tmp_path / "run", executor=spec)
    finally:
        killer.join()
    assert killed
    got = rows(summary.datasets["gen"])
    assert [r["id"] for r in got] == list(range(16))  # every record once, in order
    assert all(r["responses"] == [f"echo: {r['text']}"] for r in got)
    stats = summary.stats["gen"]
    assert stats["records_in"] == stats["records_out"] == 16 and accounted(stats)


GENERATE = """\
name: actor
models:
  policy:
    backend: vllm
    model: builtin:smollm2-135m-instruct
    max_model_len: 1024
    kv_cache_gib: 1
    temperature: 0.0
    max_tokens: 8
steps:
  - name: prompts
    type: inline
    records:
      - {prompt: "Name a colour."}
      - {prompt: "Say hello."}
      - {prompt: "Count to three."}
  - {name: gen, type: generate_responses, from: prompts, model: policy, n: 1}
"""


@pytest.mark.model
@pytest.mark.slow
def test_the_real_vllm_engine_runs_in_an_engine_actor(cluster, tmp_path, monkeypatch):
    from rlaif.backends import vllm_backend

    def not_here(*args, **kwargs):
        raise AssertionError("the engine must start in the actor, not in the driver")

    path = tmp_path / "gen.yaml"
    path.write_text(GENERATE)
    pipeline = load_pipeline(path)
    monkeypatch.setattr(vllm_backend.VllmBackend, "__init__", not_here)  # this process only: the actor is another
    summary = run_pipeline(pipeline, run_dir=tmp_path / "run", executor=ExecutorSpec(type="ray"))
    stats = summary.stats["gen"]
    assert stats["records_out"] == 3 and not stats["quarantined"] and stats["tokens_out"] > 0
    responses = [r["responses"][0] for r in rows(summary.datasets["gen"])]
    assert len(responses) == 3 and all(text.strip() for text in responses)


# -- bad input --------------------------------------------------------------------------------------------------
BASE = "name: t\nsteps:\n  - {name: src, type: inline, records: [{text: a}]}\n"


@pytest.mark.parametrize(
    ("executor", "message"),
    [
        ("executor: rey\n", r"pipe\.yaml:4: unknown executor 'rey' \(did you mean 'ray'\?\)"),
        ("executor: {type: ray, replicas: 0}\n", r"pipe\.yaml:4: executor\.replicas must be an integer >= 1"),
        ("executor: {type: ray, address: 'http://x'}\n", r"executor\.address must be auto, ray://HOST:PORT"),
        ("executor: {type: ray, worker: 2}\n", r"unknown executor key 'worker' \(did you mean 'workers'\?\)"),
        ("executor: {type: local, replicas: 2}\n", r"apply to type: ray only"),
    ],
)
def test_a_bad_executor_is_named_with_its_line(tmp_path, executor, message):
    path = tmp_path / "pipe.yaml"
    path.write_text(BASE + executor)
    with pytest.raises(ConfigError, match=message):
        load_pipeline(path)


def test_the_command_line_refuses_a_bad_executor_choice_before_running(tmp_path, monkeypatch):
    path = tmp_path / "pipe.yaml"
    path.write_text(BASE)
    runner = CliRunner()
    out = str(tmp_path / "out")
    unknown = runner.invoke(app, ["run", str(path), "--executor", "rey", "--output-dir", out])
    assert unknown.exit_code == 2 and "unknown executor 'rey' (did you mean 'ray'?)" in unknown.output
    both = runner.invoke(app, ["run", str(path), "--executor", "local", "--address", "auto", "--output-dir", out])
    assert both.exit_code == 2 and "use it with --executor ray" in both.output
    bucket = runner.invoke(app, ["run", str(path), "--output-dir", "s3://bucket/run"])
    assert bucket.exit_code == 2 and "s3:// is not supported" in bucket.output
    # Nothing listens on port 9: a named error in seconds, before any step ran.
    started = time.monotonic()
    down = runner.invoke(app, ["run", str(path), "--address", "ray://127.0.0.1:9", "--output-dir", out])
    assert down.exit_code == 2 and "cannot reach the Ray cluster at 'ray://127.0.0.1:9'" in down.output
    assert time.monotonic() - started < 30 and not (tmp_path / "out" / "steps").exists()
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed: `import ray` fails
    missing = runner.invoke(app, ["run", str(path), "--executor", "ray", "--output-dir", out])
    assert missing.exit_code == 2 and "needs the ray package" in missing.output
