"""Soft preference labels in training: a pair carries ``chosen_prob`` = q = P(chosen better), the judge's soft label
(``make_pairs`` writes it from ``p_a``), and the loss is the cross-entropy against it instead of a hard label.

Reward model (RLAIF, Lee et al. 2023: trained on the soft labels): with d = r(chosen) - r(rejected),
``loss = -(q log sigmoid(d) + (1 - q) log sigmoid(-d))``, the Bradley-Terry loss when q = 1.
DPO: conservative DPO (cDPO, Mitchell 2023) with a per-pair label smoothing eps_i = 1 - q_i, on z = beta * h where
h is the DPO log-ratio difference: ``loss = -(q log sigmoid(z) + (1 - q) log sigmoid(-z))``. TRL 1.16 has no such
option: its ``label_smoothing`` is one number for the whole run, read only by the robust, EXO and AOT losses (its
sigmoid loss has no smoothing any more), and ``use_weighting`` is WPO's model-derived weight, not a per-pair one.

Both are TRL's own trainers with one term added to TRL's loss, using
``-(q log sigmoid(z) + (1 - q) log sigmoid(-z)) = -log sigmoid(z) + (1 - q) z``: TRL computes the first term (and
its metrics) as usual, :func:`soft_label_correction` adds the second. A row whose ``chosen_prob`` is null trains as a
hard pair (q = 1), where the correction is exactly 0. The column is checked and its nulls filled before any model
loads (``rlaif.train.data.soft_label_column``).
"""

from __future__ import annotations

from typing import Any

import torch
from trl import DPOTrainer, RewardTrainer

from rlaif.train.data import SOFT_LABEL as COLUMN
from rlaif.train.data import DataFormatError


def soft_label_loss(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of sigmoid(z) against the soft target q: the reference the trainers are tested against."""
    return -(q * torch.nn.functional.logsigmoid(z) + (1 - q) * torch.nn.functional.logsigmoid(-z)).mean()


def soft_label_correction(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """What turns TRL's mean ``-log sigmoid(z)`` into :func:`soft_label_loss`: mean((1 - q) z)."""
    return ((1 - q.to(z.dtype)) * z).mean()


class _WithChosenProb:
    """TRL's collator, plus the batch's ``chosen_prob`` as a float tensor (TRL's collators keep only their keys)."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        if examples and COLUMN in examples[0]:
            batch[COLUMN] = torch.tensor([float(e[COLUMN]) for e in examples], dtype=torch.float32)
        return batch


class SoftRewardTrainer(RewardTrainer):
    """TRL's RewardTrainer with the soft-label cross-entropy (RLAIF) when the batch has ``chosen_prob``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data_collator = _WithChosenProb(self.data_collator)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, COLUMN]

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, **kwargs: Any) -> Any:
        q = inputs.pop(COLUMN, None)
        if "margin" in inputs and q is not None:  # the config refuses both; a hand-built dataset could still have both
            raise DataFormatError(
                f"a pair has both 'margin' and {COLUMN!r}: use one (train.use_margin or soft_labels)"
            )
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
        if q is not None:
            chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
            loss = loss + soft_label_correction(chosen - rejected, q.to(chosen.device))
        return (loss, outputs) if return_outputs else loss


class SoftDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer (loss_type sigmoid) with conservative DPO's per-pair smoothing eps_i = 1 - chosen_prob_i.

    The correction needs each pair's z = beta * ((pi_c - ref_c) - (pi_r - ref_r)) with its gradient, which TRL
    computes inside one long loss function and does not return; a forward hook on the model records the sequence
    log-probabilities of the policy pass (with grad) and of the reference pass (the same model with the adapter
    disabled; or the precomputed ``ref_*_logps`` columns), summed over completion tokens exactly as TRL sums them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.loss_types != ["sigmoid"] or self.ld_alpha is not None or self.use_weighting:
            raise ValueError("soft labels (cDPO) need loss_type sigmoid, no ld_alpha and no use_weighting")
        if self.f_divergence_type != "reverse_kl":
            raise ValueError("soft labels (cDPO) need f_divergence_type reverse_kl")
        self.data_collator = _WithChosenProb(self.data_collator)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, COLUMN]

    def compute_ref_log_probs(self, model: Any, inputs: dict[str, Any]) -> Any:
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k != COLUMN})

    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
        q = inputs.pop(COLUMN, None)
        if q is None:
            return super()._compute_loss(model, inputs, return_outputs)
        passes: list[Any] = []
        modules = {id(m): m for m in (self.accelerator.unwrap_model(model), self.ref_model) if m is not None}
        hooks = [m.register_forward_hook(lambda _m, _a, out: passes.append(out)) for m in modules.values()]
        try:
            result = super()._compute_loss(model, inputs, return_outputs)
        finally:
            for hook in hooks:
                hook.remove()
        seq_len = inputs["completion_mask"].size(1) - 1
        policy_c, policy_r = passes[0].log_probs[:, -seq_len:].sum(dim=1).chunk(2, dim=0)
        if self.precompute_ref_logps:
            ref_c, ref_r = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_c, ref_r = passes[1].log_probs[:, -seq_len:].sum(dim=1).detach().chunk(2, dim=0)
        z = self.beta * ((policy_c - ref_c) - (policy_r - ref_r))
        correction = self.loss_weights[0] * soft_label_correction(z, q.to(z.device))
        if return_outputs:
            return result[0] + correction, result[1]
        return result + correction
