"""Engine throughput: a trivial 3-step DAG (source -> map -> filter -> saved dataset), rlaif against distilabel.

    .venv/bin/python bench/engine.py [--sizes 50000 100000 200000] [--repeat 3] [--skip-distilabel]

1. rlaif: ``engine_steps.Numbers`` (N records) -> ``engine_steps.TextLength`` (adds ``length``) ->
   ``engine_steps.DropTenth`` (drops ids divisible by 10, with a reason) -> ``output:`` (Hub-layout Parquet), loaded
   with ``load_pipeline`` and run with ``run_pipeline``, the path of ``rlaif run``; end to end, save included.
2. distilabel 1.5.3, if importable: the same records from a generator step, a ``@step`` map and a ``@step`` filter,
   ``pipeline.run(use_cache=False)``, rows counted from the returned Distiset.
3. rlaif again, unchanged, on a completed run directory: every step comes from the cache.

Fairness: both sides run the same record counts (``--sizes``), each after one untimed warm-up run of its own at
``--warmup`` records (lazy imports, first file-system touches, distilabel's first worker start), then ``--repeat``
rounds in which every side runs every size, the side order alternating between rounds, each run in fresh
directories. Reported: median and min-max seconds and records/s per side and size, the ratio of medians at each
size with the per-round (paired) ratio's spread, and a least-squares fit seconds = a + b * N per side, so a fixed
per-run cost (distilabel starts worker processes on every run) is told apart from the per-record cost.

Targets (from the issue): rlaif >= 100k records/s and >= 10x distilabel, both at the largest size.
"""

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # plugin steps by dotted path: engine_steps.Numbers
os.environ.setdefault("DISTILABEL_LOG_LEVEL", "ERROR")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from engine_steps import make_record  # noqa: E402

from rlaif.pipeline.run import RunSummary, run_pipeline  # noqa: E402
from rlaif.pipeline.spec import load_pipeline  # noqa: E402

warnings.filterwarnings("ignore", module="pydantic")  # distilabel's models trip pydantic's Field() warnings
try:  # distilabel steps live at module level: its worker processes unpickle them by name
    from distilabel.mixins.runtime_parameters import RuntimeParameter
    from distilabel.pipeline import Pipeline as DistilabelPipeline
    from distilabel.steps import GeneratorStep, StepInput, step
except ImportError:
    step = None

BATCH = 1000
PIPELINE = """\
name: engine-bench
steps:
  - name: numbers
    type: engine_steps.Numbers
    count: {count}
  - name: length
    type: engine_steps.TextLength
    from: numbers
  - name: keep
    type: engine_steps.DropTenth
    from: length
"""

if step is not None:

    class DistilabelNumbers(GeneratorStep):  # a class: the DAG check wants `offset` in process's signature
        count: RuntimeParameter[int] = 1000

        @property
        def outputs(self) -> list[str]:
            return ["id", "text"]

        def process(self, offset: int = 0):
            for start in range(offset, self.count, self.batch_size):
                stop = min(start + self.batch_size, self.count)
                yield [make_record(i) for i in range(start, stop)], stop >= self.count

    @step(inputs=["text"], outputs=["length"])
    def DistilabelTextLength(inputs: StepInput):
        yield [{**r, "length": len(r["text"])} for r in inputs]

    @step(inputs=["id"])
    def DistilabelDropTenth(inputs: StepInput):
        yield [r for r in inputs if r["id"] % 10 != 0]


def kept(count: int) -> int:
    return count - (count + 9) // 10  # ids 0..count-1, minus those divisible by 10


def run_rlaif(count: int, work: Path, run_dir: Path) -> tuple[float, RunSummary]:
    spec = work / f"engine-{count}.yaml"
    spec.write_text(PIPELINE.format(count=count))
    start = time.perf_counter()
    summary = run_pipeline(load_pipeline(spec), run_dir=run_dir)
    return time.perf_counter() - start, summary


def run_distilabel(count: int, cache_dir: Path) -> tuple[float, int]:
    import datasets.config

    datasets.config.HF_DATASETS_CACHE = cache_dir / "hf-datasets"  # the Distiset's Arrow copy: not in ~/.cache
    start = time.perf_counter()
    with DistilabelPipeline(name="engine-bench", cache_dir=cache_dir) as pipeline:
        numbers = DistilabelNumbers(name="numbers", count=count, batch_size=BATCH)
        length = DistilabelTextLength(name="length", input_batch_size=BATCH)
        keep = DistilabelDropTenth(name="keep", input_batch_size=BATCH)
        numbers >> length >> keep
    distiset = pipeline.run(use_cache=False)
    rows = sum(split.num_rows for config in distiset.values() for split in config.values())
    return time.perf_counter() - start, rows


def saved_rows(summary: RunSummary) -> int:
    files = [f for d in summary.datasets.values() for f in d.glob("data/*.parquet")]
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def check_run(summary: RunSummary, count: int, cached: bool) -> list[str]:
    """Problems with the saved rows and the per-step accounting (empty when all is right)."""
    want = kept(count)
    numbers, length, keep = (summary.stats[n] for n in ("numbers", "length", "keep"))
    checks = {
        f"saved rows {saved_rows(summary)} == {want}": saved_rows(summary) == want == summary.rows.get("keep"),
        "numbers: out == N": numbers["records_out"] == count,
        "length: in == out == N": length["records_in"] == length["records_out"] == count,
        "keep: in == N, out == 0.9 N": keep["records_in"] == count and keep["records_out"] == want,
        "keep: dropped == 0.1 N with the reason": keep["dropped"] == {"id divisible by 10": count - want},
        f"every step {'' if cached else 'not '}from cache": all(
            bool(s.get("cached")) == cached for s in summary.stats.values()
        ),
    }
    return [label for label, ok in checks.items() if not ok]


def print_steps(summary: RunSummary) -> None:
    print(f"    {'step':<9}{'in':>9}{'out':>9}{'dropped':>9}{'wall s':>9}{'rec/s':>12}  cached")
    for s in summary.stats.values():
        rate = f"{s['records_per_s']:,.0f}" if s.get("records_per_s") else "-"
        print(
            f"    {s['name']:<9}{s['records_in']:>9}{s['records_out']:>9}{sum(s['dropped'].values()):>9}"
            f"{s['wall_s']:>9.3f}{rate:>12}  {bool(s.get('cached'))}"
        )


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], fmt: str = ",.0f") -> str:
    return f"{median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares time = a + b * N over (N, seconds) points: (a seconds, b seconds per record)."""
    b, a = np.polyfit([n for n, _ in points], [s for _, s in points], 1)
    return float(a), float(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[50_000, 100_000, 200_000],
        help="record counts, each run by both sides; the last is the headline size",
    )
    parser.add_argument("--repeat", type=int, default=3, help="interleaved timed runs per side and size")
    parser.add_argument("--warmup", type=int, default=2000, help="records of the untimed warm-up run of each side")
    parser.add_argument("--skip-distilabel", action="store_true")
    args = parser.parse_args()
    sides = ["rlaif"] + ([] if step is None or args.skip_distilabel else ["distilabel"])
    print(
        f"engine bench: sizes {args.sizes}, {args.repeat} interleaved repeats, sides {sides}, {os.cpu_count()} CPUs,"
        f" load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    if step is None and not args.skip_distilabel:
        print("  distilabel: not importable, skipped (install the bench extra)")
    times: dict[tuple[str, int], list[float]] = {(side, n): [] for side in sides for n in args.sizes}
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rlaif-engine-bench-") as tmp:
        work = Path(tmp)
        runs = itertools.count()

        def run(side: str, n: int) -> float:
            """One run of ``side`` on ``n`` records in fresh directories (no cache), checked; its seconds."""
            k = next(runs)
            if side == "rlaif":
                seconds, summary = run_rlaif(n, work, work / f"run-{k}")
                problems.extend(f"rlaif {n}: {p}" for p in check_run(summary, n, cached=False))
                return seconds
            seconds, rows = run_distilabel(n, work / f"distilabel-{k}")
            if rows != kept(n):
                problems.append(f"distilabel {n}: {rows} rows, expected {kept(n)}")
            return seconds

        # The same warm-up rule for both sides: one untimed small run each pays the one-time costs of the process
        # (lazy imports, first file-system touches, distilabel's first worker start).
        for side in sides:
            print(f"  warm-up {side} ({args.warmup} records, untimed): {run(side, args.warmup):.2f} s", flush=True)
        # Interleaved: within each round every side runs every size, the side order alternating between rounds, so
        # load from other processes on a shared machine falls on both sides alike.
        for r in range(args.repeat):
            for n in args.sizes:
                for side in sides if r % 2 == 0 else sides[::-1]:
                    seconds = run(side, n)
                    times[side, n].append(seconds)
                    print(
                        f"  round {r + 1}: {side:<10} {n:>8} records {seconds:7.2f} s {n / seconds:>10,.0f} rec/s"
                        f"  (load {os.getloadavg()[0]:.1f})",
                        flush=True,
                    )

        n = args.sizes[-1]
        run_rlaif(n, work, work / "run-cached")  # a completed run directory, then the same run unchanged on it
        again_s, again = run_rlaif(n, work, work / "run-cached")
        problems += [f"rlaif re-run: {p}" for p in check_run(again, n, cached=True)]
        print("  rlaif unchanged re-run (every step from the cache):")
        print_steps(again)
    report(times, sides, args.sizes, again_s)
    for problem in problems:
        print(f"CHECK FAILED: {problem}")
    sys.exit(1 if problems else 0)


def report(times: dict[tuple[str, int], list[float]], sides: list[str], sizes: list[int], cached_s: float) -> None:
    print(f"\n{'side':<12}{'records':>9}{'runs':>6}   {'seconds median [min-max]':<26}records/s median [min-max]")
    for side in sides:
        for n in sizes:
            s = times[side, n]
            rates = [n / t for t in s]
            print(f"{side:<12}{n:>9}{len(s):>6}   {spread(s, '.2f'):<26}{spread(rates):<30}")
    n = sizes[-1]
    rlaif_rate = n / median(times["rlaif", n])
    print(
        f"\ntarget rlaif >= 100,000 records/s at {n:,}: {rlaif_rate:,.0f} (median) -> "
        f"{'met' if rlaif_rate >= 100_000 else 'NOT met'}"
    )
    cached_share = 100 * cached_s / median(times["rlaif", n])
    print(f"unchanged re-run (cache) at {n:,}: {cached_s:.3f} s = {cached_share:.1f}% of a first run's median")
    if "distilabel" not in sides:
        return
    print("\nratio rlaif / distilabel at equal N (records/s; paired by round, both sides warm):")
    for size in sizes:
        paired = [d / r for r, d in zip(times["rlaif", size], times["distilabel", size], strict=True)]
        of_medians = median(times["distilabel", size]) / median(times["rlaif", size])
        print(f"  {size:>8} records: {of_medians:5.1f}x (ratio of medians); per round {spread(paired, '.1f')}")
    if len(sizes) >= 2:
        print("fit seconds = a + b * N over all timed runs (a: fixed cost per run, 1/b: marginal records/s):")
        fits = {side: fit([(size, t) for size in sizes for t in times[side, size]]) for side in sides}
        for side, (a, b) in fits.items():
            print(f"  {side:<12} a = {a:6.2f} s   1/b = {1 / b:>10,.0f} records/s")
        print(f"  marginal ratio b_distilabel / b_rlaif: {fits['distilabel'][1] / fits['rlaif'][1]:.1f}x")
    paired = [d / r for r, d in zip(times["rlaif", n], times["distilabel", n], strict=True)]
    times_faster = median(times["distilabel", n]) / median(times["rlaif", n])
    print(
        f"target rlaif >= 10x distilabel at {n:,} records: {times_faster:.1f}x "
        f"(per round {min(paired):.1f}-{max(paired):.1f}x) -> {'met' if times_faster >= 10 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
