"""A tiny verifier loop: the tiny random-init Llama on the hf backend answers constrained prompts, the ifeval
verifier labels the pairs, QLoRA DPO trains, and the verifier eval measures the base (round 0) and round 1 on the
same held-out prompts. The figures must agree with the eval's own verified rows."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from rlaif.loop.config import load_loop_config
from rlaif.rates import paired_difference, wilson

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = ROOT / "pipelines"
TOPICS = str(PIPELINES / "data" / "verified_topics.jsonl")

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def _pipeline(tmp_path: Path, name: str, policy: dict, steps: list) -> Path:
    path = tmp_path / f"{name}.yaml"
    spec = {"name": name, "seed": 0, "models": {"policy": policy}, "steps": steps, "output": {"jsonl": True}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _verifier_loop(tmp_path: Path, tiny_model_dir: Path) -> Path:
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
            {"name": "verified", "type": "verify", "from": "responses", "verifier": "ifeval", "unverifiable": "keep"},
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
        "eval": {"kind": "verifier", "file": str(evaluation)},
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
