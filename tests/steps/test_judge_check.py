"""The judge check (rlaif.steps.judge_check): a scripted judge with known answers scored exactly, position bias
seen as consistency 0, ``min_agreement`` stopping a run before any labelling call, the dataset card and
``rlaif judge-eval``. No model loads."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from scripted import ScriptedBackend
from typer.testing import CliRunner

from rlaif.cli import app
from rlaif.pipeline.run import run_pipeline
from rlaif.pipeline.spec import load_pipeline
from rlaif.rates import wilson
from rlaif.steps.judge_check import JudgeCheckFailed, load_pairs

ANSWER = re.compile(r"Start of Assistant [AB]'s Answer\]\n(.*?)\n\[The End", re.S)


def longer(prompt: str, params) -> str:
    """A consistent judge: prefers the longer answer (both orders agree)."""
    a, b = ANSWER.findall(prompt)[:2]
    return "A" if len(a) > len(b) else "B"


def human_file(tmp_path: Path, agree: int, n: int) -> Path:
    """``n`` generic pairs; in the first ``agree`` the human-chosen answer is the longer one."""
    rows = []
    for i in range(n):
        short, long = f"meh {i}", f"a much longer answer number {i}"
        chosen, rejected = (long, short) if i < agree else (short, long)
        rows.append({"prompt": f"question {i}?", "chosen": chosen, "rejected": rejected})
    path = tmp_path / "human.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pipeline_file(tmp_path: Path, check: str, step_type: str = "pairwise_judge") -> Path:
    records = [{"prompt": "label me", "responses": ["first answer here", "second"]}]
    path = tmp_path / "pipe.yaml"
    path.write_text(
        "name: check-test\n"
        "models:\n"
        "  judge: {backend: plugins.LongerAnswerJudge, model: builtin:smollm2-135m-instruct}\n"
        "steps:\n"
        f"  - {{name: src, type: inline, records: {json.dumps(records)}}}\n"
        f"  - {{name: judged, type: {step_type}, from: src, model: judge, check: {check}}}\n"
        f"output: {{save: {tmp_path / 'dataset'}, jsonl: true}}\n"
    )
    return path


def test_load_pairs_draws_a_seeded_sample_with_both_positions(tmp_path):
    path = human_file(tmp_path, 10, 40)
    records = load_pairs(path, 20, seed=3)
    assert len(records) == 20 and records == load_pairs(path, 20, seed=3)
    assert {r["_check_human"] for r in records} == {"A", "B"}
    for r in records:  # the human-chosen (longer) answer sits where the label says
        chosen = r["responses"][0 if r["_check_human"] == "A" else 1]
        assert chosen.startswith("a much longer") == (int(r["prompt"][-1]["content"].split()[1][:-1]) < 10)


def test_a_scripted_judge_with_known_answers_is_scored_exactly(tmp_path):
    human_file(tmp_path, agree=7, n=10)
    backend = ScriptedBackend(longer)
    summary = run_pipeline(
        load_pipeline(pipeline_file(tmp_path, "{data: human.jsonl, sample: 10}")),
        run_dir=tmp_path / "run",
        backends={"judge": backend},
    )
    figures = summary.stats["judged"]["setup"]["judge_check"]
    assert figures["n"] == 10 and figures["judged"] == 10
    assert figures["agreement"]["successes"] == 7 and figures["agreement"]["rate"] == 0.7
    low, high = figures["agreement"]["ci95"]
    assert (round(low, 4), round(high, 4)) == (0.3968, 0.8922)  # Wilson 7/10
    assert figures["consistency"]["rate"] == 1.0 and figures["agreement_consistent"]["rate"] == 0.7
    assert figures["parse_failures"]["successes"] == 0 and figures["passed"] is True
    # The check's 10 pairs in both orders, then the labelling call.
    assert [len(prompts) for prompts, _ in backend.calls] == [20, 2]
    card = (tmp_path / "dataset" / "README.md").read_text()
    assert "## Judge checks" in card and "| judged | agreement | 7/10 | 0.700 [0.397-0.892] |" in card


def test_a_position_biased_judge_has_consistency_zero(tmp_path):
    human_file(tmp_path, agree=7, n=10)
    summary = run_pipeline(
        load_pipeline(pipeline_file(tmp_path, "{data: human.jsonl}")),
        run_dir=tmp_path / "run",
        backends={"judge": ScriptedBackend(lambda p, s: "A")},
    )
    figures = summary.stats["judged"]["setup"]["judge_check"]
    assert figures["consistency"]["successes"] == 0 and figures["agreement"]["successes"] == 0
    assert figures["ties"] == 10 and figures["agreement_consistent"] == {"rate": None, "ci95": None,
                                                                          "successes": 0, "n": 0}  # fmt: skip


def test_the_constitutional_judge_is_checked_after_its_constitution_loads(tmp_path):
    def top(prompt: str, params) -> dict[str, float]:  # P(longer answer) = 0.8, whichever side shows it
        p_a = 0.8 if prompt.find("a much longer") < prompt.find("meh ") else 0.2
        return {"A": math.log(p_a), "B": math.log(1 - p_a)}

    human_file(tmp_path, agree=7, n=10)
    path = pipeline_file(tmp_path, "{data: human.jsonl}", "constitutional_judge")
    backend = ScriptedBackend(lambda p, s: "A", top)
    summary = run_pipeline(load_pipeline(path), run_dir=tmp_path / "run", backends={"judge": backend})
    figures = summary.stats["judged"]["setup"]["judge_check"]
    assert figures["agreement"]["successes"] == 7 and figures["consistency"]["rate"] == 1.0
    assert figures["mean_p_human"] == pytest.approx(0.62)  # (7 x 0.8 + 3 x 0.2) / 10


def test_min_agreement_stops_the_run_before_any_labelling_call(tmp_path):
    human_file(tmp_path, agree=5, n=10)
    backend = ScriptedBackend(longer)
    pipeline = load_pipeline(pipeline_file(tmp_path, "{data: human.jsonl, min_agreement: 0.6}"))
    with pytest.raises(JudgeCheckFailed) as caught:
        run_pipeline(pipeline, run_dir=tmp_path / "run", backends={"judge": backend})
    message = str(caught.value)
    assert "'judged'" in message and "5/10" in message and "min_agreement 0.6" in message
    assert [len(prompts) for prompts, _ in backend.calls] == [20]  # the check's prompts only
    assert all("label me" not in json.dumps(prompts) for prompts, _ in backend.calls)
    assert not (tmp_path / "dataset").exists()


def test_the_check_file_is_validated_before_a_run(tmp_path):
    result = CliRunner().invoke(app, ["validate", str(pipeline_file(tmp_path, "{data: missing.jsonl}"))])
    assert result.exit_code != 0 and "missing.jsonl" in result.output


def test_judge_eval_prints_the_figures_and_json(tmp_path):
    data = human_file(tmp_path, agree=7, n=10)
    args = ["judge-eval", str(pipeline_file(tmp_path, "null")), "--step", "judged", "--data", str(data)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "agreement" in result.output and "7/10" in result.output and "0.397" in result.output
    result = CliRunner().invoke(app, [*args, "--sample", "4", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)  # stdout: the JSON only (warnings go to stderr)
    assert figures["n"] == 4 and figures["consistency"]["rate"] == 1.0


def test_judge_eval_names_an_unknown_or_non_judge_step(tmp_path):
    data = human_file(tmp_path, agree=7, n=10)
    path = str(pipeline_file(tmp_path, "null"))
    result = CliRunner().invoke(app, ["judge-eval", path, "--step", "src", "--data", str(data)])
    assert result.exit_code == 2 and "src" in result.output and "judged" in result.output


def test_wilson_reference_values():
    assert wilson(7, 10) == pytest.approx((0.3968, 0.8922), abs=1e-4)
