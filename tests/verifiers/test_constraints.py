"""Every IFEval-family constraint type: passing and failing responses, edge cases; constraint_problems; the seeded,
contradiction-free sampler; describe."""

from __future__ import annotations

import json
import random
from itertools import combinations

import pytest

from rlaif.verifiers.constraints import (
    CONSTRAINTS,
    check,
    constraint_problems,
    contradiction,
    describe,
    parse,
    sample_constraints,
)

# type -> (spec, responses that pass, responses that fail)
CASES: dict[str, tuple[dict, list[str], list[str]]] = {
    "word_count": (
        {"type": "word_count", "relation": "at_least", "num": 3},
        ["one two three", "naïve café über  ", "a b c d"],
        ["", "one two", "   "],
    ),
    "sentence_count": (
        {"type": "sentence_count", "relation": "at_most", "num": 2},
        ["One. Two!", "Just one", "", "Is it? Yes.", "It costs 3.50 dollars. Or 2.5 euros."],
        ["One. Two. Three.", "A! B? C."],
    ),
    "paragraph_count": (
        {"type": "paragraph_count", "num": 2},
        ["First part.\n***\nSecond part.", "a *** b  \n"],
        ["Only one paragraph.", "a\n***\n\n***\nb", "", "a *** b *** c"],
    ),
    "nth_paragraph_first_word": (
        {"type": "nth_paragraph_first_word", "num_paragraphs": 2, "nth_paragraph": 2, "first_word": "river"},
        ["Intro here.\n\nRiver flows on.", 'x\n\n"river" is quoted first.\n'],
        ["Intro.\n\nThe river.", "River alone.", "a\n\nriver\n\nc", ""],
    ),
    "keywords_include": (
        {"type": "keywords_include", "keywords": ["river", "Garden"]},
        ["The garden by the RIVER.", "river, garden."],
        ["The rivers of gardens.", "only river", ""],
    ),
    "keywords_exclude": (
        {"type": "keywords_exclude", "keywords": ["river"]},
        ["No water here.", "", "rivers are plural"],
        ["The River.", "river"],
    ),
    "keyword_frequency": (
        {"type": "keyword_frequency", "keyword": "cat", "relation": "exactly", "num": 2},
        ["cat and Cat", "A cat, a dog, a CAT. Catalog."],
        ["cat", "cat cat cat", ""],
    ),
    "letter_frequency": (
        {"type": "letter_frequency", "letter": "e", "relation": "at_least", "num": 3},
        ["EeE", "tree bee"],
        ["ee", "", "café"],
    ),
    "all_lowercase": ({"type": "all_lowercase"}, ["hello world 123", "naïve élan\n"], ["Hello", "", "123", "ÉLAN"]),
    "all_uppercase": ({"type": "all_uppercase"}, ["HELLO WORLD!", "ÉLAN 2"], ["Hello", "", "!!"]),
    "capital_word_frequency": (
        {"type": "capital_word_frequency", "relation": "at_most", "num": 1},
        ["Only ONE shout", "none here", ""],
        ["TWO SHOUTS", "A B C"],
    ),
    "starts_with": (
        {"type": "starts_with", "phrase": "My answer is"},
        ["My answer is yes", "  my answer is no  \n"],
        ["Well, my answer is", "", "My answer"],
    ),
    "ends_with": (
        {"type": "ends_with", "phrase": "Any other questions?"},
        ["Done. Any other questions?", "done. any other questions?   \n"],
        ["Any other questions? Bye", "", "Any other questions"],
    ),
    "json_format": (
        {"type": "json_format"},
        ['{"a": 1}', '```json\n{"a": [1, 2]}\n```', " [1, 2] \n", '"ünïcode"'],
        ["{'a': 1}", "", 'Here: {"a": 1}', "```\n```"],
    ),
    "bullet_count": (
        {"type": "bullet_count", "num": 2},
        ["* one\n* two", "Intro\n- one\n  - two\nend"],
        ["* one", "* one\n* two\n* three", "", "*bold* text\n**also** bold"],
    ),
    "section_count": (
        {"type": "section_count", "marker": "Section", "num": 2},
        ["Section 1\nfoo\nSection 2\nbar", "section 1 a SECTION 2 b Section 3 c"],
        ["Section 1 only", "", "Section one, Section two"],
    ),
    "placeholder_count": (
        {"type": "placeholder_count", "relation": "at_least", "num": 2},
        ["Send to [name] at [address].", "[a][b]"],
        ["[name] only", "[] []", ""],
    ),
    "highlighted_sections": (
        {"type": "highlighted_sections", "relation": "at_least", "num": 2},
        ["*one* and *two*", "**bold one** and *two*"],
        ["*one* only", "** ** and * *", "", "* bullet\n* list"],
    ),
    "no_commas": ({"type": "no_commas"}, ["No commas here.", "", "日本語。"], ["a, b", "a\uff0cb"]),
    "quotation": (
        {"type": "quotation"},
        ['"Quoted answer."', '  "x"\n'],
        ['"', "Not quoted", "", '"open only'],
    ),
    "title": ({"type": "title"}, ["<<My Title>>\nText", "text <<über>> text"], ["<< >>", "<My Title>", ""]),
    "postscript": (
        {"type": "postscript", "marker": "P.S."},
        ["Body.\nP.S. see you", "Body.\np.s. later"],
        ["Body only.", "", "PS see you"],
    ),
    "two_responses": (
        {"type": "two_responses"},
        ["First answer.\n******\nSecond answer.", "a******b"],
        ["same ****** same", "one only", "a ****** b ****** c", "", "a ******"],
    ),
    "repeat_prompt": (
        {"type": "repeat_prompt", "prompt_to_repeat": "Write a poem about rivers."},
        ["Write a poem about rivers. Rivers flow...", "  write a poem about rivers.\nok"],
        ["Here is a poem about rivers.", ""],
    ),
    "constrained_response": (
        {"type": "constrained_response"},
        ["My answer is yes.", "Thinking... My answer is maybe."],
        ["my answer is yes.", "Yes.", ""],
    ),
}


def test_every_type_has_cases_and_there_are_at_least_20():
    assert len(CONSTRAINTS) >= 20
    assert set(CASES) == set(CONSTRAINTS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_passing_and_failing_responses(name):
    spec, good, bad = CASES[name]
    assert constraint_problems([spec]) == []
    for response in good:
        assert check(response, spec), (name, response)
    for response in bad:
        assert not check(response, spec), (name, response)
    sentence = describe(spec)
    assert sentence and sentence[0].isupper()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"type": "word_cont", "num": 3}, "did you mean 'word_count'"),
        ({"type": "word_count", "num": "three"}, "num"),
        ({"type": "word_count", "num": 3, "relation": "more"}, "relation"),
        ({"type": "word_count"}, "missing argument 'num'"),
        ({"type": "word_count", "num": -1}, "num"),
        ({"type": "no_commas", "strict": True}, "unexpected argument 'strict'"),
        ({"type": "letter_frequency", "letter": "ab", "num": 2}, "letter"),
        ({"type": "keywords_include", "keywords": "river"}, "keywords"),
        ({"type": "keywords_include", "keywords": []}, "keywords"),
        ({"num": 3}, "string 'type'"),
        ("word_count", "string 'type'"),
    ],
)
def test_constraint_problems_names_what_is_wrong(spec, expected):
    problems = constraint_problems([spec])
    assert len(problems) == 1 and expected in problems[0], problems
    with pytest.raises(ValueError):
        check("text", spec)


def test_constraint_problems_on_the_list_itself_and_json_strings():
    assert constraint_problems('[{"type": "no_commas"}]') == []
    assert "not valid JSON" in constraint_problems("[{")[0]
    assert "list of specs" in constraint_problems(42)[0]
    two = constraint_problems([{"type": "no_commas"}, {"type": "titel"}])
    assert two == [two[0]] and two[0].startswith("constraint 2: ") and "'title'" in two[0]


@pytest.mark.parametrize(
    "specs",
    [
        [{"type": "all_lowercase"}, {"type": "all_uppercase"}],
        [{"type": "json_format"}, {"type": "bullet_count", "num": 2}],
        [{"type": "json_format"}, {"type": "no_commas"}],
        [{"type": "word_count", "relation": "at_least", "num": 300},
         {"type": "word_count", "relation": "at_most", "num": 50}],
        [{"type": "keywords_include", "keywords": ["river"]}, {"type": "keywords_exclude", "keywords": ["River"]}],
        [{"type": "sentence_count", "num": 30}, {"type": "word_count", "relation": "at_most", "num": 20}],
        [{"type": "paragraph_count", "num": 2}, {"type": "two_responses"}],
    ],
)  # fmt: skip
def test_contradictions_are_problems(specs):
    assert constraint_problems(specs)


def test_sampling_is_seeded_and_checks_out():
    assert sample_constraints(random.Random(7), 3) == sample_constraints(random.Random(7), 3)
    assert len({json.dumps(sample_constraints(random.Random(s), 3)) for s in range(50)}) > 40


def test_sampled_sets_are_valid_and_never_contradictory():
    rng = random.Random(0)
    seen = set()
    for _ in range(500):
        specs = sample_constraints(rng, rng.randint(1, 5))
        assert constraint_problems(specs) == [], specs
        assert len({s["type"] for s in specs}) == len(specs)
        parsed = [parse(s) for s in specs]
        assert not any(contradiction(a, b) for a, b in combinations(parsed, 2))
        types = {s["type"] for s in specs}
        assert not {"all_lowercase", "all_uppercase"} <= types
        assert "json_format" not in types or not types & {"bullet_count", "no_commas", "quotation", "title"}
        seen |= types
        assert "repeat_prompt" not in types  # needs the prompt: never drawn blind
    assert len(seen) == len(CONSTRAINTS) - 1


def test_sampling_from_chosen_types_and_too_many():
    specs = sample_constraints(random.Random(1), 2, types=["no_commas", "title"])
    assert sorted(s["type"] for s in specs) == ["no_commas", "title"]
    with pytest.raises(ValueError, match="cannot draw 2"):
        sample_constraints(random.Random(1), 2, types=["all_lowercase", "all_uppercase"])
    with pytest.raises(ValueError, match="did you mean"):
        sample_constraints(random.Random(1), 1, types=["titel"])


def test_describe_is_ifeval_wording():
    assert describe({"type": "paragraph_count", "num": 3}).startswith("There should be exactly 3 paragraphs.")
    assert describe({"type": "word_count", "relation": "at_most", "num": 50}) == "Answer with at most 50 words."
    assert "<<poem of joy>>" in describe({"type": "title"})
