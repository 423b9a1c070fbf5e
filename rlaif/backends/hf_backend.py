"""In-process ``transformers.generate``: the fallback when vLLM is unavailable. Differences from the vLLM backend:

- a seed covers the whole call, not each request: the same prompts, parameters and batch size reproduce exactly;
- ``choice`` is served by scoring every allowed string as a continuation; ``regex``/``json_schema`` are refused;
- a batch's room for new tokens is the context left beside its longest prompt (batches are sorted by length, so
  only prompts close to the context limit may stop earlier than ``max_tokens``);
- ``logprobs`` keeps the raw logits of every step until the batch ends (rows x steps x vocab floats).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rlaif.backends.base import (
    BackendBase,
    TokenizedPrompt,
    admit_prompts,
    plain_generation,
    tokenize_prompt,
    transient,
)
from rlaif.models import resolve_model
from rlaif.schema import Completion, GenerationParams, GenerationResult, LoraAdapter, Prompt, TokenLogprob

log = logging.getLogger(__name__)

# Tokenizers with no known limit report model_max_length as 1e30; anything this large is not a real context.
_SANE_CONTEXT = 10_000_000
_FALLBACK_CONTEXT = 2048


class HFBackend(BackendBase):
    """Batched ``model.generate`` on left-padded batches of similar length (padded here, not by the tokenizer)."""

    name = "hf"

    def __init__(
        self,
        model: str,
        *,
        batch_size: int = 16,
        dtype: str = "auto",
        device: str | None = None,
        max_model_len: int | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        path = resolve_model(model)
        self._tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._model: Any = AutoModelForCausalLM.from_pretrained(
            path, dtype=_torch_dtype(dtype, self.device), trust_remote_code=trust_remote_code
        )
        self._model.to(self.device).eval()
        self.max_model_len = max_model_len or _context_length(self._model.config, self._tokenizer)
        eos = self._model.generation_config.eos_token_id
        self._eos_ids = {*(eos if isinstance(eos, list) else [eos]), self._tokenizer.eos_token_id} - {None}
        self._adapters: dict[str, str] = {}  # adapter path -> the name peft loaded it under

    def close(self) -> None:
        """Drop the model and free its memory. Safe to call twice."""
        if self._model is None:
            return
        import torch

        self._model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- generation -------------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[GenerationResult]:
        import torch

        if self._model is None:
            raise RuntimeError("the hf backend is closed")
        if params.regex is not None or params.json_schema is not None:
            raise ValueError(
                "the hf backend does not support regex or json_schema structured outputs (only choice); "
                "use the vllm or openai backend for them"
            )
        results, items = admit_prompts(prompts, lambda p: tokenize_prompt(self._tokenizer, p), self.max_model_len)
        if items:
            self._activate(params.lora)
            # Similar lengths share a batch so little compute goes to padding; longest first surfaces OOM early.
            items.sort(key=lambda item: len(item.token_ids), reverse=True)
            per_batch = self.batch_size if params.choice is None else max(1, self.batch_size // len(params.choice))
            with torch.inference_mode(), _seeded(params.seed, self.device):
                for start in range(0, len(items), per_batch):
                    results.update(self._run(items[start : start + per_batch], params))
        return [results[i] for i in range(len(prompts))]

    def _activate(self, adapter: LoraAdapter | None) -> None:
        if adapter is None:
            if self._adapters:
                self._model.disable_adapters()
            return
        name = self._adapters.get(adapter.path)
        if name is None:
            # peft keys adapters by module-dict names, which may not contain dots; user names might.
            name = f"lora_{len(self._adapters)}"
            log.info("loading LoRA adapter %s from %s as %s", adapter.name, adapter.path, name)
            self._model.load_adapter(adapter.path, adapter_name=name)
            self._adapters[adapter.path] = name
        self._model.set_adapter(name)
        self._model.enable_adapters()

    def _run(self, batch: list[TokenizedPrompt], params: GenerationParams) -> dict[int, GenerationResult]:
        import torch

        try:
            return self._choose(batch, params) if params.choice is not None else self._sample(batch, params)
        except torch.OutOfMemoryError as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(batch) == 1:
                reason = transient(f"out of memory: {exc}".splitlines()[0])
                return {batch[0].index: GenerationResult.failed(reason, len(batch[0].token_ids))}
            log.warning("batch of %d ran out of memory; splitting it", len(batch))
            half = len(batch) // 2
            return self._run(batch[:half], params) | self._run(batch[half:], params)

    def _padded(self, batch: list[TokenizedPrompt], suffixes: list[list[int]] | None = None) -> tuple[Any, Any]:
        import torch

        seqs = [item.token_ids + (suffixes[i] if suffixes else []) for i, item in enumerate(batch)]
        width = max(len(s) for s in seqs)
        pad = self._tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=self.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=self.device)
        return ids, mask

    def _sample(self, batch: list[TokenizedPrompt], params: GenerationParams) -> dict[int, GenerationResult]:
        from transformers import GenerationConfig

        sampling = params.temperature > 0
        rows_per_item = params.n if sampling else 1  # greedy samples are identical: generate once, copy
        input_ids, attention_mask = self._padded(batch)
        config = GenerationConfig(
            max_new_tokens=min(params.max_tokens, self.max_model_len - input_ids.shape[1]),
            do_sample=sampling,
            num_return_sequences=rows_per_item,
            pad_token_id=self._tokenizer.pad_token_id,
            stop_strings=list(params.stop) or None,
            output_logits=params.logprobs is not None,
            return_dict_in_generate=True,
            **({"temperature": params.temperature, "top_p": params.top_p, "top_k": 0} if sampling else {}),
        )
        with plain_generation(self._model):
            out = self._model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                tokenizer=self._tokenizer if params.stop else None,
            )
        generated = out.sequences[:, input_ids.shape[1] :].tolist()
        table = _logprob_table(out.logits, out.sequences[:, input_ids.shape[1] :], params.logprobs)
        results = {}
        for i, item in enumerate(batch):
            rows = [i * rows_per_item + j % rows_per_item for j in range(params.n)]
            completions = [self._completion(generated[r], table[r] if table else None, params) for r in rows]
            results[item.index] = GenerationResult(completions=completions, prompt_tokens=len(item.token_ids))
        return results

    def _completion(self, tokens: list[int], table: Any, params: GenerationParams) -> Completion:
        count, finish = len(tokens), "length"
        eos_at = next((pos for pos, token in enumerate(tokens) if token in self._eos_ids), None)
        if eos_at is not None:
            count, finish = eos_at + 1, "stop"
        elif self._tokenizer.pad_token_id not in self._eos_ids:
            # A row stopped by a stop string is padded to the batch's length afterwards.
            while count and tokens[count - 1] == self._tokenizer.pad_token_id:
                count -= 1
        body = tokens[: count - 1] if finish == "stop" else tokens[:count]
        text = self._tokenizer.decode(body, skip_special_tokens=True)
        hits = [(pos, len(stop)) for stop in params.stop if stop and (pos := text.find(stop)) >= 0]
        if hits:
            # vLLM drops the stop string from the text and counts tokens through the one that completed it.
            cut, length = min(hits)
            count = self._tokens_through(body, cut + length)
            text, finish = text[:cut], "stop"
        logprobs = self._token_logprobs(tokens[:count], table) if table is not None else None
        return Completion(
            text=text, completion_tokens=count, finish_reason=finish, logprobs=logprobs, token_ids=tokens[:count]
        )

    def _tokens_through(self, tokens: list[int], chars: int) -> int:
        # Fewest tokens whose text reaches `chars` characters; text grows with the prefix, so bisect.
        low, high = 1, len(tokens)
        while low < high:
            mid = (low + high) // 2
            if len(self._tokenizer.decode(tokens[:mid], skip_special_tokens=True)) >= chars:
                high = mid
            else:
                low = mid + 1
        return low

    def _token_logprobs(self, tokens: list[int], table: tuple[Any, Any, Any]) -> list[TokenLogprob]:
        chosen, top_values, top_ids = table
        out = []
        for step, token in enumerate(tokens):
            top: dict[str, float] = {}
            for alt, value in zip(top_ids[step].tolist(), top_values[step].tolist(), strict=True):
                text = self._tokenizer.decode([alt])
                # Distinct ids can decode alike (partial UTF-8 bytes); keep each alternative under a unique key.
                top[self._tokenizer.convert_ids_to_tokens(alt) if text in top else text] = value
            out.append(TokenLogprob(token=self._tokenizer.decode([token]), logprob=float(chosen[step]), top=top))
        return out

    # -- structured outputs -----------------------------------------------------------------------------------
    def _choose(self, batch: list[TokenizedPrompt], params: GenerationParams) -> dict[int, GenerationResult]:
        import torch

        assert params.choice is not None
        options = [self._tokenizer(c, add_special_tokens=False).input_ids for c in params.choice]
        keep = max(len(o) for o in options)
        rows = [item for item in batch for _ in options]
        ids, mask = self._padded(rows, [o for _ in batch for o in options])
        # Left padding keeps every choice at the end of its row, so only the last positions' logits are needed.
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self._model(input_ids=ids, attention_mask=mask, position_ids=position_ids, logits_to_keep=keep + 1)
        logp = torch.log_softmax(logits.logits[:, :-1].float(), dim=-1)  # index t predicts the token at t + 1
        scores = torch.empty(len(batch), len(options))
        tables: list[tuple[Any, Any, Any]] = []
        for r, option in enumerate(options * len(batch)):
            steps = logp[r, keep - len(option) :]
            chosen = steps.gather(-1, torch.tensor(option, device=steps.device)[:, None])[:, 0]
            scores[r // len(options), r % len(options)] = chosen.sum()
            top = steps.topk(params.logprobs or 0, dim=-1)
            tables.append((chosen.cpu(), top.values.cpu(), top.indices.cpu()))
        if params.temperature == 0:
            picks = scores.argmax(-1, keepdim=True).expand(-1, params.n)
        else:
            picks = torch.multinomial(torch.softmax(scores / params.temperature, dim=-1), params.n, replacement=True)
        results = {}
        for i, item in enumerate(batch):
            completions = []
            for pick in picks[i].tolist():
                option, table = options[pick], tables[i * len(options) + pick]
                logprobs = self._token_logprobs(option, table) if params.logprobs is not None else None
                completions.append(Completion(params.choice[pick], len(option), "stop", logprobs, option))
            results[item.index] = GenerationResult(completions=completions, prompt_tokens=len(item.token_ids))
        return results


def _logprob_table(logits: Any, generated: Any, k: int | None) -> list[tuple[Any, Any, Any]] | None:
    """Per row: (logprob of each generated token, top-k logprobs, their ids), from the raw logits like vLLM."""
    if k is None or not logits:
        return None
    import torch

    chosen, values, ids = [], [], []
    for step, step_logits in enumerate(logits):  # one step at a time: a log-softmax over all steps is huge
        logp = torch.log_softmax(step_logits.float(), dim=-1)
        chosen.append(logp.gather(-1, generated[:, step : step + 1])[:, 0])
        top = logp.topk(k, dim=-1)
        values.append(top.values)
        ids.append(top.indices)
    chosen_t, values_t, ids_t = (torch.stack(x, dim=1).cpu() for x in (chosen, values, ids))
    return [(chosen_t[r], values_t[r], ids_t[r]) for r in range(chosen_t.shape[0])]


@contextmanager
def _seeded(seed: int | None, device: Any) -> Iterator[None]:
    """Seed torch for one call without disturbing the caller's global RNG state."""
    if seed is None:
        yield
        return
    import torch

    devices = [device.index or torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _torch_dtype(dtype: str, device: Any) -> Any:
    import torch

    if dtype == "auto":
        # bf16 halves memory on GPUs; on many CPUs bf16 matmuls are emulated and slower than fp32.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto, float32, bfloat16 or float16")
    return value


def _context_length(config: Any, tokenizer: Any) -> int:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    candidates = [getattr(text_config, key, None) for key in ("max_position_embeddings", "n_positions")]
    limits = [v for v in [*candidates, tokenizer.model_max_length] if isinstance(v, int) and 0 < v < _SANE_CONTEXT]
    if not limits:
        log.warning("model declares no context length; assuming %d tokens", _FALLBACK_CONTEXT)
        return _FALLBACK_CONTEXT
    return min(limits)
