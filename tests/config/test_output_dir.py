"""One name for where a run writes, ``output_dir``, in pipeline, training and loop files; the old names
(``output.save``, ``train.output_dir``, ``--run-dir``) still work for one release and warn with file:line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from rlaif.config import ConfigError
from rlaif.pipeline.run import dataset_dirs, default_run_dir
from rlaif.pipeline.spec import load_pipeline
from rlaif.train.config_load import load_config

TRAIN = Path(__file__).resolve().parents[2] / "pipelines" / "train"


def _training(tmp_path: Path, output: str) -> Path:
    path = tmp_path / "sft.yaml"
    path.write_text(
        "recipe: sft\n"
        "model: {name: builtin:smollm2-135m-instruct}\n"
        f"data: {{path: {tmp_path}}}\n"  # line 3
        f"{output}"
    )
    return path


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "rlaif.config" and r.levelno == logging.WARNING]


def test_training_output_dir_at_the_top_level(tmp_path, caplog):
    cfg = load_config(_training(tmp_path, "output_dir: runs/new\n"), "sft")
    assert cfg.train.output_dir == "runs/new" and not _warnings(caplog)


def test_train_output_dir_still_works_and_warns_with_its_line(tmp_path, caplog):
    path = _training(tmp_path, "train:\n  max_steps: 2\n  output_dir: runs/old\n")  # line 6
    cfg = load_config(path, "sft")
    assert cfg.train.output_dir == "runs/old" and cfg.train.max_steps == 2
    [warning] = _warnings(caplog)
    assert warning.startswith(f"{path}:6: `train.output_dir` is deprecated: use the top-level `output_dir:`")


def test_an_override_wins_over_the_file_and_both_in_the_file_is_an_error(tmp_path, caplog):
    path = _training(tmp_path, "output_dir: runs/file\n")
    assert load_config(path, "sft", ["train.output_dir=runs/cli"]).train.output_dir == "runs/cli"
    assert "override 'train.output_dir=runs/cli'" in _warnings(caplog)[0]
    assert load_config(path, "sft", ["output_dir=runs/cli2"]).train.output_dir == "runs/cli2"
    both = _training(tmp_path, "output_dir: runs/a\ntrain: {output_dir: runs/b}\n")
    with pytest.raises(ConfigError) as error:
        load_config(both, "sft")
    assert f"{both}:4: output_dir is given twice: here and as train.output_dir (line 5)" in str(error.value)


def test_a_training_file_without_output_dir_says_so(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(_training(tmp_path, ""), "sft")
    assert "output_dir" in str(error.value)


@pytest.mark.parametrize("name", sorted(p.name for p in TRAIN.glob("*.yaml")))
def test_shipped_training_files_use_the_new_name(name, caplog):
    text = (TRAIN / name).read_text()
    if "\n  output_dir:" in text:
        pytest.skip(f"{name} still uses train.output_dir")  # a file another change owns
    assert text.count("\noutput_dir: ") == 1


def _pipeline(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(f"name: p\nsteps:\n  - {{name: rows, type: inline, records: [{{id: 1}}]}}\n{extra}")
    return path


def test_pipeline_output_dir_and_the_deprecated_output_save(tmp_path, caplog):
    pipeline = load_pipeline(_pipeline(tmp_path, "output_dir: out/p\n"))
    assert default_run_dir(pipeline) == Path("out/p") and not _warnings(caplog)
    assert dataset_dirs(pipeline, default_run_dir(pipeline)) == {"rows": Path("out/p/dataset")}
    assert default_run_dir(load_pipeline(_pipeline(tmp_path, ""))) == Path("runs/p")
    path = _pipeline(tmp_path, f"output:\n  save: {tmp_path / 'elsewhere'}\n")  # line 5
    old = load_pipeline(path)
    assert dataset_dirs(old, default_run_dir(old)) == {"rows": tmp_path / "elsewhere"}  # meaning kept
    [warning] = _warnings(caplog)
    assert warning.startswith(f"{path}:5: `output.save` is deprecated: use the top-level `output_dir: DIR`")
