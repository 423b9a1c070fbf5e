"""Typed training configs: one per thing (model, LoRA, data, training), validated once, before any model loads.

A recipe file (``pipelines/train/*.yaml``) maps one to one onto a ``*Recipe`` object::

    recipe: dpo
    model: {name: builtin:smollm2-135m-instruct, quantize: nf4}
    lora:  {r: 16, alpha: 16, dropout: 0.05, target_modules: all-linear}
    data:  {path: runs/quickstart, test_size: 0.1}
    train: {output_dir: runs/train/dpo, beta: 0.01, loss_type: sigmoid, trl: {precompute_ref_log_probs: true}}

Keys equal the Python argument names of TRL/transformers/peft. ``train.trl`` passes any other option of the TRL
config class through, checked against that class's fields (TRL's config classes are imported to check them; torch
loads with them, models do not). Files are read by ``rlaif.train.config_load.load_config`` (file:line errors).
"""

from __future__ import annotations

import logging
from typing import Any

from rlaif.config import ConfigError
from rlaif.train.config_base import (
    _CUDA_OPTIMIZERS,
    CPU_DEFAULTS,
    MANAGED,
    PREFERENCE_LOSSES,
    DataConfig,
    DPORecipe,
    DPOTrain,
    KTORecipe,
    KTOTrain,
    LoraConfig,
    ModelConfig,
    Quantize,
    RecipeConfig,
    RMRecipe,
    RMTrain,
    SFTRecipe,
    SFTTrain,
    TrainConfig,
    import_object,
    trl_fields,
)
from rlaif.train.grpo_config import GRPORecipe, RLOORecipe
from rlaif.train.ppo_config import JudgeConfig, PPOArgs, PPORecipe, PPOTrain, RewardConfig

__all__ = [
    "CPU_DEFAULTS",
    "MANAGED",
    "PREFERENCE_LOSSES",
    "RECIPE_CONFIGS",
    "ConfigError",
    "DPORecipe",
    "DPOTrain",
    "DataConfig",
    "JudgeConfig",
    "KTORecipe",
    "KTOTrain",
    "LoraConfig",
    "ModelConfig",
    "PPOArgs",
    "PPORecipe",
    "PPOTrain",
    "Quantize",
    "RMRecipe",
    "RMTrain",
    "RecipeConfig",
    "RewardConfig",
    "SFTRecipe",
    "SFTTrain",
    "TrainConfig",
    "import_object",
    "trl_args",
    "trl_fields",
]
log = logging.getLogger(__name__)

RECIPE_CONFIGS: dict[str, type[RecipeConfig]] = {
    "sft": SFTRecipe,
    "rm": RMRecipe,
    "dpo": DPORecipe,
    "kto": KTORecipe,
    "ppo": PPORecipe,
    "grpo": GRPORecipe,
    "rloo": RLOORecipe,
}


def trl_args(cfg: RecipeConfig) -> Any:
    """The TRL config object for ``cfg``: typed fields, pass-through, then what rlaif manages (CPU profile)."""
    kwargs = {**cfg.train.trl_kwargs(), **cfg.train.trl}
    kwargs["gradient_checkpointing"] = cfg.model.gradient_checkpointing
    kwargs["save_strategy"] = "steps"
    kwargs["eval_strategy"] = "steps" if cfg.train.eval_steps else "no"
    kwargs["report_to"] = cfg.train.report_to or "none"
    if cfg.cpu:
        kwargs.update(use_cpu=True, bf16=False, fp16=False, dataloader_pin_memory=False)
        if any(marker in kwargs["optim"] for marker in _CUDA_OPTIMIZERS):
            log.info("CPU profile: optimizer %s needs CUDA, using adamw_torch", kwargs["optim"])
            kwargs["optim"] = "adamw_torch"
    elif cfg.model.compute_dtype in ("float16", "float32"):
        kwargs.update(bf16=False, fp16=cfg.model.compute_dtype == "float16")
    config_class = import_object(cfg.train.trl_config_path())
    try:
        return config_class(**kwargs)
    except (ValueError, TypeError) as exc:  # TRL/transformers check values (and combinations) in __post_init__
        message = f"train: {config_class.__name__} rejects these options: {exc}"
        raise ConfigError.one(cfg._source, message) from None
