"""The reward specification (``reward:`` of ppo/grpo/rloo files) as TRL reward functions, for GRPOTrainer and
RLOOTrainer: ``fn(prompts, completions, completion_ids, **columns) -> list[float | None]``.

Each component is one of PPO's reward sources (rlaif.train.rl.reward_sources, built by its ``build_reward``): a rule
function, a verifier, an RM adapter on the policy's own base, a separately loaded reward model, or an LLM judge's
expected score (d-RLAIF; by default the policy's base with the adapter disabled). This module only adapts them to
TRL's calling convention; nothing about scoring is duplicated.

TRL calls each function with the batch's prompts and completions (strings, or message lists for conversational
data) and every other dataset column as a keyword list aligned with them (``constraints``, ``answer``...), plus its
own ``trainer_state``, ``log_extra`` and ``log_metric``. None means "this function cannot score this completion":
TRL turns it into NaN, leaves it out of that function's mean and of the weighted sum, and gives a completion that no
function scores a zero advantage. So an unverifiable completion (no final answer, malformed constraints) stays None
here — unlike PPO, which needs a number for every response (its VerifierReward scores it 0.0).

Each component is named (its ``name:``, else the verifier/function name, ``rm``, ``reward_model`` or ``judge``):
TRL logs ``rewards/<name>/mean`` and ``/std`` per component and the weighted sum as ``reward``; verifier components
also log ``rewards/<name>/unverifiable`` (the fraction of the batch they could not score).

Memory: an RM adapter is a second named adapter (``reward``) on the trained model, frozen, switched in for scoring
and out again (peft's ``set_adapter`` restores the policy adapter's gradients); the judge reads the same base with
every adapter disabled — TRL's own reference pass. No second copy of the base for either.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlaif.config import ConfigError
from rlaif.train.rl.reward_sources import FunctionReward, RewardSource, VerifierReward, build_reward, reward_problem

if TYPE_CHECKING:
    import torch

    from rlaif.train.grpo_config import GroupRecipe, RewardSpec

# Keyword arguments TRL adds beside the dataset columns; never handed to a reward as columns.
TRL_EXTRAS = ("trainer_state", "log_extra", "log_metric", "environments")
POLICY = "default"  # the trained adapter's name, as TRL's trainers expect it (they add their "ref" copy beside it)
REWARD_ADAPTER = "reward"  # the RM adapter's name on the policy's base (AdapterReward switches to it)


def completion_text(completion: Any) -> str:
    """A completion as text: TRL passes ``[{"role": "assistant", "content": ...}]`` for conversational data."""
    if isinstance(completion, str):
        return completion
    parts = [m.get("content") or "" for m in completion if isinstance(m, dict) and m.get("role") == "assistant"]
    return "".join(p if isinstance(p, str) else str(p) for p in parts)


def light_source(spec: RewardSpec) -> RewardSource:
    """A source that needs no model (a rule function or a verifier)."""
    if spec.function is not None:
        return FunctionReward(spec.function, spec.kwargs)
    if spec.verifier is not None:
        return VerifierReward(spec.verifier, spec.kwargs, spec.columns)
    raise ValueError(f"reward {spec.label()}: a model-based reward is built with the policy (GroupRewards.bind)")


class GroupReward:
    """One component of the reward spec as a TRL reward function. ``__name__`` is the name TRL logs it under."""

    def __init__(self, spec: RewardSpec, source: RewardSource | None = None) -> None:
        self.__name__ = spec.label()
        self.spec = spec
        self.source = source or light_source(spec)

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None, **kwargs: Any
    ) -> list[float | None]:
        columns = {k: list(v) for k, v in kwargs.items() if k not in TRL_EXTRAS}
        texts = [completion_text(c) for c in completions]
        rows = [{"prompt": p, **{k: v[i] for k, v in columns.items()}} for i, p in enumerate(prompts)]
        optional = getattr(self.source, "optional_scores", None)
        scores = optional(prompts, texts, rows) if optional else [float(s) for s in self.source(prompts, texts, rows)]
        log_metric = kwargs.get("log_metric")
        if isinstance(self.source, VerifierReward) and callable(log_metric) and scores:
            log_metric(f"rewards/{self.__name__}/unverifiable", sum(s is None for s in scores) / len(scores))
        return scores


class TrainerBase:
    """The model TRL trains, as PPO's model-based rewards read it (reward_sources.PolicyBase): the RM adapter or the
    bare base for one no-grad pass, in eval mode (no dropout in the reward), then the policy adapter again."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device

    @contextlib.contextmanager
    def _scoring(self) -> Iterator[None]:
        training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(training)

    @contextlib.contextmanager
    def use(self, adapter: str) -> Iterator[None]:
        previous = self.model.active_adapter
        with self._scoring():
            self.model.set_adapter(adapter, inference_mode=True)
            try:
                yield
            finally:
                # set_adapter freezes every adapter but the active one: re-activating the policy makes it trainable.
                self.model.set_adapter(previous)

    @contextlib.contextmanager
    def bare(self) -> Iterator[None]:
        with self._scoring(), self.model.disable_adapter():
            yield

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from rlaif.train.rl.shared_base import trunk_hidden

        return trunk_hidden(self.model, input_ids, attention_mask)


def reads_policy_base(spec: RewardSpec) -> bool:
    """An RM adapter, or a judge without its own model: both read the trained model's base."""
    return spec.adapter is not None or (spec.judge is not None and spec.judge.model is None)


class GroupRewards:
    """The reward spec of a grpo/rloo config, built in two steps around the model: checked when constructed (before
    any model loads: files, heads, the adapter's base), bound to the built model by :meth:`bind`."""

    def __init__(self, cfg: GroupRecipe) -> None:
        self.cfg, self.specs = cfg, list(cfg.reward)
        for i, spec in enumerate(self.specs):
            if problem := reward_problem(spec, cfg.model.name):
                where = f"reward.{i}" if len(self.specs) > 1 else "reward"
                raise ConfigError.one(cfg._source, problem.replace("reward.", f"{where}.", 1))
        self.weights = [spec.weight for spec in self.specs]
        self.adapter = next((spec.adapter for spec in self.specs if spec.adapter is not None), None)

    def model_kwargs(self) -> dict[str, Any]:
        """What build_model needs so that the rewards can read the policy's base: the policy and RM adapters wrapped
        here (TRL then trains the PeftModel it is given), or nothing (TRL wraps the model itself)."""
        if not any(reads_policy_base(spec) for spec in self.specs):
            return {}
        adapters: dict[str, Any] = {POLICY: self.cfg.model.adapter}  # None: a fresh adapter from cfg.lora
        if self.adapter is not None:
            adapters[REWARD_ADAPTER] = Path(self.adapter).expanduser()
        return {"adapters": adapters, "trainable": (POLICY,)}

    def bind(self, built: Any) -> list[GroupReward]:
        """The TRL reward functions, model-based ones reading ``built`` (rlaif.train.model.BuiltModel)."""
        from rlaif.train.config import LoraConfig

        base = TrainerBase(built.model, built.tokenizer)
        max_length = self.cfg.train.max_length or 2048
        # A separately loaded reward or judge model trains no adapter: it gets the default LoRA config (unused).
        return [
            GroupReward(spec, build_reward(spec, base, self.cfg.model, LoraConfig(), self.cfg.cpu, max_length))
            for spec in self.specs
        ]

    def policy_only_saves(self, trainer: Any) -> None:
        """peft saves every adapter of a model: keep the RM adapter out of checkpoints and the output adapter (it is
        loaded from its own folder, and a resumed run attaches it again)."""
        if self.adapter is None:
            return
        save = trainer.save_model

        def save_policy(output_dir: str | None = None, _internal_call: bool = False) -> None:
            save(output_dir, _internal_call)
            shutil.rmtree(Path(output_dir or trainer.args.output_dir) / REWARD_ADAPTER, ignore_errors=True)

        trainer.save_model = save_policy


def reward_functions(specs: Sequence[RewardSpec]) -> tuple[list[GroupReward], list[float]]:
    """The TRL reward functions of rule and verifier rewards, and their weights (TRL's ``reward_weights``)."""
    return [GroupReward(spec) for spec in specs], [spec.weight for spec in specs]
