"""Experiment trackers (train.report_to, a loop's report_to): config errors before any model loads, tensorboard event
files and trackio's local store written and read back — for a TRL recipe (transformers' own integrations), for
rlaif's PPO loop (the same names and values as its metrics.jsonl) and for the loop's own per-round run."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest
import yaml

from rlaif.config import ConfigError
from rlaif.train.config_load import load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "pipelines" / "train"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "train"
SECRET = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz012345"  # the shape of a Hugging Face token, not a real one

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def _sft(out: Path, *overrides: str, model: str = "builtin:smollm2-135m-instruct"):
    base = [f"model.name={model}", f"data.path={FIXTURES / 'sft.jsonl'}", f"train.output_dir={out}"]
    overrides = (*base, "train.max_steps=2", "train.save_steps=1000", *overrides)
    return load_config(CONFIGS / "sft.yaml", "sft", list(overrides), cpu=True)


def _scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar of the tensorboard event files in ``log_dir``: tag -> {step: value}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def _trackio_logs(project: str, run: str) -> list[dict]:
    from trackio.sqlite_storage import SQLiteStorage

    return SQLiteStorage.get_logs(project, run)


@pytest.fixture(autouse=True)
def _no_tracker_env(monkeypatch):
    """The folders under test are rlaif's defaults, not a developer's own settings."""
    for key in ("TENSORBOARD_LOGGING_DIR", "WANDB_PROJECT", "WANDB_RUN_GROUP", "WANDB_DIR", "MLFLOW_TAGS"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def trackio_dir(tmp_path_factory, monkeypatch) -> Path:
    """One trackio store for this module's runs: trackio fixes its directory at its first import in a process."""
    imported = sys.modules.get("trackio.utils")
    store = Path(imported.TRACKIO_DIR) if imported else tmp_path_factory.mktemp("trackio")
    monkeypatch.setenv("TRACKIO_DIR", str(store))
    return store


# -- configs: fast, no model --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("none", []),
        ("tensorboard", ["tensorboard"]),
        ("[tensorboard, trackio, tensorboard]", ["tensorboard", "trackio"]),
    ],
)
def test_report_to_takes_none_a_name_or_a_list(tmp_path, value, expected):
    cfg = _sft(tmp_path / "out", f"train.report_to={value}")
    assert cfg.train.report_to == expected
    assert cfg.train.tracker_run_name() == "out" and cfg.train.project == "rlaif"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.report_to=tensorbord", "unknown tracker 'tensorbord' (did you mean 'tensorboard'?)"),
        ("train.report_to=[none, trackio]", "'none' means no tracker"),
        ("train.report_to=3", "report_to is a tracker name or a list"),
        ("train.report_to=wandb", "wandb is not installed: pip install wandb"),
        ("train.report_to=[mlflow]", "mlflow is not installed: pip install mlflow"),
        (f"train.trl={{hub_token: {SECRET}}}", "train.trl.hub_token: 'hub_token' holds a credential"),
        (f"train.run_name={SECRET}", "train.run_name: this value looks like a Hugging Face token"),
    ],
)
def test_tracker_config_errors_name_the_place_before_any_model(monkeypatch, tmp_path, override, expected):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("wandb", "mlflow") else real(name, *a)
    )
    with pytest.raises(ConfigError) as error:
        _sft(tmp_path / "out", override)
    assert expected in str(error.value) and SECRET not in str(error.value)  # a secret is never echoed back
    assert f"override {override.replace(SECRET, '[REDACTED]')!r}" in str(error.value)


def test_a_token_in_a_training_or_loop_file_names_its_line(tmp_path):
    from rlaif.loop.config import load_loop_config

    marked = f"  save_steps: 100\n  project: {SECRET}\n"
    text = (CONFIGS / "sft.yaml").read_text().replace("  save_steps: 100\n", marked)
    config = tmp_path / "sft.yaml"
    config.write_text(text)
    line = text.splitlines().index(f"  project: {SECRET}") + 1
    with pytest.raises(ConfigError, match=rf"sft.yaml:{line}: train.project: this value looks like a Hugging Face"):
        load_config(config, "sft", [f"data.path={FIXTURES / 'sft.jsonl'}"])
    loop = ROOT / "pipelines" / "loop_verified.yaml"
    with pytest.raises(ConfigError, match=r"override 'report_to=tensorbord'.*did you mean 'tensorboard'"):
        load_loop_config(loop, ["report_to=tensorbord"])
    with pytest.raises(ConfigError, match="wandb_api_key' holds a credential") as error:
        load_loop_config(loop, ["wandb_api_key=abc123"])
    assert "abc123" not in str(error.value)


def test_tracker_env_points_the_integrations_at_the_output_dir_and_restores(monkeypatch, tmp_path):
    from rlaif.train.trackers import tracker_env

    for key in ("TENSORBOARD_LOGGING_DIR", "TRACKIO_DIR", "WANDB_PROJECT", "WANDB_RUN_GROUP", "WANDB_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_PROJECT", "mine")  # the user's own setting wins
    with tracker_env(["tensorboard", "wandb"], tmp_path, "rlaif", "loop"):
        assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "tensorboard")
        assert os.environ["WANDB_PROJECT"] == "mine" and os.environ["WANDB_RUN_GROUP"] == "loop"
        assert "TRACKIO_DIR" not in os.environ  # only the trackers asked for
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ and "WANDB_RUN_GROUP" not in os.environ
    assert os.environ["WANDB_PROJECT"] == "mine"


# -- the loop: run names, groups and its own per-round run ------------------------------------------------------
def test_loop_names_each_rounds_stage_run_and_groups_them(tmp_path):
    from rlaif.loop.config import load_loop_config
    from rlaif.loop.rounds import round_paths, stage_overrides

    cfg = load_loop_config(ROOT / "pipelines" / "loop_verified.yaml", ["report_to=[tensorboard]", 'project="2026"'])
    [stage] = cfg.train
    overrides = stage_overrides(cfg, stage, round_paths(tmp_path, 2), None, {})
    train = load_config(cfg.resolve(stage.file), stage.recipe, overrides, cpu=True).train
    assert (train.run_name, train.group, train.report_to, train.project) == (
        "loop_verified-round-2",
        "loop_verified",
        ["tensorboard"],
        "2026",
    )
    # Without a loop-level report_to, each stage keeps its own file's trackers, still named and grouped.
    plain = load_loop_config(ROOT / "pipelines" / "loop_verified.yaml")
    train = load_config(
        cfg.resolve(stage.file), stage.recipe, stage_overrides(plain, stage, round_paths(tmp_path, 1), None, {})
    ).train
    assert (train.run_name, train.report_to) == ("loop_verified-round-1", [])


def test_the_loops_own_run_logs_each_rounds_figures_at_its_round(tmp_path, trackio_dir):
    from rlaif.loop.config import load_loop_config
    from rlaif.loop.trackers import LoopTrackers

    cfg = load_loop_config(
        ROOT / "pipelines" / "loop_verified.yaml",
        [f"output_dir={tmp_path}", "report_to=[tensorboard, trackio]", "project=rlaif-test-loop"],
    )
    base = {"round": 0, "eval": {"kind": "verifier", "pass_rate": 0.25, "pass_rate_ci95": [0.1, 0.4], "n": 48}}
    one = {
        "round": 1,
        "prompts": 35,
        "kept": 20,
        "trained": True,
        "train": {"loss": 0.6, "steps": 4, "stages": {"train": {"loss": 0.6}}},
        "eval": {"kind": "verifier", "pass_rate": 0.5, "vs_base": {"difference": 0.25}},
        "seconds": {"train": 12.5},
    }
    trackers = LoopTrackers(cfg, tmp_path)
    trackers.round_done([base, one])
    scalars = _scalars(tmp_path / "tensorboard")
    assert scalars["eval/pass_rate"] == {0: 0.25, 1: 0.5}
    assert scalars["eval/pass_rate_ci95_low"] == {0: pytest.approx(0.1)}
    assert scalars["eval/vs_base/difference"] == {1: 0.25} and scalars["data/kept"] == {1: 20}
    assert scalars["train/loss"] == {1: pytest.approx(0.6)} and scalars["seconds/train"] == {1: 12.5}
    assert not any(tag.startswith("train/stages") or tag == "eval/kind" for tag in scalars)
    logs = _trackio_logs("rlaif-test-loop", "loop_verified")
    assert {row["step"]: row["eval/pass_rate"] for row in logs} == {0: 0.25, 1: 0.5}
    assert (trackio_dir / "rlaif-test-loop.db").is_file()


def test_the_trl_trackio_run_stays_open_through_the_final_evaluation(trackio_dir):
    import trackio

    from rlaif.train.trackers import _GroupedTrackio, finish_trackio

    grouped = _GroupedTrackio(trackio, "g")  # what transformers' TrackioCallback calls, after adopt_trl
    grouped.init(project="rlaif-test-open", name="r", resume="allow")
    grouped.log({"train/loss": 1.0})
    grouped.finish()  # on_train_end: deferred
    trackio.log({"profiling/Time taken: generate": 0.5})  # what TRL's GRPO/RLOO log during the final evaluation
    finish_trackio()  # the end of the recipe (tracker_env)
    assert trackio.context_vars.current_run.get() is None
    logs = _trackio_logs("rlaif-test-open", "r")
    assert any("profiling/Time taken: generate" in row for row in logs) and any("train/loss" in row for row in logs)
    from trackio.sqlite_storage import SQLiteStorage

    assert SQLiteStorage.get_run_config("rlaif-test-open", "r")["_Group"] == "g"


# -- real runs on the tiny model ----------------------------------------------------------------------------------
@pytest.mark.model
def test_a_trl_recipe_reports_to_tensorboard_and_trackio(tiny_model_dir, tmp_path, trackio_dir, capsys):
    from rlaif.train.recipes import run_recipe

    out = tmp_path / "sft"
    cfg = _sft(
        out,
        "train.report_to=[tensorboard, trackio]",
        "train.project=rlaif-test-trl",
        "train.group=g1",
        model=str(tiny_model_dir),
    )
    run_recipe(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = {row["step"]: row["loss"] for row in rows if "loss" in row}
    assert sorted(losses) == [1, 2]
    # transformers' TensorBoardCallback, pointed at <output_dir>/tensorboard: train/ and eval/ prefixes are its own.
    scalars = _scalars(out / "tensorboard")
    assert scalars["train/loss"] == pytest.approx(losses, rel=1e-5)
    assert set(scalars["eval/loss"]) == {2}  # the final evaluation
    logs = _trackio_logs("rlaif-test-trl", "sft")  # run name: the output dir's folder name
    # transformers' callback logs the trainer's step as train/global_step (trackio's own step counts log calls).
    trained = {row["train/global_step"]: row["train/loss"] for row in logs if "train/loss" in row}
    assert trained == pytest.approx(losses, rel=1e-5)
    assert any("eval/loss" in row for row in logs)  # the final evaluation reaches the same run
    assert "Trackio" not in capsys.readouterr().out  # trackio's banner went to the log, not to stdout


@pytest.mark.model
def test_ppo_reports_its_metrics_jsonl_rows_under_the_same_names(tiny_model_dir, tmp_path, trackio_dir):
    from rlaif.train.recipes import run_recipe

    out = tmp_path / "ppo"
    cfg = load_config(
        CONFIGS / "ppo.yaml",
        "ppo",
        [
            f"model.name={tiny_model_dir}",
            f"train.output_dir={out}",
            "train.max_steps=2",
            "train.save_steps=1000",
            "reward.judge=null",
            "reward.function=length_penalty",
            "lora.r=4",
            "train.report_to=[tensorboard, trackio]",
            "train.project=rlaif-test-ppo",
            "train.run_name=ppo-run",
        ],
        cpu=True,
    )
    run_recipe(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected: dict[str, dict[int, float]] = {}
    for row in (row for row in rows if "event" not in row):
        for key, value in row.items():
            if key not in ("step", "event") and isinstance(value, int | float) and math.isfinite(value):
                expected.setdefault(key, {})[row["step"]] = value
    assert {"loss/policy_avg", "objective/kl", "eval_score"} <= set(expected)
    scalars = _scalars(out / "tensorboard")
    assert set(scalars) == set(expected)
    for key, by_step in expected.items():
        assert scalars[key] == pytest.approx(by_step, rel=1e-5, abs=1e-6), key
    steps: dict[int, dict] = {}
    for row in _trackio_logs("rlaif-test-ppo", "ppo-run"):
        steps.setdefault(row["step"], {}).update(row)
    assert steps[2]["loss/policy_avg"] == pytest.approx(expected["loss/policy_avg"][2], rel=1e-6)
    assert steps[2]["eval_score"] == pytest.approx(expected["eval_score"][2], rel=1e-6)


def _tiny_loop(tmp_path: Path, model: Path) -> Path:
    """A 1-round verifier loop of the tiny model (hf backend, ifeval labels, QLoRA DPO, verifier eval) reporting to
    tensorboard and trackio."""
    topics = str(ROOT / "pipelines" / "data" / "verified_topics.jsonl")
    policy = {"backend": "hf", "model": str(model), "temperature": 1.0, "max_tokens": 8}
    steps = [
        {"name": "prompts", "type": "load", "path": topics},
        {
            "name": "constrained",
            "type": "add_constraints",
            "from": "prompts",
            "k": 1,
            "seed": 0,
            "types": ["no_commas"],
        },
        {"name": "responses", "type": "generate_responses", "from": "constrained", "model": "policy", "n": 4},
        {"name": "verified", "type": "verify", "from": "responses", "verifier": "ifeval", "unverifiable": "keep"},
    ]
    pairs = {"name": "pairs", "type": "make_pairs", "from": "verified", "score_column": "rewards"}
    data = {"name": "data", "seed": 0, "models": {"policy": policy}, "steps": [*steps, pairs]}
    greedy = {**policy, "temperature": 0.0}
    evaluation = {
        "name": "eval",
        "seed": 0,
        "models": {"policy": greedy},
        "steps": [*steps[:2], {**steps[2], "n": 1}, steps[3]],
    }
    loop = {
        "name": "tiny_loop",
        "rounds": 1,
        "output_dir": str(tmp_path / "run"),
        "report_to": ["tensorboard", "trackio"],
        "project": "rlaif-test-loop-run",
        "prompts": {"path": topics, "held_out": 8, "per_round": 12},
        "pipeline": {"file": "data.yaml"},
        "train": {
            "file": str(CONFIGS / "dpo.yaml"),
            "overrides": [f"model.name={model}", "data.test_size=0", "train.max_steps=2", "train.max_length=64"],
        },
        "eval": {"kind": "verifier", "file": "eval.yaml"},
    }
    for name, spec in (("data", data), ("eval", evaluation), ("loop", loop)):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return tmp_path / "loop.yaml"


@pytest.mark.model
@pytest.mark.slow
def test_a_real_loop_logs_a_run_per_round_and_its_own_figures(tiny_model_dir, tmp_path, trackio_dir):
    from trackio.sqlite_storage import SQLiteStorage
    from typer.testing import CliRunner

    from rlaif.cli import app

    loop = _tiny_loop(tmp_path, tiny_model_dir)
    result = CliRunner().invoke(app, ["loop", str(loop), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "Trackio" not in result.output  # trackio's prints went to the log
    run = tmp_path / "run"
    rows = json.loads((run / "summary.json").read_text())
    losses = {
        row["step"]: row["loss"]
        for row in map(json.loads, (run / "round-1" / "train" / "metrics.jsonl").read_text().splitlines())
        if "loss" in row
    }
    assert _scalars(run / "round-1" / "train" / "tensorboard")["train/loss"] == pytest.approx(losses, rel=1e-5)
    figures = _scalars(run / "tensorboard")  # the loop's own run: step = round, round 0 the base policy
    assert figures["eval/pass_rate"] == pytest.approx({k: rows[k]["eval"]["pass_rate"] for k in (0, 1)})
    assert figures["data/kept"] == {1: rows[1]["kept"]} and set(figures["seconds/train"]) == {1}
    project = "rlaif-test-loop-run"
    assert set(SQLiteStorage.get_runs(project)) == {"tiny_loop-round-1", "tiny_loop"}
    for name in ("tiny_loop-round-1", "tiny_loop"):
        assert SQLiteStorage.get_run_config(project, name)["_Group"] == "tiny_loop"
    # A re-run reads the finished round back and logs nothing again.
    events = sorted((run / "tensorboard").iterdir())
    assert CliRunner().invoke(app, ["loop", str(loop), "--no-progress"]).exit_code == 0
    assert sorted((run / "tensorboard").iterdir()) == events
