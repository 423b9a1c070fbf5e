"""PPO evaluation and outputs: reward of policy vs reference samples on held-out prompts; the saved adapters,
model card, eval.json, optional merge and push."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from rlaif.train.model import merge_adapter
from rlaif.train.outputs import TrainResult, append_row, model_card, push
from rlaif.train.rl.shared_base import forward_rollout
from rlaif.train.rl.state import Run


@contextmanager
def _own_rng(seed: int) -> Iterator[None]:
    # Evaluation samples with its own seed, so it neither shifts the training RNG nor depends on it.
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def evaluate(run: Run) -> dict[str, float]:
    """Mean reward of policy samples and of reference samples on the held-out prompts, and the policy's KL."""
    rows = run.eval_rows
    if not rows:
        return {}
    run.shared.model.eval()
    results: dict[str, float] = {}
    size = run.cfg.train.per_device_eval_batch_size
    with _own_rng(run.cfg.train.seed):
        for name, policy in (("eval_score", True), ("eval_score_reference", False)):
            scores, kls, lengths = [], [], []
            for start in range(0, len(rows), size):
                chunk = rows[start : start + size]
                prompts = [row["prompt"] for row in chunk]
                rollout = run.sampler.generate(prompts, policy=policy)
                scores.append(run.reward(prompts, rollout.texts, chunk))
                lengths.append(rollout.mask.sum(1))
                if policy:
                    logprobs, ref, _, _ = forward_rollout(run.shared, rollout, size)
                    kls.append(((logprobs - ref) * rollout.mask).sum(1))
            results[name] = torch.cat(scores).mean().item()
            if policy:
                results["eval_kl"] = torch.cat(kls).mean().item()
                results["eval_response_length"] = torch.cat(lengths).mean().item()
    results["eval_score_gain"] = results["eval_score"] - results["eval_score_reference"]
    append_row(Path(run.cfg.train.output_dir) / "metrics.jsonl", {"step": run.step, **results})
    return results


def finish(run: Run, data: Any, metrics: dict[str, float], checkpoint: str | None) -> Any:
    """Save the policy adapter (+ tokenizer, model card), the value adapter and head, eval.json; merge, push."""
    cfg, output_dir = run.cfg, Path(run.cfg.train.output_dir)
    adapter_dir = output_dir / "adapter"
    run.shared.save_adapter("policy", adapter_dir, cfg.model.name)
    run.shared.save_adapter("value", output_dir / "value", cfg.model.name)
    run.built.tokenizer.save_pretrained(str(adapter_dir))
    (output_dir / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    card = model_card(cfg, run.built, data, metrics, checkpoint, cfg.args()) + _card_section(run)
    (adapter_dir / "README.md").write_text(card)
    merged_dir = None
    if cfg.merge:
        merged_dir = merge_adapter(cfg.model, adapter_dir, output_dir / "merged", cpu=cfg.cpu)
        (merged_dir / "README.md").write_text(card)
    if cfg.push_to_hub:
        push(adapter_dir, cfg.push_to_hub)
    return TrainResult(output_dir, adapter_dir, merged_dir, metrics, checkpoint)


def _card_section(run: Run) -> str:
    train = run.cfg.train
    return (
        f"\n## PPO\n\nPPO (Ouyang et al. 2022) with the details of Huang et al. 2024 (arXiv:2403.17031): "
        f"per-token KL "
        f"penalty to the reference (kl_coef {train.kl_coef}, {train.kl_estimator}), GAE (gamma {train.gamma}, lam "
        f"{train.lam}), clipped policy and value losses, whitened advantages, missing-EOS penalty "
        f"{train.missing_eos_penalty}. {run.step} steps of {train.rollout_batch_size()} rollouts "
        f"({train.rollout} rollouts). Reward: {run.reward.description}. The value adapter and head are saved in "
        "`../value/`.\n"
    )
