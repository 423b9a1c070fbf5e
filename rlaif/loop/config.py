"""A loop file (``pipelines/loop_*.yaml``): which pipeline makes the data, which training config trains on it, how
many rounds, and which prompts each round sees. Validated as a whole — the loop file, the pipeline files and the
training config — before any model loads, with ``file:line`` errors.

    name: loop_quickstart
    rounds: 2
    prompts: {path: data/loop_prompts.jsonl, held_out: 8, per_round: 16}
    pipeline: {file: loop/preferences.yaml, policy: policy, prompts_step: prompts}
    train: {file: train/dpo.yaml, overrides: [train.max_steps=8]}
    eval: {file: loop/eval.yaml}

Paths inside the file are relative to it (like a pipeline's data paths).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from rlaif.config import (
    ConfigError,
    Located,
    Problem,
    apply_overrides,
    bool_slips,
    check_kind,
    closest,
    load_yaml,
    validation_problems,
)
from rlaif.secrets import check_no_secrets
from rlaif.train.trackers import missing_trackers, tracker_names


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptsConfig(_Strict):
    """The prompt pool: the first ``held_out`` prompts never train (they measure the win rate); each round trains on
    the next ``per_round`` of the rest (cycling through the pool), or on all of the rest when ``per_round`` is null."""

    path: str
    column: str = "prompt"
    held_out: int = Field(8, ge=1)
    per_round: int | None = Field(None, ge=1)


class PipelineRef(_Strict):
    file: str
    # The model whose `lora` the loop points at the previous round's adapter; null when the pipeline generates
    # nothing (direct RLAIF: PPO samples its own responses).
    policy: str | None = "policy"
    prompts_step: str = "prompts"  # the source step whose `path` the loop points at the round's prompts
    overrides: list[str] = Field(default_factory=list)


class TrainRef(_Strict):
    """One training stage. A ``policy`` stage starts from the latest policy adapter (``model.adapter``) and its
    adapter becomes the policy; other stages (a reward model) train fresh on the base. In ``overrides``, ``{NAME}``
    stands for the adapter directory of an earlier stage NAME of the same round (``reward.adapter={rm}``).

    An online RL stage (``recipe: grpo``, ``rloo`` or ``ppo``) trains on the round's dataset as prompts and samples
    its own completions: its data pipeline only makes prompts (``pipeline.policy: null``), and every other column of
    a row (a verifier's ``constraints``, a math ``answer``) reaches its reward (pipelines/loop_grpo_verified.yaml)."""

    name: str = "train"
    file: str
    recipe: str = "dpo"
    policy: bool = True
    overrides: list[str] = Field(default_factory=list)

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, recipe: str) -> str:
        from rlaif.train.config import RECIPE_CONFIGS

        if recipe not in RECIPE_CONFIGS:
            raise ValueError(
                f"unknown recipe {recipe!r}{closest(recipe, RECIPE_CONFIGS)}; choices: {', '.join(RECIPE_CONFIGS)}"
            )
        return recipe


class EvalRef(_Strict):
    """How each round's policy is measured on the held-out prompts. ``kind: judge`` (default): a pipeline that
    compares two policies — models ``candidate`` (policy k) and ``baseline`` (policy k-1, or the base policy with
    ``against: base``), a source step ``prompts_step``, and a pairwise judge step whose ``preference`` column says
    A (candidate) / B (baseline) / tie. ``kind: verifier``: a pipeline that measures one policy alone — model
    ``policy`` (the base for round 0, base + adapter k for round k) answers each held-out prompt once, and the
    ``verify_step`` (a ``verify`` step with ``unverifiable: keep``) says which answers pass. ``kind: reward_model``:
    the same, with a ``reward_step`` (a ``reward_model_score`` step, e.g. an RM adapter from ``rlaif train rm``)
    scoring each answer: the mean reward per policy."""

    kind: Literal["judge", "verifier", "reward_model"] = "judge"
    file: str
    verify_step: str = "verified"  # kind: verifier
    reward_step: str = "scored"  # kind: reward_model
    prompts_step: str = "prompts"
    judge_step: str = "judged"
    against: Literal["previous", "base"] = "previous"  # base: every round against round 0, read as progress
    overrides: list[str] = Field(default_factory=list)


class LoopConfig(_Strict):
    name: str
    rounds: int = Field(ge=1)
    prompts: PromptsConfig
    pipeline: PipelineRef
    train: list[TrainRef]  # one stage (a mapping) or several, in order: e.g. sft -> rm -> ppo
    eval: EvalRef | None = None
    output_dir: str | None = None  # default runs/<name>
    seed: int = 0
    # Experiment trackers (rlaif.train.trackers: none, tensorboard, trackio, wandb, mlflow or a list) for every
    # training stage and for the loop's own run of per-round figures; null: each stage keeps its file's report_to.
    # Stage runs are named <name>-round-<k> (-<stage> when there are several) and grouped under <name>.
    report_to: list[str] | None = None
    project: str = Field("rlaif", min_length=1)  # the trackers' project (trackio, W&B) / experiment (MLflow)
    _base_dir: Path = PrivateAttr(default_factory=lambda: Path("."))
    _located: Located | None = PrivateAttr(default=None)  # the file as read, for the line of each key

    @field_validator("report_to", mode="before")
    @classmethod
    def _trackers(cls, value: Any) -> list[str] | None:
        if value is None:
            return None
        names = tracker_names(value)
        if problems := missing_trackers(names):
            raise ValueError("; ".join(problems))
        return names

    @field_validator("train", mode="before")
    @classmethod
    def _stages(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _stage_names(self) -> LoopConfig:
        names = [stage.name for stage in self.train]
        if len(set(names)) != len(names):
            raise ValueError(f"train stages need distinct names; got {names}")
        if not any(stage.policy for stage in self.train):
            raise ValueError("no train stage has policy: true, so no round would make a new policy")
        return self

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def problem(self, where: tuple[str | int, ...], message: str) -> Problem:
        """A problem at ``where`` in the loop file (file and line when it was read from one)."""
        return self._located.problem(where, message) if self._located else Problem(None, None, message)

    def resolve(self, path: str) -> Path:
        return (self._base_dir / path).resolve()

    def run_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path("runs") / self.name


def load_loop_config(path: str | Path, overrides: list[str] | None = None) -> LoopConfig:
    """Read, override and validate a loop file, then check the files it names exist and make sense together."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([Problem(str(path), None, "loop file not found")])
    located = load_yaml(path)
    check_kind(located, "loop")  # a pipeline or training file given to `rlaif loop` says so, not 7 field errors
    apply_overrides(located, overrides or [])
    if not isinstance(located.data, dict):
        raise ConfigError([located.problem((), "expected a mapping with name, rounds, prompts, pipeline, train")])
    check_no_secrets(located)  # credentials come from the environment only
    if slips := bool_slips(located, LoopConfig):
        raise ConfigError(slips)
    try:
        cfg = LoopConfig.model_validate(located.data)
    except ValidationError as exc:
        errors = exc.errors()
        if isinstance(located.data.get("train"), dict):  # one stage written as a mapping: its errors say train.KEY
            errors = [
                {**e, "loc": ("train", *e["loc"][2:]) if e["loc"][:2] == ("train", 0) else e["loc"]} for e in errors
            ]
        raise ConfigError(validation_problems(located, errors, LoopConfig)) from None
    cfg._base_dir = path.parent.resolve()
    cfg._located = located
    problems = _check_files(cfg, located)
    if problems:
        raise ConfigError(problems)
    return cfg


def _check_files(cfg: LoopConfig, located: Located) -> list[Problem]:
    problems = []
    named = [(("prompts", "path"), cfg.prompts.path), (("pipeline", "file"), cfg.pipeline.file)]
    named += [
        (("train", i, "file") if isinstance(located.data.get("train"), list) else ("train", "file"), stage.file)
        for i, stage in enumerate(cfg.train)
    ]
    if cfg.eval:
        named.append((("eval", "file"), cfg.eval.file))
    for where, rel in named:
        if not cfg.resolve(rel).is_file():
            problems.append(located.problem(where, f"file not found: {cfg.resolve(rel)}"))
    prompts = cfg.resolve(cfg.prompts.path)
    if prompts.is_file():
        count = len(read_prompts(prompts, cfg.prompts.column))
        if count <= cfg.prompts.held_out:
            problems.append(
                located.problem(
                    ("prompts", "held_out"),
                    f"{prompts.name} has {count} prompts: held_out {cfg.prompts.held_out} leaves none to train on",
                )
            )
    return problems


def read_prompts(path: Path, column: str) -> list[dict[str, Any]]:
    """The prompt pool as records (jsonl); a bad line is a config error with its line number."""
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ConfigError([Problem(str(path), number, f"not JSON: {exc}")]) from None
        if not isinstance(record, dict) or column not in record:
            raise ConfigError([Problem(str(path), number, f"expected an object with a {column!r} field")])
        records.append(record)
    return records
