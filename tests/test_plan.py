"""``rlaif plan``: memory estimates checked against numbers worked out by hand, orderings that must hold, the CLI.

The hand-computed values use a tiny architecture (2 layers, hidden 64, intermediate 256, 4 heads of 16, 2 kv heads,
vocab 1000, tied embeddings) so every product can be checked on paper; the published parameter counts of two Llama
models check the architecture arithmetic at full size.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from rlaif import memory_plan
from rlaif.cli import app
from rlaif.memory_plan import GIB, STAGES, Arch, PlanError, Settings, estimate, resolve_arch, total

runner = CliRunner()
TINY = Arch("tiny", layers=2, hidden=64, intermediate=256, heads=4, kv_heads=2, head_dim=16, vocab=1000, tied=True)
SMALL = Settings(quantize="nf4", lora_r=8, batch_size=2, seq_len=16)  # 32 tokens per batch


# -- architecture arithmetic -------------------------------------------------------------------------------------
def test_parameter_counts_by_hand():
    # per layer: q, o 64x64; k, v 64x32; gate, up, down 64x256 -> 8192 + 4096 + 49152 = 61440
    assert TINY.linear_params() == 2 * 61440
    assert TINY.other_params() == 64000 + 5 * 64  # tied embeddings + 2 norms per layer + the final norm
    # LoRA r=8 per layer: q, o (64+64), k, v (64+32), gate, up, down (64+256) -> 8 * 1408
    assert TINY.lora_params(8) == 2 * 8 * 1408


def test_published_llama_parameter_counts():
    assert resolve_arch("x", "8B")[0].total_params() == 8_030_261_248  # Llama-3.1-8B
    assert resolve_arch("x", "1B")[0].total_params() == 1_235_814_400  # Llama-3.2-1B (tied)


# -- the estimate, hand-computed ---------------------------------------------------------------------------------
def test_sft_rows_by_hand():
    rows = estimate(TINY, "sft", SMALL)
    # NF4 with double quant: 122880 x (0.5 + 1/64 + 4/16384) = 61440 + 1920 + 30; the rest fp32: 64320 x 4
    assert rows["weights"] == pytest.approx(63390 + 257280)
    assert rows["adapters"] == 22528 * 4  # bf16 weight + bf16 grad
    assert rows["optimizer"] == 22528 * 8  # AdamW: two fp32 moments
    # checkpoints 2 layers x 32 tokens x 64 x 4 B = 16384; one layer recomputed 32 x (30*64 + 4*32 + 15*256) = 188416;
    # fused head tile 32 x 1000 x 4 = 128000; fp32 grad of the last hidden 32 x 64 x 4 = 8192
    assert rows["activations"] == 16384 + 188416 + 128000 + 8192
    assert rows["kv cache"] == 0
    assert rows["overhead"] == GIB
    no_ckpt = estimate(TINY, "sft", Settings("nf4", 8, 2, 16, gradient_checkpointing=False))
    assert no_ckpt["activations"] == 2 * 188416 + 128000 + 8192


def test_dpo_and_rm_run_chosen_and_rejected_in_one_batch():
    dpo, rm = estimate(TINY, "dpo", SMALL), estimate(TINY, "rm", SMALL)
    # 64 tokens: checkpoints 32768 + one layer 64 x 5888 + head 64 x 1000 x 4 + grad 64 x 64 x 4
    assert dpo["activations"] == 32768 + 376832 + 256000 + 16384
    assert dpo["weights"] == estimate(TINY, "sft", SMALL)["weights"]  # the reference adds no weights
    assert rm["activations"] == 32768 + 376832 + 16384  # a classifier: no LM head
    assert rm["adapters"] == 22528 * 4 + 64 * 8 and rm["optimizer"] == (22528 + 64) * 8  # + the score head


def test_ppo_by_hand_and_against_the_naive_four_model_setup():
    rows = estimate(TINY, "ppo", SMALL)
    # policy + value adapters train (bf16 w+g), reward adapter frozen (bf16 w), value + reward heads (h+1, h) fp32
    assert rows["adapters"] == 2 * 22528 * 4 + 22528 * 2 + 129 * 8
    assert rows["optimizer"] == (2 * 22528 + 129) * 8
    # sft's activations + response logits: 2 x 16 x 0.5 x 1000 x 12 B
    assert rows["activations"] == 340992 + 192000
    assert rows["kv cache"] == 32 * 2 * 2 * 32 * 2  # tokens x layers x (K, V) x kv_dim x bf16
    naive = estimate(TINY, "ppo", SMALL, shared=False)
    # + a trained value model (fp32 embeddings) + frozen reference and reward models (bf16 embeddings)
    assert naive["weights"] - rows["weights"] == pytest.approx(320670 + 2 * (63390 + 64320 * 2))
    eight_b = resolve_arch("x", "8B")[0]
    assert total(estimate(eight_b, "ppo", Settings())) < total(estimate(eight_b, "ppo", Settings(), shared=False))


def test_vllm_phase_by_hand():
    phase = memory_plan.vllm_phase(TINY, SMALL)
    assert phase["weights (bf16)"] == (122880 + 64320) * 2
    assert phase["adapter"] == 22528 * 2 and phase["kv cache"] == 8192


@pytest.mark.parametrize("size", ["1B", "3B", "8B"])
def test_nf4_is_smaller_than_int8_smaller_than_bf16(size):
    arch = resolve_arch("x", size)[0]
    by_quant = [total(estimate(arch, "sft", Settings(quantize=q))) for q in ("nf4", "int8", "none")]
    assert by_quant == sorted(by_quant) and len(set(by_quant)) == 3


def test_largest_batch_is_the_edge_of_the_budget():
    arch, settings = resolve_arch("x", "8B")[0], Settings(gpu_mem_gib=24)
    best = memory_plan.largest_batch(arch, "dpo", settings)
    budget = 0.9 * 24 * GIB
    assert best >= 1
    assert total(estimate(arch, "dpo", Settings(batch_size=best))) <= budget
    assert total(estimate(arch, "dpo", Settings(batch_size=best + 1))) > budget
    assert memory_plan.largest_batch(arch, "dpo", Settings(gpu_mem_gib=4)) == 0  # 8B never fits in 4 GiB


def test_bad_settings_and_stages_are_refused():
    with pytest.raises(PlanError):
        Settings(batch_size=0)
    with pytest.raises(PlanError, match="unknown stage"):
        estimate(TINY, "grpo", SMALL)


# -- resolving the model -----------------------------------------------------------------------------------------
def test_known_hub_ids_resolve_offline_from_the_table():
    arch, source = resolve_arch("meta-llama/Llama-3.1-8B-Instruct")
    assert arch.name == "Llama-3.1-8B" and "table" in source
    assert resolve_arch("meta-llama/Llama-3.2-3B-Instruct")[0].layers == 28


def test_local_config_json_is_read(tmp_path):
    config = {
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 1000,
        "tie_word_embeddings": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    arch, source = resolve_arch(str(tmp_path))
    assert (arch.layers, arch.kv_dim, arch.total_params()) == (2, 32, TINY.total_params())
    assert source.endswith("config.json")


def test_unknown_or_unmodelled_models_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(memory_plan, "hub_config", lambda repo: (None, "the Hub is unreachable"))
    with pytest.raises(PlanError, match=re.escape("--params 1B|3B|8B")):
        resolve_arch("some-org/unknown-model")
    with pytest.raises(PlanError, match="not a builtin name"):
        resolve_arch("builtin:nope")
    with pytest.raises(PlanError, match="known size classes"):
        resolve_arch("x", "70B")
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "num_local_experts": 8}))
    with pytest.raises(PlanError, match="mixture-of-experts"):
        resolve_arch(str(tmp_path))


# -- the command -------------------------------------------------------------------------------------------------
def test_cli_prints_a_labelled_estimate_table_offline():
    result = runner.invoke(app, ["plan", "meta-llama/Llama-3.1-8B-Instruct", "--stage", "dpo", "--gpu-mem", "24"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "ESTIMATE" in out and "estimate" in out.lower()
    assert "| GiB | dpo |" in out and "| weights |" in out and "| activations |" in out and "| kv cache |" in out
    assert "dpo: " in out and "of 24 GiB" in out and "vLLM generation phase" in out


def test_cli_stage_all_tables_every_stage_with_the_naive_ppo_line():
    result = runner.invoke(app, ["plan", "anything", "--params", "1B", "--stage", "all", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "| GiB | " + " | ".join(STAGES) + " |" in result.output
    assert "naive 4-model setup" in result.output and "batch 2 x 1024" in result.output


def test_cli_unknown_model_exits_2_with_the_fallback_hint(monkeypatch):
    monkeypatch.setattr(memory_plan, "hub_config", lambda repo: (None, "the Hub is unreachable"))
    result = runner.invoke(app, ["plan", "some-org/unknown-model"])
    assert result.exit_code == 2
    assert "cannot read config.json" in result.output and "--params" in result.output


def test_planning_never_imports_torch():
    code = (
        "import sys; from typer.testing import CliRunner; from rlaif.cli import app; "
        "r = CliRunner().invoke(app, ['plan', 'builtin:smollm2-135m-instruct', '--stage', 'all']); "
        "assert r.exit_code == 0, r.output; assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
