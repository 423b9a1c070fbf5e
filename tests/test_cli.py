"""The ``rlaif`` command line, run in-process with typer's runner."""

from __future__ import annotations

import json
import re
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
    assert result.exit_code == 2  # a usage error
    assert "--n" in result.output


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


# -- one behaviour for every command: exit codes, -v/-q anywhere, --version, --json, stdout = results ---------------
@pytest.fixture(autouse=True)
def _restore_logging_and_environment():
    """The CLI routes logs process-wide (root handlers, captureWarnings, variables for child processes): undo it."""
    import logging
    import os

    from rlaif import logs

    before = dict(os.environ)
    yield
    for key in set(os.environ) - set(before):
        del os.environ[key]
    os.environ.update(before)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logs.StderrHandler | logs.LogFileHandler)]:
        root.removeHandler(handler)
        handler.close()
    logging.captureWarnings(False)


BROKEN = "name: b\nmodels: {}\nsteps:\n  - {name: s, type: lod}\n"  # line 4: an unknown step type


def test_the_same_config_error_exits_2_from_every_command(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN)
    commands = {
        "validate": ["validate", str(bad)],
        "run": ["run", str(bad)],
        "show": ["show", str(bad)],
        "loop": ["loop", str(bad)],  # a pipeline file given to loop: says so
        "train": ["train", "sft", str(bad)],  # ... and to train
        "judge-eval": ["judge-eval", str(bad), "--step", "s", "--data", str(bad)],
    }
    for name, args in commands.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (name, result.output)
        assert str(bad) in result.stderr and "Traceback" not in result.output, (name, result.output)
        assert result.stdout == "", (name, result.stdout)  # errors are not results
    assert f"{bad}:4:" in runner.invoke(app, ["run", str(bad)]).stderr
    assert "this is a pipeline file" in runner.invoke(app, ["loop", str(bad)]).stderr


@pytest.mark.parametrize("count", ["0", "-1"])
def test_dry_run_of_no_records_is_a_usage_error(tmp_path, count):
    path = _tiny_pipeline(tmp_path)
    result = runner.invoke(app, ["run", str(path), "--dry-run", count, "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--dry-run" in result.output
    assert not (tmp_path / "run").exists()  # nothing ran


def test_usage_errors_exit_2():
    assert runner.invoke(app, ["run"]).exit_code == 2  # missing argument
    assert runner.invoke(app, ["nope"]).exit_code == 2  # unknown command
    assert runner.invoke(app, ["plan", "--params", "7B", "--lora-r", "0"]).exit_code == 2
    both = runner.invoke(app, ["-v", "validate", "x.yaml", "-q"])
    assert both.exit_code == 2 and "not both" in both.output


def test_version():
    import rlaif

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"rlaif {rlaif.__version__}\n"


def _tiny_pipeline(tmp_path: Path, extra: str = "") -> Path:
    """No model: inline records, one step that drops odd ids (tests/plugins.py)."""
    path = tmp_path / "tiny.yaml"
    records = "".join(f"      - {{id: {i}}}\n" for i in range(6))
    path.write_text(
        "name: tiny\nsteps:\n  - name: rows\n    type: inline\n    records:\n"
        + records
        + "  - {name: even, type: plugins.DropOdd, from: rows}\n"
        + extra
    )
    return path


def test_verbosity_options_work_after_the_subcommand(tmp_path):
    import logging

    from rlaif import logs

    path = _tiny_pipeline(tmp_path, f"output: {{save: {tmp_path / 'data'}}}\n")  # output.save: a deprecation warning
    warned = runner.invoke(app, ["validate", str(path)])
    assert warned.exit_code == 0 and "`output.save` is deprecated" in warned.stderr
    for args in (["validate", str(path), "-q"], ["-q", "validate", str(path)]):
        quiet = runner.invoke(app, args)
        assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr  # -q: results and errors only
    library = logging.getLogger("transformers.modeling_utils")
    for args, shown in ((["validate", str(path)], False), (["validate", str(path), "-v"], True)):
        assert runner.invoke(app, args).exit_code == 0
        handler = next(h for h in logging.getLogger().handlers if isinstance(h, logs.StderrHandler))
        record = library.makeRecord(library.name, logging.WARNING, __file__, 1, "a library warning", None, None)
        assert all(f.filter(record) for f in handler.filters) is shown


def test_validate_json(tmp_path):
    good, bad = _tiny_pipeline(tmp_path), tmp_path / "bad.yaml"
    bad.write_text(BROKEN)
    result = runner.invoke(app, ["validate", str(good), str(bad), "--json"])
    assert result.exit_code == 2
    reports = json.loads(result.stdout)
    assert [r["ok"] for r in reports] == [True, False]
    assert reports[0] == {**reports[0], "file": str(good), "kind": "pipeline", "problems": []}
    assert "2 steps" in reports[0]["summary"]
    [problem] = reports[1]["problems"]
    assert problem["file"] == str(bad) and problem["line"] == 4 and "lod" in problem["message"]


def test_run_prints_results_on_stdout_and_the_summary_fits_80_columns(tmp_path):
    path = _tiny_pipeline(tmp_path)
    result = runner.invoke(app, ["run", str(path), "--output-dir", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "dropped by even: odd id: 3 records" in lines
    assert any(line.startswith("saved even: 3 rows -> ") for line in lines)
    assert max(map(len, lines[: lines.index("dropped by even: odd id: 3 records")])) <= 80
    assert (tmp_path / "run" / "library.log").is_file() and (tmp_path / "run" / "dataset").is_dir()


def test_summary_table_keeps_long_reasons_out_of_its_cells():
    from io import StringIO

    from rich.console import Console

    from rlaif.pipeline.progress import summary_view

    reason = "no 'instruction' field; the record has ['chosen', 'rejected'] and nothing else to read"
    # large counts and a long run: the widest numbers a summary shows
    step = {"records_in": 160000, "records_out": 120000, "tokens_in": 123456, "tokens_out": 6543210, "wall_s": 12345.6}
    stats = {
        "responses_policy": {**step, "dropped": {"length ratio": 4}, "quarantined": {}, "records_per_s": 12.3},
        "judged": {**step, "dropped": {}, "quarantined": {reason: 1, "step raised TypeError": 3}, "cached": True},
    }
    out = StringIO()
    Console(file=out, width=80).print(summary_view(stats))
    text = out.getvalue().splitlines()
    rows = [line for line in text if line.startswith(("responses_policy", "judged"))]
    table = text[: text.index(rows[-1]) + 1]
    assert len(rows) == 2 and len(table) == 5 and all(len(line) <= 80 for line in table)  # title, header, rule
    assert rows[0].split() == ["responses_policy", "160000", "120000", "4", "0", "123k/6.5M", "12345.6", "12.3"]
    assert rows[1].split() == ["judged", "160000", "120000", "0", "4", "123k/6.5M", "cached", "-"]
    assert "dropped by responses_policy: length ratio: 4 records" in text
    assert "quarantined by judged: step raised TypeError: 3 records" in text
    assert any(line.startswith(f"quarantined by judged: {reason[:40]}") for line in text)


def test_every_option_has_help_and_says_its_default():
    import typer.main

    def leaves(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from leaves(sub, [*path, name])
        if not hasattr(cmd, "commands"):
            yield path, cmd

    missing = []
    for path, cmd in leaves(typer.main.get_command(app), ["rlaif"]):
        for param in cmd.params:
            if param.param_type_name != "option" or param.name in ("verbose", "quiet") or param.hidden:
                continue
            if not param.help:
                missing.append(f"{' '.join(path)} {param.opts[0]}: no help")
            if not param.required and not param.show_default:
                missing.append(f"{' '.join(path)} {param.opts[0]}: no default shown")
    assert not missing, missing


def test_train_help_shows_its_own_recipe_example():
    for recipe in ("sft", "rm", "dpo", "kto", "ppo"):
        result = runner.invoke(app, ["train", recipe, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0
        assert f"rlaif train {recipe} pipelines/train/{recipe}.yaml" in result.stdout
        others = {"sft", "rm", "dpo", "kto", "ppo"} - {recipe}
        assert not any(f"pipelines/train/{other}.yaml" in result.stdout for other in others), recipe


def test_run_dir_is_a_deprecated_alias_of_output_dir(tmp_path):
    path = _tiny_pipeline(tmp_path)
    result = runner.invoke(app, ["run", str(path), "--run-dir", str(tmp_path / "old"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "--run-dir is deprecated: use --output-dir" in result.stderr
    assert (tmp_path / "old" / "stats.json").is_file()
    both = runner.invoke(app, ["run", str(path), "--run-dir", "a", "--output-dir", "b"])
    assert both.exit_code == 2


def test_the_pipeline_file_names_its_output_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _tiny_pipeline(tmp_path, "output_dir: out/here\n")
    result = runner.invoke(app, ["run", str(path), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "here" / "dataset").is_dir() and not (tmp_path / "runs").exists()
    bad = runner.invoke(app, ["run", str(path), "output_dir=3"])
    assert bad.exit_code == 2 and "override 'output_dir=3'" in bad.stderr
    typed = _tiny_pipeline(tmp_path, "output_dir: [a]\n")
    result = runner.invoke(app, ["validate", str(typed)])
    assert result.exit_code == 2 and "output_dir must be a directory path" in result.output


@pytest.mark.model
def test_generate_json(tiny_model_dir):
    args = ["generate", "--model", str(tiny_model_dir), "--backend", "hf", "--max-tokens", "4", "--seed", "1"]
    result = runner.invoke(app, [*args, "--n", "2", "--prompt", "one", "--prompt", "two", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"] == str(tiny_model_dir) and [r["prompt"] for r in data["results"]] == ["one", "two"]
    for row in data["results"]:
        assert row["ok"] is True and row["error"] is None and len(row["completions"]) == 2
        for completion in row["completions"]:
            assert set(completion) == {"text", "completion_tokens", "finish_reason"}
            assert 1 <= completion["completion_tokens"] <= 4 and isinstance(completion["text"], str)


@pytest.mark.engine
def test_generate_prints_only_the_completions_on_stdout(tmp_path):
    """The real vLLM engine in a real process, output redirected: no engine warnings on stdout (vLLM's own handler
    writes there), no 80-column wrapping; without -v no library warnings on stderr either."""
    import subprocess
    import sys

    prompt = "Write one long sentence about the sea, the sky and the mountains far away."
    args = ["generate", "--model", "builtin:smollm2-135m-instruct", "--prompt", prompt, "--max-tokens", "48"]
    command = [sys.executable, "-m", "rlaif.cli", *args, "--temperature", "0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rule, header, *text = done.stdout.splitlines()
    assert set(rule.replace(prompt[:80], "")) == {"─", " "}
    assert re.fullmatch(r"\[0\] \((\d+) tokens, (stop|length)\)", header), done.stdout
    assert len(text) == 1 and len(text[0]) > 80, done.stdout  # the completion (one sentence), unwrapped
    for noise in ("WARNING", "INFO", "vllm", "Loading safetensors", "LD_PRELOAD"):
        assert noise not in done.stdout and noise not in done.stderr, noise
