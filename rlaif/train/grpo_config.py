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


class GroupTrain(TrainConfig):
    """What GRPO and RLOO share: a group of ``num_generations`` completions per prompt, sampled by TRL's own
    generation (``rollout: hf``); the generation batch (per_device_train_batch_size x gradient_accumulation_steps)
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
    rollout: Literal["hf"] = "hf"  # TRL's own generation (transformers); vLLM rollouts through rlaif's engine: next

    def trl_kwargs(self) -> dict[str, Any]:
        kwargs = super().trl_kwargs()
        for key in ("max_length", "rollout"):  # not TRL options here (see the fields above)
            kwargs.pop(key)
        return kwargs

    @model_validator(mode="after")
    def _whole_groups(self) -> GroupTrain:
        if problem := group_problem(self):
            raise ValueError(problem)
        return self


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
        return self


class GRPORecipe(GroupRecipe):
    recipe: Literal["grpo"] = "grpo"
    train: GRPOTrain


class RLOORecipe(GroupRecipe):
    recipe: Literal["rloo"] = "rloo"
    train: RLOOTrain
