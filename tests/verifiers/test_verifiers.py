"""The verifier API: builtins by name, user verifiers by dotted path, the reward-function form; math, exact, regex;
the floor layer imports no torch."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from rlaif.verifiers import VERIFIERS, Verdict, reward_function, verifier_problem, verify


def test_known_names_and_problems():
    assert {"ifeval", "math", "exact", "regex"} <= set(VERIFIERS)
    for name in VERIFIERS:
        assert verifier_problem(name) is None
    assert "did you mean 'ifeval'" in verifier_problem("ifevl")
    assert "cannot import verifier 'no_such_pkg.fn'" in verifier_problem("no_such_pkg.fn")
    assert "cannot import" in verifier_problem("verifier_plugins.missing")
    assert "not callable" in verifier_problem("verifier_plugins.NOT_CALLABLE")
    assert verifier_problem("verifier_plugins.shouts") is None
    with pytest.raises(ValueError, match="unknown verifier"):
        verify("ifevl", [], [], {})
    with pytest.raises(ValueError, match="unknown verifier"):
        reward_function("mth")


def test_ifeval_scores_the_fraction_held_and_keeps_details():
    constraints = [{"type": "all_lowercase"}, {"type": "word_count", "relation": "at_least", "num": 3}]
    verdicts = verify(
        "ifeval",
        ["p"] * 5,
        ["hello there world", "Hello there world", "HI", "x", "x"],
        {"constraints": [constraints, constraints, '[{"type": "all_uppercase"}]', [{"type": "nope"}], None]},
    )
    assert verdicts[0] == Verdict(1.0, True, None, ({"type": "all_lowercase", "passed": True},
                                                    {"type": "word_count", "passed": True}))  # fmt: skip
    assert (verdicts[1].score, verdicts[1].passed) == (0.5, False)
    assert verdicts[2].passed is True
    assert verdicts[3].score is None and verdicts[3].reason.startswith("malformed constraints: unknown constraint")
    assert (verdicts[4].score, verdicts[4].reason) == (None, "no constraints")
    assert verify("ifeval", ["p"], ["x"], {})[0].reason == "no constraints column"


@pytest.mark.parametrize(
    ("completion", "answer", "score"),
    [
        ("Natalia sold 48 clips in April and 24 in May, so 72 in all.\n#### 72", "72", 1.0),
        ("So she sold 48/2 = 24 clips in May.\n#### 72", "How many? ... #### 72", 1.0),
        ("#### 71", "72", 0.0),
        ("The answer is $\\boxed{\\frac{1}{2}}$.", "0.5", 1.0),
        ("The answer is \\boxed{0.5}", "\\frac{1}{2}", 1.0),
        ("So x = 1/2", "$\\frac12$", 1.0),
        ("The total is 1,234 dollars.", "1234", 1.0),
        ("\\boxed{\\sqrt{2}}", "\\sqrt{2}", 1.0),
        ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0),
        ("\\boxed{3}", "\\sqrt{2}", 0.0),
        ("The answer is 50%.", "0.5", 1.0),
    ],
)
def test_math_equivalent_forms(completion, answer, score):
    (verdict,) = verify("math", ["q"], [completion], {"answer": [answer]})
    assert verdict.score == score and verdict.passed is (score == 1.0), verdict


@pytest.mark.parametrize(
    ("completion", "answer", "reason"),
    [
        ("I have no idea.", "42", "no final answer"),
        ("", "42", "no final answer"),
        ("The answer is 2^99999999.", "4", "no final answer"),
        ("42", None, "no reference answer"),
        ("42", "  ", "no reference answer"),
        ("42", "a bird", "unparseable reference answer"),
    ],
)
def test_math_unverifiable_is_none_never_zero(completion, answer, reason):
    (verdict,) = verify("math", ["q"], [completion], {"answer": [answer]})
    assert verdict == Verdict(None, None, reason)


def test_math_works_off_the_main_thread():
    out = []
    worker = threading.Thread(target=lambda: out.extend(verify("math", ["q"], ["\\boxed{7}"], {"answer": ["7"]})))
    worker.start()
    worker.join()
    assert out[0].passed is True


def test_exact_and_regex():
    exact = verify("exact", ["q"] * 4, [" Paris. ", "PARIS", "Lyon", "x"], {"answer": ["paris", ["Rome", "paris"],
                                                                                        "Paris", None]})  # fmt: skip
    assert [v.score for v in exact] == [1.0, 1.0, 0.0, None]
    assert exact[3].reason == "no reference answer"
    regex = verify("regex", ["q"] * 3, ["id: 123", "id: x", "a"], {"pattern": [r"id: \d+", r"id: \d+", "("]})
    assert [v.passed for v in regex] == [True, False, None]
    assert regex[2].reason.startswith("malformed pattern")
    assert [v.score for v in verify("regex", ["q"] * 2, ["ab", "b"], {"pattern": "^a"})] == [1.0, 0.0]


def test_user_verifiers_by_dotted_path():
    verdicts = verify("verifier_plugins.shouts", ["q"] * 3, ["HI", "hi", ""], {"answer": [1, 2, 3]})
    assert verdicts == [Verdict(1.0, True), Verdict(0.0, False), Verdict(None, None, "unverifiable")]
    graded = verify("verifier_plugins.length_ratio", ["q"] * 2, ["ab", "abcd"], {"target": [4, 4]})
    assert [(v.score, v.passed) for v in graded] == [(0.5, None), (1.0, None)]
    with pytest.raises(ValueError, match="returned 1 scores for 2"):
        verify("verifier_plugins.wrong_length", ["q"] * 2, ["a", "b"], {})
    with pytest.raises(ValueError, match="expected a finite number or None"):
        verify("verifier_plugins.not_a_number", ["q"], ["a"], {})


def test_reward_function_is_the_ppo_convention():
    fn = reward_function("ifeval")
    scores = fn(["p", "p"], ["hello", "Hello"], constraints=[[{"type": "all_lowercase"}], "bad json"])
    assert scores == [1.0, None]
    assert reward_function("math")(["q"], ["#### 3"], answer=["3"]) == [1.0]
    assert reward_function("verifier_plugins.shouts")(["q"], ["OK"]) == [1.0]


def test_the_floor_imports_no_torch_or_transformers():
    code = (
        "import sys, rlaif.verifiers, rlaif.verifiers.constraints, rlaif.verifiers.math, rlaif.verifiers.match, "
        "rlaif.verifiers.ifeval\n"
        "from rlaif.verifiers import verify\n"
        "verify('math', ['q'], ['#### 1'], {'answer': ['1']})\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_ifeval_reads_specs_as_parquet_returns_them(tmp_path):
    """A constraints column of mappings round-trips through Parquet as one struct type: every spec gains the other
    types' argument names, set to None. The verifier must read them as the specs that were written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    specs = [
        [{"type": "no_commas"}, {"type": "word_count", "relation": "at_most", "num": 5}],
        [{"type": "all_lowercase"}],
    ]
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"constraints": specs}), path)
    stored = pq.read_table(path).to_pylist()
    assert any(None in spec.values() for row in stored for spec in row["constraints"])  # the struct padding
    verdicts = verify(
        "ifeval",
        ["p", "p"],
        ["short answer here", "lowercase only"],
        {"constraints": [r["constraints"] for r in stored]},
    )
    assert [v.score for v in verdicts] == [1.0, 1.0] and all(v.reason is None for v in verdicts)
