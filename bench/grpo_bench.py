"""GRPO benchmark (``bench/train.py --grpo``): rlaif's GRPO recipe against a plain TRL script, and rlaif's vLLM
rollouts (``train.rollout: vllm``) against TRL's own generation (``rollout: hf``).

Every run is a fresh subprocess with the same torch thread count (``--threads``, OMP_NUM_THREADS too) and the same
warm-up: the first ``--warmup`` steps are left out of every rate. Sides alternate round by round.

(a) rlaif GRPO (``load_config(pipelines/train/grpo.yaml, cpu=True)`` + the recipe, ``rollout: hf``) against a plain
    script on transformers + peft + TRL (AutoModelForCausalLM, LoraConfig r=16/alpha 16/dropout 0.05/all-linear,
    GRPOConfig, GRPOTrainer) with the values rlaif's CPU profile sets (compared field by field before anything
    runs) and the same reward (the IFEval-family check of each prompt's constraints). Steps/s (target >= 0.97) and
    peak RSS (target <= 1.0), rlaif / plain.
(b) rlaif GRPO with ``rollout: vllm`` against ``rollout: hf``: steps/s and generated tokens/s (tokens TRL scored
    over the time spent in ``_generate_single_turn``, the method both paths sample in). The vLLM side also reports
    the per-sync cost of the hand-over: adapter save (``AdapterSync.save_seconds``) and the engine's LoRA load
    (first request on a fresh adapter path minus a repeat request on the same one, 1-token completions).

The model is the builtin 135M one in fp32 with LoRA (``model.quantize=none``): NF4 on this CPU spends minutes in
4-bit matmuls during HF generation, which would measure bitsandbytes rather than the recipes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL = "builtin:smollm2-135m-instruct"
TOPICS = ["rivers", "bread", "chess", "volcanoes", "jazz", "bicycles", "tea", "glaciers", "owls", "lighthouses"]
CONSTRAINTS = [
    ("Your entire response should be in English, and in all lowercase letters.", {"type": "all_lowercase"}),
    ("Answer with at most 30 words.", {"type": "word_count", "relation": "at_most", "num": 30}),
]
BATCH, GROUP, TOKENS = 8, 4, 48  # completions per step (2 prompts x 4), completion tokens
# What grpo.yaml + rlaif's CPU profile + the bench overrides set, written out for the plain script.
PLAIN_ARGS: dict[str, Any] = {
    "per_device_train_batch_size": BATCH,
    "per_device_eval_batch_size": GROUP,
    "gradient_accumulation_steps": 1,
    "num_generations": GROUP,
    "max_completion_length": TOKENS,
    "learning_rate": 1e-5,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.1,
    "weight_decay": 0.0,
    "loss_type": "dapo",
    "scale_rewards": "group",
    "beta": 0.0,
    "epsilon": 0.2,
    "num_iterations": 1,
    "temperature": 1.0,
    "mask_truncated_completions": False,
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 100000,
    "save_total_limit": 2,
    "eval_strategy": "no",
    "gradient_checkpointing": True,
    "optim": "adamw_torch",
    "use_cpu": True,
    "bf16": False,
    "fp16": False,
    "dataloader_pin_memory": False,
    "report_to": "none",
    "num_train_epochs": 1.0,
    "reward_weights": [1.0],
}


def write_prompts(path: Path, count: int) -> Path:
    """``count`` conversational prompts, each with a verifiable constraint in its ``constraints`` column."""
    rows = []
    for i in range(count):
        text, spec = CONSTRAINTS[i % len(CONSTRAINTS)]
        topic = TOPICS[(i // len(CONSTRAINTS)) % len(TOPICS)]
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"Tell me about {topic} (question {i}). {text}"}],
                "constraints": json.dumps([spec]),
            }
        )
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def rlaif_config(data: Path, out: Path, steps: int, seed: int, rollout: str) -> Any:
    from rlaif.train.config_load import load_config

    overrides = [
        f"model.name={MODEL}",
        "model.quantize=none",
        f"data.path={data}",
        "data.test_size=0",
        f"output_dir={out}",
        f"train.max_steps={steps}",
        "train.save_steps=100000",
        "train.logging_steps=1",
        f"train.seed={seed}",
        f"train.per_device_train_batch_size={BATCH}",
        f"train.per_device_eval_batch_size={GROUP}",
        f"train.num_generations={GROUP}",
        f"train.max_completion_length={TOKENS}",
        "reward={verifier: ifeval}",
        f"train.rollout={rollout}",
    ]
    if rollout == "vllm":
        overrides += ["train.vllm_gpu_memory_utilization=0.2", "train.vllm_max_model_length=1024"]
    return load_config(ROOT / "pipelines" / "train" / "grpo.yaml", "grpo", overrides, cpu=True)


def config_differences(data: Path, steps: int, seed: int) -> list[str]:
    from trl import GRPOConfig

    from rlaif.train.config import trl_args

    with tempfile.TemporaryDirectory() as tmp:
        cfg = rlaif_config(data, Path(tmp) / "x", steps, seed, "hf")
        ours = trl_args(cfg).to_dict()
        ours["reward_weights"] = [spec.weight for spec in cfg.reward]  # set by the recipe from the reward spec
        plain = GRPOConfig(output_dir=str(Path(tmp) / "x"), max_steps=steps, seed=seed, **PLAIN_ARGS).to_dict()
    return [
        f"{key}: rlaif {ours.get(key)!r} vs plain {plain.get(key)!r}"
        for key in sorted(set(ours) | set(plain))
        # project/run_name: tracker names (rlaif names the run), unused with report_to none
        if ours.get(key) != plain.get(key) and key not in ("output_dir", "logging_dir", "project", "run_name")
    ]


# -- instrumentation shared by every side ------------------------------------------------------------------------
class Probe:
    """Step times (a TrainerCallback) and the time and tokens of each ``_generate_single_turn`` call."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.generations: list[tuple[float, int]] = []

    def callback(self) -> Any:
        from transformers import TrainerCallback

        probe = self

        class StepTimer(TrainerCallback):
            def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
                self.start = time.perf_counter()

            def on_step_end(self, *args: Any, **kwargs: Any) -> None:
                probe.steps.append(time.perf_counter() - self.start)

        return StepTimer()

    def time_generation(self, trainer_class: type) -> None:
        original = trainer_class._generate_single_turn

        def timed(trainer: Any, prompt_ids: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            out = original(trainer, prompt_ids, *args, **kwargs)
            ids = out[0] if isinstance(out, tuple) else out
            self.generations.append((time.perf_counter() - started, sum(len(row) for row in ids)))
            return out

        trainer_class._generate_single_turn = timed

    def summary(self, warmup: int) -> dict[str, Any]:
        steps, generations = self.steps[warmup:], self.generations[warmup:]
        gen_s, gen_tokens = sum(s for s, _ in generations), sum(n for _, n in generations)
        usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        return {
            "steps": len(self.steps),
            "timed_steps": len(steps),
            "steps_per_s": len(steps) / sum(steps),
            "median_step_s": median(steps),
            "gen_tokens_per_s": gen_tokens / gen_s,
            "gen_share": gen_s / sum(steps),
            "tokens_per_step": gen_tokens / len(generations),
            "peak_rss_mb": usage,
            "children_peak_rss_mb": children,
        }


def plain_reward(prompts: list, completions: list, constraints: list[str], **_: Any) -> list[float]:
    """The IFEval-family check of each row's constraints (what rlaif's ``verifier: ifeval`` scores)."""
    from rlaif.verifiers.constraints import check, parse_constraints

    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [
        sum(check(text, spec) for spec in parse_constraints(specs)) / len(parse_constraints(specs))
        for text, specs in zip(texts, constraints, strict=True)
    ]


def run_plain(data: Path, out: Path, steps: int, seed: int, warmup: int) -> dict[str, Any]:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from rlaif.models import resolve_model

    path = resolve_model(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    lora = LoraConfig(
        r=16, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", bias="none", task_type="CAUSAL_LM"
    )
    probe = Probe()
    probe.time_generation(GRPOTrainer)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[plain_reward],
        args=GRPOConfig(output_dir=str(out), max_steps=steps, seed=seed, **PLAIN_ARGS),
        train_dataset=load_dataset("json", data_files=str(data), split="train"),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[probe.callback()],
    )
    trainer.train()
    return probe.summary(warmup)


def run_rlaif(data: Path, out: Path, steps: int, seed: int, warmup: int, rollout: str) -> dict[str, Any]:
    from trl import GRPOTrainer

    from rlaif.train.grpo import run_group
    from rlaif.train.recipes import callbacks, train_and_save
    from rlaif.train.rl import group_rollout

    cfg = rlaif_config(data, out, steps, seed, rollout)
    probe, captured = Probe(), {}
    probe.time_generation(group_rollout.VllmGRPOTrainer if rollout == "vllm" else GRPOTrainer)
    build = group_rollout.build_rollouts

    def keep(*args: Any, **kwargs: Any) -> Any:
        captured["rollouts"] = build(*args, **kwargs)
        return captured["rollouts"]

    group_rollout.build_rollouts = keep
    backend = None
    if rollout == "vllm":  # built as run_group would build it, but handed in: it outlives the run for (b)'s probe
        backend = group_rollout.vllm_engine(
            MODEL, 16, 0.2, 1024, seed, False, False, engine_kwargs={"logprobs_mode": "processed_logprobs"}
        )
    result = run_group(cfg, False, [*callbacks(cfg), probe.callback()], train_and_save, backend=backend)
    summary = probe.summary(warmup)
    if backend is not None:
        rollouts = captured["rollouts"]
        summary["adapter_save_s"] = median(rollouts.sync.save_seconds)
        summary["syncs"] = len(rollouts.sync.requests)
        summary["lora_load_s"] = lora_load_seconds(backend, result.adapter_dir, out)
        backend.close()
    return summary


def lora_load_seconds(backend: Any, adapter_dir: Path, out: Path, repeats: int = 5) -> float:
    """The engine's cost of a fresh adapter path: a 1-token request on a new copy of the adapter minus the same
    request again (adapter loaded), median of ``repeats``."""
    from rlaif.schema import GenerationParams, LoraAdapter

    prompt = [[1, 2, 3, 4]]
    costs = []
    for i in range(repeats):
        folder = out / f"lora-probe-{i}"
        shutil.copytree(adapter_dir, folder)
        params = GenerationParams(max_tokens=1, lora=LoraAdapter(f"probe-{i}", str(folder.resolve())))
        started = time.perf_counter()
        backend.generate_ids(prompt, params)
        first = time.perf_counter() - started
        started = time.perf_counter()
        backend.generate_ids(prompt, params)
        costs.append(first - (time.perf_counter() - started))
    return median(costs)


# -- the driver ---------------------------------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data, out = Path(args.data), Path(args.out)
    if args.worker == "plain":
        result = run_plain(data, out, args.steps, args.seed, args.warmup)
    else:
        result = run_rlaif(data, out, args.steps, args.seed, args.warmup, args.worker.removeprefix("rlaif-"))
    print("RESULT " + json.dumps(result), flush=True)


def spawn(side: str, data: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_VERBOSITY": "error",
        "TRL_EXPERIMENTAL_SILENCE": "1",
    }
    command = [sys.executable, __file__, "--worker", side, "--data", str(data), "--out", str(out)]
    command += ["--steps", str(args.steps), "--threads", str(args.threads), "--seed", str(args.seed)]
    command += ["--warmup", str(args.warmup)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{side} run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def spread(values: list[float]) -> str:
    return f"{min(values):.4g}-{max(values):.4g}" if len(values) > 1 else f"{values[0]:.4g}"


def bench_grpo(args: argparse.Namespace) -> None:
    sides = ("plain", "rlaif-hf", "rlaif-vllm")
    print(
        f"(g) GRPO, {MODEL} fp32 + LoRA r=16, CPU, {BATCH} completions/step (groups of {GROUP}) x {TOKENS} tokens, "
        f"{args.steps} steps ({args.warmup} warm-up left out), {args.threads} torch thread(s), OMP_NUM_THREADS="
        f"{args.threads}, {args.rounds} alternating round(s); machine shared with other work"
    )
    results: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="rlaif-bench-grpo-") as tmp:
        data = write_prompts(Path(tmp) / "prompts.jsonl", 64)
        differences = config_differences(data, args.steps, args.seed)
        print(
            "    TRL config: "
            + ("identical on both sides" if not differences else "DIFFERS: " + "; ".join(differences))
        )
        for round_ in range(args.rounds):
            for side in sides:
                result = spawn(side, data, Path(tmp) / f"{side}-{round_}", args)
                results[side].append(result)
                print(f"    round {round_ + 1} {side:10s}: {json.dumps(result)}", flush=True)
    best = {side: max(r["steps_per_s"] for r in runs) for side, runs in results.items()}
    rss = {side: min(r["peak_rss_mb"] for r in runs) for side, runs in results.items()}
    print("\n| run | steps/s best (spread) | generated tok/s (spread) | peak RSS MB | generation share of a step |")
    print("| --- | --- | --- | ---: | ---: |")
    for side in sides:
        runs = results[side]
        extra = (
            f" (+ engine process {max(r['children_peak_rss_mb'] for r in runs):.0f})" if side.endswith("vllm") else ""
        )
        print(
            f"| {side} | {best[side]:.4f} ({spread([r['steps_per_s'] for r in runs])}) | "
            f"{max(r['gen_tokens_per_s'] for r in runs):.1f} ({spread([r['gen_tokens_per_s'] for r in runs])}) | "
            f"{rss[side]:.0f}{extra} | {median(r['gen_share'] for r in runs):.0%} |"
        )
    vllm = results["rlaif-vllm"]
    print(
        f"\n(a) rlaif / plain: steps/s {best['rlaif-hf'] / best['plain']:.3f} (target >= 0.97), peak RSS "
        f"{rss['rlaif-hf'] / rss['plain']:.3f} (target <= 1.0)"
    )
    print(
        f"(b) vllm / hf rollouts: steps/s {best['rlaif-vllm'] / best['rlaif-hf']:.3f}, generated tok/s "
        f"{max(r['gen_tokens_per_s'] for r in vllm) / max(r['gen_tokens_per_s'] for r in results['rlaif-hf']):.3f}; "
        f"per sync: adapter save {median(r['adapter_save_s'] for r in vllm) * 1000:.0f} ms, LoRA load "
        f"{median(r['lora_load_s'] for r in vllm) * 1000:.0f} ms ({vllm[0]['syncs']} syncs in {args.steps} steps)\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--worker", choices=["plain", "rlaif-hf", "rlaif-vllm"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        sys.path.insert(0, str(ROOT))
        worker(args)
    else:
        bench_grpo(args)


if __name__ == "__main__":
    main()
