"""The one config layer (rlaif/config): located YAML, one override parser and one error type for pipeline, training
and loop files; every error names the file and the line. All fast: nothing here loads a model."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rlaif.cli import app
from rlaif.config import ConfigError, Located, Problem, apply_overrides, config_kind, load_yaml
from rlaif.loop.config import load_loop_config
from rlaif.pipeline.spec import load_pipeline
from rlaif.schema import GenerationParams, sampling_problems
from rlaif.train.config_load import load_any_config, load_config

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = ROOT / "pipelines"
SHIPPED = sorted([*PIPELINES.glob("*.yaml"), *PIPELINES.glob("train/*.yaml"), *PIPELINES.glob("loop/*.yaml")])

DPO = """\
recipe: dpo
model:
  name: builtin:smollm2-135m-instruct
  quantize: fp3
data:
  path: runs/x
train:
  output_dir: runs/t
  learning_rat: 1.0e-5
  beta: 0.1
"""


def _messages(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [str(p) for p in exc.value.problems]


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# -- the layer itself --------------------------------------------------------------------------------------------
def test_config_package_imports_nothing_else_from_rlaif():
    for module in (ROOT / "rlaif" / "config").glob("*.py"):
        tree = ast.parse(module.read_text())
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        outside = [m for m in imported if m.startswith("rlaif") and not m.startswith("rlaif.config")]
        assert not outside, f"{module.name} imports {outside}"


def test_one_error_type_everywhere():
    import rlaif.train.config

    assert rlaif.train.config.ConfigError is ConfigError
    assert issubclass(ConfigError, ValueError)
    error = ConfigError("no CUDA GPU here")  # a bare message is one problem that names no file
    assert [str(p) for p in error.problems] == ["no CUDA GPU here"] and "1 problem:" in str(error)
    assert str(ConfigError.one("a.yaml", "bad", 3).problems[0]) == "a.yaml:3: bad"


def test_located_yaml_keeps_lines_and_overrides_reach_lists_by_name(tmp_path):
    path = _write(tmp_path / "x.yaml", "a:\n  b: 1\nsteps:\n  - {name: s, n: 1}\nlora: null\n")
    located = load_yaml(path)
    assert located.line(("a", "b")) == 2 and located.line(("steps", 0, "n")) == 4
    assert located.line(("a", "missing", "deep")) == 1  # nearest ancestor with a line
    apply_overrides(located, ["a.b=2", "steps.s.n=[1, 2]", "lora.r=8", " a.c = x"])
    assert located.data["a"] == {"b": 2, "c": "x"} and located.data["steps"][0]["n"] == [1, 2]
    assert located.data["lora"] == {"r": 8}  # a null parent becomes a mapping (train: `lora=null` then `lora.r=8`)
    with pytest.raises(ConfigError) as error:
        apply_overrides(located, ["a.b.c=1", "steps.t.n=1", "oops"])
    found = _messages(error)
    assert found[0] == "<command line>: override 'a.b.c=1': a.b is not a mapping"
    assert "no item named 't' at steps.t; names: ['s']" in found[1]
    assert "override 'oops' is not key=value" in found[2]


def test_config_kind_is_read_from_the_top_level_keys():
    assert config_kind({"rounds": 2, "train": {}}) == "loop"
    assert config_kind({"recipe": "dpo"}) == "train"
    assert config_kind({"name": "x", "steps": []}) == "pipeline"
    assert config_kind([1, 2]) == "pipeline"
    kinds = {p.name: config_kind(yaml.safe_load(p.read_text())) for p in SHIPPED}
    assert (
        kinds["loop_quickstart.yaml"] == "loop"
        and kinds["dpo.yaml"] == "train"
        and kinds["magpie.yaml"] == ("pipeline")
    )


# -- training configs --------------------------------------------------------------------------------------------
def test_a_broken_training_config_names_file_and_line_of_every_problem(tmp_path):
    path = _write(tmp_path / "dpo.yaml", DPO)
    with pytest.raises(ConfigError) as error:
        load_config(path, "dpo")
    found = _messages(error)
    assert f"{path}:4: model.quantize: Input should be 'nf4', 'int8' or 'none' (got 'fp3')" in found
    assert f"{path}:9: train.learning_rat: unknown key 'learning_rat' (did you mean 'learning_rate'?)" in found


def test_training_config_value_and_recipe_errors_name_the_line(tmp_path):
    path = _write(tmp_path / "dpo.yaml", DPO.replace("fp3", "nf4").replace("learning_rat", "learning_rate"))
    with pytest.raises(ConfigError) as error:
        load_config(path, "sft")
    assert _messages(error) == [f"{path}:1: recipe: dpo cannot run as `rlaif train sft`"]
    with pytest.raises(ConfigError) as error:
        load_config(path, "dpo", ["train.loss_type=magic"])
    # an override has no line of its own: the error names the override, not a line that never held the value
    [message] = _messages(error)
    assert message.startswith(f"{path}: override 'train.loss_type=magic': unknown loss_type 'magic'")
    bad = _write(tmp_path / "bad.yaml", "recipe: dpo\nmodel: {name: x\n")
    with pytest.raises(ConfigError, match=rf"{bad}:3: invalid YAML"):
        load_config(bad, "dpo")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", "dpo")


def test_overrides_work_for_training_configs():
    cfg = load_config(
        PIPELINES / "train" / "dpo.yaml",
        "dpo",
        ["train.max_steps=10", "lora.r=8", "train.trl={precompute_ref_log_probs: true}", "data.test_size=0"],
        cpu=True,
    )
    assert (cfg.train.max_steps, cfg.lora.r, cfg.data.test_size, cfg.cpu) == (10, 8, 0, True)
    assert cfg.train.trl == {"precompute_ref_log_probs": True}
    assert cfg.train.per_device_train_batch_size == 2  # the CPU profile still applies under overrides
    full = load_config(PIPELINES / "train" / "sft.yaml", "sft", ["lora=null", "model.quantize=none"])
    assert full.lora is None and full.model.quantize == "none"
    with pytest.raises(ConfigError, match="override 'train.beta.x=1': train.beta is not a mapping"):
        load_config(PIPELINES / "train" / "dpo.yaml", "dpo", ["train.beta.x=1"])


def test_a_training_config_validates_as_the_recipe_it_names(tmp_path):
    assert load_any_config(PIPELINES / "train" / "ppo.yaml").recipe == "ppo"
    path = _write(tmp_path / "x.yaml", DPO.replace("recipe: dpo", "recipe: magic"))
    with pytest.raises(ConfigError) as error:
        load_any_config(path)
    [message] = _messages(error)  # (recipes may be added after ppo)
    assert message.startswith(f"{path}:1: unknown recipe 'magic'; choices: sft, rm, dpo, kto, ppo")
    path.write_text(DPO.replace("recipe: dpo", "recipe: dp"))
    with pytest.raises(ConfigError) as error:
        load_any_config(path)
    [message] = _messages(error)
    assert message.startswith(f"{path}:1: unknown recipe 'dp' (did you mean 'dpo'?); choices: sft, rm, dpo, kto")


# -- loop files --------------------------------------------------------------------------------------------------
def _loop(tmp_path: Path, train_file: Path, **changes: object) -> Path:
    loop = yaml.safe_load((PIPELINES / "loop_quickstart.yaml").read_text())
    loop["prompts"]["path"] = str(PIPELINES / "data" / "loop_prompts.jsonl")
    loop["pipeline"]["file"] = str(PIPELINES / "loop" / "preferences.yaml")
    loop["eval"]["file"] = str(PIPELINES / "loop" / "eval.yaml")
    loop["train"]["file"] = str(train_file)
    loop.update(changes)
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(loop, sort_keys=False))
    return path


def test_a_broken_loop_file_names_file_and_line(tmp_path):
    path = _loop(tmp_path, PIPELINES / "train" / "dpo.yaml", rounds=0)
    lines = path.read_text().splitlines()
    with pytest.raises(ConfigError) as error:
        load_loop_config(path, ["prompts.held_out=0"])
    found = _messages(error)
    assert (
        f"{path}:{lines.index('rounds: 0') + 1}: rounds: Input should be greater than or equal to 1 (got 0)" in found
    )
    assert f"{path}: override 'prompts.held_out=0': Input should be greater than or equal to 1 (got 0)" in found


def test_a_loop_names_the_file_and_line_of_a_broken_training_config_it_uses(tmp_path):
    from rlaif.loop.rounds import check_loop

    train = _write(tmp_path / "dpo.yaml", DPO)
    cfg = load_loop_config(_loop(tmp_path, train, output_dir=str(tmp_path / "run")))
    with pytest.raises(ConfigError) as error:
        check_loop(cfg)  # validates as `rlaif loop` does before round 1, without writing the run directory
    found = _messages(error)
    assert f"{train}:4: model.quantize: Input should be 'nf4', 'int8' or 'none' (got 'fp3')" in found
    assert f"{train}:9: train.learning_rat: unknown key 'learning_rat' (did you mean 'learning_rate'?)" in found
    assert not (tmp_path / "run").exists()


def test_a_loop_policy_without_lora_names_the_model_line_in_the_pipeline(tmp_path):
    from rlaif.loop.rounds import check_loop

    text = (PIPELINES / "loop" / "preferences.yaml").read_text()
    prefs = tmp_path / "prefs.yaml"
    prefs.write_text(
        text.replace("enable_lora: true, max_lora_rank: 16}", "}", 1).replace("../data/", f"{PIPELINES}/data/")
    )
    path = _loop(tmp_path, PIPELINES / "train" / "dpo.yaml")
    cfg = load_loop_config(path, [f"pipeline.file={prefs}"])
    with pytest.raises(ConfigError) as error:
        check_loop(cfg)
    line = next(i for i, row in enumerate(prefs.read_text().splitlines(), 1) if row.strip().startswith("policy:"))
    assert any(m.startswith(f"{prefs}:{line}: model 'policy' serves LoRA adapters") for m in _messages(error))


# -- sampling values ---------------------------------------------------------------------------------------------
def test_sampling_problems_check_types_and_bounds():
    good = {"n": 2, "temperature": 0, "top_p": 1, "max_tokens": 1, "seed": None, "stop": ["\n"], "logprobs": 0}
    assert sampling_problems(good) == {}
    bad = {"n": 0, "temperature": -1, "top_p": 1.5, "max_tokens": "8", "seed": True, "stop": "x", "logprobs": -2}
    assert sampling_problems(bad) == {
        "n": "n must be >= 1, got 0",
        "temperature": "temperature must be >= 0, got -1",
        "top_p": "top_p must be in (0, 1], got 1.5",
        "max_tokens": "max_tokens must be int, got '8'",
        "seed": "seed must be int or null, got True",
        "stop": "stop must be a list of strings (e.g. [\"\\n\\n\"]), got 'x'",
        "logprobs": "logprobs must be >= 0, got -2",
    }
    with pytest.raises(ValueError, match="temperature must be >= 0, got -0.5"):
        GenerationParams(temperature=-0.5)


def test_temperature_minus_one_fails_validate_with_file_and_line(tmp_path):
    path = _write(
        tmp_path / "pipe.yaml",
        f"""\
        name: t
        models:
          policy:
            model: builtin:smollm2-135m-instruct
            temperature: -1
            top_p: 0
        steps:
          - {{name: seeds, type: load, path: {PIPELINES / "data" / "seed_prompts.jsonl"}}}
        """,
    )
    with pytest.raises(ConfigError) as error:
        load_pipeline(path)
    assert _messages(error) == [
        f"{path}:5: model 'policy': temperature must be >= 0, got -1",
        f"{path}:6: model 'policy': top_p must be in (0, 1], got 0",
    ]
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2  # a config error exits 2 from every command
    assert f"{path}:5: model 'policy': temperature must be >= 0, got -1" in result.output


# -- rlaif validate on every kind --------------------------------------------------------------------------------
def test_rlaif_validate_passes_on_every_shipped_yaml(monkeypatch):
    assert {"loop_8b.yaml", "rlhf_ppo.yaml", "dpo.yaml", "ppo.yaml", "quickstart.yaml"} <= {p.name for p in SHIPPED}
    # Offline (the tests' HF_HUB_OFFLINE=1), loop_8b's Llama is rightly "not in the local cache"; with the Hub
    # reachable every shipped file is valid.
    offline = CliRunner().invoke(app, ["validate", str(PIPELINES / "loop_8b.yaml")])
    assert offline.exit_code == 2 and "'meta-llama/Llama-3.1-8B-Instruct' is not in the local cache" in offline.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("rlaif.models.hub_reachable", lambda: True)
    result = CliRunner().invoke(app, ["validate", *map(str, SHIPPED)])
    assert result.exit_code == 0, result.output
    assert result.output.count("✓") == len(SHIPPED)
    assert "loop: 2 rounds" in result.output and "training config: recipe ppo" in result.output


def test_rlaif_validate_reports_each_kind_with_file_and_line(tmp_path):
    train = _write(tmp_path / "dpo.yaml", DPO)
    loop = _loop(tmp_path, train)
    result = CliRunner().invoke(app, ["validate", str(train), str(loop), str(PIPELINES / "magpie.yaml")])
    assert result.exit_code == 2
    assert result.output.count(f"{train}:9: train.learning_rat: unknown key 'learning_rat'") == 2
    assert f"✗ {loop}" in result.output and "✓" in result.output


def test_problem_without_a_line_prints_the_file_only():
    assert str(Problem("a.yaml", None, "x")) == "a.yaml: x"
    assert Located(data={}, file="f").problem(("k",), "m") == Problem("f", None, "m")
