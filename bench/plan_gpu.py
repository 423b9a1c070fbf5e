"""Measure what `rlaif plan` estimates: peak GPU memory of 2 real optimizer steps per training stage.

    python bench/plan_gpu.py [--quant nf4|none] [--budget-s 360] [--json out.json] [--models llama-3.2-1b,...]
    python bench/plan_gpu.py --tiny          # CPU smoke test: a 2-layer model, every code path, nothing measured

For random-initialised models with the real shapes of Llama-3.2-1B, Llama-3.2-3B and Llama-3.1-8B (config values
from rlaif.memory_plan.ARCHITECTURES, no download), and each stage rlaif plan models (sft, rm, dpo, ppo) at the
plan's default settings (rlaif.memory_plan.Settings: NF4 + double quant, LoRA r=16 on all linear layers, batch 4 x
1024 tokens, gradient checkpointing), this builds the model the way rlaif's builder does, runs 2 optimizer steps
of the stage's forward/backward and records torch.cuda.max_memory_allocated (and max_memory_reserved), reset
between stages, next to rlaif.memory_plan.estimate with the same settings.

Needs only torch, transformers, peft, accelerate (bitsandbytes for nf4): no trl, datasets, vllm, pydantic, yaml.
What it reuses from rlaif and what it reproduces:
- rlaif.memory_plan (stdlib only): the architectures and the estimate.
- rlaif.train.model (the builder) when it imports (it needs pydantic); otherwise the same calls, copied below
  (``_Builder``): BitsAndBytesConfig(nf4, double quant, bf16 compute), prepare_model_for_kbit_training with
  non-reentrant checkpointing, peft LoraConfig(r=16, alpha=16, dropout=0.05, all-linear), named adapters for PPO.
  The JSON records which one ran ("builder").
- rlaif.train.rl.core (torch only): PPO's log-probs, entropy and clipped losses.
- TRL (not installed on the device) is reproduced: its QLoRA cast of trainable params to bf16, bf16 autocast, and
  its fused LM head (trl/kernels/chunked_logprob.py: [4096 tokens x 32768 vocab] tiles, online logsumexp, the
  backward recomputes each tile) by ``ChunkedLogprob`` below, a torch-only equivalent with the same tile sizes.
- Optimizer: torch AdamW (fp32 moments on the GPU, counted by the allocator). rlaif's default paged_adamw_32bit
  keeps its moments in CUDA unified memory, which max_memory_allocated does not see; --optim paged measures that.
- PPO rollouts: HF generate's final KV cache is reproduced by one no-grad prefill of batch x seq_len tokens with
  use_cache=True (the cache generate holds at its last step) plus 2 decode steps, not 512 decode steps.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from rlaif.memory_plan import ARCHITECTURES, GIB, Arch, Settings, estimate, total  # noqa: E402
from rlaif.train.rl import core  # noqa: E402

MODELS = ("llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b")
STAGES = ("sft", "rm", "dpo", "ppo")
TINY = Arch("tiny", 2, 64, 128, 4, 2, 16, 1000, True)
TOKEN_TILE, VOCAB_TILE = 4096, 32768  # trl/kernels/chunked_logprob.py: TOKEN_CHUNK_SIZE, the trainers' chunk_size
ROW_SLICE = 1024  # rows of a tile folded at once in fp32 (TRL's Triton kernel folds in place)
DPO_BETA = 0.1


def _dtype_kw() -> str:
    """transformers >= 4.56 takes ``dtype``; older releases only ``torch_dtype``."""
    from transformers import __version__

    major, minor = (int(part) for part in __version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def set_adapter(model: Any, name: str) -> None:
    try:
        model.set_adapter(name, inference_mode=True)
    except TypeError:  # peft without inference_mode: set_adapter alone (trainable flags are restored by the caller)
        model.set_adapter(name)


# -- the builder ---------------------------------------------------------------------------------------------------
class _Builder:
    """rlaif/train/model.py's calls, copied for machines without pydantic (same arguments, same order)."""

    @staticmethod
    def quantization_config(quantize: str, dtype: torch.dtype, double_quant: bool) -> Any:
        from transformers import BitsAndBytesConfig

        if quantize == "nf4":
            return BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=double_quant,
                bnb_4bit_compute_dtype=dtype,
            )
        return None

    @staticmethod
    def one_4bit_kernel(model: Any) -> Any:
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        return model

    @staticmethod
    def _prepare_kbit(model: Any, gradient_checkpointing: bool) -> Any:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )

    @staticmethod
    def peft_lora_config(lora_cfg: Any, task: str) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=lora_cfg.r,
            lora_alpha=lora_cfg.alpha,
            lora_dropout=lora_cfg.dropout,
            target_modules=lora_cfg.target_modules,
            modules_to_save=lora_cfg.modules_to_save,
            use_rslora=lora_cfg.use_rslora,
            use_dora=lora_cfg.use_dora,
            bias="none",
            task_type="SEQ_CLS" if task == "seq_cls" else "CAUSAL_LM",
        )

    @staticmethod
    def attach_adapters(model: Any, peft_config: Any, adapters: dict[str, None], trainable: Any = ()) -> Any:
        from peft import get_peft_model

        names = list(adapters)
        wrapped = get_peft_model(model, peft_config, adapter_name=names[0])
        for name in names[1:]:
            wrapped.add_adapter(name, peft_config)
        try:
            wrapped.set_adapter(names[0], inference_mode=False)
        except TypeError:  # peft without inference_mode
            wrapped.set_adapter(names[0])
        return wrapped


def load_builder() -> tuple[Any, str]:
    try:
        from rlaif.train import model as builder

        return builder, "rlaif.train.model"
    except ImportError as exc:  # pydantic or yaml missing: the copied calls
        return _Builder, f"bench/plan_gpu.py copy of rlaif.train.model ({exc})"


def lora_cfg(r: int) -> SimpleNamespace:
    """rlaif's LoraConfig defaults (rlaif/train/config_base.py)."""
    return SimpleNamespace(
        r=r,
        alpha=16,
        dropout=0.05,
        target_modules="all-linear",
        modules_to_save=None,
        use_rslora=False,
        use_dora=False,
    )


# -- TRL's fused LM head, in torch -------------------------------------------------------------------------------
class ChunkedLogprob(torch.autograd.Function):
    """log softmax(hidden @ weight.T)[target] per token without the [N, V] logits, with TRL's memory layout
    (trl/kernels/chunked_logprob.py): one reused [4096 x 32768] tile buffer in the compute dtype, a compute-dtype copy
    of one weight chunk, an online logsumexp in fp32; the backward recomputes each tile. TRL folds a tile with a
    Triton kernel; here torch folds it in 1024-row fp32 slices (128 MiB each), so the transient stays near TRL's."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled() else hidden.dtype
        n, vocab = hidden.shape[0], weight.shape[0]
        lse = torch.empty(n, device=hidden.device, dtype=torch.float32)
        picked = torch.zeros(n, device=hidden.device, dtype=torch.float32)
        buf = torch.empty((min(n, TOKEN_TILE), min(vocab, VOCAB_TILE)), device=hidden.device, dtype=dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            for t0 in range(0, n, TOKEN_TILE):
                h, tgt = hidden[t0 : t0 + TOKEN_TILE].to(dtype), targets[t0 : t0 + TOKEN_TILE]
                run_max = torch.full((h.shape[0],), -math.inf, device=h.device)
                run_sum = torch.zeros(h.shape[0], device=h.device)
                for v0 in range(0, vocab, VOCAB_TILE):
                    w = weight[v0 : v0 + VOCAB_TILE].to(dtype)
                    tile = buf[: h.shape[0], : w.shape[0]]
                    torch.mm(h, w.T, out=tile)
                    inside = (tgt >= v0) & (tgt < v0 + w.shape[0])
                    got = tile.gather(1, (tgt - v0).clamp(0, w.shape[0] - 1)[:, None]).squeeze(1).float()
                    picked[t0 : t0 + TOKEN_TILE] += torch.where(inside, got, torch.zeros_like(got))
                    for r0 in range(0, h.shape[0], ROW_SLICE):
                        z = tile[r0 : r0 + ROW_SLICE].float()
                        rows = slice(r0, r0 + z.shape[0])
                        new_max = torch.maximum(run_max[rows], z.max(-1).values)
                        scaled = run_sum[rows] * torch.exp(run_max[rows] - new_max)
                        run_sum[rows] = scaled + z.sub_(new_max[:, None]).exp_().sum(-1)
                        run_max[rows] = new_max
                        del z
                    del w
                lse[t0 : t0 + TOKEN_TILE] = run_max + torch.log(run_sum)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.dtype = dtype
        return picked - lse

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        hidden, weight, targets, lse = ctx.saved_tensors
        dtype, (n, vocab) = ctx.dtype, (hidden.shape[0], weight.shape[0])
        grad_hidden = torch.zeros(hidden.shape, device=hidden.device, dtype=torch.float32)
        buf = torch.empty((min(n, TOKEN_TILE), min(vocab, VOCAB_TILE)), device=hidden.device, dtype=dtype)
        for t0 in range(0, n, TOKEN_TILE):
            h = hidden[t0 : t0 + TOKEN_TILE].to(dtype)
            g, tgt, tile_lse = (
                grad[t0 : t0 + TOKEN_TILE].float(),
                targets[t0 : t0 + TOKEN_TILE],
                lse[t0 : t0 + TOKEN_TILE],
            )
            for v0 in range(0, vocab, VOCAB_TILE):
                w = weight[v0 : v0 + VOCAB_TILE].to(dtype)
                tile = buf[: h.shape[0], : w.shape[0]]
                torch.mm(h, w.T, out=tile)
                for r0 in range(0, h.shape[0], ROW_SLICE):
                    rows = slice(r0, r0 + min(ROW_SLICE, h.shape[0] - r0))
                    # d(picked - lse)/dz = onehot - softmax, times the incoming gradient, in place on the slice
                    z = tile[rows].float().sub_(tile_lse[rows, None]).exp_().neg_()
                    t_rows = tgt[rows]
                    hit = torch.nonzero((t_rows >= v0) & (t_rows < v0 + w.shape[0])).squeeze(1)
                    z[hit, t_rows[hit] - v0] += 1
                    z.mul_(g[rows, None])
                    grad_hidden[t0 + rows.start : t0 + rows.stop] += (z.to(dtype) @ w).float()
                    del z
                del w
        return grad_hidden.to(hidden.dtype), None, None


def fused_logprobs(model: Any, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token log-probs [B, T] of ``targets`` from the last hidden states, through the model's LM head."""
    head = output_embeddings(model)
    b, t, h = hidden.shape
    return ChunkedLogprob.apply(hidden.reshape(b * t, h), head.weight, targets.reshape(-1)).view(b, t)


def base_of(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def output_embeddings(model: Any) -> Any:
    return base_of(model).get_output_embeddings()


def trunk(model: Any, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """Last hidden states of the decoder trunk (no LM head), as rlaif.train.rl.shared_base.trunk_hidden."""
    base = base_of(model)
    return getattr(base, base.base_model_prefix)(input_ids=ids, attention_mask=attention, use_cache=False)[0]


# -- one case ------------------------------------------------------------------------------------------------------
def hf_config(arch: Arch) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=arch.hidden,
        intermediate_size=arch.intermediate,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        num_key_value_heads=arch.kv_heads,
        head_dim=arch.head_dim,
        vocab_size=arch.vocab,
        tie_word_embeddings=arch.tied,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def save_random_checkpoint(arch: Arch, folder: Path, device: str) -> None:
    """Random init (in bf16, on the GPU when there is one: fast) saved as safetensors, so that from_pretrained can
    quantize it on load exactly as it does a Hub checkpoint."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config(arch), **{_dtype_kw(): torch.bfloat16})
    model.save_pretrained(folder)
    del model
    free()


def load(builder: Any, folder: Path, quant: str, task: str, device: str) -> Any:
    """rlaif.train.model._load_base + build_model's k-bit preparation (or plain checkpointing when not quantized)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kwargs: dict[str, Any] = {
        _dtype_kw(): dtype,
        "quantization_config": builder.quantization_config(quant, dtype, True),
        "device_map": {"": 0 if device == "cuda" else "cpu"},  # rlaif pins quantized models; TRL moves bf16 ones
    }
    cls = AutoModelForSequenceClassification if task == "seq_cls" else AutoModelForCausalLM
    extra = {"num_labels": 1} if task == "seq_cls" else {}
    model = builder.one_4bit_kernel(cls.from_pretrained(folder, **extra, **kwargs))
    model.config.pad_token_id = 0
    if quant != "none":
        model = builder._prepare_kbit(model, True)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def trl_wrap(builder: Any, model: Any, quant: str, task: str, r: int, device: str) -> Any:
    """What TRL's trainers do with the builder's (model, peft_config): get_peft_model, input grads for checkpointing,
    and for a quantized base the cast of every trainable parameter to bf16 (sft/reward/dpo trainers; on the CPU smoke
    test, fp32 without autocast, the cast is skipped)."""
    from peft import get_peft_model

    model = get_peft_model(model, builder.peft_lora_config(lora_cfg(r), task))
    model.enable_input_require_grads()
    if quant != "none" and device == "cuda":
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.bfloat16)
    model.train()
    return model


def make_optimizer(params: list[torch.nn.Parameter], optim: str) -> torch.optim.Optimizer:
    if optim == "paged":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW32bit(params, lr=1e-5)
    return torch.optim.AdamW(params, lr=1e-5)


def autocast(device: str, on: bool = True) -> Any:
    return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" and on else contextlib.nullcontext()


def batch(n: int, seq: int, vocab: int, device: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, seq), generator=generator).to(device)
    return ids, torch.ones_like(ids)


def run_sft(model: Any, opt: Any, s: Settings, vocab: int, device: str) -> list[float]:
    losses = []
    for step in range(2):
        ids, attention = batch(s.batch_size, s.seq_len, vocab, device, step)
        with autocast(device):
            hidden = trunk(model, ids, attention)[:, :-1]
            loss = -fused_logprobs(model, hidden, ids[:, 1:]).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def run_rm(model: Any, opt: Any, s: Settings, vocab: int, device: str) -> list[float]:
    losses = []
    for step in range(2):
        ids, attention = batch(2 * s.batch_size, s.seq_len, vocab, device, step)  # chosen + rejected in one batch
        with autocast(device):
            rewards = model(input_ids=ids, attention_mask=attention).logits.squeeze(-1).float()
            chosen, rejected = rewards.chunk(2)
            loss = -F.logsigmoid(chosen - rejected).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def sequence_logps(model: Any, ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    hidden = trunk(model, ids, attention)[:, :-1]
    return fused_logprobs(model, hidden, ids[:, 1:]).sum(-1)


def run_dpo(model: Any, opt: Any, s: Settings, vocab: int, device: str) -> list[float]:
    losses = []
    for step in range(2):
        ids, attention = batch(2 * s.batch_size, s.seq_len, vocab, device, step)
        with autocast(device):
            with torch.no_grad(), model.disable_adapter():  # the reference: the base, adapter disabled
                ref_chosen, ref_rejected = sequence_logps(model, ids, attention).chunk(2)
            chosen, rejected = sequence_logps(model, ids, attention).chunk(2)
            margin = (chosen - ref_chosen) - (rejected - ref_rejected)
            loss = -F.logsigmoid(DPO_BETA * margin).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def run_ppo(model: Any, opt: Any, value_head: Any, s: Settings, vocab: int, device: str) -> list[float]:
    """rlaif/train/rl/ppo.py's step without TRL: rollout (KV cache), forward_rollout (policy, reference, value, no
    grad), then micro_step (policy forward+backward, then value forward+backward), no autocast (ppo's bf16=False)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    prompt_len = s.seq_len // 2  # memory_plan.PPO_RESPONSE_SHARE: half the sequence is the response
    losses = []
    for step in range(2):
        ids, attention = batch(s.batch_size, s.seq_len, vocab, device, step)
        response = ids[:, prompt_len:]
        set_adapter(model, "policy")
        model.eval()
        with torch.no_grad():  # generate's final state: a KV cache of batch x seq_len tokens, then 2 decode steps
            out = model(input_ids=ids, attention_mask=attention, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            for _ in range(2):
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                attention = torch.cat([attention, torch.ones_like(nxt)], 1)
                out = model(input_ids=nxt, attention_mask=attention, past_key_values=cache, use_cache=True)
            del out, cache
        attention = attention[:, : s.seq_len]
        model.train()
        with torch.no_grad():
            logits = response_logits(model, ids, attention, prompt_len)
            old_logprobs = core.logprobs_of(logits, response)
            core.entropy(logits)
            del logits
            with model.disable_adapter():
                ref_logprobs = core.logprobs_of(response_logits(model, ids, attention, prompt_len), response)
            set_adapter(model, "value")
            old_values = values_of(model, value_head, ids, attention, prompt_len)
        mask = torch.ones_like(old_logprobs)
        scores = torch.randn(s.batch_size, device=ids.device)
        rewards = core.token_rewards(scores, core.kl_per_token(old_logprobs, ref_logprobs), mask, 0.05)
        advantages, returns = core.gae(rewards, old_values, mask, 1.0, 0.95)
        advantages = core.masked_whiten(advantages, mask)
        for name in ("policy", "value"):
            set_adapter(model, name)
            for param in trainable:  # SharedBase.activate: both adapters keep their gradients
                param.requires_grad_(True)
            if name == "policy":
                logits = response_logits(model, ids, attention, prompt_len)
                loss = core.policy_loss(core.logprobs_of(logits, response), old_logprobs, advantages, mask, 0.2).loss
                del logits
            else:
                new_values = values_of(model, value_head, ids, attention, prompt_len)
                loss = 0.1 * core.value_loss(new_values, old_values, returns, mask, 0.2).loss
            loss.backward()  # before the next adapter switch (checkpointing re-runs the active adapter)
            losses.append(loss.item())
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses


def response_logits(model: Any, ids: torch.Tensor, attention: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """rlaif.train.rl.shared_base.SharedBase.response_logits: full fp32 logits of the response positions."""
    hidden = trunk(model, ids, attention)[:, prompt_len - 1 : -1]
    return output_embeddings(model)(hidden).float() / 0.7


def values_of(model: Any, head: Any, ids: torch.Tensor, attention: torch.Tensor, prompt_len: int) -> torch.Tensor:
    hidden = trunk(model, ids, attention)[:, prompt_len - 1 : -1]
    return head(hidden.float()).squeeze(-1)


def run_case(builder: Any, folder: Path, arch: Arch, stage: str, s: Settings, device: str, optim: str) -> dict:
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    task = "seq_cls" if stage == "rm" else "causal_lm"
    model = load(builder, folder, s.quantize, task, device)
    value_head = None
    if stage == "ppo":  # rlaif's PPO: named adapters on one base, fp32 (peft's default; no TRL cast), fp32 head
        peft_config = builder.peft_lora_config(lora_cfg(s.lora_r), "causal_lm")
        model = builder.attach_adapters(model, peft_config, {"policy": None, "value": None}, {"policy", "value"})
        for module in model.modules():  # shared_base._no_dropout
            if isinstance(getattr(module, "lora_dropout", None), torch.nn.ModuleDict):
                for name in list(module.lora_dropout):
                    module.lora_dropout[name] = torch.nn.Identity()
        model.enable_input_require_grads()
        value_head = torch.nn.Linear(arch.hidden, 1, device=next(model.parameters()).device, dtype=torch.float32)
        params = [p for n, p in model.named_parameters() if ".policy." in n or ".value." in n]
        params += list(value_head.parameters())
    else:
        model = trl_wrap(builder, model, s.quantize, task, s.lora_r, device)
        params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, optim)
    result: dict[str, Any] = {"trainable_params": sum(p.numel() for p in params)}
    if cuda:
        torch.cuda.synchronize()
        result["after_load_gib"] = torch.cuda.memory_allocated() / GIB
        result["load_peak_gib"] = torch.cuda.max_memory_allocated() / GIB
        torch.cuda.reset_peak_memory_stats()
    if stage == "sft":
        result["losses"] = run_sft(model, opt, s, arch.vocab, device)
    elif stage == "rm":
        result["losses"] = run_rm(model, opt, s, arch.vocab, device)
    elif stage == "dpo":
        result["losses"] = run_dpo(model, opt, s, arch.vocab, device)
    else:
        result["losses"] = run_ppo(model, opt, value_head, s, arch.vocab, device)
    if cuda:
        torch.cuda.synchronize()
        result["measured_gib"] = torch.cuda.max_memory_allocated() / GIB
        result["reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
    # torch AdamW keeps its moments in the parameter's dtype (bf16 after TRL's QLoRA cast); the plan's optimizer row
    # assumes fp32 moments (bitsandbytes' 32-bit optimizers): record what this run held, to compare like with like
    states = [t for state in opt.state.values() for t in state.values() if torch.is_tensor(t) and t.dim() > 0]
    result["optimizer_state_gib"] = sum(t.numel() * t.element_size() for t in states) / GIB
    result["trainable_dtypes"] = sorted({str(p.dtype) for p in params})
    del model, opt, value_head, params
    return result


def scratch_dir(arch: Arch) -> str | None:
    """/dev/shm when it holds the bf16 checkpoint twice over (no disk write), else the default temp dir."""
    need = 2 * 2 * arch.total_params()
    with contextlib.suppress(OSError):
        if shutil.disk_usage("/dev/shm").free > need:
            return "/dev/shm"
    return None


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quant", choices=("nf4", "none"), default="nf4")
    parser.add_argument("--budget-s", type=float, default=360.0, help="skip the remaining cases after this many s")
    parser.add_argument("--json", default=None, help="write results here ($OUT/plan_gpu.json when OUT is set)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, from " + ", ".join(MODELS))
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--optim", choices=("adamw", "paged"), default="adamw")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test with a 2-layer model (measures nothing)")
    args = parser.parse_args()
    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    notes: list[str] = []
    quant = args.quant
    if quant == "nf4" and importlib.util.find_spec("bitsandbytes") is None:
        quant = "none"
        notes.append("bitsandbytes is not installed: ran with --quant none (bf16 base) instead of nf4")
    if args.optim == "paged" and device != "cuda":
        args.optim = "adamw"
    builder, builder_name = load_builder()
    info = {"versions": versions(), "builder": builder_name, "optim": args.optim, "device": device, "notes": notes}
    print(json.dumps(info, indent=1), flush=True)
    archs = [TINY] if args.tiny else [ARCHITECTURES[name] for name in args.models.split(",")]
    settings = Settings(quantize=quant, gpu_mem_gib=140.0)  # the plan's defaults
    if args.tiny:
        settings = Settings(quantize=quant, batch_size=2, seq_len=32, lora_r=4)
    out = Path(os.environ["OUT"]) / "plan_gpu.json" if os.environ.get("OUT") else args.json
    results: list[dict[str, Any]] = []

    def save() -> None:  # after every case: a run killed at its time limit keeps what it measured
        info["heavy_modules_imported"] = sorted(
            m for m in ("trl", "datasets", "vllm", "pydantic", "yaml") if sys.modules.get(m) is not None
        )
        if out:
            payload = {**info, "settings": vars(args) | {"plan": settings.__dict__}, "results": results}
            payload["total_seconds"] = round(time.perf_counter() - started, 1)
            Path(out).write_text(json.dumps(payload, indent=1, default=str))

    for arch in archs:
        folder = Path(tempfile.mkdtemp(prefix="plan_gpu_", dir=scratch_dir(arch)))
        try:
            checkpoint_error = None
            if time.perf_counter() - started < args.budget_s:
                try:
                    save_random_checkpoint(arch, folder, device)
                except Exception as exc:
                    checkpoint_error = f"random checkpoint: {type(exc).__name__}: {str(exc)[:300]}"
                    traceback.print_exc()
            for stage in args.stages.split(","):
                row = case_row(arch, stage, settings)
                if time.perf_counter() - started > args.budget_s or checkpoint_error:
                    row["error"] = checkpoint_error or f"skipped: --budget-s {args.budget_s:g} spent"
                else:
                    row.update(timed_case(builder, folder, arch, stage, settings, device, args.optim))
                results.append(row)
                print(line(row), flush=True)
                save()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print_table(results)
    save()
    if out:
        print(f"wrote {out}")


def timed_case(builder: Any, folder: Path, arch: Arch, stage: str, s: Settings, device: str, optim: str) -> dict:
    row: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        row.update(run_case(builder, folder, arch, stage, s, device, optim))
    except Exception as exc:  # an OOM or a bug in one case must not lose the others
        row["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
        traceback.print_exc()
    free()
    row["seconds"] = round(time.perf_counter() - t0, 1)
    if "measured_gib" in row:
        est = case_row(arch, stage, s)
        row["ratio"] = row["measured_gib"] / est["estimate_gib"]
        row["ratio_excl_overhead"] = row["measured_gib"] / est["estimate_excl_overhead_gib"]
    return row


def case_row(arch: Arch, stage: str, s: Settings) -> dict[str, Any]:
    rows = estimate(arch, stage, s)
    return {
        "model": arch.name,
        "stage": stage,
        "quantization": s.quantize,
        "batch": s.batch_size,
        "seq_len": s.seq_len,
        "lora_r": s.lora_r,
        "estimate_gib": total(rows) / GIB,
        # max_memory_allocated sees tensors only: the plan's 1 GiB overhead row (CUDA context, workspace,
        # fragmentation) is compared with reserved and nvidia-smi, not with this
        "estimate_excl_overhead_gib": (total(rows) - rows["overhead"]) / GIB,
        "estimate_rows_gib": {k: round(v / GIB, 3) for k, v in rows.items()},
    }


def line(row: dict[str, Any]) -> str:
    def num(key: str) -> str:
        return f"{row[key]:8.2f}" if isinstance(row.get(key), float) else f"{'-':>8}"

    tail = row.get("error", "")
    return (
        f"{row['model']:<14} {row['stage']:<4} {row['quantization']:<5} {num('estimate_gib')} "
        f"{num('estimate_excl_overhead_gib')} {num('measured_gib')} {num('reserved_gib')} "
        f"{num('ratio_excl_overhead')} "
        f"{row.get('seconds', 0):7.1f}  {tail}"
    )


def print_table(results: list[dict[str, Any]]) -> None:
    print(
        f"\n{'model':<14} {'stage':<4} {'quant':<5} {'est GiB':>8} {'est-ovh':>8} {'peak':>8} {'reserved':>8} "
        f"{'ratio':>8} {'seconds':>7}  (ratio = peak allocated / estimate without the 1 GiB overhead row)"
    )
    for row in results:
        print(line(row))


if __name__ == "__main__":
    main()
