"""Training: configs, data checks, THE builder, and every recipe on real QLoRA (bitsandbytes NF4 on CPU, real TRL).

Recipes run from the shipped configs in pipelines/train/ with the CPU profile on a tiny random-init Llama (2 layers,
hidden 64, the builtin tokenizer), a few steps each; one DPO run uses the builtin model itself.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlaif.config import ConfigError
from rlaif.train.config import trl_args
from rlaif.train.config_load import load_config
from rlaif.train.data import DataFormatError, load_training_data

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "pipelines" / "train"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "train"
BUILTIN = "builtin:smollm2-135m-instruct"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


def _config(name: str, recipe: str, model: Path | str, out: Path, data: Path | str, *overrides: str):
    base = [
        f"model.name={model}",
        f"data.path={data}",
        f"train.output_dir={out}",
        "train.max_steps=2",
        "train.save_steps=1000",
    ]
    return load_config(CONFIGS / f"{name}.yaml", recipe, base + list(overrides), cpu=True)


def _metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def _run_dir(tmp_path: Path) -> Path:
    """A pipeline run directory as `rlaif run` leaves it: Hub-layout Parquet dataset plus cache fingerprints."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = tmp_path / "runs" / "prefs"
    (run / "dataset" / "data").mkdir(parents=True)
    rows = [json.loads(line) for line in (FIXTURES / "prefs.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), run / "dataset" / "data" / "train-00000-of-00001.parquet")
    (run / "dataset" / ".rlaif-fingerprint").write_text("abc123/train/False/1")
    (run / "steps" / "pairs").mkdir(parents=True)
    (run / "steps" / "pairs" / "fingerprint").write_text("abc123")
    return run


# -- configs ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_training_config_validates(path):
    import yaml

    recipe = yaml.safe_load(path.read_text())["recipe"]
    gpu, cpu = load_config(path, recipe), load_config(path, recipe, cpu=True)
    assert gpu.model.name == BUILTIN and gpu.lora.r == 16 and gpu.lora.target_modules == "all-linear"
    assert gpu.train.optim == "paged_adamw_32bit" and not gpu.cpu
    args = cpu.args() if recipe == "ppo" else trl_args(cpu)  # PPO is rlaif's own loop: no TRL config class
    assert (args.use_cpu, args.bf16, args.optim) == (True, False, "adamw_torch")


def test_zephyr_defaults_and_cpu_profile_keeps_explicit_values():
    gpu = load_config(CONFIGS / "dpo.yaml", "dpo").train
    assert (
        gpu.beta,
        gpu.learning_rate,
        gpu.per_device_train_batch_size,
        gpu.gradient_accumulation_steps,
        gpu.max_length,
    ) == (0.01, 5e-6, 4, 4, 1024)
    cfg = load_config(CONFIGS / "dpo.yaml", "dpo", ["train.logging_steps=7"], cpu=True)
    args = trl_args(cfg)
    assert args.loss_type == ["sigmoid"] and args.beta == 0.01
    assert args.logging_steps == 7  # set by the user: the CPU profile leaves it
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.max_length) == (2, 1, 256)
    simpo = trl_args(load_config(CONFIGS / "simpo.yaml", "dpo", cpu=True))
    assert type(simpo).__name__ == "CPOConfig" and simpo.loss_type == "simpo" and simpo.cpo_alpha == 0.0


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["train.learning_rat=1"],
            "override 'train.learning_rat=1': unknown key 'learning_rat' (did you mean 'learning_rate'?)",
        ),
        (["train.loss_type=dpo_magic"], "unknown loss_type 'dpo_magic'; choices: sigmoid, ipo, robust"),
        (["train.trl={warp_drive: 1}"], "trl.warp_drive is not an option of DPOConfig"),
        (["train.trl={use_cpu: true}"], "trl.use_cpu is set by rlaif: use cpu: true or --cpu"),
        (["train.trl={beta: 0.5}"], "trl.beta is a typed field: set train.beta"),
        (
            ["train.loss_type=orpo", "train.trl={label_smoothing: 0.1}"],
            "trl.label_smoothing is not an option of ORPOConfig",
        ),
        (["model.quantize=fp3"], "override 'model.quantize=fp3': Input should be 'nf4', 'int8' or 'none' (got 'fp3')"),
        (["data.format=hh_rlfh"], "unknown format 'hh_rlfh'"),
        (["data.hub=org/x"], "give exactly one of data.path"),
        (["lora=null"], "a quantized base trains only through LoRA"),
    ],
)
def test_config_errors_name_the_file_and_key(overrides, expected):
    with pytest.raises(ConfigError) as exc:
        load_config(CONFIGS / "dpo.yaml", "dpo", overrides)
    assert "dpo.yaml" in str(exc.value) and expected in str(exc.value)


def test_trl_value_errors_name_the_file_before_any_model_loads():
    cfg = load_config(CONFIGS / "dpo_robust.yaml", "dpo", ["train.trl={loss_weights: [1.0, 2.0]}"], cpu=True)
    with pytest.raises(ConfigError, match="dpo_robust.yaml: train: DPOConfig rejects these options: .*loss_weights"):
        trl_args(cfg)


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: dpo\nmodel: {name: x\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(bad, "dpo")
    with pytest.raises(ConfigError, match="recipe: dpo cannot run as `rlaif train sft`"):
        load_config(CONFIGS / "dpo.yaml", "sft")
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(CONFIGS / "dpo.yaml", "dpo", ["train.beta"])


# -- data -------------------------------------------------------------------------------------------------------
def test_data_from_a_run_directory_records_its_fingerprints(tmp_path):
    data = load_training_data(
        load_config(CONFIGS / "dpo.yaml", "dpo", [f"data.path={_run_dir(tmp_path)}"]).data, "dpo"
    )
    assert data.format == "preference" and data.conversational
    assert (len(data.train), len(data.eval)) == (21, 3)
    assert data.provenance["dataset_fingerprint"] == "abc123/train/False/1"
    assert data.provenance["step_fingerprints"] == {"pairs": "abc123"}


def test_human_preference_adapter_converts_and_counts_malformed_records():
    from rlaif.train.config import DataConfig

    data = load_training_data(
        DataConfig(path=str(FIXTURES.parent / "hh_rlhf.jsonl"), format="hh_rlhf", test_size=0), "dpo"
    )
    assert data.format == "preference" and data.eval is None
    assert data.train[0]["prompt"][-1]["role"] == "user" and data.train[0]["chosen"][0]["role"] == "assistant"
    assert sum(data.provenance["quarantined"].values()) == 10 - len(data.train) > 0


def test_kto_unpairs_preference_rows_and_reads_unpaired_rows():
    from rlaif.train.config import DataConfig

    paired = load_training_data(DataConfig(path=str(FIXTURES / "prefs.jsonl"), test_size=0), "kto")
    assert len(paired.train) == 48 and set(paired.train["label"][:12]) == {True, False}  # shuffled after unpairing
    unpaired = load_training_data(DataConfig(path=str(FIXTURES / "kto.jsonl"), test_size=0.25), "kto")
    assert unpaired.format == "unpaired preference" and (len(unpaired.train), len(unpaired.eval)) == (9, 3)


@pytest.mark.parametrize(
    ("recipe", "data", "expected"),
    [
        (
            "dpo",
            FIXTURES / "prompt_only.jsonl",
            "detected format 'prompt-only' (columns: prompt); "
            "the dpo recipe expects preference (prompt, chosen, rejected)",
        ),
        (
            "sft",
            FIXTURES / "prefs.jsonl",
            "detected format 'preference' (columns: prompt, chosen, rejected, source); "
            "the sft recipe expects sft messages (messages)",
        ),
        ("rm", FIXTURES.parent / "ultrafeedback.jsonl", "set data.format: ultrafeedback"),
    ],
)
def test_malformed_data_fails_before_any_model_loads(monkeypatch, tmp_path, recipe, data, expected):
    import rlaif.train.recipes as recipes

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the data was checked")

    monkeypatch.setattr(recipes, "build_model", no_model)
    cfg = load_config(
        CONFIGS / f"{recipe}.yaml", recipe, [f"data.path={data}", f"train.output_dir={tmp_path}/o"], cpu=True
    )
    with pytest.raises(DataFormatError) as exc:
        recipes.run_recipe(cfg)
    assert expected in str(exc.value)
    from rlaif.cli import app

    result = CliRunner().invoke(
        app,
        [
            "train",
            recipe,
            str(CONFIGS / f"{recipe}.yaml"),
            f"data.path={data}",
            f"train.output_dir={tmp_path}/o",
            "--cpu",
        ],
    )
    assert result.exit_code == 2 and "detected format" in result.output


def test_a_gpu_config_without_a_gpu_asks_for_the_cpu_profile(tmp_path):
    import torch

    from rlaif.train.recipes import run_recipe

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="--cpu"):
        run_recipe(load_config(CONFIGS / "sft.yaml", "sft", [f"train.output_dir={tmp_path}"]))


def _rm_dataset_seen_by_the_trainer(monkeypatch, tmp_path, data: Path, *overrides: str):
    """(train, eval) datasets that the rm recipe hands to TRL's RewardTrainer; no model is built."""
    import types

    import trl

    import rlaif.train.recipes as recipes

    class Handed(Exception):
        pass

    def trainer(**kwargs):
        raise Handed(kwargs["train_dataset"], kwargs["eval_dataset"])

    monkeypatch.setattr(
        recipes, "build_model", lambda *a, **k: types.SimpleNamespace(model=None, tokenizer=None, peft_config=None)
    )
    monkeypatch.setattr(trl, "RewardTrainer", trainer)
    cfg = load_config(
        CONFIGS / "rm.yaml",
        "rm",
        [f"data.path={data}", f"train.output_dir={tmp_path}/o", "data.test_size=4", *overrides],
        cpu=True,
    )
    with pytest.raises(Handed) as handed:
        recipes.run_recipe(cfg)
    return handed.value.args


def test_rm_trains_bradley_terry_unless_use_margin_keeps_the_margin_column(monkeypatch, tmp_path):
    # TRL's RewardTrainer subtracts a `margin` column inside the loss whenever the dataset has one (Llama 2's margin
    # loss); make_pairs writes one from scores, so plain Bradley-Terry must drop it unless asked for.
    rows = [json.loads(line) for line in (FIXTURES / "prefs.jsonl").read_text().splitlines()]
    with_margin = tmp_path / "scored.jsonl"
    with_margin.write_text("".join(json.dumps({**r, "margin": 1.0 + i % 3}) + "\n" for i, r in enumerate(rows)))
    train, held_out = _rm_dataset_seen_by_the_trainer(monkeypatch, tmp_path, with_margin)
    assert "margin" not in train.column_names and "margin" not in held_out.column_names
    train, held_out = _rm_dataset_seen_by_the_trainer(monkeypatch, tmp_path, with_margin, "train.use_margin=true")
    assert "margin" in train.column_names and "margin" in held_out.column_names
    assert set(train["margin"]) <= {1.0, 2.0, 3.0}
    args = trl_args(load_config(CONFIGS / "rm.yaml", "rm", ["train.use_margin=true"], cpu=True))
    assert not hasattr(args, "use_margin")  # rlaif's option, not passed to RewardConfig
    with pytest.raises(ConfigError, match="train.use_margin: true needs a 'margin' column"):
        _rm_dataset_seen_by_the_trainer(monkeypatch, tmp_path, FIXTURES / "prefs.jsonl", "train.use_margin=true")


# -- the builder ------------------------------------------------------------------------------------------------
@pytest.mark.model
@pytest.mark.parametrize("quantize", ["nf4", "int8", "none"])
def test_builder_quantizes_on_cpu_and_the_one_base_carries_named_adapters(tiny_model_dir, quantize):
    import torch

    from rlaif.train.config import LoraConfig, ModelConfig
    from rlaif.train.model import build_model

    cfg = ModelConfig(name=str(tiny_model_dir), quantize=quantize)
    built = build_model(cfg, LoraConfig(r=4), adapters={"policy": None, "value": None}, cpu=True)
    q_proj = type(built.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__
    assert q_proj == {"nf4": "Linear4bit", "int8": "Linear8bitLt", "none": "Linear"}[quantize]
    assert set(built.model.peft_config) == {"policy", "value"} and built.model.active_adapter == "policy"
    assert built.tokenizer.pad_token is not None and built.dtype == torch.float32
    ids = built.tokenizer("hello there", return_tensors="pt").input_ids
    with built.model.disable_adapter():  # the reference policy: no second copy of the weights
        reference = built.model(input_ids=ids).logits
    assert torch.isfinite(reference).all()


@pytest.mark.model
def test_an_eval_pass_and_an_adapter_save_leave_the_nf4_base_exact_and_differentiable(tiny_model_dir, tmp_path):
    """bitsandbytes on AVX512-BF16 CPUs repacks NF4 weights for a bf16 kernel without autograd at the first no-grad
    eval forward, and unpacks them lossily on save (rlaif.train.model.one_4bit_kernel). Before the fix, on such a
    CPU, the training pass after an eval pass lost its input gradient and the outputs moved after a save."""
    import torch

    from rlaif.train.config import LoraConfig, ModelConfig
    from rlaif.train.model import build_model

    built = build_model(
        ModelConfig(name=str(tiny_model_dir), quantize="nf4"),
        LoraConfig(r=4),
        adapters={"policy": None},
        trainable={"policy"},
        cpu=True,
    )
    model, ids = built.model, built.tokenizer("one two three four", return_tensors="pt").input_ids

    def train_pass() -> tuple[torch.Tensor, torch.Tensor]:
        model.train()
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeds).logits
        logits.float().logsumexp(-1).sum().backward()
        grad, embeds.grad = embeds.grad, None
        model.zero_grad(set_to_none=True)
        return logits.detach(), grad

    logits, grad = train_pass()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)  # what a rollout or an eval loop does
    model.save_pretrained(tmp_path / "adapter")  # what a checkpoint does
    again, grad_again = train_pass()
    assert grad_again is not None and torch.equal(grad_again, grad)  # the gradient still flows, unchanged
    assert torch.equal(again, logits)


@pytest.mark.model
def test_builder_makes_a_one_logit_classifier_and_checks_the_chat_template(tiny_model_dir, tmp_path):
    import shutil

    from rlaif.train.config import LoraConfig, ModelConfig
    from rlaif.train.model import ChatTemplateError, build_model

    built = build_model(ModelConfig(name=str(tiny_model_dir)), LoraConfig(), task="seq_cls", cpu=True)
    assert type(built.model).__name__ == "LlamaForSequenceClassification" and built.model.config.num_labels == 1
    assert built.peft_config.task_type == "SEQ_CLS"
    bare = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, bare)
    (bare / "chat_template.jinja").unlink()
    with pytest.raises(ChatTemplateError, match="no chat template"):
        build_model(ModelConfig(name=str(bare)), LoraConfig(), cpu=True, require_chat_template=True)


# -- recipes on real QLoRA --------------------------------------------------------------------------------------
@pytest.mark.model
@pytest.mark.parametrize(
    ("recipe", "config", "data"),
    [
        ("sft", "sft", "sft.jsonl"),
        ("rm", "rm", "prefs.jsonl"),
        ("dpo", "dpo", "run_dir"),
        ("kto", "kto", "kto.jsonl"),
        ("dpo", "orpo", "prefs.jsonl"),
        ("dpo", "simpo", "prefs.jsonl"),
    ],
)
def test_recipe_trains_from_its_shipped_config(tiny_model_dir, tmp_path, recipe, config, data):
    import torch

    from rlaif.train.model import build_model
    from rlaif.train.recipes import run_recipe

    source = _run_dir(tmp_path) if data == "run_dir" else FIXTURES / data
    merge = ["merge=true"] if recipe == "sft" else []
    cfg = _config(config, recipe, tiny_model_dir, tmp_path / "out", source, *merge)
    result = run_recipe(cfg)
    losses = [row["loss"] for row in _metrics(result.output_dir) if "loss" in row]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert result.metrics and all(math.isfinite(v) for v in result.metrics.values())
    card = (result.adapter_dir / "README.md").read_text()
    assert f"data source: `{source}`" in card and "quantization: `nf4`" in card and "rlaif 0.1.0" in card
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_model_dir
    )
    # Reloaded through the same builder: the trained adapter, not a fresh one (LoRA B starts at zero).
    reloaded = build_model(
        cfg.model,
        None,
        task="seq_cls" if recipe == "rm" else "causal_lm",
        adapters={"default": result.adapter_dir},
        cpu=True,
    ).model
    lora_b = [p for n, p in reloaded.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.isfinite(reloaded(input_ids=ids).logits).all()
    assert not (result.adapter_dir / "ref").exists()  # no reference adapter copy: the reference is adapters-off
    if data == "run_dir":
        assert "dataset fingerprint: `abc123/train/False/1`" in card and "reward margin" in card
    if recipe == "sft":
        from transformers import AutoModelForCausalLM

        assert torch.isfinite(AutoModelForCausalLM.from_pretrained(result.merged_dir)(input_ids=ids).logits).all()


@pytest.mark.model
@pytest.mark.slow
def test_dpo_on_the_builtin_model(tmp_path):
    from rlaif.train.recipes import run_recipe

    cfg = _config(
        "dpo",
        "dpo",
        BUILTIN,
        tmp_path / "out",
        FIXTURES / "prefs.jsonl",
        "train.max_length=96",
        "train.per_device_train_batch_size=2",
        "train.gradient_accumulation_steps=1",
        "data.test_size=2",
    )
    result = run_recipe(cfg)
    losses = [row["loss"] for row in _metrics(result.output_dir) if "loss" in row]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    assert "base model: `builtin:smollm2-135m-instruct`" in (result.adapter_dir / "README.md").read_text()


FAST = [
    "train.learning_rate=2e-3",
    "train.warmup_steps=0",
    "train.per_device_train_batch_size=4",
    "train.gradient_accumulation_steps=1",
    "model.gradient_checkpointing=false",
    "train.eval_on_start=true",
]


@pytest.mark.model
@pytest.mark.slow
def test_dpo_raises_the_eval_margin_on_a_learnable_set(tiny_model_dir, tmp_path):
    from rlaif.train.recipes import run_recipe

    cfg = _config(
        "dpo",
        "dpo",
        tiny_model_dir,
        tmp_path / "out",
        FIXTURES / "prefs.jsonl",
        *FAST,
        "train.max_steps=12",
        "train.beta=0.1",
        "data.test_size=4",
    )
    result = run_recipe(cfg)
    evals = [row for row in _metrics(result.output_dir) if "eval_rewards/margins" in row]
    before, after = evals[0], evals[-1]
    assert before["step"] == 0 and after["step"] == 12
    assert after["eval_rewards/margins"] > before["eval_rewards/margins"] + 0.1
    assert after["eval_rewards/accuracies"] == 1.0


@pytest.mark.model
def test_reward_model_separates_a_trivially_separable_set(tiny_model_dir, tmp_path):
    import torch

    from rlaif.steps.scoring import load_reward_model
    from rlaif.train.recipes import run_recipe

    cfg = _config(
        "rm",
        "rm",
        tiny_model_dir,
        tmp_path / "out",
        FIXTURES / "prefs.jsonl",
        *FAST,
        "train.max_steps=16",
        "data.test_size=8",
    )
    result = run_recipe(cfg)
    assert result.metrics["eval_accuracy"] >= 0.9
    assert "pairwise accuracy" in (result.adapter_dir / "README.md").read_text()
    # The adapter loads where the data half scores with a reward model (pipelines' reward_model_score step).
    model, tokenizer = load_reward_model(str(result.adapter_dir), "cpu", torch.float32)
    data = load_training_data(cfg.data, "rm")
    wins = 0
    for row in data.eval:
        texts = [tokenizer.apply_chat_template(row["prompt"] + row[k], tokenize=False) for k in ("chosen", "rejected")]
        with torch.no_grad():
            scores = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits[:, 0]
        wins += int(scores[0] > scores[1])
    assert wins / len(data.eval) >= 0.9


@pytest.mark.model
@pytest.mark.slow
def test_training_killed_with_sigkill_resumes_from_its_last_checkpoint(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "rlaif.cli",
        "train",
        "sft",
        str(CONFIGS / "sft.yaml"),
        f"model.name={tiny_model_dir}",
        f"data.path={FIXTURES / 'sft.jsonl'}",
        f"train.output_dir={out}",
        "train.max_steps=12",
        "train.save_steps=2",
        "train.save_total_limit=null",
        "--cpu",
    ]
    from killing import run_and_kill

    last = run_and_kill(args, ROOT, out)
    resumed_step = json.loads((last / "trainer_state.json").read_text())["global_step"]
    assert 2 <= resumed_step < 12
    from rlaif.cli import app

    result = CliRunner().invoke(app, ["train", "sft", *args[5:-1], "--cpu", "--resume"])
    assert result.exit_code == 0, result.output
    assert f"resumed from {last}" in result.output
    starts = [row["step"] for row in _metrics(out) if row.get("event") == "train_begin"]
    assert starts == [0, resumed_step]
    steps_after = [
        row["step"]
        for row in _metrics(out)[
            _metrics(out).index({"event": "train_begin", "step": resumed_step, "max_steps": 12}) :
        ]
        if "loss" in row
    ]
    assert steps_after == list(range(resumed_step + 1, 13))
    assert json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())["global_step"] == 12
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    rerun = CliRunner().invoke(app, ["train", "sft", *args[5:-1], "--cpu"])
    assert rerun.exit_code == 2 and "pass --resume" in rerun.output


def test_model_card_text_never_carries_a_token(monkeypatch):
    from rlaif.train.outputs import scrub

    monkeypatch.setenv("MY_SERVICE_API_KEY", "s3cr3t-value-123")
    text = scrub(f"a s3cr3t-value-123 b hf_{'x' * 30} c")
    assert text == "a [REDACTED] b [REDACTED] c"


def test_importing_the_cli_loads_no_torch():
    code = "import sys, rlaif.cli; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
