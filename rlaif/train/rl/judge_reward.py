"""Direct RLAIF (d-RLAIF, Lee et al. 2023, arXiv:2309.00267): an LLM judge is the reward model.

The judge reads the shipped single-answer rating prompt (``prompts/rating_judge.jinja``: question, response, rubric,
scale) and its answer is started for it with ``Rating:``. Instead of sampling a number, the judge's probability of
every score on the scale is read off its next-token distribution; the reward is the expected score, mapped to
[-1, 1]. A score that tokenizes to several tokens ("10" = "1" "0") is handled exactly: each score's probability is
the product of its tokens' conditional probabilities, and a score that is a prefix of another ("1" of "10") also
needs the judge to stop there (1 - P(any continuing token)). One forward pass per distinct longest shared path —
a single pass for the scale 1..10 on digit-splitting tokenizers.

By default the judge is the shared PPO base with adapters disabled (no extra weights); ``judge.model`` loads another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rlaif.formats import prompt_text
from rlaif.templates import DEFAULT_RUBRIC, render, template_path
from rlaif.train.rl.core import left_padded

if TYPE_CHECKING:
    from rlaif.train.config import JudgeConfig

# The rating_judge step's default rubric (rlaif.steps.judges; train never imports steps, DESIGN.md §1).
ANSWER_PREFIX = "Rating:"
# (input_ids [B, T] left-padded, attention_mask [B, T], k) -> logits of the last k positions [B, k, V]
TailLogits = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
TokenPath = tuple[int, ...]


def score_paths(tokenizer: Any, low: int, high: int) -> dict[int, TokenPath]:
    """Token ids of each score as the judge would write it after ``Rating:``."""
    head = tokenizer(ANSWER_PREFIX, add_special_tokens=False).input_ids
    paths = {}
    for score in range(low, high + 1):
        ids = tokenizer(f"{ANSWER_PREFIX} {score}", add_special_tokens=False).input_ids
        if ids[: len(head)] != head or len(ids) == len(head):
            raise ValueError(f"the judge tokenizer merges {ANSWER_PREFIX!r} with score {score}: cannot read scores")
        paths[score] = tuple(ids[len(head) :])
    return paths


def _extends(longer: TokenPath, prefix: TokenPath) -> bool:
    return len(longer) > len(prefix) and longer[: len(prefix)] == prefix


def forward_paths(paths: dict[int, TokenPath]) -> list[TokenPath]:
    """The token paths to run after the prompt so that every needed next-token distribution is seen: the proper
    prefixes of each score, and each score that another extends; only the longest of each chain."""
    needed = {path[:i] for path in paths.values() for i in range(len(path))}
    needed |= {p for p in paths.values() if any(_extends(q, p) for q in paths.values())}
    return sorted(c for c in needed if not any(_extends(d, c) for d in needed))


def score_logprobs(step: dict[TokenPath, torch.Tensor], paths: dict[int, TokenPath]) -> torch.Tensor:
    """[B, K] log-probabilities of the scores (in ``paths`` order), normalised over the scale. ``step[c]`` is the
    judge's next-token log-distribution [B, V] after the prompt followed by ``c``."""
    columns = []
    for path in paths.values():
        logp = sum(step[path[:i]][:, path[i]] for i in range(len(path)))
        continuing = sorted({q[len(path)] for q in paths.values() if _extends(q, path)})
        if continuing:
            p_continue = step[path][:, continuing].exp().sum(dim=1).clamp(max=1 - 1e-6)
            logp = logp + torch.log1p(-p_continue)
        columns.append(logp)
    return torch.log_softmax(torch.stack(columns, dim=1), dim=1)


class JudgeReward:
    """``judge(prompts, completions, rows) -> tensor[B]`` in [-1, 1]; ``expected_scores`` gives the raw scale."""

    def __init__(
        self,
        tail_logits: TailLogits,
        tokenizer: Any,
        cfg: JudgeConfig,
        batch_size: int,
        description: str,
        base_dir: Path | None = None,
    ) -> None:
        self.tail_logits, self.tokenizer, self.cfg, self.batch_size = tail_logits, tokenizer, cfg, batch_size
        self.template = template_path("rating_judge.jinja", cfg.template, base_dir or Path.cwd())
        self.low, self.high = cfg.scale
        self.paths = score_paths(tokenizer, self.low, self.high)
        self.description = description

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[str], rows: Sequence[dict[str, Any]]
    ) -> torch.Tensor:
        expected = self.expected_scores(prompts, completions)
        return 2 * (expected - self.low) / (self.high - self.low) - 1

    def expected_scores(self, prompts: Sequence[Any], completions: Sequence[str]) -> torch.Tensor:
        scores = torch.tensor(list(self.paths), dtype=torch.float32)
        out = []
        for start in range(0, len(completions), self.batch_size):
            chunk = range(start, min(start + self.batch_size, len(completions)))
            heads = [self.prompt_ids(prompts[i], completions[i]) for i in chunk]
            out.append(self.distribution(heads).exp() @ scores)
        return torch.cat(out) if out else scores[:0]

    def distribution(self, heads: list[list[int]]) -> torch.Tensor:
        """[B, K] log-probabilities of the scores after each judge prompt."""
        step: dict[TokenPath, torch.Tensor] = {}
        for path in forward_paths(self.paths):
            ids, mask = left_padded([head + list(path) for head in heads], self.tokenizer.pad_token_id)
            with torch.no_grad():
                logits = self.tail_logits(ids, mask, len(path) + 1)
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
            for i in range(len(path) + 1):
                step[path[:i]] = logprobs[:, i]
        return score_logprobs(step, self.paths)

    def prompt_ids(self, prompt: Any, response: str) -> list[int]:
        """The judge prompt as tokens, ending in ``Rating:``; a response too long for ``max_length`` is cut."""
        ids = self._render(prompt, response)
        overflow = len(ids) - self.cfg.max_length
        if overflow > 0:
            kept = self.tokenizer(response, add_special_tokens=False).input_ids[: -overflow - 8]
            ids = self._render(prompt, self.tokenizer.decode(kept) + " [...]")[-self.cfg.max_length :]
        return ids

    def _render(self, prompt: Any, response: str) -> list[int]:
        text = render(
            self.template,
            question=prompt_text(prompt),
            response=response,
            rubric=self.cfg.rubric or DEFAULT_RUBRIC,
            low=self.low,
            high=self.high,
        )
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        else:
            text += "\n"
        return self.tokenizer(text + ANSWER_PREFIX, add_special_tokens=False).input_ids


def model_tail_logits(model: Any, device: torch.device, enter: Callable[[], Any] | None = None) -> TailLogits:
    """TailLogits of a causal LM: the trunk over the whole prompt, the LM head over the last k positions only.
    ``enter`` gives a context to run in (the shared base's adapters-off reference)."""
    import contextlib

    from rlaif.train.rl.shared_base import lm_head, trunk_hidden

    def tail(ids: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
        with torch.no_grad(), enter() if enter else contextlib.nullcontext():
            hidden = trunk_hidden(model, ids.to(device), mask.to(device))[:, -k:]
            return lm_head(model)(hidden)

    return tail
