"""``rlaif loop``'s experiment trackers (loop file ``report_to:``; rlaif.train.trackers does the logging).

Every training stage of round k is one tracker run, ``<loop>-round-<k>`` (``-<stage>`` when a round has several
stages), in the group ``<loop>``: the loop names them through the stage's ``train.run_name`` / ``train.group``, and a
loop-level ``report_to`` / ``project`` replaces the stage file's own. The loop itself is one more run of that group,
named ``<loop>``, whose step is the round: round k's eval figures (``eval/...``: win rate or pass rate and their 95%
intervals, ``eval/vs_base/...``), rows made and kept (``data/...``), phase seconds (``seconds/...``) and the
round's training headline means (``train/...``); round 0 is the base policy. All of trackio's runs of one loop go to
one local store, ``<loop dir>/trackio`` (unless TRACKIO_DIR is set).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlaif.loop.config import LoopConfig, TrainRef
from rlaif.train.trackers import Tracker


def stage_run_name(cfg: LoopConfig, round_dir: Path, stage: TrainRef) -> str:
    """``<loop>-round-<k>``, plus ``-<stage>`` when the round trains several stages."""
    return f"{cfg.name}-{round_dir.name}" + (f"-{stage.name}" if len(cfg.train) > 1 else "")


def stage_overrides(cfg: LoopConfig, round_dir: Path, stage: TrainRef) -> list[str]:
    """The training-config overrides that make a stage's tracker run one of the loop's."""
    # JSON values: YAML reads them back as strings and lists, whatever the names look like ("2025", "true").
    overrides = [f"train.run_name={json.dumps(stage_run_name(cfg, round_dir, stage))}"]
    overrides.append(f"train.group={json.dumps(cfg.name)}")
    if cfg.report_to is not None:
        overrides += [f"train.report_to={json.dumps(cfg.report_to)}", f"train.project={json.dumps(cfg.project)}"]
    return overrides


def flatten(prefix: str, value: Any) -> dict[str, float]:
    """Numbers of a nested summary as ``prefix/key`` scalars; a [low, high] interval becomes ``key_low`` and
    ``key_high``; bools, text and nulls are left out."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(f"{prefix}/{key}", item).items()}
    if isinstance(value, list) and len(value) == 2 and all(_number(v) for v in value):
        return {f"{prefix}_low": float(value[0]), f"{prefix}_high": float(value[1])}
    return {prefix: float(value)} if _number(value) else {}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def round_metrics(row: dict[str, Any]) -> dict[str, float]:
    """What the loop's run logs for one row of summary.json (step: the round)."""
    train = {key: value for key, value in (row.get("train") or {}).items() if key != "stages"}
    data = {key: row[key] for key in ("prompts", "made", "kept") if key in row}
    return {
        **flatten("eval", row.get("eval") or {}),
        **flatten("data", data),
        **flatten("seconds", row.get("seconds") or {}),
        **flatten("train", train),
    }


class LoopTrackers:
    """The loop's own run: each round's figures are logged once, when the round is run (a re-run loop does not log
    the rounds it reads back). Opened for each round and closed again, so it never overlaps a stage's run."""

    def __init__(self, cfg: LoopConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.base_logged = False

    def round_done(self, rows: list[dict[str, Any]]) -> None:
        """Log the newest row of summary.json (and round 0, the base, before the first)."""
        names = self.cfg.report_to or []
        if not names:
            return
        todo = rows[-1:] if self.base_logged else [rows[0], rows[-1]]
        self.base_logged = True
        config = self.cfg.model_dump(mode="json")
        with Tracker(names, self.run_dir, self.cfg.name, self.cfg.project, self.cfg.name, config) as tracker:
            for row in todo:
                if metrics := round_metrics(row):
                    tracker.log(metrics, step=int(row["round"]))


def loop_env(run_dir: Path) -> Callable[[], None]:
    """One trackio store for the whole loop (``<loop dir>/trackio``; trackio reads TRACKIO_DIR once per process, at
    import), unless TRACKIO_DIR is set. Returns what undoes it."""
    if "TRACKIO_DIR" in os.environ:
        return lambda: None
    os.environ["TRACKIO_DIR"] = str(run_dir.resolve() / "trackio")
    return lambda: os.environ.pop("TRACKIO_DIR", None)
