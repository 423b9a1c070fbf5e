"""A judge's agreement with human preference labels, on the builtin model through the vllm backend: a thin caller of
the judge check (``rlaif.steps.judge_check``, the same figures as ``check:`` on a judge step and ``rlaif judge-eval``).

    .venv/bin/python bench/judge.py [--data tests/fixtures/judge_prefs.jsonl] [--method pairwise|constitutional|both]
                                    [--cot] [--logprobs] [--limit N] [--seed 0]

The file may be in any format rlaif.formats.human reads (generic prompt/chosen/rejected, HH-RLHF, ...). Each pair is
shown with the human-preferred response at a random position (A or B, seeded), so a judge that always picks one
position scores ~50%. Prints, per method: agreement with the human label (ties and failures count as misses),
agreement when both orders agree, position consistency, parse failures — each with its 95% Wilson interval and n —
ties, tokens/s, and for the constitutional judge the mean soft probability it gives the human-preferred response.
Changed with the judge check: ``--limit N`` draws N pairs at random (seeded by ``--seed``) instead of taking the
first N, and "agreement among decided labels" became agreement when both orders agree.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

MODEL = "builtin:smollm2-135m-instruct"
REPO = Path(__file__).resolve().parent.parent
STEPS = {
    "pairwise": "rlaif.steps.judges.PairwiseJudge",
    "constitutional": "rlaif.steps.constitutional.ConstitutionalJudge",
}


def build_step(method: str, args: argparse.Namespace, backend: Any) -> tuple[Any, Any]:
    from rlaif.pipeline.runtime import EngineRuntime
    from rlaif.pipeline.spec import ModelSpec
    from rlaif.registry import resolve_component

    cls = resolve_component({}, STEPS[method], "step")  # a dotted path, as a pipeline file names a plugin
    params: dict[str, Any] = {"model": "judge", "cot": args.cot}
    if method == "pairwise":
        params["logprobs"] = args.logprobs  # the constitutional judge always reads log-probabilities
    step = cls(f"bench_{method}", cls.Params(**params), REPO)
    spec = ModelSpec("judge", "vllm", MODEL, sampling={"temperature": 0.0, "max_tokens": args.cot_max_tokens})
    runtime = EngineRuntime({"judge": spec}, pipeline_seed=args.seed, provided={"judge": backend})
    ctx = runtime.context(step.name, 0)
    step.setup(ctx)
    return step, ctx


def evaluate(method: str, records: list[dict[str, Any]], args: argparse.Namespace, backend: Any) -> dict[str, Any]:
    from rlaif.steps.judge_check import run_check

    step, ctx = build_step(method, args, backend)
    started = time.perf_counter()
    figures = run_check(step.process, ctx, records)
    seconds = time.perf_counter() - started
    name = method + (" +cot" if args.cot else "") + (" +logprobs" if args.logprobs and method == "pairwise" else "")
    return {
        **figures,
        "method": name,
        "data": args.data.name,
        "seconds": seconds,
        "tokens_per_s": (figures["tokens_in"] + figures["tokens_out"]) / seconds,
        "generated_tokens_per_s": figures["tokens_out"] / seconds,
    }


def report(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console

    from rlaif.judge_eval_cli import figures_table

    console = Console()
    print("\nJudge agreement with human labels (chance = 50% agreement; ties and failures count as misses)")
    for row in rows:
        console.print(figures_table({**row, "step": row["method"]}))
        print(
            f"  {row['seconds']:.1f} s, {row['tokens_per_s']:.0f} tokens/s ({row['generated_tokens_per_s']:.0f} gen)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "tests" / "fixtures" / "judge_prefs.jsonl")
    parser.add_argument("--method", choices=["pairwise", "constitutional", "both"], default="pairwise")
    parser.add_argument("--cot", action="store_true", help="chain of thought before the verdict")
    parser.add_argument("--logprobs", action="store_true", help="pairwise: confidence from verdict-token logprobs")
    parser.add_argument("--cot-max-tokens", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None, help="pairs drawn at random (seeded); default all")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from rlaif.backends.vllm_backend import VllmBackend
    from rlaif.steps.judge_check import load_pairs

    records = load_pairs(args.data, args.limit, args.seed)
    print(
        f"{len(records)} pairs from {args.data}; human-preferred response shown as A in "
        f"{sum(r['_check_human'] == 'A' for r in records)}"
    )
    methods = ["pairwise", "constitutional"] if args.method == "both" else [args.method]
    with VllmBackend(MODEL, max_model_len=2048, seed=args.seed) as backend:
        rows = [evaluate(method, records, args, backend) for method in methods]
    report(rows)


if __name__ == "__main__":
    main()
