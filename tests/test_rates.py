"""rlaif.rates: Wilson intervals against known values, fractional counts (ties as halves), n = 0."""

from __future__ import annotations

import pytest

from rlaif.rates import Rate, paired_difference, short, wilson


def test_all_successes_has_a_lower_bound_below_one():
    low, high = wilson(10, 10)
    assert low == pytest.approx(0.7225, abs=1e-4) and high == 1.0


def test_no_successes_mirrors_all_successes():
    low, high = wilson(0, 10)
    assert low == 0.0 and high == pytest.approx(1 - 0.7225, abs=1e-4)


def test_known_values():
    assert wilson(7, 10) == pytest.approx((0.3968, 0.8922), abs=1e-4)
    assert wilson(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson(1, 1) == pytest.approx((0.2065, 1.0), abs=1e-4)


def test_half_counts_are_allowed_and_centred():
    low, high = wilson(5, 10)  # 10 ties counted as halves: (0 + 10/2) / 10
    assert low + high == pytest.approx(1.0) and low == pytest.approx(0.2366, abs=1e-4)


def test_n_zero_has_no_value_and_no_interval_and_says_so():
    assert wilson(0, 0) is None
    r = Rate(0, 0)
    assert (
        r.value is None and r.interval is None and r.as_dict() == {"rate": None, "ci95": None, "successes": 0, "n": 0}
    )
    assert short(r.as_dict()) == "n/a (n=0)" and r.short() == "n/a (n=0)"


def test_out_of_range_counts_are_errors():
    with pytest.raises(ValueError):
        wilson(11, 10)


def test_short_form():
    assert Rate(7, 10).short() == "0.700 [0.397-0.892]"


def test_paired_difference_matches_newcombe_1998():
    # The worked example of Newcombe (1998), Statistics in Medicine 17: 36 both, 12 / 2 discordant, 0 neither.
    d = paired_difference(36, 12, 2, 0)
    assert d["difference"] == pytest.approx(0.2) and d["ci95"] == pytest.approx([0.0569, 0.3404], abs=1e-4)


def test_paired_difference_without_discordant_items_keeps_a_width_and_n_zero_has_none():
    d = paired_difference(10, 0, 0, 10)
    assert d["difference"] == 0.0 and d["ci95"][0] < -0.1 and d["ci95"][1] > 0.1
    assert paired_difference(0, 0, 0, 0) == {"difference": None, "ci95": None, "n": 0}
