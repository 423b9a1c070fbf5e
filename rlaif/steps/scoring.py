"""Reward-model scoring and best-of-n rejection sampling.

``reward_model_score`` runs a sequence-classification reward model (one logit) over prompt + response, tokenized
exactly as TRL's RewardTrainer tokenizes a training pair (:func:`reward_model_ids`), so a model from ``rlaif train rm``
scores what it was trained on. ``best_of_n`` turns scored responses into SFT data (and optionally
best-vs-worst pairs).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from rlaif.formats import as_messages, assistant, preference_row, reward_model_ids, sft_row
from rlaif.models import reference_problem, resolve_model
from rlaif.steps.base import BatchResult, ParamColumn, Quarantined, Record, Step, StepContext, StepParams
from rlaif.steps.pairs import Candidate, ScoreError, candidates, ranked

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


def _adapter_base(path: Path) -> str:
    return str(json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path") or "")


def reward_model_problem(ref: str) -> str | None:
    """Why ``ref`` cannot load as a reward model, checked without loading: a model reference, or a PEFT adapter
    directory (adapter_config.json) whose base model resolves."""
    path = Path(ref).expanduser()
    if path.is_dir() and (path / ADAPTER_CONFIG).is_file():
        base = _adapter_base(path)
        if not base:
            return f"{path / ADAPTER_CONFIG} names no base_model_name_or_path"
        problem = reference_problem(base)
        return f"base model of the adapter {path}: {problem}" if problem else None
    return reference_problem(ref)


def load_reward_model(ref: str, device: str, dtype: Any, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) for a reward model: a sequence-classification checkpoint, or a PEFT adapter directory on
    its base model (as ``rlaif train rm`` saves it, with the score head among the adapter's modules_to_save)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(ref).expanduser()
    options = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if path.is_dir() and (path / ADAPTER_CONFIG).is_file():
        from peft import PeftModel

        # This is what peft's AutoPeftModelForSequenceClassification does, except that the base reference goes through
        # resolve_model first, so an adapter trained on `builtin:...` loads too. num_labels=1: a causal LM's config
        # says 2, and the adapter's saved score head has one row.
        base_ref = resolve_model(_adapter_base(path))
        base = AutoModelForSequenceClassification.from_pretrained(base_ref, num_labels=1, **options)
        model = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
        tokenizer_ref = str(path) if (path / "tokenizer_config.json").is_file() else base_ref
    else:
        tokenizer_ref = resolve_model(ref)
        model = AutoModelForSequenceClassification.from_pretrained(tokenizer_ref, **options)
    if model.config.num_labels != 1:
        labels = model.config.num_labels
        raise ValueError(f"{ref}: a reward model has one output (num_labels=1), this one has {labels}")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_ref, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Sequence classifiers read the logit at the last non-pad token; TRL's RewardTrainer sets the same id.
    model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def score_conversations(
    model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], batch_size: int, max_length: int
) -> tuple[list[float], int]:
    """(one reward per conversation, tokens read). Each conversation ends with the response; it is tokenized as the
    reward model was trained (:func:`reward_model_ids`), cut from the left to ``max_length`` so the response end is
    always seen, and run in length-sorted micro-batches to keep padding small."""
    import torch

    if not conversations:
        return [], 0
    ids = [reward_model_ids(tokenizer, c[:-1], c[-1]["content"])[-max_length:] for c in conversations]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    rewards = [0.0] * len(ids)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(ids[i]) for i in chunk)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):  # right padding, as TRL's preference collator pads for training
            input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
            mask[row, : len(ids[i])] = 1
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        for row, i in enumerate(chunk):
            rewards[i] = float(logits[row, 0])
    return rewards, sum(len(i) for i in ids)


class RewardModelScoreParams(StepParams):
    reward_model: str = Field(description="a local path, Hub id, builtin:NAME, or a PEFT adapter directory")
    prompt_column: str = "prompt"
    responses_column: str = "responses"
    micro_batch_size: int = Field(8, ge=1, description="sequences per forward pass")
    max_length: int = Field(2048, ge=8, description="tokens per sequence; longer ones lose their beginning")
    device: str | None = Field(None, description="default: cuda when available, else cpu")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False

    @field_validator("reward_model")
    @classmethod
    def _resolvable(cls, value: str) -> str:
        if problem := reward_model_problem(value):
            raise ValueError(problem.replace("\n", " "))
        return value


class RewardModelScore(Step):
    """Score every response with a reward model (the RM of RLHF: Ouyang et al. 2022; Bai et al. 2022).

    Inputs: ``prompt`` (string or messages), ``responses`` (list of strings). Outputs: ``rewards`` (one float per
    response, in order), ``reward_model`` (the reference as given). The model loads in ``setup`` (never during
    validation) on ``device``; bfloat16 on GPU and float32 on CPU unless ``dtype`` says otherwise. Records whose
    responses are not a list of strings are quarantined ("invalid responses").
    """

    Params = RewardModelScoreParams
    inputs = (ParamColumn("prompt_column"), ParamColumn("responses_column"))
    outputs = ("rewards", "reward_model")
    phase = "label"
    default_batch_size = 64
    params: RewardModelScoreParams

    def files(self) -> list[Path]:
        # A local reward model retrained in place must invalidate the cached scores: its config and weights go into
        # the cache key (an adapter's weights are small; full weights cost one hash per run).
        path = Path(self.params.reward_model).expanduser()
        if not path.is_dir():
            return []
        names = (ADAPTER_CONFIG, "config.json", "*.safetensors", "*.bin")
        return sorted({f for pattern in names for f in path.glob(pattern) if f.is_file()})

    def setup(self, ctx: StepContext) -> None:
        import torch

        p = self.params
        device = p.device or ("cuda" if torch.cuda.is_available() else "cpu")
        auto = torch.bfloat16 if device != "cpu" else torch.float32  # CPUs here lack fast bf16 kernels
        dtype = auto if p.dtype == "auto" else getattr(torch, p.dtype)
        self._model, self._tokenizer = load_reward_model(p.reward_model, device, dtype, p.trust_remote_code)

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        result = BatchResult()
        valid, conversations = [], []
        for record in records:
            responses = record.get(self.params.responses_column)
            if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
                result.quarantined.append(Quarantined(record, "invalid responses", "responses must be a list of str"))
                continue
            prompt = as_messages(record.get(self.params.prompt_column) or "")
            valid.append(record)
            conversations += [prompt + assistant(r) for r in responses]
        rewards, result.tokens_in = score_conversations(
            self._model, self._tokenizer, conversations, self.params.micro_batch_size, self.params.max_length
        )
        position = 0
        for record in valid:
            count = len(record[self.params.responses_column])
            result.records.append(
                {**record, "rewards": rewards[position : position + count], "reward_model": self.params.reward_model}
            )
            position += count
        return result


class BestOfNParams(StepParams):
    k: int = Field(1, ge=1, description="responses kept per prompt")
    score_column: str = Field("rewards", description="rewards (reward_model_score, verify) or ratings")
    emit: Literal["sft", "pairs", "both"] = "sft"
    min_spread: float = Field(0.0, ge=0, description="prompts whose max - min score is below this are dropped")
    prompt_column: str = "prompt"
    responses_column: str = "responses"
    keep_columns: list[str] = Field(default_factory=list, description="input columns copied onto every row")


class BestOfN(Step):
    """Rejection sampling: keep the top ``k`` of n responses per prompt (Touvron et al. 2023, Llama 2 rejection
    sampling fine-tuning; Dong et al. 2023, RAFT; Gulcehre et al. 2023, ReST's Improve step with a top-k filter).

    Inputs: ``prompt``, ``responses``, ``score_column`` (one score per response; unscored ones — None, e.g. a
    response ``verify`` could not check — are skipped: never kept, never the worst of a pair),
    ``response_models`` (optional). Outputs, by ``emit``:
    - sft: one row per kept response: ``messages`` (prompt + response), ``score``, ``rank`` (1 = best),
      ``response_model``;
    - pairs: one best-vs-worst row: ``prompt``, ``chosen``, ``rejected``, ``chosen_model``, ``rejected_model``,
      ``chosen_score``, ``rejected_score``, ``margin``;
    - both: both kinds in one dataset, told apart by ``kind`` (TRL needs one kind per dataset: filter on ``kind``
      and drop the other kind's columns, or run two best_of_n steps on the same upstream).
    Every row has ``kind`` ("sft" | "pair"), ``score_spread`` (max - min score of the prompt), ``source`` ("ai").
    With ``both``, a prompt that cannot give a pair (one response, equal scores) still gives its SFT rows.
    Dropped: "no scored responses", "low score spread" (below ``min_spread``; for pairs also a zero spread),
    "fewer than 2 responses" (pairs). Quarantined: "invalid scores". ``inputs_emitted`` counts prompts.
    """

    Params = BestOfNParams
    inputs = (
        ParamColumn("prompt_column"),
        ParamColumn("responses_column"),
        ParamColumn("score_column"),
        ParamColumn("keep_columns"),
    )
    phase = "generate"
    params: BestOfNParams

    def output_columns(self, available: set[str] | None) -> set[str] | None:
        columns = {"kind", "score_spread", "source", *self.params.keep_columns}
        if self.params.emit in ("sft", "both"):
            columns |= {"messages", "score", "rank", "response_model"}
        if self.params.emit in ("pairs", "both"):
            columns |= {
                "prompt",
                "chosen",
                "rejected",
                "chosen_model",
                "rejected_model",
                "chosen_score",
                "rejected_score",
                "margin",
            }
        return columns

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        result = BatchResult(inputs_emitted=0)
        for record in records:
            try:
                found = candidates(record, self.params.score_column, self.params.responses_column)
            except ScoreError as exc:
                result.quarantined.append(Quarantined(record, "invalid scores", str(exc)))
                continue
            rows = self._rows(record, ranked(found))
            if isinstance(rows, str):
                result.dropped.append((record, rows))
            else:
                result.inputs_emitted = (result.inputs_emitted or 0) + 1
                result.records += rows
        return result

    def _rows(self, record: Record, order: list[Candidate]) -> list[Record] | str:
        p = self.params
        if not order:
            return "no scored responses"
        spread = order[0].score - order[-1].score
        if spread < p.min_spread:
            return "low score spread"
        common = {"score_spread": spread, "source": "ai", **{k: record.get(k) for k in p.keep_columns}}
        prompt = record[p.prompt_column]
        rows = []
        if p.emit in ("sft", "both"):
            rows += [
                sft_row(prompt, c.text, score=c.score, rank=rank, response_model=c.model, kind="sft", **common)
                for rank, c in enumerate(order[: p.k], start=1)
            ]
        if p.emit in ("pairs", "both") and spread > 0:  # a pair of equal scores is a tie, not a preference
            best, worst = order[0], order[-1]
            rows.append(
                preference_row(
                    prompt,
                    best.text,
                    worst.text,
                    chosen_model=best.model,
                    rejected_model=worst.model,
                    chosen_score=best.score,
                    rejected_score=worst.score,
                    margin=spread,
                    kind="pair",
                    **common,
                )
            )
        if not rows:
            return "fewer than 2 responses" if len(order) < 2 else "low score spread"
        return rows
