"""Training recipes on TRL: SFT, reward model, DPO (and its loss family), KTO — each a top-to-bottom function.

Every recipe reads the same way: check the data (fails before any model loads) → find the checkpoint to resume →
build the model with THE builder → hand it to TRL's trainer with a peft config → train → evaluate → save the
adapter, a model card with provenance and metrics.jsonl. Output directory::

    <output_dir>/checkpoint-N/    TRL checkpoints every save_steps (what --resume continues from)
    <output_dir>/adapter/         the LoRA adapter, tokenizer and README.md (the model card)
    <output_dir>/merged/          base + adapter as one plain model (merge: true)
    <output_dir>/metrics.jsonl    every log line, appended across resumed runs
    <output_dir>/eval.json        final eval metrics
"""

from __future__ import annotations

import json
import logging
import math
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainerCallback

from rlaif import __version__
from rlaif.secrets import scrub_secrets
from rlaif.train.config import (
    PREFERENCE_LOSSES,
    ConfigError,
    DPORecipe,
    KTORecipe,
    PPORecipe,
    RecipeConfig,
    RMRecipe,
    SFTRecipe,
    import_object,
    trl_args,
)
from rlaif.train.data import TrainingData, load_training_data, reward_margin
from rlaif.train.model import BuiltModel, build_model, merge_adapter

log = logging.getLogger(__name__)
# Headline eval metrics per recipe, as TRL logs them, with the name the model card gives them.
HEADLINE = {
    "sft": {"eval_loss": "eval loss", "eval_mean_token_accuracy": "token accuracy"},
    "rm": {"eval_accuracy": "pairwise accuracy", "eval_margin": "reward margin"},
    "dpo": {"eval_rewards/margins": "reward margin", "eval_rewards/accuracies": "reward accuracy"},
    "kto": {"eval_rewards/margins": "reward margin", "eval_kl": "KL"},
    "ppo": {
        "eval_score": "mean reward (policy)",
        "eval_score_reference": "mean reward (reference)",
        "eval_kl": "KL to the reference",
    },
}


@dataclass
class TrainResult:
    output_dir: Path
    adapter_dir: Path
    merged_dir: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: str | None = None


def sft(cfg: SFTRecipe, resume: bool = False) -> TrainResult:
    """Supervised fine-tuning on messages, prompt/completion or text rows (TRL SFTTrainer)."""
    data = load_training_data(cfg.data, "sft")  # bad rows fail here, before any model loads
    checkpoint = resume_checkpoint(cfg, resume)
    args = trl_args(cfg)  # TRL checks option values here, still before the model loads
    built = build_model(cfg.model, cfg.lora, cpu=cfg.cpu, require_chat_template=data.conversational)
    from trl import SFTTrainer

    trainer = SFTTrainer(
        model=built.model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=built.tokenizer,
        peft_config=built.peft_config,
        callbacks=callbacks(cfg),
    )
    return train_and_save(trainer, cfg, built, data, checkpoint)


def rm(cfg: RMRecipe, resume: bool = False) -> TrainResult:
    """A reward model: the base as a one-logit classifier, Bradley-Terry loss on preference pairs (TRL
    RewardTrainer); with ``train.use_margin`` the data's ``margin`` column enters the loss (Llama 2's margin loss),
    otherwise it is dropped. Reports pairwise accuracy (chosen scored above rejected) on the eval split."""
    data = reward_margin(load_training_data(cfg.data, "rm"), cfg.train.use_margin, cfg._source)
    checkpoint = resume_checkpoint(cfg, resume)
    args = trl_args(cfg)  # TRL checks option values here, still before the model loads
    built = build_model(cfg.model, cfg.lora, task="seq_cls", cpu=cfg.cpu, require_chat_template=data.conversational)
    from trl import RewardTrainer

    trainer = RewardTrainer(
        model=built.model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=built.tokenizer,
        peft_config=built.peft_config,
        callbacks=callbacks(cfg),
    )
    return train_and_save(trainer, cfg, built, data, checkpoint)


def dpo(cfg: DPORecipe, resume: bool = False) -> TrainResult:
    """Direct alignment on preference pairs. ``train.loss_type`` picks the loss (config.PREFERENCE_LOSSES): DPO and
    its variants on TRL's DPOTrainer, or the reference-free ORPO / SimPO / CPO on TRL's experimental trainers.
    Reports the implicit reward margin (chosen minus rejected) and accuracy on the eval split."""
    data = load_training_data(cfg.data, "dpo")
    checkpoint = resume_checkpoint(cfg, resume)
    args = trl_args(cfg)  # TRL checks option values here, still before the model loads
    built = build_model(cfg.model, cfg.lora, cpu=cfg.cpu, require_chat_template=data.conversational)
    trainer_cls = import_object(PREFERENCE_LOSSES[cfg.train.loss_type][1])
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


def kto(cfg: KTORecipe, resume: bool = False) -> TrainResult:
    """KTO (Ethayarajh et al. 2024) on unpaired good/bad completions; paired rows are unpaired first. The reference
    is the base with the adapter disabled, as in DPO."""
    data = load_training_data(cfg.data, "kto")
    checkpoint = resume_checkpoint(cfg, resume)
    args = trl_args(cfg)  # TRL checks option values here, still before the model loads
    built = build_model(cfg.model, cfg.lora, cpu=cfg.cpu, require_chat_template=data.conversational)
    from trl import KTOTrainer

    trainer = KTOTrainer(
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
    """PPO with a shared quantized base (rlaif's own loop: TRL 1.x has none); see rlaif.train.ppo."""
    from rlaif.train.ppo import ppo as run_ppo  # its own module: the loop is not a TRL trainer

    return run_ppo(cfg, resume=resume)


RECIPES: dict[str, Callable[..., TrainResult]] = {"sft": sft, "rm": rm, "dpo": dpo, "kto": kto, "ppo": ppo}


def run_recipe(cfg: RecipeConfig, resume: bool = False) -> TrainResult:
    """Run ``cfg`` with its recipe; refuses a GPU config on a machine without one before anything loads."""
    import torch

    if not cfg.cpu and not torch.cuda.is_available():
        raise ConfigError("no CUDA GPU here: run with --cpu (or cpu: true) for the CPU profile")
    return RECIPES[cfg.recipe](cfg, resume=resume)


# -- shared steps of every recipe -------------------------------------------------------------------------------
class MetricsJsonl(TrainerCallback):
    """Appends every log (train and eval) to metrics.jsonl, plus a line marking each (re)start and its step."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _write(self, row: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(row, default=float) + "\n")

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self._write({"event": "train_begin", "step": state.global_step, "max_steps": state.max_steps})

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs:
            self._write({"step": state.global_step, "epoch": state.epoch, **logs})


def callbacks(cfg: RecipeConfig) -> list[TrainerCallback]:
    return [MetricsJsonl(Path(cfg.train.output_dir) / "metrics.jsonl")]


_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoints whose trainer_state.json (written last by the Trainer) parses, oldest first. A process killed
    while saving leaves a checkpoint dir without it, which transformers' get_last_checkpoint would still pick."""
    found = []
    for path in output_dir.glob("checkpoint-*"):
        match = _CHECKPOINT.match(path.name)
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def resume_checkpoint(cfg: RecipeConfig, resume: bool) -> str | None:
    """The checkpoint to continue from with ``--resume``; without it, refuse to train over an earlier run."""
    output_dir = Path(cfg.train.output_dir)
    checkpoints = complete_checkpoints(output_dir) if output_dir.is_dir() else []
    if resume:
        if not checkpoints:
            log.warning("--resume: no complete checkpoint in %s, starting from step 0", output_dir)
        return str(checkpoints[-1]) if checkpoints else None
    if checkpoints or (output_dir / "adapter").exists():
        raise ConfigError(
            f"{output_dir} holds an earlier run: pass --resume to continue it, or choose another train.output_dir"
        )
    return None


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
    _fp32_adapters_unless_bf16(trainer, built)
    trainer.train(resume_from_checkpoint=checkpoint)
    metrics = {k: v for k, v in trainer.evaluate().items() if _finite(v)} if data.eval is not None else {}
    output_dir = Path(cfg.train.output_dir)
    adapter_dir = output_dir / "adapter"
    trainer.save_model(str(adapter_dir))
    built.tokenizer.save_pretrained(str(adapter_dir))
    _portable_base(adapter_dir, cfg.model.name)
    (output_dir / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    card = model_card(cfg, built, data, metrics, checkpoint, trainer.args)
    (adapter_dir / "README.md").write_text(card)
    merged_dir = None
    if cfg.merge:
        merged_dir = merge_adapter(cfg.model, adapter_dir, output_dir / "merged", task=built.task, cpu=cfg.cpu)
        (merged_dir / "README.md").write_text(card)
    if cfg.push_to_hub:
        _push(adapter_dir, cfg.push_to_hub)
    return TrainResult(output_dir, adapter_dir, merged_dir, metrics, checkpoint)


def _portable_base(adapter_dir: Path, reference: str) -> None:
    # peft records the directory the base was loaded from (for builtin:NAME, a path in this user's cache); the
    # reference as configured resolves on any machine through rlaif.models.resolve_model (reward_model_score does).
    config_file = adapter_dir / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = reference
    config_file.write_text(json.dumps(config, indent=2) + "\n")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _push(folder: Path, repo_id: str) -> None:
    from huggingface_hub import HfApi

    api = HfApi()  # the token comes from HF_TOKEN or `hf auth login`, never from the config
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model")


# -- model card -------------------------------------------------------------------------------------------------
def scrub(text: str) -> str:
    """Model cards never carry a secret: see rlaif.secrets."""
    return scrub_secrets(text)


def model_card(
    cfg: RecipeConfig,
    built: BuiltModel,
    data: TrainingData,
    metrics: dict[str, float],
    resumed_from: str | None,
    args: Any,
) -> str:
    """README.md of the adapter: Hub front matter, provenance (base, data and its fingerprint), metrics, config."""
    import peft
    import transformers
    import trl

    hub_base = built.resolved == built.base and not Path(built.base).expanduser().exists()  # a Hub id
    front = {
        "base_model": built.base if hub_base else None,
        "library_name": "peft",
        "tags": ["rlaif", "trl", cfg.recipe, "lora"] + (["qlora"] if built.quantize != "none" else []),
    }
    method = cfg.train.loss_type if cfg.recipe in ("dpo", "kto") else cfg.recipe
    paper = f", {PREFERENCE_LOSSES[method][3]}" if cfg.recipe == "dpo" else ""
    provenance = _provenance(built, data, resumed_from, args)
    sections = [
        f"# {Path(cfg.train.output_dir).name}",
        f"A LoRA adapter trained with rlaif's `{cfg.recipe}` recipe (loss: `{method}`{paper}).",
        "## Provenance\n\n" + "\n".join(f"- {k}: `{v}`" for k, v in provenance.items()),
        "## Eval metrics\n\n" + _metrics_section(cfg.recipe, metrics),
        "## Config\n\n```yaml\n" + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False) + "```",
        f"## Versions\n\nrlaif {__version__}, trl {trl.__version__}, transformers {transformers.__version__}, "
        f"peft {peft.__version__}, Python {platform.python_version()}.",
    ]
    meta = yaml.safe_dump({k: v for k, v in front.items() if v is not None}, sort_keys=False)
    return scrub(f"---\n{meta}---\n\n" + "\n\n".join(sections) + "\n")


def _metrics_section(recipe: str, metrics: dict[str, float]) -> str:
    if not metrics:
        return "No eval split."
    rows = [f"| {label} | {metrics[key]:.4f} |" for key, label in HEADLINE[recipe].items() if key in metrics]
    table = "| metric | value |\n| --- | ---: |\n" + "\n".join(rows) + "\n\n" if rows else ""
    return table + "```json\n" + json.dumps(metrics, indent=2) + "\n```"


def _provenance(built: BuiltModel, data: TrainingData, resumed_from: str | None, args: Any) -> dict[str, Any]:
    rows = {
        "base model": built.base,
        "loaded from": built.resolved,
        "quantization": built.quantize,
        "compute dtype": str(built.dtype).removeprefix("torch."),
        "device": "cpu" if args.use_cpu else "cuda",
        "mixed precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "none",
        "optimizer": args.optim,
    }
    rows.update({f"data {k.replace('_', ' ')}": v for k, v in data.provenance.items() if v not in (None, {}, "")})
    rows["data format"] = data.format
    if resumed_from:
        rows["resumed from"] = resumed_from
    return rows
