"""``rlaif loop``: round after round, generate with the current policy, label, filter, pair, train the next policy.

Round k (1-based) generates with policy k-1 — the base model for k = 1, else the base plus round k-1's LoRA adapter,
served by the shared engine as a LoRA request (no merge) — runs the data pipeline on the round's prompts, hands the
accelerator to the trainer, trains adapter k (continuing adapter k-1), takes the engine back, and measures the win
rate of policy k against policy k-1 on held-out prompts with the eval pipeline (``report.judge_figures``: split
verdicts are ties, every rate with its 95% interval). Round 0 is the base policy (a row, nothing run); a round that
trained nothing is not evaluated. Layout of the run directory::

    prompts/held_out.jsonl, prompts/round-K.jsonl    the prompt pool, split once
    round-K/data/      the data pipeline's run (cache, stats, dataset)
    round-K/train/     the trainer's output (checkpoints, adapter/, metrics.jsonl)
    round-K/eval/      the eval pipeline's run
    round-K/stats.json the round's summary, written last: a round with it is finished and never repeated
    summary.json       round 0 (the base policy), then every finished round

Killed anywhere, a re-run continues: finished rounds are read back, the pipelines resume from their cache, the
trainer from its last checkpoint.
"""

from __future__ import annotations

import gc
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlaif.backends import Backend
from rlaif.config import ConfigError, Problem, load_yaml
from rlaif.loop.config import LoopConfig, TrainRef, read_prompts
from rlaif.loop.engines import EnginePool
from rlaif.loop.report import base_row, round_row, train_summary, trained, win_rate
from rlaif.loop.trackers import LoopTrackers, loop_env
from rlaif.loop.trackers import stage_overrides as tracker_overrides
from rlaif.loop.verifier_eval import POLICY_EVALS, against_base, policy_figures, verifier_pipeline
from rlaif.pipeline.progress import Reporter
from rlaif.pipeline.run import output_steps, run_pipeline
from rlaif.pipeline.spec import Pipeline, load_pipeline
from rlaif.train.config_load import load_config

log = logging.getLogger(__name__)


@dataclass
class RoundPaths:
    root: Path
    prompts: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def stats(self) -> Path:
        return self.root / "stats.json"


def round_paths(run_dir: Path, k: int) -> RoundPaths:
    return RoundPaths(run_dir / f"round-{k}", run_dir / "prompts" / f"round-{k}.jsonl")


def run_loop(
    cfg: LoopConfig,
    *,
    backends: dict[str, Backend] | None = None,
    reporter: Reporter | None = None,
    on_round: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run (or continue) every round; returns the rows of summary.json: round 0 (the base policy, ``base_row``),
    then one per round. ``backends`` (by model name) are the caller's: used as they are, never released or closed.
    ``on_round`` gets the rows after each finished round."""
    run_dir = cfg.run_dir()
    held_out = write_prompts(cfg, run_dir)
    validate(cfg, run_dir, held_out)
    pool = EnginePool(backends)
    rows: list[dict[str, Any]] = [base_row()]  # round 0: the starting policy, round 1's baseline
    trackers, undo_env = LoopTrackers(cfg, run_dir), loop_env(run_dir)  # report_to (rlaif.loop.trackers)
    try:
        if cfg.eval and cfg.eval.kind in POLICY_EVALS:  # the base measured alone, on the same held-out prompts
            rows[0]["eval"] = evaluate(cfg, round_paths(run_dir, 0), held_out, None, None, pool, reporter)
        previous: Path | None = None
        for k in range(1, cfg.rounds + 1):
            paths = round_paths(run_dir, k)
            earlier = paths.stats.is_file()
            if earlier:
                row = json.loads(paths.stats.read_text())
                log.info("round %d finished earlier: skipped", k)
            else:
                row = run_round(cfg, k, paths, pool, previous, held_out, reporter)
            previous = Path(row["adapter"]) if row.get("adapter") else previous
            if (row.get("eval") or {}).get("kind") in POLICY_EVALS:
                row["eval"]["vs_base"] = against_base(row["eval"], rows[0]["eval"])
            rows.append(row)
            (run_dir / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
            if not earlier:
                trackers.round_done(rows)
            if on_round:
                on_round(rows)
    finally:
        pool.close()
        undo_env()
    return rows


def write_prompts(cfg: LoopConfig, run_dir: Path) -> Path:
    """Split the pool once: held-out prompts, then each round's share (cycling when the pool runs out)."""
    pool = read_prompts(cfg.resolve(cfg.prompts.path), cfg.prompts.column)
    held, rest = pool[: cfg.prompts.held_out], pool[cfg.prompts.held_out :]
    out = run_dir / "prompts"
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "held_out.jsonl", held)
    size = cfg.prompts.per_round or len(rest)
    for k in range(1, cfg.rounds + 1):
        start = (k - 1) * size
        share = [rest[(start + i) % len(rest)] for i in range(size)]
        _write_jsonl(round_paths(run_dir, k).prompts, share)
    return out / "held_out.jsonl"


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if not path.is_file() or path.read_text() != text:  # unchanged bytes keep the pipeline caches valid
        path.write_text(text)


def validate(cfg: LoopConfig, run_dir: Path, held_out: Path) -> None:
    """Load round 1's pipelines and training configs before any model loads; every file:line problem at once."""
    paths = round_paths(run_dir, 1)
    problems: list[Problem] = []
    for load in (lambda: _data_problems(cfg, paths), lambda: _eval_problems(cfg, paths, held_out)):
        try:
            problems += load()
        except ConfigError as exc:
            problems += exc.problems
    for stage in cfg.train:
        try:
            load_config(
                cfg.resolve(stage.file), stage.recipe, stage_overrides(cfg, stage, paths, None, {}), cpu=_cpu()
            )
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)


def check_loop(cfg: LoopConfig) -> None:
    """``validate`` without a run directory (``rlaif validate``): the prompt split goes to a temporary one."""
    with tempfile.TemporaryDirectory(prefix="rlaif-validate-") as tmp:
        validate(cfg, Path(tmp), write_prompts(cfg, Path(tmp)))


def _data_problems(cfg: LoopConfig, paths: RoundPaths) -> list[Problem]:
    data = data_pipeline(cfg, paths, None)
    return _lora_problems(data, [cfg.pipeline.policy] if cfg.pipeline.policy else [])


def _eval_problems(cfg: LoopConfig, paths: RoundPaths, held_out: Path) -> list[Problem]:
    if not cfg.eval:
        return []
    verifier = cfg.eval.kind in POLICY_EVALS  # one policy measured alone: a verifier or a reward model
    evaluation = (
        verifier_pipeline(cfg, held_out, None) if verifier else eval_pipeline(cfg, paths, held_out, None, None)
    )
    problems = _lora_problems(evaluation, ["policy"] if verifier else ["candidate", "baseline"])
    key = POLICY_EVALS[cfg.eval.kind][0] if verifier else "judge_step"
    step = getattr(cfg.eval, key)
    if step not in output_steps(evaluation):
        problems.append(
            cfg.problem(
                ("eval", key),
                f"eval.{key} {step!r} is not an output step of "
                f"{evaluation.file.name}; outputs: {output_steps(evaluation)}",
            )
        )
    return problems


def _lora_problems(pipeline: Pipeline, names: list[str]) -> list[Problem]:
    located = load_yaml(pipeline.file, pipeline.text)  # for the line of each model in the pipeline file
    problems = []
    for name in names:
        spec = pipeline.models.get(name)
        if spec is None:
            message = f"the loop needs a model named {name!r}; models: {list(pipeline.models)}"
            problems.append(located.problem(("models",), message))
        elif spec.backend == "vllm" and not spec.options.get("enable_lora"):
            message = (
                f"model {name!r} serves LoRA adapters from round 2 on: set "
                "`enable_lora: true` and `max_lora_rank:` (>= the LoRA r)"
            )
            problems.append(located.problem(("models", name), message))
    return problems


def data_pipeline(cfg: LoopConfig, paths: RoundPaths, policy: Path | None) -> Pipeline:
    overrides = [*cfg.pipeline.overrides, f"steps.{cfg.pipeline.prompts_step}.path={paths.prompts.resolve()}"]
    if policy is not None and cfg.pipeline.policy:
        overrides.append(f"models.{cfg.pipeline.policy}.lora={policy.resolve()}")
    return load_pipeline(cfg.resolve(cfg.pipeline.file), overrides)


def eval_pipeline(
    cfg: LoopConfig, paths: RoundPaths, held_out: Path, candidate: Path | None, baseline: Path | None
) -> Pipeline:
    assert cfg.eval is not None
    overrides = [*cfg.eval.overrides, f"steps.{cfg.eval.prompts_step}.path={held_out.resolve()}"]
    for name, adapter in (("candidate", candidate), ("baseline", baseline)):
        if adapter is not None:
            overrides.append(f"models.{name}.lora={adapter.resolve()}")
    return load_pipeline(cfg.resolve(cfg.eval.file), overrides)


def stage_dir(cfg: LoopConfig, paths: RoundPaths, stage: TrainRef) -> Path:
    # One stage trains in round-K/train/; several each in round-K/train/<name>/.
    return paths.train if len(cfg.train) == 1 else paths.train / stage.name


def stage_overrides(
    cfg: LoopConfig,
    stage: TrainRef,
    paths: RoundPaths,
    policy: Path | None,
    adapters: dict[str, Path],
    dataset: Path | None = None,
) -> list[str]:
    """The stage's own overrides with ``{NAME}`` filled in, then the round's data, output and starting adapter."""
    overrides = []
    for override in stage.overrides:
        for other in cfg.train:
            # Before an earlier stage has run (validation), a placeholder path stands in for its adapter.
            adapter = adapters.get(other.name, stage_dir(cfg, paths, other) / "adapter")
            override = override.replace("{" + other.name + "}", str(adapter.resolve()))
        overrides.append(override)
    overrides += [
        *tracker_overrides(cfg, paths.root, stage),  # the stage's tracker run: <loop>-round-<k>, group <loop>
        f"data.path={(dataset or paths.data / 'dataset').resolve()}",
        f"output_dir={stage_dir(cfg, paths, stage).resolve()}",
    ]
    if stage.policy and policy is not None:
        overrides.append(f"model.adapter={policy.resolve()}")
    return overrides


def _cpu() -> bool:
    import torch

    return not torch.cuda.is_available()  # the loop trains where it generates: the CPU profile without a GPU


def run_round(
    cfg: LoopConfig,
    k: int,
    paths: RoundPaths,
    pool: EnginePool,
    previous: Path | None,
    held_out: Path,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """One round, phases timed: data (generate, label, filter), hand-off, train, hand-off, eval."""
    started = time.perf_counter()
    pipeline = data_pipeline(cfg, paths, previous)
    # A round trains on what its pipeline kept, even a partial run; a failed one (a step lost every record) stops it.
    backends = pool.backends_for(pipeline.models)
    data = run_pipeline(pipeline, run_dir=paths.data, backends=backends, reporter=reporter, allow_partial=True).check()
    [dataset] = data.datasets.values()
    kept = sum(data.rows.values())

    clock = time.perf_counter()
    released = pool.release()
    hand_off = time.perf_counter() - clock
    clock = time.perf_counter()
    adapter, train = train_round(cfg, paths, previous, dataset, kept)
    train_s = time.perf_counter() - clock
    clock = time.perf_counter()
    pool.reacquire(released)
    hand_off += time.perf_counter() - clock

    clock = time.perf_counter()
    wins = None
    if cfg.eval and trained(kept, train) is None:  # an untrained policy k is policy k-1: nothing to compare
        wins = evaluate(cfg, paths, held_out, adapter, previous, pool, reporter)
    eval_s = time.perf_counter() - clock
    times = {"train": train_s, "hand_off": hand_off, "eval": eval_s, "total": time.perf_counter() - started}
    row = round_row(k, data, kept, adapter, train, wins, times, released)
    paths.stats.write_text(json.dumps(row, indent=2) + "\n")  # last: the round's completion marker
    return row


def evaluate(
    cfg: LoopConfig,
    paths: RoundPaths,
    held_out: Path,
    adapter: Path | None,
    previous: Path | None,
    pool: EnginePool,
    reporter: Reporter | None,
) -> dict[str, Any]:
    """Round k's eval figures: the judge's verdicts of policy k (``adapter``) against its baseline, or, for
    ``kind: verifier`` or ``reward_model``, policy k's own figures (``adapter`` None: the base policy, round 0)."""
    assert cfg.eval is not None
    if cfg.eval.kind in POLICY_EVALS:
        evaluation = verifier_pipeline(cfg, held_out, adapter)
    else:
        baseline = previous if cfg.eval.against == "previous" else None  # None: the base model, no adapter
        evaluation = eval_pipeline(cfg, paths, held_out, adapter, baseline)
    result = run_pipeline(
        evaluation,
        run_dir=paths.eval,
        backends=pool.backends_for(evaluation.models),
        reporter=reporter,
        allow_partial=True,
    ).check()
    if cfg.eval.kind in POLICY_EVALS:
        return policy_figures(cfg, result)
    return {**win_rate(result, cfg.eval.judge_step), "against": cfg.eval.against}


def train_round(
    cfg: LoopConfig, paths: RoundPaths, previous: Path | None, dataset: Path, kept: int
) -> tuple[Path | None, dict[str, Any]]:
    """Run the round's stages in order on its dataset; a policy stage continues the latest policy adapter. Each
    resumes from its last checkpoint. With no rows to train on, policy k is policy k-1."""
    from rlaif.train.recipes import run_recipe

    if kept == 0:
        log.warning("%s: the pipeline kept no rows: no training this round", paths.root.name)
        return previous, {"skipped": "no rows kept"}
    policy, adapters, summaries = previous, {}, {}
    for stage in cfg.train:
        output = stage_dir(cfg, paths, stage)
        if not (output / "adapter" / "README.md").is_file():  # the model card is the trainer's last write
            overrides = stage_overrides(cfg, stage, paths, policy, adapters, dataset)
            run_recipe(
                load_config(cfg.resolve(stage.file), stage.recipe, overrides, cpu=_cpu()), resume=output.exists()
            )  # a killed stage continues from its checkpoint
            gc.collect()  # the trainer's model and optimizer go before the next stage or the engine
            _empty_accelerator_cache()
        adapters[stage.name] = output / "adapter"
        policy = output / "adapter" if stage.policy else policy
        summaries[stage.name] = train_summary(output)
    last_policy = [stage.name for stage in cfg.train if stage.policy][-1]
    # The table shows the stage that made the policy; stats.json keeps every stage.
    return policy, {**summaries[last_policy], "stages": summaries} if len(cfg.train) > 1 else summaries[last_policy]


def _empty_accelerator_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
