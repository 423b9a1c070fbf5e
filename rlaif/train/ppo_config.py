"""PPO's training config: rlaif's own loop (TRL 1.x has no PPOTrainer); keys are those of TRL's former PPOConfig.
Reward sources (rule function, RM adapter, reward model, LLM judge) are typed here too."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from rlaif.train.config_base import _CUDA_OPTIMIZERS, RecipeConfig, TrainConfig, _Strict

_OPTIMIZERS = Literal["paged_adamw_32bit", "paged_adamw_8bit", "adamw_8bit", "adamw_torch"]


class JudgeConfig(_Strict):
    """Direct RLAIF (Lee et al. 2023, arXiv:2309.00267): an LLM rates each response on ``scale``; the reward is the
    expected rating under the judge's probabilities of the score tokens, mapped to [-1, 1]."""

    model: str | None = None  # None: the shared base with adapters disabled (no extra weights in memory)
    template: str | None = None  # default prompts/rating_judge.jinja (question, response, rubric, low, high)
    rubric: str | None = None
    scale: tuple[int, int] = (1, 10)
    max_length: int = Field(2048, ge=64)  # judge prompt tokens; a longer response is cut to fit

    @model_validator(mode="after")
    def _scale(self) -> JudgeConfig:
        if not 0 <= self.scale[0] < self.scale[1]:
            raise ValueError(f"judge.scale must be low..high with 0 <= low < high, got {list(self.scale)}")
        return self


class RewardConfig(_Strict):
    """Exactly one source: a ``function`` (rule reward by registry name or dotted path, called as
    ``fn(prompts, completions, **kwargs)``), a ``verifier`` (rlaif.verifiers: ifeval, math, exact, regex or a dotted
    path; reads the row's constraints/answer/pattern columns, renamed by ``columns``; an unverifiable completion
    scores 0.0), an RM ``adapter`` (from ``rlaif train rm``) applied on the shared base, a separately loaded reward
    ``model`` (seq-cls checkpoint or RM adapter dir), or an LLM ``judge``."""

    function: str | None = None
    verifier: str | None = None
    kwargs: dict[str, Any] = Field(
        default_factory=dict
    )  # function arguments, or columns a verifier reads on every row
    columns: dict[str, str] = Field(default_factory=dict)  # verifier column -> dataset column (answer: solution)
    adapter: str | None = None
    model: str | None = None
    judge: JudgeConfig | None = None
    batch_size: int = Field(8, ge=1)  # sequences per forward pass of a reward model or judge

    @model_validator(mode="after")
    def _one_source(self) -> RewardConfig:
        given = [k for k in ("function", "verifier", "adapter", "model", "judge") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one reward source of function, adapter, model, judge, verifier (got {given or 'none'})"
            )
        if self.kwargs and self.function is None and self.verifier is None:
            raise ValueError("reward.kwargs goes with reward.function or reward.verifier")
        if self.columns and self.verifier is None:
            raise ValueError("reward.columns goes with reward.verifier")
        if self.function is not None:
            from rlaif.registry import UnknownComponent, resolve_component
            from rlaif.train.reward_functions import REWARD_FUNCTIONS

            try:
                resolve_component(REWARD_FUNCTIONS, self.function, "reward function")
            except UnknownComponent as exc:
                raise ValueError(str(exc)) from None
        return self

    @field_validator("verifier")
    @classmethod
    def _known_verifier(cls, name: str | None) -> str | None:
        from rlaif.verifiers import verifier_problem

        if name is not None and (problem := verifier_problem(name)):
            raise ValueError(problem)
        return name


class PPOTrain(TrainConfig):
    """One PPO step: sample a rollout batch of per_device_train_batch_size x gradient_accumulation_steps x
    num_mini_batches prompts, score it, then num_ppo_epochs passes over it in num_mini_batches optimizer steps."""

    learning_rate: float = 1e-5
    lr_scheduler_type: str = "linear"
    warmup_steps: float = 0.0
    gradient_accumulation_steps: int = 1
    optim: _OPTIMIZERS = "paged_adamw_32bit"  # type: ignore[assignment]
    total_episodes: int | None = Field(None, gt=0)  # responses to train on; else max_steps, else num_train_epochs
    num_mini_batches: int = Field(1, ge=1)
    num_ppo_epochs: int = Field(4, ge=1)
    response_length: int = Field(128, ge=1)  # max new tokens per response
    temperature: float = Field(0.7, gt=0)
    kl_coef: float = Field(0.05, ge=0)
    kl_estimator: Literal["k1", "k3"] = "k1"
    cliprange: float = Field(0.2, gt=0)
    cliprange_value: float = Field(0.2, gt=0)
    vf_coef: float = Field(0.1, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    whiten_rewards: bool = False
    missing_eos_penalty: float | None = 1.0  # subtracted from the score of a response that never emits EOS
    local_rollout_forward_batch_size: int = Field(16, ge=1)  # sequences per no-grad forward pass over rollouts
    rollout: Literal["hf", "vllm"] = "hf"  # vllm: the policy adapter hot-swapped into the engine as a LoRA request
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    vllm_enable_sleep_mode: bool = True  # the engine sleeps while the trainer steps (GPU only)

    @field_validator("lr_scheduler_type")
    @classmethod
    def _known_scheduler(cls, name: str, info: ValidationInfo) -> str:
        if info.context and info.context.get("light"):  # config_load's light first pass: transformers loads torch
            return name
        from transformers.trainer_utils import SchedulerType

        if name not in {s.value for s in SchedulerType}:
            choices = ", ".join(s.value for s in SchedulerType)
            raise ValueError(f"unknown lr_scheduler_type {name!r}; choices: {choices}")
        return name

    @model_validator(mode="after")
    def _check_pass_through(self) -> PPOTrain:  # replaces TrainConfig's: there is no TRL config to pass through to
        if self.trl:
            raise ValueError(
                f"train.trl: ppo runs rlaif's own loop (TRL 1.x has no PPOTrainer) and takes no TRL options, "
                f"got {sorted(self.trl)}"
            )
        return self

    def rollout_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_mini_batches


@dataclasses.dataclass(frozen=True)
class PPOArgs:
    """What the PPO loop runs with once the CPU profile is applied (the model card reads these like TRL's args)."""

    use_cpu: bool
    optim: str
    bf16: bool = False  # no autocast: the 4-bit base computes in model.compute_dtype, adapters stay fp32
    fp16: bool = False


class PPORecipe(RecipeConfig):
    recipe: Literal["ppo"] = "ppo"
    train: PPOTrain
    reward: RewardConfig = Field(default_factory=lambda: RewardConfig(judge=JudgeConfig()))

    @model_validator(mode="after")
    def _ppo(self) -> PPORecipe:
        if self.lora is None:
            raise ValueError("ppo trains LoRA adapters (policy, value) on one shared base: set lora")
        if "dropout" not in self.lora.model_fields_set:
            self.lora.dropout = 0.0
        elif self.lora.dropout > 0:
            # The PPO ratio compares two passes over the same tokens; dropout makes them differ (Huang et al. 2024).
            raise ValueError("lora.dropout must be 0 for ppo: dropout makes the rollout and update passes disagree")
        if self.cpu and "response_length" not in self.train.model_fields_set:
            self.train.response_length = 32
        if self.train.response_length >= (self.train.max_length or 10**9):
            raise ValueError(
                f"train.response_length ({self.train.response_length}) leaves no room for the prompt "
                f"in train.max_length ({self.train.max_length})"
            )
        return self

    def args(self) -> PPOArgs:
        optim = self.train.optim
        if self.cpu and any(marker in optim for marker in _CUDA_OPTIMIZERS):
            optim = "adamw_torch"
        return PPOArgs(use_cpu=self.cpu, optim=optim)
