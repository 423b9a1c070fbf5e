"""Rates measured on a sample, each with its 95% interval and its sample size (DESIGN.md §5: every rate computed from
a sample is printed with its interval and n).

The interval is Wilson's score interval (Wilson 1927): unlike the normal approximation it stays inside [0, 1] and is
not zero-width at 0/n or n/n, which small held-out sets and small judge checks hit often (10/10 wins gives
[0.722, 1.000], not [1, 1]).

``successes`` may be fractional: a pairwise win rate counts a tie (and a verdict whose two presentation orders
disagree) as half a win, ``(wins + ties/2) / n``, and its interval is Wilson's on that count. That treats each
comparison as a coin with outcome 0 or 1; a tie is exactly 1/2, with less spread than a coin, so the interval is at
least as wide as it needs to be (conservative), and it is deterministic (no bootstrap seed to report).

A mean of bounded per-item values (the fraction of constraints an answer holds, a judge's soft preference p_a) gets
Student's t interval (:func:`mean_interval`): mean +- t(0.975, n - 1) * s / sqrt(n), clipped to the values' range.

Floor level: stdlib only; the loop's report and the judge check both use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

Z95 = 1.959963984540054  # the 97.5% quantile of the standard normal: a two-sided 95% interval


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of ``successes / n``; None when n = 0 (no sample, no interval)."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n]: {successes} of {n}")
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    # Rounding can leave 1 - 1e-16 at n/n (or 1e-16 at 0/n): the bound there is exactly 1 (0).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class Rate:
    """``successes`` out of ``n`` with its 95% Wilson interval. n = 0 has no value and no interval."""

    successes: float
    n: int

    @property
    def value(self) -> float | None:
        return self.successes / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson(self.successes, self.n)

    def as_dict(self) -> dict[str, Any]:
        """``{"rate", "ci95": [low, high], "successes", "n"}``; rate and ci95 are None when n = 0."""
        low_high = self.interval
        return {
            "rate": self.value,
            "ci95": list(low_high) if low_high else None,
            "successes": self.successes,
            "n": self.n,
        }

    def short(self) -> str:
        """``0.700 [0.397-0.892]``, or ``n/a (n=0)``: the figure and its interval in 19 characters."""
        return short(self.as_dict())


def rate(successes: float, n: int) -> Rate:
    return Rate(successes, n)


def short(figure: dict[str, Any] | None) -> str:
    """A ``Rate.as_dict()`` (as read back from JSON) as ``0.700 [0.397-0.892]``; ``n/a (n=0)`` without a sample."""
    if not figure or figure.get("rate") is None:
        return f"n/a (n={figure.get('n', 0) if figure else 0})"
    low, high = figure["ci95"]
    return f"{figure['rate']:.3f} [{low:.3f}-{high:.3f}]"


def counts_text(successes: float, n: int) -> str:
    """``7/10`` or ``6.5/10``: the count a rate comes from."""
    return f"{successes:g}/{n}"


def paired_difference(both: int, first_only: int, second_only: int, neither: int) -> dict[str, Any]:
    """Difference of two proportions measured on the same items (pass rate of policy k minus the base's on the same
    held-out prompts): ``(first_only - second_only) / n`` with Newcombe's hybrid score interval for paired data
    (Newcombe 1998, method 10: the two Wilson intervals combined with the phi correlation of the 2x2 table; phi 0
    when no item is discordant). For part 2's verifier eval: base vs policy k on the same prompts. Returns
    ``{"difference", "ci95", "n"}``; difference and ci95 are None when n = 0."""
    n = both + first_only + second_only + neither
    if n == 0:
        return {"difference": None, "ci95": None, "n": 0}
    p1, p2 = (both + first_only) / n, (both + second_only) / n
    (l1, u1), (l2, u2) = wilson(both + first_only, n), wilson(both + second_only, n)  # type: ignore[misc]
    margins = (both + first_only) * (second_only + neither) * (both + second_only) * (first_only + neither)
    # No discordant item makes phi 1 and the interval [0, 0]; treating the two rates as independent there (phi 0)
    # keeps an honest width (20 prompts that all agree do not prove a difference of exactly 0).
    discordant = first_only + second_only
    phi = (both * neither - first_only * second_only) / math.sqrt(margins) if margins and discordant else 0.0
    low = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    difference = p1 - p2
    return {"difference": difference, "ci95": [max(-1.0, difference - low), min(1.0, difference + high)], "n": n}


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _incomplete_beta(a: float, b: float, x: float) -> float:
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (p > 0.5) of Student's t with ``df`` degrees of freedom, by bisection on its CDF."""
    if df < 1 or not 0.5 < p < 1.0:
        raise ValueError(f"t_quantile needs df >= 1 and 0.5 < p < 1, got df={df}, p={p}")
    low, high = 0.0, 1.0
    while 1.0 - 0.5 * _incomplete_beta(df / 2.0, 0.5, df / (df + high * high)) < p:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        upper_tail = 0.5 * _incomplete_beta(df / 2.0, 0.5, df / (df + mid * mid))
        low, high = (mid, high) if 1.0 - upper_tail < p else (low, mid)
        if high - low < 1e-12:
            break
    return (low + high) / 2.0


def mean_interval(values: list[float], bounds: tuple[float, float] = (0.0, 1.0)) -> dict[str, Any]:
    """Mean of ``values`` with its 95% Student t interval, clipped to ``bounds`` (the values' possible range):
    ``{"mean", "ci95", "n"}``. n = 0 has no mean; n = 1 has a mean and no interval (no spread to measure). Values
    that are all equal give a zero-width interval: t measures the sample's spread, it cannot see past it."""
    n = len(values)
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0}
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "ci95": None, "n": 1}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.975, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "ci95": [max(bounds[0], mean - half), min(bounds[1], mean + half)], "n": n}


def paired_mean_difference(first: list[float], second: list[float]) -> dict[str, Any]:
    """Mean of ``first[i] - second[i]`` over items measured both times (a policy's reward minus the base's on the same
    prompts) with the paired 95% Student t interval: ``{"difference", "ci95", "n"}``, unbounded."""
    if len(first) != len(second):
        raise ValueError(f"paired values need equal lengths: {len(first)} and {len(second)}")
    figure = mean_interval([a - b for a, b in zip(first, second, strict=True)], bounds=(-math.inf, math.inf))
    return {"difference": figure["mean"], "ci95": figure["ci95"], "n": figure["n"]}


def short_mean(figure: dict[str, Any] | None) -> str:
    """A ``mean_interval`` as ``0.650 [0.601-0.699]``; ``0.650 (n=1)`` without an interval; ``n/a (n=0)``."""
    if not figure or figure.get("mean") is None:
        return "n/a (n=0)"
    if figure.get("ci95") is None:
        return f"{figure['mean']:.3f} (n={figure['n']})"
    low, high = figure["ci95"]
    return f"{figure['mean']:.3f} [{low:.3f}-{high:.3f}]"
