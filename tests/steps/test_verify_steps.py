"""Verifier steps: ``verify`` (scores, quarantine, accounting), ``add_constraints`` (seeded, valid constraints),
verifier scores in ``make_pairs`` and ``best_of_n`` (unverifiable responses never chosen) and the hybrid
verifier-then-judge pairs; one pipeline on the real engine (add_constraints -> generate -> verify -> make_pairs).

Rows go through real pipeline runs, so every column is read back from Parquet as the next step would read it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from rlaif.config import ConfigError
from rlaif.pipeline.run import run_pipeline
from rlaif.pipeline.spec import load_pipeline

PROMPT = "Name a primary color."


def pipeline_file(tmp_path: Path, steps: list[dict], models: dict | None = None) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "pipe.yaml"
    path.write_text(json.dumps({"name": "t", "models": models or {}, "steps": steps}))  # JSON is YAML
    return path


def run(tmp_path: Path, steps: list[dict], **kwargs: Any) -> tuple[dict, dict[str, list[dict]], list[dict]]:
    """(stats, output rows of every step, quarantined records) of a pipeline run."""
    summary = run_pipeline(load_pipeline(pipeline_file(tmp_path, steps)), run_dir=tmp_path / "run", **kwargs)
    rows = {name: step_rows(tmp_path, name) for name in summary.stats}
    quarantine = sorted((tmp_path / "run" / "quarantine").glob("*.jsonl"))
    return summary.stats, rows, [json.loads(line) for f in quarantine for line in f.open()]


def step_rows(tmp_path: Path, step: str) -> list[dict[str, Any]]:
    shards = sorted((tmp_path / "run" / "steps" / step).glob("batch-*[0-9].parquet"))
    return [row for shard in shards for row in pq.read_table(shard).to_pylist()]


def accounted(stats: dict) -> bool:
    return all(
        s["records_in"] == s["inputs_emitted"] + sum(s["dropped"].values()) + sum(s["quarantined"].values())
        for s in stats.values()
    )


def inline(records: list[dict], name: str = "src") -> dict:
    return {"name": name, "type": "inline", "records": records}


# -- verifier scores in make_pairs and best_of_n --------------------------------------------------------------------
def scored(rewards: list, **extra: Any) -> dict:
    return {"prompt": PROMPT, "responses": [f"answer {i}" for i in range(len(rewards))], "rewards": rewards, **extra}


def test_unverifiable_responses_are_never_chosen_nor_rejected(tmp_path):
    records = [
        scored([None, 0.0, 1.0, None]),  # the pair is 2 vs 1; the unverifiable ones take no side
        scored([None, 1.0, None]),  # one verifiable response: no pair
        scored([None, None]),
        scored([0.5, 0.5]),
    ]
    steps = [
        inline(records),
        {"name": "pairs", "type": "make_pairs", "from": "src", "score_column": "rewards", "strategy": "all_pairs"},
        {"name": "best", "type": "best_of_n", "from": "src", "score_column": "rewards", "emit": "both"},
    ]
    stats, rows, _ = run(tmp_path, steps)
    assert accounted(stats)
    [pair] = rows["pairs"]
    assert (pair["chosen"][0]["content"], pair["rejected"][0]["content"]) == ("answer 2", "answer 1")
    assert (pair["chosen_score"], pair["rejected_score"], pair["margin"]) == (1.0, 0.0, 1.0)
    assert stats["pairs"]["dropped"] == {"fewer than 2 responses": 2, "no pair above margin": 1}
    best = rows["best"]
    assert stats["best"]["dropped"] == {"no scored responses": 1}
    sft = [r for r in best if r["kind"] == "sft"]
    assert [r["messages"][-1]["content"] for r in sft] == ["answer 2", "answer 1", "answer 0"]
    assert all(r["score"] is not None for r in sft)
    assert [r["chosen"][0]["content"] for r in best if r["kind"] == "pair"] == ["answer 2"]


def hybrid_record(rewards: list, preference: str | None, **extra: Any) -> dict:
    return scored(rewards, preference=preference, **extra)


def test_hybrid_pairs_the_verifier_decides_where_its_scores_differ_the_judge_elsewhere(tmp_path):
    records = [
        hybrid_record([0.0, 1.0], "A", id="verifier"),  # the verifier overrules the judge
        hybrid_record([1.0, 1.0], "B", id="judge-equal"),
        hybrid_record([None, 0.0], "A", id="judge-unverifiable"),
        hybrid_record([0.5, 0.5], "tie", id="tie"),
        hybrid_record([0.5, 0.5], "maybe", id="bad"),
        hybrid_record([0.0, 1.0], "maybe", id="verifier-bad-judge"),  # the judge is not needed here
    ]
    step = {
        "name": "pairs",
        "type": "make_pairs",
        "from": "src",
        "score_column": "rewards",
        "hybrid": True,
        "keep_columns": ["id"],
    }
    stats, rows, bad = run(tmp_path, [inline(records), step])
    assert accounted(stats)
    got = {r["id"]: r for r in rows["pairs"]}
    assert set(got) == {"verifier", "judge-equal", "judge-unverifiable", "verifier-bad-judge"}
    assert got["verifier"]["chosen"][0]["content"] == "answer 1" and got["verifier"]["decided_by"] == "scores"
    assert got["judge-equal"]["chosen"][0]["content"] == "answer 1" and got["judge-equal"]["decided_by"] == "judge"
    assert got["judge-equal"]["margin"] == 0.0
    unverifiable = got["judge-unverifiable"]
    assert unverifiable["chosen"][0]["content"] == "answer 0" and unverifiable["decided_by"] == "judge"
    assert (unverifiable["chosen_score"], unverifiable["rejected_score"], unverifiable["margin"]) == (None, 0.0, None)
    assert stats["pairs"]["dropped"] == {"tie": 1}
    assert stats["pairs"]["quarantined"] == {"invalid preference": 1} and json.loads(bad[0]["record"])["id"] == "bad"


def test_hybrid_needs_scores_and_reads_the_preference(tmp_path):
    step = {"name": "pairs", "type": "make_pairs", "from": "src", "hybrid": True}
    with pytest.raises(ConfigError, match="hybrid needs score_column"):
        load_pipeline(pipeline_file(tmp_path, [inline([hybrid_record([1.0, 0.0], "A")]), step]))
    step |= {"score_column": "rewards", "preference_column": "verdict"}
    with pytest.raises(ConfigError, match="verdict"):  # a column no upstream writes, found before the run
        load_pipeline(pipeline_file(tmp_path, [inline([hybrid_record([1.0, 0.0], "A")]), step]))


# -- verify ----------------------------------------------------------------------------------------------------------
NO_COMMAS = [{"type": "no_commas"}]
LOWER_NO_COMMAS = [{"type": "no_commas"}, {"type": "all_lowercase"}]


def graded(responses: Any, constraints: Any, **extra: Any) -> dict:
    return {"prompt": PROMPT, "responses": responses, "constraints": constraints, **extra}


def test_verify_scores_every_response_and_quarantines_malformed_constraints(tmp_path):
    records = [
        graded(["red and blue", "red, blue"], NO_COMMAS, id="ok"),
        graded(["red, blue", "Red blue", "red blue"], LOWER_NO_COMMAS, id="two"),
        graded(["red"], [{"type": "no_comas"}], id="unknown type"),
        graded(["red"], [{"type": "word_count", "relation": "at_most", "num": "five"}], id="ill-typed"),
        graded(["red"], "[not json", id="not json"),
        graded(["red"], [], id="none"),
        graded(None, NO_COMMAS, id="no responses"),
    ]
    # Specs travel as JSON strings (what add_constraints writes): each type has its own arguments.
    records = [{**r, "constraints": c if isinstance(c := r["constraints"], str) else json.dumps(c)} for r in records]
    step = {"name": "verified", "type": "verify", "from": "src", "verifier": "ifeval"}
    stats, rows, bad = run(tmp_path, [inline(records), step])
    assert accounted(stats)
    got = {r["id"]: r for r in rows["verified"]}
    assert set(got) == {"ok", "two"}
    assert got["ok"]["rewards"] == [1.0, 0.0] and got["ok"]["verified"] == [True, False]
    assert got["ok"]["verifier"] == "ifeval"
    assert [v["constraints"] for v in got["ok"]["verification"]] == [
        [{"type": "no_commas", "passed": True}],
        [{"type": "no_commas", "passed": False}],
    ]
    assert got["two"]["rewards"] == [0.5, 0.5, 1.0] and got["two"]["verified"] == [False, False, True]
    assert stats["verified"]["quarantined"] == {"malformed constraints": 3, "invalid responses": 1}
    assert stats["verified"]["dropped"] == {"unverifiable: no constraints": 1}
    reasons = {json.loads(q["record"])["id"]: q["detail"] for q in bad}
    assert "did you mean 'no_commas'" in reasons["unknown type"] and "num" in reasons["ill-typed"]


def test_verify_reads_constraints_stored_as_parquet_structs(tmp_path):
    # A list of mappings is one struct type per column in Parquet: each spec comes back with every other type's
    # argument names set to None, which must not read as arguments.
    records = [
        graded(["red blue", "red, blue"], NO_COMMAS),
        graded(
            ["one two three", "one two three four five six"], [{"type": "word_count", "relation": "at_most", "num": 4}]
        ),
    ]
    stats, rows, _ = run(
        tmp_path, [inline(records), {"name": "v", "type": "verify", "from": "src", "verifier": "ifeval"}]
    )
    assert stats["v"]["quarantined"] == {} and [r["rewards"] for r in rows["v"]] == [[1.0, 0.0], [1.0, 0.0]]


def test_verify_grades_a_string_column_with_one_value_per_row(tmp_path):
    records = [
        {"prompt": PROMPT, "chosen": "The answer is 4.", "answer": "4"},
        {"prompt": PROMPT, "chosen": "It is 5.", "answer": "4"},
        {"prompt": PROMPT, "chosen": "It is (4.", "answer": "(4"},  # not a regular expression
    ]
    step = {"name": "verified", "type": "verify", "from": "src", "verifier": "regex", "response_column": "chosen"}
    stats, rows, bad = run(tmp_path, [inline(records), {**step, "pattern_column": "answer"}])
    assert accounted(stats)
    assert [(r["rewards"], r["verified"]) for r in rows["verified"]] == [(1.0, True), (0.0, False)]
    assert rows["verified"][0]["verification"]["score"] == 1.0
    assert stats["verified"]["quarantined"] == {"malformed pattern": 1} and "malformed pattern" in bad[0]["detail"]


def test_math_answers_unverifiable_ones_take_no_side_and_count_by_reason(tmp_path):
    records = [
        {"prompt": "2+2?", "answer": "4", "responses": ["The answer is 4.", "so #### 5", "I cannot say"]},
        {"prompt": "3+1?", "answer": "4", "responses": ["no idea", "none"]},
    ]
    steps = [
        inline(records),
        {"name": "v", "type": "verify", "from": "src", "verifier": "math"},
        {"name": "pairs", "type": "make_pairs", "from": "v", "score_column": "rewards", "strategy": "all_pairs"},
    ]
    stats, rows, _ = run(tmp_path, steps)
    assert accounted(stats) and stats["v"]["dropped"] == {"unverifiable: no final answer": 1}
    [row] = rows["v"]
    assert row["rewards"] == [1.0, 0.0, None] and row["verified"] == [True, False, None]
    assert row["verification"][2]["reason"] == "no final answer"
    [pair] = rows["pairs"]  # the unverifiable answer is neither chosen nor rejected
    assert (pair["chosen"][0]["content"], pair["rejected"][0]["content"]) == ("The answer is 4.", "so #### 5")


def half_credit(prompts: list, completions: list[str], **columns: Any) -> list[float | None]:
    """A user verifier by dotted path: None (unverifiable) when the row has no `target`, else 1 / 0.5 / 0."""
    return [
        None if target is None else 1.0 if text == target else 0.5 if target in text else 0.0
        for text, target in zip(completions, columns["target"], strict=True)
    ]


def test_verify_counts_unverifiable_rows_by_reason_and_plugins_get_their_columns(tmp_path):
    records = [
        {"prompt": PROMPT, "responses": ["red", "red!", "blue"], "target": "red", "id": 0},
        {"prompt": PROMPT, "responses": ["red", "blue"], "target": None, "id": 1},
    ]
    step = {
        "name": "verified",
        "type": "verify",
        "from": "src",
        "verifier": "test_verify_steps.half_credit",
        "columns": ["target"],
    }
    stats, rows, _ = run(tmp_path, [inline(records), step])
    assert accounted(stats) and stats["verified"]["dropped"] == {"unverifiable": 1}
    [row] = rows["verified"]
    assert row["rewards"] == [1.0, 0.5, 0.0] and row["verified"] == [None, None, None]  # not pass/fail
    stats, rows, _ = run(tmp_path / "keep", [inline(records), {**step, "unverifiable": "keep"}])
    assert [r["rewards"] for r in rows["verified"]] == [[1.0, 0.5, 0.0], [None, None]]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"verifier": "ifevl"}, "did you mean 'ifeval'"),
        ({"verifier": "no_such_module.grade"}, "cannot import verifier"),
        ({"verifier": "math"}, "answer"),  # math reads `answer`, which no upstream writes
        ({"constraints_column": "specs"}, "specs"),
        ({"columns": ["target"]}, "columns is for a dotted-path verifier"),
    ],
)
def test_verify_parameters_and_columns_fail_validation(tmp_path, change, message):
    step = {"name": "verified", "type": "verify", "from": "src", "verifier": "ifeval", **change}
    with pytest.raises(ConfigError, match=message):
        load_pipeline(pipeline_file(tmp_path, [inline([graded(["red"], "[]")]), step]))


# -- add_constraints -------------------------------------------------------------------------------------------------
def test_add_constraints_is_seeded_per_prompt_valid_and_appended_to_the_prompt(tmp_path):
    from rlaif.verifiers.constraints import constraint_problems, describe

    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}]
    records = [{"prompt": f"Write about topic {i}."} for i in range(12)]
    step = {"name": "constrained", "type": "add_constraints", "from": "src", "k": 1, "k_max": 3, "seed": 7}
    stats, rows, _ = run(tmp_path / "a", [inline(records), {**step, "batch_size": 5}])
    again = run(tmp_path / "b", [inline(list(reversed(records))), step])[1]["constrained"]
    assert accounted(stats) and len(rows["constrained"]) == 12
    by_instruction = {r["instruction"]: r for r in again}
    for row in rows["constrained"]:
        specs = json.loads(row["constraints"])
        assert 1 <= len(specs) <= 3 and constraint_problems(specs) == []
        assert row["prompt"].startswith(row["instruction"] + "\n\n")
        assert all(describe(spec) in row["prompt"] for spec in specs)
        twin = by_instruction[row["instruction"]]  # another batch size and order: the same draw
        assert (twin["prompt"], twin["constraints"]) == (row["prompt"], row["constraints"])
    assert len({r["constraints"] for r in rows["constrained"]}) > 6  # prompts draw differently
    other = run(tmp_path / "c", [inline(records), {**step, "seed": 8}])[1]["constrained"]
    assert [r["constraints"] for r in other] != [r["constraints"] for r in rows["constrained"]]

    chat = [{"prompt": conversation}, {"prompt": None}, {"prompt": [{"role": "system", "content": "x"}]}]
    only = {**step, "types": ["no_commas", "all_lowercase"], "k": 2, "k_max": None}
    stats, rows, _ = run(tmp_path / "d", [inline(chat), only])
    assert accounted(stats) and stats["constrained"]["quarantined"] == {"invalid prompt": 2}
    [row] = rows["constrained"]
    assert row["prompt"][0] == conversation[0] and row["prompt"][1]["content"].startswith("Name a color.\n\n")
    assert sorted(s["type"] for s in json.loads(row["constraints"])) == ["all_lowercase", "no_commas"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"types": ["no_comas"]}, "unknown constraint type"),
        ({"types": ["repeat_prompt"]}, "need the prompt"),
        ({"types": ["no_commas"], "k": 2}, "only 1 types"),
        ({"k": 3, "k_max": 2}, "k_max"),
    ],
)
def test_add_constraints_parameters_fail_validation(tmp_path, change, message):
    step = {"name": "constrained", "type": "add_constraints", "from": "src", **change}
    with pytest.raises(ConfigError, match=message):
        load_pipeline(pipeline_file(tmp_path, [inline([{"prompt": PROMPT}]), step]))


# -- the real engine -------------------------------------------------------------------------------------------------
@pytest.mark.engine
def test_constraints_generate_verify_pairs_on_the_real_engine(vllm_backend, tmp_path):
    # 12 prompts: on the builtin model with these seeds 3 of the first 8 rows scored their two answers apart; more rows
    # keep a pair likely on a machine whose float results (and so samples) differ.
    topics = ["the sea", "a library", "winter", "cooking", "city buses", "a garden", "trains", "rain"]
    topics += ["bees", "a bakery", "mountains", "chess"]
    steps = [
        inline([{"prompt": f"Write a few sentences about {topic}."} for topic in topics]),
        {
            "name": "constrained",
            "type": "add_constraints",
            "from": "src",
            "k": 2,
            "k_max": 3,
            "types": ["no_commas", "all_lowercase", "word_count", "sentence_count", "ends_with", "keywords_include"],
        },
        {"name": "responses", "type": "generate_responses", "from": "constrained", "model": "policy", "n": 2},
        {"name": "verified", "type": "verify", "from": "responses", "verifier": "ifeval"},
        {"name": "pairs", "type": "make_pairs", "from": "verified", "score_column": "rewards"},
    ]
    policy = {"backend": "vllm", "model": "builtin:smollm2-135m-instruct", "temperature": 1.0, "max_tokens": 48}
    path = pipeline_file(tmp_path, steps, models={"policy": policy})
    summary = run_pipeline(load_pipeline(path), run_dir=tmp_path / "run", backends={"policy": vllm_backend})
    stats = summary.stats
    assert accounted(stats)
    assert stats["constrained"]["records_out"] == stats["responses"]["records_out"] == len(topics)
    verified = step_rows(tmp_path, "verified")
    assert len(verified) + sum(stats["verified"]["dropped"].values()) == len(topics)
    for row in verified:
        specs = json.loads(row["constraints"])
        assert len(row["rewards"]) == len(row["verified"]) == len(row["responses"]) == 2
        for reward, passed, detail in zip(row["rewards"], row["verified"], row["verification"], strict=True):
            assert 0.0 <= reward <= 1.0 and passed == (reward == 1.0)
            assert [c["type"] for c in detail["constraints"]] == [s["type"] for s in specs]
    pairs = step_rows(tmp_path, "pairs")
    differing = [r for r in verified if r["rewards"][0] != r["rewards"][1]]
    assert len(pairs) == len(differing)  # every row whose answers score differently gives its pair
    assert pairs  # scores are fractions of 2-3 constraints (0, 1/3, 1/2, ...): some answers differ
    for pair in pairs:
        assert pair["chosen_score"] > pair["rejected_score"] and pair["chosen"] != pair["rejected"]
