"""GRPO / RLOO with ``rollout: vllm``: TRL's trainers sampling on rlaif's engine with the trained adapter as a LoRA
request (rlaif.train.rl.group_rollout), and the ``rollout``/``vllm`` config checks (errors before a model loads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlaif.config import ConfigError
from rlaif.train.config_load import load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "pipelines" / "train"

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py

VLLM_FILE = """\
recipe: grpo
output_dir: runs/x
model: {name: builtin:smollm2-135m-instruct, quantize: none}
lora: {r: 8}
data: {path: tests/fixtures/train/constrained_prompts.jsonl}
reward: {verifier: ifeval}
train:
  num_generations: 2
  rollout: vllm
  vllm_max_model_length: 512
  vllm_sync_steps: 2
"""


def test_a_vllm_rollout_config_reaches_the_engine_options(tmp_path):
    path = tmp_path / "grpo.yaml"
    path.write_text(VLLM_FILE)
    cfg = load_config(path, "grpo", cpu=True)
    train = cfg.train
    assert (train.rollout, train.vllm_max_model_length, train.vllm_sync_steps) == ("vllm", 512, 2)
    assert train.vllm_gpu_memory_utilization == 0.3 and train.vllm_enable_sleep_mode
    from rlaif.train.config import trl_args

    args = trl_args(cfg)  # rlaif's engine options, not TRL's: TRL's own engine stays off, at its defaults
    assert not args.use_vllm and args.vllm_max_model_length is None and "rollout" not in args.to_dict()


VLLM_LINE = "  vllm_sync_steps: 2"


@pytest.mark.parametrize(
    ("old", "new", "line", "expected"),
    [
        ("length: 512", "length: 32", 7, "vllm_max_model_length (32) leaves no room for a prompt before"),
        (VLLM_LINE, "  vllm_sync_steps: 0", 11, "train.vllm_sync_steps: Input should be greater than or equal to 1"),
        (VLLM_LINE, "  vllm_gpu_memory_utilization: 1.5", 11, "less than or equal to 1"),
        (VLLM_LINE, "  vllm_max_len: 512", 11, "unknown key 'vllm_max_len' (did you mean 'vllm_max_model_length'?)"),
        ("rollout: vllm", "rollout: hf", 7, "vllm_max_model_length goes with rollout: vllm; this file has"),
        ("rollout: vllm", "rollout: sglang", 9, "Input should be 'hf' or 'vllm'"),
        (VLLM_LINE, "  trl: {top_k: 20}", 7, "trl.top_k does not apply with rollout: vllm"),
        (VLLM_LINE, "  trl: {use_vllm: true}", 7, "trl.use_vllm does not apply with rollout: vllm"),
        (VLLM_LINE, "  trl: {vllm_tensor_parallel_size: 2}", 7, "trl.vllm_tensor_parallel_size does not apply"),
        ("lora: {r: 8}", "lora: null", 1, "rollout: vllm serves the trained adapter as a LoRA request: set lora"),
        ("lora: {r: 8}", "lora: {use_dora: true}", 1, "lora.use_dora and lora.modules_to_save cannot be served"),
    ],
)
def test_bad_vllm_rollout_configs_fail_with_file_and_line(tmp_path, old, new, line, expected):
    path = tmp_path / "grpo.yaml"
    path.write_text(VLLM_FILE.replace(old, new))
    with pytest.raises(ConfigError) as exc:
        load_config(path, "grpo", cpu=True)
    assert f"{path}:{line}:" in str(exc.value) and expected in str(exc.value), str(exc.value)


def test_rollout_vllm_without_vllm_installed_fails_before_a_model_loads(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    path = tmp_path / "grpo.yaml"
    path.write_text(VLLM_FILE)
    with pytest.raises(ConfigError) as exc:
        load_config(path, "grpo", cpu=True)
    assert f"{path}:9: train.rollout: rollout: vllm needs the vllm package" in str(exc.value)


def test_the_overrides_take_the_arguments_trl_samples_with():
    import inspect

    from trl import GRPOTrainer, RLOOTrainer

    from rlaif.train.rl.group_rollout import VllmGRPOTrainer, VllmRLOOTrainer

    # The hook is a private TRL method (see group_rollout): a TRL release that changes how it is called fails here.
    for ours, theirs in ((VllmGRPOTrainer, GRPOTrainer), (VllmRLOOTrainer, RLOOTrainer)):
        mine, trl = (inspect.signature(cls._generate_single_turn) for cls in (ours, theirs))
        assert list(mine.parameters) == list(trl.parameters)


# -- a real run on the session's engine -------------------------------------------------------------------------
@pytest.mark.engine
@pytest.mark.parametrize("recipe", ["grpo", pytest.param("rloo", marks=pytest.mark.slow)])
def test_grpo_and_rloo_sample_on_the_engine_with_the_adapter_synced_each_step(recipe, vllm_backend, tmp_path):
    from rlaif.train.grpo import run_group
    from rlaif.train.recipes import callbacks, train_and_save

    out = tmp_path / recipe
    overrides = [
        f"output_dir={out}",
        "train.max_steps=2",
        "train.max_completion_length=12",
        "train.rollout=vllm",
        "data.test_size=2",
        "model.quantize=none",
        "lora.r=8",  # the session engine's max_lora_rank
        "reward={verifier: ifeval}",
    ]
    cfg = load_config(CONFIGS / f"{recipe}.yaml", recipe, overrides, cpu=True)
    calls: list[tuple[int, str, list[int]]] = []  # (prompts, adapter path, completion lengths) per engine call
    served = vllm_backend.generate_ids

    def spy(prompts, params):
        results = served(prompts, params)
        calls.append((len(prompts), params.lora.path, [len(r.completions[0].token_ids) for r in results]))
        return results

    vllm_backend.generate_ids = spy
    try:
        result = run_group(cfg, False, callbacks(cfg), train_and_save, backend=vllm_backend)
    finally:
        del vllm_backend.generate_ids
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "loss" in row]
    assert [row["step"] for row in steps] == [1, 2] and all(0 <= row["reward"] <= 1 for row in steps)
    # 2 steps of 1 prompt x 2 completions, then 2 held-out prompts in eval batches of 2: every completion TRL
    # scored came from the engine (TRL's logged mean length is the mean of what the engine returned).
    assert [n for n, _, _ in calls] == [2, 2, 2, 2]
    for row, (_, _, lengths) in zip(steps, calls, strict=False):
        assert row["completions/mean_length"] == pytest.approx(sum(lengths) / len(lengths))
    # A fresh adapter folder (so a fresh LoRA id) at step 0, step 1 and for the eval at step 2; removed at the end.
    paths = [path for _, path, _ in calls]
    assert len(set(paths[:3])) == 3 and paths[3] == paths[2]
    assert all(Path(p).parent == out / ".rollout-adapters" for p in paths) and not (out / ".rollout-adapters").exists()
    if recipe == "grpo":  # temperature 1: the engine's log-probs feed TRL's importance-sampling correction
        logp_gap = [row["sampling/sampling_logp_difference/mean"] for row in steps]
        assert all(0 <= gap < 0.05 for gap in logp_gap), logp_gap  # same fp32 weights, same adapter: tiny gap
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert json.loads((out / "eval.json").read_text())["eval_reward"] >= 0
