"""The ``rlaif`` command line, run in-process with typer's runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlaif.cli import app

runner = CliRunner()


@pytest.mark.model
def test_generate_prints_n_completions_per_prompt(tiny_model_dir):
    args = [
        "generate",
        "--model",
        str(tiny_model_dir),
        "--backend",
        "hf",
        "--n",
        "2",
        "--max-tokens",
        "6",
        "--seed",
        "3",
        "--prompt",
        "Hello there",
        "--prompt",
        "Second prompt",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("[0]") == 2 and result.output.count("[1]") == 2
    assert "Hello there" in result.output and "Second prompt" in result.output
    assert "tokens," in result.output


def test_generate_with_a_bad_model_reference_exits_2_with_what_was_tried(tmp_path):
    result = runner.invoke(app, ["generate", "--model", str(tmp_path / "missing"), "--prompt", "x", "--backend", "hf"])
    assert result.exit_code == 2
    assert "tried:" in result.output and "builtin:smollm2-135m-instruct" in result.output


@pytest.mark.model
def test_generate_rejects_bad_sampling_parameters(tiny_model_dir):
    result = runner.invoke(app, ["generate", "--model", str(tiny_model_dir), "--prompt", "x", "--n", "0"])
    assert result.exit_code != 0
    assert "n must be >= 1" in result.output


@pytest.mark.model
def test_models_list_and_pull(builtin_model_path):
    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0 and "builtin:smollm2-135m-instruct" in listed.output and "ready" in listed.output
    pulled = runner.invoke(app, ["models", "pull", "builtin:smollm2-135m-instruct"])
    assert pulled.exit_code == 0 and "ready at" in pulled.output
    unknown = runner.invoke(app, ["models", "pull", "builtin:nope"])
    assert unknown.exit_code == 2 and "unknown builtin model" in unknown.output


PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


def test_validate_detects_the_kind_of_each_file(tmp_path):
    files = [PIPELINES / "magpie.yaml", PIPELINES / "train" / "kto.yaml", PIPELINES / "rlaif_direct.yaml"]
    result = runner.invoke(app, ["validate", *map(str, files)])
    assert result.exit_code == 0, result.output
    assert "magpie.yaml — pipeline: 3 steps" in result.output
    assert "kto.yaml — training config: recipe kto" in result.output
    assert "rlaif_direct.yaml — loop: 2 rounds" in result.output
    missing = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml"), str(files[0])])
    assert missing.exit_code == 2 and f"{tmp_path / 'nope.yaml'}: file not found" in missing.output
    assert "✓" in missing.output  # the other files are still checked


def test_validate_names_file_and_line_of_a_bad_training_config(tmp_path):
    path = tmp_path / "rm.yaml"
    path.write_text((PIPELINES / "train" / "rm.yaml").read_text().replace("recipe: rm", "recipe: rm\nbogus: 1", 1))
    line = path.read_text().splitlines().index("bogus: 1") + 1
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2  # a config error
    assert f"{path}:{line}: bogus: unknown key 'bogus'" in result.output
