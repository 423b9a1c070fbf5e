"""Training data: load it, convert human-preference formats, check its shape, split off eval — before any model loads.

Sources: a pipeline run directory (``runs/<name>``, dataset in ``dataset/data/*.parquet``), a Hub-layout dataset
folder, a ``save_to_disk`` folder, a single ``.jsonl``/``.json``/``.parquet``/``.csv`` file, or a Hub dataset id.
Rows must already be in one of TRL's forms (see :data:`FORMATS`), or name an adapter (``format: hh_rlhf``...) that
converts them. A recipe states which forms it trains on; anything else is a :class:`DataFormatError` that names the
form found, the form expected and, when the columns look like a known human-preference set, the adapter to use.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlaif.config import ConfigError
from rlaif.formats.human import FormatError, convert, detect_format
from rlaif.train.config import DataConfig

log = logging.getLogger(__name__)

# TRL dataset forms, most specific first: a row matches the first form whose columns it has.
FORMATS: dict[str, tuple[str, ...]] = {
    "preference": ("prompt", "chosen", "rejected"),
    "implicit preference": ("chosen", "rejected"),  # chosen/rejected hold whole conversations
    "unpaired preference": ("prompt", "completion", "label"),  # KTO: one completion marked good (true) or bad
    "prompt-completion": ("prompt", "completion"),
    "sft messages": ("messages",),
    "text": ("text",),
    "prompt-only": ("prompt",),
}
EXPECTED: dict[str, tuple[str, ...]] = {
    "sft": ("sft messages", "prompt-completion", "text"),
    "rm": ("preference", "implicit preference"),
    "dpo": ("preference", "implicit preference"),
    # paired rows are split into one good and one bad row each (TRL unpair_preference_dataset)
    "kto": ("unpaired preference", "preference", "implicit preference"),
    # online RL samples its own responses: only the prompt column is read, so any row form with one will do
    "ppo": ("prompt-only", "preference", "prompt-completion", "unpaired preference"),
}
EXPECTED["grpo"] = EXPECTED["rloo"] = EXPECTED["ppo"]  # online RL too
# P(chosen better) per pair, a judge's soft label carried by make_pairs; what train.soft_labels trains on.
SOFT_LABEL = "chosen_prob"
_DATA_FILES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class DataFormatError(ValueError):
    """Rows a recipe cannot train on; raised before any model is built."""


@dataclass
class TrainingData:
    train: Any  # datasets.Dataset
    eval: Any | None
    format: str
    conversational: bool  # rows are message lists: the tokenizer needs a chat template
    provenance: dict[str, Any] = field(default_factory=dict)


def detect(columns: list[str]) -> str | None:
    """The TRL form named by a set of columns, or None."""
    present = set(columns)
    return next((name for name, needed in FORMATS.items() if set(needed) <= present), None)


def load_training_data(cfg: DataConfig, recipe: str) -> TrainingData:
    """Load, convert, check and split the rows for ``recipe`` (sft, rm, dpo, kto, ppo)."""
    dataset, eval_set, provenance = _load(cfg)
    if cfg.rename:
        dataset, eval_set = _rename(dataset, cfg.rename, provenance["source"]), _rename(eval_set, cfg.rename, "")
        provenance["renamed"] = dict(cfg.rename)
    if cfg.format:
        dataset, quarantined = _adapt(dataset, cfg.format, cfg.format_options)
        eval_set = _adapt(eval_set, cfg.format, cfg.format_options)[0] if eval_set is not None else None
        provenance.update(format=cfg.format, quarantined=dict(quarantined))
    if cfg.max_samples:
        dataset = dataset.select(range(min(cfg.max_samples, len(dataset))))
    form = eval_form = check_format(dataset, recipe, where=provenance["source"])
    if eval_set is not None:
        eval_form = check_format(eval_set, recipe, where=f"{provenance['source']} (split {cfg.eval_split})")
    elif cfg.test_size:
        if len(dataset) < 2:
            raise DataFormatError(
                f"{provenance['source']}: {len(dataset)} row(s) cannot be split into train and "
                "eval; add rows or set data.test_size: 0"
            )
        parts = dataset.train_test_split(test_size=cfg.test_size, seed=cfg.seed)
        dataset, eval_set = parts["train"], parts["test"]
    if recipe == "kto":
        # Split before unpairing, so the two halves of a pair never straddle train and eval. TRL unpairs a batch
        # as all its chosen rows then all its rejected ones: shuffle, or KTO batches would be all-good, then all-bad.
        from trl.data_utils import unpair_preference_dataset

        if form != "unpaired preference":
            dataset = unpair_preference_dataset(dataset).shuffle(seed=cfg.seed)
        if eval_set is not None and eval_form != "unpaired preference":
            eval_set = unpair_preference_dataset(eval_set)
    provenance.update(rows_train=len(dataset), rows_eval=len(eval_set) if eval_set is not None else 0)
    first = dataset[0]
    conversational = any(isinstance(first.get(c), list) for c in ("messages", "prompt", "chosen", "completion"))
    return TrainingData(dataset, eval_set, form, conversational, provenance)


def reward_margin(data: TrainingData, use_margin: bool, where: str) -> TrainingData:
    """``data`` as the rm recipe hands it to TRL's RewardTrainer, which adds any ``margin`` column to its loss
    (-log sigmoid(r_c - r_r - margin)): dropped for plain Bradley-Terry, required with ``use_margin``."""
    splits = [s for s in (data.train, data.eval) if s is not None]
    if use_margin:
        if missing := [s for s in splits if "margin" not in s.column_names]:
            raise ConfigError.one(
                where,
                f"train.use_margin: true needs a 'margin' column (make_pairs with a "
                f"score_column writes one); the data has {', '.join(missing[0].column_names)}",
            )
        data.provenance["margin"] = "used in the loss (train.use_margin)"
        return data
    if any("margin" in s.column_names for s in splits):
        data.provenance["margin"] = "column dropped: Bradley-Terry loss (train.use_margin: false)"
    data.train, data.eval = (
        s.remove_columns("margin") if s is not None and "margin" in s.column_names else s
        for s in (data.train, data.eval)
    )
    return data


def soft_label_column(data: TrainingData, enabled: bool, where: str) -> TrainingData:
    """``data`` as a trainer with ``train.soft_labels`` gets it: ``chosen_prob`` required, checked to be a probability
    in every row, nulls made 1.0 (hard pairs); without ``soft_labels`` the column is dropped (hard labels)."""
    splits = {"train": data.train, "eval": data.eval}
    present = {name: s for name, s in splits.items() if s is not None}
    if not enabled:
        if any(SOFT_LABEL in s.column_names for s in present.values()):
            data.provenance["soft_labels"] = f"{SOFT_LABEL} column dropped: hard labels (train.soft_labels: false)"
        data.train, data.eval = (
            s.remove_columns(SOFT_LABEL) if s is not None and SOFT_LABEL in s.column_names else s
            for s in (data.train, data.eval)
        )
        return data
    if missing := [name for name, s in present.items() if SOFT_LABEL not in s.column_names]:
        columns = ", ".join(present[missing[0]].column_names)
        raise ConfigError.one(
            where,
            f"train.soft_labels: true needs a {SOFT_LABEL!r} column (P(chosen better); make_pairs writes it from a "
            f"judge's p_a: constitutional_judge, or pairwise_judge with logprobs: true); the {missing[0]} rows "
            f"have {columns}",
        )
    hard = 0
    for name, split in present.items():
        values = list(split[SOFT_LABEL])
        for index, value in enumerate(values):
            if value is None:
                hard += 1
            elif isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise DataFormatError(
                    f"{data.provenance.get('source', where)}: {name} row {index}: {SOFT_LABEL} is {value!r}; "
                    "expected a probability in [0, 1] (P(chosen better)) or null for a hard pair"
                )
        if None in values:
            split = split.remove_columns(SOFT_LABEL).add_column(
                SOFT_LABEL, [1.0 if v is None else float(v) for v in values]
            )
            splits[name] = split
    data.train, data.eval = splits["train"], splits["eval"]
    soft = [v for v in data.train[SOFT_LABEL] if not math.isclose(v, 1.0)]
    data.provenance["soft_labels"] = (
        f"cross-entropy on {SOFT_LABEL} (train.soft_labels): {len(soft)} of {len(data.train)} train pairs soft, "
        f"{hard} null (trained as hard pairs)"
    )
    return data


def _rename(dataset: Any, rename: dict[str, str], where: str) -> Any:
    if dataset is None:
        return None
    if missing := sorted(set(rename) - set(dataset.column_names)):
        raise DataFormatError(
            f"{where}: data.rename names missing column(s) {missing}; columns: {', '.join(dataset.column_names)}"
        )
    dataset = dataset.rename_columns(rename)
    # A renamed pair (chosen -> completion) keeps its other answer: drop what now only confuses format detection.
    columns = dataset.column_names
    leftovers = [c for c in ("chosen", "rejected") if c in columns] if "completion" in columns else []
    return dataset.remove_columns(leftovers) if leftovers else dataset


def check_format(dataset: Any, recipe: str, where: str) -> str:
    """The form of ``dataset`` if ``recipe`` trains on it; else a DataFormatError naming found and expected forms."""
    columns = list(dataset.column_names)
    form = detect(columns)
    expected = EXPECTED[recipe]
    if len(dataset) == 0:
        raise DataFormatError(f"{where}: no rows")
    if form not in expected:
        wanted = " or ".join(f"{name} ({', '.join(FORMATS[name])})" for name in expected)
        hint = _adapter_hint(dataset[0])
        raise DataFormatError(
            f"{where}: detected format {form or 'unknown'!r} (columns: {', '.join(columns)}); the {recipe} recipe "
            f"expects {wanted}.{hint}"
        )
    for column in FORMATS[form]:
        nulls = dataset.data.column(column).null_count
        if nulls:
            raise DataFormatError(f"{where}: column {column!r} is empty in {nulls} of {len(dataset)} rows")
    return form


def _adapter_hint(row: dict[str, Any]) -> str:
    name = detect_format(row)
    if name and name != "generic":
        return f" These columns look like the {name!r} human-preference format: set data.format: {name}."
    return ""


def _load(cfg: DataConfig) -> tuple[Any, Any | None, dict[str, Any]]:
    """(train rows, eval rows or None, provenance) from the configured source."""
    import datasets

    if cfg.hub:
        provenance: dict[str, Any] = {"source": cfg.hub, "kind": "hub", "revision": cfg.revision}
        splits = [cfg.split] + ([cfg.eval_split] if cfg.eval_split else [])
        loaded = [datasets.load_dataset(cfg.hub, cfg.name, split=s, revision=cfg.revision) for s in splits]
        return loaded[0], loaded[1] if cfg.eval_split else None, provenance
    path = Path(cfg.path).expanduser()
    if not path.exists():
        hint = f" (a pipeline writes it: rlaif run pipelines/{path.name}.yaml)" if path.parent.name == "runs" else ""
        raise DataFormatError(f"data.path {cfg.path}: no such file or directory{hint}")
    provenance = {"source": str(path), "kind": "local", **run_fingerprints(path)}
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():  # Dataset.save_to_disk
        return datasets.load_from_disk(str(path)), None, provenance
    train = _load_files(_data_files(path, cfg.split))
    eval_set = _load_files(_data_files(path, cfg.eval_split)) if cfg.eval_split else None
    return train, eval_set, provenance


def _data_files(path: Path, split: str) -> list[Path]:
    """The data files of ``split`` under ``path``: a file, a Hub-layout folder, or a pipeline run directory."""
    if path.is_file():
        return [path]
    root = path / "dataset" if (path / "dataset").is_dir() else path
    if not (root / "data").is_dir():
        outputs = sorted(p.parent.parent for p in root.glob("*/data/*.parquet"))
        if len(set(outputs)) > 1:
            names = ", ".join(sorted({p.name for p in outputs}))
            raise DataFormatError(f"{path} holds several datasets ({names}): point data.path at one of them")
        root = outputs[0] if outputs else root
    files = sorted((root / "data").glob(f"{split}-*.parquet")) if (root / "data").is_dir() else []
    files = files or sorted(p for p in root.glob(f"{split}*") if p.suffix in _DATA_FILES)
    if not files:
        raise DataFormatError(
            f"{path}: no data files for split {split!r} (looked for data/{split}-*.parquet and "
            f"{split}.jsonl/.json/.parquet/.csv)"
        )
    return files


def _load_files(files: list[Path]) -> Any:
    import datasets

    suffixes = {f.suffix for f in files}
    if len(suffixes) != 1 or files[0].suffix not in _DATA_FILES:
        raise DataFormatError(f"cannot read {', '.join(map(str, files))}: use .jsonl, .json, .parquet or .csv")
    # Explicit data_files, never the folder: datasets 5.2 keys its cache on the folder name and can return the rows
    # of an earlier dataset written to the same path.
    return datasets.load_dataset(_DATA_FILES[files[0].suffix], data_files=[str(f) for f in files], split="train")


def run_fingerprints(path: Path) -> dict[str, Any]:
    """Fingerprints a pipeline left in a run directory: the dataset stamp and each step's cache key."""
    out: dict[str, Any] = {}
    root = path if path.is_dir() else path.parent
    for stamp in (root / "dataset" / ".rlaif-fingerprint", root / ".rlaif-fingerprint"):
        if stamp.is_file():
            out["dataset_fingerprint"] = stamp.read_text().strip()
            break
    steps = {p.parent.name: p.read_text().strip() for p in sorted((root / "steps").glob("*/fingerprint"))}
    if steps:
        out["step_fingerprints"] = steps
    return out


def _adapt(dataset: Any, name: str, options: dict[str, Any]) -> tuple[Any, Counter[str]]:
    """Rows converted by adapter ``name``; malformed records are counted by reason and left out."""
    import datasets

    rows: list[dict[str, Any]] = []
    quarantined: Counter[str] = Counter()
    for record in dataset:
        try:
            rows.extend(convert(name, record, **options))
        except FormatError as exc:
            quarantined[exc.reason] += 1
    if quarantined:
        log.warning(
            "format %s: left out %d malformed record(s): %s", name, sum(quarantined.values()), dict(quarantined)
        )
    if not rows:
        raise DataFormatError(f"format {name}: none of {len(dataset)} records converted ({dict(quarantined)})")
    return datasets.Dataset.from_list(rows), quarantined
