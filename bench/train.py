"""Training benchmark: rlaif's DPO recipe against a plain TRL script, PPO memory, and ``rlaif plan`` estimates.

    .venv/bin/python bench/train.py [--steps 20] [--pairs 64] [--rounds 2] [--threads 1] [--skip-dpo]

(a) DPO on the builtin model, CPU, QLoRA: rlaif (``load_config(pipelines/train/dpo.yaml, cpu=True)`` +
    ``run_recipe``) against a plain script written directly on transformers (BitsAndBytesConfig NF4 with double
    quantization, AutoModelForCausalLM, prepare_model_for_kbit_training), peft (LoraConfig r=16, alpha 16, dropout
    0.05, all-linear) and TRL (DPOConfig, DPOTrainer) with the same values for every option rlaif's CPU profile sets:
    same data (``--pairs`` generated pairs), batch 2, max_length 256, lr 5e-6, cosine, beta 0.01, seed, adamw_torch,
    gradient checkpointing, fp32 adapters (TRL casts QLoRA adapters to bf16; rlaif's CPU profile casts them back,
    and so does the plain script). The two TRL configs are compared field by field before anything runs. Each run is
    a fresh subprocess with the same torch thread count; runs alternate (plain, rlaif, plain, rlaif...) and the best
    of each side counts. Speed = max_steps / train_runtime (the Trainer's own clock: the training loop only, not
    model loading or saving). Target: rlaif / plain >= 0.97.
(b) PPO memory: runs bench/ppo_memory.py (peak RSS of shared-base PPO vs four separate models) when it exists.
(c) ``rlaif plan`` estimates (rlaif.memory_plan) for 1B/3B/8B-class models, every stage, 24 GiB.
``--grpo``: instead, the GRPO benchmark (bench/grpo_bench.py): rlaif vs a plain TRL script, vLLM vs HF rollouts.
On a shared machine timings are noisy: compare the ratio, and run (a) more than once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = "builtin:smollm2-135m-instruct"
TOPICS = [
    "rivers",
    "bread",
    "chess",
    "volcanoes",
    "jazz",
    "bicycles",
    "tea",
    "glaciers",
    "owls",
    "lighthouses",
    "algebra",
    "gardens",
    "comets",
    "markets",
    "bridges",
    "whales",
]
ASKS = ["Tell me about", "Give me two facts about", "Explain to a child what you know about", "Why do people like"]
# What rlaif's CPU profile and dpo.yaml set, written out for the plain script (checked against rlaif's own config).
PLAIN_ARGS: dict[str, Any] = {
    "per_device_train_batch_size": 2,
    "per_device_eval_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "max_length": 256,
    "learning_rate": 5e-6,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.1,
    "weight_decay": 0.0,
    "beta": 0.01,
    "loss_type": ["sigmoid"],
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
}


def write_pairs(path: Path, count: int) -> Path:
    """``count`` conversational preference pairs: a helpful answer of a few sentences against a curt one."""
    rows = []
    for i in range(count):
        topic, ask = TOPICS[i % len(TOPICS)], ASKS[(i // len(TOPICS)) % len(ASKS)]
        chosen = (
            f"Gladly! {topic.capitalize()} are a good subject. People have studied {topic} for a long time, "
            f"and there is always something new to learn about them (note {i})."
        )
        rejected = "No." if i % 2 else f"I won't talk about {topic}."
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"{ask} {topic}."}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
        )
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def rlaif_config(data: Path, out: Path, steps: int, seed: int) -> Any:
    from rlaif.train.cli import load_config

    overrides = [
        f"model.name={MODEL}",
        f"data.path={data}",
        "data.test_size=0",
        f"train.output_dir={out}",
        f"train.max_steps={steps}",
        "train.save_steps=100000",
        f"train.seed={seed}",
    ]
    return load_config(ROOT / "pipelines" / "train" / "dpo.yaml", "dpo", overrides, cpu=True)


def plain_config(out: Path, steps: int, seed: int) -> Any:
    from trl import DPOConfig

    return DPOConfig(output_dir=str(out), max_steps=steps, seed=seed, **PLAIN_ARGS)


def config_differences(data: Path, steps: int, seed: int) -> list[str]:
    """Fields where the plain script's DPOConfig differs from the one rlaif builds (output paths aside)."""
    from rlaif.train.config import trl_args

    with tempfile.TemporaryDirectory() as tmp:
        ours = trl_args(rlaif_config(data, Path(tmp) / "x", steps, seed)).to_dict()
        plain = plain_config(Path(tmp) / "x", steps, seed).to_dict()
    return [
        f"{key}: rlaif {ours.get(key)!r} vs plain {plain.get(key)!r}"
        for key in sorted(set(ours) | set(plain))
        if ours.get(key) != plain.get(key) and key not in ("output_dir", "logging_dir")
    ]


# -- the two sides, each run in its own process ------------------------------------------------------------------
def step_timer() -> Any:
    """A callback recording each optimizer step's wall time: the median resists a noisy neighbour's spikes."""
    import time

    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self._start = time.perf_counter()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            self.seconds.append(time.perf_counter() - self._start)

    return StepTimer()


def run_rlaif(data: Path, out: Path, steps: int, seed: int) -> dict[str, float]:
    from rlaif.train import recipes

    timer, own = step_timer(), recipes.callbacks
    recipes.callbacks = lambda cfg: [*own(cfg), timer]  # the same timer as the plain side; the recipe is unchanged
    result = recipes.run_recipe(rlaif_config(data, out, steps, seed))
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    final = next(row for row in reversed(rows) if "train_runtime" in row)
    return {"runtime": final["train_runtime"], "steps": final["step"], "median_step": median(timer.seconds)}


def run_plain(data: Path, out: Path, steps: int, seed: int) -> dict[str, float]:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import DPOTrainer

    from rlaif.models import resolve_model

    path = resolve_model(MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    model = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=bnb, dtype=torch.float32, device_map={"": "cpu"}
    )
    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    lora = LoraConfig(
        r=16, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", bias="none", task_type="CAUSAL_LM"
    )
    timer = step_timer()
    trainer = DPOTrainer(
        model=model,
        args=plain_config(out, steps, seed),
        processing_class=tokenizer,
        train_dataset=load_dataset("json", data_files=str(data), split="train"),
        peft_config=lora,
        callbacks=[timer],
    )
    for param in trainer.model.parameters():  # fp32 compute on CPU: undo TRL's bf16 cast of the adapters
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    metrics = trainer.train().metrics
    return {
        "runtime": metrics["train_runtime"],
        "steps": trainer.state.global_step,
        "median_step": median(timer.seconds),
    }


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    run = run_rlaif if args.worker == "rlaif" else run_plain
    print("RESULT " + json.dumps(run(Path(args.data), Path(args.out), args.steps, args.seed)), flush=True)


def spawn(side: str, data: Path, out: Path, args: argparse.Namespace) -> dict[str, float]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    command = [
        sys.executable,
        __file__,
        "--worker",
        side,
        "--data",
        str(data),
        "--out",
        str(out),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"{side} run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


# -- the three parts ---------------------------------------------------------------------------------------------
def bench_dpo(args: argparse.Namespace) -> None:
    print(
        f"(a) DPO, {MODEL}, CPU, NF4 + LoRA r=16, {args.pairs} pairs, batch 2, {args.steps} steps, "
        f"{args.threads} torch thread(s), {args.rounds} alternating rounds"
    )
    with tempfile.TemporaryDirectory(prefix="rlaif-bench-train-") as tmp:
        data = write_pairs(Path(tmp) / "pairs.jsonl", args.pairs)
        differences = config_differences(data, args.steps, args.seed)
        print(
            "    TRL config: "
            + ("identical on both sides" if not differences else "DIFFERS: " + "; ".join(differences))
        )
        speeds: dict[str, list[float]] = {"plain": [], "rlaif": []}
        medians: dict[str, list[float]] = {"plain": [], "rlaif": []}
        for round_ in range(args.rounds):
            for side in ("plain", "rlaif"):
                result = spawn(side, data, Path(tmp) / f"{side}-{round_}", args)
                speeds[side].append(result["steps"] / result["runtime"])
                medians[side].append(result["median_step"])
                print(
                    f"    round {round_ + 1} {side:5s}: {result['steps']} steps in {result['runtime']:.2f} s = "
                    f"{speeds[side][-1]:.4f} steps/s (median step {result['median_step']:.2f} s)",
                    flush=True,
                )
    best = {side: max(values) for side, values in speeds.items()}
    print("\n| run | steps/s (best) | all rounds | median s/step (best) |\n| --- | ---: | --- | ---: |")
    for side, label in (("plain", "plain TRL script"), ("rlaif", "rlaif recipe")):
        print(
            f"| {label} | {best[side]:.4f} | {', '.join(f'{v:.4f}' for v in speeds[side])} | "
            f"{min(medians[side]):.2f} |"
        )
    print(
        f"\nratio rlaif / plain = {best['rlaif'] / best['plain']:.3f} (target >= 0.97); by median step time: "
        f"{min(medians['plain']) / min(medians['rlaif']):.3f}\n"
    )


def bench_ppo_memory() -> None:
    script = ROOT / "bench" / "ppo_memory.py"
    if not script.is_file():
        print(f"(b) PPO memory: {script.relative_to(ROOT)} is missing (not written yet); skipped\n")
        return
    print(f"(b) PPO memory: {script.relative_to(ROOT)}", flush=True)
    # Its stdout streams through as it prints (minutes); stderr (library warnings) only when it fails.
    done = subprocess.run([sys.executable, str(script)], stderr=subprocess.PIPE, text=True, timeout=3600)
    if done.returncode:
        print(f"    ppo_memory.py failed (exit {done.returncode}): {done.stderr[-2000:]}")
    print()


def bench_plan(gpu_mem: float) -> None:
    from rlaif.memory_plan import GIB, STAGES, Settings, estimate, resolve_arch, total, verdict, vllm_phase

    settings = Settings(gpu_mem_gib=gpu_mem)
    print(
        f"(c) rlaif plan ESTIMATES, GiB (NF4, LoRA r=16, batch 4 x 1024 tokens, gradient checkpointing), "
        f"{gpu_mem:g} GiB GPU; * = does not fit with 10% headroom"
    )
    print("| model | " + " | ".join(STAGES) + " | ppo, 4 separate models | vLLM generation |")
    print("| --- |" + " ---: |" * (len(STAGES) + 2))
    for size in ("1B", "3B", "8B"):
        arch, _ = resolve_arch(size, params=size)
        totals = [total(estimate(arch, stage, settings)) for stage in STAGES]
        totals += [total(estimate(arch, "ppo", settings, shared=False)), total(vllm_phase(arch, settings))]
        cells = [f"{t / GIB:.1f}" + ("" if verdict(t, gpu_mem).startswith("fits") else " *") for t in totals]
        print(f"| {size} ({arch.name}) | " + " | ".join(cells) + " |")
    print("(full breakdown: .venv/bin/rlaif plan MODEL --stage all --gpu-mem 24)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every run (the same on both sides)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--gpu-mem", type=float, default=24.0)
    parser.add_argument("--skip-dpo", action="store_true")
    parser.add_argument("--skip-ppo", action="store_true")
    parser.add_argument("--grpo", action="store_true", help="run only the GRPO benchmark (bench/grpo_bench.py)")
    parser.add_argument("--grpo-steps", type=int, default=8, help="GRPO steps per run (2 of them warm-up)")
    parser.add_argument("--worker", choices=["plain", "rlaif"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.grpo:
        options = ["--steps", str(args.grpo_steps), "--rounds", str(args.rounds), "--threads", str(args.threads)]
        script = ROOT / "bench" / "grpo_bench.py"
        sys.exit(subprocess.run([sys.executable, str(script), *options, "--seed", str(args.seed)]).returncode)
    if not args.skip_dpo:
        bench_dpo(args)
    if not args.skip_ppo:
        bench_ppo_memory()
    bench_plan(args.gpu_mem)


if __name__ == "__main__":
    main()
