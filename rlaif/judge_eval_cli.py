"""``rlaif judge-eval``: the judge check of one judge step of a pipeline, from the command line — its agreement with
human-labelled pairs, agreement when both orders agree, position consistency and parse failures, each with its 95%
interval and n (``rlaif.steps.judge_check``). The step runs as configured (model, template, logprobs, cot...), minus
its own ``check:``; nothing is labelled or cached.

Registered by rlaif/cli.py; a command module beside the loop in the layers (it uses the pipeline layer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from rlaif.cli_common import USAGE, fail, out_console

FileArg = Annotated[Path, typer.Argument(help="Pipeline YAML file with the judge step.")]
OverridesArg = Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. models.judge.model=M")]
StepOpt = Annotated[str, typer.Option("--step", help="The judge step (pairwise_judge, constitutional_judge).")]
DataOpt = Annotated[Path, typer.Option("--data", help="Human-preference file (any format rlaif.formats.human reads).")]
SampleOpt = Annotated[
    int | None, typer.Option("--sample", min=1, show_default="all", help="Pairs drawn from the file (seeded).")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Which pairs are drawn and which side is shown first.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")]


def judge_eval(
    file: FileArg,
    step: StepOpt,
    data: DataOpt,
    overrides: OverridesArg = None,
    sample: SampleOpt = None,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Score a pipeline's judge step on human preference labels: agreement, consistency, parse failures, 95% CIs."""
    # Imported here, not at the top: rlaif/cli.py imports this module, and --help must stay fast.
    from rlaif.config import ConfigError
    from rlaif.pipeline.runtime import EngineRuntime
    from rlaif.pipeline.spec import load_pipeline
    from rlaif.steps.judge_check import load_pairs, run_check

    try:
        pipeline = load_pipeline(file, overrides or [])
        judge = _judge_step(pipeline, step)
        if not data.is_file():
            raise ConfigError.one(str(data), "human-preference file not found")
    except ConfigError as exc:
        fail(str(exc), USAGE)
    records = load_pairs(data, sample, seed, getattr(judge.params, "prompt_column", "prompt"))
    runtime = EngineRuntime(pipeline.models, pipeline.seed)
    try:
        ctx = runtime.context(step)
        judge.setup(ctx)
        figures = {"step": step, "data": data.name, "seed": seed, **run_check(judge.process, ctx, records)}
    finally:
        runtime.close()
    if as_json:
        print(json.dumps(figures, indent=2))
        return
    out_console().print(figures_table(figures))


def _judge_step(pipeline: Any, name: str) -> Any:
    """A fresh copy of the judge step ``name`` without its own ``check`` (this command is that check)."""
    from rlaif.config import ConfigError

    judges = [n for n, s in pipeline.steps.items() if "check" in type(s.step.params).model_fields]
    spec = pipeline.steps.get(name)
    if spec is None or name not in judges:
        raise ConfigError.one(str(pipeline.file), f"no judge step {name!r} to check; judge steps: {judges}")
    params = spec.step.params.model_copy(update={"check": None})
    return type(spec.step)(name, params, spec.step.base_dir)


def figures_table(figures: dict[str, Any]) -> Table:
    from rlaif.rates import counts_text
    from rlaif.steps.judge_check import LABELS

    table = Table(
        "figure",
        "count",
        "rate",
        "95% CI",
        title=f"judge check: step {figures['step']!r} on {figures['n']} pairs of {figures.get('data', 'the sample')}",
        caption=f"judged {figures['judged']}, ties {figures['ties']}, quarantined {figures['quarantined'] or 0}",
    )
    for key, label in LABELS.items():
        value = figures[key]
        interval = value["ci95"]
        table.add_row(
            label,
            counts_text(value["successes"], value["n"]),
            "n/a" if value["rate"] is None else f"{value['rate']:.3f}",
            f"{interval[0]:.3f}-{interval[1]:.3f}" if interval else "n/a (n=0)",
        )
    if figures.get("mean_p_human") is not None:
        table.add_row("mean P(human-preferred)", "-", f"{figures['mean_p_human']:.3f}", "-")
    return table
