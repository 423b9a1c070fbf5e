"""`rlaif loop`: rounds of generate -> label -> filter -> train, resumable, with a held-out win rate per round.

Fast loops run a tiny random-init Llama as the policy on the hf backend (real generation with the previous round's
LoRA adapter, real QLoRA DPO) and a judge plugin backend (tests/plugins.py AlphabeticalJudge) that prefers the answer
sorting first. The integration test runs the shipped loop_quickstart.yaml on the builtin model and the real vLLM
engine, with the real hand-off (the engine closed for training, started again after).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rlaif.config import ConfigError
from rlaif.loop.config import load_loop_config
from rlaif.rates import wilson

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = ROOT / "pipelines"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def _pipeline(tmp_path: Path, name: str, models: dict, steps: list) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {"name": name, "seed": 0, "models": models, "steps": steps, "output": {"jsonl": True}}, sort_keys=False
        )
    )
    return path


def _tiny_loop(tmp_path: Path, tiny_model_dir: Path, rounds: int = 2) -> Path:
    """A loop file whose policy is the tiny model on the hf backend and whose judge is the alphabetical plugin."""
    policy = {"backend": "hf", "model": str(tiny_model_dir), "temperature": 1.0, "max_tokens": 8}
    judge = {"backend": "plugins.AlphabeticalJudge", "model": "builtin:smollm2-135m-instruct"}
    prompts = [{"name": "prompts", "type": "load", "path": str(PIPELINES / "data" / "loop_prompts.jsonl")}]
    data = _pipeline(
        tmp_path,
        "prefs",
        {"policy": policy, "judge": judge},
        prompts
        + [
            {"name": "responses", "type": "generate_responses", "from": "prompts", "model": "policy", "n": 2},
            {"name": "judged", "type": "pairwise_judge", "from": "responses", "model": "judge"},
            {"name": "kept", "type": "judge_filter", "from": "judged", "drop_ties": True},
            {"name": "pairs", "type": "make_pairs", "from": "kept"},
        ],
    )
    # The eval has a known answer: candidate and baseline generate for real, tagged with the round of their adapter
    # (plugins.RoundTaggedHF), and the judge prefers the later round, so policy k must win every held-out prompt.
    tagged = {**policy, "backend": "plugins.RoundTaggedHF", "temperature": 0.0}
    evaluation = _pipeline(
        tmp_path,
        "eval",
        {"candidate": tagged, "baseline": tagged, "judge": {**judge, "backend": "plugins.LatestRoundJudge"}},
        prompts
        + [
            {"name": "responses", "type": "generate_responses", "from": "prompts", "model": ["candidate", "baseline"]},
            {"name": "judged", "type": "pairwise_judge", "from": "responses", "model": "judge"},
        ],
    )
    loop = {
        "name": "tiny_loop",
        "rounds": rounds,
        "output_dir": str(tmp_path / "run"),
        "prompts": {"path": str(PIPELINES / "data" / "loop_prompts.jsonl"), "held_out": 4, "per_round": 6},
        "pipeline": {"file": str(data)},
        "train": {
            "file": str(PIPELINES / "train" / "dpo.yaml"),
            "overrides": [
                f"model.name={tiny_model_dir}",
                "data.test_size=0",
                "train.max_steps=2",
                "train.save_steps=1",
                "train.learning_rate=1.0e-3",
                "train.max_length=64",
            ],
        },
        "eval": {"file": str(evaluation)},
    }
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(loop, sort_keys=False))
    return path


@pytest.mark.model
@pytest.mark.slow
def test_two_rounds_train_on_the_previous_policy_and_report_every_round(tiny_model_dir, tmp_path):
    from rlaif.loop.rounds import run_loop

    cfg = load_loop_config(_tiny_loop(tmp_path, tiny_model_dir))
    seen: list[int] = []
    rows = run_loop(cfg, on_round=lambda rows: seen.append(len(rows)))
    run = tmp_path / "run"
    assert seen == [2, 3] and [r["round"] for r in rows] == [0, 1, 2]  # round 0: the base policy, not evaluated
    assert json.loads((run / "summary.json").read_text()) == rows
    assert rows[0]["eval"] is None and rows[0]["trained"] is False
    for k, row in enumerate(rows[1:], 1):
        # accounting: every generated pair was kept or dropped/quarantined with a reason
        assert row["prompts"] == 6 and row["made"] == 6
        assert row["kept"] + sum(row["dropped"].values()) + sum(row["quarantined"].values()) >= row["made"]
        assert row["kept"] > 0
        assert Path(row["adapter"]) == run / f"round-{k}" / "train" / "adapter"
        assert (Path(row["adapter"]) / "adapter_model.safetensors").is_file()
        assert row["train"]["steps"] == 2 and row["train"]["loss"] > 0
        # policy k (the candidate, answer A) against policy k-1: the judge prefers k on all 4 held-out prompts
        ev = row["eval"]
        assert (ev["win_rate"], ev["wins"], ev["losses"], ev["ties"], ev["judged"], ev["not_judged"]) == (
            1.0,
            4,
            0,
            0,
            4,
            0,
        )
        assert ev["consistency"] == 1.0 and ev["parse_failures"] == 0 and row["trained"] is True
        assert ev["win_rate_ci95"] == pytest.approx(list(wilson(4, 4)))  # 4/4 is not certainty: [0.51, 1]
        assert set(row["seconds"]) >= {"generate", "label", "filter", "train", "hand_off", "eval", "total"}
        assert row["hand_off"], "the hf engine must be released before training"
    # the held-out prompts never reach a round; rounds take consecutive shares of the rest
    held = (run / "prompts" / "held_out.jsonl").read_text().splitlines()
    round_prompts = [(run / "prompts" / f"round-{k}.jsonl").read_text().splitlines() for k in (1, 2)]
    assert not set(held) & (set(round_prompts[0]) | set(round_prompts[1]))
    assert not set(round_prompts[0]) & set(round_prompts[1])
    # round 2 generated with policy 1 (adapter of round 1, by content hash) and trained on from it
    card = (run / "round-2" / "data" / "dataset" / "README.md").read_text()
    assert "LoRA adapter sha256:" in card and "round-1" not in card  # by content, no machine path
    adapter_config = json.loads((run / "round-2" / "train" / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tiny_model_dir)
    eval_card = (run / "round-2" / "eval" / "dataset" / "README.md").read_text()
    assert eval_card.count("LoRA adapter sha256:") == 2  # candidate = policy 2, baseline = policy 1
    round1_weights = _lora_weights(run / "round-1" / "train" / "adapter")
    round2_weights = _lora_weights(run / "round-2" / "train" / "adapter")
    assert round1_weights.keys() == round2_weights.keys()
    assert any((round1_weights[k] != round2_weights[k]).any() for k in round1_weights)


def _lora_weights(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


@pytest.mark.model
@pytest.mark.slow
def test_a_finished_loop_repeats_nothing_and_more_rounds_continue_it(tiny_model_dir, tmp_path):
    from rlaif.loop.rounds import run_loop

    loop_file = _tiny_loop(tmp_path, tiny_model_dir, rounds=1)
    first = run_loop(load_loop_config(loop_file))
    stats = tmp_path / "run" / "round-1" / "stats.json"
    stamp = stats.stat().st_mtime_ns
    again = run_loop(load_loop_config(loop_file, ["rounds=2"]))
    assert again[:2] == first and stats.stat().st_mtime_ns == stamp
    assert again[2]["round"] == 2 and (tmp_path / "run" / "round-2" / "stats.json").is_file()


@pytest.mark.model
@pytest.mark.slow
def test_loop_killed_with_sigkill_resumes_without_repeating_finished_work(tiny_model_dir, tmp_path):
    loop_file = _tiny_loop(tmp_path, tiny_model_dir)
    run = tmp_path / "run"
    args = [sys.executable, "-m", "rlaif.cli", "loop", str(loop_file), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
    process = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    # kill in round 2's training, after its first checkpoint: round 1 is finished, round 2 half-way
    while not list((run / "round-2" / "train").glob("checkpoint-*/trainer_state.json")):
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "round 2 wrote no checkpoint within 300 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "round-2" / "stats.json").exists(), "the loop finished before it was killed"
    round1 = (run / "round-1" / "stats.json").stat().st_mtime_ns
    data_markers = {p: p.stat().st_mtime_ns for p in (run / "round-2" / "data" / "steps").rglob("*.done")}
    assert data_markers, "round 2's data pipeline had finished batches"

    from rlaif.cli import app

    result = CliRunner().invoke(app, ["loop", str(loop_file), "--no-progress"], env={"PYTHONPATH": env["PYTHONPATH"]})
    assert result.exit_code == 0, result.output
    assert (run / "round-1" / "stats.json").stat().st_mtime_ns == round1  # round 1 not repeated
    assert {p: p.stat().st_mtime_ns for p in data_markers} == data_markers  # round 2's data came from the cache
    starts = [json.loads(line) for line in (run / "round-2" / "train" / "metrics.jsonl").read_text().splitlines()]
    starts = [row["step"] for row in starts if row.get("event") == "train_begin"]
    assert starts[0] == 0 and starts[-1] >= 1  # the trainer continued from its checkpoint
    rows = json.loads((run / "summary.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[2]["train"]["steps"] == 2
    assert "rlaif loop" in result.output and "summary.json" in result.output
    assert "rounds: 2;" in result.output  # the trained rounds; row 0 is the base policy
    # the round table is whole in an 80-column log (rich abbreviates with "…" what does not fit)
    assert "win vs k-1 [95% CI]" in result.output and "hand-off %" in result.output and "…" not in result.output


@pytest.mark.model
@pytest.mark.slow
def test_rlhf_stages_sft_then_reward_model_then_ppo_against_it_in_one_round(tiny_model_dir, tmp_path):
    """pipelines/rlhf_ppo.yaml's shape on the tiny model: SFT on the chosen answers (policy), a reward model on the
    pairs (not a policy: fresh on the base), PPO starting from the SFT adapter with the RM adapter as its reward."""
    from rlaif.loop.rounds import run_loop

    loop_file = _tiny_loop(tmp_path, tiny_model_dir, rounds=1)
    loop = yaml.safe_load(loop_file.read_text())
    tiny = [f"model.name={tiny_model_dir}", "data.test_size=0", "train.max_steps=2", "train.save_steps=1000"]
    train = PIPELINES / "train"
    loop["train"] = [
        {
            "name": "sft",
            "file": str(train / "sft.yaml"),
            "recipe": "sft",
            "policy": True,
            "overrides": [*tiny, "data.rename={chosen: completion}", "train.max_length=64"],
        },
        {
            "name": "rm",
            "file": str(train / "rm.yaml"),
            "recipe": "rm",
            "policy": False,
            "overrides": [*tiny, "train.max_length=64"],
        },
        {
            "name": "ppo",
            "file": str(train / "ppo.yaml"),
            "recipe": "ppo",
            "policy": True,
            "overrides": [
                *tiny,
                "reward={adapter: '{rm}'}",
                "train.response_length=8",
                "train.num_ppo_epochs=1",
                "train.learning_rate=1.0e-3",
            ],
        },
    ]
    loop_file.write_text(yaml.safe_dump(loop, sort_keys=False))
    base, row = run_loop(load_loop_config(loop_file))  # row 0: the base policy, measured, not trained
    assert base["round"] == 0 and not base["trained"] and row["round"] == 1
    stages = tmp_path / "run" / "round-1" / "train"
    assert Path(row["adapter"]) == stages / "ppo" / "adapter"  # the last policy stage makes the round's policy
    assert set(row["train"]["stages"]) == {"sft", "rm", "ppo"}
    assert all(row["train"]["stages"][name]["steps"] == 2 for name in ("sft", "rm", "ppo"))
    card = (stages / "ppo" / "adapter" / "README.md").read_text()
    assert f"Reward: RM adapter `{(stages / 'rm' / 'adapter').resolve()}` on the shared base." in card
    # the RM stage trained fresh on the base; PPO's policy started from the SFT adapter
    assert "adapter" not in json.loads((stages / "rm" / "adapter" / "adapter_config.json").read_text()).get(
        "base_model_name_or_path", ""
    )
    sft, ppo = _lora_weights(stages / "sft" / "adapter"), _lora_weights(stages / "ppo" / "adapter")
    assert sft.keys() == ppo.keys() and any((sft[k] != ppo[k]).any() for k in sft)


def test_loop_file_problems_are_reported_with_file_and_line(tmp_path):
    bad = tmp_path / "loop.yaml"
    bad.write_text(
        "name: x\nrounds: 0\nprompts: {path: nowhere.jsonl}\npipeline: {file: nope.yaml}\n"
        "train: {file: ../train.yaml}\nbogus: 1\n"
    )
    with pytest.raises(ConfigError) as error:
        load_loop_config(bad)
    text = str(error.value)
    assert f"{bad}:2: rounds: Input should be greater than or equal to 1" in text
    assert f"{bad}:6: bogus: unknown key 'bogus'; expected one of: name, rounds, prompts" in text


def test_loop_needs_lora_on_the_vllm_policy_before_any_model_loads(tmp_path):
    from rlaif.loop.rounds import run_loop

    text = (PIPELINES / "loop" / "preferences.yaml").read_text()
    data = tmp_path / "prefs.yaml"
    data.write_text(
        text.replace("enable_lora: true, max_lora_rank: 16}", "}", 1).replace(
            "../data/", str(PIPELINES / "data") + "/"
        )
    )
    loop = yaml.safe_load((PIPELINES / "loop_quickstart.yaml").read_text())
    loop.update(output_dir=str(tmp_path / "run"), eval=None)
    loop["pipeline"]["file"] = str(data)
    loop["prompts"]["path"] = str(PIPELINES / "data" / "loop_prompts.jsonl")
    loop["train"]["file"] = str(PIPELINES / "train" / "dpo.yaml")
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(loop))
    with pytest.raises(ConfigError, match="model 'policy' serves LoRA adapters from round 2 on: set `enable_lora"):
        run_loop(load_loop_config(tmp_path / "loop.yaml"))


LOOP_FILES = sorted(p for p in PIPELINES.glob("*.yaml") if "rounds" in yaml.safe_load(p.read_text()))


@pytest.mark.parametrize("path", LOOP_FILES, ids=[p.name for p in LOOP_FILES])
def test_every_shipped_loop_file_validates_with_its_pipelines_and_training_configs(path, tmp_path, monkeypatch):
    from rlaif.loop.rounds import validate, write_prompts

    # loop_8b names a Hub model that is not cached here: validate it as on a machine that can reach the Hub
    # (offline, "not in the local cache" is the right answer: tests/config/test_config_layer.py checks that)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("rlaif.models.hub_reachable", lambda: True)

    cfg = load_loop_config(path, [f"output_dir={tmp_path / 'run'}"])
    validate(cfg, cfg.run_dir(), write_prompts(cfg, cfg.run_dir()))  # loads every stage's training config too
    assert cfg.rounds >= 1 and any(stage.policy for stage in cfg.train)


def test_shipped_loop_layouts():
    assert {p.name for p in LOOP_FILES} >= {"loop_quickstart.yaml", "rlhf_ppo.yaml", "rlaif_direct.yaml"}
    quickstart = load_loop_config(PIPELINES / "loop_quickstart.yaml")
    assert quickstart.rounds == 2 and [s.recipe for s in quickstart.train] == ["dpo"]
    rlhf = load_loop_config(PIPELINES / "rlhf_ppo.yaml")
    assert [(s.name, s.recipe, s.policy) for s in rlhf.train] == [
        ("sft", "sft", True),
        ("rm", "rm", False),
        ("ppo", "ppo", True),
    ]
    from rlaif.pipeline.spec import load_pipeline

    for name in ("preferences", "eval"):
        pipeline = load_pipeline(PIPELINES / "loop" / f"{name}.yaml")
        assert all(m.options.get("enable_lora") for m in pipeline.models.values())


@pytest.mark.model
@pytest.mark.slow
def test_builtin_loop_quickstart_two_rounds_on_vllm_with_engine_hand_off(tmp_path):
    """The shipped demo loop, smaller: 2 rounds of 6 prompts on the builtin model, real vLLM engine (closed for
    training and started again: the CPU hand-off), real QLoRA DPO continuing the previous adapter. The data half's
    judge is the alphabetical plugin (consistent in both orders, no ties), so every round keeps rows and trains: the
    135M judge is position-biased, its inconsistent verdicts are ties (dropped), and a round of 6 prompts could keep
    nothing. The eval keeps the real judge on vLLM."""
    from rlaif.cli import app

    result = CliRunner().invoke(
        app,
        [
            "loop",
            str(PIPELINES / "loop_quickstart.yaml"),
            f"output_dir={tmp_path / 'run'}",
            "prompts.per_round=6",
            "prompts.held_out=3",
            "train.overrides=[data.test_size=0, train.max_steps=2, train.save_steps=1000]",
            "pipeline.overrides=[models.judge.backend=plugins.AlphabeticalJudge, steps.judged.logprobs=false]",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert row["made"] == 6 and row["eval"]["judged"] + row["eval"]["not_judged"] == 3
        assert row["hand_off"] and all(h.endswith("close") for h in row["hand_off"])
        assert row["seconds"]["hand_off"] > 0 and row["seconds"]["train"] > 0
        assert row["kept"] > 0 and row["train"]["steps"] == 2
    card = (tmp_path / "run" / "round-2" / "data" / "dataset" / "README.md").read_text()
    assert "LoRA adapter sha256:" in card  # round 2 generated with round 1's adapter
    assert "rlaif loop" in result.output and "summary.json" in result.output  # the round table, where outputs are


# -- `lora:` on a pipeline model --------------------------------------------------------------------------------
def _adapter(path: Path, weights: bytes) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"r": 8}')
    (path / "adapter_model.safetensors").write_bytes(weights)
    return path


def test_a_model_lora_is_checked_and_keys_the_cache_by_content(tmp_path):
    from rlaif.pipeline.fingerprint import step_fingerprint
    from rlaif.pipeline.runtime import EngineRuntime
    from rlaif.pipeline.spec import load_pipeline

    text = (PIPELINES / "generate_responses.yaml").read_text()
    pipeline_file = tmp_path / "gen.yaml"
    pipeline_file.write_text(text.replace("data/seed_prompts", str(PIPELINES / "data" / "seed_prompts")))
    with pytest.raises(ConfigError) as error:
        load_pipeline(pipeline_file, [f"models.policy.lora={tmp_path / 'nowhere'}"])
    # an override has no line of its own: the error names the override
    message = f"{pipeline_file}: override 'models.policy.lora={tmp_path / 'nowhere'}': lora: "
    assert message in str(error.value) and "not a PEFT adapter directory" in str(error.value)
    adapter = _adapter(tmp_path / "adapter", b"one")
    with pytest.raises(ConfigError, match="needs `enable_lora: true`"):
        load_pipeline(pipeline_file, [f"models.policy.lora={adapter}"])

    def key(weights: bytes, where: str) -> tuple[str, str]:
        moved = _adapter(tmp_path / where, weights)
        pipeline = load_pipeline(pipeline_file, [f"models.policy.lora={moved}", "models.policy.enable_lora=true"])
        runtime = EngineRuntime(pipeline.models, 0)
        params = runtime.sampling("policy")
        return step_fingerprint(pipeline, pipeline.steps["responses"], ["up"]), params.lora.name

    same_a, name_a = key(b"one", "a")
    same_b, name_b = key(b"one", "b")  # the same adapter somewhere else: same key, same served name
    other, name_other = key(b"two", "c")  # retrained: the cache and the engine's adapter cache both miss
    assert same_a == same_b and name_a == name_b
    assert other != same_a and name_other != name_a
