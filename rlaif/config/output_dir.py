"""One name for where a run writes: ``output_dir``, a top-level key of pipeline, training and loop files alike (and
``rlaif run --output-dir``). The older names stay for one release as deprecated aliases, each warned about with its
file and line (or the override that set it) and the new name:

| file | old name | what it still does |
| --- | --- | --- |
| pipeline | ``output.save: DIR`` | the dataset directory (with ``output_dir``: ``<output_dir>/dataset``) |
| training | ``train.output_dir: DIR`` | the same as ``output_dir`` (it is TrainingArguments' name) |
| ``rlaif run`` | ``--run-dir DIR`` | the same as ``--output-dir`` |
"""

from __future__ import annotations

import logging

from rlaif.config.errors import ConfigError
from rlaif.config.yamlio import Located

log = logging.getLogger("rlaif.config")
UNTIL = "it works until the next release"


def warn_deprecated(located: Located, path: tuple[str, ...], instead: str) -> None:
    """Log (rlaif's own warnings reach stderr) that ``path`` is a deprecated name, where it is, and what to use."""
    log.warning("%s", located.problem(path, f"`{'.'.join(path)}` is deprecated: use {instead} ({UNTIL})"))


def pipeline_output_dir(located: Located) -> None:
    """Warn about ``output.save`` in a pipeline file (its meaning is kept: the dataset directory)."""
    output = located.data.get("output") if isinstance(located.data, dict) else None
    if isinstance(output, dict) and output.get("save") is not None:
        warn_deprecated(
            located, ("output", "save"), "the top-level `output_dir: DIR` (the dataset goes to DIR/dataset)"
        )


def training_output_dir(located: Located) -> None:
    """A training file's top-level ``output_dir`` moves to where the typed config keeps it (``train.output_dir``,
    TrainingArguments' name), with its line; ``train.output_dir`` itself is warned about. Given both, the one an
    override set wins (the command line is the later word); both in the file is an error naming both lines."""
    data = located.data
    if not isinstance(data, dict) or not isinstance(data.get("train", {}), dict):
        return
    train = data.setdefault("train", {}) if "output_dir" in data else data.get("train", {})
    if "output_dir" in train:
        warn_deprecated(located, ("train", "output_dir"), "the top-level `output_dir:`")
    elif "output_dir" not in data:
        message = "`output_dir:` is required: where checkpoints, adapter/ and library.log go (e.g. runs/train/NAME)"
        raise ConfigError([located.problem((), message)])
    if "output_dir" not in data:
        return
    top, nested = located.override_at(("output_dir",)), located.override_at(("train", "output_dir"))
    if "output_dir" in train and (top is None) == (nested is None):
        where = f"line {located.line(('train', 'output_dir'))}" if nested is None else repr(nested)
        message = f"output_dir is given twice: here and as train.output_dir ({where}); keep `output_dir`"
        raise ConfigError([located.problem(("output_dir",), message)])
    value = data.pop("output_dir")
    if "output_dir" in train and nested is not None:
        return  # the override of train.output_dir wins over the file's output_dir
    train["output_dir"] = value
    if ("output_dir",) in located.lines:
        located.lines[("train", "output_dir")] = located.lines[("output_dir",)]
    if top is not None:
        located.overrides[("train", "output_dir")] = top
