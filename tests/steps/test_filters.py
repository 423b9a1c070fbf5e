"""Filters, dedup and decontamination: each step through a real pipeline run, plus unit tests of their logic."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlaif.config import ConfigError
from rlaif.pipeline.run import run_pipeline
from rlaif.pipeline.spec import load_pipeline
from rlaif.steps.base import StepContext
from rlaif.steps.decontaminate import Decontaminate
from rlaif.steps.dedup import Dedup, optimal_bands
from rlaif.steps.expression import ExpressionError, parse
from rlaif.steps.filters import JudgeFilter, Length
from rlaif.steps.ngrams import (
    WordHasher,
    ngram_hashes,
    normalize_text,
    sequence_hashes,
    text_word_hashes,
    tokens,
)

CTX = StepContext("test")  # the filters use no model: a context without engines

M = "rlaif.steps.filters"
D = "rlaif.steps.dedup"
DC = "rlaif.steps.decontaminate"
E = "rlaif.steps.expression"


def run(tmp_path: Path, records: list[dict], step: str, files: dict[str, str] | None = None):
    """Write records as jsonl and a two-step pipeline (load -> the step under test), run it, return (stats, rows)."""
    with (tmp_path / "data.jsonl").open("w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in records)
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(text)
    path = tmp_path / "pipe.yaml"
    path.write_text(f"name: t\nsteps:\n  - {{name: src, type: load, path: data.jsonl}}\n  - {step}\n")
    summary = run_pipeline(load_pipeline(path), run_dir=tmp_path / "run")
    shards = sorted((summary.datasets["f"] / "data").glob("*.parquet"))
    return summary.stats["f"], [row for s in shards for row in pq.read_table(s).to_pylist()]


def problems(tmp_path: Path, step: str, records: list[dict] | None = None) -> str:
    records = records or [{"text": "x", "chosen": "a", "rejected": "b"}]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    path = tmp_path / "pipe.yaml"
    path.write_text(f"name: t\nsteps:\n  - {{name: src, type: load, path: data.jsonl}}\n  - {step}\n")
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    return str(info.value)


def pref(chosen: str, rejected: str, **extra) -> dict:
    return {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        **extra,
    }


# -- expression language ---------------------------------------------------------------------------------------
def test_expression_precedence_parentheses_and_chains():
    record = {"a": True, "b": False, "c": False, "x": 3}
    assert parse("a or b and c")(record) is True  # and binds tighter: a or (b and c)
    assert parse("(a or b) and c")(record) is False
    assert parse("not b and a")(record) is True  # not binds tighter than and
    assert parse("not x == 4")(record) is True  # == binds tighter than not: not (x == 4), not (not x) == 4
    assert parse("0 < x < 5")(record) and not parse("0 < x < 2")(record)
    assert parse("x == 3.0 and x != -3 and x >= 3 and x <= 3 and x > 2.5e0")(record)


def test_expression_in_len_strings_and_conversations():
    record = {"model": "gpt-x", "tags": ["a", "b"], "score": 4, "chosen": [{"role": "assistant", "content": "Sure"}]}
    assert parse("model in ['gpt-x', 'llama']")(record) and parse("'c' not in tags")(record)
    assert parse("'pt-' in model and len(tags) == 2 and len('abc') == 3")(record)
    # a conversation column reads as its last message: len is the response length, `in` searches its text
    assert parse("len(chosen) == 4 and 'ur' in chosen")(record)
    assert parse(r"""'it\'s' == "it's" and "say \"hi\"" != 'say hi'""")(record)
    assert parse("score >= 4 and not (model == 'x')")(record)
    assert parse("len(chosen) > 10 and score >= 4 or not (model == 'x')").columns == {"chosen", "score", "model"}


@pytest.mark.parametrize(
    "text, position, message",
    [
        ("__import__('os').system('x')", 1, "only len(...) may be called"),
        ("a.b", 2, "attribute access"),
        ("len(x) > 1 and f(x)", 16, "only len(...) may be called, not f(...)"),
        ("lambda: 1", 1, "keyword 'lambda' is not allowed"),
        ("(lambda x: x)(1)", 2, "keyword 'lambda'"),
        ("x[0] == 1", 2, "subscripts are not supported"),
        ("score = 4", 7, "use '=='"),
        ("(a or b", 8, "expected ')'"),
        ("a ==", 5, "expected a value"),
        ("x + 1 > 2", 3, "arithmetic"),
        ("'open", 1, "unterminated string"),
        ("", 1, "empty"),
    ],
)
def test_expression_rejects_everything_outside_the_grammar(text, position, message):
    with pytest.raises(ExpressionError, match=rf"syntax error at position {position}: .*{re.escape(message)}"):
        parse(text)


def test_expression_runtime_errors_are_per_record():
    predicate = parse("score < 3")
    with pytest.raises(TypeError):
        predicate({"score": "high"})
    with pytest.raises(ExpressionError, match="no column 'score'"):
        predicate({})


def test_expression_step_keeps_drops_and_quarantines(tmp_path):
    records = [
        pref("a long enough answer", "x", score=5, model="m"),  # kept by the left side of `or`
        pref("short", "x", score=5, model="m"),  # kept by `not (model == 'x')`
        pref("short", "x", score=5, model="x"),  # dropped
        pref("a long enough answer", "x", score=None, model="m"),  # None >= 4 raises: quarantined, not the batch
    ]
    where = "len(chosen) > 10 and score >= 4 or not (model == 'x')"
    stats, rows = run(tmp_path, records, f'{{name: f, type: {E}.Expression, from: src, where: "{where}"}}')
    assert stats["dropped"] == {"expression false": 1}
    assert stats["quarantined"] == {"expression error": 1}
    assert [(r["chosen"][0]["content"], r["model"]) for r in rows] == [("a long enough answer", "m"), ("short", "m")]
    quarantined = [json.loads(line) for line in (tmp_path / "run" / "quarantine" / "f.jsonl").open()]
    assert "TypeError" in quarantined[0]["detail"] and json.loads(quarantined[0]["record"])["score"] is None


def test_expression_errors_are_reported_at_validation_with_file_line_and_position(tmp_path):
    where = "len(text) > 1 and os.system('x')"
    text = problems(tmp_path, f'{{name: f, type: {E}.Expression, from: src, where: "{where}"}}')
    assert "pipe.yaml:4" in text and "syntax error at position 21: attribute access" in text
    text = problems(tmp_path, f'{{name: f, type: {E}.Expression, from: src, where: "nope > 1"}}')
    assert "needs column(s) ['nope']" in text


# -- length ----------------------------------------------------------------------------------------------------
def test_length_bounds_in_chars_and_words(tmp_path):
    records = [{"text": t} for t in ["tiny", "just right here", "one two three four five six seven"]]
    stats, rows = run(tmp_path, records, f"{{name: f, type: {M}.Length, from: src, column: text, min: 5, max: 20}}")
    assert stats["dropped"] == {"too short": 1, "too long": 1} and [r["text"] for r in rows] == ["just right here"]
    step = Length("l", Length.Params(column="text", unit="words", min=2, max=3), Path("."))
    result = step.process(records + [{"text": ["not", "text"]}], CTX)
    assert [r["text"] for r in result.records] == ["just right here"]
    assert [reason for _, reason in result.dropped] == ["too short", "too long"]
    assert [q.reason for q in result.quarantined] == ["not text"]


def test_length_ratio_bounds_on_preference_rows(tmp_path):
    records = [pref("a" * 30, "b" * 10), pref("a" * 10, "b" * 10), pref("a" * 5, "b" * 20), pref("a", "")]
    step = f"{{name: f, type: {M}.Length, from: src, max_ratio: 2.0, min_ratio: 0.5}}"
    stats, rows = run(tmp_path, records, step)
    assert stats["dropped"] == {"length ratio": 3}  # 3.0, 0.25 and an empty rejected (infinite ratio)
    assert [len(r["chosen"][0]["content"]) for r in rows] == [10]
    ratio_only = Length("l", Length.Params(max_ratio=2.0), Path("."))
    assert ratio_only.required_columns() == {"chosen", "rejected"}


@pytest.mark.model
def test_length_in_tokens_loads_the_tokenizer_only_at_run_time(tmp_path, builtin_model_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path)
    texts = [
        "Hello there, how are you today?",
        "Supercalifragilisticexpialidocious antidisestablishmentarianism",
        "ok",
    ]
    counts = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    bound = sorted(counts)[1]
    step = (
        f"{{name: f, type: {M}.Length, from: src, column: text, unit: tokens, max: {bound}, "
        "tokenizer: 'builtin:smollm2-135m-instruct'}"
    )
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    source = "{name: src, type: load, path: data.jsonl}"
    (tmp_path / "pipe.yaml").write_text(f"name: t\nsteps:\n  - {source}\n  - {step}\n")
    pipeline = load_pipeline(tmp_path / "pipe.yaml")
    assert pipeline.steps["f"].step._tokenizer is None  # validation never loads it
    stats, rows = run(tmp_path, [{"text": t} for t in texts], step)
    assert stats["dropped"] == {"too long": sum(c > bound for c in counts)}
    assert [r["text"] for r in rows] == [t for t, c in zip(texts, counts, strict=True) if c <= bound]


def test_length_parameter_errors(tmp_path):
    assert "unit: tokens needs `tokenizer:`" in problems(
        tmp_path, f"{{name: f, type: {M}.Length, from: src, column: text, unit: tokens, max: 3}}"
    )
    assert "unit must be one of ['chars', 'words', 'tokens']" in problems(
        tmp_path, f"{{name: f, type: {M}.Length, from: src, column: text, unit: bytes, max: 3}}"
    )
    assert "give at least one bound" in problems(tmp_path, f"{{name: f, type: {M}.Length, from: src}}")
    assert "min (5) is greater than max (2)" in problems(
        tmp_path, f"{{name: f, type: {M}.Length, from: src, column: text, min: 5, max: 2}}"
    )


# -- judge_filter ----------------------------------------------------------------------------------------------
JUDGED = [
    pref(
        "good answer", "bad answer", preference="A", confidence=0.9, consistent=True, chosen_score=8, rejected_score=3
    ),
    pref(
        "good answer", "bad answer", preference="A", confidence=0.9, consistent=False, chosen_score=8, rejected_score=3
    ),
    pref(
        "good answer",
        "bad answer",
        preference="tie",
        confidence=0.9,
        consistent=True,
        chosen_score=8,
        rejected_score=3,
    ),
    pref(
        "good answer", "bad answer", preference="A", confidence=0.4, consistent=True, chosen_score=8, rejected_score=3
    ),
    pref(
        "good answer",
        "bad answer",
        preference="A",
        confidence=0.9,
        consistent=True,
        chosen_score=5,
        rejected_score=4.5,
    ),
    pref(
        "Same  answer!",
        "same answer",
        preference="A",
        confidence=0.9,
        consistent=True,
        chosen_score=8,
        rejected_score=3,
    ),
]


@pytest.mark.parametrize(
    "params, dropped_index, reason",
    [
        ({"drop_inconsistent": True}, 1, "position-inconsistent"),
        ({"drop_ties": True}, 2, "tie"),
        ({"min_confidence": 0.6}, 3, "low confidence"),
        ({"min_margin": 1.0}, 4, "low margin"),
        ({"drop_identical": True}, 5, "chosen == rejected"),
    ],
)
def test_judge_filter_each_rule_alone(params, dropped_index, reason):
    result = JudgeFilter("j", JudgeFilter.Params(**params), Path(".")).process([dict(r) for r in JUDGED], CTX)
    assert [(JUDGED.index(r), why) for r, why in result.dropped] == [(dropped_index, reason)]
    assert len(result.records) == len(JUDGED) - 1


def test_judge_filter_requires_only_the_columns_of_enabled_checks():
    def needs(**params):
        return JudgeFilter("j", JudgeFilter.Params(**params), Path(".")).required_columns()

    assert needs(min_confidence=0.5) == {"confidence"}
    assert needs(min_confidence=0.5, confidence="judge_conf") == {"judge_conf"}
    assert needs(min_margin=1, drop_identical=True) == {"chosen_score", "rejected_score", "chosen", "rejected"}
    with pytest.raises(ValueError, match="enable at least one check"):
        JudgeFilter.Params()


def test_judge_filter_pipeline_counts_every_reason_and_quarantines_bad_fields(tmp_path):
    records = [dict(r) for r in JUDGED] + [{**JUDGED[0], "confidence": None}]
    step = (
        f"{{name: f, type: {M}.JudgeFilter, from: src, drop_inconsistent: true, drop_ties: true, "
        "min_confidence: 0.6, min_margin: 1.0, drop_identical: true}"
    )
    stats, rows = run(tmp_path, records, step)
    assert stats["dropped"] == {
        "position-inconsistent": 1,
        "tie": 1,
        "low confidence": 1,
        "low margin": 1,
        "chosen == rejected": 1,
    }
    assert stats["quarantined"] == {"invalid judge field": 1} and len(rows) == 1
    assert "needs column(s) ['consistent']" in problems(
        tmp_path, f"{{name: f, type: {M}.JudgeFilter, from: src, drop_inconsistent: true}}"
    )


# -- dedup -----------------------------------------------------------------------------------------------------
def planted_corpus(seed: int = 0) -> tuple[list[str], dict[int, int]]:
    """500 distinct paragraphs (50 of them share half their words with another: hard negatives, Jaccard ~0.3),
    100 near-duplicates with two small word edits, 30 exact duplicates differing in case, whitespace and
    punctuation, shuffled after their source. Returns (texts, duplicate index -> its source index)."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(3000)]
    paragraphs = [[rng.choice(vocab) for _ in range(rng.randint(60, 100))] for _ in range(450)]
    for i in range(50):
        base = paragraphs[i]
        paragraphs.append(base[: len(base) // 2] + [rng.choice(vocab) for _ in range(len(base) // 2)])
    texts: list[str] = [" ".join(p) for p in paragraphs]
    truth: dict[int, int] = {}
    for source in rng.sample(range(500), 100):
        words = list(paragraphs[source])
        for _ in range(2):
            i = rng.randrange(1, len(words) - 1)
            edit = rng.choice(["swap", "insert", "replace"])
            if edit == "swap":
                words[i], words[i + 1] = words[i + 1], words[i]
            elif edit == "insert":
                words.insert(i, rng.choice(vocab))
            else:
                words[i] = rng.choice(vocab)
        truth[len(texts)] = source
        texts.append(" ".join(words))
    for source in rng.sample(range(500), 30):
        truth[len(texts)] = source
        texts.append("  " + texts[source].upper().replace(" ", " \n ", 3) + "!")
    order = list(range(len(texts)))
    rng.shuffle(order)
    order.sort(key=lambda i: i in truth)  # every source comes before its duplicates: "keep the first" is exact
    position = {old: new for new, old in enumerate(order)}
    return [texts[i] for i in order], {position[d]: position[s] for d, s in truth.items()}


@pytest.mark.parametrize("backend", ["numpy", "datasketch"])
def test_dedup_precision_and_recall_on_planted_near_duplicates(backend):
    texts, truth = planted_corpus()
    step = Dedup("d", Dedup.Params(column="text", backend=backend, threshold=0.7), Path("."))
    dropped = []
    for start in range(0, len(texts), 128):  # several batches: the index must persist across them
        batch = [{"text": t, "i": start + j} for j, t in enumerate(texts[start : start + 128])]
        dropped += step.process(batch, CTX).dropped
    flagged = {r["i"]: (r["_duplicate_of"], reason) for r, reason in dropped}
    true_positives = set(flagged) & set(truth)
    recall, precision = len(true_positives) / len(truth), len(true_positives) / max(1, len(flagged))
    assert recall >= 0.9 and precision >= 0.95, (backend, recall, precision)
    exact = [i for i, (_, reason) in flagged.items() if reason == "duplicate (exact)"]
    assert len(exact) == 30 and all(flagged[i][0] == truth[i] for i in exact)
    # _duplicate_of names a kept record that the dropped one duplicates (here: its planted source)
    assert sum(flagged[i][0] == truth[i] for i in true_positives) >= 0.95 * len(true_positives)


def test_dedup_pipeline_exact_and_near_duplicates_across_batches(tmp_path):
    base = (
        "the quick brown fox jumps over the lazy dog while the farmer watches from the porch and drinks a cup "
        "of hot tea before the long day of work in the fields begins"
    )
    other = (
        "a completely different sentence about rivers and mountains where hikers walk every summer to see the "
        "glaciers melt slowly into clear blue lakes full of fish"
    )
    records = [
        {"id": "a", "text": base},
        {"id": "b", "text": other},
        {
            "id": "c",
            "text": "THE QUICK brown fox, jumps over the lazy dog while the farmer watches from the porch "
            "and drinks a cup of hot tea before the long day of work in the fields begins!",
        },
        {"id": "d", "text": base.replace("hot tea", "hot green tea")},
        {"id": "e", "text": other.upper()},
        {"id": "f", "text": None},
    ]
    step = f"{{name: f, type: {D}.Dedup, from: src, column: text, id_column: id, batch_size: 2}}"
    stats, rows = run(tmp_path, records, step)
    assert [r["id"] for r in rows] == ["a", "b"]
    assert stats["dropped"] == {"duplicate (exact)": 2, "near-duplicate": 1}
    assert stats["quarantined"] == {"not text": 1}
    dedup = Dedup("d", Dedup.Params(column="text", id_column="id"), Path("."))
    records[4]["text"] = [{"role": "user", "content": "q"}, {"role": "assistant", "content": other.upper()}]
    records[5] = {"id": "g", "text": records[3]["text"].title()}  # an exact copy of the near-duplicate d
    result = dedup.process(records, CTX)  # a conversation is compared by its last message
    assert {r["id"]: (r["_duplicate_of"], reason) for r, reason in result.dropped} == {
        "c": ("a", "duplicate (exact)"),
        "d": ("a", "near-duplicate"),
        "e": ("b", "duplicate (exact)"),
        "g": ("a", "duplicate (exact)"),
    }  # points at the kept record, not at the dropped d


def test_dedup_exact_only_and_positions_as_labels():
    step = Dedup("d", Dedup.Params(column="text", near=False), Path("."))
    first = step.process([{"text": "Hello, World"}, {"text": "something else entirely"}], CTX)
    second = step.process([{"text": "hello world!!"}, {"text": "something else entirely, almost"}], CTX)
    assert len(first.records) == 2 and len(second.records) == 1
    assert [(r["_duplicate_of"], why) for r, why in second.dropped] == [(0, "duplicate (exact)")]
    with pytest.raises(ValueError, match="backend must be one of"):
        Dedup.Params(backend="faiss")


def test_text_normalization_and_shingles():
    assert normalize_text("  Hello,\tWORLD!  it's\n") == "hello world it s"
    assert tokens("A-b c") == ["a", "b", "c"]
    hasher = WordHasher()
    docs = [["a", "b", "c", "d"], ["b", "c", "d"], ["x"], []]
    hashes, doc, start = ngram_hashes(hasher, docs, 3, whole_short=False)
    assert doc.tolist() == [0, 0, 1] and start.tolist() == [0, 1, 0]
    assert hashes[1] == hashes[2]  # the same 3-gram in two docs hashes the same
    padded, doc, _ = ngram_hashes(hasher, docs, 3, whole_short=True)
    assert doc.tolist() == [0, 0, 1, 2, 3]  # short and empty docs get one n-gram each
    assert optimal_bands(0.7, 128, false_positive_weight=0.5) == (14, 9)  # datasketch's choice for equal weights
    bands, rows = optimal_bands(0.7, 128)  # verified candidates: recall matters more than candidates
    assert bands * rows <= 128 and 1 - (1 - 0.75**rows) ** bands > 0.95 and 1 - (1 - 0.3**rows) ** bands < 0.05


# -- decontaminate ---------------------------------------------------------------------------------------------
BENCH_ITEM = (
    "Natalia sold clips to forty eight of her friends in April and then she sold half as many clips in May "
    "how many clips did Natalia sell altogether"
)


def test_decontaminate_finds_a_13_gram_but_not_a_12_gram(tmp_path):
    words = BENCH_ITEM.split()
    filler = "please answer the following question carefully and show your work step by step"
    records = [
        {"prompt": f"{filler} {' '.join(words[3:16])} thanks"},  # 13 words of the item, in order
        {"prompt": f"{filler} {' '.join(words[3:15])} thanks"},  # only 12
        {"prompt": f"{filler}. " + " ".join(words[10:23]).upper() + "!"},  # normalized before matching
        {"prompt": "an unrelated question about volcanoes and the sea"},
    ]
    bench = json.dumps({"question": BENCH_ITEM, "answer": 72}) + "\n"
    other = json.dumps({"question": "what is the capital of france", "answer": "paris"}) + "\n"
    step = f"{{name: f, type: {DC}.Decontaminate, from: src, benchmarks: [other.jsonl, gsm.jsonl]}}"
    stats, rows = run(tmp_path, records, step, files={"gsm.jsonl": other + bench, "other.jsonl": other})
    assert stats["dropped"] == {"contaminated": 2}
    assert [r["prompt"] for r in rows] == [records[1]["prompt"], records[3]["prompt"]]
    records[2]["prompt"] = [{"role": "system", "content": "hi"}, {"role": "user", "content": records[2]["prompt"]}]
    result = Decontaminate("d", Decontaminate.Params(benchmarks=["gsm.jsonl"]), tmp_path).process(records, CTX)
    assert [r["prompt"] for r in result.records] == [records[1]["prompt"], records[3]["prompt"]]
    report = result.dropped[0][0]["_contamination"]
    assert report == {
        "benchmark": "gsm.jsonl",
        "item": 1,
        "column": "prompt",
        "matches": 1,
        "ngram": " ".join(words[3:16]).lower(),
    }


def test_decontaminate_reads_txt_and_parquet_fields_and_invalidates_the_cache(tmp_path):
    pq.write_table(
        pa.table({"id": [1], "question": ["unrelated"], "passage": [BENCH_ITEM]}), tmp_path / "bench.parquet"
    )
    (tmp_path / "bench.txt").write_text("short line\n" + BENCH_ITEM.replace("Natalia", "Maria") + "\n")
    records = [{"prompt": "x", "chosen": BENCH_ITEM.replace("Natalia", "Maria")}, {"prompt": "y", "chosen": "ok"}]
    step = Decontaminate("d", Decontaminate.Params(benchmarks=["bench.txt"], column=["prompt", "chosen"]), tmp_path)
    dropped = step.process(records, CTX).dropped
    assert [r["_contamination"]["column"] for r, _ in dropped] == ["chosen"]
    assert dropped[0][0]["_contamination"]["item"] == 1
    only_id = Decontaminate(
        "d",
        Decontaminate.Params(benchmarks=["bench.parquet"], benchmark_columns=["question"], column="chosen", ngram=5),
        tmp_path,
    )
    assert not only_id.process(records, CTX).dropped  # the passage field is not indexed
    assert only_id.files() == [tmp_path / "bench.parquet"]

    spec = f"{{name: f, type: {DC}.Decontaminate, from: src, column: chosen, benchmarks: [bench.txt]}}"
    stats, _ = run(tmp_path, records, spec)
    assert stats["dropped"] == {"contaminated": 1}
    (tmp_path / "bench.txt").write_text("nothing in common\n")
    stats, _ = run(tmp_path, records, spec)
    assert not stats.get("cached") and stats["dropped"] == {}  # the benchmark's bytes are in the cache key
    assert "file not found" in problems(
        tmp_path, f"{{name: f, type: {DC}.Decontaminate, from: src, column: text, benchmarks: [missing.jsonl]}}"
    )
    assert "the first item has no field(s) ['questoin']; it has ['id', 'passage', 'question']" in problems(
        tmp_path,
        f"{{name: f, type: {DC}.Decontaminate, from: src, column: text, benchmarks: [bench.parquet], "
        "benchmark_columns: [questoin]}",
    )
    typo = Decontaminate("d", Decontaminate.Params(benchmarks=["bench.txt"], benchmark_columns=["txt"]), tmp_path)
    with pytest.raises(ValueError, match=r"no item has the field\(s\) \['txt'\]"):  # and at run time, on all items
        typo.process(records, CTX)
    assert "must end in one of" in problems(
        tmp_path, f"{{name: f, type: {DC}.Decontaminate, from: src, column: text, benchmarks: [b.csv]}}"
    )


SHORT_ITEM = "Which planet in our solar system has the most moons?"  # 10 words: under the 13-gram


def test_decontaminate_matches_short_benchmark_items_whole(tmp_path):
    (tmp_path / "bench.jsonl").write_text(json.dumps({"question": SHORT_ITEM, "answer": "Saturn"}) + "\n")
    records = [
        {"prompt": f"Here is a quiz question for you today, please answer it: {SHORT_ITEM} Explain why."},  # inside
        {"prompt": SHORT_ITEM.upper()},  # a short record equal to the item (normalized)
        {"prompt": f"So, {SHORT_ITEM}"},  # a short record containing it
        {"prompt": "Saturn!"},  # equal to a 1-word item
        {"prompt": "Tell me about Saturn and its rings, and why they shine so brightly at night."},  # 1 word: short
        {"prompt": "Which planet in our solar system has the most"},  # only part of the item
        {"prompt": "Which planet in our solar system has the most rings?"},  # same first 8 words, then different
    ]
    step = Decontaminate("d", Decontaminate.Params(benchmarks=["bench.jsonl"]), tmp_path)
    result = step.process(records, CTX)
    assert [r["prompt"] for r in result.records] == [records[i]["prompt"] for i in (4, 5, 6)]
    reports = [r["_contamination"] for r, _ in result.dropped]
    assert reports[0] == {
        "benchmark": "bench.jsonl",
        "item": 0,
        "column": "prompt",
        "matches": 1,
        "ngram": normalize_text(SHORT_ITEM),
    }
    assert [r["ngram"] for r in reports[1:]] == [normalize_text(SHORT_ITEM)] * 2 + ["saturn"]
    # min_words: the shortest item matched inside a longer text (shorter ones only match a text equal to them).
    every_word = Decontaminate("d", Decontaminate.Params(benchmarks=["bench.jsonl"], min_words=1), tmp_path)
    assert [r["prompt"] for r in every_word.process(records, CTX).records] == [records[i]["prompt"] for i in (5, 6)]


def test_ngram_hashes_gives_prefix_windows_from_the_same_pass():
    hasher, docs = WordHasher(), [tokens("a b c d e"), [], tokens("f g"), tokens("h")]
    plain = ngram_hashes(hasher, docs, 3, whole_short=False)
    with_prefix = ngram_hashes(hasher, docs, 3, whole_short=False, prefix=2)
    assert all((x == y).all() for x, y in zip(plain, with_prefix[:3], strict=True))
    # A 2-word window hashes as that 2-word text does alone with whole_short: how short items are found inside docs.
    spans = [d[i : i + 2] for d in docs for i in range(len(d) - 1)]
    assert (with_prefix[3] == ngram_hashes(hasher, spans, 3, whole_short=True)[0]).all()
    assert with_prefix[4].tolist() == [0, 0, 0, 0, 2] and with_prefix[5].tolist() == [0, 1, 2, 3, 0]


def test_sequence_hashes_group_texts_exactly_as_their_normalized_words():
    """Dedup's exact-text key: texts with equal tokens() hash equal in any batch, any others differently."""
    rng = random.Random(5)
    pieces = ["Hello", "hello", "WORLD", "it's", "naïve", "x", "42", "—", "...", " ", "  ", "\t", "Straße", "b"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 6))) for _ in range(2000)]
    texts += ["", "   ", "...", "a b", "b a", "a  b!", "ab"]
    keys = sequence_hashes(*text_word_hashes(texts)).tolist()
    by_text: dict[str, int] = {}
    for text, key in zip(texts, keys, strict=True):
        assert by_text.setdefault(normalize_text(text), key) == key, text
    assert len(set(by_text.values())) == len(by_text) > 100
    assert by_text["a b"] != by_text["b a"] and by_text["a b"] != by_text["ab"]  # order and word breaks count
    # One text per batch: the same keys (nothing depends on the other texts of a batch).
    alone = [sequence_hashes(*text_word_hashes([text]))[0] for text in by_text]
    assert [int(k) for k in alone] == list(by_text.values())


def test_text_word_hashes_hash_the_words_tokens_gives():
    rng = random.Random(3)
    pieces = ["Hello", "WORLD", "it's", "naïve", "Ünïcode", "x", "a_b", "42", "—", "...", "\t", "\n", "\x1f", "\xa0"]
    pieces += ["supercalifragilistic", "antidisestablishmentarianism", "eightchr", "ninechars", "😀", "Straße"]
    texts = ["".join(rng.choice(pieces + [" "] * 6) for _ in range(rng.randint(0, 30))) for _ in range(300)]
    texts += ["", "   ", "...", "Ünïcode—only"]
    flat, counts = text_word_hashes(texts)
    words = [tokens(text) for text in texts]
    assert counts.tolist() == [len(w) for w in words]
    flat_words = [w for doc in words for w in doc]
    assert len(flat) == len(flat_words)
    # Equal words hash equal and different words differently, wherever they occur (ASCII or Unicode text).
    by_word: dict[str, int] = {}
    for word, value in zip(flat_words, flat.tolist(), strict=True):
        assert by_word.setdefault(word, value) == value, word
    assert len(set(by_word.values())) == len(by_word)
    # The same words in a different batch (one text per word) hash the same: the index and the records agree.
    again, _ = text_word_hashes(list(by_word))
    assert again.tolist() == list(by_word.values())
