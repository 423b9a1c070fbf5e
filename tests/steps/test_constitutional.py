"""Constitutional judge (RL-CAI soft labels) and critique-and-revise (SL-CAI): the soft-label arithmetic against known
log-probabilities, constitution loading errors, scripted runs, and both steps once on the real engine."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from scripted import ScriptedBackend
from test_judges import BAD, GOOD, pair, run, shown_first, step_rows, write_pipeline

from rlaif.config import ConfigError
from rlaif.pipeline.spec import load_pipeline
from rlaif.schema import Completion, TokenLogprob
from rlaif.steps import verdicts
from rlaif.steps.constitutional import load_constitution, sample_principles
from rlaif.templates import CONSTITUTIONS_DIR

JUDGE = "rlaif.steps.constitutional.ConstitutionalJudge"
REVISE = "rlaif.steps.critique.CritiqueRevise"
ln = math.log


# -- soft-label arithmetic ---------------------------------------------------------------------------------------
def test_two_way_probability_from_known_logprobs():
    assert verdicts.p_first(ln(0.6), ln(0.2)) == pytest.approx(0.75, abs=1e-15)
    assert verdicts.p_first(0.0, 0.0) == 0.5
    assert verdicts.p_first(-1000.0, 0.0) == pytest.approx(0.0, abs=1e-300)  # no overflow at extreme gaps
    top = {"A": ln(0.6), "B": ln(0.2), "The": ln(0.1)}
    assert verdicts.option_probabilities(top, ("A", "B")) == pytest.approx({"A": 0.75, "B": 0.25}, abs=1e-15)


def test_both_orders_are_averaged_and_cancel_position_bias():
    # A-first order: P("A") = 0.75. B-first order: the original A is shown as (B) and gets 0.3/(0.1+0.3) = 0.75.
    p_ab = verdicts.p_first(ln(0.6), ln(0.2))
    p_ba = verdicts.p_first(ln(0.1), ln(0.3))
    assert verdicts.debiased_p_a(p_ab, p_ba) == pytest.approx(0.75, abs=1e-15)
    assert verdicts.soft_label([(p_ab, p_ba)]) == (pytest.approx(0.75, abs=1e-15), True)
    # A judge that always says "A" with 0.9 has no preference once both orders are averaged.
    p_a, consistent = verdicts.soft_label([(0.9, 0.9)])
    assert p_a == pytest.approx(0.5, abs=1e-15) and consistent is False
    # Two principles: (0.8 + 1 - 0.4) / 2 = 0.7 and (0.6 + 1 - 0.2) / 2 = 0.7 -> 0.7; the first is consistent,
    # the second too; an ensemble with one inconsistent principle is inconsistent.
    assert verdicts.soft_label([(0.8, 0.4), (0.6, 0.2)]) == (pytest.approx(0.7, abs=1e-15), True)
    assert verdicts.soft_label([(0.8, 0.4), (0.6, 0.7)])[1] is False
    assert [verdicts.soft_preference(p, 0.1) for p in (0.61, 0.6, 0.45, 0.39)] == ["A", "tie", "tie", "B"]


def test_tokenizer_variants_of_a_letter_add_up():
    top = {" A": ln(0.3), "A": ln(0.1), "(B": ln(0.2), "ĠB": ln(0.05), "Answer": ln(0.3), "(": ln(0.05)}
    assert verdicts.option_logprob(top, "A") == pytest.approx(ln(0.4), abs=1e-15)
    assert verdicts.option_probabilities(top, ("A", "B")) == pytest.approx({"A": 0.4 / 0.65, "B": 0.25 / 0.65})
    assert verdicts.option_probabilities({"The": -0.1, "I": -3.0}, ("A", "B")) is None
    assert verdicts.option_probabilities({"A": -0.1, "The": -3.0}, ("A", "B")) == {"A": 1.0, "B": 0.0}
    sampled = Completion("A", 1, "stop", [TokenLogprob("A", ln(0.5), {"B": ln(0.25)})])
    assert verdicts.answer_p_a(sampled) == pytest.approx(2 / 3, abs=1e-15)  # the sampled token counts too
    # Unconstrained, the builtin model opens with "(" and puts the letter in the next token: that position is read.
    split = Completion(
        "(A",
        2,
        "stop",
        [
            TokenLogprob("(", ln(0.5), {"(": ln(0.5), "A": ln(0.1)}),
            TokenLogprob("A", ln(0.6), {"A": ln(0.6), "B": ln(0.2)}),
        ],
    )
    assert verdicts.answer_p_a(split) == pytest.approx(0.75, abs=1e-15)


# -- constitutions -----------------------------------------------------------------------------------------------
def test_shipped_constitutions_load():
    default = load_constitution(CONSTITUTIONS_DIR / "default.yaml")
    assert len(default.principles) >= 12 and len(default.revisable()) == len(default.principles)
    assert all(p.comparison.startswith("Which response is more") for p in default.principles)
    support = load_constitution(CONSTITUTIONS_DIR / "customer_support.yaml")
    assert support.principles and all(p.comparison.startswith("Which response") for p in support.principles)


def test_principle_sampling_is_deterministic_and_spread():
    principles = load_constitution(CONSTITUTIONS_DIR / "default.yaml").principles
    first = [sample_principles(principles, 1, 0, "step", f"prompt {i}")[0].id for i in range(40)]
    assert first == [sample_principles(principles, 1, 0, "step", f"prompt {i}")[0].id for i in range(40)]
    assert len(set(first)) >= 8
    assert first != [sample_principles(principles, 1, 1, "step", f"prompt {i}")[0].id for i in range(40)]
    three = sample_principles(principles, 3, "k")
    assert len({p.id for p in three}) == 3


BROKEN = {
    "empty.yaml": ("principles: []\n", "no principles"),
    "noid.yaml": (
        "principles:\n  - comparison: Which response is more helpful?\n",
        r"principles\.0\.id: Field required",
    ),
    "dupe.yaml": (
        "principles:\n  - {id: a, comparison: 'Which?'}\n  - {id: a, comparison: 'Which too?'}\n",
        r"duplicate principle id\(s\) \['a'\]",
    ),
    "typo.yaml": ("principles:\n  - {id: a, comparision: 'Which?'}\n", "comparision"),
    "notyaml.yaml": ("principles: [a\n", "not valid YAML"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_malformed_constitution_fails_validation_naming_the_file(tmp_path, name):
    text, message = BROKEN[name]
    (tmp_path / name).write_text(text)
    path = write_pipeline(
        tmp_path, f"{{name: j, type: {JUDGE}, from: src, model: judge, constitution: {name}}}", [pair(True)]
    )
    with pytest.raises(ConfigError, match=message) as error:
        load_pipeline(path)
    assert name in str(error.value)


def test_missing_constitution_and_one_without_revision_requests(tmp_path):
    path = write_pipeline(
        tmp_path, f"{{name: j, type: {JUDGE}, from: src, model: judge, constitution: gone.yaml}}", [pair(True)]
    )
    with pytest.raises(ConfigError, match="file not found: .*gone.yaml"):
        load_pipeline(path)
    (tmp_path / "judging_only.yaml").write_text("principles:\n  - {id: a, comparison: 'Which response is better?'}\n")
    step = f"{{name: r, type: {REVISE}, from: src, model: judge, constitution: judging_only.yaml}}"
    with pytest.raises(ConfigError, match="no principle has both critique_request and revision_request"):
        load_pipeline(write_pipeline(tmp_path, step, [pair(True)]))


# -- constitutional judge (scripted) -----------------------------------------------------------------------------
def letter_logprobs(p_good: float):
    """Top-k alternatives of the answer token for a judge that gives the good response probability ``p_good``."""

    def top(prompt: str, params: Any) -> dict[str, float]:
        p_a = p_good if shown_first(prompt, GOOD, BAD) == GOOD else 1 - p_good
        return {"A": ln(p_a) + ln(0.9), " B": ln(1 - p_a) + ln(0.9), "The": ln(0.1)}

    return top


def test_constitutional_judge_soft_labels_both_orders(tmp_path):
    backend = ScriptedBackend(lambda p, s: "A", letter_logprobs(0.8))
    step = f"{{name: j, type: {JUDGE}, from: src, model: judge, tie_margin: 0.1}}"
    records = [pair(True, "q1"), pair(False, "q2"), {"prompt": "q3", "responses": [GOOD]}]
    summary, rows, _ = run(tmp_path, step, records, backend)
    assert summary.stats["j"]["dropped"] == {"fewer than 2 responses": 1}
    assert [r["p_a"] for r in rows] == pytest.approx([0.8, 0.2], abs=1e-12)
    assert [(r["preference"], r["consistent"]) for r in rows] == [("A", True), ("B", True)]
    assert [r["confidence"] for r in rows] == pytest.approx([0.8, 0.8], abs=1e-12)
    ids = {p.id for p in load_constitution(CONSTITUTIONS_DIR / "default.yaml").principles}
    assert all(len(r["principles"]) == 1 and r["principles"][0] in ids for r in rows)
    [(prompts, params)] = backend.calls
    assert len(prompts) == 4 and params.logprobs == 20 and params.choice == ("A", "B") and params.max_tokens <= 2
    text = prompts[0][0]["content"]
    assert "Human: q1" in text and "(A) " + GOOD in text and text.endswith("Answer with the letter A or B only.")


def test_constitutional_judge_position_bias_and_missing_letters(tmp_path):
    def top(prompt: str, params: Any) -> dict[str, float]:
        if "no letters" in prompt:
            return {"The": ln(0.6), "I": ln(0.4)}
        return {"A": ln(0.9), "B": ln(0.1)}  # always prefers whatever is shown first

    records = [pair(True, "q1"), pair(True, "no letters"), pair(False, "no letters either")]
    summary, rows, bad = run(
        tmp_path,
        f"{{name: j, type: {JUDGE}, from: src, model: judge}}",
        records,
        ScriptedBackend(lambda p, s: "A", top),
    )
    assert summary.stats["j"]["quarantined"] == {"no answer-token logprobs": 2}
    [row] = rows
    assert (row["p_a"], row["preference"], row["consistent"]) == (pytest.approx(0.5, abs=1e-12), "tie", False)
    assert all(q["raw_output"] for q in bad)


def test_constitutional_judge_cot_and_principle_ensemble(tmp_path):
    def respond(prompt: str, params: Any) -> str:
        return "A" if params.logprobs else "Option A names the right city, so it is better."

    backend = ScriptedBackend(respond, letter_logprobs(0.7))
    step = f"{{name: j, type: {JUDGE}, from: src, model: judge, cot: true, k_principles: 3}}"
    _, [row], _ = run(tmp_path, step, [pair(True)], backend)
    (reasoning, reasoning_params), (answering, answer_params) = backend.calls
    assert len(reasoning) == len(answering) == 2 * 3 and reasoning_params.logprobs is None
    assert [m["role"] for m in answering[0]] == ["user", "assistant", "user"]
    assert answering[0][1]["content"].startswith("Option A names") and "letter A or B" in answering[0][2]["content"]
    assert len(set(row["principles"])) == 3 and row["p_a"] == pytest.approx(0.7, abs=1e-12)
    assert len(row["judge_outputs"]) == 6 and row["judge_outputs"][0].endswith("Answer: A")


def test_principles_are_sampled_per_comparison_not_per_prompt(tmp_path):
    # Bai et al. 2022 sample a principle per comparison: pairs of one prompt (and the next loop round's new
    # responses to it) get independent draws; the same comparison, in either order, always gets the same one.
    def top(prompt: str, params: Any) -> dict[str, float]:
        return {"A": ln(0.6), "B": ln(0.4)}

    records = [{"prompt": "one prompt", "responses": [f"answer {i}", f"other answer {i}"], "id": i} for i in range(12)]
    records.append({"prompt": "one prompt", "responses": ["other answer 0", "answer 0"], "id": 12})  # 0, swapped
    step = f"{{name: j, type: {JUDGE}, from: src, model: judge}}"
    _, rows, _ = run(tmp_path / "a", step, records, ScriptedBackend(lambda p, s: "A", top))
    drawn = {r["id"]: r["principles"][0] for r in rows}
    assert len(set(drawn.values())) >= 4, drawn
    assert drawn[12] == drawn[0]
    _, again, _ = run(tmp_path / "b", step, records, ScriptedBackend(lambda p, s: "A", top))
    assert {r["id"]: r["principles"][0] for r in again} == drawn
    seeded_step = step.replace("}", ", seed: 7}")
    _, seeded, _ = run(tmp_path / "c", seeded_step, records, ScriptedBackend(lambda p, s: "A", top))
    assert {r["id"]: r["principles"][0] for r in seeded} != drawn


# -- critique and revise (scripted) ------------------------------------------------------------------------------
def reviser(prompt: str, params: Any) -> str:
    if "case empty" in prompt and "Critique request" in prompt:
        return "   "
    current = prompt.split("Assistant's response:\n", 1)[1].split("\n\n", 1)[0]
    if "Critique request" in prompt:
        return f"critique of <{current}>"
    return f"revised <{current}>"


def test_critique_revise_rounds(tmp_path):
    backend = ScriptedBackend(reviser)
    step = f"{{name: r, type: {REVISE}, from: src, model: judge, rounds: 2, max_tokens: 32}}"
    records = [pair(True, "q1"), pair(False, "case empty")]
    summary, [row], _ = run(tmp_path, step, records, backend)
    assert summary.stats["r"]["quarantined"] == {"empty revision": 1}
    assert row["revisions"] == [f"revised <{GOOD}>", f"revised <revised <{GOOD}>>"]
    assert row["revision"] == row["revisions"][-1] and row["critiques"][1] == f"critique of <revised <{GOOD}>>"
    assert len(row["principles"]) == 2 and row["revision_model"] == "builtin:smollm2-135m-instruct"
    assert len(backend.calls) == 4 and backend.calls[0][1].max_tokens == 32  # critique+revision per round


def test_critique_revise_emits_trl_pairs_and_sft_rows(tmp_path):
    step = f"{{name: r, type: {REVISE}, from: src, model: judge, target: all, emit: pairs}}"
    summary, rows, _ = run(tmp_path, step, [pair(True, "q1")], ScriptedBackend(reviser))
    assert summary.stats["r"]["records_in"] == 1 and summary.stats["r"]["records_out"] == 2
    assert [r["rejected"] for r in rows] == [[{"role": "assistant", "content": t}] for t in (GOOD, BAD)]
    assert rows[0]["prompt"] == [{"role": "user", "content": "q1"}]
    assert rows[1]["chosen"] == [{"role": "assistant", "content": f"revised <{BAD}>"}]

    step = f"{{name: r, type: {REVISE}, from: src, model: judge, emit: sft}}"
    _, [row], _ = run(tmp_path / "sft", step, [pair(True, "q1")], ScriptedBackend(reviser))
    assert row["messages"] == [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": f"revised <{GOOD}>"},
    ]


# -- the real engine ---------------------------------------------------------------------------------------------
@pytest.mark.engine
def test_constitutional_steps_on_the_real_engine(vllm_backend, tmp_path: Path):
    records = [pair(True, "What is the capital of France?"), pair(False, "Name the capital city of France.")]
    steps = (
        f"{{name: j, type: {JUDGE}, from: src, model: judge, k_principles: 2}}\n"
        f"  - {{name: r, type: {REVISE}, from: src, model: judge, max_tokens: 48}}"
    )
    summary, _, _ = run(tmp_path, steps, records, vllm_backend)
    assert summary.stats["j"]["records_in"] == 2 and summary.stats["j"]["quarantined"] == {}
    for row in step_rows(tmp_path, "j"):
        assert 0.0 <= row["p_a"] <= 1.0 and math.isfinite(row["p_a"])
        assert row["preference"] in ("A", "B", "tie") and row["confidence"] == max(row["p_a"], 1 - row["p_a"])
        assert len(row["principles"]) == 2 and all(t in ("A", "B") for t in row["judge_outputs"])
    stats = summary.stats["r"]
    assert stats["records_in"] == 2 and stats["records_out"] + stats["quarantined"].get("empty revision", 0) == 2
    for row in step_rows(tmp_path, "r"):
        assert isinstance(row["revision"], str) and row["revision"] and len(row["critiques"]) == 1
