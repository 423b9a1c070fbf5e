"""The dataset card (the README.md of a saved or pushed dataset): Hub front matter, then a summary, usage, the
pipeline YAML, per-step statistics and provenance. Secrets are scrubbed from the rendered text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from huggingface_hub import DatasetCard, DatasetCardData

from rlaif import __version__
from rlaif.pipeline.budget import run_usage, usd
from rlaif.rates import counts_text, short
from rlaif.secrets import scrub_secrets

_STEP_COLUMNS = ("name", "type", "records_in", "records_out", "dropped", "quarantined",
                 "tokens_in", "tokens_out", "wall_s")  # fmt: skip


@dataclass
class DatasetCardInfo:
    """Everything the dataset card reports. ``splits`` and ``columns`` are filled in by
    :func:`rlaif.pipeline.dataset_writer.write_dataset`."""

    pipeline_name: str
    pipeline_yaml: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)
    file_hashes: dict[str, str] = field(default_factory=dict)
    rlaif_version: str = __version__
    splits: dict[str, int] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=lambda: ["rlaif", "synthetic", "preference"])
    repo_id: str | None = None
    dataset_info: dict[str, Any] | None = None  # the Hub's `dataset_info` front matter (features, split sizes)


def render_dataset_card(info: DatasetCardInfo) -> str:
    """The README.md of the dataset: Hub front matter, then summary, usage, pipeline YAML, stats and provenance."""
    data_files = [{"split": split, "path": f"data/{split}-*.parquet"} for split in info.splits]
    configs = [{"config_name": "default", "data_files": data_files}] if data_files else None
    metadata = DatasetCardData(
        pretty_name=info.pipeline_name, tags=list(info.tags), configs=configs, dataset_info=info.dataset_info
    )
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", info.pipeline_yaml)), default=0))
    sections = [
        f"# {info.pipeline_name}",
        _summary(info),
        "## Usage\n\n```python\nfrom datasets import load_dataset\n\n"
        f'ds = load_dataset("{info.repo_id or "path/to/this/folder"}")\n```',
        f"## Pipeline\n\n{fence}yaml\n{info.pipeline_yaml.rstrip()}\n{fence}",
        "## Steps\n\n" + _steps_table(info.steps),
        *_usage(info.steps),
        *_checks(info.steps),
        "## Models\n\n" + (_bullets(info.models) or "None."),
        "## File hashes (sha256)\n\n" + (_bullets(info.file_hashes) or "None."),
        f"## Version\n\nGenerated with rlaif {info.rlaif_version}.",
    ]
    # DatasetCard parses the front matter, so a card the Hub would reject fails here, before any upload.
    card = DatasetCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")
    return scrub_secrets(str(card))


def _summary(info: DatasetCardInfo) -> str:
    rows = ", ".join(f"{split}: {n} row{'' if n == 1 else 's'}" for split, n in info.splits.items()) or "no rows"
    columns = ", ".join(f"`{c}`" for c in info.columns) or "none"
    return f"Preference data generated with rlaif by the pipeline `{info.pipeline_name}` ({rows}). Columns: {columns}."


def _bullets(mapping: dict[str, str]) -> str:
    return "\n".join(f"- `{key}`: `{value}`" for key, value in mapping.items())


def _steps_table(steps: list[dict[str, Any]]) -> str:
    if not steps:
        return "No step statistics recorded."
    lines = [
        "| step | type | in | out | dropped | quarantined | tokens in | tokens out | wall s |",
        "| --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for step in steps:
        lines.append("| " + " | ".join(_cell(step.get(key)) for key in _STEP_COLUMNS) + " |")
    return "\n".join(lines)


def _usage(steps: list[dict[str, Any]]) -> list[str]:
    """ "## Tokens and cost": each model's prompt and generated tokens per step and in all, with the cost where the
    model has a price (rlaif.pipeline.budget); none when no step called a model."""
    rows = [(s.get("name"), model, e) for s in steps for model, e in (s.get("models") or {}).items()]
    if not rows:
        return []
    totals = run_usage({str(i): s for i, s in enumerate(steps)})
    rows += [("all steps", model, entry) for model, entry in totals.items()]
    lines = ["| step | model | tokens in | tokens out | cost (USD) |", "| --- | --- | ---: | ---: | ---: |"]
    for step, model, entry in rows:
        cost = entry.get("cost_usd")
        cells = (
            step,
            model,
            entry.get("tokens_in", 0),
            entry.get("tokens_out", 0),
            None if cost is None else usd(cost),
        )
        lines.append("| " + " | ".join(_cell(v) for v in cells) + " |")
    head = "## Tokens and cost\n\nAs the backends reported them; cost from the prices in the pipeline (`price:`).\n\n"
    return [head + "\n".join(lines)]


def _checks(steps: list[dict[str, Any]]) -> list[str]:
    """ "## Judge checks": each judge step's agreement with human labels, measured in its setup before it labelled
    (``check:``; the figures under "setup" in the step's stats), every rate with its 95% interval and n."""
    checked = [
        (step["name"], step["setup"]["judge_check"]) for step in steps if "judge_check" in step.get("setup", {})
    ]
    if not checked:
        return []
    lines = ["| step | figure | count | rate [95% CI] |", "| --- | --- | ---: | --- |"]
    for name, figures in checked:
        for key, value in figures.items():
            if isinstance(value, dict) and "ci95" in value:
                row = (name, key.replace("_", " "), counts_text(value["successes"], value["n"]), short(value))
                lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    notes = [
        f"- `{name}`: {f['n']} pairs of `{f['data']}` (seed {f['seed']}), min_agreement {f['min_agreement']}"
        for name, f in checked
    ]
    head = "## Judge checks\n\nAgreement with human preference labels, measured before the step labelled.\n\n"
    return [head + "\n".join(lines) + "\n\n" + "\n".join(notes)]


def _cell(value: Any) -> str:
    if isinstance(value, dict):  # reason -> count: the total, then the reasons that make it up
        text = f"{sum(value.values())} ({', '.join(f'{k}: {v}' for k, v in value.items())})" if value else "0"
    elif isinstance(value, float):
        text = f"{value:.2f}"
    else:
        text = "—" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def hub_dataset_info(schema: pa.Schema | None, sizes: dict[str, tuple[int, int]], data_dir: Path) -> dict | None:
    """The card's `dataset_info` (what `datasets.push_to_hub` writes), rendered by `datasets` itself.

    Besides documenting features and sizes, it keys `datasets`' cache: for a local folder whose card has `configs:`,
    datasets 5.2 hashes only the card's configs and dataset_info, not the data files, so without it a second folder
    of the same name (runs/round1/dataset, runs/round2/dataset) silently loads the first one's cached rows.
    """
    if schema is None:
        return None
    import datasets  # heavy import, needed only here
    from datasets.info import DatasetInfosDict

    splits = datasets.SplitDict()
    for split, (rows, nbytes) in sizes.items():
        splits.add(datasets.SplitInfo(name=split, num_bytes=nbytes, num_examples=rows))
    info = datasets.DatasetInfo(
        features=datasets.Features.from_arrow_schema(schema),
        splits=splits,
        download_size=sum(path.stat().st_size for path in data_dir.glob("*.parquet")),
        dataset_size=sum(nbytes for _, nbytes in sizes.values()),
    )
    card_data = DatasetCardData()
    DatasetInfosDict({"default": info}).to_dataset_card_data(card_data)
    return card_data["dataset_info"]
