"""Response generation from a prompt column with one or more named models."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from rlaif.schema import Prompt
from rlaif.steps.base import BatchResult, Quarantined, Record, Step, StepParams


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
    Outputs: ``responses`` (list of strings), ``response_models`` (the model reference of each response),
    ``response_finish_reasons``, ``generation_params`` (the sampling parameters used, as a JSON-able dict).
    A prompt the backend cannot serve is quarantined with the backend's reason.
    """

    Params = GenerateResponsesParams
    outputs = ("responses", "response_models", "response_finish_reasons", "generation_params")
    default_batch_size = 256  # large batches keep vLLM saturated
    params: GenerateResponsesParams

    def required_columns(self) -> set[str]:
        return {self.params.prompt_column}

    def process(self, records: list[Record]) -> BatchResult:
        assert self.runtime is not None
        result = BatchResult()
        outputs: list[dict[str, list[Any]]] = [
            {"responses": [], "response_models": [], "response_finish_reasons": []} for _ in records
        ]
        failed: dict[int, str] = {}
        used: dict[str, Any] = {}
        for model_name in self.model_names():
            params = self.runtime.sampling(model_name, **self._overrides())
            used[model_name] = {k: v for k, v in vars(params).items() if v not in (None, ())}
            reference = self.runtime.model_reference(model_name)
            prompts = [self._prompt(r) for r in records]
            for i, generated in enumerate(self.runtime.backend(model_name).generate(prompts, params)):
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

    def _overrides(self) -> dict[str, Any]:
        keys = ("n", "temperature", "top_p", "max_tokens", "seed")
        return {k: getattr(self.params, k) for k in keys if getattr(self.params, k) is not None}

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
