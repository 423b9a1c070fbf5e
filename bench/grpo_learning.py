"""A learning check (not a test): does GRPO with verifier rewards (``rollout: vllm``) raise the builtin model's
held-out pass rate on constrained prompts?

    OMP_NUM_THREADS=1 .venv/bin/python bench/grpo_learning.py [--steps 60] [--lr 5e-4]

Prompts: pipelines/data/verified_topics.jsonl, each with one seeded IFEval-family constraint of the 7 types
pipelines/loop/verified.yaml draws (as its add_constraints step does); the last 48 are held out. Pass rate: greedy
completions (128 tokens) of the held-out prompts checked by the ifeval verifier, before (the base) and after (the
trained adapter), each with its 95% Wilson interval, and the paired difference with Newcombe's interval
(rlaif.rates). Training: rlaif's GRPO recipe from pipelines/train/grpo.yaml on the other prompts, the ifeval
verifier as the only reward, fp32 LoRA r=16, groups of 4, on ONE vLLM engine that serves the rollouts (the adapter
as a LoRA request) and both evaluations.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "builtin:smollm2-135m-instruct"
TYPES = [
    "no_commas",
    "placeholder_count",
    "postscript",
    "section_count",
    "keywords_include",
    "bullet_count",
    "starts_with",
]
HELD_OUT = 48


def constrained_rows(seed: int) -> list[dict]:
    from rlaif.verifiers.constraints import describe, sample_constraints

    rows = []
    for line in (ROOT / "pipelines" / "data" / "verified_topics.jsonl").read_text().splitlines():
        prompt = json.loads(line)["prompt"]
        specs = sample_constraints(random.Random(f"{seed}:{prompt}"), 1, TYPES)
        text = prompt + " " + " ".join(describe(spec) for spec in specs)
        rows.append({"prompt": text, "constraints": json.dumps(specs)})
    return rows


def pass_flags(backend, rows: list[dict], adapter: Path | None) -> list[bool]:
    from rlaif.formats import as_messages
    from rlaif.schema import GenerationParams, LoraAdapter
    from rlaif.verifiers import verify

    lora = LoraAdapter("trained", str(adapter.resolve())) if adapter else None
    params = GenerationParams(temperature=0.0, max_tokens=128, lora=lora)
    results = backend.generate([as_messages(row["prompt"]) for row in rows], params)
    texts = [r.completions[0].text if r.ok and r.completions else "" for r in results]
    verdicts = verify(
        "ifeval", [row["prompt"] for row in rows], texts, {"constraints": [r["constraints"] for r in rows]}
    )
    return [bool(v.passed) for v in verdicts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from rlaif.backends.vllm_backend import VllmBackend
    from rlaif.rates import paired_difference, rate
    from rlaif.train.config_load import load_config
    from rlaif.train.grpo import run_group
    from rlaif.train.recipes import callbacks, train_and_save

    rows = constrained_rows(args.seed)
    train_rows, held_out = rows[:-HELD_OUT], rows[-HELD_OUT:]
    backend = VllmBackend(
        MODEL,
        max_model_len=2048,
        enable_lora=True,
        max_lora_rank=16,
        seed=args.seed,
        engine_kwargs={"logprobs_mode": "processed_logprobs"},
    )
    started = time.perf_counter()
    before = pass_flags(backend, held_out, None)
    with tempfile.TemporaryDirectory(prefix="rlaif-grpo-learning-") as tmp:
        data = Path(tmp) / "train.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in train_rows))
        overrides = [
            f"data.path={data}",
            "data.test_size=0",
            f"output_dir={Path(tmp) / 'out'}",
            "model.quantize=none",
            "reward={verifier: ifeval}",
            "train.rollout=vllm",
            f"train.max_steps={args.steps}",
            f"train.learning_rate={args.lr}",
            "train.per_device_train_batch_size=8",
            "train.per_device_eval_batch_size=4",
            "train.num_generations=4",
            "train.max_completion_length=128",
            "train.logging_steps=1",
            "train.save_steps=100000",
            f"train.seed={args.seed}",
        ]
        cfg = load_config(ROOT / "pipelines" / "train" / "grpo.yaml", "grpo", overrides, cpu=True)
        result = run_group(cfg, False, callbacks(cfg), train_and_save, backend=backend)
        rewards = [
            json.loads(line).get("reward")
            for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()
            if "reward" in line
        ]
        after = pass_flags(backend, held_out, result.adapter_dir)
    backend.close()
    both = sum(a and b for a, b in zip(after, before, strict=True))
    after_only = sum(a and not b for a, b in zip(after, before, strict=True))
    before_only = sum(b and not a for a, b in zip(after, before, strict=True))
    diff = paired_difference(both, after_only, before_only, len(held_out) - both - after_only - before_only)
    steps = [r for r in rewards if r is not None]
    print(
        f"GRPO (rollout: vllm) {args.steps} steps x 8 completions, lr {args.lr}, {time.perf_counter() - started:.0f} s"
    )
    print(f"train reward, first 5 steps {sum(steps[:5]) / 5:.3f} -> last 5 {sum(steps[-5:]) / 5:.3f}")
    print(f"held-out pass rate before {rate(sum(before), len(held_out)).short()}")
    print(f"held-out pass rate after  {rate(sum(after), len(held_out)).short()}")
    low, high = diff["ci95"]
    print(f"difference {diff['difference']:+.3f} [{low:+.3f}, {high:+.3f}] (paired, n={diff['n']})")


if __name__ == "__main__":
    main()
