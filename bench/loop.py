"""Wall time per phase of `rlaif loop` on pipelines/loop_quickstart.yaml, and the hand-off's share of a round.

    .venv/bin/python bench/loop.py                    # 2 rounds, fresh output directory
    .venv/bin/python bench/loop.py rounds=1 prompts.per_round=8

Runs the shipped loop from scratch in a temporary directory (nothing cached), then prints each round's phases
(generate, label, filter, train, hand-off, eval) and hand-off / round. Target: hand-off <= 10% of a round.
Hand-off is what it costs to give the accelerator (on CPU, the memory) to the trainer and take it back: closing the
vLLM engine and starting it again on CPU, sleep/wake on a GPU with enable_sleep_mode.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(overrides: list[str]) -> None:
    from rlaif.loop.config import load_loop_config
    from rlaif.loop.report import PHASES
    from rlaif.loop.rounds import run_loop

    with tempfile.TemporaryDirectory(prefix="rlaif-bench-loop-") as tmp:
        cfg = load_loop_config(ROOT / "pipelines" / "loop_quickstart.yaml", [f"output_dir={tmp}/run", *overrides])
        started = time.perf_counter()
        rows = [row for row in run_loop(cfg) if row["round"] > 0]  # round 0 (the base policy) ran nothing
        wall = time.perf_counter() - started
    print(f"loop_quickstart: {len(rows)} rounds in {wall:.0f} s (engine first start included)")
    print(f"{'round':>5} " + " ".join(f"{p:>9}" for p in PHASES) + f" {'round s':>8} {'hand-off/round':>15}")
    for row in rows:
        seconds = row["seconds"]
        share = seconds["hand_off"] / seconds["total"] if seconds["total"] else 0.0
        print(
            f"{row['round']:>5} "
            + " ".join(f"{seconds.get(p, 0.0):>9.1f}" for p in PHASES)
            + f" {seconds['total']:>8.1f} {share:>14.1%}"
        )
    total = sum(r["seconds"]["total"] for r in rows)
    hand_off = sum(r["seconds"]["hand_off"] for r in rows)
    print(f"hand-off / round, all rounds: {hand_off / total:.1%} (target <= 10%)")
    print(
        json.dumps(
            [
                {
                    "round": r["round"],
                    "seconds": r["seconds"],
                    "kept": r["kept"],
                    "win_rate": (r.get("eval") or {}).get("win_rate"),
                    "win_rate_ci95": (r.get("eval") or {}).get("win_rate_ci95"),
                    "consistency": (r.get("eval") or {}).get("consistency"),
                    "not_trained": r.get("not_trained"),
                }
                for r in rows
            ]
        )
    )


if __name__ == "__main__":  # vLLM's engine core is a spawned process: the guard is required
    main(sys.argv[1:])
