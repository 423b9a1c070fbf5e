"""Verifier throughput: rows/s of the ``ifeval`` verifier on synthetic responses (1-3 sampled constraints each) and
of the ``math`` verifier (math-verify) on GSM8K-style and boxed-LaTeX answers.

    .venv/bin/python bench/verify.py [--ifeval-rows 100000] [--math-rows 10000] [--repeat 3]

Each row draws its own constraints (``sample_constraints``, as the ``add_constraints`` step does); responses are
built to pass about half of them (lowercase or not, bullets, JSON, titles, P.S. lines, placeholders, commas or
none), so the checks do real work on both branches. Each verifier runs ``--repeat`` times over the same rows, its
parse caches cleared before every run, after an untimed 10-row warm-up (imports); printed: rows/s median [min-max].
Target (issue 13): >= 20k rows/s for the IFEval family. No reference implementation runs beside it: the IFEval
packages on PyPI need NLTK data fetched from the network (see docs/verifiers.md).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlaif.steps.base import StepContext  # noqa: E402
from rlaif.steps.verify import Verify  # noqa: E402
from rlaif.verifiers import verify  # noqa: E402
from rlaif.verifiers.constraints import KEYWORD_POOL, PARSED, sample_constraints  # noqa: E402
from rlaif.verifiers.math import _reference  # noqa: E402


def response(rng: random.Random) -> str:
    words = [rng.choice(KEYWORD_POOL) for _ in range(rng.randint(20, 160))]
    sentences = [" ".join(words[i : i + 9]).capitalize() + "." for i in range(0, len(words), 9)]
    shape = rng.random()
    if shape < 0.1:
        return '{"answer": "' + " ".join(words[:30]) + '"}'
    if shape < 0.3:
        body = "\n".join(f"* {s}" for s in sentences[: rng.randint(2, 6)])
    elif shape < 0.5:
        body = "\n***\n".join(" ".join(sentences[i : i + 3]) for i in range(0, len(sentences), 3))
    else:
        body = " ".join(sentences)
    if rng.random() < 0.3:
        body = f"<<{words[0]} {words[1]}>>\n{body}"
    if rng.random() < 0.3:
        body += f"\nP.S. see [{words[2]}] and [{words[3]}]."
    if rng.random() < 0.3:
        body = body.lower()
    return body if rng.random() < 0.5 else body.replace(",", "") + ", " + words[-1]


def ifeval_rows(n: int, seed: int = 0) -> tuple[list[str], list[list[dict]]]:
    rng = random.Random(seed)
    return [response(rng) for _ in range(n)], [sample_constraints(rng, rng.randint(1, 3)) for _ in range(n)]


def math_rows(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    completions, answers = [], []
    for _ in range(n):
        a, b = rng.randint(2, 999), rng.randint(2, 99)
        truth = a * b if rng.random() < 0.5 else a + b
        given = truth if rng.random() < 0.7 else truth + rng.randint(1, 9)
        style = rng.random()
        if style < 0.4:
            completions.append(f"First {a} and {b}. So the result is {given}.\n#### {given}")
        elif style < 0.8:
            completions.append(f"We compute it step by step. The answer is $\\boxed{{{given}}}$.")
        elif style < 0.9:
            completions.append(f"Half of it: $\\boxed{{\\frac{{{given}}}{{2}}}}$")
            truth = given / 2
        else:
            completions.append("I am not sure how to solve this one.")
        answers.append(str(truth))
    return completions, answers


def timed(name: str, completions: list[str], columns: dict[str, list], repeat: int) -> None:
    prompts = ["prompt"] * len(completions)
    rates, verdicts = [], []
    verify(name, prompts[:10], completions[:10], {k: v[:10] for k, v in columns.items()})  # imports, compiled regexes
    for _ in range(repeat):
        PARSED.clear()  # every run starts cold: no spec or reference parsed by an earlier run
        _reference.cache_clear()
        start = time.perf_counter()
        verdicts = verify(name, prompts, completions, columns)
        rates.append(len(completions) / (time.perf_counter() - start))
    passed = sum(v.passed is True for v in verdicts)
    unverifiable = sum(v.score is None for v in verdicts)
    print(
        f"{name:>6}: {len(completions)} rows, {statistics.median(rates):,.0f} rows/s median "
        f"[{min(rates):,.0f}-{max(rates):,.0f}] over {repeat} runs; passed {passed}, unverifiable {unverifiable}"
    )


def timed_step(completions: list[str], constraints: list[list[dict]], repeat: int, batch: int = 1000) -> None:
    """The ``verify`` step itself on the same rows, as a pipeline runs it: records with a ``responses`` list (two
    responses each: the row's and the next row's) and the constraints as the JSON string ``add_constraints`` writes,
    in batches of the step's default size; records are built before the clock starts."""
    records = [
        {"prompt": "prompt", "responses": [c, completions[i - 1]], "constraints": json.dumps(spec)}
        for i, (c, spec) in enumerate(zip(completions, constraints, strict=True))
    ]
    step = Verify("verified", Verify.Params(verifier="ifeval"), Path("."))
    ctx = StepContext("verified")
    step.process(records[:10], ctx)
    rates = []
    for _ in range(repeat):
        PARSED.clear()
        start = time.perf_counter()
        kept = sum(len(step.process(records[i : i + batch], ctx).records) for i in range(0, len(records), batch))
        rates.append(len(records) / (time.perf_counter() - start))
    print(
        f"  verify step (ifeval, 2 responses a row): {len(records)} rows, {statistics.median(rates):,.0f} rows/s "
        f"median [{min(rates):,.0f}-{max(rates):,.0f}] ({2 * statistics.median(rates):,.0f} responses/s); "
        f"kept {kept}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ifeval-rows", type=int, default=100_000)
    parser.add_argument("--math-rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    completions, constraints = ifeval_rows(args.ifeval_rows)
    timed("ifeval", completions, {"constraints": constraints}, args.repeat)
    timed_step(completions, constraints, args.repeat)
    completions, answers = math_rows(args.math_rows)
    timed("math", completions, {"answer": answers}, args.repeat)


if __name__ == "__main__":
    main()
