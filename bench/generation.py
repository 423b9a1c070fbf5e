"""Generation throughput: rlaif's backends against raw vLLM, in one process, on the same prompts.

    .venv/bin/python bench/generation.py [--prompts 256] [--max-tokens 64] [--repeat 5] [--profile] [--hf] [--openai]

1. raw ``vllm.LLM.chat`` on the engine the rlaif vllm backend built (same engine, so the ratio isolates rlaif's
   own overhead: prompt checks, tokenization, result conversion), and 2. the rlaif ``vllm`` backend: the same
   prompts (their token ids checked equal), the same sampling parameters, the same untimed warm-up run each, then
   ``--repeat`` timed runs per side, interleaved with the order alternating. Per run: tokens, seconds, tok/s, and
   the seconds inside vLLM's engine loop (``LLM._run_engine``) vs around it. Then the median and min-max tok/s per
   side, the ratio of medians, and the spread of the per-round (paired) ratios. Target: rlaif / raw >= 0.97.
   ``--profile``: one more run per side under cProfile, where rlaif's own time goes outside the engine loop.
3. ``--hf``: the rlaif ``hf`` backend (batched transformers.generate), one run;
4. ``--openai``: the rlaif ``openai`` backend against a ``vllm serve`` of the same model started here, one run.
   Both are off by default (slow; indicative only: one run each, not interleaved).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

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


def make_prompts(count: int) -> list[list[dict[str, str]]]:
    asks = [
        "Write a short paragraph about",
        "Give three facts about",
        "Explain to a child what you know about",
        "Write a haiku and a one-line note about",
    ]
    return [
        [{"role": "user", "content": f"{asks[i % len(asks)]} {TOPICS[i % len(TOPICS)]} (#{i})."}] for i in range(count)
    ]


def timed(label: str, run: Callable[[], int]) -> tuple[str, float, int, float]:
    start = time.perf_counter()
    tokens = run()
    seconds = time.perf_counter() - start
    print(f"  {label}: {tokens} tokens in {seconds:.1f} s", flush=True)
    return label, tokens / seconds, tokens, seconds


def spread(values: list[float], fmt: str = ".1f") -> str:
    """median [min-max]"""
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


class EngineClock:
    """Seconds spent in vLLM's engine loop (``LLM._run_engine``: scheduling, the model, detokenizing), so that a
    run's wall time splits into the engine loop and everything around it (rendering and tokenizing the prompts,
    adding the requests, converting the results)."""

    def __init__(self, llm) -> None:
        self.seconds = 0.0
        run_engine = llm._run_engine

        def clocked(*args, **kwargs):
            start = time.perf_counter()
            try:
                return run_engine(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        llm._run_engine = clocked  # an instance attribute: LLM.generate/chat call self._run_engine

    def lap(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def bench_vllm(prompts, max_tokens: int, repeat: int, profile: bool) -> tuple[list[float], list[float]]:
    """tok/s of raw vLLM and of the rlaif vllm backend, ``repeat`` interleaved runs each on one engine."""
    from vllm import SamplingParams

    from rlaif.backends.base import tokenize_prompt
    from rlaif.backends.vllm_backend import VllmBackend, torch_threads
    from rlaif.schema import GenerationParams

    rates: dict[str, list[float]] = {"raw vllm": [], "rlaif vllm": []}
    with VllmBackend(MODEL, max_model_len=2048) as backend:
        raw_params = SamplingParams(temperature=0.8, max_tokens=max_tokens)
        params = GenerationParams(temperature=0.8, max_tokens=max_tokens)
        clock = EngineClock(backend._llm)

        def raw(batch=prompts) -> int:
            # As vLLM leaves the scheduling process (ours, on CPU): the torch thread count its executor set, which
            # the backend holds while it generates and gives back to trainers afterwards.
            with torch_threads(backend._serving_threads):
                outputs = backend._llm.chat(batch, raw_params, use_tqdm=False)
            return sum(len(c.token_ids) for o in outputs for c in o.outputs)

        def ours(batch=prompts) -> int:
            return sum(r.completion_tokens for r in backend.generate(batch, params))

        # Same input on both sides: the backend's own rendering and tokenizing gives vLLM's chat token ids.
        with torch_threads(backend._serving_threads):
            check = backend._llm.chat(prompts[:16], SamplingParams(max_tokens=1), use_tqdm=False)
        assert [o.prompt_token_ids for o in check] == [tokenize_prompt(backend._tokenizer, p) for p in prompts[:16]]
        # The same warm-up for both sides: one untimed run each on the same 32 prompts.
        for fn in (raw, ours):
            fn(prompts[:32])
        clock.lap()
        print(f"  {'run':<14}{'tokens':>8}{'seconds':>9}{'tok/s':>8}{'engine loop s':>15}{'outside s':>11}{'load':>6}")
        for r in range(repeat):
            # Interleaved, the order alternating (raw, ours, ours, raw, ...), so neither side always runs on a warmer
            # engine or in the same phase of other processes' load.
            for label, fn in [("raw vllm", raw), ("rlaif vllm", ours)][:: 1 if r % 2 == 0 else -1]:
                start = time.perf_counter()
                tokens = fn()
                seconds = time.perf_counter() - start
                engine = clock.lap()
                rates[label].append(tokens / seconds)
                print(
                    f"  {label:<14}{tokens:>8}{seconds:>9.1f}{tokens / seconds:>8.1f}{engine:>15.2f}"
                    f"{seconds - engine:>11.3f}{os.getloadavg()[0]:>6.1f}",
                    flush=True,
                )
        if profile:
            profile_sides(backend._llm, clock, raw, ours)
    return rates["raw vllm"], rates["rlaif vllm"]


PROFILED = [  # (label, file suffix, function): cumulative seconds outside the engine loop. Only calls that finish
    # before or start after the loop: the profiler's disable() inside it ends the frames still open (generate, chat).
    ("rlaif: admit_prompts (checks, render, tokenize)", "backends/base.py", "admit_prompts"),
    ("rlaif:   apply_chat_template (render)", "tokenization_utils_base.py", "apply_chat_template"),
    ("rlaif: _chunks", "vllm_backend.py", "_chunks"),
    ("rlaif: torch set_num_threads", "torch/__init__.py", "set_num_threads"),
    ("rlaif: _sampling_params", "vllm_backend.py", "_sampling_params"),
    ("rlaif: watchdog Thread.start", "threading.py", "start"),
    ("rlaif: _result (output conversion)", "vllm_backend.py", "_result"),
    ("vLLM: _add_chat_requests (render, tokenize, add)", "offline.py", "_add_chat_requests"),
    ("vLLM: _add_completion_requests (add token ids)", "offline.py", "_add_completion_requests"),
]


def profile_sides(llm, clock: EngineClock, raw: Callable[[], int], ours: Callable[[], int]) -> None:
    """One cProfile'd run per side, the profiler switched off inside vLLM's engine loop (``LLM._run_engine``, timed
    by ``clock`` instead): what remains is each side's own cost around the engine, function by function."""
    import cProfile
    import pstats

    run_engine = llm._run_engine
    for side, fn in (("raw vllm", raw), ("rlaif vllm", ours)):
        profiler = cProfile.Profile()

        def unprofiled(*args, profiler=profiler, **kwargs):
            profiler.disable()
            try:
                return run_engine(*args, **kwargs)
            finally:
                profiler.enable()

        llm._run_engine = unprofiled
        clock.lap()
        start = time.perf_counter()
        profiler.runcall(fn)
        total = time.perf_counter() - start
        llm._run_engine = run_engine
        engine = clock.lap()
        stats = pstats.Stats(profiler).stats  # {(file, line, function): (calls, primitive, tottime, cumtime, ...)}
        print(
            f"\nprofile of {side}, one run: {total:.2f} s wall, {engine:.2f} s in the engine loop (not profiled), "
            f"{total - engine:.3f} s outside it (profiled: {sum(v[2] for v in stats.values()):.3f} s own time)"
        )
        for label, suffix, function in PROFILED:
            cumulative = sum(
                v[3] for (file, _, name), v in stats.items() if name == function and file.endswith(suffix)
            )
            if cumulative:
                print(f"    {label:<48}{cumulative:>9.3f} s")
        top = sorted(((v[2], f"{Path(k[0]).name}:{k[2]}") for k, v in stats.items()), reverse=True)[:10]
        print("    top own time outside the loop: " + ", ".join(f"{name} {t:.3f}" for t, name in top))


def bench_hf(prompts, max_tokens: int) -> tuple[str, float, int, float]:
    from rlaif.backends.hf_backend import HFBackend
    from rlaif.schema import GenerationParams

    with HFBackend(MODEL, batch_size=64) as backend:
        params = GenerationParams(temperature=0.8, max_tokens=max_tokens)
        return timed("rlaif hf", lambda: sum(r.completion_tokens for r in backend.generate(prompts, params)))


def bench_openai(prompts, max_tokens: int) -> tuple[str, float, int, float]:
    import httpx

    from rlaif.backends.openai_backend import OpenAIBackend
    from rlaif.models import resolve_model
    from rlaif.schema import GenerationParams

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        resolve_model(MODEL),
        "--served-model-name",
        MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--gpu-memory-utilization",
        "0.2",
        "--max-model-len",
        "2048",
        "--dtype",
        "float32",
        "--enforce-eager",
    ]  # the same engine settings the rlaif vllm backend picks on CPU
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(2)
        with OpenAIBackend(MODEL, base_url=url, max_concurrency=256, timeout_s=600) as backend:
            params = GenerationParams(temperature=0.8, max_tokens=max_tokens)
            backend.generate(prompts[:8], params)  # warm-up
            return timed("rlaif openai", lambda: sum(r.completion_tokens for r in backend.generate(prompts, params)))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5, help="interleaved timed runs per side (raw, rlaif vllm)")
    parser.add_argument("--profile", action="store_true", help="then one cProfile'd run per side, summarised")
    parser.add_argument("--hf", action="store_true", help="also the rlaif hf backend (one run, after the engine)")
    parser.add_argument("--openai", action="store_true", help="also the rlaif openai backend against vllm serve")
    args = parser.parse_args()
    prompts = make_prompts(args.prompts)
    print(
        f"{args.prompts} prompts, {args.max_tokens} new tokens, {MODEL}, {args.repeat} interleaved runs per side, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    raw, ours = bench_vllm(prompts, args.max_tokens, args.repeat, args.profile)
    paired = [o / r for r, o in zip(raw, ours, strict=True)]
    reference = statistics.median(raw)
    print(f"\n{'run':<14}{'tok/s per run':<44}{'median [min-max]':<24}ratio to raw vllm")
    for label, rates in (("raw vllm", raw), ("rlaif vllm", ours)):
        runs = " ".join(f"{r:.1f}" for r in rates)
        print(f"{label:<14}{runs:<44}{spread(rates):<24}{statistics.median(rates) / reference:.3f}")
    ratio = statistics.median(ours) / reference
    print(f"ratio of medians rlaif / raw: {ratio:.3f}; per round (paired): {spread(paired, '.3f')}")
    print(f"target rlaif vllm / raw vllm >= 0.97: {'met' if ratio >= 0.97 else 'NOT met'}")
    others = ([bench_hf(prompts, args.max_tokens)] if args.hf else []) + (
        [bench_openai(prompts, args.max_tokens)] if args.openai else []
    )
    for label, rate, _, _ in others:
        print(f"{label:<14}{rate:>10.1f} tok/s, {rate / reference:.3f} of raw vllm's median (one run, indicative)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
