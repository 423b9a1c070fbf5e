"""Engine throughput: a trivial 3-step DAG (source -> map -> filter -> saved dataset), rlaif against distilabel.

    .venv/bin/python bench/engine.py [--records 200000] [--distilabel-records 50000] [--skip-distilabel]

1. rlaif: ``engine_steps.Numbers`` (N records) -> ``engine_steps.TextLength`` (adds ``length``) ->
   ``engine_steps.DropTenth`` (drops ids divisible by 10, with a reason) -> ``output:`` (Hub-layout Parquet), loaded
   with ``load_pipeline`` and run with ``run_pipeline``, the path of ``rlaif run``; end to end, save included.
2. distilabel 1.5.3, if importable: the same records from a generator step, a ``@step`` map and a ``@step`` filter,
   ``pipeline.run(use_cache=False)``, rows counted from the returned Distiset.
3. rlaif again, unchanged, on the same run directory: every step comes from the cache.

Targets (from the issue): rlaif >= 100k records/s and >= 10x distilabel. A small untimed rlaif run first pays the
one-time costs (lazy imports, first file-system touches), so the timed runs measure the engine, not the warm-up.
"""

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # plugin steps by dotted path: engine_steps.Numbers
os.environ.setdefault("DISTILABEL_LOG_LEVEL", "ERROR")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

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
        print(f"    {s['name']:<9}{s['records_in']:>9}{s['records_out']:>9}{sum(s['dropped'].values()):>9}"
              f"{s['wall_s']:>9.3f}{rate:>12}  {bool(s.get('cached'))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--distilabel-records", type=int, default=50_000)
    parser.add_argument("--skip-distilabel", action="store_true")
    args = parser.parse_args()
    n = args.records
    print(f"engine bench: {n} records, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    rows: list[tuple[str, int, float]] = []
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rlaif-engine-bench-") as tmp:
        work = Path(tmp)
        warm_s, _ = run_rlaif(2000, work, work / "warmup")
        print(f"  warm-up (2000 records, untimed): {warm_s:.2f} s")

        first_s, first = run_rlaif(n, work, work / "run")
        print(f"  rlaif: {n} records in {first_s:.2f} s ({n / first_s:,.0f} records/s), {saved_rows(first)} saved")
        print_steps(first)
        problems += [f"rlaif: {p}" for p in check_run(first, n, cached=False)]
        rows.append(("rlaif", n, first_s))

        again_s, again = run_rlaif(n, work, work / "run")
        print(f"  rlaif re-run (cached): {again_s:.2f} s = {100 * again_s / first_s:.1f}% of the first run")
        print_steps(again)
        problems += [f"rlaif re-run: {p}" for p in check_run(again, n, cached=True)]
        rows.append(("rlaif re-run (cache)", n, again_s))

        if step is None or args.skip_distilabel:
            print("  distilabel: skipped" + ("" if step is not None else " (not importable)"))
        else:
            dn = args.distilabel_records
            dist_s, dist_rows = run_distilabel(dn, work / "distilabel-cache")
            print(f"  distilabel: {dn} records in {dist_s:.2f} s ({dn / dist_s:,.0f} records/s), {dist_rows} rows")
            if dist_rows != kept(dn):
                problems.append(f"distilabel: {dist_rows} rows, expected {kept(dn)}")
            rows.append(("distilabel 1.5.3", dn, dist_s))

    reference = n / first_s
    print(f"\n{'run':<22}{'records':>10}{'seconds':>10}{'records/s':>12}{'ratio':>9}   (ratio: rate / rlaif rate)")
    for label, count, seconds in rows:
        print(f"{label:<22}{count:>10}{seconds:>10.2f}{count / seconds:>12,.0f}{count / seconds / reference:>9.3f}")
    print(f"\ntarget rlaif >= 100,000 records/s: {reference:,.0f} -> {'met' if reference >= 100_000 else 'NOT met'}")
    if len(rows) == 3:
        times = reference / (rows[2][1] / rows[2][2])
        print(f"target rlaif >= 10x distilabel: {times:.1f}x -> {'met' if times >= 10 else 'NOT met'}")
    print(f"cached re-run: {100 * again_s / first_s:.1f}% of the first run's wall time")
    for problem in problems:
        print(f"CHECK FAILED: {problem}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
