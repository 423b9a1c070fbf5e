"""Reward sources for RL: rule functions, an RM adapter on the shared base, a separate reward model, an LLM judge.

Every source is called as ``source(prompts, completions, rows) -> tensor[B]`` (float32, on CPU): ``prompts`` the
prompt column values (string or messages), ``completions`` the decoded responses, ``rows`` the dataset rows (for
functions and verifiers that read extra columns). Rule functions and their registry are in
rlaif.train.reward_functions (TRL's reward-function convention, resolved by registry name first, dotted path second);
verifiers in rlaif.verifiers. PPO (rlaif.train.rl.ppo) and GRPO/RLOO (rlaif.train.rl.group_rewards, as TRL reward
functions) build their sources here, from the same ``reward:`` spec; rule and verifier sources also give
``optional_scores`` (None: cannot score), which TRL's trainers accept and PPO cannot.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rlaif.formats import prompt_text, reward_model_ids
from rlaif.registry import resolve_component
from rlaif.train.reward_functions import REWARD_FUNCTIONS

if TYPE_CHECKING:
    import torch

    from rlaif.train.config import LoraConfig, ModelConfig, RewardConfig


class RewardSource(Protocol):
    description: str

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[str], rows: Sequence[dict[str, Any]]
    ) -> torch.Tensor: ...


class PolicyBase(Protocol):
    """The policy's base as model-based rewards read it: PPO's SharedBase, or GRPO's trainer model
    (rlaif.train.rl.group_rewards.TrainerBase). ``use(name)`` runs a block with adapter ``name`` active, ``bare()``
    with every adapter disabled."""

    model: Any
    tokenizer: Any
    device: Any

    def use(self, adapter: str) -> contextlib.AbstractContextManager[None]: ...

    def bare(self) -> contextlib.AbstractContextManager[None]: ...

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


def _columns(rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """The rows' columns other than the prompt, as lists aligned with the completions."""
    return {key: [row.get(key) for row in rows] for key in (rows[0] if rows else {}) if key != "prompt"}


# -- rule rewards -------------------------------------------------------------------------------------------------
class FunctionReward:
    """A reward function with its static keyword arguments."""

    def __init__(self, name: str, kwargs: dict[str, Any]) -> None:
        self.fn: Callable[..., Sequence[float]] = resolve_component(REWARD_FUNCTIONS, name, "reward function")
        self.kwargs = kwargs
        self.description = f"function `{name}`" + (f" with {kwargs}" if kwargs else "")
        parameters = inspect.signature(self.fn).parameters.values()
        self._any_column = any(p.kind is p.VAR_KEYWORD for p in parameters)
        self._named = {p.name for p in parameters}

    def optional_scores(
        self, prompts: Sequence[Any], completions: Sequence[str], rows: Sequence[dict[str, Any]]
    ) -> list[float | None]:
        """One finite number per completion, or None where the function cannot score it (TRL's convention)."""
        columns = {k: v for k, v in _columns(rows).items() if self._any_column or k in self._named}
        values = list(self.fn([prompt_text(p) for p in prompts], list(completions), **{**columns, **self.kwargs}))
        bad = [v for v in values if v is not None and not (isinstance(v, int | float) and math.isfinite(v))]
        if len(values) != len(completions) or bad:
            got = f"{len(values)} values" if len(values) != len(completions) else repr(bad[0])
            raise ValueError(
                f"reward {self.description} returned {got} for {len(completions)} completions: expected one finite "
                "number per completion (or None: cannot score, for grpo/rloo)"
            )
        return [None if v is None else float(v) for v in values]

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[str], rows: Sequence[dict[str, Any]]
    ) -> torch.Tensor:
        import torch

        values = self.optional_scores(prompts, completions, rows)
        if None in values:
            raise ValueError(f"reward {self.description} returned None: ppo needs a number for every response")
        return torch.tensor(values, dtype=torch.float32)


class VerifierReward:
    """A verifier (rlaif.verifiers: ifeval, math, exact, regex, or a user one by dotted path) as the reward: its score
    in [0, 1] per completion, given the row's other columns (``constraints``, ``answer``, ``pattern``...).
    ``columns`` maps a column the verifier reads to the dataset's name for it; ``kwargs`` are columns given once for
    every row. An unverifiable completion (no final answer, malformed constraints) scores 0.0 — PPO needs a number
    for every response; :attr:`unverifiable` counts them by reason over the run."""

    def __init__(self, name: str, kwargs: dict[str, Any], columns: dict[str, str]) -> None:
        from rlaif.verifiers import verifier_problem

        if problem := verifier_problem(name):
            raise ValueError(problem)
        self.name, self.kwargs, self.columns = name, kwargs, columns
        self.unverifiable: Counter[str] = Counter()
        self.last_unverifiable = 0
        extras = {**({"columns": columns} if columns else {}), **kwargs}
        self.description = f"verifier `{name}`" + (f" with {extras}" if extras else "")

    def optional_scores(
        self, prompts: Sequence[Any], completions: Sequence[str], rows: Sequence[dict[str, Any]]
    ) -> list[float | None]:
        """The verifier's score per completion; None where it cannot check one."""
        from rlaif.verifiers import verify

        columns = _columns(rows)
        columns |= {ours: [row.get(theirs) for row in rows] for ours, theirs in self.columns.items()}
        columns |= {key: [value] * len(completions) for key, value in self.kwargs.items()}
        verdicts = verify(self.name, [prompt_text(p) for p in prompts], list(completions), columns)
        self.unverifiable.update(v.reason or "unverifiable" for v in verdicts if v.score is None)
        self.last_unverifiable = sum(v.score is None for v in verdicts)  # this batch's, for metrics.jsonl
        return [v.score for v in verdicts]

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[str], rows: Sequence[dict[str, Any]]
    ) -> torch.Tensor:
        import torch

        scores = self.optional_scores(prompts, completions, rows)
        return torch.tensor([0.0 if s is None else s for s in scores], dtype=torch.float32)


# -- reward models ------------------------------------------------------------------------------------------------
def conversation_ids(tokenizer: Any, prompt: Any, completion: str, max_length: int) -> list[int]:
    """Prompt + response as a reward model reads it: tokenized as TRL's RewardTrainer tokenized its training pairs
    (:func:`rlaif.formats.reward_model_ids`: the chat template, or plain text with the EOS appended), cut from the
    left so the end of the response is always seen."""
    return reward_model_ids(tokenizer, prompt, completion)[-max_length:]


def pooled_index(ids: torch.Tensor, mask: torch.Tensor, pad_id: int) -> torch.Tensor:
    """The position a sequence classifier reads: the last token that is not the pad id (transformers' rule, which
    TRL's RewardTrainer trained under — with pad == EOS it is the token before a final EOS)."""
    import torch

    positions = torch.arange(ids.shape[1], device=ids.device)
    return (positions * ((ids != pad_id) & mask.bool())).argmax(dim=1)


def score_head(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The ``score`` head an RM adapter carries among its modules_to_save (weight, optional bias)."""
    from safetensors.torch import load_file

    state = load_file(str(adapter_dir / "adapter_model.safetensors"))
    head = {
        key.rsplit(".", 1)[1]: value
        for key, value in state.items()
        if re.search(r"(^|\.)score(\.modules_to_save(\.[^.]+)?)?\.(weight|bias)$", key)
    }
    if "weight" not in head:
        raise ValueError(f"{adapter_dir}: no score head in adapter_model.safetensors (train it with `rlaif train rm`)")
    return head


class AdapterReward:
    """An RM adapter on the shared base: its LoRA shapes the trunk, its score head (applied here, in fp32) reads the
    pooled hidden state. No second copy of the base."""

    def __init__(self, shared: PolicyBase, adapter_dir: Path, batch_size: int, max_length: int) -> None:
        import torch

        self.shared, self.batch_size, self.max_length = shared, batch_size, max_length
        head = score_head(adapter_dir)
        self.weight = head["weight"].to(shared.device, torch.float32)
        self.bias = head.get("bias")
        self.description = f"RM adapter `{adapter_dir}` on the shared base"

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[str], rows: Sequence[dict[str, Any]]
    ) -> torch.Tensor:
        import torch

        from rlaif.train.rl import core

        tokenizer = self.shared.tokenizer
        seqs = [conversation_ids(tokenizer, p, c, self.max_length) for p, c in zip(prompts, completions, strict=True)]
        scores = []
        for start in range(0, len(seqs), self.batch_size):
            ids, mask = core.right_padded(seqs[start : start + self.batch_size], tokenizer.pad_token_id)
            ids, mask = ids.to(self.shared.device), mask.to(self.shared.device)
            with torch.no_grad(), self.shared.use("reward"):
                hidden = self.shared.hidden(ids, mask)
            pooled = hidden[torch.arange(len(ids)), pooled_index(ids, mask, tokenizer.pad_token_id)].float()
            logit = pooled @ self.weight.T
            scores.append((logit + self.bias.to(logit) if self.bias is not None else logit)[:, 0].cpu())
        return torch.cat(scores)


class ModelReward:
    """A separately loaded sequence-classification reward model (quantized like the base): a checkpoint, or an RM
    adapter directory on its own base."""

    def __init__(
        self, ref: str, model_cfg: ModelConfig, lora: LoraConfig, cpu: bool, batch_size: int, max_length: int
    ) -> None:
        from rlaif.train.model import build_model

        base, adapters = adapter_base(ref), None
        if base is not None:
            adapters = {"reward": ref}
        cfg = model_cfg.model_copy(
            update={
                "name": base or ref,
                "revision": None,
                "gradient_checkpointing": False,
                "chat_template": None,
                "adapter": None,
            }
        )
        built = build_model(cfg, lora, task="seq_cls", adapters=adapters, cpu=cpu)
        self.model, self.tokenizer = built.model.eval(), built.tokenizer
        self.batch_size, self.max_length = batch_size, max_length
        self.description = f"reward model `{ref}`"

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[str], rows: Sequence[dict[str, Any]]
    ) -> torch.Tensor:
        import torch

        from rlaif.train.rl import core

        device = next(self.model.parameters()).device
        seqs = [
            conversation_ids(self.tokenizer, p, c, self.max_length) for p, c in zip(prompts, completions, strict=True)
        ]
        scores = []
        for start in range(0, len(seqs), self.batch_size):
            ids, mask = core.right_padded(seqs[start : start + self.batch_size], self.tokenizer.pad_token_id)
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            scores.append(logits[:, 0].float().cpu())
        return torch.cat(scores)


def adapter_base(ref: str) -> str | None:
    """The base model an adapter directory names, or None when ``ref`` is not an adapter directory."""
    config = Path(ref).expanduser() / "adapter_config.json"
    if not config.is_file():
        return None
    return str(json.loads(config.read_text()).get("base_model_name_or_path") or "") or None


def reward_problem(cfg: RewardConfig, base: str) -> str | None:
    """Why the configured reward cannot load, checked before any model does (files, heads, matching base)."""
    from rlaif.models import resolve_model

    if cfg.adapter is not None:
        path = Path(cfg.adapter).expanduser()
        trained_on = adapter_base(cfg.adapter)
        if trained_on is None:
            return f"reward.adapter {cfg.adapter}: not an adapter directory (no adapter_config.json)"
        try:
            score_head(path)
        except (OSError, ValueError) as exc:
            return f"reward.adapter {exc}"
        if trained_on != base and resolve_model(trained_on) != resolve_model(base):
            return (
                f"reward.adapter {cfg.adapter} was trained on {trained_on}, but the policy's base is {base}: an "
                "adapter fits only its own base (load it with reward.model instead)"
            )
    from rlaif.models import reference_problem

    for key, ref in (("reward.model", cfg.model), ("reward.judge.model", cfg.judge and cfg.judge.model)):
        if ref is not None and (problem := reference_problem(adapter_base(ref) or ref)):
            return f"{key} {ref}: {problem}"
    return None


def build_reward(
    cfg: RewardConfig, shared: PolicyBase, model_cfg: ModelConfig, lora: LoraConfig, cpu: bool, max_length: int
) -> RewardSource:
    """The configured reward source; model-based ones share ``shared``'s base unless they name their own model.
    ``lora``: what a separately loaded reward or judge model is built with (no adapter is trained on it; the builder
    wants one for a quantized base)."""
    if cfg.function is not None:
        return FunctionReward(cfg.function, cfg.kwargs)
    if cfg.verifier is not None:
        return VerifierReward(cfg.verifier, cfg.kwargs, cfg.columns)
    if cfg.adapter is not None:
        return AdapterReward(shared, Path(cfg.adapter).expanduser(), cfg.batch_size, max_length)
    if cfg.model is not None:
        return ModelReward(cfg.model, model_cfg, lora, cpu, cfg.batch_size, max_length)
    assert cfg.judge is not None
    from rlaif.train.rl.judge_reward import JudgeReward, model_tail_logits

    if cfg.judge.model is None:
        tail = model_tail_logits(shared.model, shared.device, enter=shared.bare)
        return JudgeReward(
            tail,
            shared.tokenizer,
            cfg.judge,
            cfg.batch_size,
            "LLM judge: the shared base with adapters disabled (d-RLAIF)",
        )
    from rlaif.train.model import build_model

    judge_cfg = model_cfg.model_copy(
        update={
            "name": cfg.judge.model,
            "revision": None,
            "chat_template": None,
            "gradient_checkpointing": False,
            "adapter": None,
        }
    )
    built = build_model(judge_cfg, lora, cpu=cpu)  # the LoRA config is unused: no adapter is attached
    model = built.model.eval()
    tail = model_tail_logits(model, next(model.parameters()).device)
    return JudgeReward(tail, built.tokenizer, cfg.judge, cfg.batch_size, f"LLM judge `{cfg.judge.model}` (d-RLAIF)")
