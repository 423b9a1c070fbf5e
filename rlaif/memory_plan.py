"""``rlaif plan``: GPU memory ESTIMATES per training stage, by arithmetic on a model's config.json (no torch).

The formulas (README "Memory planning") model what rlaif's builder, peft, bitsandbytes and TRL 1.x do on a CUDA GPU
with bf16 autocast: NF4/int8 linear layers, the other weights upcast to fp32 by ``prepare_model_for_kbit_training``,
bf16 LoRA adapters with fp32 AdamW states, TRL's fused LM head, gradient checkpointing.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rlaif.schema import Quantize

STAGES = ("sft", "rm", "dpo", "ppo")
GIB = 2**30
# Bytes per quantized weight. NF4 (QLoRA, Dettmers et al. 2023): 4-bit codes, an 8-bit absmax per 64 weights and an
# fp32 constant per 256 absmaxes (double quantization, on in rlaif's model config): 4.127 bits. int8: LLM.int8's
# per-row scales are negligible.
WEIGHT_BYTES = {"nf4": 0.5 + 1 / 64 + 4 / (64 * 256), "int8": 1.0, "none": 2.0}
HEAD_TILE = (4096, 32768)  # TRL's fused LM head: tokens x vocab entries per tile (trl/kernels/chunked_logprob.py)
OVERHEAD_BYTES = 1 * GIB  # CUDA context, cuBLAS workspace, caching-allocator fragmentation
PPO_LOGIT_BYTES = 12  # rlaif's PPO scores responses with full logits: fp32 logits, a scaled copy kept, the gradient
PPO_RESPONSE_SHARE = 0.5  # of seq-len: the response part of a rollout, whose logits PPO materialises
HEADROOM = 0.10  # "fits" leaves this fraction of the GPU free: an estimate is not a measurement


class PlanError(ValueError):
    """A model whose architecture cannot be found or modelled; the message says what to pass instead."""


@dataclass(frozen=True)
class Arch:
    """A dense decoder-only transformer with a gated MLP (the Llama family), as config.json describes it."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_params(self) -> int:
        """The weights bitsandbytes quantizes: q, k, v, o and gate, up, down of every layer."""
        h, q = self.hidden, self.heads * self.head_dim
        return self.layers * (2 * h * q + 2 * h * self.kv_dim + 3 * h * self.intermediate)

    def other_params(self, lm_head: bool = True) -> int:
        """Embeddings, the LM head when untied (a classifier has none), two RMSNorms per layer and the final one."""
        head = self.vocab * self.hidden if lm_head and not self.tied else 0
        return self.vocab * self.hidden + head + (2 * self.layers + 1) * self.hidden

    def total_params(self) -> int:
        return self.linear_params() + self.other_params()

    def lora_params(self, r: int) -> int:
        """LoRA on all linear layers: r x (fan_in + fan_out) per matrix."""
        h, q, i = self.hidden, self.heads * self.head_dim, self.intermediate
        return self.layers * r * ((h + q) * 2 + (h + self.kv_dim) * 2 + (h + i) * 3)


# Offline fallback with their config.json values: the Hub is not reachable everywhere, gated repos need a token.
ARCHITECTURES: dict[str, Arch] = {
    # key: name, layers, hidden, intermediate, heads, kv heads, head_dim, vocab, tied embeddings
    "smollm2-135m": Arch("SmolLM2-135M", 30, 576, 1536, 9, 3, 64, 49152, True),
    "llama-3.2-1b": Arch("Llama-3.2-1B", 16, 2048, 8192, 32, 8, 64, 128256, True),
    "llama-3.2-3b": Arch("Llama-3.2-3B", 28, 3072, 8192, 24, 8, 128, 128256, True),
    "llama-3.1-8b": Arch("Llama-3.1-8B", 32, 4096, 14336, 32, 8, 128, 128256, False),
    "llama-3-8b": Arch("Llama-3-8B", 32, 4096, 14336, 32, 8, 128, 128256, False),
}
SIZE_CLASSES = {"1B": "llama-3.2-1b", "3B": "llama-3.2-3b", "8B": "llama-3.1-8b"}


def _table_key(ref: str) -> str:
    """``meta-llama/Meta-Llama-3.1-8B-Instruct`` -> ``llama-3.1-8b``: chat/instruct tunes share the base's shape."""
    name = ref.rstrip("/").rsplit("/", 1)[-1].lower()
    for suffix in ("-instruct", "-chat", "-it"):
        name = name.removesuffix(suffix)
    return name.removeprefix("meta-")


def arch_from_config(config: dict[str, Any], name: str) -> Arch:
    """The architecture in a transformers config.json (a multimodal one's ``text_config``)."""
    config = config.get("text_config") or config
    if any(config.get(key) for key in ("num_local_experts", "num_experts", "n_routed_experts")):
        raise PlanError(f"{name}: mixture-of-experts models are not modelled (dense decoders only)")
    required = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")
    if missing := [key for key in required if not config.get(key)]:
        raise PlanError(f"{name}: config.json lacks {', '.join(missing)} (not a decoder-only transformer?)")
    heads = config["num_attention_heads"]
    return Arch(
        name,
        config["num_hidden_layers"],
        config["hidden_size"],
        config["intermediate_size"],
        heads,
        config.get("num_key_value_heads") or heads,
        config.get("head_dim") or config["hidden_size"] // heads,
        config["vocab_size"],
        bool(config.get("tie_word_embeddings", False)),
    )  # untied: the larger count


def resolve_arch(model: str, params: str | None = None) -> tuple[Arch, str]:
    """The architecture to plan for and where it came from. ``params`` (1B/3B/8B) picks a size class outright."""
    from rlaif.models import BUILTIN_PREFIX, builtin_path, is_prepared, reference_problem

    if params:
        key = SIZE_CLASSES.get(params.strip().upper().removesuffix("B") + "B")
        if key is None:
            raise PlanError(f"--params {params}: known size classes are {', '.join(SIZE_CLASSES)}")
        return ARCHITECTURES[key], f"size class {params.upper()} (built-in table)"
    path = Path(model).expanduser()
    if model.startswith(BUILTIN_PREFIX) or path.is_dir():
        if problem := reference_problem(model):
            raise PlanError(problem)
        name = model.removeprefix(BUILTIN_PREFIX)
        if path.is_dir() or is_prepared(name):  # a builtin's converted checkpoint; converting would import torch
            return _read_config((path if path.is_dir() else builtin_path(name)) / "config.json", model)
        if _table_key(name) not in ARCHITECTURES:
            raise PlanError(f"{model} is not converted yet: run `rlaif models pull {model}` first")
        return ARCHITECTURES[_table_key(name)], "built-in table (GGUF not converted yet)"
    if (key := _table_key(model)) in ARCHITECTURES:
        return ARCHITECTURES[key], "built-in table"
    if problem := reference_problem(model):
        raise PlanError(problem)
    config, reason = hub_config(model)
    if config is None:
        known = ", ".join(arch.name for arch in ARCHITECTURES.values())
        raise PlanError(
            f"cannot read config.json of {model!r}: {reason}. Pass --params {'|'.join(SIZE_CLASSES)} "
            f"to plan with a size class, or name a built-in architecture ({known})."
        )
    return arch_from_config(config, model), "config.json from the Hub"


def _read_config(path: Path, model: str) -> tuple[Arch, str]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PlanError(f"{model}: cannot read {path}: {exc}") from None
    return arch_from_config(config, model), str(path)


def hub_config(repo_id: str) -> tuple[dict[str, Any] | None, str]:
    """config.json of a Hub repo (the local HF cache first, then one download), or None and why not."""
    try:
        from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json")
        if not isinstance(cached, str):
            if constants.HF_HUB_OFFLINE:
                return None, "not in the Hugging Face cache and HF_HUB_OFFLINE is set"
            # One quick connect first: offline, hf_hub_download retries with back-off for ~20 s.
            host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
            socket.create_connection((host, 443), timeout=3).close()
            cached = hf_hub_download(repo_id, "config.json", etag_timeout=5)
        return json.loads(Path(cached).read_text()), "ok"
    except Exception as exc:  # unreachable, gated, missing: every failure ends in the same hint
        return None, f"not local, not in the Hugging Face cache, and the Hub did not give it ({type(exc).__name__})"


# -- the estimate ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    quantize: Quantize = "nf4"
    lora_r: int = 16
    batch_size: int = 4
    seq_len: int = 1024
    gradient_checkpointing: bool = True
    gpu_mem_gib: float = 24.0

    def __post_init__(self) -> None:
        if self.quantize not in WEIGHT_BYTES:
            raise PlanError(f"quantize {self.quantize!r}: choose one of {', '.join(WEIGHT_BYTES)}")
        if min(self.lora_r, self.batch_size, self.seq_len) <= 0 or self.gpu_mem_gib <= 0:
            raise PlanError("lora-r, batch-size, seq-len and gpu-mem must be positive")


def weight_bytes(arch: Arch, s: Settings, lm_head: bool = True, frozen: bool = False) -> float:
    """One base: quantized linears + the rest, fp32 once prepared for k-bit training; bf16 when not quantized, or in
    a frozen model that is never prepared."""
    other = 2.0 if s.quantize == "none" or frozen else 4.0
    return arch.linear_params() * WEIGHT_BYTES[s.quantize] + arch.other_params(lm_head) * other


def layer_activation_bytes(arch: Arch, tokens: int) -> float:
    """What autograd keeps for one layer (bf16 autocast, LoRA dropout, SDPA/flash attention): 30h + 4 kv_dim + 15i
    bytes per token. Frozen 4-bit matmuls keep nothing; each LoRA input keeps a bf16 copy and a dropout mask (3 bytes
    x width: 9h q/k/v, 3h o, 6h gate/up, 3i down); the two fp32 RMSNorms keep their inputs (8h); SDPA keeps bf16 q, k,
    v, out (4h + 4 kv_dim); SiLU and the product keep fp32 gate, up, SiLU(gate) (12i: 4-bit layers return fp32)."""
    return tokens * (30 * arch.hidden + 4 * arch.kv_dim + 15 * arch.intermediate)


def activation_bytes(arch: Arch, s: Settings, sequences: int, lm_head: bool) -> float:
    tokens = sequences * s.seq_len
    layer = layer_activation_bytes(arch, tokens)
    # Checkpointing keeps each layer's input (the residual stream is fp32 once the embeddings are) and recomputes
    # one layer at a time in the backward pass.
    stream = 2 if s.quantize == "none" else 4
    kept = arch.layers * tokens * arch.hidden * stream + layer if s.gradient_checkpointing else arch.layers * layer
    head = min(tokens, HEAD_TILE[0]) * min(arch.vocab, HEAD_TILE[1]) * 4 if lm_head else 0
    return kept + head + tokens * arch.hidden * 4  # + the fp32 gradient of the last hidden state


def kv_cache_bytes(arch: Arch, tokens: int) -> float:
    """K and V in bf16 at every layer: 2 x layers x kv_dim x 2 bytes per token."""
    return tokens * arch.layers * 2 * arch.kv_dim * 2


def estimate(arch: Arch, stage: str, s: Settings, shared: bool = True) -> dict[str, float]:
    """Bytes per component for one training stage. ``shared=False``: PPO with four separate models."""
    if stage not in STAGES:
        raise PlanError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    lora = arch.lora_params(s.lora_r)
    adapter = 4 if s.quantize != "none" else 8  # weight + grad: bf16 (TRL casts QLoRA adapters), else peft's fp32
    lm_head = stage != "rm"  # the reward model is a one-logit classifier: no LM head
    sequences = 2 * s.batch_size if stage in ("rm", "dpo") else s.batch_size  # chosen + rejected in one batch
    trainable, frozen, heads, kv, ppo_logits = lora, 0, arch.hidden if stage == "rm" else 0, 0.0, 0.0
    if stage == "ppo":  # policy and value adapters train, the reward adapter is frozen; value and reward heads
        trainable, frozen, heads = 2 * lora, lora, 2 * arch.hidden + 1
        kv = kv_cache_bytes(arch, s.batch_size * s.seq_len)  # rollouts with HF generate on the policy
        # Policy then value, each forward+backward on its own (rlaif/train/ppo_model.py): one backbone's activations
        # at a time, plus the policy's response logits, which PPO's own loss materialises (no fused head).
        ppo_logits = s.batch_size * s.seq_len * PPO_RESPONSE_SHARE * arch.vocab * PPO_LOGIT_BYTES
    weights = weight_bytes(arch, s, lm_head)
    if stage == "ppo" and not shared:  # naive: a trained value model, frozen reference and reward models
        weights += sum(
            weight_bytes(arch, s, head, frozen) for head, frozen in ((False, False), (True, True), (False, True))
        )
    return {
        "weights": weights,
        "adapters": trainable * adapter + frozen * adapter / 2 + heads * 8,
        "optimizer": (trainable + heads) * 8,  # AdamW's two fp32 moments (paged_adamw_32bit pages them out)
        "activations": activation_bytes(arch, s, sequences, lm_head) + ppo_logits,
        "kv cache": kv,
        "overhead": OVERHEAD_BYTES,
    }


def vllm_phase(arch: Arch, s: Settings) -> dict[str, float]:
    """The generation half of the loop: vLLM loads the base unquantized (bf16), a LoRA slot and a KV cache."""
    return {
        "weights (bf16)": arch.total_params() * 2,
        "adapter": arch.lora_params(s.lora_r) * 2,
        "kv cache": kv_cache_bytes(arch, s.batch_size * s.seq_len),
        "overhead": OVERHEAD_BYTES,
    }


def total(rows: dict[str, float]) -> float:
    """The sum of the rows (high for PPO, whose rollout KV cache and training activations are not live at once)."""
    return sum(rows.values())


def verdict(total_bytes: float, gpu_mem_gib: float) -> str:
    free = gpu_mem_gib - total_bytes / GIB
    if free >= HEADROOM * gpu_mem_gib:
        return f"fits ({free:.1f} GiB free)"
    if free >= 0:
        return f"tight ({free:.1f} GiB free, under {HEADROOM:.0%} headroom)"
    return f"does NOT fit ({-free:.1f} GiB over)"


def largest_batch(arch: Arch, stage: str, s: Settings, limit: int = 1024) -> int:
    """The largest batch size whose estimate leaves the headroom free; 0 when even batch 1 does not."""
    budget = (1 - HEADROOM) * s.gpu_mem_gib * GIB
    over = (b for b in range(1, limit + 1) if total(estimate(arch, stage, replace(s, batch_size=b))) > budget)
    return next(over, limit + 1) - 1


# -- the report --------------------------------------------------------------------------------------------------
NOTES = {
    "sft": "sft: base + LoRA + AdamW on the LoRA params; activations of batch sequences.",
    "rm": "rm: the base as a one-logit classifier (no LM head); chosen + rejected in one batch (2 x batch sequences).",
    "dpo": "dpo: chosen + rejected (2 x batch sequences); the reference is the base with the adapter disabled: no "
    "extra weights, a transient no-grad pass (precompute_ref_log_probs saves its time, not memory).",
    "ppo": "ppo: ONE quantized base shared by the policy, value (+ head) and reward adapters, reference = adapters "
    "disabled; activations include the policy's fp32 response logits; kv cache = HF-generate rollouts.",
}


QUANT_LABELS = {"nf4": "NF4 (double quant)", "int8": "int8", "none": "bf16 (not quantized)"}


def _gib(value: float) -> str:
    return f"{value / GIB:.2f}"


def render_plan(model: str, arch: Arch, source: str, stages: tuple[str, ...], s: Settings) -> str:
    """A table of GiB per component for ``stages``, fit verdicts, the naive-PPO comparison and the vLLM phase."""
    rows = {stage: estimate(arch, stage, s) for stage in stages}
    lines = [
        f"rlaif plan: memory ESTIMATE for {model} (arithmetic on the architecture, not a measurement; formulas: "
        "README, Memory planning)",
        f"architecture: {arch.name} from {source}: {arch.total_params() / 1e9:.2f}B params, {arch.layers} layers, "
        f"hidden {arch.hidden}, intermediate {arch.intermediate}, {arch.heads}/{arch.kv_heads} q/kv heads, vocab "
        f"{arch.vocab}, {'tied' if arch.tied else 'untied'} embeddings",
        f"settings: {QUANT_LABELS[s.quantize]}, LoRA r={s.lora_r} on all linear "
        f"layers ({arch.lora_params(s.lora_r) / 1e6:.1f}M params per adapter), batch {s.batch_size} x {s.seq_len} "
        f"tokens, gradient checkpointing {'on' if s.gradient_checkpointing else 'off'}, GPU {s.gpu_mem_gib:g} GiB",
        "",
        "| GiB | " + " | ".join(stages) + " |",
        "| --- |" + " ---: |" * len(stages),
    ]
    for component in rows[stages[0]]:
        lines.append(f"| {component} | " + " | ".join(_gib(rows[st][component]) for st in stages) + " |")
    lines += ["| **total** | " + " | ".join(f"**{_gib(total(rows[st]))}**" for st in stages) + " |", ""]
    for stage in stages:
        lines.append(
            f"{stage}: {_gib(total(rows[stage]))} of {s.gpu_mem_gib:g} GiB, "
            f"{verdict(total(rows[stage]), s.gpu_mem_gib)}; largest batch with {HEADROOM:.0%} headroom: "
            f"{largest_batch(arch, stage, s)}"
        )
    lines += ["", *(NOTES[stage] for stage in stages)]
    if "ppo" in stages:
        naive = total(estimate(arch, "ppo", s, shared=False))
        lines.append(
            f"ppo, naive 4-model setup (policy, reference, value and reward each load the base): "
            f"{_gib(naive)} GiB (+{_gib(naive - total(rows['ppo']))}), {verdict(naive, s.gpu_mem_gib)}"
        )
    return "\n".join(lines + ["", *_vllm_lines(arch, s, rows.get("ppo"))])


def _vllm_lines(arch: Arch, s: Settings, ppo: dict[str, float] | None) -> list[str]:
    phase = vllm_phase(arch, s)
    need = total(phase)
    parts = " + ".join(f"{name} {_gib(value)}" for name, value in phase.items())
    lines = [
        f"vLLM generation phase (the loop alternates generating and training; the engine sleeps while the "
        f"trainer steps): {parts} = {_gib(need)} GiB, {verdict(need, s.gpu_mem_gib)}; "
        f"gpu_memory_utilization >= {min(need / GIB / s.gpu_mem_gib, 1.0):.2f}"
    ]
    if ppo is not None:  # PPO's trainer stays resident while vLLM generates its rollouts
        both = ppo["weights"] + ppo["adapters"] + ppo["optimizer"] + need
        lines.append(
            f"ppo rollouts through vLLM: the trainer's weights, adapters and optimizer stay resident: "
            f"{_gib(both)} GiB, {verdict(both, s.gpu_mem_gib)}"
        )
    return lines
