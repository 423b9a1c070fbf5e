"""Soft preference labels in training (``train.soft_labels``): the loss math, the config and data checks (fast), the
trainers' loss against the formula on a tiny random-init model, and short real runs on the builtin model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlaif.config import ConfigError
from rlaif.train.config import trl_args
from rlaif.train.config_load import load_config
from rlaif.train.data import DataFormatError

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "pipelines" / "train"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "train"
BUILTIN = "builtin:smollm2-135m-instruct"
# q per fixture row: soft, near-coin, hard (1.0) and null (a hard pair) labels, 24 rows.
Q = [0.9, 0.501, 1.0, None, 0.75, 0.6]

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def soft_rows(tmp_path: Path, q: list[float | None] | None = None, **extra: object) -> Path:
    """The prefs fixture with a ``chosen_prob`` column (cycling through ``q``)."""
    q = q or Q
    tmp_path.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (FIXTURES / "prefs.jsonl").read_text().splitlines()]
    path = tmp_path / "soft.jsonl"
    path.write_text(
        "".join(json.dumps({**r, "chosen_prob": q[i % len(q)], **extra}) + "\n" for i, r in enumerate(rows))
    )
    return path


def config(recipe: str, data: Path, out: Path, *overrides: str, model: str | Path = BUILTIN):
    base = [f"model.name={model}", f"data.path={data}", f"train.output_dir={out}", "train.save_steps=1000"]
    return load_config(CONFIGS / f"{recipe}.yaml", recipe, base + list(overrides), cpu=True)


# -- the loss ---------------------------------------------------------------------------------------------------
def test_soft_label_loss_is_the_cross_entropy_and_q_one_is_the_hard_loss():
    import torch

    from rlaif.train.soft_labels import soft_label_correction, soft_label_loss

    z = torch.tensor([2.0, -1.0, 0.3, 0.0], dtype=torch.float64, requires_grad=True)
    q = torch.tensor([0.9, 0.501, 1.0, 0.25], dtype=torch.float64)

    def sig(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    expected = -sum(
        qi * math.log(sig(zi)) + (1 - qi) * math.log(sig(-zi)) for zi, qi in zip(z.tolist(), q.tolist(), strict=True)
    ) / len(q)
    loss = soft_label_loss(z, q)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # TRL's hard loss plus the correction is the soft loss (how the trainers compute it) ...
    hard = -torch.nn.functional.logsigmoid(z).mean()
    assert (hard + soft_label_correction(z, q)).item() == pytest.approx(expected, rel=1e-12)
    # ... the correction vanishes at q = 1 ...
    assert soft_label_correction(z, torch.ones_like(q)).item() == 0.0
    # ... and the gradient is (sigmoid(z) - q) / n: a pair stops pulling where the model's P(chosen) equals q.
    loss.backward()
    assert z.grad.tolist() == pytest.approx(
        [(sig(zi) - qi) / 4 for zi, qi in zip(z.tolist(), q.tolist(), strict=True)]
    )


# -- config and data, before any model loads --------------------------------------------------------------------
def test_soft_labels_config_is_rlaifs_option_and_refuses_what_it_cannot_train():
    for recipe in ("rm", "dpo"):
        cfg = load_config(CONFIGS / f"{recipe}.yaml", recipe, ["train.soft_labels=true"], cpu=True)
        assert cfg.train.soft_labels and not hasattr(trl_args(cfg), "soft_labels")
    with pytest.raises(ConfigError, match=r"rm\.yaml.*use_margin and soft_labels are two ways"):
        load_config(CONFIGS / "rm.yaml", "rm", ["train.soft_labels=true", "train.use_margin=true"], cpu=True)
    with pytest.raises(ConfigError, match=r"dpo\.yaml.*loss_type is 'ipo', it needs sigmoid"):
        load_config(CONFIGS / "dpo.yaml", "dpo", ["train.soft_labels=true", "train.loss_type=ipo"], cpu=True)
    with pytest.raises(ConfigError, match=r"trl\.ld_alpha must stay None"):
        load_config(CONFIGS / "dpo.yaml", "dpo", ["train.soft_labels=true", "train.trl={ld_alpha: 0.5}"], cpu=True)


def handed_data(monkeypatch, tmp_path, recipe: str, data: Path, *overrides: str):
    """(trainer path, train rows, eval rows) that ``recipe`` hands to its trainer; no model is built."""
    import types

    import rlaif.train.recipes as recipes

    class Handed(Exception):
        pass

    def trainer(**kwargs):
        raise Handed(kwargs["train_dataset"], kwargs["eval_dataset"])

    picked = []
    monkeypatch.setattr(
        recipes, "build_model", lambda *a, **k: types.SimpleNamespace(model=None, tokenizer=None, peft_config=None)
    )
    monkeypatch.setattr(recipes, "import_object", lambda dotted: picked.append(dotted) or trainer)
    cfg = config(recipe, data, tmp_path / "o", "data.test_size=4", *overrides)
    with pytest.raises(Handed) as handed:
        recipes.run_recipe(cfg)
    return (picked[0], *handed.value.args)


@pytest.mark.parametrize(("recipe", "hard_trainer"), [("rm", "trl.RewardTrainer"), ("dpo", "trl.DPOTrainer")])
def test_the_recipe_hands_checked_soft_labels_to_its_soft_trainer(monkeypatch, tmp_path, recipe, hard_trainer):
    data = soft_rows(tmp_path)
    trainer, train, held_out = handed_data(monkeypatch, tmp_path, recipe, data, "train.soft_labels=true")
    assert trainer == f"rlaif.train.soft_labels.Soft{'Reward' if recipe == 'rm' else 'DPO'}Trainer"
    seen = sorted([*train["chosen_prob"], *held_out["chosen_prob"]])
    # The 4 null rows became hard pairs (1.0); every other q arrives as written.
    assert seen == pytest.approx(sorted([1.0 if q is None else q for q in Q] * 4))
    # Without soft_labels: TRL's own trainer and no column (a hard label, as before).
    trainer, train, held_out = handed_data(monkeypatch, tmp_path, recipe, data)
    assert trainer == hard_trainer and "chosen_prob" not in [*train.column_names, *held_out.column_names]


def test_bad_soft_labels_fail_before_any_model_loads(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="train.soft_labels: true needs a 'chosen_prob' column.*make_pairs"):
        handed_data(monkeypatch, tmp_path, "rm", FIXTURES / "prefs.jsonl", "train.soft_labels=true")
    for bad in (1.5, -0.2):
        data = soft_rows(tmp_path, [0.9, bad])
        with pytest.raises(
            DataFormatError, match=rf"row \d+: chosen_prob is {bad}; expected a probability in \[0, 1\]"
        ):
            handed_data(monkeypatch, tmp_path, "dpo", data, "train.soft_labels=true")


# -- the trainers on a tiny random-init model -------------------------------------------------------------------
def _trainer(trainer_cls, cfg):
    from rlaif.train.data import load_training_data
    from rlaif.train.model import build_model
    from rlaif.train.recipes import TRL_RECIPES

    recipe = TRL_RECIPES[cfg.recipe]
    data = recipe.prepare(load_training_data(cfg.data, cfg.recipe), cfg)
    built = build_model(cfg.model, cfg.lora, task=recipe.task, cpu=True, require_chat_template=True)
    trainer = trainer_cls(
        model=built.model,
        args=trl_args(cfg),
        train_dataset=data.train,
        processing_class=built.tokenizer,
        peft_config=built.peft_config,
    )
    trainer.model.eval()  # no dropout: the same batch gives the same loss twice
    return trainer, next(iter(trainer.get_train_dataloader()))


TINY = ["data.test_size=0", "lora.dropout=0", "model.quantize=none", "train.per_device_train_batch_size=2"]


@pytest.mark.model
def test_soft_reward_trainer_loss_is_the_cross_entropy_on_chosen_prob(tiny_model_dir, tmp_path):
    import torch
    from trl import RewardTrainer

    from rlaif.train.soft_labels import SoftRewardTrainer, soft_label_loss

    cfg = config(
        "rm", soft_rows(tmp_path, [0.7, 0.2]), tmp_path / "o", *TINY, "train.soft_labels=true",
        "train.center_rewards_coefficient=null", "data.max_samples=2", model=tiny_model_dir,
    )  # fmt: skip
    torch.manual_seed(0)
    trainer, batch = _trainer(SoftRewardTrainer, cfg)
    q = batch["chosen_prob"]
    assert sorted(q.tolist()) == pytest.approx([0.2, 0.7])
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
        rewards = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        chosen, rejected = rewards.chunk(2)
        assert (chosen - rejected).abs().min() > 1e-4  # a random score head: the pairs' scores differ
        assert loss.item() == pytest.approx(soft_label_loss(chosen - rejected, q).item(), rel=1e-5)
        # q = 1 is TRL's Bradley-Terry loss on the same batch.
        hard = {k: v for k, v in batch.items() if k != "chosen_prob"}
        bt = RewardTrainer.compute_loss(trainer, trainer.model, dict(hard))
        ones = trainer.compute_loss(trainer.model, {**hard, "chosen_prob": torch.ones(2)})
        assert ones.item() == pytest.approx(bt.item(), rel=1e-6)
        assert bt.item() == pytest.approx(-torch.nn.functional.logsigmoid(chosen - rejected).mean().item(), rel=1e-5)


@pytest.mark.model
@pytest.mark.parametrize("precompute", [False, True])
def test_soft_dpo_trainer_loss_is_cdpo_with_each_pairs_own_smoothing(tiny_model_dir, tmp_path, precompute):
    import torch

    from rlaif.train.soft_labels import SoftDPOTrainer, soft_label_loss

    cfg = config(
        "dpo", soft_rows(tmp_path, [0.7, 0.2]), tmp_path / "o", *TINY, "train.soft_labels=true", "train.beta=0.5",
        "data.max_samples=2", f"train.trl={{precompute_ref_log_probs: {str(precompute).lower()}}}",
        model=tiny_model_dir,
    )  # fmt: skip
    trainer, batch = _trainer(SoftDPOTrainer, cfg)
    assert ("ref_chosen_logps" in batch) == precompute  # the reference read from the data, not a second pass
    torch.manual_seed(0)
    for name, param in trainer.model.named_parameters():  # LoRA B starts at 0 (policy = reference, z = 0): move it
        if "lora_B" in name:
            param.data.normal_(0.0, 0.5)
    q = batch["chosen_prob"]

    def one_pair(i: int) -> dict:
        return {k: v[[i, i + 2]] if v.dim() > 1 else v[[i]] for k, v in batch.items()}

    with torch.no_grad():
        z = []
        for i in range(2):  # each pair's beta * h as TRL reports it (rewards/margins of a one-pair batch)
            hard = trainer.compute_loss(trainer.model, {k: v for k, v in one_pair(i).items() if k != "chosen_prob"})
            z.append(trainer._metrics["eval"]["rewards/margins"][-1])
            assert hard.item() == pytest.approx(-math.log(1 / (1 + math.exp(-z[-1]))), rel=1e-5)
        assert min(abs(v) for v in z) > 1e-3
        loss = trainer.compute_loss(trainer.model, dict(batch))
        expected = soft_label_loss(torch.tensor(z, dtype=torch.float64), q.double()).item()
        assert loss.item() == pytest.approx(expected, rel=1e-5)
        ones = trainer.compute_loss(trainer.model, {**batch, "chosen_prob": torch.ones(2)})
        assert ones.item() == pytest.approx(-sum(math.log(1 / (1 + math.exp(-v))) for v in z) / 2, rel=1e-5)


@pytest.mark.model
def test_a_reward_model_trained_on_soft_labels_is_calibrated_to_them(tiny_model_dir, tmp_path):
    # Every pair at q = 0.75: the soft loss is minimal where sigmoid(r_c - r_r) = 0.75, a margin of ln 3; hard labels
    # keep pushing the margin up. Measured (40 steps): margin 1.11 (sigmoid 0.747) soft vs 5.18 (0.994) hard.
    from rlaif.train.recipes import run_recipe

    fast = ["train.learning_rate=2e-3", "train.warmup_steps=0", "train.per_device_train_batch_size=4",
            "train.gradient_accumulation_steps=1", "model.gradient_checkpointing=false", "data.test_size=0",
            "train.max_steps=25", "train.center_rewards_coefficient=null"]  # fmt: skip
    margins = {}
    for label, extra in (("soft", ["train.soft_labels=true"]), ("hard", [])):
        data = soft_rows(tmp_path / label, [0.75]) if extra else FIXTURES / "prefs.jsonl"
        result = run_recipe(config("rm", data, tmp_path / label / "out", *fast, *extra, model=tiny_model_dir))
        rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
        last = [row["margin"] for row in rows if "loss" in row][-5:]
        margins[label] = sum(last) / len(last)
    assert margins["soft"] == pytest.approx(math.log(3), abs=0.3)
    assert margins["hard"] > 3.0


@pytest.mark.model
def test_soft_dpo_with_a_precomputed_reference_trains_and_evaluates(tiny_model_dir, tmp_path):
    # The reference log-probs of both splits come from the data (TRL's precompute pass, made before training):
    # the soft loss reads them there, and evaluation runs on them.
    from rlaif.train.recipes import run_recipe

    cfg = config(
        "dpo", soft_rows(tmp_path), tmp_path / "o", "train.soft_labels=true", "train.max_steps=2", "data.test_size=4",
        "train.trl={precompute_ref_log_probs: true}", model=tiny_model_dir,
    )  # fmt: skip
    result = run_recipe(cfg)
    assert math.isfinite(result.metrics["eval_loss"]) and "eval_rewards/margins" in result.metrics


# -- real training on the builtin model -------------------------------------------------------------------------
SHORT = ["train.max_steps=2", "train.max_length=96", "train.per_device_train_batch_size=2", "data.test_size=2"]


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["rm", "dpo"])
def test_soft_labels_train_the_builtin_model(tmp_path, recipe):
    from rlaif.train.recipes import run_recipe

    result = run_recipe(config(recipe, soft_rows(tmp_path), tmp_path / "out", *SHORT, "train.soft_labels=true"))
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert result.metrics and all(math.isfinite(v) for v in result.metrics.values())
    card = (result.adapter_dir / "README.md").read_text()
    assert "data soft labels: `cross-entropy on chosen_prob (train.soft_labels): " in card
