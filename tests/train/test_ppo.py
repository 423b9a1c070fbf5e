"""PPO: the math on hand-computed values, reward sources (rules, RM adapter, reward model, LLM judge), and real runs on
QLoRA (bitsandbytes NF4 on CPU) — the tiny random-init Llama for most, the builtin model once, vLLM rollouts once.

The learning test uses a tiny model whose EOS is plausible (a shared direction in every hidden state that its EOS
row reads), so "shorter answers" is learnable in a few steps; a fully random tiny model cannot move enough mass to
any token set for a reward to be learnable at all.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rlaif.config import ConfigError
from rlaif.train.config_load import load_config
from rlaif.train.data import DataFormatError
from rlaif.train.rl import core

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "pipelines" / "train" / "ppo.yaml"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "train"
BUILTIN = "builtin:smollm2-135m-instruct"
RULE = ["reward.judge=null", "reward.function=length_penalty"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def _config(model, out: Path, *overrides: str, data: Path | str | None = None):
    base = [f"model.name={model}", f"train.output_dir={out}", "train.max_steps=2", "train.save_steps=1000"]
    if data is not None:
        base.append(f"data.path={data}")
    return load_config(CONFIG, "ppo", base + list(overrides), cpu=True)


def _metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def _steps(output_dir: Path) -> list[dict]:
    return [row for row in _metrics(output_dir) if "loss/policy_avg" in row]


def brevity(prompts: list[str], completions: list[str], *, per: float = 100.0) -> list[float]:
    """A user reward function, loaded by dotted path (test_ppo.brevity): fewer characters score higher."""
    return [-len(text) / per for text in completions]


# -- the math, on hand-computed values --------------------------------------------------------------------------
def test_gae_matches_hand_computed_values_and_stops_at_the_mask():
    rewards, values = torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.5, 1.0, 1.5]])
    adv, ret = core.gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.8)
    # delta2 = 2 - 1.5; delta1 = 0 + .9*1.5 - 1; delta0 = 1 + .9*1 - .5; A_t = delta_t + .72 A_{t+1}
    assert torch.allclose(adv, torch.tensor([[1.9112, 0.71, 0.5]]), atol=1e-5)
    assert torch.allclose(ret, torch.tensor([[2.4112, 1.71, 2.0]]), atol=1e-5)
    adv, ret = core.gae(rewards, values, torch.tensor([[1.0, 1.0, 0.0]]), gamma=0.9, lam=0.8)
    # the episode ends after token 1: V after it is 0, padding gets nothing
    assert torch.allclose(adv, torch.tensor([[0.68, -1.0, 0.0]]), atol=1e-5)
    assert torch.allclose(ret, torch.tensor([[1.18, 0.0, 0.0]]), atol=1e-5)


def test_masked_whitening_ignores_padding():
    values, mask = torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert torch.allclose(core.masked_whiten(values, mask), torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-4)
    # rewards keep their mean: only the scale is normalised
    assert torch.allclose(
        core.masked_whiten(values, mask, shift_mean=False), torch.tensor([[1.0, 2.0, 3.0, 0.0]]), atol=1e-4
    )


def test_clipped_policy_and_value_losses():
    pg = core.policy_loss(
        torch.log(torch.tensor([[1.5, 0.5]])),
        torch.zeros(1, 2),
        torch.tensor([[1.0, -1.0]]),
        torch.ones(1, 2),
        cliprange=0.2,
    )
    # token 1: max(-1.5, -1.2) = -1.2; token 2: max(0.5, 0.8) = 0.8 -> mean -0.2, both clipped
    assert pg.loss.item() == pytest.approx(-0.2) and pg.clipfrac.item() == 1.0
    assert pg.ratio.item() == pytest.approx(1.0)
    inside = core.policy_loss(
        torch.log(torch.tensor([[1.1]])), torch.zeros(1, 1), torch.tensor([[2.0]]), torch.ones(1, 1), cliprange=0.2
    )
    assert inside.loss.item() == pytest.approx(-2.2) and inside.clipfrac.item() == 0.0
    vf = core.value_loss(
        torch.tensor([[2.0, 9.0]]),
        torch.tensor([[1.0, 9.0]]),
        torch.tensor([[3.0, 0.0]]),
        torch.tensor([[1.0, 0.0]]),
        cliprange_value=0.5,
    )
    # V clipped to 1.5: 0.5 * max((2-3)^2, (1.5-3)^2) = 1.125; the masked token counts for nothing
    assert vf.loss.item() == pytest.approx(1.125) and vf.clipfrac.item() == 1.0


def test_responses_are_cut_after_the_first_eos_and_scored_on_their_last_token():
    responses = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 0, 0, 0], [5, 6, 2, 2]])
    mask, has_eos = core.response_mask(responses, {2}, lengths=torch.tensor([4, 4, 4, 2]))
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]]
    assert has_eos.tolist() == [True, False, True, False]  # row 4: its "EOS" is padding past the generated length
    rewards = core.token_rewards(
        torch.tensor([1.0, 2.0]),
        torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]]),
        torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]),
        kl_coef=0.1,
    )
    assert torch.allclose(rewards, torch.tensor([[-0.01, 0.98, 0.0], [-0.05, -0.05, 1.95]]))
    assert core.kl_per_token(torch.tensor([0.0]), torch.tensor([1.0]), "k3").item() == pytest.approx(math.e - 2)
    uniform = torch.zeros(1, 1, 8)
    assert core.entropy(uniform).item() == pytest.approx(math.log(8))
    assert core.logprobs_of(uniform, torch.tensor([[3]])).item() == pytest.approx(-math.log(8))


# -- one base, several roles ------------------------------------------------------------------------------------
@pytest.mark.model
def test_roles_switch_on_one_base_and_each_adapter_gets_its_own_gradients(tiny_model_dir):
    from rlaif.train.config import LoraConfig, ModelConfig
    from rlaif.train.model import build_model
    from rlaif.train.rl.shared_base import REFERENCE, SharedBase, new_value_head

    built = build_model(
        ModelConfig(name=str(tiny_model_dir)),
        LoraConfig(r=4, dropout=0.0),
        adapters={"policy": None, "value": None},
        trainable=("policy", "value"),
        cpu=True,
    )
    shared = SharedBase(built.model, built.tokenizer, ("policy", "value"), new_value_head(64, "cpu", 0), 0.7)
    ids, mask = torch.tensor([[0, 1, 2, 3, 4, 5]]), torch.tensor([[0, 1, 1, 1, 1, 1]])  # left-padded prompt
    with torch.no_grad():
        for name, param in built.model.named_parameters():
            if "lora_B.value" in name:
                param.normal_()  # only the value adapter differs from the base
        with shared.use("value"):
            values = shared.values(ids, mask, 3)
        with shared.use("policy"):
            policy = shared.response_logits(ids, mask, 3)
        with shared.use(REFERENCE):
            reference = shared.response_logits(ids, mask, 3)
    assert torch.allclose(policy, reference, atol=1e-5) and values.shape == (1, 3)
    built.model.train()
    for role, out in (
        ("policy", lambda: shared.response_logits(ids, mask, 3).sum()),
        ("value", lambda: shared.values(ids, mask, 3).sum()),
    ):
        built.model.zero_grad()
        with shared.use(role):
            out().backward()
        grads = {n.split(".")[-2] for n, p in built.model.named_parameters() if "lora_B" in n and p.grad is not None}
        assert grads == {role}, role


@pytest.mark.model
def test_a_policy_started_from_an_adapter_is_anchored_to_a_frozen_copy_of_it(tiny_model_dir, tmp_path):
    from rlaif.train.config import LoraConfig, ModelConfig
    from rlaif.train.model import build_model
    from rlaif.train.rl.shared_base import REFERENCE, SharedBase, new_value_head

    cfg = ModelConfig(name=str(tiny_model_dir), gradient_checkpointing=False)
    sft = build_model(cfg, LoraConfig(r=4, dropout=0.1), adapters={"default": None}, cpu=True).model
    with torch.no_grad():
        for name, param in sft.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    sft.save_pretrained(tmp_path / "sft")  # an "SFT adapter", trained with dropout
    built = build_model(
        cfg,
        LoraConfig(r=4, dropout=0.0),
        cpu=True,
        trainable=("policy", "value"),
        adapters={"policy": tmp_path / "sft", "value": None, "reference": tmp_path / "sft"},
    )
    shared = SharedBase(
        built.model.train(),
        built.tokenizer,
        ("policy", "value"),
        new_value_head(64, "cpu", 0),
        1.0,
        reference="reference",
    )
    ids, mask = torch.tensor([[1, 2, 3, 4, 5]]), torch.ones(1, 5, dtype=torch.long)

    def logits(role):
        with torch.no_grad(), shared.use(role):
            return shared.response_logits(ids, mask, 2)

    with torch.no_grad(), shared.bare():
        bare = shared.response_logits(ids, mask, 2)
    assert torch.equal(logits("policy"), logits("policy"))  # train mode, yet no dropout: passes agree
    assert torch.allclose(logits("policy"), logits(REFERENCE)) and not torch.allclose(logits("policy"), bare)
    with torch.no_grad():
        for name, param in built.model.named_parameters():
            if "lora_B.policy" in name:
                param.add_(1.0)
    assert not torch.allclose(logits("policy"), logits(REFERENCE))  # the reference stays where PPO started
    assert all(not p.requires_grad for n, p in built.model.named_parameters() if ".reference." in n)


# -- reward sources ---------------------------------------------------------------------------------------------
def _fake_judge(tiny_model_dir, boosts: dict[tuple[int, str], float]):
    """A JudgeReward on the real tokenizer whose 'model' puts logit mass on chosen score tokens by position."""
    from transformers import AutoTokenizer

    from rlaif.train.config import JudgeConfig
    from rlaif.train.rl.judge_reward import JudgeReward

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    calls = []

    def tail(ids, mask, k):
        calls.append(ids.shape)
        logits = torch.zeros(ids.shape[0], k, len(tokenizer))
        for (position, text), value in boosts.items():
            logits[:, position, tokenizer.convert_tokens_to_ids(text)] = value
        return logits

    return JudgeReward(tail, tokenizer, JudgeConfig(), batch_size=8, description="fake"), calls


@pytest.mark.model
@pytest.mark.parametrize(
    ("boosts", "expected"),
    [
        ({(1, "7"): 30.0}, 7.0),
        ({(1, "7"): 30.0, (1, "9"): 30.0}, 8.0),
        ({(1, "1"): 30.0, (2, "0"): 30.0}, 10.0),  # "10" = "1" then "0"
        ({(1, "1"): 30.0}, 1.0),  # "1" and then anything but "0": the score 1
    ],
)
def test_judge_reward_is_the_expected_score_over_the_score_tokens(tiny_model_dir, boosts, expected):
    judge, calls = _fake_judge(tiny_model_dir, boosts)
    scores = judge.expected_scores(["What is 2+2?", [{"role": "user", "content": "Hi"}]], ["4", "Hello!"])
    assert scores.tolist() == pytest.approx([expected] * 2, abs=1e-3)
    assert len(calls) == 1  # scale 1..10 on a digit-splitting tokenizer: one forward pass
    rewards = judge(["q"], ["a"], [{}])
    assert rewards.item() == pytest.approx(2 * (expected - 1) / 9 - 1, abs=1e-3)  # mapped to [-1, 1]


@pytest.mark.model
def test_the_shared_base_judges_like_a_separately_loaded_judge(tiny_model_dir):
    from rlaif.train.config import JudgeConfig, LoraConfig, ModelConfig, RewardConfig
    from rlaif.train.model import build_model
    from rlaif.train.rl.reward_sources import build_reward
    from rlaif.train.rl.shared_base import SharedBase, new_value_head

    cfg = ModelConfig(name=str(tiny_model_dir), gradient_checkpointing=False)
    built = build_model(
        cfg,
        LoraConfig(r=4, dropout=0.0),
        adapters={"policy": None, "value": None},
        trainable=("policy", "value"),
        cpu=True,
    )
    shared = SharedBase(built.model.eval(), built.tokenizer, ("policy", "value"), new_value_head(64, "cpu", 0), 1.0)
    with torch.no_grad():
        for name, param in built.model.named_parameters():
            if "lora_B" in name:
                param.normal_()  # the judge must read the base, whatever the adapters hold
    prompts, answers = ["What is 2+2?", "Name a colour."], ["4", "Blue, or perhaps green."]
    on_base = build_reward(RewardConfig(judge=JudgeConfig()), shared, cfg, LoraConfig(), cpu=True, max_length=256)
    separate = build_reward(
        RewardConfig(judge=JudgeConfig(model=str(tiny_model_dir))), shared, cfg, LoraConfig(), cpu=True, max_length=256
    )
    scores = on_base(prompts, answers, [{}, {}])
    assert scores.tolist() == pytest.approx(separate(prompts, answers, [{}, {}]).tolist(), abs=1e-4)
    assert all(-1 <= s <= 1 for s in scores.tolist()) and scores[0] != scores[1]


def test_rule_rewards_resolve_by_name_or_dotted_path_and_check_what_they_return():
    from rlaif.train.rl.reward_sources import FunctionReward

    contains = FunctionReward("contains", {"word": "thanks"})
    assert contains(["q", "q"], ["Thanks a lot", "no"], [{}, {}]).tolist() == [1.0, 0.0]
    assert FunctionReward("length_penalty", {})(["q"], ["abcd"], [{}]).tolist() == [pytest.approx(-0.04)]
    assert FunctionReward("regex_match", {"pattern": r"^\d+$"})(["q", "q"], ["42", "x"], [{}, {}]).tolist() == [1, 0]
    # a user function by dotted path gets only the columns it names
    assert FunctionReward("test_ppo.brevity", {"per": 10})(["q"], ["abcde"], [{"prompt": "q", "x": 1}]).tolist() == [
        pytest.approx(-0.5)
    ]
    broken = FunctionReward("test_ppo.brevity", {})
    broken.fn = lambda prompts, completions, **kw: [float("nan")]
    with pytest.raises(ValueError, match="expected one finite number per completion"):
        broken(["q"], ["a"], [{}])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["reward.function=contains"], "give exactly one reward source of function, adapter, model, judge"),
        (["reward.judge=null"], "give exactly one reward source"),
        (
            ["reward.judge=null", "reward.function=no_such_reward"],
            "unknown reward function 'no_such_reward'; known: contains, length_penalty, regex_match",
        ),
        (["lora.dropout=0.1"], "lora.dropout must be 0 for ppo"),
        (["train.trl={foo: 1}"], "takes no TRL options"),
        (["train.kl_estimator=k9"], "override 'train.kl_estimator=k9': Input should be 'k1' or 'k3' (got 'k9')"),
        (["train.lr_scheduler_type=warp"], "unknown lr_scheduler_type 'warp'"),
        (["reward.judge={scale: [5, 3]}"], "judge.scale must be low..high"),
    ],
)
def test_ppo_config_errors_name_the_file_and_key(overrides, expected):
    with pytest.raises(ConfigError) as exc:
        load_config(CONFIG, "ppo", overrides)
    assert "ppo.yaml" in str(exc.value) and expected in str(exc.value)


def test_cpu_profile_and_batch_shape():
    gpu, cpu = load_config(CONFIG, "ppo"), load_config(CONFIG, "ppo", cpu=True)
    assert gpu.lora.dropout == 0.0 and gpu.reward.judge is not None and gpu.args().optim == "paged_adamw_32bit"
    assert (gpu.train.rollout_batch_size(), gpu.train.response_length, gpu.train.max_length) == (8, 128, 1024)
    assert (cpu.train.rollout_batch_size(), cpu.train.response_length, cpu.train.max_length) == (4, 32, 256)
    assert cpu.args().optim == "adamw_torch"


def test_malformed_data_fails_before_any_model_loads(monkeypatch, tmp_path):
    import rlaif.train.rl.ppo as ppo_module
    from rlaif.cli import app
    from rlaif.train.recipes import run_recipe

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the data was checked")

    monkeypatch.setattr(ppo_module, "build_model", no_model)
    cfg = _config("builtin:smollm2-135m-instruct", tmp_path / "o", data=FIXTURES / "sft.jsonl")
    with pytest.raises(
        DataFormatError,
        match=r"detected format 'sft messages' \(columns: messages\); the ppo recipe "
        r"expects prompt-only \(prompt\) or preference",
    ):
        run_recipe(cfg)
    missing = _config(
        "builtin:smollm2-135m-instruct",
        tmp_path / "o",
        "reward.judge=null",
        f"reward.adapter={tmp_path}",
        data=FIXTURES / "prompt_only.jsonl",
    )
    with pytest.raises(ConfigError, match="not an adapter directory"):
        run_recipe(missing)
    result = CliRunner().invoke(
        app,
        [
            "train",
            "ppo",
            str(CONFIG),
            f"data.path={FIXTURES / 'sft.jsonl'}",
            f"train.output_dir={tmp_path}/o",
            "--cpu",
        ],
    )
    assert result.exit_code == 2 and "detected format 'sft messages'" in result.output


# -- runs on real QLoRA -----------------------------------------------------------------------------------------
@pytest.mark.model
def test_ppo_trains_from_the_shipped_config_with_the_judge_reward(tiny_model_dir, tmp_path):
    from rlaif.train.model import build_model
    from rlaif.train.recipes import run_recipe
    from rlaif.train.rl.shared_base import VALUE_HEAD_FILE

    cfg = _config(tiny_model_dir, tmp_path / "out", "train.save_steps=1", "lora.r=4")
    assert cfg.reward.judge is not None and cfg.reward.judge.model is None  # the shared base judges (d-RLAIF)
    result = run_recipe(cfg)
    steps = _steps(result.output_dir)
    assert [row["step"] for row in steps] == [1, 2]
    for row in steps:
        assert all(
            math.isfinite(row[k])
            for k in (
                "loss/policy_avg",
                "loss/value_avg",
                "objective/kl",
                "objective/entropy",
                "policy/clipfrac_avg",
                "objective/scores",
            )
        )
        assert -1 <= row["objective/scores"] <= 1 and 0 < row["val/response_length"] <= 32
    assert steps[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference before the first update
    assert set(result.metrics) >= {"eval_score", "eval_score_reference", "eval_kl"}
    assert json.loads((result.output_dir / "eval.json").read_text()) == result.metrics
    card = (result.adapter_dir / "README.md").read_text()
    assert "rlaif's `ppo` recipe" in card and "LLM judge: the shared base" in card and "mean reward (policy)" in card
    assert (result.output_dir / "value" / VALUE_HEAD_FILE).is_file()
    assert (result.output_dir / "checkpoint-1" / "trainer_state.json").is_file()
    assert not (result.output_dir / ".rollout-adapters").exists()
    reloaded = build_model(cfg.model, None, adapters={"default": result.adapter_dir}, cpu=True).model
    lora_b = [p for n, p in reloaded.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # the trained adapter, not a fresh one
    assert torch.isfinite(reloaded(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


@pytest.fixture(scope="module")
def eos_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny Llama, untied, with a direction shared by every hidden state that its EOS row reads (P(EOS) ~5%)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        shared = torch.randn(config.hidden_size, generator=generator)
        shared /= shared.norm()
        model.model.embed_tokens.weight += 0.16 * shared
        model.lm_head.weight.normal_(0, 0.3, generator=generator)
        model.lm_head.weight[tokenizer.eos_token_id] = 2.0 * shared
    out = tmp_path_factory.mktemp("eos-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.model
def test_ppo_with_a_rule_reward_raises_the_mean_reward_with_bounded_kl(eos_model_dir, tmp_path):
    from rlaif.train.recipes import run_recipe

    cfg = _config(
        eos_model_dir,
        tmp_path / "out",
        "reward.judge=null",
        "reward.function=test_ppo.brevity",
        "train.max_steps=12",
        "train.learning_rate=2e-3",
        "train.num_ppo_epochs=2",
        "train.per_device_train_batch_size=8",
        "train.num_mini_batches=1",
        "train.response_length=8",
        "lora.r=8",
        "model.gradient_checkpointing=false",
        "data.test_size=0",
        data=FIXTURES / "prefs.jsonl",
    )
    result = run_recipe(cfg)
    steps = _steps(result.output_dir)
    scores = [row["objective/scores"] for row in steps]
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert last > first + 0.15, scores  # shorter answers: from ~-0.4 (8 tokens) towards 0 (an early EOS)
    assert steps[-1]["val/response_length"] < steps[0]["val/response_length"] - 2
    kls = [row["objective/kl"] for row in steps]
    assert kls[0] == pytest.approx(0.0, abs=1e-5) and max(kls) < 8.0, kls  # the KL penalty keeps the policy near
    assert "function `test_ppo.brevity`" in (result.adapter_dir / "README.md").read_text()


@pytest.mark.model
def test_reward_model_adapter_on_the_shared_base_scores_like_the_reward_model(tiny_model_dir, tmp_path):
    from rlaif.steps.scoring import load_reward_model, score_conversations
    from rlaif.train.config import LoraConfig, ModelConfig
    from rlaif.train.model import build_model
    from rlaif.train.recipes import run_recipe
    from rlaif.train.rl.reward_sources import AdapterReward, ModelReward, reward_problem
    from rlaif.train.rl.shared_base import SharedBase, new_value_head

    rm = run_recipe(
        load_config(
            ROOT / "pipelines" / "train" / "rm.yaml",
            "rm",
            [
                f"model.name={tiny_model_dir}",
                f"data.path={FIXTURES / 'prefs.jsonl'}",
                f"train.output_dir={tmp_path}/rm",
                "train.max_steps=2",
                "train.save_steps=1000",
                "lora.r=4",
                "data.test_size=0",
            ],
            cpu=True,
        )
    )
    prompts = [[{"role": "user", "content": "Tell me about apples."}], "Tell me about rivers."]
    completions = ["Gladly! Apples are great.", "No."]
    expected_model, tokenizer = load_reward_model(str(rm.adapter_dir), "cpu", torch.float32)
    conversations = [
        [{"role": "user", "content": "Tell me about apples."}, {"role": "assistant", "content": c}]
        for c in completions
    ]
    conversations[1][0]["content"] = "Tell me about rivers."
    expected = score_conversations(expected_model, tokenizer, conversations, 8, 256)[0]
    plain = ModelConfig(name=str(tiny_model_dir), quantize="none", gradient_checkpointing=False)
    built = build_model(
        plain,
        LoraConfig(r=4, dropout=0.0),
        adapters={"policy": None, "value": None, "reward": rm.adapter_dir},
        trainable=("policy", "value"),
        cpu=True,
    )
    shared = SharedBase(built.model.eval(), built.tokenizer, ("policy", "value"), new_value_head(64, "cpu", 0), 1.0)
    adapter_reward = AdapterReward(shared, rm.adapter_dir, batch_size=2, max_length=256)
    on_shared_base = adapter_reward(prompts, completions, [{}] * 2)
    assert on_shared_base.tolist() == pytest.approx(expected, abs=1e-4) and expected[0] != pytest.approx(expected[1])
    separate = ModelReward(str(rm.adapter_dir), plain, LoraConfig(), cpu=True, batch_size=2, max_length=256)
    assert separate(prompts, completions, [{}] * 2).tolist() == pytest.approx(expected, abs=1e-4)
    cfg = _config(
        tiny_model_dir,
        tmp_path / "out",
        "reward.judge=null",
        f"reward.adapter={rm.adapter_dir}",
        "lora.r=4",
        "train.response_length=8",
        "data.test_size=0",
        data=FIXTURES / "prefs.jsonl",
    )
    assert reward_problem(cfg.reward, BUILTIN) and "fits only its own base" in reward_problem(cfg.reward, BUILTIN)
    result = run_recipe(cfg)
    assert all(math.isfinite(row["loss/value_avg"]) for row in _steps(result.output_dir))
    assert "RM adapter" in (result.adapter_dir / "README.md").read_text()


@pytest.mark.model
@pytest.mark.slow
def test_ppo_on_the_builtin_model(tmp_path):
    from rlaif.train.recipes import run_recipe

    cfg = _config(
        BUILTIN,
        tmp_path / "out",
        "train.num_ppo_epochs=1",
        "train.num_mini_batches=1",
        "train.response_length=12",
        "data.test_size=0",
        "model.gradient_checkpointing=false",
    )
    result = run_recipe(cfg)  # the shipped reward: the builtin model judges its own answers, adapters off
    steps = _steps(result.output_dir)
    assert len(steps) == 2 and all(
        math.isfinite(r["loss/policy_avg"]) and math.isfinite(r["loss/value_avg"]) for r in steps
    )
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == BUILTIN


@pytest.mark.engine
def test_ppo_rolls_out_on_vllm_with_the_policy_adapter_hot_swapped(vllm_backend, tmp_path):
    from rlaif.train.rl.ppo import ppo

    cfg = _config(
        BUILTIN,
        tmp_path / "out",
        *RULE,
        "train.rollout=vllm",
        "lora.r=8",
        "train.num_ppo_epochs=1",
        "train.num_mini_batches=1",
        "train.response_length=8",
        "data.test_size=0",
        "model.gradient_checkpointing=false",
    )
    before = dict(vllm_backend._lora_ids)
    result = ppo(cfg, backend=vllm_backend)
    steps = _steps(result.output_dir)
    assert len(steps) == 2 and all(math.isfinite(r["loss/policy_avg"]) for r in steps)
    assert steps[0]["objective/kl"] == pytest.approx(0.0, abs=1e-4)  # HF re-scores vLLM's samples, policy == ref
    sent = {path: i for path, i in vllm_backend._lora_ids.items() if path not in before}
    assert len(sent) == 2 and len(set(sent.values())) == 2  # a fresh adapter path and LoRA id for every rollout
    assert all(Path(path).parent.name == ".rollout-adapters" for path in sent)
    assert not (result.output_dir / ".rollout-adapters").exists()


@pytest.mark.model
@pytest.mark.slow
def test_ppo_killed_with_sigkill_resumes_from_its_last_complete_checkpoint(tiny_model_dir, tmp_path):
    from killing import run_and_kill

    from rlaif.cli import app

    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "rlaif.cli",
        "train",
        "ppo",
        str(CONFIG),
        f"model.name={tiny_model_dir}",
        f"train.output_dir={out}",
        "train.max_steps=12",
        "train.save_steps=2",
        "train.save_total_limit=null",
        *RULE,
        "lora.r=4",
        "train.response_length=8",
        "data.test_size=0",
        "train.num_ppo_epochs=1",
        "--cpu",
    ]
    last = run_and_kill(args, ROOT, out, loss_key="loss/policy_avg")
    resumed_step = json.loads((last / "trainer_state.json").read_text())["global_step"]
    before_kill = {row["step"]: row for row in _steps(out)}
    (out / "checkpoint-11" / "policy").mkdir(parents=True)  # half-written: no marker, must be ignored
    result = CliRunner().invoke(app, ["train", "ppo", *args[5:-1], "--cpu", "--resume"])
    assert result.exit_code == 0, result.output
    assert f"resumed from {last}" in result.output
    starts = [row["step"] for row in _metrics(out) if row.get("event") == "train_begin"]
    assert starts == [0, resumed_step]
    rows = _metrics(out)
    after = [
        row
        for row in rows[rows.index({"event": "train_begin", "step": resumed_step, "max_steps": 12}) :]
        if "loss/policy_avg" in row
    ]
    assert [row["step"] for row in after] == list(range(resumed_step + 1, 13))
    # Optimizer, LR schedule, adapters, value head and RNG came back: the first resumed step repeats the killed
    # run's step exactly, and the linear schedule continues where it was.
    # (Before rlaif.train.model.one_4bit_kernel, on AVX512-BF16 CPUs every checkpoint save re-quantized the NF4 base
    # in the killed run's memory, so the resumed run, loading the pristine base, computed another KL.)
    again, first = after[0], before_kill[resumed_step + 1]
    for key in ("objective/scores", "loss/policy_avg", "loss/value_avg", "lr"):
        assert again[key] == pytest.approx(first[key], rel=1e-4, abs=1e-6), key
    # KL sums 8 differences of near-equal log-probs (~ -11 each, float32 ulp ~1e-6): compare it on that scale.
    assert again["objective/kl"] == pytest.approx(first["objective/kl"], abs=8 * 1e-5)
    assert all(row["lr"] == pytest.approx(1e-5 * (1 - row["step"] / 12), abs=1e-9) for row in after)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    rerun = CliRunner().invoke(app, ["train", "ppo", *args[5:-1], "--cpu"])
    assert rerun.exit_code == 2 and "pass --resume" in rerun.output
