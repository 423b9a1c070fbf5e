"""rlaif.rates: Wilson intervals against known values, fractional counts (ties as halves), n = 0; t intervals of
means."""

from __future__ import annotations

import pytest

from rlaif.rates import Rate, mean_interval, paired_difference, short, short_mean, t_quantile, wilson


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


@pytest.mark.parametrize(
    ("df", "expected"),  # Student's t 97.5% quantiles from published tables
    [(1, 12.7062), (2, 4.3027), (5, 2.5706), (10, 2.2281), (30, 2.0423), (100, 1.9840), (10_000, 1.9602)],
)
def test_t_quantile_matches_the_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)


def test_mean_interval_is_students_t_and_stays_in_bounds():
    m = mean_interval([0.2, 0.4, 0.6, 0.8])  # s = 0.2582, t(3) = 3.1824: half-width 0.4109
    assert m["mean"] == pytest.approx(0.5) and m["n"] == 4
    assert m["ci95"] == pytest.approx([0.5 - 0.41085, 0.5 + 0.41085], abs=1e-4)
    assert mean_interval([1.0, 1.0, 0.5])["ci95"][1] == 1.0  # clipped to the values' range
    assert short_mean(m) == "0.500 [0.089-0.911]"
    assert mean_interval([0.7]) == {"mean": 0.7, "ci95": None, "n": 1} and short_mean(mean_interval([0.7])) == (
        "0.700 (n=1)"
    )
    assert mean_interval([]) == {"mean": None, "ci95": None, "n": 0} and short_mean(mean_interval([])) == "n/a (n=0)"
    with pytest.raises(ValueError, match="df >= 1"):
        t_quantile(0.975, 0)
