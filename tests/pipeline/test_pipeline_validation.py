"""`rlaif validate`: one test per class of error, each asserting the file, the line and the message."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from rlaif.config import ConfigError
from rlaif.pipeline.spec import load_pipeline

HEAD = """\
name: t
models:
  policy: {backend: vllm, model: builtin:smollm2-135m-instruct}
steps:
"""


def write(tmp_path: Path, body: str, head: str = HEAD) -> Path:
    path = tmp_path / "pipe.yaml"
    path.write_text(head + textwrap.dedent(body))
    (tmp_path / "seeds.jsonl").write_text('{"prompt": "hi", "id": 1, "text": "a"}\n')
    return path


def problems(path: Path, overrides: list[str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_pipeline(path, overrides)
    return [str(p) for p in err.value.problems]


def test_valid_pipeline_has_order_and_columns(tmp_path):
    path = write(
        tmp_path,
        """\
      - {name: seeds, type: load, path: seeds.jsonl}
      - {name: responses, type: generate_responses, from: seeds, model: policy, n: 2}
    """,
    )
    pipeline = load_pipeline(path)
    assert list(pipeline.steps) == ["seeds", "responses"]
    assert {"prompt", "responses", "response_models"} <= pipeline.columns["responses"]


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "  - {name: seeds, type: load, path: [seeds.jsonl}\n")
    [message] = problems(path)
    assert message.startswith(f"{path}:5: invalid YAML")


def test_unknown_step_type_lists_known_ones(tmp_path):
    path = write(tmp_path, "  - {name: seeds, type: lod, path: seeds.jsonl}\n")
    [message] = problems(path)
    assert message.startswith(f"{path}:5:") and "unknown step type 'lod'" in message
    assert "generate_responses" in message and "load" in message


def test_unknown_parameter_suggests_the_closest(tmp_path):
    path = write(
        tmp_path,
        """\
      - {name: seeds, type: load, path: seeds.jsonl}
      - name: responses
        type: generate_responses
        from: seeds
        model: policy
        temprature: 0.5
    """,
    )
    [message] = problems(path)
    assert message.startswith(f"{path}:10:")
    assert "unknown parameter 'temprature' (did you mean 'temperature'?)" in message


def test_missing_and_ill_typed_parameters(tmp_path):
    path = write(
        tmp_path,
        """\
      - {name: seeds, type: load, path: seeds.jsonl}
      - {name: responses, type: generate_responses, from: seeds, n: many}
    """,
    )
    found = problems(path)
    assert any(m.startswith(f"{path}:6:") and "missing required parameter 'model'" in m for m in found)
    assert any(m.startswith(f"{path}:6:") and "n: Input should be a valid integer" in m for m in found)


def test_unknown_upstream_and_unknown_model(tmp_path):
    path = write(
        tmp_path,
        """\
      - {name: seeds, type: load, path: seeds.jsonl}
      - {name: responses, type: generate_responses, from: sedes, model: polcy}
    """,
    )
    found = problems(path)
    assert any(m.startswith(f"{path}:6:") and "unknown upstream 'sedes' (did you mean 'seeds'?)" in m for m in found)
    assert any(m.startswith(f"{path}:6:") and "unknown model 'polcy' (did you mean 'policy'?)" in m for m in found)


def test_cycle_is_reported(tmp_path):
    path = write(
        tmp_path,
        """\
      - {name: a, type: plugins.Upper, from: b}
      - {name: b, type: plugins.Upper, from: a}
    """,
    )
    [message] = problems(path)
    assert message.startswith(f"{path}:5:") and "cycle: a -> b" in message


def test_missing_column_names_what_upstream_produces(tmp_path):
    path = write(
        tmp_path,
        """\
      - {name: seeds, type: load, path: seeds.jsonl, columns: {prompt: question}}
      - {name: responses, type: generate_responses, from: seeds, model: policy}
    """,
    )
    [message] = problems(path)
    assert message.startswith(f"{path}:6:")
    assert "needs column(s) ['prompt']" in message and "question" in message


def test_missing_data_file(tmp_path):
    path = write(tmp_path, "  - {name: seeds, type: load, path: nowhere.jsonl}\n")
    [message] = problems(path)
    assert message.startswith(f"{path}:5:") and "file not found" in message and "nowhere.jsonl" in message


def test_model_reference_that_cannot_resolve(tmp_path):
    head = "name: t\nmodels:\n  policy: {backend: vllm, model: builtin:gpt-99}\nsteps:\n"
    path = write(tmp_path, "  - {name: seeds, type: load, path: seeds.jsonl}\n", head=head)
    [message] = problems(path)
    assert message.startswith(f"{path}:3:") and "builtin:smollm2-135m-instruct" in message


def test_unknown_backend_option_and_top_level_key(tmp_path):
    head = (
        "name: t\nmodel:\n  x: 1\nmodels:\n  policy: {backend: vllm, model: builtin:smollm2-135m-instruct, "
        "max_model_length: 99}\nsteps:\n"
    )
    path = write(tmp_path, "  - {name: seeds, type: load, path: seeds.jsonl}\n", head=head)
    found = problems(path)
    assert any(m.startswith(f"{path}:2:") and "unknown key 'model' (did you mean 'models'?)" in m for m in found)
    assert any(m.startswith(f"{path}:5:") and "did you mean 'max_model_len'" in m for m in found)


def test_all_problems_are_reported_together(tmp_path):
    path = write(
        tmp_path,
        """\
      - {name: seeds, type: load, path: nowhere.jsonl}
      - {name: up, type: plugins.Upper, from: ghost}
      - {name: x, type: nope}
    """,
    )
    found = problems(path)
    assert len(found) == 3
    assert sorted(m.split(":")[1] for m in found) == ["5", "6", "7"]


def test_overrides_apply_and_bad_overrides_fail(tmp_path):
    path = write(
        tmp_path,
        """\
      - {name: seeds, type: load, path: seeds.jsonl}
      - {name: responses, type: generate_responses, from: seeds, model: policy}
    """,
    )
    pipeline = load_pipeline(path, ["steps.responses.temperature=0", "models.policy.max_tokens=7"])
    assert pipeline.steps["responses"].step.params.temperature == 0
    assert pipeline.models["policy"].sampling["max_tokens"] == 7
    [message] = problems(path, ["steps.nosuch.n=2"])
    assert "no item named 'nosuch'" in message and "['seeds', 'responses']" in message


def test_plugin_step_type_by_dotted_path_and_bad_plugin(tmp_path):
    path = write(
        tmp_path,
        """\
      - {name: seeds, type: load, path: seeds.jsonl}
      - {name: up, type: plugins.Upper, from: seeds}
      - {name: bad, type: plugins.NoSuchStep, from: seeds}
    """,
    )
    [message] = problems(path)
    assert message.startswith(f"{path}:7:") and "cannot import step type 'plugins.NoSuchStep'" in message


def test_push_needs_one_output_step(tmp_path):
    path = write(
        tmp_path,
        """\
      - {name: seeds, type: load, path: seeds.jsonl}
      - {name: a, type: plugins.Upper, from: seeds}
      - {name: b, type: plugins.Upper, from: seeds}
    output: {push_to_hub: me/data}
    """,
    )
    [message] = problems(path)
    assert "push_to_hub needs exactly one output step" in message and "['a', 'b']" in message


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("temperature: -1", "model 'policy': temperature must be >= 0, got -1"),
        ("top_p: 1.5", "model 'policy': top_p must be in (0, 1], got 1.5"),
        ("max_tokens: 0", "model 'policy': max_tokens must be >= 1, got 0"),
        ("n: two", "model 'policy': n must be int, got 'two'"),
        ("stop: END", "model 'policy': stop must be a list of strings"),
    ],
)
def test_model_sampling_values_are_checked_with_file_and_line(tmp_path, setting, expected):
    head = f"name: t\nmodels:\n  policy:\n    model: builtin:smollm2-135m-instruct\n    {setting}\nsteps:\n"
    path = write(tmp_path, "  - {name: seeds, type: load, path: seeds.jsonl}\n", head=head)
    [message] = problems(path)
    assert message.startswith(f"{path}:5: {expected}")


def test_sampling_overrides_are_checked_too(tmp_path):
    path = write(tmp_path, "  - {name: seeds, type: load, path: seeds.jsonl}\n")
    [message] = problems(path, ["models.policy.temperature=-0.5"])
    # the override set the value, so the error names the override, not the line of the model in the file
    assert (
        message
        == f"{path}: override 'models.policy.temperature=-0.5': model 'policy': temperature must be >= 0, got -0.5"
    )
    assert load_pipeline(path, ["models.policy.temperature=0"]).models["policy"].sampling == {"temperature": 0}
