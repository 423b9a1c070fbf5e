"""GRPO / RLOO: the reward spec as TRL reward functions (rlaif.train.rl.group_rewards: PPO's reward sources adapted),
the configs (errors before any model loads, with file:line), real runs of `rlaif train grpo|rloo --cpu` on the builtin
model (TRL's trainers), and the model rewards (RM adapter on the policy's base, separate reward model, judge) on a
tiny model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlaif.config import ConfigError
from rlaif.train.config import trl_args
from rlaif.train.config_load import load_config
from rlaif.train.grpo_config import RewardSpec
from rlaif.train.rl.group_rewards import GroupReward, reward_functions

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "pipelines" / "train"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "train"
LOWER = '[{"type": "all_lowercase"}]'
SHORT = '[{"type": "word_count", "relation": "at_most", "num": 3}]'

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def _trl_call(fn, completions, **columns):
    """Call ``fn`` as TRL's GRPOTrainer does: conversational completions, every column, TRL's own extras."""
    logged: dict[str, float] = {}
    scores = fn(
        prompts=[[{"role": "user", "content": f"question {i}"}] for i in range(len(completions))],
        completions=[[{"role": "assistant", "content": text}] for text in completions],
        completion_ids=[[1, 2]] * len(completions),
        trainer_state=object(),
        log_extra=lambda *a: None,
        log_metric=lambda name, value: logged.__setitem__(name, value),
        **columns,
    )
    return scores, logged


# -- the reward adapter -----------------------------------------------------------------------------------------
def test_ifeval_verifier_scores_known_completions_and_leaves_unverifiable_ones_unscored():
    fn = GroupReward(RewardSpec(verifier="ifeval"))
    scores, logged = _trl_call(
        fn,
        ["all lower case here", "Not Lower", "one two", "one two three four five", "anything"],
        constraints=[LOWER, LOWER, SHORT, SHORT, '[{"type": "no_such_check"}]'],
    )
    assert fn.__name__ == "ifeval"  # the name TRL logs: rewards/ifeval/mean
    assert scores == [1.0, 0.0, 1.0, 0.0, None]  # None: TRL leaves it out of the mean and the weighted sum
    assert logged == {"rewards/ifeval/unverifiable": 0.2}


def test_verifier_columns_are_renamed_and_kwargs_given_to_every_row():
    renamed = GroupReward(RewardSpec(verifier="exact", columns={"answer": "solution"}, name="match"))
    scores, _ = _trl_call(renamed, ["42", "41"], solution=["42", "42"])
    assert (renamed.__name__, scores) == ("match", [1.0, 0.0])
    fixed = GroupReward(RewardSpec(verifier="regex", kwargs={"pattern": r"^\d+$"}))
    assert _trl_call(fixed, ["123", "abc"])[0] == [1.0, 0.0]


def picky(prompts, completions, *, label, bonus=0.0):
    """A rule reward reading a data column (``label``) and a kwarg; None when the row has no label."""
    return [
        None if want is None else float(want in text) + bonus for text, want in zip(completions, label, strict=True)
    ]


def test_function_rewards_get_their_columns_and_kwargs_and_may_return_none():
    fn = GroupReward(RewardSpec(function="test_grpo.picky", kwargs={"bonus": 0.5}))
    scores, _ = _trl_call(fn, ["a cat", "a dog", "x"], label=["cat", "cat", None], other=[1, 2, 3])
    assert (fn.__name__, scores) == ("picky", [1.5, 0.5, None])  # `other` is not a parameter: not passed


def broken(prompts, completions, **_):
    return [float("nan")] * len(completions)


def short(prompts, completions, **_):
    return [1.0]


@pytest.mark.parametrize(
    ("name", "expected"), [("broken", "returned nan for 2 completions"), ("short", "returned 1 values for 2")]
)
def test_a_function_returning_a_bad_value_is_named(name, expected):
    fn = GroupReward(RewardSpec(function=f"test_grpo.{name}"))
    with pytest.raises(ValueError, match=f"reward function `test_grpo.{name}` {expected}"):
        _trl_call(fn, ["a", "b"])


def test_weighted_components_keep_their_names_and_weights():
    specs = [RewardSpec(verifier="ifeval"), RewardSpec(function="length_penalty", weight=0.1, name="length")]
    funcs, weights = reward_functions(specs)
    assert [f.__name__ for f in funcs] == ["ifeval", "length"] and weights == [1.0, 0.1]
    # TRL sums the components with these weights, skipping a None (NaN) component (GRPOTrainer: nansum)
    ifeval, _ = _trl_call(funcs[0], ["abc", "ABC"], constraints=[LOWER, LOWER])
    length, _ = _trl_call(funcs[1], ["abc", "ABC"], constraints=[LOWER, LOWER])
    assert [1.0 * i + 0.1 * n for i, n in zip(ifeval, length, strict=True)] == pytest.approx([0.997, -0.003])


# -- configs ----------------------------------------------------------------------------------------------------
def test_shipped_configs_and_the_cpu_profile():
    grpo = trl_args(load_config(CONFIGS / "grpo.yaml", "grpo", cpu=True))
    assert type(grpo).__name__ == "GRPOConfig" and grpo.loss_type == "dapo" and grpo.beta == 0.0
    assert (grpo.num_generations, grpo.per_device_train_batch_size, grpo.max_completion_length) == (2, 2, 32)
    assert (grpo.use_cpu, grpo.bf16) == (True, False)
    rloo = load_config(CONFIGS / "rloo.yaml", "rloo", ["train.normalize_advantages=true"])
    assert rloo.train.num_generations == 4 and [s.label() for s in rloo.reward] == ["ifeval"]  # one source, listed
    dr = trl_args(load_config(CONFIGS / "grpo.yaml", "grpo", ["train.loss_type=dr_grpo"], cpu=True))
    assert dr.loss_type == "dr_grpo"


GRPO_FILE = """\
recipe: grpo
model: {name: builtin:smollm2-135m-instruct, quantize: nf4}
data: {path: tests/fixtures/train/constrained_prompts.jsonl}
reward:
  - {verifier: ifeval}
  - {function: length_penalty, weight: 0.1}
train:
  output_dir: runs/x
  num_generations: 4
"""


@pytest.mark.parametrize(
    ("overrides", "cpu", "expected"),
    [
        (["train.loss_type=dpo"], False, "override 'train.loss_type=dpo': unknown loss_type 'dpo'; choices: dapo, dr"),
        (["train.num_generations=3"], False, "num_generations (3) must divide the generation batch"),
        ([], True, "with --cpu, num_generations (4) must divide the generation batch"),
        (["train.num_generations=1"], False, "greater than or equal to 2"),
        (["reward=[{verifier: ifevall}]"], False, "unknown verifier 'ifevall' (did you mean 'ifeval'?)"),
        (["reward=[{function: lenght_penalty}]"], False, "unknown reward function 'lenght_penalty'"),
        (
            ["lora=null", "model.quantize=none", "reward=[{verifier: ifeval}, {judge: {}}]"],
            False,
            "reward.1 reads the policy's base with the adapter switched (RM adapter) or off (judge): set lora",
        ),
        (["reward=[{adapter: a, name: x}, {adapter: b}]"], False, "one RM adapter at most shares the policy's base"),
        (["reward=[{model: m, kwargs: {a: 1}}]"], False, "reward.kwargs goes with reward.function or reward.verifier"),
        (["reward=[{judge: {}}, {judge: {scale: [1, 5]}}]"], False, "two components are named 'judge'"),
        (["reward=[{verifier: ifeval}, {verifier: ifeval}]"], False, "two components are named 'ifeval'"),
        (["reward=[]"], False, "at least 1 item"),
        (["train.trl={reward_weights: [1, 2]}"], False, "trl.reward_weights is set by rlaif"),
        (["train.trl={warp: 1}"], False, "trl.warp is not an option of GRPOConfig"),
        (
            ["train.max_length=512", "train.num_generations=2"],
            True,
            "",
        ),  # accepted (the CPU profile sets it) and never passed to TRL
    ],
)
def test_bad_configs_fail_before_a_model_loads_with_file_and_line(tmp_path, overrides, cpu, expected):
    path = tmp_path / "grpo.yaml"
    path.write_text(GRPO_FILE)
    if not expected:
        assert "max_length" not in trl_args(load_config(path, "grpo", overrides, cpu=cpu)).to_dict()
        return
    with pytest.raises(ConfigError) as exc:
        load_config(path, "grpo", overrides, cpu=cpu)
    assert str(path) in str(exc.value) and expected in str(exc.value)


def test_a_spec_error_inside_the_list_names_its_line(tmp_path):
    path = tmp_path / "grpo.yaml"
    path.write_text(GRPO_FILE.replace("weight: 0.1", "weight: high").replace("num_generations: 4", "loss_type: ppo"))
    with pytest.raises(ConfigError) as exc:
        load_config(path, "grpo")
    assert f"{path}:6: reward.1.weight: Input should be a valid number" in str(exc.value)
    assert f"{path}:9: train.loss_type: unknown loss_type 'ppo'" in str(exc.value)


# -- real runs on the builtin model -----------------------------------------------------------------------------
def _metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.model
@pytest.mark.parametrize("recipe", ["grpo", "rloo"])
def test_train_from_the_shipped_config_logs_each_reward_component(recipe, tmp_path):
    from rlaif.cli import app
    from rlaif.train.model import build_model

    out = tmp_path / recipe
    overrides = [
        f"train.output_dir={out}",
        "train.max_steps=2",
        "train.max_completion_length=12",
        "data.test_size=2",
        "model.quantize=none",  # fp32 LoRA: nf4 on CPU works too, but its 4-bit matmuls cost minutes here
        "reward=[{verifier: ifeval}, {function: length_penalty, weight: 0.1, name: length}]",
    ]
    result = CliRunner().invoke(app, ["train", recipe, str(CONFIGS / f"{recipe}.yaml"), *overrides, "--cpu"])
    assert result.exit_code == 0, result.output
    # stdout carries results only: the trainer's per-step dicts go to stderr (rlaif.train.recipes.logs_to_stderr)
    assert "'loss'" not in result.stdout and "'loss'" in result.stderr and "adapter: " in result.stdout
    steps = [row for row in _metrics(out) if "loss" in row]
    assert [row["step"] for row in steps] == [1, 2]
    for row in steps:
        assert 0.0 <= row["rewards/ifeval/mean"] <= 1.0 and row["rewards/length/mean"] < 0
        assert row["reward"] == pytest.approx(row["rewards/ifeval/mean"] + 0.1 * row["rewards/length/mean"], abs=1e-4)
    evaluated = json.loads((out / "eval.json").read_text())
    assert {"eval_reward", "eval_rewards/ifeval/mean", "eval_rewards/length/mean"} <= set(evaluated)
    card = (out / "adapter" / "README.md").read_text()
    assert f"rlaif's `{recipe}` recipe" in card and "mean reward (weighted sum, held-out prompts)" in card
    cfg = load_config(CONFIGS / f"{recipe}.yaml", recipe, ["model.quantize=none"], cpu=True)
    model = build_model(cfg.model, None, adapters={"default": out / "adapter"}, cpu=True).model
    assert any("lora_A" in name for name, _ in model.named_parameters())


def test_bad_input_exits_2_before_a_model_loads(monkeypatch, tmp_path):
    from rlaif.cli import app

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr("rlaif.train.grpo.build_model", no_model)
    runner, config = CliRunner(), str(CONFIGS / "grpo.yaml")
    out = f"train.output_dir={tmp_path / 'out'}"
    bad_loss = runner.invoke(app, ["train", "grpo", config, out, "train.loss_type=ppo", "--cpu"])
    assert bad_loss.exit_code == 2 and "unknown loss_type 'ppo'" in bad_loss.output
    no_prompts = tmp_path / "rows.jsonl"
    no_prompts.write_text('{"text": "hello"}\n{"text": "bye"}\n')
    bad_data = runner.invoke(
        app, ["train", "rloo", str(CONFIGS / "rloo.yaml"), out, f"data.path={no_prompts}", "--cpu"]
    )
    assert bad_data.exit_code == 2 and "the rloo recipe expects prompt-only (prompt)" in bad_data.output


@pytest.mark.model
@pytest.mark.slow
def test_grpo_killed_with_sigkill_resumes_from_its_last_complete_checkpoint(tmp_path):
    """A process killed mid-run (after a complete checkpoint and the step after it) continues with --resume from
    that checkpoint; a half-written later checkpoint is ignored, and a re-run without --resume is refused."""
    from killing import run_and_kill

    from rlaif.cli import app

    out = tmp_path / "grpo"
    overrides = [f"output_dir={out}", "train.save_steps=1", "train.save_total_limit=null", "train.max_steps=4"]
    overrides += ["train.max_completion_length=8", "data.test_size=0", "model.quantize=none"]
    overrides += ["reward={verifier: ifeval}"]
    command = [sys.executable, "-m", "rlaif.cli", "train", "grpo", str(CONFIGS / "grpo.yaml"), *overrides, "--cpu"]
    last = run_and_kill(command, ROOT, out, loss_key="loss")
    resumed_step = json.loads((last / "trainer_state.json").read_text())["global_step"]
    (out / "checkpoint-9").mkdir()  # half-written: no trainer_state.json, must be ignored
    refused = CliRunner().invoke(app, ["train", "grpo", str(CONFIGS / "grpo.yaml"), *overrides, "--cpu"])
    assert refused.exit_code == 2 and "holds an earlier run: pass --resume" in refused.output
    result = CliRunner().invoke(app, ["train", "grpo", str(CONFIGS / "grpo.yaml"), *overrides, "--cpu", "--resume"])
    assert result.exit_code == 0, result.output
    assert f"resumed from {last}" in result.output
    rows = _metrics(out)
    assert [row["step"] for row in rows if row.get("event") == "train_begin"] == [0, resumed_step]
    after = rows[rows.index(next(r for r in rows if r.get("event") == "train_begin" and r["step"] == resumed_step)) :]
    assert [row["step"] for row in after if "loss" in row] == list(range(resumed_step + 1, 5))
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


# -- model rewards: RM adapter on the policy's base, a separate reward model, the judge ------------------------
def test_a_reward_adapter_that_cannot_load_is_named_before_a_model_loads(monkeypatch, tmp_path):
    from rlaif.cli import app

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr("rlaif.train.grpo.build_model", no_model)
    (tmp_path / "rm").mkdir()
    result = CliRunner().invoke(
        app,
        [
            "train",
            "grpo",
            str(CONFIGS / "grpo.yaml"),
            f"train.output_dir={tmp_path / 'out'}",
            f"reward=[{{verifier: ifeval}}, {{adapter: {tmp_path / 'rm'}, weight: 0.5}}]",
            "--cpu",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "grpo.yaml" in result.output and f"reward.1.adapter {tmp_path / 'rm'}: not an adapter directory" in (
        " ".join(result.output.split())
    )


@pytest.mark.model
def test_model_rewards_read_the_policys_own_base_and_each_is_logged(tiny_model_dir, tmp_path):
    from rlaif.train.model import build_model
    from rlaif.train.recipes import run_recipe
    from rlaif.train.rl.group_rewards import GroupRewards, TrainerBase
    from rlaif.train.rl.reward_sources import AdapterReward

    rm = run_recipe(
        load_config(
            CONFIGS / "rm.yaml",
            "rm",
            [f"model.name={tiny_model_dir}", f"data.path={FIXTURES / 'prefs.jsonl'}", "data.test_size=0",
             f"train.output_dir={tmp_path / 'rm'}", "train.max_steps=2", "train.save_steps=1000", "lora.r=4",
             "train.learning_rate=1.0e-2"],  # the first step warms up at lr 0; the second must move the scores
            cpu=True,
        )
    )  # fmt: skip
    reward = (
        f"[{{adapter: {rm.adapter_dir}}}, {{model: {rm.adapter_dir}, name: separate}}, {{judge: {{}}, weight: 0.5}}]"
    )
    cfg = load_config(
        CONFIGS / "grpo.yaml",
        "grpo",
        [f"model.name={tiny_model_dir}", "model.quantize=none", "lora.r=4", f"reward={reward}", "data.test_size=2",
         f"train.output_dir={tmp_path / 'grpo'}", "train.max_steps=1", "train.max_completion_length=8"],
        cpu=True,
    )  # fmt: skip
    rewards = GroupRewards(cfg)
    built = build_model(cfg.model, cfg.lora, cpu=True, **rewards.model_kwargs())
    built.model.train()
    funcs = {fn.__name__: fn for fn in rewards.bind(built)}
    assert list(funcs) == ["rm", "separate", "judge"] and rewards.weights == [1.0, 1.0, 0.5]
    answers = ["Gladly! Apples are sweet and crisp.", "No."]
    on_base, separate = _trl_call(funcs["rm"], answers)[0], _trl_call(funcs["separate"], answers)[0]
    # the RM adapter switched in on the policy's base scores as the same adapter on its own copy of the base
    assert on_base == pytest.approx(separate, abs=1e-4) and on_base[0] != pytest.approx(on_base[1])

    class AdapterOff(TrainerBase):  # the score head on the bare base: what a switch that did nothing would read
        def use(self, adapter):
            return self.bare()

    bare = AdapterReward(AdapterOff(built.model, built.tokenizer), rm.adapter_dir, 2, 256)
    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(2)]
    assert bare(prompts, answers, [{}, {}]).tolist() != pytest.approx(on_base, abs=1e-3)
    assert all(-1 <= s <= 1 for s in _trl_call(funcs["judge"], answers)[0])  # expected rating mapped to [-1, 1]
    # scoring left the policy adapter active and trainable, the reward adapter frozen, the model in train mode
    grads = {name: p.requires_grad for name, p in built.model.named_parameters() if "lora_" in name}
    assert all(g for name, g in grads.items() if ".default." in name)
    assert not any(g for name, g in grads.items() if ".reward." in name)
    assert built.model.active_adapter == "default" and built.model.training

    result = run_recipe(cfg)
    [step] = [row for row in _metrics(result.output_dir) if "loss" in row]
    parts = [step[f"rewards/{name}/mean"] for name in ("rm", "separate", "judge")]
    assert step["reward"] == pytest.approx(parts[0] + parts[1] + 0.5 * parts[2], abs=1e-4)
    evaluated = json.loads((result.output_dir / "eval.json").read_text())
    assert {"eval_rewards/rm/mean", "eval_rewards/judge/mean"} <= set(evaluated)
    # the RM adapter stays out of the trained adapter's folder and its checkpoints
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert not list(result.output_dir.rglob("reward/adapter_config.json"))
