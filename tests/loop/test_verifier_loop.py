"""A tiny verifier loop: the tiny random-init Llama on the hf backend answers constrained prompts, the ifeval
verifier labels the pairs, QLoRA DPO trains, and the verifier eval measures the base (round 0) and round 1 on the
same held-out prompts. The figures must agree with the eval's own verified rows. The same loop with a reward-model
eval (a tiny random sequence classifier scores each policy's answers) must agree with its scored rows."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from rlaif.config import ConfigError
from rlaif.loop.config import load_loop_config
from rlaif.rates import mean_interval, paired_difference, paired_mean_difference, wilson

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = ROOT / "pipelines"
TOPICS = str(PIPELINES / "data" / "verified_topics.jsonl")

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def _pipeline(tmp_path: Path, name: str, policy: dict, steps: list) -> Path:
    path = tmp_path / f"{name}.yaml"
    spec = {"name": name, "seed": 0, "models": {"policy": policy}, "steps": steps, "output": {"jsonl": True}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _verifier_loop(tmp_path: Path, tiny_model_dir: Path, reward_model: Path | None = None) -> Path:
    policy = {"backend": "hf", "model": str(tiny_model_dir), "temperature": 1.0, "max_tokens": 8}
    constrained = [
        {"name": "prompts", "type": "load", "path": TOPICS},
        {"name": "constrained", "type": "add_constraints", "from": "prompts", "k": 1, "seed": 0,
         "types": ["no_commas", "all_lowercase", "word_count"]},
    ]  # fmt: skip
    data = _pipeline(
        tmp_path,
        "verified",
        policy,
        constrained
        + [
            {"name": "responses", "type": "generate_responses", "from": "constrained", "model": "policy", "n": 4},
            {"name": "verified", "type": "verify", "from": "responses", "verifier": "ifeval"},
            {"name": "pairs", "type": "make_pairs", "from": "verified", "score_column": "rewards"},
        ],
    )
    evaluation = _pipeline(
        tmp_path,
        "verifier_eval",
        {**policy, "temperature": 0.0},
        constrained
        + [
            {"name": "responses", "type": "generate_responses", "from": "constrained", "model": "policy", "n": 1},
            {"name": "verified", "type": "verify", "from": "responses", "verifier": "ifeval", "unverifiable": "keep"}
            if reward_model is None
            else {
                "name": "scored",
                "type": "reward_model_score",
                "from": "responses",
                "reward_model": str(reward_model),
            },
        ],
    )
    loop = {
        "name": "tiny_verifier_loop",
        "rounds": 1,
        "output_dir": str(tmp_path / "run"),
        "prompts": {"path": TOPICS, "held_out": 8, "per_round": 12},
        "pipeline": {"file": str(data)},
        "train": {
            "file": str(PIPELINES / "train" / "dpo.yaml"),
            "overrides": [
                f"model.name={tiny_model_dir}",
                "data.test_size=0",
                "train.max_steps=2",
                "train.save_steps=1",
                "train.learning_rate=1.0e-3",
                "train.max_length=64",
            ],
        },
        "eval": {"kind": "verifier" if reward_model is None else "reward_model", "file": str(evaluation)},
    }
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(loop, sort_keys=False))
    return path


def _recount(eval_run: Path) -> list[bool]:
    rows = pq.read_table(eval_run / "dataset" / "data").to_pylist()
    return [r["verified"][0] is True for r in sorted(rows, key=lambda r: r["prompt"])]


@pytest.mark.model
@pytest.mark.slow
def test_a_verifier_loop_reports_pass_rates_that_its_verified_rows_recount(tiny_model_dir, tmp_path):
    from rlaif.loop.rounds import run_loop

    rows = run_loop(load_loop_config(_verifier_loop(tmp_path, tiny_model_dir)))
    run = tmp_path / "run"
    base = rows[0]["eval"]
    assert rows[0]["round"] == 0 and base["kind"] == "verifier" and base["n"] == 8
    assert base["passed"] == _recount(run / "round-0" / "eval")
    assert base["passes"] == sum(base["passed"]) and base["pass_rate"] == base["passes"] / 8
    assert base["pass_rate_ci95"] == pytest.approx(list(wilson(base["passes"], 8)))
    last = rows[1]
    # Seeded throughout: the tiny policy's 4 samples differ in score on at least one prompt, so round 1 trains.
    assert last["trained"] and last["kept"] >= 1, last.get("not_trained")
    ev = last["eval"]
    assert ev["passed"] == _recount(run / "round-1" / "eval") and ev["passes"] == sum(ev["passed"])
    pairs = list(zip(ev["passed"], base["passed"], strict=True))
    both, k_only = sum(k and b for k, b in pairs), sum(k and not b for k, b in pairs)
    base_only = sum(b and not k for k, b in pairs)
    assert ev["vs_base"] == paired_difference(both, k_only, base_only, 8 - both - k_only - base_only)


def _tiny_reward_model(tmp_path: Path, tokenizer_dir: Path) -> Path:
    """A tiny random LlamaForSequenceClassification (one logit), seeded: the same scores on every load."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    return tmp_path / "rm"


@pytest.mark.model
@pytest.mark.slow
def test_a_reward_model_eval_reports_mean_rewards_that_its_scored_rows_recount(tiny_model_dir, tmp_path):
    from rlaif.loop.rounds import run_loop

    loop = _verifier_loop(tmp_path, tiny_model_dir, _tiny_reward_model(tmp_path, tiny_model_dir))
    with pytest.raises(ConfigError, match="eval.reward_step 'nope' is not an output step"):
        run_loop(load_loop_config(loop, ["eval.reward_step=nope"]))  # before any model loads
    rows = run_loop(load_loop_config(loop))
    run = tmp_path / "run"

    def recount(eval_run: Path) -> list[float]:
        scored = pq.read_table(eval_run / "dataset" / "data").to_pylist()
        return [r["rewards"][0] for r in sorted(scored, key=lambda r: r["prompt"])]

    base, last = rows[0]["eval"], rows[1]
    assert base["kind"] == "reward_model" and base["n"] == 8 and base["unscored"] == 0
    assert base["rewards"] == pytest.approx(recount(run / "round-0" / "eval"))
    interval = mean_interval(base["rewards"], bounds=(float("-inf"), float("inf")))
    assert base["mean_reward"] == pytest.approx(interval["mean"]) and base["mean_reward_ci95"] == interval["ci95"]
    assert last["trained"], last.get("not_trained")
    ev = last["eval"]
    assert ev["rewards"] == pytest.approx(recount(run / "round-1" / "eval"))
    assert ev["vs_base"] == paired_mean_difference(ev["rewards"], base["rewards"]) and ev["vs_base"]["n"] == 8
