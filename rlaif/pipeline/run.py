"""``rlaif run``: validate, run the steps, save the outputs as a Hub-layout dataset with its card, push if asked."""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from rlaif import __version__
from rlaif.backends import Backend
from rlaif.pipeline.dataset_card import DatasetCardInfo
from rlaif.pipeline.dataset_writer import write_dataset
from rlaif.pipeline.fingerprint import adapter_digest, file_digest
from rlaif.pipeline.progress import Reporter
from rlaif.pipeline.push import PushError, push_dataset
from rlaif.pipeline.runner import RunResult, run_steps
from rlaif.pipeline.runtime import EngineRuntime
from rlaif.pipeline.spec import ModelSpec, Pipeline


@dataclass
class RunSummary:
    run_dir: Path
    stats: dict[str, dict[str, Any]]
    datasets: dict[str, Path]  # output step -> saved dataset directory
    rows: dict[str, int]
    pushed: str | None = None
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # dry runs: the first records


def default_run_dir(pipeline: Pipeline) -> Path:
    return Path("runs") / pipeline.name


def run_pipeline(
    pipeline: Pipeline,
    *,
    run_dir: Path | None = None,
    fresh: bool = False,
    dry_run: int | None = None,
    reporter: Reporter | None = None,
    backends: dict[str, Backend] | None = None,
) -> RunSummary:
    """Run with caching in ``run_dir`` (default ``runs/<name>``). A dry run uses a throwaway directory: the first
    ``dry_run`` records of each source through every step, nothing cached, nothing saved or pushed.
    ``backends`` (by model name) are used instead of building engines, and left open."""
    reporter = reporter or Reporter(enabled=False)
    if dry_run is not None:
        with tempfile.TemporaryDirectory(prefix="rlaif-dry-run-") as tmp:
            runtime = EngineRuntime(pipeline.models, pipeline.seed, backends)
            result = run_steps(pipeline, Path(tmp), limit=dry_run, reporter=reporter, runtime=runtime)
            reporter.summary(result.stats)
            samples = {name: _first(result, name, 3) for name in output_steps(pipeline)}
            rows = {name: sum(len(b) for b in result.stores[name].records()) for name in samples}
            return RunSummary(Path(tmp), result.stats, {}, rows, samples=samples)
    run_dir = run_dir or default_run_dir(pipeline)
    if fresh and (run_dir / "steps").exists():
        shutil.rmtree(run_dir / "steps")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "pipeline.yaml").write_text(pipeline.text)
    runtime = EngineRuntime(pipeline.models, pipeline.seed, backends)
    result = run_steps(pipeline, run_dir, reporter=reporter, runtime=runtime)
    (run_dir / "stats.json").write_text(json.dumps(result.stats, indent=2))
    _save_quarantine(result)
    datasets, rows = save_outputs(pipeline, result)
    reporter.summary(result.stats)
    summary = RunSummary(run_dir, result.stats, datasets, rows)
    push = pipeline.output.get("push_to_hub")
    if push:
        [dataset_dir] = datasets.values()  # validation allows a push only with one output step
        summary.pushed = push_dataset(dataset_dir, push["repo_id"], private=bool(push.get("private")), run_dir=run_dir)
    return summary


def output_steps(pipeline: Pipeline) -> list[str]:
    return list(pipeline.output.get("steps") or pipeline.leaves())


def save_outputs(pipeline: Pipeline, result: RunResult) -> tuple[dict[str, Path], dict[str, int]]:
    """Each output step as a Hub-layout Parquet dataset with its card: ``<save>/`` for one, ``<save>/<step>/``."""
    names = output_steps(pipeline)
    root = Path(pipeline.output.get("save") or result.run_dir / "dataset")
    split = (pipeline.output.get("push_to_hub") or {}).get("split", "train")
    jsonl = bool(pipeline.output.get("jsonl"))
    datasets, rows = {}, {}
    for name in names:
        target = root if len(names) == 1 else root / name
        # The output's own key: an unchanged re-run finds the dataset already written and skips the rewrite.
        key = f"{result.fingerprints[name]}/{split}/{jsonl}/{len(names)}"
        stamp = target / ".rlaif-fingerprint"
        if stamp.is_file() and stamp.read_text() == key:
            datasets[name], rows[name] = target, _saved_rows(target)
            continue
        counts = write_dataset(
            {split: result.stores[name].tables()}, target, card_info(pipeline, result, name), jsonl=jsonl
        )
        stamp.write_text(key)
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
    for name, store in result.stores.items():
        rows = list(store.quarantined())
        if rows:
            out.mkdir(exist_ok=True)
            with (out / f"{name}.jsonl").open("w") as handle:
                handle.writelines(json.dumps(row) + "\n" for row in rows)


def _first(result: RunResult, step_name: str, count: int) -> list[dict[str, Any]]:
    records = itertools.chain.from_iterable(result.stores[step_name].records())
    return list(itertools.islice(records, count))


__all__ = ["PushError", "RunSummary", "default_run_dir", "run_pipeline", "save_outputs"]
