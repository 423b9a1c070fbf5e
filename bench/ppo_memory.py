"""Peak memory of rlaif's PPO (one shared 4-bit base) against the naive layout of four separate model copies.

    .venv/bin/python bench/ppo_memory.py [--steps 2] [--response-length 16] [--ppo-epochs 1]
                                         [--model builtin:smollm2-135m-instruct]

Each setup runs in its own subprocess (peak RSS = resource.getrusage(RUSAGE_SELF).ru_maxrss, so one run's memory
never counts against another) and does the same PPO steps from pipelines/train/ppo.yaml with the CPU profile and
the shipped reward, an LLM judge (d-RLAIF); one PPO epoch by default (peak memory does not grow with epochs, and
four epochs of 135M-parameter updates take minutes on 2 CPU cores):

- shared:     rlaif's recipe: ONE NF4 base; policy and value are LoRA adapters (+ value head) on it, the reference is
              the base with adapters disabled, and the judge is the same base, adapters disabled.
- naive:      four separate copies in the compute dtype (fp32 on CPU): policy (+ LoRA), reference, value (+ LoRA and
              head), judge — the layout of TRL's former PPOTrainer, with the same adapters, loop and optimizer.
- naive-nf4:  the same four copies, each quantized to NF4: isolates what sharing alone saves.

Prints each peak RSS, the RSS after imports (interpreter, torch, transformers, peft, bitsandbytes, trl, datasets:
paid by every setup alike), and the ratios shared / naive (target <= 0.4) and shared / naive-nf4, of the peaks and of
what each setup adds above the import baseline. On a 135M-parameter model the import baseline is as large as the
models themselves; the ratio above it is what carries over to larger models.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "pipelines" / "train" / "ppo.yaml"
SETUPS = ("shared", "naive", "naive-nf4")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def load_cfg(args: argparse.Namespace, out: str) -> Any:
    from rlaif.train.cli import load_config

    overrides = [
        f"model.name={args.model}",
        f"train.output_dir={out}",
        f"train.max_steps={args.steps}",
        f"train.response_length={args.response_length}",
        f"train.num_ppo_epochs={args.ppo_epochs}",
        "train.save_steps=100000",
        "data.test_size=0",
    ]
    return load_config(CONFIG, "ppo", overrides, cpu=True)


class NaiveActors:
    """SharedBase's interface over separate models: each role is its own copy of the base."""

    def __init__(self, models: dict[str | None, Any], value_head: Any, tokenizer: Any, temperature: float) -> None:
        self.models, self.value_head, self.tokenizer, self.temperature = models, value_head, tokenizer, temperature
        self.current = models["policy"]
        self.device = next(self.current.parameters()).device
        self.model = self  # the loop calls shared.model.eval()/train()/generate()
        self.generation_config = models["policy"].generation_config

    def eval(self) -> None:
        for model in self.models.values():
            model.eval()

    def train(self) -> None:
        for model in self.models.values():
            model.train()

    def generate(self, **kwargs: Any) -> Any:
        return self.current.generate(**kwargs)

    @contextlib.contextmanager
    def use(self, role: str | None) -> Iterator[None]:
        self.current = self.models[role]
        yield

    def trainable_parameters(self) -> list[Any]:
        params = [p for role in ("policy", "value") for p in self.models[role].parameters() if p.requires_grad]
        return params + list(self.value_head.parameters())

    def response_logits(self, ids: Any, mask: Any, prompt_len: int) -> Any:
        from rlaif.train.rl.shared_base import lm_head, trunk_hidden

        hidden = trunk_hidden(self.current, ids, mask)[:, prompt_len - 1 : -1]
        return lm_head(self.current)(hidden).float() / self.temperature

    def values(self, ids: Any, mask: Any, prompt_len: int) -> Any:
        from rlaif.train.rl.shared_base import trunk_hidden

        hidden = trunk_hidden(self.models["value"], ids, mask)[:, prompt_len - 1 : -1]
        return self.value_head(hidden.float()).squeeze(-1)


def naive_run(cfg: Any, quantize: str) -> Any:
    import torch

    from rlaif.train.config import LoraConfig
    from rlaif.train.data import load_training_data
    from rlaif.train.model import build_model
    from rlaif.train.rl import state as ppo_state
    from rlaif.train.rl.judge_reward import JudgeReward, model_tail_logits
    from rlaif.train.rl.rollout import HFSampler, stop_token_ids
    from rlaif.train.rl.shared_base import hidden_size, new_value_head

    torch.manual_seed(cfg.train.seed)
    data = load_training_data(cfg.data, "ppo")

    def copy(adapter: str | None) -> Any:
        adapters = {adapter: None} if adapter else None
        return build_model(
            cfg.model,
            cfg.lora if adapter else LoraConfig(),
            quantize=quantize,
            adapters=adapters,
            trainable=(adapter,) if adapter else (),
            cpu=True,
        )

    policy, value = copy("policy"), copy("value")
    reference, judge = copy(None).model, copy(None).model
    head = new_value_head(hidden_size(value.model), torch.device("cpu"), cfg.train.seed)
    actors = NaiveActors(
        {"policy": policy.model, None: reference, "value": value.model}, head, policy.tokenizer, cfg.train.temperature
    )
    reward = JudgeReward(
        model_tail_logits(judge.eval(), torch.device("cpu")),
        policy.tokenizer,
        cfg.reward.judge,
        cfg.reward.batch_size,
        "a separate judge copy",
    )
    prompts = [row["prompt"] for row in data.train]
    steps = ppo_state.total_steps(cfg.train, len(prompts))
    optimizer = ppo_state.make_optimizer(actors.trainable_parameters(), cfg.args(), cfg.train)
    sampler = HFSampler(
        actors,
        stop_token_ids(policy.tokenizer, policy.model),
        cfg.train.response_length,
        cfg.train.temperature,
        cfg.train.local_rollout_forward_batch_size,
    )
    scheduler = ppo_state.make_scheduler(optimizer, cfg.train, steps)
    return ppo_state.Run(
        cfg, policy, actors, reward, sampler, optimizer, scheduler, prompts, list(data.train), [], steps
    )


def worker(setup: str, args: argparse.Namespace) -> dict[str, float]:
    # Every library both setups use is imported before the baseline is read: the rest is the setup's own memory.
    import bitsandbytes  # noqa: F401
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401

    from rlaif.train import recipes  # noqa: F401
    from rlaif.train.rl import ppo  # noqa: F401

    # One thread: this measures memory, and on a shared 2-core machine OpenMP spin-waiting made the same step run
    # 2-5x slower with 2 threads whenever another process was busy (timings printed are for orientation only).
    torch.set_num_threads(1)
    baseline = rss_mb()
    with tempfile.TemporaryDirectory() as out:
        cfg = load_cfg(args, out)
        started = time.perf_counter()
        if setup == "shared":
            ppo.ppo(cfg)
        else:
            run = naive_run(cfg, "nf4" if setup == "naive-nf4" else "none")
            ppo.train_loop(run, Path(out))
        elapsed = time.perf_counter() - started
        steps = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    done = [row for row in steps if "loss/policy_avg" in row]
    return {"peak_rss_mb": rss_mb(), "baseline_rss_mb": baseline, "seconds": elapsed, "steps": len(done)}


def measure(setup: str, args: argparse.Namespace) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--worker",
        setup,
        "--steps",
        str(args.steps),
        "--response-length",
        str(args.response_length),
        "--ppo-epochs",
        str(args.ppo_epochs),
        "--model",
        args.model,
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{setup} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--response-length", type=int, default=16)
    parser.add_argument("--ppo-epochs", type=int, default=1)
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--worker", choices=SETUPS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return
    results = {setup: measure(setup, args) for setup in SETUPS}
    print(
        f"PPO, {args.steps} steps of pipelines/train/ppo.yaml --cpu on {args.model} "
        f"(response_length {args.response_length}, {args.ppo_epochs} PPO epoch(s), judge reward):"
    )
    for setup, result in results.items():
        print(
            f"  {setup:<10} peak RSS {result['peak_rss_mb']:8.0f} MiB   (after imports "
            f"{result['baseline_rss_mb']:5.0f} MiB)   {result['steps']} steps in {result['seconds']:.1f} s"
        )
    shared = results["shared"]["peak_rss_mb"]
    for other in ("naive", "naive-nf4"):
        print(f"  shared / {other:<9} = {shared / results[other]['peak_rss_mb']:.2f}")
    above = {s: r["peak_rss_mb"] - r["baseline_rss_mb"] for s, r in results.items()}
    print(
        f"  above the import baseline: shared / naive = {above['shared'] / above['naive']:.2f}, "
        f"shared / naive-nf4 = {above['shared'] / above['naive-nf4']:.2f}"
    )


if __name__ == "__main__":
    main()
