"""PPO run state: optimizer and schedule, which prompts a step samples, and checkpoints that survive SIGKILL.

A checkpoint is ``<output_dir>/checkpoint-N/`` holding ``policy/`` and ``value/`` (adapter + value head),
``state.pt`` (optimizer, LR schedule, RNG) and, written last, ``trainer_state.json`` (the step): a checkpoint
without it was cut short and is ignored (outputs.complete_checkpoints). Which prompts step N samples is a pure
function of (seed, N), so resuming needs no data-loader state.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlaif.train.config import PPOArgs, PPORecipe, PPOTrain
from rlaif.train.model import BuiltModel
from rlaif.train.outputs import complete_checkpoints
from rlaif.train.rl.reward_sources import RewardSource
from rlaif.train.rl.rollout import Sampler
from rlaif.train.rl.shared_base import SharedBase


@dataclass
class Run:
    """Everything one PPO run holds."""

    cfg: PPORecipe
    built: BuiltModel
    shared: SharedBase
    reward: RewardSource
    sampler: Sampler
    optimizer: torch.optim.Optimizer
    scheduler: Any
    prompts: list[Any]
    rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]  # held-out rows, whole: a reward may read their other columns
    steps: int
    step: int = 0


STATE_FILE = "state.pt"
MARKER = "trainer_state.json"
ADAM_EPS = 1e-5  # Huang et al. 2024 / OpenAI lm-human-preferences: eps 1e-5 rather than PyTorch's 1e-8


def total_steps(train: PPOTrain, prompts: int) -> int:
    """PPO steps (rollout batches): max_steps, else total_episodes, else num_train_epochs passes over the prompts."""
    if train.max_steps > 0:
        return train.max_steps
    episodes = train.total_episodes or math.ceil(train.num_train_epochs * prompts)
    return max(1, math.ceil(episodes / train.rollout_batch_size()))


def batch_indices(step: int, batch_size: int, prompts: int, seed: int) -> list[int]:
    """The prompts of PPO step ``step`` (0-based): consecutive slices of one seeded permutation per epoch."""
    picked, perms = [], {}
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, index = divmod(position, prompts)
        if epoch not in perms:
            perms[epoch] = torch.randperm(prompts, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        picked.append(perms[epoch][index])
    return picked


def make_optimizer(params: list[torch.nn.Parameter], args: PPOArgs, train: PPOTrain) -> torch.optim.Optimizer:
    options = {"lr": train.learning_rate, "eps": ADAM_EPS, "weight_decay": train.weight_decay}
    if args.optim == "adamw_torch":
        return torch.optim.AdamW(params, **options)
    import bitsandbytes as bnb

    cls = {
        "paged_adamw_32bit": bnb.optim.PagedAdamW32bit,
        "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
        "adamw_8bit": bnb.optim.AdamW8bit,
    }[args.optim]
    return cls(params, **options)


def make_scheduler(optimizer: torch.optim.Optimizer, train: PPOTrain, steps: int) -> Any:
    from transformers import get_scheduler

    updates = steps * train.num_ppo_epochs * train.num_mini_batches  # optimizer steps in the whole run
    warmup = math.ceil(train.warmup_steps * updates) if train.warmup_steps < 1 else int(train.warmup_steps)
    return get_scheduler(train.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=updates)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    output_dir: Path,
    step: int,
    shared: SharedBase,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    base_reference: str,
    info: dict[str, Any],
    keep: int | None,
) -> Path:
    folder = output_dir / f"checkpoint-{step}"
    if folder.exists():  # a half-written one from a killed run
        shutil.rmtree(folder)
    shared.save_adapter("policy", folder / "policy", base_reference)
    shared.save_adapter("value", folder / "value", base_reference)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
        folder / STATE_FILE,
    )
    (folder / MARKER).write_text(json.dumps({"global_step": step, **info}, indent=2) + "\n")  # last: the marker
    if keep:
        _prune(output_dir, keep)
    return folder


def load_checkpoint(folder: Path, optimizer: torch.optim.Optimizer, scheduler: Any) -> int:
    """Restore optimizer, schedule and RNG from ``folder`` (adapters and value head load with the model); the step."""
    state = torch.load(folder / STATE_FILE, weights_only=False)  # our own file: optimizer state, RNG tuples
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(json.loads((folder / MARKER).read_text())["global_step"])


def _prune(output_dir: Path, keep: int) -> None:
    for old in complete_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
