"""Reward-model scoring (a tiny random sequence classifier, plain and as a PEFT adapter), best-of-n and pairs.

Rows are read back from the saved Parquet dataset and must be accepted by TRL's data utilities as they are.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rlaif.config import ConfigError
from rlaif.pipeline.run import run_pipeline
from rlaif.pipeline.spec import load_pipeline
from rlaif.steps.pairs import (
    Candidate,
    ScoreError,
    all_pairs,
    best_vs_random,
    best_vs_worst,
    candidates,
    soft_label,
)

PROMPT = "Name a primary color."
RESPONSES = ["Red.", "Blue is one.", "Banana.", "Yellow, red and blue are the primary colors."]
MODELS = ["m-a", "m-b", "m-a", "m-b"]


def pipeline_file(tmp_path: Path, steps: list[dict]) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "pipe.yaml"
    path.write_text(json.dumps({"name": "t", "steps": steps}))  # JSON is YAML
    return path


def run(tmp_path: Path, steps: list[dict]) -> tuple[dict, dict[str, list[dict]]]:
    summary = run_pipeline(load_pipeline(pipeline_file(tmp_path, steps)), run_dir=tmp_path / "run")
    rows = {
        name: [r for f in sorted((d / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
        for name, d in summary.datasets.items()
    }
    return summary.stats, rows


def inline(records: list[dict]) -> dict:
    return {"name": "scored", "type": "inline", "records": records}


def record(scores: list, **extra) -> dict:
    return {
        "prompt": PROMPT,
        "responses": RESPONSES[: len(scores)],
        "response_models": MODELS[: len(scores)],
        "ratings": scores,
        **extra,
    }


# -- strategies ------------------------------------------------------------------------------------------------------
def scored(*scores: float) -> list[Candidate]:
    return [Candidate(i, f"r{i}", s) for i, s in enumerate(scores)]


def indexes(pairs: list[tuple[Candidate, Candidate]]) -> list[tuple[int, int]]:
    return [(a.index, b.index) for a, b in pairs]


def test_pair_strategies():
    rng = random.Random(0)
    assert indexes(best_vs_worst(scored(3, 9, 1, 9), 0, rng)) == [(1, 2)]  # ties: the earlier response ranks first
    assert best_vs_worst(scored(5, 5), 0, rng) == [] and best_vs_worst(scored(5, 4), 2, rng) == []
    assert indexes(all_pairs(scored(3, 9, 1), 0, rng)) == [(1, 0), (1, 2), (0, 2)]
    assert indexes(all_pairs(scored(3, 9, 1), 3, rng)) == [(1, 0), (1, 2)]
    picks = {indexes(best_vs_random(scored(9, 1, 2, 3, 4), 0, random.Random(s)))[0] for s in range(30)}
    assert picks == {(0, 1), (0, 2), (0, 3), (0, 4)}
    assert best_vs_random(scored(9, 1, 8.5), 1, random.Random(1)) == best_vs_random(
        scored(9, 1, 8.5), 1, random.Random(2)
    )


def test_candidates_skip_unscored_and_refuse_misaligned_scores():
    found = candidates(record([7, None, float("nan"), 2]), "ratings")
    assert [(c.index, c.score, c.model) for c in found] == [(0, 7.0, "m-a"), (3, 2.0, "m-b")]
    with pytest.raises(ValueError, match="one score per response"):
        candidates(record([1, 2]) | {"ratings": [1]}, "ratings")
    with pytest.raises(ValueError, match="not a number"):
        candidates(record([1, "high"]), "ratings")


# -- make_pairs ------------------------------------------------------------------------------------------------------
def test_make_pairs_from_scores_with_provenance_and_reasons(tmp_path):
    records = [
        record([3, 9, 1, 6], judge_model="judge-x", principles=["helpful"], id=0),
        record([5, 5], id=1),
        record([4], id=2),
        record([1, 2]) | {"ratings": [1], "id": 3},
        record([8, 7.5], id=4),
    ]
    steps = [
        inline(records),
        {
            "name": "pairs",
            "type": "rlaif.steps.pairs.MakePairs",
            "from": "scored",
            "score_column": "ratings",
            "strategy": "all_pairs",
            "min_margin": 1,
            "keep_columns": ["id"],
        },
    ]
    stats, rows = run(tmp_path, steps)
    pairs = rows["pairs"]
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs][:2] == [
        ("Blue is one.", "Yellow, red and blue are the primary colors."),
        ("Blue is one.", "Red."),
    ]
    assert [p["margin"] for p in pairs] == [3, 6, 8, 3, 5, 2]
    first = pairs[0]
    assert first["prompt"] == [{"role": "user", "content": PROMPT}] and first["source"] == "ai"
    assert (first["chosen_model"], first["rejected_model"], first["chosen_score"], first["rejected_score"]) == (
        "m-b",
        "m-b",
        9,
        6,
    )
    assert first["judge_model"] == "judge-x" and first["principles"] == ["helpful"] and first["id"] == 0
    s = stats["pairs"]
    assert s["inputs_emitted"] == 1 and s["records_out"] == 6
    assert s["dropped"] == {"no pair above margin": 2, "fewer than 2 responses": 1}
    assert s["quarantined"] == {"invalid scores": 1}


def test_make_pairs_from_pairwise_verdicts(tmp_path):
    records = [
        record([0, 0], preference=v, confidence=0.8, judge_model="j", id=i)
        for i, v in enumerate(["A", "B", "tie", "maybe"])
    ]
    for r in records:
        del r["ratings"]
    stats, rows = run(
        tmp_path, [inline(records), {"name": "pairs", "type": "rlaif.steps.pairs.MakePairs", "from": "scored"}]
    )
    a, b = rows["pairs"]
    assert (a["chosen"][0]["content"], a["rejected"][0]["content"]) == (RESPONSES[0], RESPONSES[1])
    assert (b["chosen"][0]["content"], b["chosen_model"]) == (RESPONSES[1], "m-b")
    assert a["confidence"] == 0.8 and a["judge_model"] == "j" and "margin" not in a
    assert stats["pairs"]["dropped"] == {"tie": 1} and stats["pairs"]["quarantined"] == {"invalid preference": 1}


def test_pairs_carry_the_judges_soft_label_as_chosen_prob(tmp_path):
    # A 0.501 verdict must reach training as a 0.501 pair, not a hard one: chosen_prob = P(chosen better).
    judged = [
        record([0, 0], preference="A", p_a=0.501, id=0),
        record([0, 0], preference="B", p_a=0.2, id=1),
        record([0, 0], preference="A", p_a=None, id=2),  # a row the judge gave no soft label: a hard pair
        record([0, 0], preference="A", p_a=1.7, id=3),
        record([0, 0], preference="A", p_a=-0.1, id=4),
    ]
    for r in judged:
        del r["ratings"]
    step = {"name": "pairs", "type": "rlaif.steps.pairs.MakePairs", "from": "scored", "keep_columns": ["id"]}
    stats, rows = run(tmp_path / "judged", [inline(judged), step])
    assert [(r["id"], r["chosen"][0]["content"]) for r in rows["pairs"]] == [
        (0, RESPONSES[0]),
        (1, RESPONSES[1]),
        (2, RESPONSES[0]),
    ]
    assert [r["chosen_prob"] for r in rows["pairs"]] == pytest.approx([0.501, 0.8, None])
    assert stats["pairs"]["quarantined"] == {"invalid preference": 2}
    # Hybrid: a pair the scores decided is a hard label (None); the judge's pair keeps its soft one.
    hybrid = [
        record([0.0, 1.0], preference="A", p_a=0.6, id="scores"),
        record([1.0, 1.0], preference="B", p_a=0.3, id="judge"),
    ]
    hybrid_step = {**step, "score_column": "ratings", "hybrid": True}
    _, rows = run(tmp_path / "hybrid", [inline(hybrid), hybrid_step])
    assert {r["id"]: (r["decided_by"], r["chosen_prob"]) for r in rows["pairs"]} == {
        "scores": ("scores", None),
        "judge": ("judge", pytest.approx(0.7)),
    }
    # Scores alone never carry a judge's soft label, and rows without p_a get no column.
    _, rows = run(tmp_path / "scored", [inline([record([1, 3], p_a=0.9, id=5)]), {**step, "score_column": "ratings"}])
    assert "chosen_prob" not in rows["pairs"][0]
    _, rows = run(tmp_path / "plain", [inline([record([0, 0], preference="A", id=6)]), step])
    assert "chosen_prob" not in rows["pairs"][0]
    for bad in ("high", True, math.inf):
        with pytest.raises(ScoreError, match="expected a probability in"):
            soft_label({"p_a": bad})


def reversed_pairs(found, min_margin, rng):
    """A user strategy by dotted path: worst as chosen (a contrastive control set)."""
    return [(b, a) for a, b in best_vs_worst(found, min_margin, rng)]


def test_make_pairs_strategy_validation_and_plugins(tmp_path):
    base = {"name": "pairs", "type": "rlaif.steps.pairs.MakePairs", "from": "scored", "score_column": "ratings"}
    with pytest.raises(ConfigError, match="best_vs_worst"):
        load_pipeline(pipeline_file(tmp_path, [inline([record([1, 2])]), {**base, "strategy": "best_vs_wrost"}]))
    with pytest.raises(ConfigError, match="a strategy needs scores"):
        load_pipeline(
            pipeline_file(
                tmp_path,
                [
                    inline([record([1, 2])]),
                    {
                        "name": "pairs",
                        "type": "rlaif.steps.pairs.MakePairs",
                        "from": "scored",
                        "strategy": "all_pairs",
                    },
                ],
            )
        )
    _, rows = run(tmp_path, [inline([record([1, 2])]), {**base, "strategy": "test_scoring_pairs.reversed_pairs"}])
    assert rows["pairs"][0]["chosen"][0]["content"] == RESPONSES[0]


# -- best_of_n -------------------------------------------------------------------------------------------------------
def test_best_of_n_ranks_spreads_and_drops(tmp_path):
    records = [record([3, 9, 1, 6], id=0), record([5, 5.2], id=1), record([None, 4], id=2), record([2, 2], id=3)]
    step = {
        "name": "best",
        "type": "rlaif.steps.scoring.BestOfN",
        "from": "scored",
        "score_column": "ratings",
        "k": 2,
        "min_spread": 0.5,
        "keep_columns": ["id"],
    }
    stats, rows = run(tmp_path, [inline(records), step])
    best = rows["best"]
    assert [(r["id"], r["rank"], r["score"], r["messages"][-1]["content"]) for r in best] == [
        (0, 1, 9, "Blue is one."),
        (0, 2, 6, "Yellow, red and blue are the primary colors."),
    ]
    assert best[0]["messages"][0] == {"role": "user", "content": PROMPT} and best[0]["score_spread"] == 8
    assert best[0]["response_model"] == "m-b" and best[0]["kind"] == "sft"
    assert stats["best"]["dropped"] == {"low score spread": 3} and stats["best"]["inputs_emitted"] == 1


def test_best_of_n_emits_pairs_and_both(tmp_path):
    records = [record([3, 9, 1, 6]), record([7]), record([4, 4])]
    step = {"name": "best", "type": "rlaif.steps.scoring.BestOfN", "from": "scored", "score_column": "ratings"}
    stats, rows = run(tmp_path / "pairs", [inline(records), {**step, "emit": "pairs"}])
    [pair] = rows["best"]
    assert (pair["chosen"][0]["content"], pair["rejected"][0]["content"], pair["margin"]) == (
        "Blue is one.",
        "Banana.",
        8,
    )
    assert stats["best"]["dropped"] == {"fewer than 2 responses": 1, "low score spread": 1}
    stats, rows = run(tmp_path / "both", [inline(records), {**step, "emit": "both"}])
    assert [r["kind"] for r in rows["best"]] == ["sft", "pair", "sft", "sft"]  # [7] and [4, 4] still give SFT rows
    assert stats["best"]["inputs_emitted"] == 3 and stats["best"]["records_out"] == 4


@pytest.mark.model
def test_rows_are_accepted_by_trl(tmp_path, builtin_model_path):
    from transformers import AutoTokenizer
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path)
    steps = [
        inline([record([3, 9, 1, 6]), record([2, 8])]),
        {"name": "pairs", "type": "rlaif.steps.pairs.MakePairs", "from": "scored", "score_column": "ratings"},
        {"name": "sft", "type": "rlaif.steps.scoring.BestOfN", "from": "scored", "score_column": "ratings"},
        {
            "name": "bon_pairs",
            "type": "rlaif.steps.scoring.BestOfN",
            "from": "scored",
            "score_column": "ratings",
            "emit": "pairs",
        },
    ]
    _, rows = run(tmp_path, steps)
    for name in ("pairs", "sft", "bon_pairs"):
        assert len(rows[name]) == 2
        for row in rows[name]:
            assert is_conversational(row)
            text = maybe_apply_chat_template(row, tokenizer)
            if name == "sft":
                assert text["text"].endswith(f"{PROMPT}<|im_end|>\n<|im_start|>assistant\nBlue is one.<|im_end|>\n")
            else:
                assert text["prompt"].endswith("<|im_start|>assistant\n")
                assert text["chosen"].endswith("<|im_end|>\n") and text["rejected"].endswith("<|im_end|>\n")


# -- reward_model_score ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reward_dirs(tmp_path_factory, builtin_model_path) -> dict[str, Path]:
    """A tiny random LlamaForSequenceClassification (num_labels=1) and a LoRA adapter on it with a changed head."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    root = tmp_path_factory.mktemp("reward")
    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(root / "rm")
    tokenizer.save_pretrained(root / "rm")
    base = LlamaForSequenceClassification.from_pretrained(root / "rm")
    peft_model = get_peft_model(
        base, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():  # LoRA B starts at zero and the head copy equals the base: make the adapter matter
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.5)
    peft_model.save_pretrained(root / "adapter")
    return {"rm": root / "rm", "adapter": root / "adapter"}


def reference_rewards(model_dir: Path, tokenizer_dir: Path, adapter: Path | None = None) -> list[float]:
    """Each conversation alone (no padding), through plain transformers/peft."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    out = []
    for response in RESPONSES:
        messages = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": response}]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
        with torch.no_grad():
            out.append(float(model(**ids).logits[0, 0]))
    return out


@pytest.mark.model
def test_reward_model_scores_match_unbatched_forward(tmp_path, reward_dirs):
    records = [{"prompt": PROMPT, "responses": RESPONSES, "id": 0}, {"prompt": PROMPT, "responses": [], "id": 1}]
    scores = {
        "name": "rm",
        "type": "rlaif.steps.scoring.RewardModelScore",
        "from": "scored",
        "reward_model": str(reward_dirs["rm"]),
        "micro_batch_size": 3,
    }
    adapter = {**scores, "name": "rm_adapter", "reward_model": str(reward_dirs["adapter"])}
    stats, rows = run(tmp_path, [inline(records), scores, adapter])
    expected = reference_rewards(reward_dirs["rm"], reward_dirs["rm"])
    first, empty = rows["rm"]
    assert first["rewards"] == pytest.approx(expected, abs=1e-4) and first["reward_model"] == str(reward_dirs["rm"])
    assert empty["rewards"] == [] and empty["id"] == 1
    assert stats["rm"]["tokens_in"] > 4 * 10
    with_adapter = rows["rm_adapter"][0]["rewards"]
    assert with_adapter == pytest.approx(
        reference_rewards(reward_dirs["rm"], reward_dirs["rm"], reward_dirs["adapter"]), abs=1e-4
    )
    assert with_adapter != pytest.approx(expected, abs=1e-3)


def trl_reward_ids(tokenizer, rows: list[dict]) -> list[list[int]]:
    """The chosen token ids TRL 1.16's RewardTrainer trains on for ``rows`` (its own preprocessing, no model)."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(output_dir="unused", use_cpu=True, bf16=False, max_length=None, report_to="none")
    return RewardTrainer._prepare_dataset(None, Dataset.from_list(rows), tokenizer, args, "train")["chosen_ids"]


@pytest.mark.model
def test_reward_model_scoring_tokenizes_as_reward_training_did(tmp_path, reward_dirs):
    # Without a chat template TRL trains on prompt + response + EOS (it appends the EOS token to plain-text rows);
    # with one, on the rendered conversation. Scoring must read exactly those tokens.
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    plain = tmp_path / "rm-no-template"
    shutil.copytree(reward_dirs["rm"], plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    (plain / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "chat_template"}))
    tokenizer = AutoTokenizer.from_pretrained(plain)
    assert tokenizer.chat_template is None and tokenizer.eos_token
    expected = trl_reward_ids(tokenizer, [{"prompt": PROMPT, "chosen": r, "rejected": "x"} for r in RESPONSES])
    assert all(ids[-1] == tokenizer.eos_token_id for ids in expected)

    # The step scores exactly those ids: one unpadded forward pass each gives the same rewards.
    model = AutoModelForSequenceClassification.from_pretrained(plain, num_labels=1).eval()
    with torch.no_grad():
        reference = [float(model(input_ids=torch.tensor([ids])).logits[0, 0]) for ids in expected]
    step = {
        "name": "rm",
        "type": "rlaif.steps.scoring.RewardModelScore",
        "from": "scored",
        "reward_model": str(plain),
        "micro_batch_size": 3,
    }
    _, rows = run(tmp_path / "run", [inline([{"prompt": PROMPT, "responses": RESPONSES}]), step])
    assert rows["rm"][0]["rewards"] == pytest.approx(reference, abs=1e-4)

    from rlaif.formats import reward_model_ids

    assert [reward_model_ids(tokenizer, PROMPT, r) for r in RESPONSES] == expected
    # PPO's reward-model sources read the same ids (before: no EOS without a chat template), cut from the left.
    from rlaif.train.rl.reward_sources import conversation_ids

    assert [conversation_ids(tokenizer, PROMPT, r, max_length=512) for r in RESPONSES] == expected
    assert conversation_ids(tokenizer, PROMPT, RESPONSES[0], max_length=3) == expected[0][-3:]
    templated = AutoTokenizer.from_pretrained(reward_dirs["rm"])
    conversations = [
        {
            "prompt": [{"role": "user", "content": PROMPT}],
            "chosen": [{"role": "assistant", "content": r}],
            "rejected": [{"role": "assistant", "content": "x"}],
        }
        for r in RESPONSES
    ]
    assert [reward_model_ids(templated, PROMPT, r) for r in RESPONSES] == trl_reward_ids(templated, conversations)


@pytest.mark.model
def test_reward_model_reference_is_checked_at_validation(tmp_path, reward_dirs):
    step = {"name": "rm", "type": "rlaif.steps.scoring.RewardModelScore", "from": "scored"}
    with pytest.raises(ConfigError, match="reward_model"):
        load_pipeline(pipeline_file(tmp_path, [inline([record([1])]), {**step, "reward_model": "./no/such/dir"}]))
    broken = tmp_path / "broken-adapter"
    broken.mkdir()
    config = json.loads((reward_dirs["adapter"] / "adapter_config.json").read_text())
    (broken / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "./missing"}))
    with pytest.raises(ConfigError, match="base model of the adapter"):
        load_pipeline(pipeline_file(tmp_path, [inline([record([1])]), {**step, "reward_model": str(broken)}]))
    pipeline = load_pipeline(
        pipeline_file(tmp_path, [inline([record([1])]), {**step, "reward_model": str(reward_dirs["adapter"])}])
    )
    assert {f.name for f in pipeline.steps["rm"].step.files()} == {"adapter_config.json", "adapter_model.safetensors"}
