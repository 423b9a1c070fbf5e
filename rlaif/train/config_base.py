"""The typed parts every training config shares: model, LoRA, data, the TrainingArguments fields (with the TRL
pass-through check) and the TRL-backed recipes (sft, rm, dpo family, kto). PPO's parts are in ``ppo_config``; import
either through ``rlaif.train.config``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from rlaif.schema import Quantize
from rlaif.train.trackers import missing_trackers, tracker_names


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    """The base model: ``name`` is a Hub id, a local directory or ``builtin:NAME``."""

    name: str
    revision: str | None = None
    quantize: Quantize = "nf4"
    double_quant: bool = True  # QLoRA's double quantization: quantizes the quantization constants too (~0.4 bit/param)
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    gradient_checkpointing: bool = True
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    chat_template: str | None = None  # a Jinja file, for a tokenizer that ships none
    # A LoRA adapter directory to continue training (e.g. the previous round of `rlaif loop`). TRL's DPO/KTO then
    # use a frozen copy of it as the reference, so round k is anchored to policy k-1 (iterative DPO).
    adapter: str | None = None


class LoraConfig(_Strict):
    """LoRA adapter shape; ``alpha`` and ``dropout`` are peft's ``lora_alpha`` / ``lora_dropout``."""

    r: int = Field(16, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    modules_to_save: list[str] | None = None
    use_rslora: bool = False
    use_dora: bool = False


class DataConfig(_Strict):
    """Where rows come from: ``path`` (pipeline run dir, dataset dir or file) or ``hub`` (a Hub dataset id)."""

    path: str | None = None
    hub: str | None = None
    name: str | None = None  # the Hub dataset's config name
    revision: str | None = None
    split: str = "train"
    format: str | None = None  # a human-preference format (rlaif.formats.human): hh_rlhf, ultrafeedback, shp...
    format_options: dict[str, Any] = Field(default_factory=dict)
    test_size: float | int = Field(0.1, ge=0)  # held out for eval (fraction or rows); 0 = no eval
    eval_split: str | None = None  # an existing split to evaluate on instead of a held-out part
    max_samples: int | None = Field(None, gt=0)
    seed: int = 42
    # Columns renamed after loading, before the format check: {chosen: completion} trains SFT on the chosen answers
    # of preference pairs (prompt/completion rows; the rejected column is then ignored).
    rename: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of data.path (run dir, dataset dir or file) and data.hub (a Hub id)")
        if self.format is not None:
            from rlaif.formats.human import CONVERTERS, converter_options

            if self.format not in CONVERTERS:
                raise ValueError(f"unknown format {self.format!r}; known: {sorted(CONVERTERS)}")
            if unknown := set(self.format_options) - set(converter_options(self.format)):
                raise ValueError(
                    f"format {self.format!r} takes no option(s) {sorted(unknown)}; "
                    f"it takes {list(converter_options(self.format))}"
                )
        return self


# Options rlaif sets itself, with where to set them instead (the pass-through must not fight the typed config).
MANAGED = {
    "output_dir": "train.output_dir",
    "use_cpu": "cpu: true or --cpu",
    "bf16": "cpu / model.compute_dtype",
    "fp16": "model.compute_dtype",
    "gradient_checkpointing": "model.gradient_checkpointing",
    "push_to_hub": "the top-level push_to_hub: REPO_ID",
    "resume_from_checkpoint": "--resume",
    "model_init_kwargs": "model:",
    "eval_strategy": "train.eval_steps",
    "save_strategy": "train.save_steps",
}
# Ranges of the shared training numbers, by field name: a field validator also covers a recipe's redefined default.
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_train_epochs": (lambda v: v > 0, "> 0"),
    "max_steps": (lambda v: v == -1 or v >= 1, "-1 (train num_train_epochs) or >= 1"),
    "per_device_train_batch_size": (lambda v: v >= 1, ">= 1"),
    "per_device_eval_batch_size": (lambda v: v >= 1, ">= 1"),
    "gradient_accumulation_steps": (lambda v: v >= 1, ">= 1"),
    "learning_rate": (lambda v: v > 0, "> 0"),
    "warmup_steps": (lambda v: v >= 0, ">= 0 (below 1: a fraction of the steps)"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "max_length": (lambda v: v >= 1, ">= 1 (tokens) or null"),
    "logging_steps": (lambda v: v >= 1, ">= 1"),
    "eval_steps": (lambda v: v >= 1, ">= 1 or null"),
    "save_steps": (lambda v: v >= 1, ">= 1"),
    "save_total_limit": (lambda v: v >= 1, ">= 1 or null"),
}
# Paged optimizers page optimizer state through CUDA unified memory; bitsandbytes 8-bit optimizers need CUDA too.
_CUDA_OPTIMIZERS = ("paged_", "_8bit")


class TrainConfig(_Strict):
    """TrainingArguments fields every recipe shares, named as TRL names them; ``trl`` passes any other through."""

    trl_class: ClassVar[str] = ""
    output_dir: str
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 4
    gradient_accumulation_steps: int = 4
    learning_rate: float = 2e-4
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.1  # below 1: a fraction of the total steps (transformers 5 replaced warmup_ratio)
    weight_decay: float = 0.0
    optim: str = "paged_adamw_32bit"
    max_length: int | None = 1024
    logging_steps: int = 10
    eval_steps: int | None = None  # None: evaluate once, at the end
    eval_on_start: bool = False
    save_steps: int = 100
    save_total_limit: int | None = 2
    seed: int = 42
    # Experiment trackers (rlaif.train.trackers): none, tensorboard, trackio, wandb, mlflow, or a list of them.
    report_to: list[str] = Field(default_factory=list)
    run_name: str | None = Field(None, min_length=1)  # the tracker run's name; default: output_dir's folder name
    # trackio project; W&B project and MLflow experiment unless WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME are set
    project: str = Field("rlaif", min_length=1)
    group: str | None = Field(None, min_length=1)  # runs shown together (rlaif loop: the loop's name)
    trl: dict[str, Any] = Field(default_factory=dict)

    def trl_config_path(self) -> str:
        """Dotted path of the TRL config class this section becomes."""
        return self.trl_class

    @field_validator("report_to", mode="before")
    @classmethod
    def _trackers(cls, value: Any) -> list[str]:
        names = tracker_names(value)
        if problems := missing_trackers(names):  # checked here, before any model loads
            raise ValueError("; ".join(problems))
        return names

    def tracker_run_name(self) -> str:
        return self.run_name or Path(self.output_dir).name

    @field_validator(*_RANGES)
    @classmethod
    def _in_range(cls, value: Any, info: ValidationInfo) -> Any:
        ok, expected = _RANGES[info.field_name]
        if value is not None and not ok(value):
            raise ValueError(f"must be {expected}, got {value!r}")
        return value

    def trl_kwargs(self) -> dict[str, Any]:
        """The typed fields as TRL keyword arguments (recipes add loss-specific ones)."""
        kwargs = self.model_dump(exclude={"trl", "group"})  # group: rlaif's (rlaif.train.trackers), not TRL's
        kwargs["run_name"] = self.tracker_run_name()
        return kwargs

    @model_validator(mode="after")
    def _check_pass_through(self, info: ValidationInfo) -> TrainConfig:
        # The light first pass (config_load) skips TRL's option names: importing TRL's config classes loads torch.
        light = bool(info.context and info.context.get("light"))
        fields = set() if light else trl_fields(self.trl_config_path())
        typed = set(type(self).model_fields) - {"trl"}
        problems = []
        for key in self.trl:
            if key in MANAGED:
                problems.append(f"trl.{key} is set by rlaif: use {MANAGED[key]}")
            elif key in typed:
                problems.append(f"trl.{key} is a typed field: set train.{key}")
            elif not light and key not in fields:
                problems.append(f"trl.{key} is not an option of {self.trl_config_path().rsplit('.', 1)[-1]}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class SFTTrain(TrainConfig):
    trl_class: ClassVar[str] = "trl.SFTConfig"
    learning_rate: float = 2e-4  # Zephyr QLoRA SFT: lr 2e-4, 4 x 2 accumulation, 2048 tokens
    gradient_accumulation_steps: int = 2
    max_length: int | None = 2048
    packing: bool = False
    completion_only_loss: bool | None = None  # None: loss on completions only for prompt/completion rows


class RMTrain(TrainConfig):
    trl_class: ClassVar[str] = "trl.RewardConfig"
    learning_rate: float = 1e-4
    center_rewards_coefficient: float | None = None  # Eisenstein et al. 2023: keeps rewards centred near 0
    # TRL's RewardTrainer uses a `margin` column whenever the dataset has one: -log sigmoid(r_c - r_r - margin)
    # (Llama 2, Touvron et al. 2023). make_pairs writes score differences there, so the recipe drops the column and
    # trains plain Bradley-Terry unless this is true; true requires the column.
    use_margin: bool = False
    # Cross-entropy against the data's `chosen_prob` (a judge's P(chosen better), make_pairs carries it) instead of a
    # hard label (RLAIF, Lee et al. 2023): -(q log sigmoid(d) + (1 - q) log sigmoid(-d)); rlaif.train.soft_labels.
    soft_labels: bool = False

    def trl_kwargs(self) -> dict[str, Any]:
        kwargs = super().trl_kwargs()
        for key in ("use_margin", "soft_labels"):  # rlaif's options (they decide the data and the loss), not TRL's
            kwargs.pop(key)
        return kwargs

    @model_validator(mode="after")
    def _one_pair_weighting(self) -> RMTrain:
        if self.use_margin and self.soft_labels:
            raise ValueError(
                "use_margin and soft_labels are two ways to weigh a pair (a score margin, a judge's probability): "
                "set one of them"
            )
        return self


# Direct-alignment losses: name -> (TRL config, TRL trainer, TRL arguments the name implies, reference).
# The reference-free ones (ORPO, SimPO, CPO) run on TRL's experimental trainers with no reference pass at all.
PREFERENCE_LOSSES: dict[str, tuple[str, str, dict[str, Any], str]] = {
    "sigmoid": ("trl.DPOConfig", "trl.DPOTrainer", {}, "DPO, Rafailov et al. 2023, arXiv:2305.18290"),
    "ipo": ("trl.DPOConfig", "trl.DPOTrainer", {}, "IPO, Azar et al. 2023, arXiv:2310.12036"),
    "robust": ("trl.DPOConfig", "trl.DPOTrainer", {}, "robust DPO, Chowdhury et al. 2024, arXiv:2403.00409"),
    "hinge": ("trl.DPOConfig", "trl.DPOTrainer", {}, "SLiC-HF, Zhao et al. 2023, arXiv:2305.10425"),
    "exo_pair": ("trl.DPOConfig", "trl.DPOTrainer", {}, "EXO, Ji et al. 2024, arXiv:2402.00856"),
    "nca_pair": ("trl.DPOConfig", "trl.DPOTrainer", {}, "NCA, Chen et al. 2024, arXiv:2402.05369"),
    "bco_pair": ("trl.DPOConfig", "trl.DPOTrainer", {}, "BCO, Jung et al. 2024, arXiv:2404.04656"),
    "sppo_hard": ("trl.DPOConfig", "trl.DPOTrainer", {}, "SPPO, Wu et al. 2024, arXiv:2405.00675"),
    "aot": ("trl.DPOConfig", "trl.DPOTrainer", {}, "AOT, Melnyk et al. 2024, arXiv:2406.05882"),
    "apo_zero": ("trl.DPOConfig", "trl.DPOTrainer", {}, "APO, D'Oosterlinck et al. 2024, arXiv:2408.06266"),
    "apo_down": ("trl.DPOConfig", "trl.DPOTrainer", {}, "APO, D'Oosterlinck et al. 2024, arXiv:2408.06266"),
    "discopop": ("trl.DPOConfig", "trl.DPOTrainer", {}, "DiscoPOP, Chris Lu et al. 2024, arXiv:2406.08414"),
    "sigmoid_norm": ("trl.DPOConfig", "trl.DPOTrainer", {}, "length-normalised DPO (TRL sigmoid_norm)"),
    "orpo": (
        "trl.experimental.orpo.ORPOConfig",
        "trl.experimental.orpo.ORPOTrainer",
        {},
        "ORPO, Hong et al. 2024, arXiv:2403.07691 (reference-free; beta is the paper's lambda)",
    ),
    "simpo": (
        "trl.experimental.cpo.CPOConfig",
        "trl.experimental.cpo.CPOTrainer",
        {"loss_type": "simpo", "cpo_alpha": 0.0},
        "SimPO, Meng et al. 2024, arXiv:2405.14734 (reference-free)",
    ),
    "cpo": (
        "trl.experimental.cpo.CPOConfig",
        "trl.experimental.cpo.CPOTrainer",
        {"loss_type": "sigmoid"},
        "CPO, Xu et al. 2024, arXiv:2401.08417 (reference-free)",
    ),
}


class DPOTrain(TrainConfig):
    learning_rate: float = 5e-6  # Zephyr QLoRA DPO
    beta: float = 0.01  # Zephyr: a small beta lets the policy move further from the SFT reference
    loss_type: str = "sigmoid"

    @field_validator("loss_type")
    @classmethod
    def _known_loss(cls, loss: str) -> str:
        if loss not in PREFERENCE_LOSSES:
            raise ValueError(f"unknown loss_type {loss!r}; choices: {', '.join(PREFERENCE_LOSSES)}")
        return loss

    # Conservative DPO with a per-pair label smoothing 1 - chosen_prob (Mitchell 2023): -(q log sigmoid(z) +
    # (1 - q) log sigmoid(-z)), z = beta * h; loss_type sigmoid only. TRL has no per-pair option (its label_smoothing
    # is global and the sigmoid loss ignores it): rlaif.train.soft_labels adds the term to TRL's DPOTrainer.
    soft_labels: bool = False

    @model_validator(mode="after")
    def _soft_labels_on_sigmoid(self) -> DPOTrain:
        if not self.soft_labels:
            return self
        problems = [] if self.loss_type == "sigmoid" else [f"loss_type is {self.loss_type!r}, it needs sigmoid"]
        for key, plain in (("ld_alpha", None), ("use_weighting", False), ("f_divergence_type", "reverse_kl")):
            if self.trl.get(key, plain) != plain:
                problems.append(f"trl.{key} must stay {plain!r}")
        if len(self.trl.get("loss_type") or ["sigmoid"]) != 1:
            problems.append("one loss only")
        if problems:
            raise ValueError(f"soft_labels (cDPO on the DPO sigmoid loss): {'; '.join(problems)}")
        return self

    def trl_config_path(self) -> str:
        return PREFERENCE_LOSSES[self.loss_type][0]

    def trl_kwargs(self) -> dict[str, Any]:
        kwargs = super().trl_kwargs()
        kwargs.pop("soft_labels")  # rlaif's option: it picks the trainer, not a DPOConfig field
        implied = PREFERENCE_LOSSES[self.loss_type][2]
        if self.trl_config_path() == "trl.DPOConfig":
            kwargs["loss_type"] = [self.loss_type]
        else:
            kwargs.pop("loss_type")
        return {**kwargs, **implied}


class KTOTrain(TrainConfig):
    trl_class: ClassVar[str] = "trl.KTOConfig"
    learning_rate: float = 5e-6
    beta: float = 0.1
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"  # KTO, Ethayarajh et al. 2024, arXiv:2402.01306
    desirable_weight: float = 1.0  # raise it when desirable rows are rarer (the paper keeps weight*count near 1-4/3)
    undesirable_weight: float = 1.0


# What --cpu / cpu: true sets when the file does not: a few small steps that fit 2 cores.
CPU_DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 2,
    "per_device_eval_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "max_length": 256,
    "logging_steps": 1,
}


class RecipeConfig(_Strict):
    """One training config file. Subclasses fix ``recipe`` and the type of ``train``."""

    recipe: str
    model: ModelConfig
    lora: LoraConfig | None = Field(default_factory=LoraConfig)  # null: full fine-tune (needs quantize: none)
    data: DataConfig
    train: TrainConfig
    cpu: bool = False  # the CPU profile: use_cpu, fp32, adamw_torch, small batches
    merge: bool = False  # also save the adapter merged into an unquantized base (output_dir/merged)
    push_to_hub: str | None = None  # a Hub model repo id for the adapter; the token comes from HF_TOKEN
    _source: str = PrivateAttr(default="<config>")  # the file it was read from, for error messages

    @model_validator(mode="after")
    def _profile(self) -> RecipeConfig:
        if self.lora is None and self.model.quantize != "none":
            raise ValueError("a quantized base trains only through LoRA: set lora, or model.quantize: none")
        if self.cpu:
            for key, value in CPU_DEFAULTS.items():
                if key not in self.train.model_fields_set:
                    setattr(self.train, key, value)
        return self


class SFTRecipe(RecipeConfig):
    recipe: Literal["sft"] = "sft"
    train: SFTTrain


class RMRecipe(RecipeConfig):
    recipe: Literal["rm"] = "rm"
    train: RMTrain


class DPORecipe(RecipeConfig):
    recipe: Literal["dpo"] = "dpo"
    train: DPOTrain


class KTORecipe(RecipeConfig):
    recipe: Literal["kto"] = "kto"
    train: KTOTrain


def import_object(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def trl_fields(dotted: str) -> set[str]:
    """The option names a TRL config class accepts (its dataclass fields, TrainingArguments' included)."""
    return {f.name for f in dataclasses.fields(import_object(dotted)) if f.init}
