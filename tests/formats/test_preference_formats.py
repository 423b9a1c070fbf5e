"""Human preference formats -> TRL rows: each converter on hand-written records in the real published formats
(tests/fixtures/), the `human_preferences` source in real pipeline runs, and the weighted `mix` join."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rlaif.config import ConfigError
from rlaif.formats.human import (
    CONVERTERS,
    PREFERENCE_COLUMNS,
    PROVENANCE,
    FormatError,
    convert,
    detect_format,
    group_by_prompt,
    helpsteer2_pairs,
    hh_rlhf,
    shp,
    ultrafeedback,
)
from rlaif.pipeline.run import run_pipeline
from rlaif.pipeline.spec import load_pipeline
from rlaif.steps.human import mix_quotas

FIXTURES = Path(__file__).parents[1] / "fixtures"
HUMAN = "rlaif.steps.human.HumanPreferences"
MIX = "rlaif.steps.human.Mix"


def fixture(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / f"{name}.jsonl").open()]


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


def reason_of(name: str, record: dict, **options) -> str:
    with pytest.raises(FormatError) as info:
        convert(name, record, **options)
    return info.value.reason


# -- HH-RLHF ----------------------------------------------------------------------------------------------------
def test_hh_rlhf_single_and_multi_turn_exact():
    first, second = fixture("hh_rlhf")[:2]
    assert hh_rlhf(first) == [
        {
            "prompt": [user("What are some good ways to keep cut flowers fresh longer?")],
            "chosen": [
                bot(
                    "Trim the stems at an angle every couple of days, change the water often, and keep the vase "
                    "away from direct sunlight and ripening fruit, which gives off ethylene."
                )
            ],
            "rejected": [bot("Put them in the fridge.")],
        }
    ]
    assert hh_rlhf(second) == [
        {
            "prompt": [
                user("How do I make a basic vinaigrette?"),
                bot(
                    "Whisk three parts olive oil with one part vinegar, then season with salt, pepper and a little "
                    "mustard to help it emulsify."
                ),
                user("Can I use lemon juice instead of vinegar?"),
            ],
            "chosen": [
                bot("Yes. Lemon juice works well; use the same ratio and taste it, since lemons vary in acidity.")
            ],
            "rejected": [bot("No, a vinaigrette has to have vinegar in it.")],
        }
    ]


HH_Q = "\n\nHuman: Is a tomato a fruit?"


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (
            {"chosen": "Human: Hi\n\nAssistant: Hello", "rejected": "Human: Hi\n\nAssistant: Bye"},
            "not an HH transcript",
        ),
        (
            {"chosen": HH_Q + "\n\nAssistant: Yes.\n\nHuman: Sure?", "rejected": HH_Q + "\n\nAssistant: No."},
            "no final Assistant turn",
        ),
        (
            {
                "chosen": HH_Q + "\n\nAssistant: Yes.",
                "rejected": "\n\nHuman: Is a cucumber a fruit?\n\nAssistant: No.",
            },
            "prompts differ",
        ),
        (
            {"chosen": HH_Q + "\n\nAssistant: Yes, botanically.", "rejected": HH_Q + "\n\nAssistant:"},
            "empty final turn",
        ),
        (
            {"chosen": HH_Q + HH_Q + "\n\nAssistant: Yes.", "rejected": HH_Q + HH_Q + "\n\nAssistant: No."},
            "turns do not alternate",
        ),
        (
            {"chosen": HH_Q + "\n\nAssistant: Yes.", "rejected": HH_Q + "\n\nAssistant: Yes. "},
            "chosen equals rejected",
        ),
        ({"chosen": HH_Q + "\n\nAssistant: Yes."}, "missing field"),
    ],
)
def test_hh_rlhf_malformed_kinds(record, reason):
    assert reason_of("hh_rlhf", record) == reason


def test_hh_rlhf_fixture_malformed_records_each_name_their_reason():
    reasons = [reason_of("hh_rlhf", r) for r in fixture("hh_rlhf")[5:9]]
    assert reasons == ["not an HH transcript", "no final Assistant turn", "prompts differ", "empty final turn"]


# -- UltraFeedback ----------------------------------------------------------------------------------------------
def test_ultrafeedback_best_vs_worst_exact_with_provenance():
    record = fixture("ultrafeedback")[0]
    assert ultrafeedback(record, strategy="best_vs_worst") == [
        {
            "prompt": [user("Explain the difference between a list and a tuple in Python.")],
            "chosen": [bot(record["completions"][0]["response"])],
            "rejected": [bot("They are the same thing in Python 3.")],
            "chosen_model": "gpt-4",
            "rejected_model": "falcon-40b-instruct",
            "chosen_score": 5.0,
            "rejected_score": 1.25,
        }
    ]


def test_ultrafeedback_best_vs_random_is_seeded_by_the_instruction():
    record = fixture("ultrafeedback")[0]
    picks = {ultrafeedback(record)[0]["rejected_model"] for _ in range(5)}
    assert len(picks) == 1 and picks <= {"llama-2-13b-chat", "alpaca-7b", "falcon-40b-instruct"}
    # over many instructions, the random pick is not always the worst one
    rejected = set()
    for i in range(30):
        rejected.add(ultrafeedback({**record, "instruction": f"{record['instruction']} ({i})"})[0]["rejected_model"])
    assert rejected == {"llama-2-13b-chat", "alpaca-7b", "falcon-40b-instruct"}


def test_ultrafeedback_not_applicable_ratings_and_overall_score():
    haiku = fixture("ultrafeedback")[3]
    [row] = ultrafeedback(haiku, strategy="best_vs_worst")
    assert (row["chosen_model"], row["chosen_score"]) == ("gpt-4", 5.0)  # "N/A" honesty left out of the mean
    [row] = ultrafeedback(haiku, strategy="best_vs_worst", score="overall")
    assert (row["chosen_model"], row["rejected_model"], row["rejected_score"]) == ("gpt-4", "starchat", 3.0)


def test_ultrafeedback_ties_and_too_few_completions():
    tie = fixture("ultrafeedback")[2]
    assert reason_of("ultrafeedback", tie) == "all completions tie"
    [row] = convert("ultrafeedback", tie, score="overall")  # 9.0, 9.0, 8.5, 8.5: a 9.0 is never rejected
    assert row["chosen_score"] == 9.0 and row["rejected_score"] == 8.5
    one = {**tie, "completions": tie["completions"][:1]}
    assert reason_of("ultrafeedback", one) == "fewer than 2 rated completions"
    odd = {**tie, "completions": [{**c, "annotations": [1, 2]} for c in tie["completions"]]}
    assert reason_of("ultrafeedback", odd) == "malformed record"  # an unforeseen shape still gets a reason
    with pytest.raises(ValueError, match="strategy"):
        ultrafeedback(tie, strategy="best_of_n")


# -- UltraFeedback binarized ------------------------------------------------------------------------------------
def test_ultrafeedback_binarized_exact_and_malformed():
    records = fixture("ultrafeedback_binarized")
    assert convert("ultrafeedback_binarized", records[3]) == [
        {
            "prompt": [user("Is 91 a prime number?")],
            "chosen": [bot("No. 91 = 7 × 13.")],
            "rejected": [bot("Yes, 91 is prime.")],
            "prompt_id": records[3]["prompt_id"],
            "chosen_score": 10.0,
            "rejected_score": 1.0,
            "source": "ultrafeedback_binarized",
        }
    ]
    assert reason_of("ultrafeedback_binarized", records[4]) == "prompts differ"
    assert reason_of("ultrafeedback_binarized", records[5]) == "no final assistant turn"
    assert reason_of("ultrafeedback_binarized", {**records[0], "prompt": "Another question?"}) == (
        "prompt does not match conversation"
    )


# -- HelpSteer2 -------------------------------------------------------------------------------------------------
def test_helpsteer2_multi_turn_pair_exact():
    rows = fixture("helpsteer2")[2:4]
    assert helpsteer2_pairs(rows) == [
        {
            "prompt": [
                user("I'm planning a trip to Japan in April."),
                bot("April is cherry blossom season, so book hotels early."),
                user("Which city should I visit first?"),
            ],
            "chosen": [bot(rows[0]["response"])],
            "rejected": [bot(rows[1]["response"])],
            # 0.65*4 + 0.8*4 + 0.45*4 + 0.55*2 - 0.4*2 and 0.65*2 + 0.8*3 + 0.45*3 + 0.55*1 - 0.4*4
            "chosen_score": 7.9,
            "rejected_score": 4.0,
        }
    ]


def test_helpsteer2_weights_ties_and_grouping():
    rows = fixture("helpsteer2")
    [verbose_wins] = helpsteer2_pairs(rows[2:4], weights={"verbosity": 1.0})
    assert verbose_wins["chosen"] == [bot(rows[3]["response"])]
    with pytest.raises(FormatError, match="responses tie"):
        helpsteer2_pairs(rows[4:6])
    with pytest.raises(FormatError, match="prompt has one response"):
        helpsteer2_pairs(rows[8:9])
    with pytest.raises(FormatError, match="rows of different prompts"):
        helpsteer2_pairs(rows[1:3])
    with pytest.raises(ValueError, match="unknown HelpSteer2 attribute"):
        helpsteer2_pairs(rows[:2], weights={"harmlessness": 1.0})
    groups = list(group_by_prompt([rows[0], "error marker", rows[1], rows[2]]))
    assert groups[0] == "error marker" and [len(g["rows"]) for g in groups[1:]] == [2, 1]


# -- SHP --------------------------------------------------------------------------------------------------------
def test_shp_labels_ratio_and_filter():
    records = fixture("shp")
    assert shp(records[1]) == [
        {
            "prompt": [user("Is it safe to refreeze chicken that was thawed in the fridge?")],
            "chosen": [bot(records[1]["human_ref_B"])],
            "rejected": [bot("Yeah whatever, it's fine.")],  # labels = 0: B
            "post_id": "v1m2nb",
            "domain": "askculinary_train",
            "score_ratio": 97 / 9,
            "chosen_score": 97.0,
            "rejected_score": 9.0,
        }
    ]
    assert shp(records[3])[0]["score_ratio"] == 1.25
    assert reason_of("shp", records[3], min_score_ratio=2) == "score ratio below minimum"
    assert reason_of("shp", records[4]) == "missing field"
    assert reason_of("shp", {**records[0], "labels": 3}) == "invalid label"


# -- generic ----------------------------------------------------------------------------------------------------
def test_generic_forms_normalize_to_conversational():
    standard, conversational, implicit, mixed, no_prompt, differ = fixture("generic")
    assert convert("generic", standard) == [
        {
            "prompt": [user("What is the chemical symbol for gold?")],
            "chosen": [bot("Au, from the Latin aurum.")],
            "rejected": [bot("Ag.")],
            "source": "generic",
        }
    ]
    assert convert("generic", conversational)[0]["prompt"][0]["role"] == "system"
    [row] = convert("generic", implicit)
    assert len(row["prompt"]) == 3 and row["rejected"] == [bot("Monopoly.")]
    assert convert("generic", mixed)[0]["chosen"] == [bot("The bat.")]
    assert reason_of("generic", no_prompt) == "missing prompt"
    assert reason_of("generic", differ) == "prompts differ"
    narrator = {"prompt": [{"role": "narrator", "content": "x"}], "chosen": "a", "rejected": "b"}
    assert reason_of("generic", narrator) == "invalid messages"
    assert reason_of("generic", {"prompt": [bot("Hi")], "chosen": "a", "rejected": "b"}) == (
        "prompt does not end with a user turn"
    )


# -- detection, registry, convert -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CONVERTERS))
def test_detect_format_names_each_fixture(name):
    assert detect_format(fixture(name)[0]) == name
    assert {tuple(row) for r in fixture(name) for row in _rows(name, r)} <= {
        (*PREFERENCE_COLUMNS[:3], *PROVENANCE[name], "source")
    }


def _rows(name: str, record: dict) -> list[dict]:
    try:
        return convert(name, {"prompt": record["prompt"], "rows": [record]} if name == "helpsteer2" else record)
    except FormatError:
        return []


def test_detect_format_from_column_names_only():
    assert detect_format(["chosen", "rejected"]) == "hh_rlhf"
    assert detect_format({"chosen": [user("q"), bot("a")], "rejected": [user("q"), bot("b")]}) == "generic"
    assert detect_format(["prompt", "chosen", "rejected", "id"]) == "generic"
    assert detect_format(["text", "label"]) is None


def test_convert_rejects_unknown_formats_and_options():
    with pytest.raises(ValueError, match="unknown preference format 'hh'"):
        convert("hh", {})
    with pytest.raises(ValueError, match=r"takes no option\(s\) \['strategy'\]"):
        convert("shp", fixture("shp")[0], strategy="best_vs_worst")
    with pytest.raises(FormatError, match="not a record"):
        convert("generic", ["a", "b"])  # type: ignore[arg-type]


# -- the human_preferences source in pipelines ------------------------------------------------------------------
def write_yaml(tmp_path: Path, steps: str) -> Path:
    path = tmp_path / "pipe.yaml"
    path.write_text(f"name: human\nsteps:\n{steps}")
    return path


def saved_rows(dataset_dir: Path) -> list[dict]:
    return [row for f in sorted((dataset_dir / "data").glob("*.parquet")) for row in pq.read_table(f).to_pylist()]


@pytest.fixture(scope="module")
def chat_tokenizer():
    """A tiny word-level tokenizer with a chat template, built in-process (no Hub): enough for TRL's templating."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    inner = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    inner.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=inner, unk_token="[UNK]")
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    return tokenizer


RUNS = {  # format -> (options, rows out, quarantined reasons)
    "hh_rlhf": (
        "",
        6,
        {"not an HH transcript": 1, "no final Assistant turn": 1, "prompts differ": 1, "empty final turn": 1},
    ),
    "ultrafeedback": (", strategy: best_vs_worst", 4, {"all completions tie": 1}),
    "ultrafeedback_binarized": ("", 4, {"prompts differ": 1, "no final assistant turn": 1}),
    "helpsteer2": ("", 3, {"responses tie": 2, "prompt has one response": 1}),  # 9 rows: 3 pairs of 2 rows
    "shp": (", min_score_ratio: 2", 3, {"score ratio below minimum": 1, "missing field": 1}),
    "generic": ("", 4, {"missing prompt": 1, "prompts differ": 1}),
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_human_preferences_pipeline_run(tmp_path, name, chat_tokenizer):
    from datasets import load_dataset
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    options, out, quarantined = RUNS[name]
    path = write_yaml(tmp_path, f"  - {{name: human, type: {HUMAN}, path: {FIXTURES / name}.jsonl{options}}}\n")
    pipeline = load_pipeline(path)
    columns = {*PREFERENCE_COLUMNS, *PROVENANCE[name]}
    assert pipeline.columns["human"] == columns  # `auto` named the format at validation, from the first record
    summary = run_pipeline(pipeline, run_dir=tmp_path / "run")
    stats = summary.stats["human"]
    raw = fixture(name)
    assert stats["records_in"] == len(raw) == stats["inputs_emitted"] + sum(stats["quarantined"].values())
    assert stats["records_out"] == out and stats["quarantined"] == quarantined and stats["dropped"] == {}

    rows = saved_rows(summary.datasets["human"])
    assert len(rows) == out and all(set(r) == columns and r["source"] == name for r in rows)
    for row in rows:
        assert is_conversational(row)
        text = maybe_apply_chat_template(row, chat_tokenizer)
        assert text["prompt"].endswith("<|assistant|>\n") and text["chosen"] != text["rejected"]
    # as the training half reads it: the saved folder through datasets, templated by TRL
    dataset = load_dataset(str(summary.datasets["human"]), split="train", cache_dir=str(tmp_path / "hf"))
    assert dataset.map(maybe_apply_chat_template, fn_kwargs={"processing_class": chat_tokenizer}).num_rows == out

    bad = [json.loads(line) for line in (tmp_path / "run" / "quarantine" / "human.jsonl").open()]
    assert sorted(b["reason"] for b in bad) == sorted(r for r, n in quarantined.items() for _ in range(n))
    assert all(json.loads(b["raw_output"]) in raw and b["detail"] for b in bad)  # the raw record, kept whole


def test_human_preferences_streams_a_datasets_folder(tmp_path):
    # `dataset:` goes through datasets' streaming reader (a local folder here: the Hub is not reachable in tests)
    folder = tmp_path / "hs2"
    folder.mkdir()
    (folder / "train.jsonl").write_text((FIXTURES / "helpsteer2.jsonl").read_text())
    path = write_yaml(tmp_path, f"  - {{name: human, type: {HUMAN}, dataset: {folder}, format: helpsteer2}}\n")
    pipeline = load_pipeline(path)
    assert pipeline.columns["human"] == {*PREFERENCE_COLUMNS, "chosen_score", "rejected_score"}
    stats = run_pipeline(pipeline, run_dir=tmp_path / "run").stats["human"]
    assert (stats["records_in"], stats["records_out"]) == (9, 3)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (f"{{name: h, type: {HUMAN}, path: hh.jsonl, format: hh}}", "format must be auto or one of"),
        (
            f"{{name: h, type: {HUMAN}, path: hh.jsonl, format: hh_rlhf, min_score_ratio: 2}}",
            r"format 'hh_rlhf' does not use \['min_score_ratio'\]",
        ),
        (f"{{name: h, type: {HUMAN}, path: hh.jsonl, dataset: Anthropic/hh-rlhf}}", "exactly one of path"),
        (
            f"{{name: h, type: {HUMAN}, path: hh.jsonl, strategy: best_vs_worst}}",
            r"format 'hh_rlhf' does not use \['strategy'\]",
        ),  # auto-detected, then the option is checked
        (f"{{name: h, type: {HUMAN}, path: other.jsonl}}", "cannot tell the preference format"),
        (f"{{name: h, type: {HUMAN}, path: hh.jsonl, format: helpsteer2, weights: {{fun: 1}}}}", "unknown attribute"),
    ],
)
def test_human_preferences_bad_config_fails_validation(tmp_path, step, message):
    (tmp_path / "hh.jsonl").write_text((FIXTURES / "hh_rlhf.jsonl").read_text())
    (tmp_path / "other.jsonl").write_text('{"text": "hello", "label": 1}\n')
    with pytest.raises(ConfigError, match=message):
        load_pipeline(write_yaml(tmp_path, f"  - {step}\n"))


# -- mix --------------------------------------------------------------------------------------------------------
def write_sources(tmp_path: Path, ai: int = 600, human: int = 400, other: int = 0) -> None:
    with (tmp_path / "ai.jsonl").open("w") as handle:
        for i in range(ai + other):
            handle.write(json.dumps({"id": f"ai-{i}", "source": "ai" if i < ai else "other"}) + "\n")
    with (tmp_path / "human.jsonl").open("w") as handle:
        for i in range(human):
            handle.write(json.dumps({"id": f"h-{i}", "source": "hh_rlhf"}) + "\n")


def mix_pipeline(tmp_path: Path, mix: str) -> Path:
    return write_yaml(
        tmp_path,
        "  - {name: ai, type: load, path: ai.jsonl, batch_size: 64}\n"
        "  - {name: human, type: load, path: human.jsonl, batch_size: 64}\n"
        f"  - {{name: mix, type: {MIX}, from: [ai, human], {mix}}}\n",
    )


def mixed_ids(tmp_path: Path, mix: str, run: str) -> tuple[list[str], dict]:
    summary = run_pipeline(load_pipeline(mix_pipeline(tmp_path, mix)), run_dir=tmp_path / run)
    return [r["id"] for r in saved_rows(summary.datasets["mix"])], summary.stats["mix"]


def test_mix_total_respects_weights_and_is_deterministic(tmp_path):
    write_sources(tmp_path)
    ids, stats = mixed_ids(tmp_path, "weights: {ai: 0.7, hh_rlhf: 0.3}, total: 500", "one")
    ai_share = sum(i.startswith("ai-") for i in ids) / len(ids)
    assert len(ids) == 500 and abs(ai_share - 0.7) < 0.01
    assert stats["records_in"] == 1000 and stats["dropped"] == {"not sampled (mix)": 500}
    again, _ = mixed_ids(tmp_path, "weights: {ai: 0.7, hh_rlhf: 0.3}, total: 500", "two")
    assert again == ids  # same seed, fresh run directory: the same records
    reseeded, _ = mixed_ids(tmp_path, "weights: {ai: 0.7, hh_rlhf: 0.3}, total: 500, seed: 1", "three")
    assert len(reseeded) == 500 and set(reseeded) != set(ids)
    # selection is spread over each source, not its first records
    assert max(int(i.split("-")[1]) for i in ids if i.startswith("ai-")) > 500


def test_mix_without_total_keeps_the_scarcest_source_whole(tmp_path):
    write_sources(tmp_path, other=50)
    ids, stats = mixed_ids(tmp_path, "weights: {ai: 0.7, hh_rlhf: 0.3}", "run")
    ai = sum(i.startswith("ai-") for i in ids)
    assert ai == 600 and len(ids) - ai == 257  # 600 / 0.7 = 857 records in all
    assert stats["dropped"] == {"not sampled (mix)": 400 - 257, "source not in mix weights": 50}


def test_mix_quotas_round_to_the_total_and_cap_at_what_exists():
    assert mix_quotas({"a": 100, "b": 100, "c": 100}, {"a": 1, "b": 1, "c": 1}, 100) == {"a": 34, "b": 33, "c": 33}
    assert mix_quotas({"a": 10, "b": 1000}, {"a": 0.5, "b": 0.5}, 100) == {"a": 10, "b": 50}
    assert mix_quotas({"a": 10}, {"a": 0.5, "b": 0.5}, None) == {"a": 10}  # b has no records: a alone
    assert mix_quotas({"a": 10, "b": 5}, {"a": 1, "b": 0}, None) == {"a": 10}


def test_mix_of_ai_pairs_and_human_preferences(tmp_path):
    with (tmp_path / "ai.jsonl").open("w") as handle:
        for i in range(12):
            handle.write(
                json.dumps(
                    {
                        "prompt": [user(f"q{i}")],
                        "chosen": [bot(f"good {i}")],
                        "rejected": [bot(f"bad {i}")],
                        "source": "ai",
                    }
                )
                + "\n"
            )
    path = write_yaml(
        tmp_path,
        "  - {name: ai, type: load, path: ai.jsonl}\n"
        f"  - {{name: human, type: {HUMAN}, path: {FIXTURES}/hh_rlhf.jsonl}}\n"
        f"  - {{name: mix, type: {MIX}, from: [ai, human], weights: {{ai: 1, hh_rlhf: 1}}}}\n",
    )
    pipeline = load_pipeline(path)
    assert pipeline.columns["mix"] == set(PREFERENCE_COLUMNS)  # what both sides share
    rows = saved_rows(run_pipeline(pipeline, run_dir=tmp_path / "run").datasets["mix"])
    assert [r["source"] for r in rows].count("ai") == 6 and [r["source"] for r in rows].count("hh_rlhf") == 6


def test_mix_needs_a_source_column(tmp_path):
    (tmp_path / "ai.jsonl").write_text('{"id": 1}\n')
    path = write_yaml(
        tmp_path,
        "  - {name: ai, type: load, path: ai.jsonl}\n"
        f"  - {{name: mix, type: {MIX}, from: [ai], weights: {{ai: 1}}}}\n",
    )
    with pytest.raises(ConfigError, match=r"needs column\(s\) \['source'\]"):
        load_pipeline(path)
