"""``rlaif train sft|rm|dpo|kto|ppo CONFIG.yaml [k=v ...] [--cpu] [--resume]``. Config files are read by the library
(``rlaif.train.config_load.load_config``, re-exported here for older imports).

Module import stays light (typer, yaml): ``rlaif --help`` builds this sub-app; pydantic configs load when a file is
read, torch/transformers when a recipe runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rlaif.config import ConfigError
from rlaif.train.config_load import load_config

__all__ = ["load_config", "train_app"]

train_app = typer.Typer(no_args_is_help=True, help="QLoRA training: sft, rm, dpo (+ variants), kto on TRL; ppo.")

OverridesArg = Annotated[
    list[str] | None, typer.Argument(help="key=value overrides, e.g. train.max_steps=10 output_dir=runs/try.")
]
CpuOpt = Annotated[bool, typer.Option("--cpu", help="CPU profile: use_cpu, fp32, adamw_torch, small batches.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the last complete checkpoint.")]


def _run(recipe: str, config: Path, overrides: list[str] | None, cpu: bool, resume: bool) -> None:
    from rlaif.cli_common import FAILED, USAGE, fail, log_to, out_console
    from rlaif.train.data import DataFormatError
    from rlaif.train.model import ChatTemplateError

    try:
        cfg = load_config(config, recipe, overrides or [], cpu=cpu)
    except ConfigError as exc:
        fail(str(exc), USAGE)
    log_to(Path(cfg.train.output_dir))  # library logs (transformers, bitsandbytes, torch) -> OUTPUT_DIR/library.log
    try:
        from rlaif.train.recipes import run_recipe

        result = run_recipe(cfg, resume=resume)
    except (ConfigError, DataFormatError, ChatTemplateError) as exc:
        fail(str(exc), USAGE)
    except KeyboardInterrupt:
        fail("interrupted; continue with --resume", FAILED)
    console = out_console()
    if result.resumed_from:
        console.print(f"resumed from {result.resumed_from}", highlight=False)
    console.print(f"adapter: {result.adapter_dir}", highlight=False)
    if result.merged_dir:
        console.print(f"merged model: {result.merged_dir}", highlight=False)
    for key, value in result.metrics.items():
        console.print(f"  {key}: {value:.4f}", highlight=False)
    from rlaif.report.cli import report_line

    report_line(result.output_dir)  # OUTPUT_DIR/report.html; a failure to draw it is only a warning


# One command per recipe, alike but for the help text: `rlaif train sft|rm|dpo|ppo|kto CONFIG [k=v...]`.
RECIPE_HELP = {
    "sft": "Supervised fine-tuning (messages, prompt/completion or text rows).",
    "rm": "Reward model on preference pairs; reports pairwise accuracy.",
    "dpo": "DPO and its loss family (ipo, robust, ..., orpo, simpo) on preference pairs; reports reward margins.",
    "ppo": "PPO on prompts with a rule, RM-adapter, reward-model or LLM-judge reward; one shared quantized base.",
    "kto": "KTO on unpaired good/bad completions (paired rows are unpaired first).",
    "grpo": "GRPO (TRL GRPOTrainer; loss_type dapo, dr_grpo, grpo, bnpo) on prompts: verifier/rule/RM/judge reward.",
    "rloo": "RLOO (TRL RLOOTrainer) on prompts with any reward: verifier, rule, reward model, judge.",
}


def _recipe_command(recipe: str) -> None:
    from rlaif.cli_common import with_verbosity

    example = f"pipelines/train/{recipe}.yaml"
    config_arg = Annotated[Path, typer.Argument(help=f"Training YAML with recipe: {recipe}, e.g. {example}.")]

    def command(config: Path, overrides: OverridesArg = None, cpu: CpuOpt = False, resume: ResumeOpt = False) -> None:
        _run(recipe, config, overrides, cpu, resume)

    command.__annotations__["config"] = config_arg  # per recipe: its own example file

    command.__doc__ = (
        f"{RECIPE_HELP[recipe]}\n\nExample: rlaif train {recipe} {example} train.max_steps=10 --cpu\n\n"
        "Writes OUTPUT_DIR/adapter, checkpoints and library.log (library logs). Exit 2 for a config or data error."
    )
    train_app.command(name=recipe)(with_verbosity(command))


for _recipe in RECIPE_HELP:
    _recipe_command(_recipe)
