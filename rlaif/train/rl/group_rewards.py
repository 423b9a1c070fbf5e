"""The reward specification (``reward:`` of ppo/grpo/rloo files) as TRL reward functions, for GRPOTrainer and
RLOOTrainer: ``fn(prompts, completions, completion_ids, **columns) -> list[float | None]``.

TRL calls each function with the batch's prompts and completions (strings, or message lists for conversational
data) and every other dataset column as a keyword list aligned with them (``constraints``, ``answer``...), plus its
own ``trainer_state``, ``log_extra`` and ``log_metric``. None means "this function cannot score this completion":
TRL turns it into NaN, leaves it out of that function's mean and of the weighted sum, and gives a completion that no
function scores a zero advantage. So an unverifiable completion (no final answer, malformed constraints) stays None
here — unlike PPO's VerifierReward (rlaif.train.rl.reward_sources), which needs a number for every response.

Each component is named (its ``name:`` or the verifier/function name): TRL logs ``rewards/<name>/mean`` and ``/std``
per component and the weighted sum as ``reward``; verifier components also log ``rewards/<name>/unverifiable`` (the
fraction of the batch they could not score).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from math import isfinite
from typing import TYPE_CHECKING, Any

from rlaif.formats import prompt_text
from rlaif.registry import resolve_component
from rlaif.train.reward_functions import REWARD_FUNCTIONS

if TYPE_CHECKING:
    from rlaif.train.grpo_config import RewardSpec

# Keyword arguments TRL adds beside the dataset columns; never handed to a verifier as columns.
TRL_EXTRAS = ("trainer_state", "log_extra", "log_metric", "environments")


def completion_text(completion: Any) -> str:
    """A completion as text: TRL passes ``[{"role": "assistant", "content": ...}]`` for conversational data."""
    if isinstance(completion, str):
        return completion
    parts = [m.get("content") or "" for m in completion if isinstance(m, dict) and m.get("role") == "assistant"]
    return "".join(p if isinstance(p, str) else str(p) for p in parts)


class GroupReward:
    """One component of the reward spec as a TRL reward function. ``__name__`` is the name TRL logs it under."""

    def __init__(self, spec: RewardSpec) -> None:
        self.__name__ = spec.label()
        self.spec = spec
        if spec.verifier is not None:
            from rlaif.verifiers import verifier_problem

            if problem := verifier_problem(spec.verifier):
                raise ValueError(f"reward {self.__name__}: {problem}")
            self.fn: Callable[..., Sequence[Any]] | None = None
        elif spec.function is not None:
            self.fn = resolve_component(REWARD_FUNCTIONS, spec.function, "reward function")
            parameters = inspect.signature(self.fn).parameters.values()
            self._any_column = any(p.kind is p.VAR_KEYWORD for p in parameters)
            self._named = {p.name for p in parameters}
        else:
            raise ValueError(f"reward {self.__name__}: grpo/rloo take verifier and function rewards")

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None, **kwargs: Any
    ) -> list[float | None]:
        log_metric = kwargs.get("log_metric")
        columns = {k: list(v) for k, v in kwargs.items() if k not in TRL_EXTRAS}
        texts = [completion_text(c) for c in completions]
        questions = [prompt_text(p) for p in prompts]
        if self.fn is None:
            scores = self._verify(questions, texts, columns)
            if callable(log_metric) and scores:
                log_metric(f"rewards/{self.__name__}/unverifiable", sum(s is None for s in scores) / len(scores))
            return scores
        if not self._any_column:
            columns = {k: v for k, v in columns.items() if k in self._named}
        return self._checked(self.fn(questions, texts, **{**columns, **self.spec.kwargs}), len(texts))

    def _verify(self, prompts: list[str], completions: list[str], columns: dict[str, list]) -> list[float | None]:
        from rlaif.verifiers import verify

        n = len(completions)
        columns |= {ours: columns.get(theirs, [None] * n) for ours, theirs in self.spec.columns.items()}
        columns |= {key: [value] * n for key, value in self.spec.kwargs.items()}
        assert self.spec.verifier is not None
        return [v.score for v in verify(self.spec.verifier, prompts, completions, columns)]

    def _checked(self, scores: Any, n: int) -> list[float | None]:
        values = list(scores)
        bad = [v for v in values if v is not None and not (isinstance(v, int | float) and isfinite(v))]
        if len(values) != n or bad:
            got = f"{len(values)} values" if len(values) != n else f"{bad[0]!r}"
            raise ValueError(
                f"reward {self.__name__} (function {self.spec.function}) returned {got} for {n} completions: expected "
                "one finite number (or None: cannot score) per completion"
            )
        return [None if v is None else float(v) for v in values]


def reward_functions(specs: Sequence[RewardSpec]) -> tuple[list[GroupReward], list[float]]:
    """The TRL reward functions of a reward spec and their weights (TRL's ``reward_weights``)."""
    return [GroupReward(spec) for spec in specs], [spec.weight for spec in specs]
