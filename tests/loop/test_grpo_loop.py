"""An online-RL round of `rlaif loop` (pipelines/loop_grpo_verified.yaml): the round's dataset is its constrained
prompts, GRPO trains on them with the ifeval verifier reading each row's `constraints`, and the verifier eval measures
the base (round 0) and round 1 on the same held-out prompts, each pass rate with its 95% interval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rlaif.loop.config import load_loop_config
from rlaif.rates import short, wilson

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = ROOT / "pipelines"
TOPICS = str(PIPELINES / "data" / "verified_topics.jsonl")
BUILTIN = "builtin:smollm2-135m-instruct"

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def _step(path: Path, name: str) -> dict:
    return next(step for step in yaml.safe_load(path.read_text())["steps"] if step["name"] == name)


def test_the_shipped_grpo_loop_trains_on_the_constraints_its_eval_checks():
    cfg = load_loop_config(PIPELINES / "loop_grpo_verified.yaml")
    [stage] = cfg.train
    assert (stage.recipe, stage.policy, cfg.pipeline.policy, cfg.eval.kind) == ("grpo", True, None, "verifier")
    assert cfg.prompts.held_out >= 48
    prompts = PIPELINES / "loop" / "grpo_prompts.yaml"
    assert _step(prompts, "constrained") == _step(PIPELINES / "loop" / "verifier_eval.yaml", "constrained")
    assert not any(step["type"] == "generate_responses" for step in yaml.safe_load(prompts.read_text())["steps"])


@pytest.mark.model
@pytest.mark.slow
def test_a_grpo_round_trains_on_the_rounds_prompts_and_reports_the_held_out_pass_rate(tmp_path):
    from rlaif.cli import app

    evaluation = yaml.safe_load((PIPELINES / "loop" / "verifier_eval.yaml").read_text())
    # the shipped eval on the hf backend: no vLLM engine to start for 4 short greedy answers per policy
    evaluation["models"]["policy"] = {"backend": "hf", "model": BUILTIN, "temperature": 0.0, "max_tokens": 16}
    evaluation["steps"][0]["path"] = TOPICS
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(evaluation, sort_keys=False))
    loop = yaml.safe_load((PIPELINES / "loop_grpo_verified.yaml").read_text())
    loop.update(output_dir=str(tmp_path / "run"), prompts={"path": TOPICS, "held_out": 4, "per_round": 4})
    loop["pipeline"]["file"] = str(PIPELINES / "loop" / "grpo_prompts.yaml")
    loop["train"]["file"] = str(PIPELINES / "train" / "grpo.yaml")
    loop["train"]["overrides"] += ["model.quantize=none", "train.max_steps=2", "train.max_completion_length=12"]
    loop["eval"]["file"] = str(tmp_path / "eval.yaml")
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(loop, sort_keys=False))

    result = CliRunner().invoke(app, ["loop", str(tmp_path / "loop.yaml"), "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "run" / "summary.json").read_text())
    base, round_1 = rows[0]["eval"], rows[1]
    assert base["kind"] == "verifier" and base["n"] == 4
    assert base["pass_rate_ci95"] == pytest.approx(list(wilson(base["passes"], 4)))
    # the round's dataset is its 4 constrained prompts; GRPO trained 2 steps on them (groups of 2 under --cpu)
    assert (round_1["prompts"], round_1["kept"], round_1["trained"]) == (4, 4, True), round_1.get("not_trained")
    train = round_1["train"]
    assert train["steps"] == 2 and 0.0 <= train["rewards/ifeval/mean"] <= 1.0
    assert train["rewards/ifeval/unverifiable"] == 0.0  # every row's `constraints` reached the reward
    assert round_1["adapter"] == str(tmp_path / "run" / "round-1" / "train" / "adapter")
    ev = round_1["eval"]
    assert ev["n"] == 4 and ev["pass_rate_ci95"] == pytest.approx(list(wilson(ev["passes"], 4)))
    assert ev["vs_base"]["n"] == 4 and len(ev["vs_base"]["ci95"]) == 2
    # the round table printed each policy's pass rate with its interval
    table = " ".join(result.output.split())
    assert "pass rate [95% CI]" in table
    for figure in (base, ev):
        assert short({"rate": figure["pass_rate"], "ci95": figure["pass_rate_ci95"], "n": 4}) in table
