"""Shipped pipelines end to end: quickstart on the real engine with the builtin model, human_prefs offline, and the
reward-model scorer on the builtin model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from trl.data_utils import is_conversational, maybe_apply_chat_template

from rlaif.pipeline.run import run_pipeline
from rlaif.pipeline.spec import load_pipeline
from rlaif.report import write_report

REPO = Path(__file__).resolve().parents[2]


def accounted(stats: dict) -> bool:
    return all(
        s["records_in"] == s["inputs_emitted"] + sum(s["dropped"].values()) + sum(s["quarantined"].values())
        for s in stats.values()
    )


@pytest.mark.engine
def test_quickstart_end_to_end_on_the_builtin_model(vllm_backend, builtin_model_path, tmp_path):
    from transformers import AutoTokenizer

    overrides = ["steps.seeds.limit=6", "models.policy.max_tokens=48", f"output.save={tmp_path / 'dataset'}"]
    pipeline = load_pipeline(REPO / "pipelines" / "quickstart.yaml", overrides)
    engines = {"policy": vllm_backend, "judge": vllm_backend}
    summary = run_pipeline(pipeline, run_dir=tmp_path / "run", backends=engines)
    stats = summary.stats
    assert accounted(stats)
    assert stats["responses"]["records_out"] == 6 and stats["judged"]["tokens_in"] > 0
    judged = [r for batch in summary_store(summary, tmp_path, "judged") for r in batch]
    assert all(r["preference"] in ("A", "B", "tie") and 0.0 <= r["confidence"] <= 1.0 for r in judged)
    assert all(len(r["judge_outputs"]) == 2 for r in judged)  # both orders, raw output kept
    rows = [json.loads(line) for line in (tmp_path / "dataset" / "train.jsonl").open()]
    assert len(rows) == stats["balanced"]["records_out"]
    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path)
    for row in rows:
        assert is_conversational(row) and row["chosen"] != row["rejected"]
        assert maybe_apply_chat_template(row, tokenizer)["chosen"]
    assert "quickstart" in (tmp_path / "dataset" / "README.md").read_text()
    # The run's report (rlaif.report) from this real run: the funnel, and the builtin judge's consistency figures
    html = write_report(tmp_path / "run").read_text()
    for section in ('id="steps"', 'id="cost"', 'id="samples"', 'id="judges"', 'id="pairs"'):
        assert section in html, section
    consistent = sum(bool(r["consistent"]) for r in judged)
    row = re.search(r"position consistency \(both orders agree\)</td>(.*?)</tr>", html, re.S)
    assert row and f">{consistent}/{len(judged)}<" in row.group(1)


def summary_store(summary, tmp_path: Path, step: str):
    from rlaif.pipeline.store import StepStore

    fingerprint = (tmp_path / "run" / "steps" / step / "fingerprint").read_text()
    return StepStore(tmp_path / "run" / "steps" / step, fingerprint).records()


def test_human_prefs_pipeline_quarantines_malformed_transcripts(tmp_path):
    pipeline = load_pipeline(REPO / "pipelines" / "human_prefs.yaml", [f"output.save={tmp_path / 'dataset'}"])
    summary = run_pipeline(pipeline, run_dir=tmp_path / "run")
    assert accounted(summary.stats)
    human = summary.stats["human"]
    assert human["records_in"] == 10 and sum(human["quarantined"].values()) >= 3
    rows = [json.loads(line) for line in (tmp_path / "dataset" / "train.jsonl").open()]
    assert rows and all(is_conversational(r) and r["source"] == "hh_rlhf" for r in rows)
    assert (tmp_path / "run" / "quarantine" / "human.jsonl").is_file()


@pytest.mark.model
@pytest.mark.slow
def test_reward_model_score_and_best_of_n_with_the_builtin_model(builtin_model_path, tmp_path):
    """The builtin model's backbone with a fresh one-output head as the reward model: the mechanics, not quality."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    reward_model = AutoModelForSequenceClassification.from_pretrained(builtin_model_path, num_labels=1)
    reward_model.config.pad_token_id = reward_model.config.eos_token_id
    rm_dir = tmp_path / "rm"  # model references are paths as from_pretrained reads them (from the working dir)
    reward_model.save_pretrained(rm_dir)
    AutoTokenizer.from_pretrained(builtin_model_path).save_pretrained(rm_dir)
    path = tmp_path / "rs.yaml"
    path.write_text(
        "name: rs\nsteps:\n"
        "  - name: rows\n    type: inline\n    records:\n"
        "      - {prompt: 'Name a fruit.', responses: ['An apple.', 'A chair.', 'Banana']}\n"
        "      - {prompt: 'Say hi.', responses: ['Hi!', 'Goodbye.']}\n"
        f"  - {{name: scored, type: reward_model_score, from: rows, reward_model: '{rm_dir}'}}\n"
        "  - {name: best, type: best_of_n, from: scored, k: 1}\n"
    )
    summary = run_pipeline(load_pipeline(path), run_dir=tmp_path / "run")
    assert accounted(summary.stats) and summary.rows["best"] == 2
    scored = [r for batch in summary_store(summary, tmp_path, "scored") for r in batch]
    assert [len(r["rewards"]) for r in scored] == [3, 2]
