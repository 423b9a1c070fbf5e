"""Flat cost as data grows: a CPU-only pipeline through `rlaif run` at two sizes, one child process per run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/scale.py [--sizes 100000 1000000] [--repeat 3] [--work DIR]

The pipeline (written beside the data, run as ``rlaif run FILE --output-dir DIR --fresh``, the command people use):
load (JSONL) -> expression (``lang == 'en'``) -> length (5-60 words) -> dedup (exact + MinHash-LSH near) ->
decontaminate (13-grams against a 500-item benchmark) -> the saved Hub-layout dataset.

The records are generated once per size and seed, before any run (not timed): pseudo-words from a seeded numpy
generator, 20-40 words each; 8% exact duplicates (case and punctuation changed) and 4% near-duplicates (one word
replaced) of earlier records, 3% not English, 2% too short or too long, 1% holding a 13-word passage of a benchmark
item. The same shares at every size, so a record costs the same work wherever it sits.

Each run is a child process (the rlaif console script), so its peak RSS is its own: ``os.wait4`` returns the child's
``ru_maxrss`` (the data is generated in another child, so that this process stays small: Linux counts the parent's
peak at fork into the child's ``ru_maxrss``). Timed: the child's wall time, and the engine's time (the sum of the
steps' ``wall_s`` in the run's stats.json: reading, processing and writing every batch; not the interpreter start,
imports or the final save).
Sizes are interleaved in each of ``--repeat`` rounds, after one untimed warm-up at ``--warmup`` records. Printed:
per size the median [min-max] of engine records/s, run seconds and peak RSS, per step records/s, then the ratios
largest/smallest size (of medians, and per round) for records/s and peak RSS. Targets (issue 17): records/s at 1M >=
0.9x at 100k, peak RSS at 1M <= 1.2x at 100k.

``--dedup-memory N``: the dedup step alone on the first N generated records, under tracemalloc (numpy reports its
buffers to it): the bytes its state holds after the last batch, per record kept, and the peak.

The child runs with OMP_NUM_THREADS=1 (numpy's BLAS threads would fight over 2 cores); on a machine shared with
other jobs compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARES = {"exact": 0.08, "near": 0.04, "foreign": 0.03, "short": 0.01, "long": 0.01, "contaminated": 0.01}
BENCHMARK_ITEMS = 500
PIPELINE = """\
name: scale
steps:
  - {{name: load, type: load, path: {data}}}
  - {{name: english, type: expression, from: load, where: "lang == 'en'"}}
  - {{name: length, type: length, from: english, column: prompt, unit: words, min: 5, max: 60}}
  - {{name: dedup, type: dedup, from: length, column: prompt}}
  - {{name: decontaminate, type: decontaminate, from: dedup, column: prompt, benchmarks: [{benchmark}]}}
"""


# -- data ------------------------------------------------------------------------------------------------------
def vocabulary(rng: np.random.Generator, size: int = 20000) -> list[str]:
    syllables = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
    words = {"".join(rng.choice(syllables, size=int(rng.integers(2, 4)))) for _ in range(size * 2)}
    return sorted(words)[:size]


def make_data(work: Path, count: int, seed: int) -> tuple[Path, Path]:
    """The records file and the benchmark file for ``count`` records (written once, reused)."""
    data, benchmark = work / f"records-{count}-{seed}.jsonl", work / f"benchmark-{seed}.jsonl"
    if data.is_file() and benchmark.is_file():
        return data, benchmark
    rng = np.random.default_rng(seed)
    vocab = np.array(vocabulary(rng))
    items = [" ".join(vocab[rng.integers(0, len(vocab), 30)]) for _ in range(BENCHMARK_ITEMS)]
    tmp = benchmark.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps({"question": item}) + "\n" for item in items))
    tmp.replace(benchmark)

    kinds = np.searchsorted(np.cumsum(list(SHARES.values())), rng.random(count), side="right")
    lengths = rng.integers(20, 41, count)
    words = rng.integers(0, len(vocab), (count, 40))
    fresh = np.flatnonzero(kinds == len(SHARES))  # the records that are none of the special kinds
    picks, edits, items_at = rng.random(count), rng.integers(0, 20, count), rng.integers(0, BENCHMARK_ITEMS, count)
    names = list(SHARES)
    tmp = data.with_suffix(".tmp")
    with tmp.open("w") as out:
        for i in range(count):
            kind = names[kinds[i]] if kinds[i] < len(names) else "fresh"
            earlier = fresh[: np.searchsorted(fresh, i)]
            if kind in ("exact", "near") and len(earlier):
                ref = int(earlier[int(picks[i] * len(earlier))])
                base = list(vocab[words[ref, : lengths[ref]]])
                if kind == "exact":
                    text = " ".join(base).capitalize().replace(" ", ", ", 1) + "!"
                else:
                    base[edits[i]] = vocab[words[i, 0]]
                    text = " ".join(base)
            else:
                base = list(vocab[words[i, : lengths[i]]])
                if kind == "short":
                    base = base[:3]
                elif kind == "long":
                    base = base * 3
                elif kind == "contaminated":
                    base[5:5] = items[items_at[i]].split()[:13]
                text = " ".join(base)
            out.write(json.dumps({"id": i, "lang": "fr" if kind == "foreign" else "en", "prompt": text}) + "\n")
    tmp.replace(data)
    return data, benchmark


# -- runs ------------------------------------------------------------------------------------------------------
def rlaif_command() -> list[str]:
    script = Path(sys.executable).parent / "rlaif"
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from rlaif.cli import app; app()"]


def run_once(work: Path, count: int, seed: int) -> dict:
    """One `rlaif run` in a child process: wall seconds, the child's peak RSS, and the run's per-step stats."""
    data, benchmark = make_data(work, count, seed)
    pipeline = work / f"scale-{count}.yaml"
    pipeline.write_text(PIPELINE.format(data=data.name, benchmark=benchmark.name))
    out = work / f"run-{count}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [*rlaif_command(), "run", str(pipeline), "--output-dir", str(out), "--fresh", "--no-progress"]
    started = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=work)
    assert child.stdout is not None
    output = child.stdout.read()  # read before waiting: a full pipe would stall the child
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"rlaif run exited {child.returncode}:\n{output.decode(errors='replace')[-3000:]}")
    stats = json.loads((out / "stats.json").read_text())
    engine = sum(step["wall_s"] for step in stats.values())
    return {
        "records": count,
        "seconds": seconds,
        "engine_s": engine,
        "records_per_s": count / engine,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux: kilobytes
        "steps": {name: step["records_in"] / step["wall_s"] for name, step in stats.items() if step["wall_s"]},
        "kept": stats["decontaminate"]["records_out"],
        "dropped": {name: sum(step["dropped"].values()) for name, step in stats.items()},
    }


def spread(values: list[float], digits: int = 0) -> str:
    fmt = f"{{:,.{digits}f}}"
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def report(runs: dict[int, list[dict]]) -> None:
    sizes = sorted(runs)
    print("\nrecords | engine rec/s median [min-max] | run s | peak RSS MB | kept")
    for size in sizes:
        rows = runs[size]
        print(
            f"{size:>9,} | {spread([r['records_per_s'] for r in rows])} | {spread([r['seconds'] for r in rows], 1)}"
            f" | {spread([r['peak_rss_mb'] for r in rows])} | {rows[0]['kept']:,}"
        )
    print("\nper step records/s (median):")
    for name in runs[sizes[0]][0]["steps"]:
        cells = [f"{size:,}: {statistics.median(r['steps'][name] for r in runs[size]):,.0f}" for size in sizes]
        print(f"  {name:<14} " + "  ".join(cells))
    print("dropped per step at each size:", {size: runs[size][0]["dropped"] for size in sizes})
    small, large = sizes[0], sizes[-1]
    for key, label, target in (("records_per_s", "records/s", ">= 0.9"), ("peak_rss_mb", "peak RSS", "<= 1.2")):
        medians = statistics.median(r[key] for r in runs[large]) / statistics.median(r[key] for r in runs[small])
        paired = [b[key] / a[key] for a, b in zip(runs[small], runs[large], strict=True)]
        print(
            f"{label} {large:,} / {small:,}: {medians:.3f} (per round {', '.join(f'{p:.3f}' for p in paired)};"
            f" target {target})"
        )


# -- dedup memory ----------------------------------------------------------------------------------------------
def dedup_memory(work: Path, count: int, seed: int) -> None:
    """The dedup step's state per record kept, measured with tracemalloc on the first ``count`` records."""
    from rlaif.steps.base import StepContext
    from rlaif.steps.dedup import Dedup, DedupParams

    data, _ = make_data(work, count, seed)
    step = Dedup("dedup", DedupParams(column="prompt"), work)
    step.setup(StepContext())
    kept, batch = 0, []
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    with data.open() as lines:
        for line in lines:
            batch.append(json.loads(line))
            if len(batch) == 2000:
                kept += len(step.process(batch, StepContext()).records)
                batch = []
        if batch:
            kept += len(step.process(batch, StepContext()).records)
    del batch
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"dedup state after {count:,} records ({kept:,} kept): {(held - base) / 1e6:.1f} MB, "
        f"{(held - base) / kept:.0f} bytes per kept record; peak {(peak - base) / 1e6:.1f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/rlaif-bench-scale"))
    parser.add_argument("--dedup-memory", type=int, nargs="*", default=None, help="record counts (no runs)")
    parser.add_argument("--make-data", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.dedup_memory is not None:
        for count in args.dedup_memory:
            dedup_memory(args.work, count, args.seed)
        return
    if args.make_data is not None:
        make_data(args.work, args.make_data, args.seed)
        return
    for size in sorted({args.warmup, *args.sizes}):
        # In a child: Linux carries a process's peak RSS across fork and exec into its children, so this process
        # must stay small for the runs' ru_maxrss to be their own (generating 1M records here reported every later
        # run at this process's 388 MB peak).
        started = time.perf_counter()
        command = [sys.executable, __file__, "--make-data", str(size), "--seed", str(args.seed)]
        subprocess.run([*command, "--work", str(args.work)], check=True)
        print(f"data: {size:,} records ready ({time.perf_counter() - started:.1f} s)", flush=True)
    run_once(args.work, args.warmup, args.seed)
    runs: dict[int, list[dict]] = {size: [] for size in args.sizes}
    for round_ in range(args.repeat):
        order = args.sizes if round_ % 2 == 0 else args.sizes[::-1]
        for size in order:
            result = run_once(args.work, size, args.seed)
            runs[size].append(result)
            print(
                f"round {round_ + 1}: {size:>9,} records  {result['seconds']:6.1f} s  "
                f"{result['records_per_s']:9,.0f} rec/s  peak RSS {result['peak_rss_mb']:7.1f} MB",
                flush=True,
            )
    report(runs)


if __name__ == "__main__":
    main()
