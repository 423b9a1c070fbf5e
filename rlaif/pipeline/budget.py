"""Token and cost budgets per model, and the metering that feeds them and the run's stats.

A model of a pipeline file may carry ``budget: {max_tokens: N, max_cost_usd: X}`` and
``price: {input_per_1m: P, output_per_1m: Q}`` (US dollars per million prompt / generated tokens, what a hosted API
bills). Every ``generate`` call a step makes through its context is metered per model name (``MeteredBackend``); the
runner stores each batch's usage in its completion marker (``models``: name -> tokens in/out), so the spend of a run
is the sum over the batches its cache holds, whichever invocation computed them.

What a budget covers, and why: the whole run, cached work included. A run stopped at its budget keeps its finished
batches; re-running with the same budget stops again before any new batch, and raising the budget continues exactly
where it stopped (the dataset then equals an unbudgeted run's). Work the cache no longer holds (a step recomputed
after its configuration changed, ``--fresh``) no longer counts: the budget caps what the run's results cost, not
every token ever sent. A judge check in a step's setup counts in the pass that runs it.

The check: before each batch (and each retry) that would call a model, a step stops when one of its models has
reached a limit (spent >= limit). A batch already started always finishes, so the spend may pass the limit by at most
one batch of that model (under the Ray executor: by the batches in flight).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rlaif.config import closest
from rlaif.schema import GenerationParams, GenerationResult, Prompt

BUDGET_KEYS = ("max_tokens", "max_cost_usd")
PRICE_KEYS = ("input_per_1m", "output_per_1m")
Usage = dict[str, dict[str, int]]  # model name -> {"tokens_in": n, "tokens_out": n}


# -- the pipeline file's values ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Price:
    input_per_1m: float
    output_per_1m: float

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.input_per_1m + tokens_out * self.output_per_1m) / 1e6


@dataclass(frozen=True)
class ModelBudget:
    """One model's limits (None: no limit) and price (None: no cost is computed)."""

    max_tokens: int | None = None  # prompt + generated tokens
    max_cost_usd: float | None = None
    price: Price | None = None

    @property
    def limited(self) -> bool:
        return self.max_tokens is not None or self.max_cost_usd is not None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def budget_problems(cfg: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """A model's ``budget:`` and ``price:`` checked: ``(key path under the model, message)`` pairs."""
    problems: list[tuple[tuple[str, ...], str]] = []
    budget, price = cfg.get("budget"), cfg.get("price")
    for key, value, known in (("budget", budget, BUDGET_KEYS), ("price", price, PRICE_KEYS)):
        if value is not None and not isinstance(value, dict):
            example = "{max_tokens: 100000, max_cost_usd: 5}" if key == "budget" else "{input_per_1m: 0.15, ...}"
            problems.append(((key,), f"{key} must be a mapping like {example}, got {value!r}"))
            continue
        for name in value or {}:
            if name not in known:
                hint = closest(str(name), known)
                problems.append(((key, name), f"unknown {key} key {name!r}{hint}; expected one of {known}"))
    budget = budget if isinstance(budget, dict) else {}
    price = price if isinstance(price, dict) else None
    tokens = budget.get("max_tokens")
    if tokens is not None and not (isinstance(tokens, int) and not isinstance(tokens, bool) and tokens > 0):
        problems.append((("budget", "max_tokens"), f"max_tokens must be a positive integer (tokens), got {tokens!r}"))
    cost = budget.get("max_cost_usd")
    if cost is not None and not (_number(cost) and cost > 0):
        problems.append((("budget", "max_cost_usd"), f"max_cost_usd must be a number > 0 (US dollars), got {cost!r}"))
    for name in PRICE_KEYS if price is not None else ():
        value = price.get(name)
        if not (_number(value) and value >= 0):
            message = f"price needs {name}: US dollars per 1M tokens, a number >= 0, got {value!r}"
            problems.append((("price", name) if name in price else ("price",), message))
    if cost is not None and price is None:
        problems.append(
            (
                ("budget", "max_cost_usd"),
                "max_cost_usd needs the model's price: add price: {input_per_1m: X, output_per_1m: Y} "
                "(US dollars per 1M prompt / generated tokens)",
            )
        )
    return problems


def model_budget(cfg: dict[str, Any]) -> ModelBudget | None:
    """The validated ``budget:``/``price:`` of a model config (None when it has neither)."""
    budget, price = cfg.get("budget") or {}, cfg.get("price")
    if not budget and price is None:
        return None
    priced = Price(float(price["input_per_1m"]), float(price["output_per_1m"])) if price is not None else None
    cost = budget.get("max_cost_usd")
    return ModelBudget(budget.get("max_tokens"), None if cost is None else float(cost), priced)


# -- metering ------------------------------------------------------------------------------------------------------
class Meter:
    """Tokens per model name, as the backends report them (``GenerationResult.prompt_tokens``/completion tokens)."""

    def __init__(self) -> None:
        self.usage: Usage = {}

    def add(self, model: str, tokens_in: int, tokens_out: int) -> None:
        entry = self.usage.setdefault(model, {"tokens_in": 0, "tokens_out": 0})
        entry["tokens_in"] += tokens_in
        entry["tokens_out"] += tokens_out

    def snapshot(self) -> Usage:
        return {model: dict(entry) for model, entry in self.usage.items()}

    def since(self, snapshot: Usage) -> Usage:
        """What was metered after ``snapshot`` (models with no new tokens left out)."""
        delta = {}
        for model, entry in self.usage.items():
            before = snapshot.get(model, {})
            part = {key: entry[key] - before.get(key, 0) for key in ("tokens_in", "tokens_out")}
            if part["tokens_in"] or part["tokens_out"]:
                delta[model] = part
        return delta


class MeteredBackend:
    """A backend whose ``generate`` is counted in a ``Meter`` under one model name; everything else is the
    backend's own."""

    def __init__(self, backend: Any, meter: Meter, model: str) -> None:
        self._backend, self._meter, self._model = backend, meter, model

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[GenerationResult]:
        results = self._backend.generate(prompts, params)
        self._meter.add(self._model, sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results))
        return results

    def __getattr__(self, name: str) -> Any:
        return _delegate(self, "_backend", name)


def _delegate(wrapper: Any, inner: str, name: str) -> Any:
    # Through __dict__: while unpickling, before the wrapped object is set, a lookup must fail, not recurse.
    target = wrapper.__dict__.get(inner)
    if target is None:
        raise AttributeError(name)
    return getattr(target, name)


class MeteredEngines:
    """What a step's context reaches its models through (rlaif.steps.base ``Engines``): the runtime's engines, each
    backend metered under its model name. The runtime itself hands out the engines unwrapped (shared by names)."""

    def __init__(self, engines: Any, meter: Meter) -> None:
        self._engines, self._meter = engines, meter

    def backend(self, model_name: str) -> Any:
        return MeteredBackend(self._engines.backend(model_name), self._meter, model_name)

    def __getattr__(self, name: str) -> Any:  # sampling, model_reference and anything a runtime adds
        return _delegate(self, "_engines", name)


def add_usage(total: Usage, part: Usage | None, sign: int = 1) -> Usage:
    """``total`` += ``part`` (or -= with ``sign=-1``), in place; returns ``total``."""
    for model, entry in (part or {}).items():
        into = total.setdefault(model, {"tokens_in": 0, "tokens_out": 0})
        for key in ("tokens_in", "tokens_out"):
            into[key] += sign * int(entry.get(key, 0))
    return total


def usage_of(batches: Iterable[dict[str, Any]]) -> Usage:
    """The per-model usage of batch (or step) stats: the sum of their ``models``."""
    total: Usage = {}
    for stats in batches:
        add_usage(total, stats.get("models"))
    return total


# -- the run's budgets ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BudgetStop:
    """Which budget stopped the run: the model name, the limit's key, the limit and what was spent."""

    model: str
    kind: str  # max_tokens | max_cost_usd
    limit: float
    spent: float

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "kind": self.kind, "limit": self.limit, "spent": self.spent}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BudgetStop:
        return cls(str(data["model"]), str(data["kind"]), data["limit"], data["spent"])

    def message(self) -> str:
        if self.kind == "max_cost_usd":
            return f"model {self.model!r} reached budget.max_cost_usd {self.limit:g} (spent ${usd(self.spent)})"
        return f"model {self.model!r} reached budget.max_tokens {int(self.limit)} (spent {int(self.spent)} tokens)"


def usd(amount: float) -> str:
    """Dollars for people: cents from $1 up, six decimals below (a test on a cheap model costs fractions of a cent)."""
    return f"{amount:,.2f}" if amount >= 1 else f"{amount:.6f}"


class BudgetTracker:
    """The spend of one run per model: the steps finished (``settle``), plus the step running now (its kept and new
    batches, ``set_batch``, and its setup, ``add_setup``). Prices the stats of every step."""

    def __init__(self, budgets: dict[str, ModelBudget] | None = None) -> None:
        self.budgets = dict(budgets or {})
        self.base: Usage = {}
        self._batches: dict[int, Usage] = {}
        self._live: Usage = {}

    @property
    def active(self) -> bool:
        return any(b.limited for b in self.budgets.values())

    def begin_step(self, done: dict[int, dict[str, Any]]) -> None:
        """A step starts: the batches it keeps from earlier passes count from the start."""
        self._batches, self._live = {}, {}
        for index, stats in done.items():
            self.set_batch(index, stats)

    def set_batch(self, index: int, stats: dict[str, Any]) -> None:
        """Batch ``index`` of the running step now holds ``stats`` (written, redone or retried)."""
        add_usage(self._live, self._batches.get(index), -1)
        self._batches[index] = usage_of([stats])
        add_usage(self._live, self._batches[index])

    def forget_batch(self, index: int) -> None:
        add_usage(self._live, self._batches.pop(index, None), -1)

    def add_setup(self, usage: Usage) -> None:
        add_usage(self._live, usage)

    def settle(self, stats: dict[str, Any]) -> None:
        """A step is done with (cached, finished or stopped): its usage joins the run's."""
        add_usage(self.base, stats.get("models"))
        self._batches, self._live = {}, {}

    def spent(self, model: str) -> tuple[int, float | None]:
        """Tokens (in + out) and cost (None without a price) of ``model`` so far in this run."""
        base, live = self.base.get(model, {}), self._live.get(model, {})
        tokens_in = base.get("tokens_in", 0) + live.get("tokens_in", 0)
        tokens_out = base.get("tokens_out", 0) + live.get("tokens_out", 0)
        budget = self.budgets.get(model)
        cost = budget.price.cost(tokens_in, tokens_out) if budget and budget.price else None
        return tokens_in + tokens_out, cost

    def check(self, models: Iterable[str]) -> BudgetStop | None:
        """The first limit among ``models`` that is reached (spent >= limit), or None."""
        for model in models:
            budget = self.budgets.get(model)
            if budget is None or not budget.limited:
                continue
            tokens, cost = self.spent(model)
            if budget.max_tokens is not None and tokens >= budget.max_tokens:
                return BudgetStop(model, "max_tokens", budget.max_tokens, tokens)
            if budget.max_cost_usd is not None and cost is not None and cost >= budget.max_cost_usd:
                return BudgetStop(model, "max_cost_usd", budget.max_cost_usd, round(cost, 10))
        return None

    def priced(self, stats: dict[str, Any]) -> dict[str, Any]:
        """``stats`` with ``cost_usd`` per priced model and for the step (the sum over its priced models), from the
        current prices (a cached step's cost follows a changed price)."""
        models = stats.get("models")
        if not models:
            return stats
        total, any_price = 0.0, False
        priced_models = {}
        for model, entry in models.items():
            budget = self.budgets.get(model)
            entry = {"tokens_in": entry.get("tokens_in", 0), "tokens_out": entry.get("tokens_out", 0)}
            if budget is not None and budget.price is not None:
                entry["cost_usd"] = round(budget.price.cost(entry["tokens_in"], entry["tokens_out"]), 10)
                total, any_price = total + entry["cost_usd"], True
            priced_models[model] = entry
        out = {**stats, "models": priced_models}
        if any_price:
            out["cost_usd"] = round(total, 10)
        return out


def run_usage(stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model over a run's steps (stats.json): tokens in, out and cost (when priced), for the report and card."""
    totals: dict[str, dict[str, Any]] = {}
    for step in stats.values():
        for model, entry in (step.get("models") or {}).items():
            into = totals.setdefault(model, {"tokens_in": 0, "tokens_out": 0})
            into["tokens_in"] += int(entry.get("tokens_in", 0))
            into["tokens_out"] += int(entry.get("tokens_out", 0))
            if "cost_usd" in entry:
                into["cost_usd"] = round(into.get("cost_usd", 0.0) + float(entry["cost_usd"]), 10)
    return totals
