"""The loop's ``verifier`` and ``reward_model`` evals: each policy measured alone on the held-out prompts by a
program or a trained reward model, not a judge.

Round 0 (the base policy) and every trained round k answer each held-out prompt once, greedily, with the eval
pipeline's model ``policy`` (round k: base + adapter k as a vLLM LoRA request); its verify step says which answers
hold all their constraints. Per policy: the pass rate with its 95% Wilson interval, the mean score (fraction of
constraints held), n, and the per-prompt pass list in prompt order, so two policies pair up prompt by prompt
(``rlaif.rates.paired_difference``: policy k minus the base, Newcombe's paired interval).

``kind: reward_model``: the same answers, scored by the eval pipeline's ``reward_model_score`` step (a reward model
or an RM adapter trained by ``rlaif train rm``). Per policy: the mean reward with its 95% Student t interval, n, the
answers it could not score, and the per-prompt rewards in prompt order; policy k minus the base is the mean of the
per-prompt differences with the paired t interval (``rlaif.rates.paired_mean_difference``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from rlaif.loop.config import LoopConfig
from rlaif.pipeline.run import RunSummary
from rlaif.pipeline.spec import Pipeline, load_pipeline
from rlaif.rates import mean_interval, paired_difference, paired_mean_difference, rate


def verifier_pipeline(cfg: LoopConfig, held_out: Path, adapter: Path | None) -> Pipeline:
    """The eval pipeline on the held-out prompts; ``adapter`` None is the base policy."""
    assert cfg.eval is not None
    overrides = [*cfg.eval.overrides, f"steps.{cfg.eval.prompts_step}.path={held_out.resolve()}"]
    if adapter is not None:
        overrides.append(f"models.policy.lora={adapter.resolve()}")
    return load_pipeline(cfg.resolve(cfg.eval.file), overrides)


def verified_rows(result: RunSummary, verify_step: str) -> list[dict[str, Any]]:
    """The verify step's rows as ``{"prompt", "passed", "score"}`` (its first response), sorted by prompt so that
    two runs on the same prompts line up whatever order the pipeline wrote them in."""
    table = pq.read_table(result.datasets[verify_step] / "data", columns=["prompt", "verified", "rewards"])
    rows = []
    for prompt, verified, rewards in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True):
        passed = verified[0] if isinstance(verified, list) else verified
        score = rewards[0] if isinstance(rewards, list) else rewards
        rows.append({"prompt": str(prompt), "passed": passed is True, "score": score})
    return sorted(rows, key=lambda row: row["prompt"])


def pass_figures(passed: list[bool], scores: list[float | None]) -> dict[str, Any]:
    """Pass rate (all constraints held; an unverifiable answer fails) with its 95% Wilson interval, the mean score
    over the answers that could be checked with its 95% Student t interval, n, and the per-prompt ``passed`` list
    (for ``vs_base``)."""
    passing = rate(sum(passed), len(passed))
    checked = mean_interval([float(s) for s in scores if isinstance(s, int | float)])
    return {
        "kind": "verifier",
        "n": len(passed),
        "passes": sum(passed),
        "pass_rate": passing.value,
        "pass_rate_ci95": passing.as_dict()["ci95"],
        "mean_score": checked["mean"],
        "mean_score_ci95": checked["ci95"],
        "unverifiable": sum(s is None for s in scores),
        "passed": [bool(p) for p in passed],
    }


def verifier_figures(result: RunSummary, verify_step: str) -> dict[str, Any]:
    rows = verified_rows(result, verify_step)
    return pass_figures([r["passed"] for r in rows], [r["score"] for r in rows])


def vs_base(figures: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any] | None:
    """Policy k's pass rate minus the base's on the same prompts, with Newcombe's paired 95% interval; None when the
    base was not measured on the same number of prompts."""
    if not base or len(base.get("passed") or []) != len(figures["passed"]) or not figures["passed"]:
        return None
    pairs = list(zip(figures["passed"], base["passed"], strict=True))
    both = sum(k and b for k, b in pairs)
    k_only = sum(k and not b for k, b in pairs)
    base_only = sum(b and not k for k, b in pairs)
    return paired_difference(both, k_only, base_only, len(pairs) - both - k_only - base_only)


# -- kind: reward_model -------------------------------------------------------------------------------------------
def reward_figures(result: RunSummary, reward_step: str) -> dict[str, Any]:
    """The reward step's first reward per held-out prompt, sorted by prompt (see ``mean_reward_figures``)."""
    table = pq.read_table(result.datasets[reward_step] / "data", columns=["prompt", "rewards"])
    rows = sorted(
        (str(prompt), rewards[0] if isinstance(rewards, list) and rewards else rewards)
        for prompt, rewards in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True)
    )
    return mean_reward_figures([reward for _, reward in rows])


def mean_reward_figures(rewards: list[float | None]) -> dict[str, Any]:
    """Mean reward over the answers the reward model scored, its 95% Student t interval (unbounded: a reward has no
    range), n, the ``unscored`` count and the per-prompt ``rewards`` (None: not scored) for ``vs_base``."""
    scored = [float(r) for r in rewards if isinstance(r, int | float)]
    mean = mean_interval(scored, bounds=(float("-inf"), float("inf")))
    return {
        "kind": "reward_model",
        "n": mean["n"],
        "mean_reward": mean["mean"],
        "mean_reward_ci95": mean["ci95"],
        "unscored": len(rewards) - len(scored),
        "rewards": [float(r) if isinstance(r, int | float) else None for r in rewards],
    }


def reward_vs_base(figures: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any] | None:
    """Policy k's reward minus the base's, prompt by prompt (prompts both scored), with the paired t interval; None
    when the base was not measured on the same number of prompts."""
    if not base or len(base.get("rewards") or []) != len(figures["rewards"]) or not figures["rewards"]:
        return None
    pairs = [
        (k, b) for k, b in zip(figures["rewards"], base["rewards"], strict=True) if k is not None and b is not None
    ]
    return paired_mean_difference([k for k, _ in pairs], [b for _, b in pairs])


# Evals that measure each policy alone (round 0 included): kind -> (the LoopConfig.eval field naming the output
# step, its figures, policy k against the base).
POLICY_EVALS = {
    "verifier": ("verify_step", verifier_figures, vs_base),
    "reward_model": ("reward_step", reward_figures, reward_vs_base),
}


def policy_figures(cfg: LoopConfig, result: RunSummary) -> dict[str, Any]:
    assert cfg.eval is not None
    field, figures, _ = POLICY_EVALS[cfg.eval.kind]
    return figures(result, getattr(cfg.eval, field))


def against_base(figures: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any] | None:
    """``vs_base`` for a policy eval's figures, whichever kind they are."""
    return POLICY_EVALS[figures["kind"]][2](figures, base)
