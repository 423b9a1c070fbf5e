"""Experiment trackers: ``train.report_to: none | tensorboard | trackio | wandb | mlflow`` (or a list of them).

The TRL recipes (sft, rm, dpo family, kto, grpo, rloo) report through transformers' own integrations: ``report_to``
goes to TRL unchanged, and :func:`tracker_env` points them at the output directory; :func:`adopt_trl` only swaps
transformers' trackio callback for one that also sets the group and keeps trackio's prints off stdout. rlaif's own
loops (PPO, ``rlaif loop``) log through :class:`Tracker`, with the names and steps of their metrics.jsonl rows.

Where each tracker writes, offline by default::

    tensorboard  <output_dir>/tensorboard/          (TENSORBOARD_LOGGING_DIR overrides)
    trackio      <output_dir>/trackio/ (rlaif loop: <loop dir>/trackio/), a local SQLite store (TRACKIO_DIR
                 overrides); nothing leaves the machine unless TRACKIO_SPACE_ID or TRACKIO_SERVER_URL is set
    wandb        <output_dir>/wandb/ (WANDB_DIR overrides); WANDB_MODE=offline keeps runs local, WANDB_API_KEY
                 logs in: credentials come from the environment only, never from a config file
    mlflow       MLflow's own tracking store (MLFLOW_TRACKING_URI and its credentials)

Light at import: each tracker's package loads when a run opens.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
import math
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rlaif.config import closest

log = logging.getLogger(__name__)

# Tracker name -> the package to install (also its module name).
TRACKERS: dict[str, str] = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb", "mlflow": "mlflow"}
CHOICES = ("none", *TRACKERS)
# Which trackers `make setup` installs; the others are the user's to install.
BUNDLED = ("tensorboard", "trackio")


def tracker_names(value: Any) -> list[str]:
    """``report_to`` as a list of tracker names: ``none`` (or null, or []) is no tracker; a name or a list of names.
    Raises ``ValueError`` naming the closest choice for an unknown name."""
    if value is None or value == "none":
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"report_to is a tracker name or a list of them ({', '.join(CHOICES)}); got {value!r}")
    if "none" in names and len(names) > 1:
        raise ValueError(f"report_to: 'none' means no tracker, so it cannot be listed with others: {names}")
    for name in names:
        if name not in CHOICES:
            raise ValueError(f"unknown tracker {name!r}{closest(name, CHOICES)}; choices: {', '.join(CHOICES)}")
    return [name for name in dict.fromkeys(names) if name != "none"]


def missing_trackers(names: list[str]) -> list[str]:
    """A message for each tracker whose package is not installed (checked before any model loads)."""
    return [
        f"{name} is not installed: pip install {TRACKERS[name]}"
        + (" (make setup installs it)" if name in BUNDLED else "")
        for name in names
        if importlib.util.find_spec(TRACKERS[name]) is None
    ]


def trackio_store() -> Path | None:
    """Where trackio writes in this process: trackio fixes its directory (TRACKIO_DIR) when first imported."""
    if "trackio.utils" in sys.modules:
        return Path(sys.modules["trackio.utils"].TRACKIO_DIR)
    return Path(os.environ["TRACKIO_DIR"]) if os.environ.get("TRACKIO_DIR") else None


@contextlib.contextmanager
def tracker_env(names: list[str], output_dir: Path, project: str, group: str | None) -> Iterator[None]:
    """Point the trackers' environment variables at ``output_dir`` for the duration of a run, where the user has
    not set them: transformers' integrations and the trackers' own clients read them."""
    wanted = {
        "TENSORBOARD_LOGGING_DIR": str(output_dir / "tensorboard") if "tensorboard" in names else None,
        "TRACKIO_DIR": str(output_dir / "trackio") if "trackio" in names else None,  # rlaif loop: set already
        "WANDB_PROJECT": project if "wandb" in names else None,
        "WANDB_RUN_GROUP": group if "wandb" in names else None,
        "WANDB_DIR": str(output_dir) if "wandb" in names else None,
        "MLFLOW_EXPERIMENT_NAME": project if "mlflow" in names else None,
        "MLFLOW_TAGS": json.dumps({"group": group}) if "mlflow" in names and group else None,
    }
    added = [key for key, value in wanted.items() if value is not None and key not in os.environ]
    for key in added:
        os.environ[key] = str(wanted[key])
    if "trackio" in names and (store := trackio_store()) and store != Path(os.environ["TRACKIO_DIR"]):
        log.warning("trackio was imported earlier in this process: its store stays %s", store)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
        if "trackio" in names:
            finish_trackio()


def finish_trackio() -> None:
    """Finish the trackio run left open, quietly: the TRL recipes' run, kept open through the final evaluation
    (:class:`_GroupedTrackio`), which trackio would otherwise finish at exit with a print on stdout."""
    trackio = sys.modules.get("trackio")
    if trackio is not None and trackio.context_vars.current_run.get() is not None:
        with quiet_stdout("trackio"):
            trackio.finish()


@contextlib.contextmanager
def quiet_stdout(logger: str) -> Iterator[None]:
    """A tracker client's prints (trackio prints its banner) go to the log, not to stdout: stdout carries results."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines():
            if line.strip():
                logging.getLogger(logger).info("%s", line)


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics row, by their names (bools, text and ``step`` left out)."""
    return {
        key: float(value)
        for key, value in row.items()
        if key != "step" and isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


class Tracker:
    """One run in each of ``names``: ``log(row, step)`` sends a metrics row's numbers under their own names."""

    def __init__(
        self,
        names: list[str],
        output_dir: Path,
        run_name: str,
        project: str,
        group: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.names = names
        self.sinks: list[Any] = []
        try:
            for name in names:
                self.sinks.append(SINKS[name](output_dir, run_name, project, group, config or {}))
        except BaseException:
            self.close()
            raise

    def log(self, row: Mapping[str, Any], step: int | None = None) -> None:
        values = scalars(row)
        step = int(row["step"]) if step is None else step
        if values:
            for sink in self.sinks:
                sink.log(values, step)

    def close(self) -> None:
        for sink in reversed(self.sinks):
            try:
                sink.close()
            except Exception as exc:  # a tracker that fails to close must not lose the run's own outputs
                log.warning("closing the %s run failed: %s", type(sink).__name__.strip("_").lower(), exc)
        self.sinks = []

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TensorBoard:
    def __init__(self, output_dir: Path, run_name: str, project: str, group: str | None, config: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = os.environ.get("TENSORBOARD_LOGGING_DIR") or str(output_dir / "tensorboard")
        self.writer = SummaryWriter(log_dir=log_dir)  # appends a new event file when a run resumes

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Trackio:
    def __init__(self, output_dir: Path, run_name: str, project: str, group: str | None, config: dict) -> None:
        with quiet_stdout("trackio"):
            import trackio

            self.run = trackio.init(
                project=project, name=run_name, group=group, config=config, resume="allow", embed=False
            )

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        import trackio

        with quiet_stdout("trackio"):
            self.run.finish()
        if trackio.context_vars.current_run.get() is self.run:  # else trackio finishes it again at exit, printing
            trackio.context_vars.current_run.set(None)


class _Wandb:
    def __init__(self, output_dir: Path, run_name: str, project: str, group: str | None, config: dict) -> None:
        import wandb  # WANDB_MODE (offline, disabled) and WANDB_API_KEY come from the environment

        # One id per output directory and run name: a resumed run, or the loop's run reopened each round, continues.
        key = f"{Path(output_dir).resolve()}/{run_name}".encode()
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or project,
            name=run_name,
            id=hashlib.sha1(key).hexdigest()[:16],
            resume="allow",
            group=os.environ.get("WANDB_RUN_GROUP") or group,
            dir=os.environ.get("WANDB_DIR") or str(output_dir),
            config=config,
        )

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class _Mlflow:
    def __init__(self, output_dir: Path, run_name: str, project: str, group: str | None, config: dict) -> None:
        import mlflow

        self.client = mlflow.MlflowClient()  # MLFLOW_TRACKING_URI (and its credentials) from the environment
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or project
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        # A run of the same name continues (a resumed run, the loop's run reopened each round).
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`mlflow.runName` = '{run_name}'")
        tags = {"mlflow.runName": run_name, **({"group": group} if group else {})}
        self.run_id = found[0].info.run_id if found else self.client.create_run(experiment_id, tags=tags).info.run_id

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.client.log_metric(self.run_id, key, value, step=step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


SINKS: dict[str, type] = {"tensorboard": _TensorBoard, "trackio": _Trackio, "wandb": _Wandb, "mlflow": _Mlflow}


class _GroupedTrackio:
    """The trackio module as transformers' callback uses it, with the run's group added to ``init`` and trackio's
    prints sent to the log."""

    def __init__(self, module: Any, group: str | None) -> None:
        self._module, self._group = module, group

    def init(self, **kwargs: Any) -> Any:
        with quiet_stdout("trackio"):
            return self._module.init(**kwargs, group=self._group, embed=False)

    def finish(self) -> None:
        """Deferred to the end of the recipe (:func:`tracker_env` finishes the run): the final evaluation runs after
        training ends, and TRL's GRPO/RLOO log their generation timings straight to ``trackio.log``, which fails
        once the run is finished ("Call trackio.init() before trackio.log()")."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def adopt_trl(trainer: Any, group: str | None) -> None:
    """Swap transformers' trackio callback (if ``report_to`` has trackio) for one that sets ``group`` and keeps
    trackio's prints off stdout; every other integration stays transformers' own."""
    from transformers.integrations import TrackioCallback

    if not any(isinstance(cb, TrackioCallback) for cb in trainer.callback_handler.callbacks):
        return
    trainer.remove_callback(TrackioCallback)
    callback = TrackioCallback()
    callback._trackio = _GroupedTrackio(callback._trackio, group)
    trainer.add_callback(callback)


class MetricsFollower:
    """Sends the rows appended to a metrics.jsonl file since it was opened to a :class:`Tracker`: what a tracker
    shows is what the file says, under the same names and steps (event lines and step-less rows left out)."""

    def __init__(self, path: Path, tracker: Tracker) -> None:
        self.path, self.tracker = path, tracker
        self.offset = path.stat().st_size if path.is_file() else 0  # a resumed run's earlier rows were sent then

    def pump(self) -> None:
        if not self.tracker.sinks or not self.path.is_file():
            return
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1  # whole lines only
        for line in data[:end].splitlines():
            row = json.loads(line)
            if isinstance(row.get("step"), int) and "event" not in row:
                self.tracker.log(row)
        self.offset += end
