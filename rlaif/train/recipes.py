"""Training recipes on TRL: SFT, reward model, DPO (and its loss family), KTO — one runner, a table of differences.

Every TRL recipe reads the same way (:func:`run_trl`): check the data (fails before any model loads) → find the
checkpoint to resume → build the model with THE builder → hand it to TRL's trainer with a peft config → train →
evaluate → save the adapter, a model card with provenance and metrics.jsonl (rlaif.train.outputs). What differs
per recipe — the TRL trainer, the model head, a data step — is one row of :data:`TRL_RECIPES`. PPO is rlaif's own
loop (rlaif.train.rl), not a TRL trainer.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from rlaif.config import ConfigError
from rlaif.train.config import PREFERENCE_LOSSES, PPORecipe, RecipeConfig, import_object, trl_args
from rlaif.train.data import TrainingData, load_training_data, reward_margin, soft_label_column
from rlaif.train.model import BuiltModel, Task, build_model, merge_adapter
from rlaif.train.outputs import TrainResult, append_row, model_card, portable_base, push, resume_checkpoint
from rlaif.train.trackers import adopt_trl, tracker_env


@dataclass(frozen=True)
class TrlRecipe:
    """How one TRL recipe differs from the shared shape of :func:`run_trl`."""

    summary: str
    trainer: Callable[[RecipeConfig], str]  # dotted path of the TRL trainer class for this config
    task: Task = "causal_lm"
    prepare: Callable[[TrainingData, RecipeConfig], TrainingData] | None = None  # after the data checks


def _margin_column(data: TrainingData, cfg: RecipeConfig) -> TrainingData:
    data = reward_margin(data, cfg.train.use_margin, cfg._source)
    return soft_label_column(data, cfg.train.soft_labels, cfg._source)


def _soft_label_column(data: TrainingData, cfg: RecipeConfig) -> TrainingData:
    return soft_label_column(data, getattr(cfg.train, "soft_labels", False), cfg._source)


SOFT_TRAINERS = {"rm": "rlaif.train.soft_labels.SoftRewardTrainer", "dpo": "rlaif.train.soft_labels.SoftDPOTrainer"}


def _trainer(default: Callable[[RecipeConfig], str]) -> Callable[[RecipeConfig], str]:
    """TRL's trainer, or its soft-label subclass (rlaif.train.soft_labels) with ``train.soft_labels: true``."""
    return lambda cfg: SOFT_TRAINERS[cfg.recipe] if getattr(cfg.train, "soft_labels", False) else default(cfg)


TRL_RECIPES: dict[str, TrlRecipe] = {
    "sft": TrlRecipe(
        "Supervised fine-tuning on messages, prompt/completion or text rows (TRL SFTTrainer).",
        lambda cfg: "trl.SFTTrainer",
    ),
    "rm": TrlRecipe(
        "A reward model: the base as a one-logit classifier, Bradley-Terry loss on preference pairs (TRL "
        "RewardTrainer); with ``train.use_margin`` the data's ``margin`` column enters the loss (Llama 2's margin "
        "loss), otherwise it is dropped; with ``train.soft_labels`` the loss is the cross-entropy against the data's "
        "``chosen_prob`` (RLAIF's soft labels). Reports pairwise accuracy (chosen scored above rejected) on the eval "
        "split.",
        _trainer(lambda cfg: "trl.RewardTrainer"),
        task="seq_cls",
        prepare=_margin_column,
    ),
    "dpo": TrlRecipe(
        "Direct alignment on preference pairs. ``train.loss_type`` picks the loss (config.PREFERENCE_LOSSES): DPO "
        "and its variants on TRL's DPOTrainer, or the reference-free ORPO / SimPO / CPO on TRL's experimental "
        "trainers; ``train.soft_labels`` smooths each pair by its ``chosen_prob`` (cDPO). Reports the implicit reward "
        "margin (chosen minus rejected) and accuracy on the eval split.",
        _trainer(lambda cfg: PREFERENCE_LOSSES[cfg.train.loss_type][1]),
        prepare=_soft_label_column,
    ),
    "kto": TrlRecipe(
        "KTO (Ethayarajh et al. 2024) on unpaired good/bad completions; paired rows are unpaired first. The "
        "reference is the base with the adapter disabled, as in DPO.",
        lambda cfg: "trl.KTOTrainer",
    ),
}


def run_trl(cfg: RecipeConfig, resume: bool = False) -> TrainResult:
    """Train ``cfg`` with its TRL recipe (a row of :data:`TRL_RECIPES`)."""
    recipe = TRL_RECIPES[cfg.recipe]
    data = load_training_data(cfg.data, cfg.recipe)  # bad rows fail here, before any model loads
    if recipe.prepare is not None:
        data = recipe.prepare(data, cfg)
    checkpoint = resume_checkpoint(cfg, resume)
    args = trl_args(cfg)  # TRL checks option values here, still before the model loads
    built = build_model(cfg.model, cfg.lora, task=recipe.task, cpu=cfg.cpu, require_chat_template=data.conversational)
    trainer_cls = import_object(recipe.trainer(cfg))
    # No ref_model: TRL wraps the base with peft_config and computes the reference with the adapter disabled, so
    # the reference costs no memory. The reference-free losses never compute one.
    trainer = trainer_cls(
        model=built.model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=built.tokenizer,
        peft_config=built.peft_config,
        callbacks=callbacks(cfg),
    )
    return train_and_save(trainer, cfg, built, data, checkpoint)


def ppo(cfg: PPORecipe, resume: bool = False) -> TrainResult:
    """PPO with a shared quantized base (rlaif's own loop: TRL 1.x has none); see rlaif.train.rl.ppo."""
    from rlaif.train.rl.ppo import ppo as run_ppo  # its own package: the loop is not a TRL trainer

    return run_ppo(cfg, resume=resume)


def group(cfg: RecipeConfig, resume: bool = False) -> TrainResult:
    """GRPO / RLOO on TRL's trainers with rlaif's reward spec; see rlaif.train.grpo."""
    from rlaif.train.grpo import run_group

    return run_group(cfg, resume, callbacks(cfg), train_and_save)  # type: ignore[arg-type]


RECIPES: dict[str, Callable[..., TrainResult]] = {
    **dict.fromkeys(TRL_RECIPES, run_trl),
    "ppo": ppo,
    "grpo": group,
    "rloo": group,
}


def run_recipe(cfg: RecipeConfig, resume: bool = False) -> TrainResult:
    """Run ``cfg`` with its recipe; refuses a GPU config on a machine without one before anything loads."""
    import torch

    if not cfg.cpu and not torch.cuda.is_available():
        raise ConfigError("no CUDA GPU here: run with --cpu (or cpu: true) for the CPU profile")
    train = cfg.train
    with tracker_env(train.report_to, Path(train.output_dir), train.project, train.group):
        return RECIPES[cfg.recipe](cfg, resume=resume)


# -- shared steps of every TRL recipe ---------------------------------------------------------------------------
class MetricsJsonl(TrainerCallback):
    """Appends every log (train and eval) to metrics.jsonl, plus a line marking each (re)start and its step."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _write(self, row: dict[str, Any]) -> None:
        append_row(self.path, row)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self._write({"event": "train_begin", "step": state.global_step, "max_steps": state.max_steps})

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs:
            self._write({"step": state.global_step, "epoch": state.epoch, **logs})


class StderrProgress(ProgressCallback):
    """transformers' progress bar, with its per-log metric dicts on stderr: stdout carries only results (the
    adapter path, the final metrics); every logged value is in metrics.jsonl and the report."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and self.training_bar is not None and logs:
            shown = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in logs.items() if k != "total_flos"}
            self.training_bar.write(str(shown), file=sys.stderr)


class StderrPrinter(PrinterCallback):
    """transformers' printer (used when bars are off), on stderr for the same reason."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs:
            print({k: v for k, v in logs.items() if k != "total_flos"}, file=sys.stderr)


def logs_to_stderr(trainer: Any) -> None:
    """Swap the trainer's stdout printers (ProgressCallback, PrinterCallback) for their stderr versions."""
    for printer, replacement in ((ProgressCallback, StderrProgress), (PrinterCallback, StderrPrinter)):
        if trainer.pop_callback(printer) is not None:
            trainer.add_callback(replacement)


def callbacks(cfg: RecipeConfig) -> list[TrainerCallback]:
    return [MetricsJsonl(Path(cfg.train.output_dir) / "metrics.jsonl")]


def _fp32_adapters_unless_bf16(trainer: Any, built: BuiltModel) -> None:
    # TRL casts the trainable params of a quantized model to bf16 (QLoRA paper), which assumes bf16 compute. With
    # fp32 compute (the CPU profile) a modules_to_save layer such as the reward model's score head then meets fp32
    # activations in one matmul ("expected m1 and m2 to have the same dtype" on CPU), and bf16 weights drop small
    # updates; with fp16 AMP the grad scaler refuses fp16/bf16 params. Trainable params stay fp32 there.
    import torch

    if built.quantize == "none" or built.dtype == torch.bfloat16:
        return
    for param in trainer.model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def train_and_save(
    trainer: Any, cfg: RecipeConfig, built: BuiltModel, data: TrainingData, checkpoint: str | None
) -> TrainResult:
    """Train (from ``checkpoint`` if given), evaluate on the eval split, save adapter, card, eval.json; merge and
    push when asked."""
    adopt_trl(trainer, cfg.train.group)  # the tracker run's group; trackio's prints off stdout
    logs_to_stderr(trainer)
    _fp32_adapters_unless_bf16(trainer, built)
    trainer.train(resume_from_checkpoint=checkpoint)
    metrics = {k: v for k, v in trainer.evaluate().items() if _finite(v)} if data.eval is not None else {}
    output_dir = Path(cfg.train.output_dir)
    adapter_dir = output_dir / "adapter"
    trainer.save_model(str(adapter_dir))
    built.tokenizer.save_pretrained(str(adapter_dir))
    portable_base(adapter_dir, cfg.model.name)
    (output_dir / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    card = model_card(cfg, built, data, metrics, checkpoint, trainer.args)
    (adapter_dir / "README.md").write_text(card)
    merged_dir = None
    if cfg.merge:
        merged_dir = merge_adapter(cfg.model, adapter_dir, output_dir / "merged", task=built.task, cpu=cfg.cpu)
        (merged_dir / "README.md").write_text(card)
    if cfg.push_to_hub:
        push(adapter_dir, cfg.push_to_hub)
    return TrainResult(output_dir, adapter_dir, merged_dir, metrics, checkpoint)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
