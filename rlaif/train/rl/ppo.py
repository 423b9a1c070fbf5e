"""PPO for RLHF/RLAIF on one GPU (TRL 1.x has no PPOTrainer): the recipe of Ouyang et al. 2022 with the
implementation details of Huang et al. 2024 (arXiv:2403.17031), memory-lean.

ONE quantized base carries the policy (LoRA adapter ``policy``), the value function (adapter ``value`` + an fp32 head),
the reference (the base with adapters disabled) and, optionally, the reward (an RM adapter, or the base itself as an
LLM judge). Each step reads top to bottom:

1. rollout: sample responses to a batch of prompts (HF generate, or vLLM with the policy adapter as a LoRA request);
   responses end at the first EOS;
2. score: reward source -> scores (minus ``missing_eos_penalty`` for responses that never emit EOS); policy,
   reference and value passes -> per-token KL penalty ``-kl_coef * KL`` plus the score on the last token; GAE;
   whitened advantages;
3. update: ``num_ppo_epochs`` passes over the batch in ``num_mini_batches`` minibatches: clipped policy loss and
   clipped value loss (times ``vf_coef``), one optimizer over both adapters and the head;
4. log one metrics.jsonl line (and the same row to the ``train.report_to`` trackers); checkpoint every ``save_steps``.

Output: ``adapter/`` (policy adapter, tokenizer, model card), ``value/`` (value adapter + value_head.safetensors),
``metrics.jsonl``, ``eval.json`` (reward of policy vs reference samples on held-out prompts), ``checkpoint-N/``.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlaif.backends.base import Backend
from rlaif.config import ConfigError
from rlaif.train.config import LoraConfig, PPORecipe
from rlaif.train.data import DataFormatError, load_training_data
from rlaif.train.model import build_model
from rlaif.train.outputs import append_row, resume_checkpoint
from rlaif.train.rl import core, state
from rlaif.train.rl.evaluate import evaluate, finish
from rlaif.train.rl.reward_sources import build_reward, reward_problem
from rlaif.train.rl.rollout import HFSampler, Rollout, Sampler, VllmSampler, prompt_ids, stop_token_ids, vllm_engine
from rlaif.train.rl.shared_base import SharedBase, forward_rollout, hidden_size, load_value_head, new_value_head
from rlaif.train.rl.state import Run
from rlaif.train.trackers import MetricsFollower, Tracker

log = logging.getLogger(__name__)
TRAINED = ("policy", "value")


def ppo(cfg: PPORecipe, resume: bool = False, backend: Backend | None = None) -> Any:
    """Train the policy adapter with PPO. ``backend``: a vLLM backend (built with ``enable_lora``) to roll out on
    instead of one built here when ``train.rollout: vllm``; it is not closed or put to sleep."""
    data = load_training_data(cfg.data, "ppo")  # bad rows fail here, before any model loads
    if problem := reward_problem(cfg.reward, cfg.model.name):
        raise ConfigError.one(cfg._source, problem)
    checkpoint = resume_checkpoint(cfg, resume)
    output_dir, train = Path(cfg.train.output_dir), cfg.train
    # train.report_to: every metrics.jsonl row reaches the trackers too, under its own names (rlaif.train.trackers).
    config = cfg.model_dump(mode="json")
    with Tracker(train.report_to, output_dir, train.tracker_run_name(), train.project, train.group, config) as tracker:
        follower = MetricsFollower(output_dir / "metrics.jsonl", tracker)
        run = setup(cfg, data, checkpoint, backend)
        try:
            train_loop(run, output_dir, follower.pump)
            metrics = evaluate(run)
        finally:
            run.sampler.close()
            follower.pump()
    return finish(run, data, metrics, checkpoint)


def setup(cfg: PPORecipe, data: Any, checkpoint: str | None, backend: Backend | None) -> Run:
    torch.manual_seed(cfg.train.seed)
    ckpt = Path(checkpoint) if checkpoint else None
    # The policy starts from model.adapter when given (an SFT adapter, or the previous round of `rlaif loop`), and a
    # frozen copy of it is the reference (InstructGPT's KL is to the SFT policy; TRL's DPO anchors the same way);
    # else the policy is a fresh adapter and the reference the base with every adapter disabled.
    start = cfg.model.adapter
    adapters: dict[str, Any] = {
        "policy": ckpt / "policy" if ckpt else start,
        "value": ckpt / "value" if ckpt else None,
    }
    if start:
        adapters["reference"] = start
    if cfg.reward.adapter:
        adapters["reward"] = cfg.reward.adapter
    built = build_model(
        cfg.model,
        cfg.lora,
        adapters=adapters,
        trainable=TRAINED,
        cpu=cfg.cpu,
        require_chat_template=data.conversational,
    )
    device = next(built.model.parameters()).device
    head = new_value_head(hidden_size(built.model), device, cfg.train.seed)
    if ckpt:
        load_value_head(ckpt / "value", head)
    shared = SharedBase(
        built.model, built.tokenizer, TRAINED, head, cfg.train.temperature, reference="reference" if start else None
    )
    # A separately loaded reward or judge model trains no adapter: it gets the default LoRA config (unused).
    reward = build_reward(cfg.reward, shared, cfg.model, LoraConfig(), cfg.cpu, cfg.train.max_length or 2048)
    prompts, rows = _train_prompts(cfg, data.train, built.tokenizer)
    # Held-out rows stay whole: a reward may read their other columns, as in training.
    held_out = [row for row in data.eval or [] if _fits(cfg, built.tokenizer, row["prompt"])]
    steps = state.total_steps(cfg.train, len(prompts))
    optimizer = state.make_optimizer(shared.trainable_parameters(), cfg.args(), cfg.train)
    scheduler = state.make_scheduler(optimizer, cfg.train, steps)
    run = Run(
        cfg,
        built,
        shared,
        reward,
        make_sampler(cfg, shared, backend),
        optimizer,
        scheduler,
        prompts,
        rows,
        held_out,
        steps,
    )
    if ckpt:
        run.step = state.load_checkpoint(ckpt, optimizer, scheduler)
    return run


def make_sampler(cfg: PPORecipe, shared: SharedBase, backend: Backend | None) -> Sampler:
    train = cfg.train
    stops = stop_token_ids(shared.tokenizer, shared.model)
    if train.rollout == "hf":
        return HFSampler(
            shared, stops, train.response_length, train.temperature, train.local_rollout_forward_batch_size
        )
    owned = backend is None
    sleep = owned and train.vllm_enable_sleep_mode and torch.cuda.is_available() and not cfg.cpu
    if owned:
        rank = shared.model.peft_config["policy"].r  # a started-from adapter keeps its own rank
        backend = vllm_engine(
            cfg.model.name,
            rank,
            train.vllm_gpu_memory_utilization,
            train.max_length,
            train.seed,
            sleep,
            cfg.model.trust_remote_code,
        )
        if sleep:
            backend.sleep(level=1)
    workdir = Path(train.output_dir) / ".rollout-adapters"
    return VllmSampler(
        shared, backend, stops, train.response_length, train.temperature, workdir, cfg.model.name, owned, sleep
    )


def _train_prompts(cfg: PPORecipe, dataset: Any, tokenizer: Any) -> tuple[list[Any], list[dict[str, Any]]]:
    rows = [row for row in dataset if _fits(cfg, tokenizer, row["prompt"])]
    if dropped := len(dataset) - len(rows):
        log.warning(
            "left out %d prompt(s) longer than max_length - response_length = %d tokens",
            dropped,
            (cfg.train.max_length or 0) - cfg.train.response_length,
        )
    if not rows:
        raise DataFormatError(
            f"{cfg.data.path or cfg.data.hub}: no prompt fits in train.max_length "
            f"({cfg.train.max_length}) minus train.response_length ({cfg.train.response_length})"
        )
    return [row["prompt"] for row in rows], rows


def _fits(cfg: PPORecipe, tokenizer: Any, prompt: Any) -> bool:
    budget = (cfg.train.max_length or 10**9) - cfg.train.response_length
    return len(prompt_ids(tokenizer, prompt)) <= budget


# -- the loop ---------------------------------------------------------------------------------------------------
def train_loop(run: Run, output_dir: Path, on_row: Callable[[], None] = lambda: None) -> None:
    """PPO steps until the end of the run, one metrics.jsonl line each (``on_row`` after each), a checkpoint every
    save_steps."""
    train = run.cfg.train
    metrics_file = output_dir / "metrics.jsonl"
    append_row(metrics_file, {"event": "train_begin", "step": run.step, "max_steps": run.steps})
    if train.eval_on_start and run.step == 0:
        evaluate(run)
    batch = train.rollout_batch_size()
    while run.step < run.steps:
        started = time.perf_counter()
        picked = state.batch_indices(run.step, batch, len(run.prompts), train.seed)
        metrics = ppo_step(run, [run.prompts[i] for i in picked], [run.rows[i] for i in picked])
        run.step += 1
        metrics.update(
            step=run.step,
            episode=run.step * batch,
            lr=run.scheduler.get_last_lr()[0],
            **{"time/step_s": time.perf_counter() - started},
        )
        append_row(metrics_file, metrics)
        on_row()
        if run.step % train.logging_steps == 0 or run.step == run.steps:
            log.info("ppo step %d/%d: %s", run.step, run.steps, _brief(metrics))
        if train.eval_steps and run.step % train.eval_steps == 0 and run.step < run.steps:
            evaluate(run)
        if run.step % train.save_steps == 0 and run.step < run.steps:
            state.save_checkpoint(
                output_dir,
                run.step,
                run.shared,
                run.optimizer,
                run.scheduler,
                run.cfg.model.name,
                {"max_steps": run.steps, "episode": run.step * batch},
                train.save_total_limit,
            )


def ppo_step(run: Run, prompts: list[Any], rows: list[dict[str, Any]]) -> dict[str, float]:
    """One rollout batch: sample, score, then the PPO epochs. Returns the step's metrics."""
    run.shared.model.eval()  # no dropout anyway; eval mode skips checkpointing in the no-grad passes
    rollout = run.sampler.generate(prompts)
    raw_scores = run.reward(prompts, rollout.texts, rows)
    batch, metrics = score(run, rollout, raw_scores)
    if hasattr(run.reward, "last_unverifiable"):  # a verifier reward: completions it could not check scored 0.0
        metrics["val/unverifiable"] = run.reward.last_unverifiable
    run.shared.model.train()
    metrics.update(update(run, rollout, batch))
    return metrics


@dataclass
class Scored:
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


def score(run: Run, rollout: Rollout, raw_scores: torch.Tensor) -> tuple[Scored, dict[str, float]]:
    """No-grad passes over the rollout (policy, reference, value), then rewards, GAE and whitened advantages."""
    train, mask = run.cfg.train, rollout.mask
    logprobs, ref_logprobs, values, entropy = forward_rollout(
        run.shared, rollout, train.local_rollout_forward_batch_size
    )
    scores = raw_scores.clone()
    if train.missing_eos_penalty is not None:
        scores[~rollout.has_eos] -= train.missing_eos_penalty
    kl = core.kl_per_token(logprobs, ref_logprobs, train.kl_estimator) * mask
    rewards = core.token_rewards(scores, kl, mask, train.kl_coef)
    if train.whiten_rewards:
        rewards = core.masked_whiten(rewards, mask, shift_mean=False)
    advantages, returns = core.gae(rewards, values, mask, train.gamma, train.lam)
    advantages = core.masked_whiten(advantages, mask)
    non_score = (-train.kl_coef * kl).sum(1)
    metrics = {
        "objective/scores": raw_scores.mean().item(),
        "objective/kl": kl.sum(1).mean().item(),
        "objective/entropy": core.masked_mean(entropy, mask).item(),
        "objective/non_score_reward": non_score.mean().item(),
        "objective/rlhf_reward": (scores + non_score).mean().item(),
        "val/num_eos_tokens": int(rollout.has_eos.sum()),
        "val/response_length": mask.sum(1).mean().item(),
    }
    return Scored(logprobs, values * mask, advantages, returns), metrics


def update(run: Run, rollout: Rollout, batch: Scored) -> dict[str, float]:
    """``num_ppo_epochs`` passes; each splits the batch into ``num_mini_batches`` optimizer steps of
    ``gradient_accumulation_steps`` micro-batches."""
    train = run.cfg.train
    stats: dict[str, list[float]] = defaultdict(list)
    size = len(rollout.texts)
    mini = max(1, size // train.num_mini_batches)
    for _ in range(train.num_ppo_epochs):
        order = torch.randperm(size)
        for start in range(0, mini * train.num_mini_batches, mini):
            minibatch = order[start : start + mini]
            for micro in minibatch.split(train.per_device_train_batch_size):
                for key, value in micro_step(run, rollout, batch, micro, len(micro) / len(minibatch)).items():
                    stats[key].append(value)
            torch.nn.utils.clip_grad_norm_(run.shared.trainable_parameters(), train.max_grad_norm)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
    return {key: sum(values) / len(values) for key, values in stats.items()}


def micro_step(run: Run, rollout: Rollout, batch: Scored, rows: torch.Tensor, weight: float) -> dict[str, float]:
    """Forward + backward of the policy, then of the value (see shared_base: backward before the next switch)."""
    shared, train = run.shared, run.cfg.train
    part = rollout.select(rows)
    ids, attention = (t.to(shared.device) for t in part.sequences())
    mask, prompt_len = part.mask.to(shared.device), rollout.query.shape[1]
    with shared.use("policy"):
        logits = shared.response_logits(ids, attention, prompt_len)
        new_logprobs = core.logprobs_of(logits, part.response.to(shared.device))
        pg = core.policy_loss(
            new_logprobs,
            batch.logprobs[rows].to(shared.device),
            batch.advantages[rows].to(shared.device),
            mask,
            train.cliprange,
        )
        (pg.loss * weight).backward()
    del logits
    with shared.use("value"):
        new_values = shared.values(ids, attention, prompt_len)
        vf = core.value_loss(
            new_values,
            batch.values[rows].to(shared.device),
            batch.returns[rows].to(shared.device),
            mask,
            train.cliprange_value,
        )
        (train.vf_coef * vf.loss * weight).backward()
    return {
        "loss/policy_avg": pg.loss.item(),
        "loss/value_avg": vf.loss.item(),
        "policy/clipfrac_avg": pg.clipfrac.item(),
        "policy/approxkl_avg": pg.approxkl.item(),
        "val/clipfrac_avg": vf.clipfrac.item(),
        "val/ratio": pg.ratio.item(),
    }


def _brief(metrics: dict[str, float]) -> str:
    keys = ("objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg", "val/response_length")
    return ", ".join(f"{k.split('/')[-1]} {metrics[k]:.4g}" for k in keys if k in metrics)
