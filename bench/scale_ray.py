"""The Ray executor against the local one on a CPU-only pipeline, in one process.

    .venv/bin/python bench/scale_ray.py [--records 100000] [--repeat 3] [--cpus 2] [--near/--no-near]

The pipeline: load -> expression -> length -> dedup -> decontaminate, on ``--records`` generated records (prompts of
20-60 Zipf-distributed words, 10% planted repeats) against a 500-item benchmark file with 1% of the prompts
contaminated. Three runs, each on a fresh run directory, interleaved within each of ``--repeat`` rounds (order
reversed every other round) so that load from other processes hits them alike:

- local: the local executor (every batch in this process);
- ray x2: the Ray executor with 2 workers (at most 2 Ray tasks running at once, ``workers: 2``);
- ray x1: the Ray executor with 1 worker (``workers: 1``).

The Ray cluster is local (``ray.init(num_cpus=--cpus)``), started once before timing; one untimed warm-up run of each
Ray setting first (its worker processes import rlaif once). Under Ray, load reads lines in the driver and Ray tasks
parse them; dedup (stateful) prepares and finishes its batches as Ray tasks and applies its index in the driver, in
batch order; expression, length and decontaminate run as Ray tasks. Printed: records/s per run (median, min-max over
rounds) and the per-round ratios ray/local (median, min-max, then each round's). The three datasets are checked equal
row for row.
On a shared machine compare ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlaif.pipeline.executor import ExecutorSpec  # noqa: E402
from rlaif.pipeline.run import run_pipeline  # noqa: E402
from rlaif.pipeline.spec import load_pipeline  # noqa: E402

PIPELINE = """\
name: scale-ray
steps:
  - {{name: src, type: load, path: data.jsonl, batch_size: {batch}}}
  - {{name: where, type: expression, from: src, where: "len(prompt) > 40", batch_size: {batch}}}
  - {{name: length, type: length, from: where, column: prompt, unit: words, min: 22, max: 58, batch_size: {batch}}}
  - {{name: dedup, type: dedup, from: length, column: prompt, near: {near}, batch_size: {batch}}}
  - {{name: clean, type: decontaminate, from: dedup, column: prompt, benchmarks: [bench.jsonl], batch_size: {batch}}}
"""


def write_data(folder: Path, count: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(8000)]
    weights = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(vocab))))
    items = [" ".join(rng.choices(vocab, cum_weights=weights, k=rng.randint(15, 30))) for _ in range(500)]
    (folder / "bench.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in items))
    prompts: list[str] = []
    with (folder / "data.jsonl").open("w") as handle:
        for i in range(count):
            roll = rng.random()
            if prompts and roll < 0.1:
                text = rng.choice(prompts)  # an exact repeat
            elif roll < 0.11:
                text = rng.choice(items) + " " + " ".join(rng.choices(vocab, k=10))  # contaminated
            else:
                text = " ".join(rng.choices(vocab, cum_weights=weights, k=rng.randint(20, 60)))
            if len(prompts) < 5000:
                prompts.append(text)
            handle.write(json.dumps({"id": i, "prompt": text}) + "\n")


def rows(dataset: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return [r for f in sorted((dataset / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--batch", type=int, default=5000, help="batch size of every step")
    parser.add_argument("--near", action=argparse.BooleanOptionalAction, default=True, help="near-duplicate dedup")
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    runs = {
        "local": None,
        "ray x2": ExecutorSpec(type="ray", workers=2),
        "ray x1": ExecutorSpec(type="ray", workers=1),
    }
    with tempfile.TemporaryDirectory(prefix="rlaif-scale-ray-") as tmp:
        folder = Path(tmp)
        write_data(folder, args.records)
        path = folder / "pipe.yaml"
        path.write_text(PIPELINE.format(batch=args.batch, near=str(args.near).lower()))
        pipeline = load_pipeline(path)

        def once(label: str) -> tuple[float, list[dict]]:
            run_dir = folder / "runs" / label.replace(" ", "")
            shutil.rmtree(run_dir, ignore_errors=True)
            started = time.perf_counter()
            summary = run_pipeline(pipeline, run_dir=run_dir, executor=runs[label])
            seconds = time.perf_counter() - started
            return seconds, rows(summary.datasets["clean"])

        for label in ("ray x2", "ray x1"):
            once(label)  # warm-up: Ray's worker processes import rlaif once
        seconds: dict[str, list[float]] = {label: [] for label in runs}
        datasets: dict[str, list[dict]] = {}
        for r in range(args.repeat):
            for label in runs if r % 2 == 0 else reversed(runs):
                took, data = once(label)
                seconds[label].append(took)
                assert datasets.setdefault(label, data) == data, f"{label}: a different dataset in round {r + 1}"
        kept = len(datasets["local"])
        for label in runs:
            assert datasets[label] == datasets["local"], f"{label}: not the local executor's dataset"
    ray.shutdown()

    print(
        f"scale_ray: {args.records} records -> {kept} kept; batch {args.batch}; near dedup {args.near}; "
        f"local Ray cluster of {args.cpus} CPUs; {args.repeat} rounds; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    print(f"{'run':<8} {'records/s median':>17} {'min-max':>19} {'ratio to local (median, min-max)':>36}")
    for label, times in seconds.items():
        rates = [args.records / s for s in times]
        ratios = [local / s for local, s in zip(seconds["local"], times, strict=True)]
        spread = f"{min(rates):,.0f}-{max(rates):,.0f}"
        ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        print(f"{label:<8} {statistics.median(rates):>17,.0f} {spread:>19} {ratio:>36}")
    for label in ("ray x2", "ray x1"):
        ratios = [local / s for local, s in zip(seconds["local"], seconds[label], strict=True)]
        print(f"{label} / local per round: {', '.join(f'{r:.3f}' for r in ratios)}")


if __name__ == "__main__":
    main()
