"""The step contract: one batch seed, the context passed explicitly, columns declared once, per-record filters,
each step's loop phase declared on its class."""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import pytest

from rlaif.config import ConfigError
from rlaif.loop.report import phase_times, step_phase
from rlaif.pipeline.runtime import EngineRuntime
from rlaif.pipeline.spec import ModelSpec
from rlaif.steps.base import (
    NoEngines,
    ParamColumn,
    Quarantine,
    Step,
    StepContext,
    StepParams,
    batch_seed,
    filter_records,
)
from rlaif.steps.registry import STEPS, step_class


def _old_formula(pipeline_seed: int, model_seed: int | None, step: str, batch: int) -> int:
    # What EngineRuntime.sampling derived before the seed had a function of its own: seeded outputs must not move.
    key = f"{pipeline_seed}/{model_seed}/{step}/{batch}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") & 0x7FFFFFFF


@pytest.mark.parametrize("args", [(0, None, "responses", 0), (7, 3, "judged", 12), (123, 0, "x", 5)])
def test_batch_seed_is_the_formula_seeded_runs_were_made_with(args):
    assert batch_seed(*args) == _old_formula(*args)
    assert 0 <= batch_seed(*args) < 2**31


def test_the_context_seeds_each_batch_and_keeps_the_other_sampling_values():
    models = {
        "policy": ModelSpec("policy", "vllm", "m", sampling={"temperature": 0.7, "seed": 3}),
        "judge": ModelSpec("judge", "vllm", "m", sampling={"temperature": 0.0}),
    }
    runtime = EngineRuntime(models, pipeline_seed=11)
    first, second = runtime.context("gen", 0), runtime.context("gen", 1)
    assert first.sampling("policy").seed == batch_seed(11, 3, "gen", 0)
    assert second.sampling("policy").seed == batch_seed(11, 3, "gen", 1)
    assert first.sampling("policy", seed=5).seed == batch_seed(11, 5, "gen", 0)  # a step's own seed
    assert first.sampling("judge").seed == first.seed == batch_seed(11, None, "gen", 0)
    assert first.sampling("policy", n=2).n == 2 and first.sampling("policy").temperature == 0.7
    assert runtime.sampling("policy").seed == 3  # the engines hand out the model's own seed, unseeded per batch
    assert first.model_reference("policy") == "m"
    with pytest.raises(NoEngines, match="'bare' needs a model"):
        StepContext("bare").sampling("policy")


class _ColumnsParams(StepParams):
    column: str = "text"
    extra: list[str] = []
    optional: str | None = None


class _Columns(Step):
    Params = _ColumnsParams
    inputs = (ParamColumn("column"), "fixed", ParamColumn("extra"), ParamColumn("optional"))


def test_inputs_name_columns_directly_or_through_a_parameter():
    step = _Columns("c", _ColumnsParams(column="body", extra=["a", "b"]), Path("."))
    assert step.required_columns() == {"body", "fixed", "a", "b"}
    assert _Columns("c", _ColumnsParams(optional="o"), Path(".")).required_columns() == {"text", "fixed", "o"}


def test_no_step_declares_its_inputs_twice():
    """A step declares ``inputs`` or computes ``required_columns``, never both: one source for its columns."""
    for name in STEPS:
        cls = step_class(name)
        overrides = cls.required_columns is not Step.required_columns
        assert not (cls.inputs and overrides), f"{name}: both `inputs` and a required_columns override"


def test_every_hook_takes_the_context():
    for name in STEPS:
        cls = step_class(name)
        hook = cls.read if cls.is_source else cls.process
        assert "ctx" in inspect.signature(hook).parameters, name
        assert "ctx" in inspect.signature(cls.setup).parameters, name


def test_filter_records_keeps_drops_and_quarantines_by_verdict():
    def verdict(record):
        if record["n"] < 0:
            raise Quarantine("negative", f"n = {record['n']}")
        return "odd" if record["n"] % 2 else None

    result = filter_records([{"n": 2}, {"n": 3}, {"n": -1}, {"n": 4}], verdict)
    assert [r["n"] for r in result.records] == [2, 4]
    assert result.dropped == [({"n": 3}, "odd")]
    [quarantined] = result.quarantined
    assert (quarantined.record, quarantined.reason, quarantined.detail) == ({"n": -1}, "negative", "n = -1")


def test_each_step_declares_its_loop_phase():
    phases = {name: step_class(name).phase for name in STEPS}
    assert {n for n, p in phases.items() if p == "generate"} == {
        "generate_responses",
        "self_instruct",
        "evol_instruct",
        "magpie",
        "best_of_n",
        "add_constraints",
    }
    assert {n for n, p in phases.items() if p == "label"} == {
        "pairwise_judge",
        "rating_judge",
        "constitutional_judge",
        "critique_revise",
        "reward_model_score",
        "verify",
    }
    assert step_phase("plugins.Upper") == "filter"  # a plugin's default
    assert step_phase("no_such_module.Step") == "filter"


def test_the_report_reads_a_plugin_steps_phase_from_its_class():
    stats = {
        "a": {"type": "plugins.Labeller", "wall_s": 2.0},
        "b": {"type": "generate_responses", "wall_s": 1.0},
        "c": {"type": "dedup", "wall_s": 0.5},
        "d": {"type": "pairwise_judge", "wall_s": 4.0, "cached": True},
    }
    assert phase_times(stats) == {"generate": 1.0, "label": 2.0, "filter": 0.5}


def test_record_digest_is_the_hash_per_record_draws_were_made_with():
    from rlaif.steps.base import record_digest

    parts = (0, 3, "judged", "Human: hi", "a", "b")
    assert record_digest(*parts) == hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()


def test_a_plugin_filter_runs_in_a_pipeline_and_accounts_for_every_record(tmp_path):
    from rlaif.pipeline.run import run_pipeline
    from rlaif.pipeline.spec import load_pipeline

    records = [{"prompt": "one two three"}, {"prompt": "too short"}, {"prompt": None}, {"prompt": "a b c d"}]
    (tmp_path / "p.yaml").write_text(
        "name: plugin\nmodels: {}\nsteps:\n"
        f"  - {{name: src, type: inline, records: {json.dumps(records)}}}\n"
        "  - {name: kept, type: plugins.MinWords, from: src, min_words: 3}\n"
        f"output: {{save: {tmp_path / 'out'}}}\n"
    )
    summary = run_pipeline(load_pipeline(tmp_path / "p.yaml"), run_dir=tmp_path / "run")
    stats = summary.stats["kept"]
    assert (stats["records_in"], stats["records_out"]) == (4, 2)
    assert stats["dropped"] == {"too few words": 1} and stats["quarantined"] == {"not text": 1}
    bad = (tmp_path / "p.yaml").read_text().replace("min_words: 3", "min_words: 3, column: nope")
    (tmp_path / "bad.yaml").write_text(bad)
    with pytest.raises(ConfigError, match="nope"):  # the declared input is checked before the run
        load_pipeline(tmp_path / "bad.yaml")
