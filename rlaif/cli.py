"""The ``rlaif`` command line. Each command parses, delegates to the library, and prints; no logic lives here."""

from __future__ import annotations

import enum
import json
import typing
from pathlib import Path

import typer
from rich.table import Table

from rlaif import logs
from rlaif.cli_common import (
    FAILED,
    OK,
    USAGE,
    err_console,
    fail,
    log_to,
    out_console,
    set_verbosity,
    verbosity,
    with_verbosity,
)
from rlaif.schema import Quantize

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="AI-feedback preference data and alignment. Exit codes: 0 ok, 1 the run failed, 2 usage or config error.",
)
models_app = typer.Typer(no_args_is_help=True, help="Builtin models: list them, convert them ahead of use.")
app.add_typer(models_app, name="models")
# --- training sub-app (rlaif/train/cli.py; its module imports only typer, so --help stays fast) ---
from rlaif.train.cli import train_app  # noqa: E402

app.add_typer(train_app, name="train")
# --- end training sub-app ---
from rlaif.judge_eval_cli import judge_eval  # noqa: E402 - rlaif judge-eval (rlaif/judge_eval_cli.py)

app.command("judge-eval")(with_verbosity(judge_eval))
from rlaif.verify_cli import verify_command  # noqa: E402 - rlaif verify (rlaif/verify_cli.py)

app.command("verify")(with_verbosity(verify_command))
from rlaif.report.cli import report_command  # noqa: E402 - rlaif report (rlaif/report/cli.py)

app.command("report")(with_verbosity(report_command))
__all__ = ["FAILED", "OK", "USAGE", "app"]


class BackendName(enum.StrEnum):
    vllm = "vllm"
    hf = "hf"
    openai = "openai"


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        import rlaif

        try:
            number = version("rlaif")
        except PackageNotFoundError:  # run from a source tree that is not installed
            number = rlaif.__version__
        typer.echo(f"rlaif {number}")
        raise typer.Exit(OK)


@app.callback()
def main(
    ctx: typer.Context,
    verbose: int = typer.Option(
        0, "--verbose", "-v", count=True, show_default=False, help="Show library logs on stderr (-vv: all of them)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", show_default=False, help="Only results and errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, show_default=False, help="Print the version and exit."
    ),
) -> None:
    """-v / -q work before or after the subcommand."""
    set_verbosity(verbose, quiet, ctx)


@app.command()
@with_verbosity
def generate(
    model: str = typer.Option(..., help="Hub id, local directory, or builtin:NAME."),
    prompt: list[str] = typer.Option(..., help="A user message; repeat the option for a batch."),
    n: int = typer.Option(1, min=1, help="Completions per prompt."),
    temperature: float = typer.Option(0.7, min=0.0, help="Sampling temperature (0: greedy)."),
    top_p: float = typer.Option(
        1.0,
        min=0.0,
        max=1.0,
        help="Nucleus sampling: keep the smallest set of tokens whose probability adds up to this.",
    ),
    max_tokens: int = typer.Option(128, min=1, help="Most tokens generated per completion."),
    seed: int | None = typer.Option(None, help="Per-request seed, for reproducible samples."),
    system: str | None = typer.Option(None, help="Optional system message."),
    raw: bool = typer.Option(False, help="Send the prompt as-is, without the chat template."),
    backend: BackendName = typer.Option(BackendName.vllm, help="Generation backend."),
    base_url: str = typer.Option("http://127.0.0.1:8000/v1", help="openai backend: server URL."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="openai backend: env variable holding the API key."),
    as_json: bool = typer.Option(
        False, "--json", help="Print one JSON object: {model, results: [{prompt, ok, error, completions}]}."
    ),
) -> None:
    """Generate completions for one or more prompts and print them (stdout: the completions only; library logs
    need -v). Exit 1 when a prompt failed."""
    from rlaif.backends import load_backend
    from rlaif.models import ModelNotFoundError
    from rlaif.schema import GenerationParams

    logs.setup(verbosity(), bars=False)  # the engine's weight-loading bars too
    try:
        params = GenerationParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    options = {"base_url": base_url, "api_key_env": api_key_env} if backend is BackendName.openai else {}
    prompts = [p if raw else _conversation(p, system) for p in prompt]
    try:
        with load_backend(backend.value, model, **options) as engine:
            results = engine.generate(prompts, params)
    except ModelNotFoundError as exc:
        fail(str(exc), USAGE)
    rows = [
        {
            "prompt": text,
            "ok": result.ok,
            "error": None if result.ok else str(result.error),
            "completions": [
                {"text": c.text, "completion_tokens": c.completion_tokens, "finish_reason": c.finish_reason}
                for c in result.completions
            ],
        }
        for text, result in zip(prompt, results, strict=True)
    ]
    if as_json:
        typer.echo(json.dumps({"model": model, "results": rows}, indent=2, ensure_ascii=False))
    else:
        _print_completions(rows)
    if any(not row["ok"] for row in rows):
        raise typer.Exit(FAILED)


def _print_completions(rows: list[dict[str, typing.Any]]) -> None:
    console = out_console()
    for row in rows:
        console.rule(row["prompt"][:80], style="bold")
        if not row["ok"]:
            err_console().print(f"[red]error:[/red] {row['error']}", highlight=False)
        for i, completion in enumerate(row["completions"]):
            console.print(
                f"[cyan][{i}][/cyan] ({completion['completion_tokens']} tokens, {completion['finish_reason']})"
            )
            console.print(completion["text"], markup=False, highlight=False)


def _conversation(text: str, system: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": text}]


@models_app.command("list")
@with_verbosity
def models_list() -> None:
    """Builtin models and whether they are converted."""
    from rlaif.models import list_models

    table = Table("model", "state", "path")
    for row in list_models():
        table.add_row(row["name"], row["state"], row["path"])
    out_console().print(table)


@models_app.command("pull")
@with_verbosity
def models_pull(
    name: str = typer.Argument(..., help="builtin:NAME (or NAME)"),
    force: bool = typer.Option(False, help="Convert again even when already converted."),
) -> None:
    """Convert a builtin model into the cache (once; instant when already done)."""
    from rlaif.models import BUILTIN_PREFIX, ModelNotFoundError, prepare_builtin

    try:
        path = prepare_builtin(name.removeprefix(BUILTIN_PREFIX), force=force)
    except ModelNotFoundError as exc:
        fail(str(exc), USAGE)
    out_console().print(f"{BUILTIN_PREFIX}{name.removeprefix(BUILTIN_PREFIX)} ready at {path}", highlight=False)


@app.command()
@with_verbosity
def validate(
    files: list[Path] = typer.Argument(..., help="Pipeline, training or loop YAML file(s)."),
    as_json: bool = typer.Option(
        False, "--json", help="Print a JSON list: {file, ok, kind, summary, problems: [{file, line, message}]}."
    ),
) -> None:
    """Check rlaif YAML without running anything: a pipeline, a training config (`recipe:`) or a loop file (`rounds:`,
    with the pipeline and training files it names). Every problem, with file and line. Exit 2 when any has one."""
    from rlaif.config import ConfigError

    reports = []
    for file in files:
        try:
            kind, summary = _validated(file)
        except ConfigError as exc:
            problems = [{"file": p.file, "line": p.line, "message": p.message} for p in exc.problems]
            reports.append({"file": str(file), "ok": False, "kind": None, "summary": None, "problems": problems})
            if not as_json:
                console = err_console()
                console.print(f"[red]✗ {file}[/red] — ", end="", highlight=False)
                console.print(str(exc), markup=False, highlight=False, soft_wrap=True)  # file:line on one line
            continue
        reports.append({"file": str(file), "ok": True, "kind": kind, "summary": summary, "problems": []})
        if not as_json:
            out_console().print(f"[green]✓ {file}[/green] — {summary}", highlight=False, soft_wrap=True)
    if as_json:
        typer.echo(json.dumps(reports, indent=2, ensure_ascii=False))
    if not all(report["ok"] for report in reports):
        raise typer.Exit(USAGE)  # a config error, as from run, show, train and loop


def _validated(file: Path) -> tuple[str, str]:
    """Load ``file`` fully as the kind of rlaif YAML it is; its kind and one line on what it holds."""
    from rlaif.config import ConfigError, config_kind, load_yaml

    if not file.is_file():
        raise ConfigError.one(str(file), "file not found")
    kind = config_kind(load_yaml(file).data)
    if kind == "train":
        from rlaif.train.config_load import load_any_config

        cfg = load_any_config(file)
        return kind, f"training config: recipe {cfg.recipe}, model {cfg.model.name}"
    if kind == "loop":
        from rlaif.loop.config import load_loop_config
        from rlaif.loop.rounds import check_loop

        loop_cfg = load_loop_config(file)
        check_loop(loop_cfg)  # its pipelines and training configs, as `rlaif loop` checks them before round 1
        return kind, f"loop: {loop_cfg.rounds} rounds, train stages: {[s.name for s in loop_cfg.train]}"
    from rlaif.pipeline.spec import load_pipeline

    pipeline = load_pipeline(file)
    return "pipeline", f"pipeline: {len(pipeline.steps)} steps, models: {list(pipeline.models)}"


@app.command()
@with_verbosity
def run(
    file: Path = typer.Argument(..., help="Pipeline YAML file."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. steps.judge.temperature=0"),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore (and replace) the cache."),
    dry_run: int | None = typer.Option(
        None, "--dry-run", min=1, help="Push the first N (>= 1) records through; cache nothing."
    ),
    output_dir: Path | None = typer.Option(
        None,
        "--output-dir",
        help="Where the run writes (cache, stats, dataset/, library.log).",
        show_default="the file's output_dir, else runs/<name>",
    ),
    run_dir: Path | None = typer.Option(None, "--run-dir", hidden=True, help="Deprecated: --output-dir."),
    progress: bool = typer.Option(True, help="Progress bars (on stderr)."),
    allow_partial: bool = typer.Option(
        False, "--allow-partial", help="Accept (exit 0, save) a run that quarantined more than max_quarantined."
    ),
    retry_quarantined: bool = typer.Option(
        False, "--retry-quarantined", help="Retry every quarantined record, not only the transient failures."
    ),
    executor: str | None = typer.Option(
        None,
        "--executor",
        help="Where batches run: local (this process) or ray (a Ray cluster; see README 'Pipelines on Ray').",
        show_default="the file's executor, else local",
    ),
    address: str | None = typer.Option(
        None,
        "--address",
        help="The Ray cluster: auto (a running one), ray://HOST:PORT or HOST:PORT; implies --executor ray.",
        show_default="RAY_ADDRESS, else a local cluster for the run",
    ),
) -> None:
    """Validate, then run a pipeline: cached, resumable, every record accounted for. Ends with the outcome (ok,
    partial, failed, stopped); exit 0 only for ok or an accepted partial run, 1 when the run failed, 2 for a config
    error, 3 when a model reached its budget (raise it and re-run to continue from the cache).
    A run that is not accepted leaves the previous dataset as it was. Library logs go to OUTPUT_DIR/library.log."""
    from rlaif.config import ConfigError
    from rlaif.pipeline.executor import BatchLost, ExecutorError, choose_executor, local_run_dir
    from rlaif.pipeline.outcome import outcome_lines
    from rlaif.pipeline.progress import Reporter
    from rlaif.pipeline.push import PushError
    from rlaif.pipeline.run import default_run_dir, run_pipeline
    from rlaif.pipeline.spec import load_pipeline

    if run_dir is not None:
        if output_dir is not None:
            fail("give --output-dir only (--run-dir is its deprecated name)", USAGE)
        err_console().print("warning: --run-dir is deprecated: use --output-dir", style="yellow", highlight=False)
        output_dir = run_dir
    try:
        pipeline = load_pipeline(file, overrides or [])
    except ConfigError as exc:
        fail(str(exc), USAGE)
    try:  # the executor and the run directory (a path or a file:// URL), before anything runs
        chosen = choose_executor(pipeline.executor, executor, address)
        output_dir = local_run_dir(output_dir) if output_dir is not None else None
        where = output_dir or default_run_dir(pipeline)
    except ExecutorError as exc:
        fail(str(exc), USAGE, label="executor")
    quiet = verbosity() <= logs.QUIET
    if dry_run is None:
        log_to(where, bars=False)
    else:
        logs.setup(verbosity(), bars=False)
    out = out_console()
    reporter = Reporter(console=out, status=err_console(), bars=progress and not quiet, notes=not quiet)
    try:
        summary = run_pipeline(
            pipeline,
            run_dir=output_dir,
            fresh=fresh,
            dry_run=dry_run,
            reporter=reporter,
            allow_partial=allow_partial,
            retry_quarantined=retry_quarantined,
            executor=chosen,
        )
    except PushError as exc:
        fail(str(exc), FAILED, label="push failed")
    except ExecutorError as exc:  # ray missing, a cluster that cannot be reached: before any step ran
        fail(str(exc), USAGE, label="executor")
    except BatchLost as exc:  # finished batches are kept: a re-run resumes
        fail(str(exc), FAILED, label="executor")
    if dry_run is not None:
        for name, records in summary.samples.items():
            out.rule(f"{name}: first records of {summary.rows[name]}")
            for record in records:
                out.print_json(data=record, default=str)
    for name, path in summary.datasets.items():
        out.print(f"saved {name}: {summary.rows[name]} rows -> {path}", highlight=False, soft_wrap=True)
    if summary.pushed:
        out.print(f"pushed: {summary.pushed}", highlight=False)
    if dry_run is None:  # RUN/report.html (rlaif.report); a failure to draw it is a warning, never the run's
        from rlaif.report.cli import report_line

        report_line(summary.run_dir)
    colour = {"ok": "green", "partial": "yellow", "stopped": "yellow"}.get(summary.outcome.status, "red")
    for i, line in enumerate(outcome_lines(summary.outcome, summary.kept)):  # last: the outcome and why
        style = colour if i == 0 else None
        out.print(line, style=style, highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(summary.outcome.exit_code)


@app.command()
@with_verbosity
def show(file: Path = typer.Argument(..., help="Pipeline YAML file.")) -> None:
    """Print the DAG as text and as a mermaid diagram."""
    from rlaif.config import ConfigError
    from rlaif.pipeline.spec import load_pipeline

    try:
        pipeline = load_pipeline(file)
    except ConfigError as exc:
        fail(str(exc), USAGE)
    out = out_console()
    for name, spec in pipeline.steps.items():
        columns = pipeline.columns.get(name)
        source = f" <- {', '.join(spec.upstream)}" if spec.upstream else ""
        out.print(
            f"{name} ({spec.type}){source}  columns: {sorted(columns) if columns else 'unknown'}",
            highlight=False,
            markup=False,
        )
    lines = ["flowchart TD"] + [f'    {n}["{n}: {s.type}"]' for n, s in pipeline.steps.items()]
    lines += [f"    {u} --> {n}" for n, s in pipeline.steps.items() for u in s.upstream]
    out.print("\n```mermaid\n" + "\n".join(lines) + "\n```", highlight=False, markup=False)


@app.command()
@with_verbosity
def push(
    run_dir: Path = typer.Argument(..., help="A run's output_dir (its dataset/ is pushed) or a dataset directory."),
    repo: str = typer.Option(..., help="Hub dataset repo id, e.g. my-org/my-prefs."),
    private: bool = typer.Option(False, help="Create the repo private."),
) -> None:
    """Push a saved dataset (e.g. after a failed push). The token comes from HF_TOKEN or `hf auth login`."""
    from rlaif.pipeline.push import PushError, push_dataset

    dataset_dir = run_dir / "dataset" if (run_dir / "dataset").is_dir() else run_dir
    try:
        pushed = push_dataset(dataset_dir, repo, private=private, run_dir=run_dir)
    except PushError as exc:
        fail(str(exc), FAILED, label="push failed")
    out_console().print(f"pushed: {pushed}", highlight=False)


class PlanStage(enum.StrEnum):
    sft = "sft"
    rm = "rm"
    dpo = "dpo"
    ppo = "ppo"
    grpo = "grpo"
    rloo = "rloo"
    all = "all"


QuantizeName = enum.StrEnum("QuantizeName", {name: name for name in typing.get_args(Quantize)})  # typer's choices


class PlanFormat(enum.StrEnum):
    text = "text"
    md = "md"
    json = "json"


@app.command()
@with_verbosity
def plan(
    model: str = typer.Argument(
        None, help="Hub id, local directory, or builtin:NAME (only config.json is read); omit with --list."
    ),
    stage: PlanStage = typer.Option(PlanStage.all, help="Training stage, or all for a table of every stage."),
    gpu_mem: float = typer.Option(24.0, "--gpu-mem", help="GPU memory in GiB."),
    quantize: QuantizeName = typer.Option(QuantizeName.nf4, help="Base weights: bitsandbytes NF4, int8, or bf16."),
    lora_r: int = typer.Option(16, "--lora-r", min=1, help="LoRA rank (all linear layers)."),
    batch_size: int = typer.Option(
        4, "--batch-size", min=1, help="Per-device batch (pairs for rm/dpo, rollouts for ppo)."
    ),
    seq_len: int = typer.Option(1024, "--seq-len", min=1, help="Tokens per sequence (prompt + completion)."),
    num_generations: int = typer.Option(
        8, "--num-generations", min=1, help="grpo/rloo: completions per prompt, one group per micro-batch."
    ),
    gradient_checkpointing: bool = typer.Option(
        True,
        "--gradient-checkpointing/--no-gradient-checkpointing",
        help="Activations recomputed in the backward pass (less memory, ~30% slower).",
    ),
    max_model_len: int | None = typer.Option(
        None,
        "--max-model-len",
        min=1,
        help="vLLM's context for the generation phase.",
        show_default="the config's max_position_embeddings",
    ),
    params: str | None = typer.Option(
        None,
        "--params",
        help="Plan offline for a size (7B, 1.5B, 500M...): 1B/3B/8B/70B are Llama 3.x, other sizes scale the "
        "built-in table's nearest model (the output says which).",
        show_default="none: read the model's config.json",
    ),
    fmt: PlanFormat = typer.Option(PlanFormat.text, "--format", help="text (terminal), md (markdown) or json."),
    as_json: bool = typer.Option(False, "--json", help="Same as --format json."),
    list_models: bool = typer.Option(False, "--list", help="List the built-in (offline) architectures and exit."),
) -> None:
    """Estimate GPU memory per training stage (weights, adapters, optimizer, activations, KV cache) and the vLLM
    generation phase, by arithmetic on config.json: no model loads, no torch."""
    from rlaif.memory_plan import STAGES, PlanError, Settings, resolve_arch
    from rlaif.plan_report import model_table, render_plan

    output = "json" if as_json else fmt.value
    if list_models:
        typer.echo(model_table(output))
        return
    try:
        if not model and not params:
            raise PlanError("name a model (Hub id, directory, builtin:NAME), or pass --params SIZE, or --list")
        settings = Settings(
            quantize.value,
            lora_r,
            batch_size,
            seq_len,
            gradient_checkpointing,
            gpu_mem,
            max_model_len,
            num_generations,
        )
        arch, source = resolve_arch(model or "", params)
    except PlanError as exc:
        fail(str(exc), USAGE)
    stages = STAGES if stage is PlanStage.all else (stage.value,)
    label = model or f"--params {params}"
    typer.echo(render_plan(label, arch, source, stages, settings, output))  # plain echo: no rich wrapping


@app.command()
@with_verbosity
def loop(
    file: Path = typer.Argument(..., help="Loop YAML file, e.g. pipelines/loop_quickstart.yaml."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. rounds=3 prompts.per_round=32"),
    progress: bool = typer.Option(True, help="Progress bars of the pipelines (on stderr)."),
) -> None:
    """Generate with the current policy, label, filter, train the next one; repeat. Resumable: re-run to continue.
    Library logs go to OUTPUT_DIR/library.log. Exit 1 when a round's run failed, 2 for a config or data error."""
    from rlaif.config import ConfigError
    from rlaif.loop.config import load_loop_config
    from rlaif.loop.report import rounds_table
    from rlaif.loop.rounds import run_loop
    from rlaif.pipeline.progress import Reporter
    from rlaif.pipeline.run import RunFailed
    from rlaif.train.data import DataFormatError

    try:
        cfg = load_loop_config(file, overrides or [])
    except ConfigError as exc:
        fail(str(exc), USAGE)
    run_dir = cfg.run_dir()
    log_to(run_dir)
    out, quiet = out_console(), verbosity() <= logs.QUIET
    try:
        rows = run_loop(
            cfg,
            reporter=Reporter(console=out, status=err_console(), bars=progress and not quiet, notes=not quiet),
            on_round=lambda rows: out.print(rounds_table(rows)),
        )
    except (ConfigError, DataFormatError) as exc:
        fail(str(exc), USAGE)
    except RunFailed as exc:  # a round's pipeline run failed (rlaif.pipeline.outcome): its outcome, exit 1
        out.print(str(exc), highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(FAILED) from exc
    from rlaif.report.cli import report_line

    report_line(run_dir)  # RUN/report.html (rlaif.report); a failure to draw it is a warning, never the loop's
    trained = sum(1 for row in rows if row.get("round", 0) > 0)  # row 0 is the base policy, measured
    out.print(
        f"rounds: {trained}; per-round stats: {run_dir}/round-K/stats.json; all rounds: {run_dir / 'summary.json'}",
        highlight=False,
        soft_wrap=True,
    )
    if rows and rows[-1].get("adapter"):
        out.print(f"latest policy adapter: {rows[-1]['adapter']}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    app()
