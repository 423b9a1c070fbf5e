"""User-plugin steps for the engine tests, loaded by dotted path (``type: plugins.Upper``) like a user's own."""

from __future__ import annotations

import os
import re
import time

from rlaif.steps.base import (
    BatchResult,
    ParamColumn,
    Quarantine,
    Record,
    Step,
    StepContext,
    StepParams,
    filter_records,
)


class UpperParams(StepParams):
    column: str = "text"


class Upper(Step):
    """Inputs: ``text``. Outputs: ``upper``."""

    Params = UpperParams
    inputs = (ParamColumn("column"),)
    outputs = ("upper",)
    params: UpperParams

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        return BatchResult(records=[{**r, "upper": str(r[self.params.column]).upper()} for r in records])


class DropOdd(Step):
    """Inputs: ``id``. Drops odd ids with the reason "odd id"."""

    inputs = ("id",)

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        result = BatchResult()
        for r in records:
            if r["id"] % 2:
                result.dropped.append((r, "odd id"))
            else:
                result.records.append(r)
        return result


class SlowParams(StepParams):
    seconds: float = 0.05
    tag: str = "slow"


class Slow(Step):
    """Sleeps per batch so a test can kill the run mid-step. Outputs: ``tag``, ``pid`` (which process wrote it)."""

    Params = SlowParams
    outputs = ("tag", "pid")
    params: SlowParams

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        time.sleep(self.params.seconds)
        return BatchResult(records=[{**r, "tag": self.params.tag, "pid": os.getpid()} for r in records])


class Flaky(Step):
    """Raises on any batch holding a record whose text contains "boom": the engine must isolate that record."""

    inputs = ("text",)

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        if any("boom" in r["text"] for r in records):
            raise RuntimeError("exploded on boom")
        return BatchResult(records=records)


class Liar(Step):
    """Loses a record silently: the accounting check must refuse it."""

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        return BatchResult(records=records[1:])


class MinWordsParams(StepParams):
    column: str = "prompt"
    min_words: int = 3


class MinWords(Step):
    """The plugin example of docs/pipelines.md: drop records whose ``column`` has fewer than ``min_words`` words
    ("too few words"); quarantine a value that is not text ("not text"). Inputs: ``column``. Outputs: unchanged."""

    Params = MinWordsParams
    inputs = (ParamColumn("column"),)  # checked against upstream columns by `rlaif validate`
    params: MinWordsParams

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        return filter_records(records, self.verdict)

    def verdict(self, record: Record) -> str | None:
        text = record[self.params.column]
        if not isinstance(text, str):
            raise Quarantine("not text", f"{self.params.column} is {type(text).__name__}")
        return None if len(text.split()) >= self.params.min_words else "too few words"


class Labeller(Step):
    """A plugin that declares its loop phase: the loop's report counts its time as "label"."""

    phase = "label"

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        return BatchResult(records=records)


class AlphabeticalJudge:
    """A judge backend, loaded by dotted path (``backend: plugins.AlphabeticalJudge``): for a pairwise judge prompt
    it prefers the answer that sorts first, so its verdict is consistent across both orders and never a tie unless
    the answers are equal. Anything else it is asked gets "A". It accepts (and ignores) the vllm backend's engine
    options, so overriding only ``backend`` swaps it in for a shipped pipeline's judge."""

    name = "alphabetical-judge"

    def __init__(
        self,
        model: str,
        max_model_len: int | None = None,
        enable_lora: bool = False,
        max_lora_rank: int | None = None,
        **options: object,
    ) -> None:
        self.model = model

    def generate(self, prompts, params):
        import re

        from rlaif.schema import Completion, GenerationResult

        results = []
        for prompt in prompts:
            text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            answers = re.findall(r"Start of Assistant [AB]'s Answer\]\n(.*?)\n\[The End", text, flags=re.S)
            verdict = "A" if len(answers) < 2 else self.verdict(*answers[:2])
            completions = [Completion(text=verdict, completion_tokens=1, finish_reason="stop")] * params.n
            results.append(GenerationResult(completions=completions, prompt_tokens=len(text.split())))
        return results

    @staticmethod
    def verdict(a: str, b: str) -> str:
        return "A" if a < b else "B" if a > b else "tie"

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _round(text: str) -> int:
    found = re.match(r"\[round (\d+)\]", text)
    return int(found.group(1)) if found else -1


class LatestRoundJudge(AlphabeticalJudge):
    """Prefers the answer that RoundTaggedHF tagged with the later loop round: policy k over policy k-1."""

    name = "latest-round-judge"

    @staticmethod
    def verdict(a: str, b: str) -> str:
        return "A" if _round(a) > _round(b) else "B" if _round(a) < _round(b) else "tie"


class RoundTaggedHF:
    """A policy backend for the loop tests: the hf backend's real generation (with the request's LoRA adapter), each
    completion prefixed with the round that trained that adapter, "[round K] " (round-K/train/... in its path), or
    "[round 0] " without one. The loop's eval then has a known answer: LatestRoundJudge prefers policy k every time."""

    name = "round-tagged-hf"

    def __init__(self, model: str, **options: object) -> None:
        from rlaif.backends.hf_backend import HFBackend

        self.model = model
        self._hf = HFBackend(model, **options)

    def generate(self, prompts, params):
        import dataclasses

        found = re.search(r"round-(\d+)/train/", params.lora.path) if params.lora else None
        tag = f"[round {found.group(1) if found else 0}] "
        return [
            dataclasses.replace(
                result, completions=[dataclasses.replace(c, text=tag + c.text) for c in result.completions]
            )
            for result in self._hf.generate(prompts, params)
        ]

    def close(self) -> None:
        self._hf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LongerAnswerJudge(AlphabeticalJudge):
    """Prefers the longer answer: consistent across both orders, and its agreement with a human file is known by
    construction (tests/steps/test_judge_check.py)."""

    name = "longer-answer-judge"

    @staticmethod
    def verdict(a: str, b: str) -> str:
        return "A" if len(a) > len(b) else "B" if len(a) < len(b) else "tie"


class SlowEcho:
    """A generation backend that takes ``seconds`` per call and answers "echo: <prompt>" (n times): a test can kill
    the process running it mid-batch (the Ray executor's engine actors)."""

    name = "slow-echo"

    def __init__(self, model: str, seconds: float = 0.5) -> None:
        self.model, self.seconds = model, seconds

    def generate(self, prompts, params):
        from rlaif.schema import Completion, GenerationResult

        time.sleep(self.seconds)
        results = []
        for prompt in prompts:
            text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            completion = Completion(text=f"echo: {text}", completion_tokens=2, finish_reason="stop")
            results.append(GenerationResult(completions=[completion] * params.n, prompt_tokens=len(text.split())))
        return results

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
