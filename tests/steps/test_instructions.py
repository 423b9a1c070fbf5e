"""Instruction generation: Self-Instruct's novelty filter, Evol-Instruct's elimination, Magpie's pre-query.

Step logic runs on a ScriptedBackend through real pipelines (accounting is checked by the engine); each method also
runs once on the real vLLM engine with the builtin model, asserting mechanics, not quality (a 135M model).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from scripted import ScriptedBackend

from rlaif.config import ConfigError
from rlaif.pipeline.run import run_pipeline
from rlaif.pipeline.spec import load_pipeline
from rlaif.schema import Completion, GenerationResult
from rlaif.steps.evol import evolution_problem
from rlaif.steps.generate import pre_query
from rlaif.steps.instructions import NoveltyPool, parse_numbered_list, rouge_l, words

REPO = Path(__file__).resolve().parents[2]
SEEDS = REPO / "pipelines" / "data" / "self_instruct_seeds.jsonl"
MODELS = {"policy": {"backend": "vllm", "model": "builtin:smollm2-135m-instruct", "max_tokens": 64}}
SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def pipeline_file(tmp_path: Path, steps: list[dict], name: str = "t") -> Path:
    # JSON is YAML: tests build pipelines as data; shipped pipelines are hand-written.
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "pipe.yaml"
    path.write_text(json.dumps({"name": name, "models": MODELS, "steps": steps}))
    return path


def run(tmp_path: Path, steps: list[dict], backend) -> tuple[dict, list[dict]]:
    summary = run_pipeline(
        load_pipeline(pipeline_file(tmp_path, steps)), run_dir=tmp_path / "run", backends={"policy": backend}
    )
    [dataset] = summary.datasets.values()
    rows = [r for f in sorted((dataset / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return summary.stats, rows


def inline(records: list[dict]) -> dict:
    return {"name": "seeds", "type": "inline", "records": records}


# -- ROUGE-L and the novelty filter ----------------------------------------------------------------------------------
def test_rouge_l_is_lcs_f1_on_words():
    assert rouge_l(words("The cat sat on the mat."), words("the cat sat on the mat")) == 1.0
    # LCS "the cat on the mat" = 5 of 6 words each way.
    assert rouge_l(words("the cat sat on the mat"), words("the cat was on the mat")) == pytest.approx(5 / 6)
    assert rouge_l(words("a b c d"), words("d c b a")) == pytest.approx(0.25)
    assert rouge_l(words("apples"), words("oranges")) == 0.0 and rouge_l([], words("x")) == 0.0


def test_novelty_pool_rejects_near_copies_and_the_papers_filters():
    pool = NoveltyPool(max_similarity=0.7)
    pool.add("Write a short poem about the ocean at night.")
    assert pool.check("Write a short poem about the ocean at dawn.")[0] == "too similar"
    assert pool.check("write a short poem about the OCEAN at night")[0] == "duplicate"
    assert pool.check("Describe this image of a cat.")[0] == "needs a non-text modality"
    assert pool.check("Explain.")[0] == "too short"
    assert pool.check("- Explain how vaccines train the immune system.")[0] == "starts with punctuation"
    reason, similarity = pool.check("Explain how vaccines train the immune system.")
    assert reason is None and 0 <= similarity < 0.7


def test_parse_numbered_list_takes_numbered_lines_only():
    text = (
        "Sure, here you go:\n9. Write a limerick about cats.\n10) **Explain tides to a child.**\n"
        "Task 11: List three uses of vinegar.\n- a bullet\nThanks!"
    )
    assert parse_numbered_list(text) == [
        "Write a limerick about cats.",
        "Explain tides to a child.",
        "List three uses of vinegar.",
    ]


# -- Self-Instruct ---------------------------------------------------------------------------------------------------
FRESH = [
    "Describe how compound interest grows savings, with a worked example.",
    "Invent a board game for four players and explain its rules.",
    "Argue for and against a four-day work week in two paragraphs.",
    "Convert this recipe for four people into one for ten: 200 g rice, 1 onion.",
]


def self_instruct_answer(prompt: str, params) -> str:
    # Per call: a near-copy of a seed, a non-text task, the same novel task (a duplicate after the first call) and
    # one task never seen before.
    calls = self_instruct_answer.calls = getattr(self_instruct_answer, "calls", 0) + 1
    return (
        "21. Write a short thank-you note to a colleague who helped you meet the deadline.\n"
        "22. Draw a diagram of the water cycle.\n"
        "23. Propose a weekly meal plan for a vegetarian student on a tight budget.\n"
        f"24. {FRESH[(calls - 1) % len(FRESH)]}\n"
    )


def test_self_instruct_keeps_novel_tasks_and_accounts_for_every_seed(tmp_path):
    self_instruct_answer.calls = 0
    backend = ScriptedBackend(self_instruct_answer)
    steps = [
        {"name": "seeds", "type": "load", "path": str(SEEDS)},
        {
            "name": "new",
            "type": "rlaif.steps.instructions.SelfInstruct",
            "from": "seeds",
            "model": "policy",
            "rounds": 2,
            "prompts_per_round": 2,
            "num_examples": 4,
            "num_new": 4,
            "seed": 3,
        },
    ]
    stats, rows = run(tmp_path, steps, backend)
    assert stats["new"]["records_in"] == 20 and stats["new"]["inputs_emitted"] == 20
    texts = [r["instruction"] for r in rows]
    assert texts == ["Propose a weekly meal plan for a vegetarian student on a tight budget.", *FRESH]
    assert [r["round"] for r in rows] == [0, 0, 0, 1, 1]
    assert len(texts) == len(set(texts)) and not any("diagram" in t or "thank-you" in t for t in texts)
    for row in rows:
        assert row["prompt"] == row["instruction"] and row["origin"] == "self_instruct"
        assert 0 <= row["similarity"] < 0.7 and row["round"] in (0, 1)
    # Round 2 shows generated tasks in context (2 machine examples once the pool has some).
    second_round = [p[0]["content"] for p in backend.calls[1][0]]
    assert all(sum(t in prompt for t in texts) >= 1 for prompt in second_round)
    examples = [re.findall(r"^\d+\. (.*)$", p, re.M) for p in second_round]
    assert all(len(e) == 4 for e in examples)


def test_self_instruct_sampling_is_deterministic(tmp_path):
    prompts = []
    for attempt in range(2):
        self_instruct_answer.calls = 0
        backend = ScriptedBackend(self_instruct_answer)
        steps = [
            {"name": "seeds", "type": "load", "path": str(SEEDS)},
            {
                "name": "new",
                "type": "rlaif.steps.instructions.SelfInstruct",
                "from": "seeds",
                "model": "policy",
                "rounds": 1,
                "prompts_per_round": 3,
                "num_examples": 5,
                "seed": 7,
            },
        ]
        run(tmp_path / str(attempt), steps, backend)
        prompts.append(backend.calls[0][0])
    assert prompts[0] == prompts[1] and len({p[0]["content"] for p in prompts[0]}) == 3


def test_self_instruct_drops_or_quarantines_seeds_when_nothing_novel(tmp_path):
    seeds = inline(
        [{"instruction": "Write a haiku about rain."}, {"instruction": "Explain gravity."}, {"instruction": "  "}]
    )
    step = {
        "name": "new",
        "type": "rlaif.steps.instructions.SelfInstruct",
        "from": "seeds",
        "model": "policy",
        "rounds": 1,
        "prompts_per_round": 1,
    }
    stats, rows = run(tmp_path / "a", [seeds, step], ScriptedBackend(lambda p, s: "1. Write a haiku about rain."))
    assert rows == [] and stats["new"]["dropped"] == {"empty instruction": 1, "no novel instruction": 2}
    stats, _ = run(tmp_path / "b", [seeds, step], ScriptedBackend(lambda p, s: RuntimeError("server down")))
    assert stats["new"]["quarantined"] == {"generation failed": 2}
    stats, rows = run(
        tmp_path / "c",
        [seeds, {**step, "keep_seeds": True}],
        ScriptedBackend(lambda p, s: "1. Write a haiku about rain."),
    )
    assert [r["origin"] for r in rows] == ["seed", "seed"] and stats["new"]["inputs_emitted"] == 2


# -- Evol-Instruct ---------------------------------------------------------------------------------------------------
def test_evolution_elimination_reasons():
    original = "Write a poem about autumn."
    assert evolution_problem(original, "", "stop", 0.9) == "empty evolution"
    assert evolution_problem(original, "Write a poem about autumn leaves and", "length", 0.9) == "truncated evolution"
    assert (
        evolution_problem(original, "#Rewritten Prompt#: Write a sonnet.", "stop", 0.9)
        == "copies the evolution prompt"
    )
    assert evolution_problem(original, "Sorry, I cannot help with that.", "stop", 0.9) == "refusal"
    assert evolution_problem(original, "It is what it is.", "stop", 0.9) == "only punctuation and stop words"
    assert evolution_problem(original, "write a poem about  autumn", "stop", 0.9) == "no new information"
    harder = "Write a sonnet about autumn that contrasts falling leaves with city life, in iambic pentameter."
    assert evolution_problem(original, harder, "stop", 0.9) is None


def evol_answer(prompt: str, params) -> str:
    given = prompt.rsplit("Prompt#:\n", 2)[1].split("\n\n#")[0]
    if "refuse" in given:
        return "I'm sorry, I can't do that."
    if "copy" in given:
        return "#Rewritten Prompt#: " + given
    return f"{given} Also justify every step with a concrete example from history and science."


def step_method(tmp_path: Path, instruction: str, round_index: int) -> str:
    pipeline = load_pipeline(tmp_path / "pipe.yaml")
    return pipeline.steps["evolved"].step.method(instruction, round_index)


def test_evol_instruct_keeps_history_and_eliminates_failures(tmp_path):
    seeds = inline(
        [
            {"instruction": "Explain photosynthesis.", "id": 1},
            {"instruction": "Please refuse this one.", "id": 2},
            {"instruction": "Please copy the markers.", "id": 3},
        ]
    )
    step = {
        "name": "evolved",
        "type": "rlaif.steps.evol.EvolInstruct",
        "from": "seeds",
        "model": "policy",
        "rounds": 2,
    }
    backend = ScriptedBackend(evol_answer)
    stats, rows = run(tmp_path, [seeds, step], backend)
    assert stats["evolved"]["dropped"] == {"refusal": 1, "copies the evolution prompt": 1}
    [row] = rows
    assert row["id"] == 1 and row["origin"] == "evol_instruct"
    assert row["original_instruction"] == "Explain photosynthesis."
    assert row["prompt"] == row["instruction"] == row["evolution_history"][-1]["text"]
    assert row["instruction"].startswith("Explain photosynthesis. Also justify")
    # Round 2 evolves the round-1 text, not the original: the appended sentence appears twice.
    assert [h["method"] for h in row["evolution_history"]] == [
        step_method(tmp_path, "Explain photosynthesis.", r) for r in (0, 1)
    ]
    assert row["evolution_failures"] == [] and row["instruction"].count("Also justify") == 2
    templates = {
        "Prompt Rewriter" if "Prompt Rewriter" in p[0]["content"] else "Prompt Creator"
        for call in backend.calls
        for p in call[0]
    }
    assert templates <= {"Prompt Rewriter", "Prompt Creator"} and all(c[1].n == 1 for c in backend.calls)


def test_evol_method_choice_is_deterministic_and_uses_both_kinds(tmp_path):
    pipeline = load_pipeline(
        pipeline_file(
            tmp_path,
            [
                inline([{"instruction": "x"}]),
                {"name": "e", "type": "rlaif.steps.evol.EvolInstruct", "from": "seeds", "model": "policy"},
            ],
        )
    )
    step = pipeline.steps["e"].step
    chosen = [step.method(f"instruction {i}", 0) for i in range(40)]
    assert chosen == [step.method(f"instruction {i}", 0) for i in range(40)]
    assert "breadth" in chosen and {"constraints", "deepen", "concretize", "reasoning"} & set(chosen)
    with pytest.raises(ConfigError, match="unknown evolution method"):
        load_pipeline(
            pipeline_file(
                tmp_path,
                [
                    inline([{"instruction": "x"}]),
                    {
                        "name": "e",
                        "type": "rlaif.steps.evol.EvolInstruct",
                        "from": "seeds",
                        "model": "policy",
                        "methods": ["deeper"],
                    },
                ],
            )
        )


# -- Magpie ----------------------------------------------------------------------------------------------------------
@pytest.mark.model
def test_pre_query_of_the_builtin_template(builtin_model_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path)
    assert pre_query(tokenizer) == (SMOL_SYSTEM + "<|im_start|>user\n", "<|im_end|>")
    assert pre_query(tokenizer, "You are a math tutor.") == (
        "<|im_start|>system\nYou are a math tutor.<|im_end|>\n<|im_start|>user\n",
        "<|im_end|>",
    )


class BosTokenizer:
    """A Llama-3-like tokenizer: the template writes BOS and tokenizing a string adds it again."""

    bos_token, bos_token_id = "<|begin_of_text|>", 1

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "<|begin_of_text|>" + "".join(
            f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in messages
        )

    def __call__(self, text):
        return type("Encoding", (), {"input_ids": [1, 42]})()


def test_pre_query_drops_a_bos_the_tokenizer_adds_itself():
    assert pre_query(BosTokenizer()) == ("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>")


def magpie_answer(prompt: str, params) -> GenerationResult | list[str]:
    if "quiet" in prompt:
        return ["", "   "]
    if "long" in prompt:
        return GenerationResult([Completion("What is the tallest", 64, "length")])
    return ["How do I bake bread?", "  How do I bake bread? ", "Name three moons of Jupiter.<|im_end|>junk"]


def test_magpie_samples_from_the_pre_query_and_cleans(tmp_path):
    triggers = inline(
        [{"topic": 1, "system": None}, {"topic": 2, "system": "Be quiet."}, {"topic": 3, "system": "Be long."}]
    )
    step = {
        "name": "magpie",
        "type": "rlaif.steps.generate.Magpie",
        "from": "seeds",
        "model": "policy",
        "n": 3,
        "system_prompt_column": "system",
    }
    backend = ScriptedBackend(magpie_answer)
    stats, rows = run(tmp_path, [triggers, step], backend)
    [(prompts, params)] = backend.calls
    assert prompts[0] == SMOL_SYSTEM + "<|im_start|>user\n" and isinstance(prompts[0], str)
    assert prompts[1] == "<|im_start|>system\nBe quiet.<|im_end|>\n<|im_start|>user\n"
    assert params.n == 3 and "<|im_end|>" in params.stop
    assert [r["instruction"] for r in rows] == ["How do I bake bread?", "Name three moons of Jupiter."]
    assert all(r["topic"] == 1 and r["origin"] == "magpie" for r in rows)
    assert rows[0]["instruction_model"] == "builtin:smollm2-135m-instruct"
    assert rows[0]["prompt"] == [{"role": "user", "content": "How do I bake bread?"}]
    assert stats["magpie"]["dropped"] == {"empty instruction": 1, "truncated instruction": 1}
    assert stats["magpie"]["inputs_emitted"] == 1 and stats["magpie"]["records_out"] == 2


def test_magpie_triggers_with_one_pre_query_share_one_request(tmp_path):
    step = {
        "name": "magpie",
        "type": "rlaif.steps.generate.Magpie",
        "from": "seeds",
        "model": "policy",
        "n": 2,
        "system_prompt": "You write math questions.",
    }
    backend = ScriptedBackend(lambda p, s: [f"Question {i}?" for i in range(s.n)])
    _, rows = run(tmp_path, [inline([{"id": i} for i in range(3)]), step], backend)
    [(prompts, params)] = backend.calls
    assert len(prompts) == 1 and params.n == 6
    assert [(r["id"], r["instruction"]) for r in rows] == [(i // 2, f"Question {i}?") for i in range(6)]
    assert rows[0]["prompt"] == [
        {"role": "system", "content": "You write math questions."},
        {"role": "user", "content": "Question 0?"},
    ]


def test_magpie_splits_large_groups_into_seeded_waves(tmp_path):
    step = {"name": "magpie", "type": "rlaif.steps.generate.Magpie", "from": "seeds", "model": "policy", "n": 20}
    backend = ScriptedBackend(lambda p, s: [f"Question {s.seed} {i}?" for i in range(s.n)])
    stats, rows = run(tmp_path, [inline([{"id": i} for i in range(4)]), step], backend)
    assert [(len(prompts), params.n) for prompts, params in backend.calls] == [(1, 60), (1, 20)]
    assert backend.calls[1][1].seed == backend.calls[0][1].seed + 64
    assert len(rows) == 80 and len({r["instruction"] for r in rows}) == 80 and stats["magpie"]["inputs_emitted"] == 4


def test_magpie_without_system_prompt_gives_string_prompts(tmp_path):
    step = {"name": "magpie", "type": "rlaif.steps.generate.Magpie", "from": "seeds", "model": "policy"}
    _, rows = run(tmp_path, [inline([{"id": 0}]), step], ScriptedBackend(lambda p, s: "Why is the sea salty?"))
    assert rows == [
        {
            "id": 0,
            "instruction": "Why is the sea salty?",
            "prompt": "Why is the sea salty?",
            "origin": "magpie",
            "instruction_model": "builtin:smollm2-135m-instruct",
        }
    ]


# -- the real engine -------------------------------------------------------------------------------------------------
@pytest.mark.engine
def test_instruction_methods_on_the_real_engine(vllm_backend, tmp_path):
    seeds = inline(
        [
            {"instruction": "Give three tips for writing a clear bug report."},
            {"instruction": "Explain what a hash table is to a new programmer."},
            {"instruction": "Write a two-sentence story about a lighthouse keeper."},
        ]
    )
    steps = [
        seeds,
        {
            "name": "self_instruct",
            "type": "rlaif.steps.instructions.SelfInstruct",
            "from": "seeds",
            "model": "policy",
            "rounds": 1,
            "prompts_per_round": 2,
            "num_examples": 3,
            "num_new": 3,
            "max_tokens": 64,
        },
        {
            "name": "evol",
            "type": "rlaif.steps.evol.EvolInstruct",
            "from": "seeds",
            "model": "policy",
            "max_tokens": 64,
        },
        {
            "name": "magpie",
            "type": "rlaif.steps.generate.Magpie",
            "from": "seeds",
            "model": "policy",
            "n": 2,
            "max_tokens": 48,
            "drop_truncated": False,
        },
    ]
    summary = run_pipeline(
        load_pipeline(pipeline_file(tmp_path, steps)), run_dir=tmp_path / "run", backends={"policy": vllm_backend}
    )
    stats = summary.stats
    for name in ("self_instruct", "evol", "magpie"):
        assert stats[name]["records_in"] == 3 and stats[name]["tokens_out"] > 0
    rows = {
        name: [r for f in sorted((d / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
        for name, d in summary.datasets.items()
    }
    assert rows["magpie"], "the pre-query alone should make the model write some user turn"
    for row in rows["magpie"]:
        assert row["instruction"].strip() and row["prompt"] == row["instruction"] and row["origin"] == "magpie"
        assert "<|im_" not in row["instruction"]
    # every seed evolved or was eliminated with a reason; at least one evolved (the loop below checks something)
    assert len(rows["evol"]) + sum(stats["evol"]["dropped"].values()) == 3 and not stats["evol"]["quarantined"]
    assert rows["evol"], f"no seed evolved: {stats['evol']['dropped']}"
    for row in rows["evol"]:
        assert row["instruction"] != row["original_instruction"] and row["evolution_history"]
        assert len(row["evolution_history"]) + len(row["evolution_failures"]) == 1
    assert set(stats["evol"]["dropped"]) <= {
        "empty evolution",
        "truncated evolution",
        "copies the evolution prompt",
        "refusal",
        "only punctuation and stop words",
        "no new information",
    }
    if rows["self_instruct"]:
        assert all(r["origin"] == "self_instruct" and r["similarity"] < 0.7 for r in rows["self_instruct"])
    else:
        assert stats["self_instruct"]["dropped"] == {"no novel instruction": 3}
