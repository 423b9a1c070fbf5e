"""A generation pipeline on the real vLLM engine with the builtin model, and every shipped pipeline validating."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rlaif.pipeline.run import run_pipeline
from rlaif.pipeline.spec import load_pipeline

REPO = Path(__file__).resolve().parents[2]
# Pipeline files (loop files, with `rounds:`, are validated in test_loop.py).
SHIPPED = sorted(
    p
    for p in [*(REPO / "pipelines").glob("*.yaml"), *(REPO / "pipelines" / "loop").glob("*.yaml")]
    if "rounds" not in yaml.safe_load(p.read_text())
)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_pipeline_validates(path):
    pipeline = load_pipeline(path)
    assert pipeline.steps


class NoEngine:
    """Stands in for every backend on a cached re-run: any generation call is a test failure."""

    name = model = "none"

    def generate(self, prompts, params):
        raise AssertionError("a fully cached re-run must not generate")

    def close(self) -> None:
        pass


@pytest.mark.engine
def test_generate_responses_pipeline_runs_caches_and_accounts(vllm_backend, tmp_path):
    path = REPO / "pipelines" / "generate_responses.yaml"
    overrides = ["models.policy.max_tokens=12", "steps.seeds.limit=6", f"output.save={tmp_path / 'dataset'}"]
    pipeline = load_pipeline(path, overrides)
    summary = run_pipeline(pipeline, run_dir=tmp_path / "run", backends={"policy": vllm_backend})
    stats = summary.stats["responses"]
    assert stats["records_in"] == 6 and stats["records_out"] == 6
    assert stats["tokens_in"] > 6 * 10 and 0 < stats["tokens_out"] <= 6 * 2 * 12
    rows = [json.loads(line) for line in (tmp_path / "dataset" / "train.jsonl").open()]
    assert len(rows) == 6
    for row in rows:
        assert len(row["responses"]) == 2 and all(isinstance(r, str) and r for r in row["responses"])
        assert row["response_models"] == ["builtin:smollm2-135m-instruct"] * 2
    card = (tmp_path / "dataset" / "README.md").read_text()
    assert "generate_responses" in card and "builtin:smollm2-135m-instruct" in card

    again = run_pipeline(load_pipeline(path, overrides), run_dir=tmp_path / "run", backends={"policy": NoEngine()})
    assert all(s.get("cached") for s in again.stats.values())
    assert [json.loads(line) for line in (tmp_path / "dataset" / "train.jsonl").open()] == rows
