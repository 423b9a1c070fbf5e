"""PPO takes a verifier as its reward (``reward: {verifier: NAME}``): the config validates it with file:line, the
reward source reads the row's columns, and an unverifiable completion scores 0.0 (counted). No model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlaif.config import ConfigError
from rlaif.train.config_load import load_config
from rlaif.train.rl.reward_sources import VerifierReward, build_reward

ROOT = Path(__file__).resolve().parents[2]
SEEDS = ROOT / "pipelines" / "data" / "seed_prompts.jsonl"


def _config(tmp_path: Path, reward: str) -> Path:
    path = tmp_path / "ppo.yaml"
    path.write_text(
        "recipe: ppo\n"
        "model: {name: builtin:smollm2-135m-instruct, quantize: nf4}\n"
        "lora: {r: 8, alpha: 8}\n"
        f"data: {{path: {SEEDS}}}\n"
        "reward:\n"
        f"{reward}"
        "train: {output_dir: runs/train/ppo, max_steps: 1}\n"
    )
    return path


def test_a_verifier_reward_validates_and_builds(tmp_path):
    cfg = load_config(_config(tmp_path, "  verifier: ifeval\n"), "ppo", cpu=True)
    assert cfg.reward.verifier == "ifeval" and cfg.reward.judge is None
    source = build_reward(cfg.reward, shared=None, model_cfg=cfg.model, lora=cfg.lora, cpu=True, max_length=256)
    assert isinstance(source, VerifierReward) and source.description == "verifier `ifeval`"
    rows = [
        {"prompt": "Write.", "constraints": [{"type": "all_lowercase"}]},
        {"prompt": "Write.", "constraints": '[{"type": "all_lowercase"}, {"type": "no_commas"}]'},
        {"prompt": "Write.", "constraints": [{"type": "bogus"}]},
    ]
    scores = source(["Write."] * 3, ["all quiet", "Loud, clear", "x"], rows)
    assert scores.tolist() == [1.0, 0.0, 0.0]
    assert sum(source.unverifiable.values()) == 1
    assert next(iter(source.unverifiable)).startswith("malformed constraints: unknown constraint type 'bogus'")


def test_columns_are_renamed_and_kwargs_reach_every_row(tmp_path):
    math_cfg = load_config(_config(tmp_path, "  verifier: math\n  columns: {answer: solution}\n"), "ppo")
    source = build_reward(math_cfg.reward, None, math_cfg.model, math_cfg.lora, True, 256)
    rows = [{"prompt": "q", "solution": "#### 12"}, {"prompt": "q", "solution": "7"}]
    assert source(["q", "q"], ["so \\boxed{12}", "I give up"], rows).tolist() == [1.0, 0.0]
    assert source.unverifiable == {"no final answer": 1} and source.last_unverifiable == 1  # PPO logs it per step
    regex_cfg = load_config(_config(tmp_path, "  verifier: regex\n  kwargs: {pattern: '^\\d+$'}\n"), "ppo")
    regex = build_reward(regex_cfg.reward, None, regex_cfg.model, regex_cfg.lora, True, 256)
    assert regex(["q", "q"], ["42", "x"], [{"prompt": "q"}, {"prompt": "q"}]).tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    ("reward", "line", "expected"),
    [
        ("  verifier: ifevl\n", 6, "reward.verifier: unknown verifier 'ifevl' (did you mean 'ifeval'?)"),
        ("  verifier: no_such_pkg.grade\n", 6, "reward.verifier: cannot import verifier 'no_such_pkg.grade'"),
        ("  verifier: math\n  function: contains\n", 5, "give exactly one reward source"),
        ("  function: contains\n  columns: {answer: x}\n", 5, "reward.columns goes with reward.verifier"),
    ],
)
def test_bad_verifier_rewards_fail_with_file_and_line(tmp_path, reward, line, expected):
    path = _config(tmp_path, reward)
    with pytest.raises(ConfigError) as exc:
        load_config(path, "ppo")
    assert f"{path}:{line}: " in str(exc.value) and expected in str(exc.value), str(exc.value)
