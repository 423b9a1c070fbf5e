"""What a training run leaves on disk and on the Hub, for the TRL recipes and rl/ alike: checkpoints (which are
complete, which to resume from), adapter folders that name a portable base, metrics.jsonl rows, the model card, push.

Output directory of every recipe::

    <output_dir>/checkpoint-N/    checkpoints every save_steps (what --resume continues from)
    <output_dir>/adapter/         the LoRA adapter, tokenizer and README.md (the model card)
    <output_dir>/merged/          base + adapter as one plain model (merge: true)
    <output_dir>/metrics.jsonl    every log line, appended across resumed runs
    <output_dir>/eval.json        final eval metrics
"""

from __future__ import annotations

import json
import logging
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from rlaif import __version__
from rlaif.config import ConfigError
from rlaif.secrets import scrub_secrets
from rlaif.train.config import PREFERENCE_LOSSES

if TYPE_CHECKING:
    from rlaif.train.config import RecipeConfig
    from rlaif.train.data import TrainingData
    from rlaif.train.model import BuiltModel

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
    "grpo": {"eval_reward": "mean reward (weighted sum, held-out prompts)", "eval_kl": "KL to the reference"},
    "rloo": {"eval_reward": "mean reward (weighted sum, held-out prompts)", "eval_kl": "KL to the reference"},
}


@dataclass
class TrainResult:
    output_dir: Path
    adapter_dir: Path
    merged_dir: Path | None
    metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: str | None = None


# -- checkpoints ------------------------------------------------------------------------------------------------
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


# -- files ------------------------------------------------------------------------------------------------------
def portable_base(adapter_dir: Path, reference: str) -> None:
    """Make a saved adapter name its base as configured. peft records the directory the base was loaded from (for
    builtin:NAME, a path in this user's cache); the reference resolves on any machine through
    rlaif.models.resolve_model (reward_model_score does)."""
    config_file = adapter_dir / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = reference
    config_file.write_text(json.dumps(config, indent=2) + "\n")


def append_row(path: Path, row: dict[str, Any]) -> None:
    """One metrics.jsonl line (appended: resumed runs continue the same file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(row, default=float) + "\n")


def push(folder: Path, repo_id: str) -> None:
    """Upload ``folder`` (an adapter with its card) to the Hub model repo ``repo_id``, creating it when missing."""
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
    method = cfg.train.loss_type if cfg.recipe in ("dpo", "kto", "grpo") else cfg.recipe
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
