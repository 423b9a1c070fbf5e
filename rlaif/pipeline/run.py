"""``rlaif run``: validate, run the steps, save the outputs as a Hub-layout dataset with its card, push if asked."""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from rlaif import __version__
from rlaif.backends import Backend
from rlaif.pipeline.dataset_card import DatasetCardInfo
from rlaif.pipeline.dataset_writer import recover_dataset, write_dataset
from rlaif.pipeline.executor import ExecutorSpec, local_run_dir
from rlaif.pipeline.fingerprint import adapter_digest, file_digest
from rlaif.pipeline.outcome import Outcome, judge_run, outcome_lines
from rlaif.pipeline.progress import Reporter
from rlaif.pipeline.push import PushError, push_dataset
from rlaif.pipeline.runner import RunResult, run_steps
from rlaif.pipeline.runtime import EngineRuntime
from rlaif.pipeline.spec import ModelSpec, Pipeline

log = logging.getLogger(__name__)
STAMP = ".rlaif-fingerprint"  # in a saved dataset: the key of the run output it holds


class RunFailed(RuntimeError):
    """A pipeline run that was not accepted (``RunSummary.check``), for callers that cannot go on without its data."""


@dataclass
class RunSummary:
    run_dir: Path
    stats: dict[str, dict[str, Any]]
    datasets: dict[str, Path]  # output step -> saved dataset directory (none when the run was not accepted)
    rows: dict[str, int]
    pushed: str | None = None
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # dry runs: the first records
    outcome: Outcome = field(default_factory=lambda: Outcome("ok", True))
    kept: list[Path] = field(default_factory=list)  # datasets a rejected run left as they were

    def check(self) -> RunSummary:
        """Raise ``RunFailed`` (with the outcome's lines) unless the run was accepted; else return self."""
        if not self.outcome.accepted:
            raise RunFailed("\n".join(outcome_lines(self.outcome, self.kept)))
        return self


def default_run_dir(pipeline: Pipeline) -> Path:
    return local_run_dir(pipeline.output_dir) if pipeline.output_dir else Path("runs") / pipeline.name


def run_pipeline(
    pipeline: Pipeline,
    *,
    run_dir: Path | None = None,
    fresh: bool = False,
    dry_run: int | None = None,
    reporter: Reporter | None = None,
    backends: dict[str, Backend] | None = None,
    allow_partial: bool = True,
    retry_quarantined: bool = False,
    executor: ExecutorSpec | None = None,
) -> RunSummary:
    """Run with caching in ``run_dir`` (default ``runs/<name>``). A dry run uses a throwaway directory: the first
    ``dry_run`` records of each source through every step, nothing cached, nothing saved or pushed.
    ``backends`` (by model name) are used instead of building engines, and left open.

    The run's outcome (rlaif.pipeline.outcome) decides what is saved: only an accepted run (ok, or partial within
    ``max_quarantined`` or with ``allow_partial``) replaces the saved datasets and pushes; any other leaves them as
    they were. A failed run is never accepted. ``allow_partial`` is on for library callers, which read the outcome
    themselves; ``rlaif run`` turns it off unless given ``--allow-partial``. A re-run retries records quarantined
    for a transient reason (``retry_quarantined``: all of them). ``executor`` (default: the file's ``executor:``) says
    where batches run (rlaif.pipeline.executor); the cache is shared: a run may resume on either executor."""
    reporter = reporter or Reporter(enabled=False)
    if dry_run is not None:
        with tempfile.TemporaryDirectory(prefix="rlaif-dry-run-") as tmp:
            runtime = EngineRuntime(pipeline.models, pipeline.seed, backends)
            result = run_steps(pipeline, Path(tmp), limit=dry_run, reporter=reporter, runtime=runtime)
            reporter.summary(result.stats)
            samples = {name: _first(result, name, 3) for name in output_steps(pipeline) if name in result.stores}
            rows = {name: sum(len(b) for b in result.stores[name].records()) for name in samples}
            outcome = judge_run(pipeline, result, allow_partial, None)
            outcome.saves = False
            return RunSummary(Path(tmp), result.stats, {}, rows, samples=samples, outcome=outcome)
    run_dir = local_run_dir(run_dir) if run_dir else default_run_dir(pipeline)
    for target in dataset_dirs(pipeline, run_dir).values():
        if recover_dataset(target):  # a save killed between its renames: the previous dataset comes back first
            log.warning("restored %s from an interrupted save", target)
    if fresh and (run_dir / "steps").exists():
        shutil.rmtree(run_dir / "steps")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "pipeline.yaml").write_text(pipeline.text)
    runtime = EngineRuntime(pipeline.models, pipeline.seed, backends)
    chosen = executor or pipeline.executor
    result = _run_steps(pipeline, run_dir, reporter, runtime, retry_quarantined, chosen, set(backends or ()))
    outcome = judge_run(pipeline, result, allow_partial, run_dir / "quarantine")
    (run_dir / "stats.json").write_text(json.dumps(result.stats, indent=2))
    _save_quarantine(result)
    reporter.summary(result.stats)
    if not outcome.accepted:
        kept = [path for path in dataset_dirs(pipeline, run_dir).values() if (path / "README.md").is_file()]
        return RunSummary(run_dir, result.stats, {}, {}, outcome=outcome, kept=kept)
    datasets, rows = save_outputs(pipeline, result)
    summary = RunSummary(run_dir, result.stats, datasets, rows, outcome=outcome)
    push = pipeline.output.get("push_to_hub")
    if push:
        [dataset_dir] = datasets.values()  # validation allows a push only with one output step
        summary.pushed = push_dataset(dataset_dir, push["repo_id"], private=bool(push.get("private")), run_dir=run_dir)
    return summary


def _run_steps(
    pipeline: Pipeline,
    run_dir: Path,
    reporter: Reporter,
    runtime: EngineRuntime,
    retry_all: bool,
    executor: ExecutorSpec,
    provided: set[str],
) -> RunResult:
    """``run_steps`` on the chosen executor. Ray is imported only here, only when asked for; a cluster that cannot
    be reached fails (``ExecutorError``) before any step runs. Dry runs always run locally."""
    if executor.type != "ray":
        return run_steps(pipeline, run_dir, reporter=reporter, runtime=runtime, retry_all=retry_all)
    from rlaif.pipeline.ray_executor import RayExecutor

    ray = RayExecutor(pipeline, executor, provided)
    try:
        return run_steps(pipeline, run_dir, reporter=reporter, runtime=runtime, retry_all=retry_all, executor=ray)
    finally:
        ray.close()


def output_steps(pipeline: Pipeline) -> list[str]:
    return list(pipeline.output.get("steps") or pipeline.leaves())


def dataset_dirs(pipeline: Pipeline, run_dir: Path) -> dict[str, Path]:
    """Where each output step's dataset is saved: ``<save>/`` for one output step, ``<save>/<step>/`` for several."""
    names = output_steps(pipeline)
    root = Path(pipeline.output.get("save") or run_dir / "dataset")
    return {name: root if len(names) == 1 else root / name for name in names}


def save_outputs(pipeline: Pipeline, result: RunResult) -> tuple[dict[str, Path], dict[str, int]]:
    """Each output step as a Hub-layout Parquet dataset with its card (swapped in whole: data and card match)."""
    targets = dataset_dirs(pipeline, result.run_dir)
    split = (pipeline.output.get("push_to_hub") or {}).get("split", "train")
    jsonl = bool(pipeline.output.get("jsonl"))
    datasets, rows = {}, {}
    for name, target in targets.items():
        # The output's own key (its step's content included: a retry that recovered records changes it): an
        # unchanged re-run finds the dataset already written and skips the rewrite.
        content = result.stats[name].get("content", "")
        key = f"{result.fingerprints[name]}/{content}/{split}/{jsonl}/{len(targets)}"
        stamp = target / STAMP
        if stamp.is_file() and stamp.read_text() == key:
            datasets[name], rows[name] = target, _saved_rows(target)
            continue
        counts = write_dataset(
            {split: result.stores[name].tables()},
            target,
            card_info(pipeline, result, name),
            jsonl=jsonl,
            extra_files={STAMP: key},
        )
        datasets[name], rows[name] = target, sum(counts.values())
    return datasets, rows


def _saved_rows(dataset_dir: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in (dataset_dir / "data").glob("*.parquet"))


def card_info(pipeline: Pipeline, result: RunResult, step_name: str) -> DatasetCardInfo:
    hashes = {}
    for spec in pipeline.steps.values():
        for path in spec.step.files():
            if path.is_file() and path.suffix in (".jinja", ".j2", ".yaml", ".yml", ".txt", ".md"):
                hashes[path.name] = file_digest(path)
    columns = pipeline.columns.get(step_name)
    return DatasetCardInfo(
        pipeline_name=pipeline.name,
        pipeline_yaml=pipeline.text,
        steps=list(result.stats.values()),
        models={name: _model_label(spec) for name, spec in pipeline.models.items()},
        file_hashes=hashes,
        rlaif_version=__version__,
        splits={},
        columns=sorted(columns) if columns else [],
    )


def _model_label(spec: ModelSpec) -> str:
    # A LoRA adapter is named by its content hash: the card must not carry this machine's paths.
    adapter = spec.sampling.get("lora")
    return f"{spec.model} + LoRA adapter sha256:{adapter_digest(adapter)[:16]}" if adapter else spec.model


def _save_quarantine(result: RunResult) -> None:
    """All quarantined records of the run in one readable place, next to the per-batch Parquet files."""
    out = result.run_dir / "quarantine"
    shutil.rmtree(out, ignore_errors=True)
    for name, stats in result.stats.items():
        if not sum(stats["quarantined"].values()):
            continue  # nothing to read: a cached re-run of a clean pipeline touches no batch file
        rows = list(result.stores[name].quarantined())
        if rows:
            out.mkdir(exist_ok=True)
            with (out / f"{name}.jsonl").open("w") as handle:
                handle.writelines(json.dumps(row) + "\n" for row in rows)


def _first(result: RunResult, step_name: str, count: int) -> list[dict[str, Any]]:
    records = itertools.chain.from_iterable(result.stores[step_name].records())
    return list(itertools.islice(records, count))


__all__ = ["PushError", "RunFailed", "RunSummary", "dataset_dirs", "default_run_dir", "run_pipeline", "save_outputs"]
