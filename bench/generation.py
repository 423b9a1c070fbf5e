"""Generation throughput: rlaif's backends against raw vLLM, in one process, on the same prompts.

    .venv/bin/python bench/generation.py [--prompts 256] [--max-tokens 64] [--skip-hf] [--skip-openai]

1. raw ``vllm.LLM.chat`` on the engine the rlaif vllm backend built (same engine, so the ratio isolates rlaif's
   own overhead: prompt checks, tokenization, result conversion);
2. the rlaif ``vllm`` backend;
3. the rlaif ``hf`` backend (batched transformers.generate);
4. the rlaif ``openai`` backend against a ``vllm serve`` of the same model started here.

Prints generated tokens/s for each and the ratio to raw vLLM. Target: rlaif vllm / raw vllm >= 0.97.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

MODEL = "builtin:smollm2-135m-instruct"
TOPICS = ["rivers", "bread", "chess", "volcanoes", "jazz", "bicycles", "tea", "glaciers", "owls", "lighthouses",
          "algebra", "gardens", "comets", "markets", "bridges", "whales"]


def make_prompts(count: int) -> list[list[dict[str, str]]]:
    asks = ["Write a short paragraph about", "Give three facts about", "Explain to a child what you know about",
            "Write a haiku and a one-line note about"]
    return [[{"role": "user", "content": f"{asks[i % len(asks)]} {TOPICS[i % len(TOPICS)]} (#{i})."}]
            for i in range(count)]


def timed(label: str, run: Callable[[], int]) -> tuple[str, float, int, float]:
    start = time.perf_counter()
    tokens = run()
    seconds = time.perf_counter() - start
    print(f"  {label}: {tokens} tokens in {seconds:.1f} s", flush=True)
    return label, tokens / seconds, tokens, seconds


def bench_vllm(prompts, max_tokens: int) -> list[tuple[str, float, int, float]]:
    from vllm import SamplingParams

    from rlaif.backends.vllm_backend import VllmBackend, torch_threads
    from rlaif.schema import GenerationParams

    rows = []
    with VllmBackend(MODEL, max_model_len=2048) as backend:
        raw_params = SamplingParams(temperature=0.8, max_tokens=max_tokens)
        params = GenerationParams(temperature=0.8, max_tokens=max_tokens)
        backend._llm.chat(prompts[:8], raw_params, use_tqdm=False)  # warm-up, not timed

        def raw() -> int:
            # As vLLM leaves the scheduling process (ours, on CPU): the torch thread count its executor set, which
            # the backend holds while it generates and gives back to trainers afterwards.
            with torch_threads(backend._serving_threads):
                outputs = backend._llm.chat(prompts, raw_params, use_tqdm=False)
            return sum(len(c.token_ids) for o in outputs for c in o.outputs)

        def ours() -> int:
            return sum(r.completion_tokens for r in backend.generate(prompts, params))

        # Alternate the order so neither side always runs on a warmer engine.
        for label, fn in [("raw vllm", raw), ("rlaif vllm", ours), ("rlaif vllm", ours), ("raw vllm", raw)]:
            rows.append(timed(label, fn))
    return rows


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
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model(MODEL),
           "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(port),
           "--gpu-memory-utilization", "0.2", "--max-model-len", "2048", "--dtype", "float32",
           "--enforce-eager"]  # the same engine settings the rlaif vllm backend picks on CPU
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
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--skip-openai", action="store_true")
    args = parser.parse_args()
    prompts = make_prompts(args.prompts)
    print(f"{args.prompts} prompts, {args.max_tokens} new tokens, {MODEL}", flush=True)
    rows = bench_vllm(prompts, args.max_tokens)
    if not args.skip_hf:
        rows.append(bench_hf(prompts, args.max_tokens))
    if not args.skip_openai:
        rows.append(bench_openai(prompts, args.max_tokens))
    best: dict[str, float] = {}
    for label, rate, _, _ in rows:
        best[label] = max(best.get(label, 0.0), rate)
    reference = best["raw vllm"]
    print(f"\n{'run':<14}{'tok/s':>10}{'ratio to raw vllm':>20}")
    for label, rate in best.items():
        print(f"{label:<14}{rate:>10.1f}{rate / reference:>20.3f}")


if __name__ == "__main__":
    main()
