"""A judge's agreement with human preference labels, on the builtin model through the vllm backend.

    .venv/bin/python bench/judge.py [--data tests/fixtures/judge_prefs.jsonl] [--method pairwise|constitutional|both]
                                    [--cot] [--logprobs] [--limit N] [--seed 0]

The file may be in any format rlaif.formats.human reads (generic prompt/chosen/rejected, HH-RLHF, ...). Each pair is
shown with the human-preferred response at a random position (A or B, seeded), so a judge that always picks one
position scores ~50%. Prints, per method: agreement with the human label (ties and failures count as misses),
agreement among decided labels, position consistency (both orders agree), parse failures, ties, tokens/s, and for
the constitutional judge the mean soft probability it gives the human-preferred response.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

MODEL = "builtin:smollm2-135m-instruct"
REPO = Path(__file__).resolve().parent.parent
STEPS = {
    "pairwise": "rlaif.steps.judges.PairwiseJudge",
    "constitutional": "rlaif.steps.constitutional.ConstitutionalJudge",
}
FAILURES = ("judge parse failure", "no answer-token logprobs")


def load_pairs(path: Path, limit: int | None, seed: int) -> list[dict[str, Any]]:
    """Records for a judge: ``prompt``, ``responses`` = the pair in a seeded random order, ``human`` = "A" | "B"."""
    from rlaif.formats import completion_text
    from rlaif.formats.human import FormatError, convert, detect_format

    raw = [json.loads(line) for line in path.open() if line.strip()]
    rng = random.Random(seed)
    records = []
    for record in raw[:limit]:
        try:
            [row] = convert(detect_format(record) or "generic", record)[:1]
        except (FormatError, ValueError) as exc:
            print(f"  skipped a record: {exc}")
            continue
        chosen, rejected = completion_text(row["chosen"]), completion_text(row["rejected"])
        human_first = rng.random() < 0.5
        responses = [chosen, rejected] if human_first else [rejected, chosen]
        records.append({"prompt": row["prompt"], "responses": responses, "human": "A" if human_first else "B"})
    return records


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
    step, ctx = build_step(method, args, backend)
    started = time.perf_counter()
    result = step.process(records, ctx)
    seconds = time.perf_counter() - started
    judged = result.records
    n = len(records)
    correct = sum(r["preference"] == r["human"] for r in judged)
    decided = [r for r in judged if r["preference"] != "tie"]
    failures = sum(q.reason in FAILURES for q in result.quarantined)
    row = {
        "method": method
        + (" +cot" if args.cot else "")
        + (" +logprobs" if args.logprobs and method == "pairwise" else ""),
        "records": n,
        "agreement_%": 100 * correct / n if n else 0.0,
        "agreement_decided_%": 100 * correct / len(decided) if decided else None,
        "position_consistency_%": 100 * sum(r["consistent"] for r in judged) / len(judged) if judged else 0.0,
        "parse_failure_%": 100 * failures / n if n else 0.0,
        "ties_%": 100 * (len(judged) - len(decided)) / n if n else 0.0,
        "tokens_per_s": (result.tokens_in + result.tokens_out) / seconds,
        "generated_tokens_per_s": result.tokens_out / seconds,
        "seconds": seconds,
    }
    if method == "constitutional" and judged:
        soft = [r["p_a"] if r["human"] == "A" else 1 - r["p_a"] for r in judged]
        row["mean_p_human_preferred"] = sum(soft) / len(soft)
    return row


def report(rows: list[dict[str, Any]]) -> None:
    print("\nJudge agreement with human labels (chance = 50% agreement; ties and failures count as misses)")
    for row in rows:
        print(f"\n  {row['method']} on {row['records']} pairs, {row['seconds']:.1f} s")
        for key, value in row.items():
            if key in ("method", "records", "seconds"):
                continue
            shown = "n/a" if value is None else f"{value:.3f}" if "p_human" in key else f"{value:.1f}"
            print(f"    {key:28s} {shown:>8s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "tests" / "fixtures" / "judge_prefs.jsonl")
    parser.add_argument("--method", choices=["pairwise", "constitutional", "both"], default="pairwise")
    parser.add_argument("--cot", action="store_true", help="chain of thought before the verdict")
    parser.add_argument("--logprobs", action="store_true", help="pairwise: confidence from verdict-token logprobs")
    parser.add_argument("--cot-max-tokens", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from rlaif.backends.vllm_backend import VllmBackend

    records = load_pairs(args.data, args.limit, args.seed)
    print(
        f"{len(records)} pairs from {args.data}; human-preferred response shown as A in "
        f"{sum(r['human'] == 'A' for r in records)}"
    )
    methods = ["pairwise", "constitutional"] if args.method == "both" else [args.method]
    with VllmBackend(MODEL, max_model_len=2048, seed=args.seed) as backend:
        rows = [evaluate(method, records, args, backend) for method in methods]
    report(rows)


if __name__ == "__main__":
    main()
