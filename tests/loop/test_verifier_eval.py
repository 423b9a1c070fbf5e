"""The loop's verifier eval on synthetic pass lists (no model): pass rate with its Wilson interval, mean score,
unverifiable answers as fails, the paired difference against the base, and the round table; the reward-model eval
on synthetic rewards: mean reward with its t interval, the paired mean difference, its table."""

from __future__ import annotations

import pytest
from rich.console import Console

from rlaif.loop.report import base_row, rounds_table
from rlaif.loop.verifier_eval import against_base, mean_reward_figures, pass_figures, reward_vs_base, vs_base
from rlaif.rates import paired_difference, paired_mean_difference, wilson


def test_pass_rate_interval_mean_score_and_unverifiable_as_fail():
    f = pass_figures([True, False, True, False], [1.0, 0.5, 1.0, None])
    assert (f["n"], f["passes"], f["pass_rate"], f["unverifiable"]) == (4, 2, 0.5, 1)
    assert f["pass_rate_ci95"] == pytest.approx(list(wilson(2, 4)))
    assert f["mean_score"] == pytest.approx(2.5 / 3)  # over the answers that could be checked
    assert f["mean_score_ci95"] == pytest.approx([2.5 / 3 - 0.71714, 1.0], abs=1e-4)  # t(2) interval, clipped at 1
    assert f["passed"] == [True, False, True, False] and f["kind"] == "verifier"


def test_no_prompts_have_no_rate():
    f = pass_figures([], [])
    assert f["pass_rate"] is None and f["pass_rate_ci95"] is None and f["mean_score"] is None
    assert f["mean_score_ci95"] is None


def test_vs_base_pairs_the_same_prompts():
    base = pass_figures([True, False, False, False, True, False], [1.0] * 6)
    policy = pass_figures([True, True, True, False, False, False], [1.0] * 6)
    d = vs_base(policy, base)
    # both 1, policy only 2, base only 1, neither 2
    assert d == paired_difference(1, 2, 1, 2)
    assert d["difference"] == pytest.approx(1 / 6) and d["n"] == 6
    assert d["ci95"][0] < d["difference"] < d["ci95"][1]


def test_vs_base_needs_the_base_on_as_many_prompts():
    assert vs_base(pass_figures([True], [1.0]), None) is None
    assert vs_base(pass_figures([True], [1.0]), pass_figures([True, False], [1.0, 0.0])) is None


def test_the_verifier_table_shows_the_base_pass_rate_and_the_difference_in_80_columns():
    base = {**base_row(), "eval": pass_figures([True] * 7 + [False] * 41, [1.0] * 48)}
    ev = pass_figures([True] * 18 + [False] * 30, [1.0] * 48)
    ev["vs_base"] = vs_base(ev, base["eval"])
    row = {
        "round": 1,
        "prompts": 83,
        "made": 332,
        "kept": 68,
        "dropped": {},
        "quarantined": {},
        "not_trained": None,
        "train": {"loss": 0.51, "steps": 68},
        "eval": ev,
        "seconds": {"generate": 100.0, "train": 240.0, "hand_off": 30.0, "eval": 40.0, "total": 420.0},
    }
    console = Console(width=80, record=True)
    console.print(rounds_table([base, row]))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "pass rate [95% CI]" in text and "vs base [95% CI]" in text
    low, high = wilson(7, 48)
    assert f"{7 / 48:.3f} [{low:.3f}-{high:.3f}]" in text  # round 0 carries the base's own pass rate
    assert f"{11 / 48:+.3f}" in text


# -- kind: reward_model -----------------------------------------------------------------------------------------
def test_mean_reward_has_a_t_interval_and_counts_unscored_answers():
    f = mean_reward_figures([0.5, None, 1.5, 1.0])
    assert (f["kind"], f["n"], f["unscored"], f["mean_reward"]) == ("reward_model", 3, 1, 1.0)
    # s = 0.5, t(2) = 4.3027: half-width 4.3027 * 0.5 / sqrt(3) = 1.2421, not clipped (a reward has no range)
    assert f["mean_reward_ci95"] == pytest.approx([1.0 - 1.24209, 1.0 + 1.24209], abs=1e-4)
    assert f["rewards"] == [0.5, None, 1.5, 1.0]
    empty = mean_reward_figures([None])
    assert empty["mean_reward"] is None and empty["mean_reward_ci95"] is None and empty["unscored"] == 1


def test_reward_vs_base_pairs_prompts_both_policies_were_scored_on():
    base = mean_reward_figures([0.5, 1.0, 1.0, 2.0])
    policy = mean_reward_figures([1.0, 2.0, None, 3.0])
    d = reward_vs_base(policy, base)
    assert d == paired_mean_difference([1.0, 2.0, 3.0], [0.5, 1.0, 2.0]) and d["n"] == 3
    assert d["difference"] == pytest.approx(2.5 / 3)
    assert d["ci95"] == pytest.approx([2.5 / 3 - 0.71714, 2.5 / 3 + 0.71714], abs=1e-4)  # t(2) * s / sqrt(3)
    assert against_base(policy, base) == d and against_base(pass_figures([True], [1.0]), None) is None
    assert reward_vs_base(policy, mean_reward_figures([1.0])) is None  # not the same prompts
    with pytest.raises(ValueError, match="equal lengths"):
        paired_mean_difference([1.0], [])


def test_the_reward_model_table_shows_mean_rewards_and_the_difference_in_80_columns():
    base = {**base_row(), "eval": mean_reward_figures([-1.0, 0.0, 1.0])}
    ev = mean_reward_figures([0.0, 1.0, 2.5])
    ev["vs_base"] = reward_vs_base(ev, base["eval"])
    row = {"round": 1, "prompts": 10, "made": 40, "kept": 9, "dropped": {}, "quarantined": {}, "not_trained": None,
           "train": {"loss": 0.6, "steps": 9}, "eval": ev, "seconds": {"total": 10.0}}  # fmt: skip
    console = Console(width=80, record=True)
    console.print(rounds_table([base, row]))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "mean reward [95% CI]" in text and "held-out reward model eval" in text
    assert "+0.000 [-2.484,+2.484]" in text  # the base: mean 0, s = 1, t(2) = 4.3027
    assert f"{ev['vs_base']['difference']:+.3f}" in text and "+1.167" in text
