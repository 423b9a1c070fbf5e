"""Instruction generation from seed tasks: Self-Instruct here, Evol-Instruct in ``rlaif.steps.evol`` (Magpie, which
needs no seeds, is in ``rlaif.steps.generate``).

Each step writes ``instruction`` and ``prompt`` (the same text, so ``generate_responses`` follows directly) and an
``origin`` column naming the method. Candidates a method rejects (a near-copy in Self-Instruct, a failed evolution)
are not input records: Self-Instruct counts them in the log, Evol-Instruct keeps them in ``evolution_failures``;
input records are still output, dropped or quarantined.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field

from rlaif.schema import Conversation
from rlaif.steps.base import (
    BatchResult,
    ParamColumn,
    Quarantined,
    Record,
    Step,
    StepContext,
    StepParams,
    record_digest,
    sampling_overrides,
)
from rlaif.templates import render, template_path

log = logging.getLogger(__name__)

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Tokens as rouge_score's default tokenizer makes them (lowercase alphanumeric runs, no stemming)."""
    return _WORD.findall(text.lower())


def rouge_l(candidate: list[str], reference: list[str]) -> float:
    """ROUGE-L F1 on word tokens: F of LCS-precision and LCS-recall (Lin 2004), as Self-Instruct computes it."""
    if not candidate or not reference:
        return 0.0
    previous = [0] * (len(reference) + 1)
    for token in candidate:  # LCS by dynamic programming, one row at a time
        current = [0]
        for j, other in enumerate(reference):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def normal_form(text: str) -> str:
    """Lowercased, whitespace collapsed: what counts as the same instruction."""
    return " ".join(text.lower().split())


def _digest(*parts: object) -> str:
    return record_digest(*parts).hex()


# The sampling values Self-Instruct's and Evol-Instruct's parameters may set (their `seed` keys in-context draws).
SAMPLING = ("temperature", "top_p", "max_tokens")


def user_turn(text: str) -> Conversation:
    return [{"role": "user", "content": text}]


# -- Self-Instruct -------------------------------------------------------------------------------------------------
# Self-Instruct's filter for tasks a text-only model cannot do (Wang et al. 2022, section 2.3).
UNSUPPORTED = (
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
    "video",
    "audio",
    "music",
    "flowchart",
    "diagram",
)
_NUMBERED = re.compile(r"^\s*(?:task\s*)?\d{1,3}\s*[.):]\s*(.+?)\s*$", re.IGNORECASE)


def parse_numbered_list(text: str) -> list[str]:
    """Items of a numbered list ("1. x", "2) y", "Task 3: z"), one per line; other lines are ignored."""
    items = []
    for line in text.splitlines():
        match = _NUMBERED.match(line)
        if match:
            item = match.group(1).strip().strip("*").strip()
            if item:
                items.append(item)
    return items


@dataclass
class NoveltyPool:
    """Instructions seen so far. ``check`` says why a candidate is not novel (or None) and its max ROUGE-L."""

    max_similarity: float = 0.7
    min_words: int = 3
    max_words: int = 150
    texts: list[str] = field(default_factory=list)
    _tokens: list[list[str]] = field(default_factory=list)
    _normals: set[str] = field(default_factory=set)

    def add(self, text: str) -> None:
        self.texts.append(text)
        self._tokens.append(words(text))
        self._normals.add(" ".join(self._tokens[-1]))  # case and punctuation do not make a task new

    def check(self, text: str) -> tuple[str | None, float]:
        tokens = words(text)
        lowered = f" {' '.join(tokens)} "
        if len(tokens) < self.min_words:
            return "too short", 0.0
        if len(tokens) > self.max_words:
            return "too long", 0.0
        if not text[0].isalnum() and text[0] not in "\"'(":
            return "starts with punctuation", 0.0
        if any(f" {word} " in lowered for word in UNSUPPORTED):
            return "needs a non-text modality", 0.0
        if lowered.strip() in self._normals:
            return "duplicate", 1.0
        similarity = max((rouge_l(tokens, other) for other in self._tokens), default=0.0)
        if similarity >= self.max_similarity:
            return "too similar", similarity
        return None, similarity


@dataclass
class _Harvest:
    new: list[Record] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)  # candidate -> reason it was not kept
    errors: list[str] = field(default_factory=list)  # failed requests
    answered: int = 0


class SelfInstructParams(StepParams):
    model: str = Field(description="name under models:")
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    column: str = Field("instruction", description="the seed tasks' column")
    rounds: int = Field(2, ge=1, description="generation rounds; each round sees the pool grown by the last")
    prompts_per_round: int = Field(8, ge=1)
    num_examples: int = Field(8, ge=1, description="in-context tasks per prompt (the paper: 8)")
    machine_examples: int = Field(2, ge=0, description="of which generated ones, once there are some (paper: 2)")
    num_new: int = Field(8, ge=1, description="new tasks asked for per prompt")
    max_new: int | None = Field(None, ge=1, description="stop once this many new tasks are kept")
    max_similarity: float = Field(0.7, gt=0, le=1, description="ROUGE-L F against every kept task must stay below")
    min_words: int = Field(3, ge=1)
    max_words: int = Field(150, ge=1)
    keep_seeds: bool = Field(False, description="also output the seed tasks (origin: seed)")
    seed: int = 0
    template: str | None = None


class SelfInstruct(Step):
    """New instructions bootstrapped from seed tasks (Wang et al. 2022, Self-Instruct).

    Inputs: ``instruction`` (``column``): the seed tasks. The whole batch is the seed set (a large default batch
    size keeps it one batch). For ``rounds`` rounds, ``prompts_per_round`` prompts each show ``num_examples`` tasks
    sampled (seeded RNG) from the seeds and the pool generated so far; the reply is parsed as a numbered list and a
    candidate is kept only if it passes the paper's filters (length, non-text keywords, leading punctuation) and its
    ROUGE-L F against every seed and kept task is below ``max_similarity``.
    Outputs: one row per new task: ``instruction``, ``prompt`` (= instruction), ``origin`` ("self_instruct"),
    ``similarity`` (max ROUGE-L to the tasks existing when it was kept), ``round``. With ``keep_seeds`` the seed
    records also pass through (``origin: seed``).
    Accounting: the seed set produces the output together, so every valid seed counts as emitted; seeds without
    text are dropped ("empty instruction"); if nothing novel came back the seeds are dropped ("no novel
    instruction"), and if every request failed they are quarantined ("generation failed").
    Simplified vs the paper: no classification/non-classification split and no instance generation; one pool per
    batch, rejected candidates counted in the log.
    """

    Params = SelfInstructParams
    inputs = (ParamColumn("column"),)
    phase = "generate"
    default_batch_size = 100_000
    params: SelfInstructParams

    def output_columns(self, available: set[str] | None) -> set[str] | None:
        new = {"instruction", "prompt", "origin", "similarity", "round"}
        if self.params.keep_seeds:
            return None if available is None else available | new
        return new

    def files(self) -> list[Path]:
        return [template_path("self_instruct.jinja", self.params.template, self.base_dir)]

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        result = BatchResult()
        seeds: list[Record] = []
        for record in records:
            text = record.get(self.params.column)
            if isinstance(text, str) and text.strip():
                seeds.append(record)
            else:
                result.dropped.append((record, "empty instruction"))
        if not seeds:
            return result
        seed_texts = [r[self.params.column].strip() for r in seeds]
        harvest = self._bootstrap(seed_texts, result, ctx)
        log.info(
            "%s: kept %d new instructions; rejected candidates: %s; failed requests: %d",
            self.name,
            len(harvest.new),
            dict(harvest.rejected),
            len(harvest.errors),
        )
        new = harvest.new
        if self.params.keep_seeds:
            new = [
                {**r, "instruction": t, "prompt": t, "origin": "seed", "similarity": None, "round": None}
                for r, t in zip(seeds, seed_texts, strict=True)
            ] + new
        if new:
            result.records, result.inputs_emitted = new, len(seeds)
        elif harvest.errors and not harvest.answered:
            result.quarantined += [Quarantined(r, "generation failed", harvest.errors[0]) for r in seeds]
        else:
            result.dropped += [(r, "no novel instruction") for r in seeds]
        return result

    def _bootstrap(self, seeds: list[str], result: BatchResult, ctx: StepContext) -> _Harvest:
        p = self.params
        pool = NoveltyPool(p.max_similarity, p.min_words, p.max_words)
        for text in seeds:
            pool.add(text)
        rng = random.Random(_digest(p.seed, *seeds))  # same seeds and seed -> same in-context samples
        sampling = ctx.sampling(p.model, **sampling_overrides(p, SAMPLING))
        harvest = _Harvest()
        for round_index in range(p.rounds):
            generated = [r["instruction"] for r in harvest.new]
            prompts = [user_turn(self._prompt(rng, seeds, generated)) for _ in range(p.prompts_per_round)]
            for answer in ctx.backend(p.model).generate(prompts, sampling):
                result.tokens_in += answer.prompt_tokens
                result.tokens_out += answer.completion_tokens
                if not answer.ok:
                    harvest.errors.append(str(answer.error))
                    continue
                harvest.answered += 1
                for candidate in (c for done in answer.completions for c in parse_numbered_list(done.text)):
                    reason, similarity = pool.check(candidate)
                    if reason:
                        harvest.rejected[reason] += 1
                        continue
                    pool.add(candidate)
                    harvest.new.append(
                        {
                            "instruction": candidate,
                            "prompt": candidate,
                            "origin": "self_instruct",
                            "similarity": round(similarity, 4),
                            "round": round_index,
                        }
                    )
                    if p.max_new is not None and len(harvest.new) >= p.max_new:
                        return harvest
        return harvest

    def _prompt(self, rng: random.Random, seeds: list[str], generated: list[str]) -> str:
        machine = rng.sample(generated, min(self.params.machine_examples, len(generated)))
        human = rng.sample(seeds, min(self.params.num_examples - len(machine), len(seeds)))
        return render(self.files()[0], examples=human + machine, num_new=self.params.num_new)
