"""PPO math for RLHF, as pure tensor functions (no model, no I/O): the recipe of Ouyang et al. 2022 with the details
of Huang et al. 2024, "The N Implementation Details of RLHF with PPO" (arXiv:2403.17031), as TRL's PPOTrainer had it.

Shapes: ``B`` responses of ``R`` tokens each. ``mask`` is 1.0 on the tokens of a response up to and including its
first EOS (the rest is padding); every statistic is a masked one, so padding never moves a mean or a gradient.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch

WHITEN_EPS = 1e-8


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    count = mask.sum()
    if unbiased and count > 1:
        var = var * count / (count - 1)  # Bessel's correction, as TRL/OpenAI's lm-human-preferences
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Zero-mean unit-variance over the masked entries. ``shift_mean=False`` keeps the mean (used for rewards: a
    positive reward stays positive, only its scale is normalised)."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def response_mask(
    responses: torch.Tensor, stop_ids: Collection[int], lengths: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, has_stop): the mask keeps each response up to and including its first stop token ("truncation at
    EOS"); ``lengths`` (tokens actually generated per row) bounds rows that stopped without one. The pad token may
    equal EOS, so positions are found by index, never by comparing with the pad id."""
    positions = torch.arange(responses.shape[1], device=responses.device).expand_as(responses)
    is_stop = torch.isin(responses, torch.tensor(sorted(stop_ids), device=responses.device))
    if lengths is not None:
        is_stop &= positions < lengths[:, None]
    has_stop = is_stop.any(dim=1)
    first = torch.where(has_stop, is_stop.float().argmax(dim=1), responses.shape[1] if lengths is None else lengths)
    end = torch.where(has_stop, first + 1, first)
    return (positions < end[:, None]).float(), has_stop


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last kept token of each row (0 for an empty row)."""
    return (mask.sum(dim=1).long() - 1).clamp(min=0)


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate of policy vs reference on the sampled tokens. k1 = log-ratio (unbiased, can be
    negative per token); k3 = exp(-r) - 1 + r (Schulman's low-variance, always >= 0)."""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    return log_ratio


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards: ``-kl_coef * KL`` on every token, plus the sequence score on the last kept token."""
    rewards = -kl_coef * kl * mask
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last_index(mask)] += scores
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by generalized advantage estimation (Schulman et al. 2016). The value after the last
    kept token is 0 (the episode ends there), so padding contributes nothing."""
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


@dataclass
class LossStats:
    loss: torch.Tensor
    clipfrac: torch.Tensor
    approxkl: torch.Tensor | None = None
    ratio: torch.Tensor | None = None


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> LossStats:
    """PPO's clipped surrogate: mean over kept tokens of max(-A r, -A clip(r, 1-e, 1+e)), r = pi/pi_old."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
        approxkl = 0.5 * masked_mean(log_ratio**2, mask)
        mean_ratio = masked_mean(ratio, mask)
    return LossStats(loss, clipfrac, approxkl, mean_ratio)


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> LossStats:
    """Clipped value loss: 0.5 * mean of max((V - G)^2, (clip(V, V_old +- e) - G)^2) over kept tokens."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return LossStats(loss, clipfrac)


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] without materialising the full log-softmax a second time."""
    logits = logits.float()
    picked = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of softmax(logits)."""
    logits = logits.float()
    log_z = torch.logsumexp(logits, dim=-1)
    probs = torch.softmax(logits, dim=-1)
    return log_z - (probs * logits).sum(dim=-1)


def left_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


def right_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask
