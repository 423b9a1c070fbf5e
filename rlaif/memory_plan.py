"""``rlaif plan``: GPU memory ESTIMATES per training stage, by arithmetic on a model's config.json (no torch).

The formulas (README "Memory planning") model what rlaif's builder, peft, bitsandbytes and TRL 1.x do on a CUDA GPU
with bf16 autocast: NF4/int8 linear layers, the other weights upcast to fp32 by ``prepare_model_for_kbit_training``,
bf16 LoRA adapters with fp32 AdamW states, TRL's fused LM head, gradient checkpointing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from rlaif.plan_models import (  # noqa: F401  (re-exported: the architectures are part of this module's API)
    ARCHITECTURES,
    SIZE_CLASSES,
    Arch,
    PlanError,
    arch_for_params,
    arch_from_config,
    hub_config,
    resolve_arch,
)
from rlaif.schema import Quantize

STAGES = ("sft", "rm", "dpo", "ppo", "grpo", "rloo")
GROUP_STAGES = ("grpo", "rloo")  # online RL with a group of completions per prompt; the engine beside the trainer
GIB = 2**30
# Bytes per quantized weight. NF4 (QLoRA, Dettmers et al. 2023): 4-bit codes, an 8-bit absmax per 64 weights and an
# fp32 constant per 256 absmaxes (double quantization, on in rlaif's model config): 4.127 bits. int8: LLM.int8's
# per-row scales are negligible.
WEIGHT_BYTES = {"nf4": 0.5 + 1 / 64 + 4 / (64 * 256), "int8": 1.0, "none": 2.0}
HEAD_TILE = (4096, 32768)  # TRL's fused LM head: tokens x vocab entries per tile (trl/kernels/chunked_logprob.py)
OVERHEAD_BYTES = 1 * GIB  # CUDA context, cuBLAS workspace, caching-allocator fragmentation
PPO_LOGIT_BYTES = 12  # rlaif's PPO scores responses with full logits: fp32 logits, a scaled copy kept, the gradient
PPO_RESPONSE_SHARE = 0.5  # of seq-len: the response part of a rollout, whose logits PPO materialises
# Bytes per token x intermediate width that a recomputed layer's backward adds (quantized base: fp32 gradients;
# bf16 base: bf16): fitted to peak allocations of rm and dpo on an H200 (6 cases each, within 0.04 GiB).
BACKWARD_MLP_BYTES = {True: 9.0, False: 4.5}
HEADROOM = 0.10  # "fits" leaves this fraction of the GPU free: an estimate is not a measurement
VLLM_UTILIZATION = 0.9  # vLLM's default gpu_memory_utilization


# -- the estimate ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    quantize: Quantize = "nf4"
    lora_r: int = 16
    batch_size: int = 4
    seq_len: int = 1024
    gradient_checkpointing: bool = True
    gpu_mem_gib: float = 24.0
    max_model_len: int | None = None  # vLLM's context; None: the model's max_position_embeddings (vLLM's default)
    num_generations: int = 8  # grpo/rloo: completions per prompt (TRL's default), one group per micro-batch

    def __post_init__(self) -> None:
        if self.quantize not in WEIGHT_BYTES:
            raise PlanError(f"quantize {self.quantize!r}: choose one of {', '.join(WEIGHT_BYTES)}")
        if min(self.lora_r, self.batch_size, self.seq_len, self.num_generations) <= 0 or self.gpu_mem_gib <= 0:
            raise PlanError("lora-r, batch-size, seq-len, num-generations and gpu-mem must be positive")
        if self.max_model_len is not None and self.max_model_len <= 0:
            raise PlanError(f"max-model-len {self.max_model_len}: must be a positive number of tokens")


def weight_parts(arch: Arch, s: Settings, lm_head: bool = True, frozen: bool = False) -> tuple[float, float]:
    """(quantized linear layers, everything else) in bytes. The rest (embeddings, an untied LM head, norms, biases)
    is never quantized: bf16 when not quantized or in a frozen model that is never prepared, else fp32, because
    peft's prepare_model_for_kbit_training upcasts every non-quantized parameter to fp32."""
    other = 2.0 if s.quantize == "none" or frozen else 4.0
    return arch.linear_params() * WEIGHT_BYTES[s.quantize], arch.other_params(lm_head) * other


def weight_bytes(arch: Arch, s: Settings, lm_head: bool = True, frozen: bool = False) -> float:
    """One base: quantized linears + the rest (see :func:`weight_parts`)."""
    return sum(weight_parts(arch, s, lm_head, frozen))


def layer_activation_bytes(arch: Arch, tokens: int) -> float:
    """What autograd keeps for one layer (bf16 autocast, LoRA dropout, SDPA/flash attention): 30h + 4 kv_dim + 15i
    bytes per token. Frozen 4-bit matmuls keep nothing; each LoRA input keeps a bf16 copy and a dropout mask (3 bytes
    x width: 9h q/k/v, 3h o, 6h gate/up, 3i down); the two fp32 RMSNorms keep their inputs (8h); SDPA keeps bf16 q, k,
    v, out (4h + 4 kv_dim); SiLU and the product keep fp32 gate, up, SiLU(gate) (12i: 4-bit layers return fp32)."""
    return tokens * (30 * arch.hidden + 4 * arch.kv_dim + 15 * arch.intermediate)


def activation_bytes(arch: Arch, s: Settings, sequences: int, lm_head: bool) -> float:
    """Peak activation memory of one forward+backward. The LM head's tile is live at the start of the backward, the
    recomputed layer and its gradients later: the peak is the larger of the two, above what is kept throughout."""
    tokens = sequences * s.seq_len
    layer = layer_activation_bytes(arch, tokens)
    # The recomputed layer's backward holds the MLP's gradients beside its saved tensors: fp32 when the 4-bit layers
    # return fp32, bf16 under autocast on a bf16 base (measured, bench/plan_gpu.py: docs/memory-planning.md)
    transient = tokens * arch.intermediate * BACKWARD_MLP_BYTES[s.quantize != "none"]
    head = min(tokens, HEAD_TILE[0]) * min(arch.vocab, HEAD_TILE[1]) * 4 if lm_head else 0
    # Checkpointing keeps each layer's input (the residual stream is fp32 once the embeddings are) and recomputes
    # one layer at a time in the backward pass; without it every layer's activations stay.
    stream = 2 if s.quantize == "none" else 4
    if s.gradient_checkpointing:
        kept, peak = arch.layers * tokens * arch.hidden * stream, max(layer + transient, head)
    else:
        kept, peak = arch.layers * layer, max(transient, head)
    return kept + peak + tokens * arch.hidden * 4  # + the fp32 gradient of the last hidden state


def kv_cache_bytes(arch: Arch, sequences: int, length: int) -> float:
    """K and V in bf16 for ``sequences`` of ``length`` tokens: 2 x kv_dim x 2 bytes per token and layer; a
    sliding-window layer keeps at most its window (vLLM's and transformers' hybrid caches)."""
    sliding = min(length, arch.sliding_window) * arch.sliding_layers
    return sequences * (length * (arch.layers - arch.sliding_layers) + sliding) * 2 * arch.kv_dim * 2


def estimate(arch: Arch, stage: str, s: Settings, shared: bool = True) -> dict[str, float]:
    """Bytes per component for one training stage. ``shared=False``: PPO with four separate models."""
    if stage not in STAGES:
        raise PlanError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    lora = arch.lora_params(s.lora_r)
    adapter = 4 if s.quantize != "none" else 8  # weight + grad: bf16 (TRL casts QLoRA adapters), else peft's fp32
    lm_head = stage != "rm"  # the reward model is a one-logit classifier: no LM head
    sequences = 2 * s.batch_size if stage in ("rm", "dpo") else s.batch_size  # chosen + rejected in one batch
    if stage in GROUP_STAGES:  # one group per micro-batch; the engine generates (group_layouts): no KV cache here
        sequences = s.num_generations
    trainable, frozen, heads, kv, ppo_logits = lora, 0, arch.hidden if stage == "rm" else 0, 0.0, 0.0
    if stage == "ppo":  # policy and value adapters train, the reward adapter is frozen; value and reward heads
        trainable, frozen, heads = 2 * lora, lora, 2 * arch.hidden + 1
        kv = kv_cache_bytes(arch, s.batch_size, s.seq_len)  # rollouts with HF generate on the policy
        # Policy then value, each forward+backward on its own (rlaif/train/rl/ppo.py): one backbone's activations
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


def total(rows: dict[str, float]) -> float:
    """The sum of the rows (high for PPO, whose rollout KV cache and training activations are not live at once)."""
    return sum(rows.values())


def status(total_bytes: float, gpu_mem_gib: float) -> str:
    """fits (the headroom stays free), tight (it fits, under the headroom) or over."""
    free = gpu_mem_gib - total_bytes / GIB
    return "fits" if free >= HEADROOM * gpu_mem_gib else "tight" if free >= 0 else "over"


def verdict(total_bytes: float, gpu_mem_gib: float) -> str:
    free = gpu_mem_gib - total_bytes / GIB
    return {
        "fits": f"fits ({free:.1f} GiB free)",
        "tight": f"tight ({free:.1f} GiB free, under {HEADROOM:.0%} headroom)",
        "over": f"does NOT fit ({-free:.1f} GiB over)",
    }[status(total_bytes, gpu_mem_gib)]


def batch_field(stage: str) -> str:
    """The setting a stage's batch is: grpo/rloo train on one group (num_generations completions) at a time."""
    return "num_generations" if stage in GROUP_STAGES else "batch_size"


def largest_batch(arch: Arch, stage: str, s: Settings, limit: int = 1024) -> int:
    """The largest batch size (grpo/rloo: num_generations) whose estimate leaves the headroom free; 0 when even 1
    does not."""
    budget = (1 - HEADROOM) * s.gpu_mem_gib * GIB
    field = batch_field(stage)
    over = (b for b in range(1, limit + 1) if total(estimate(arch, stage, replace(s, **{field: b}))) > budget)
    return next(over, limit + 1) - 1


# -- the vLLM generation phase -----------------------------------------------------------------------------------
def model_len(arch: Arch, s: Settings) -> int:
    """vLLM's max_model_len: --max-model-len, else the config's max_position_embeddings (what vLLM defaults to)."""
    return s.max_model_len or arch.context


def vllm_phase(arch: Arch, s: Settings) -> dict[str, float]:
    """The generation half of the loop: vLLM loads the base unquantized (bf16), a LoRA slot, and a KV cache that must
    hold at least one max_model_len sequence (vLLM refuses to start otherwise) and the batch of rollouts."""
    kv = max(kv_cache_bytes(arch, 1, model_len(arch, s)), kv_cache_bytes(arch, s.batch_size, s.seq_len))
    return {
        "weights (bf16)": arch.total_params() * 2,
        "adapter": arch.lora_params(s.lora_r) * 2,
        "kv cache": kv,
        "overhead": OVERHEAD_BYTES,
    }


def largest_context(arch: Arch, s: Settings, utilization: float = VLLM_UTILIZATION) -> int:
    """The longest max_model_len whose KV cache fits beside the weights at ``utilization`` of the GPU (capped at the
    model's own context; 0 when the weights alone do not fit)."""
    phase = vllm_phase(arch, s)
    budget = utilization * s.gpu_mem_gib * GIB - (total(phase) - phase["kv cache"])
    if kv_cache_bytes(arch, 1, 16) > budget:  # not even one 16-token block
        return 0
    low, high = 16, arch.context
    while low < high:  # kv_cache_bytes grows with length: bisect
        mid = (low + high + 1) // 2
        low, high = (mid, high) if kv_cache_bytes(arch, 1, mid) <= budget else (low, mid - 1)
    return low if low == arch.context else low - low % 16  # whole 16-token KV blocks (vLLM's default block size)


def vllm_summary(arch: Arch, s: Settings) -> dict[str, object]:
    """The vLLM phase with its verdict: the gpu_memory_utilization it needs, or why it cannot start and what to
    pass instead."""
    phase = vllm_phase(arch, s)
    need, gpu = total(phase), s.gpu_mem_gib * GIB
    fixed = need - phase["kv cache"]
    context, longest = model_len(arch, s), largest_context(arch, s)
    result: dict[str, object] = {
        "max_model_len": context,
        "max_model_len_source": "--max-model-len" if s.max_model_len else "config max_position_embeddings",
        "rows": phase,
        "total": need,
        "largest_context": longest,
    }
    if need <= VLLM_UTILIZATION * gpu:
        result["status"], result["gpu_memory_utilization"] = "fits", need / gpu
        result["message"] = (
            f"fits: gpu_memory_utilization >= {need / gpu:.2f} (vLLM's default {VLLM_UTILIZATION} leaves room for "
            f"a context of up to {longest} tokens)"
        )
    elif fixed > VLLM_UTILIZATION * gpu:
        result["status"], result["gpu_memory_utilization"] = "weights_do_not_fit", None
        result["message"] = (
            f"does NOT fit: vLLM serves the base unquantized, and its bf16 weights + LoRA slot + overhead alone "
            f"({fixed / GIB:.2f} GiB) exceed {VLLM_UTILIZATION:.0%} of {s.gpu_mem_gib:g} GiB at any context; "
            "use a larger GPU or a smaller model for generation"
        )
    else:
        result["status"], result["gpu_memory_utilization"] = "context_too_long", None
        result["message"] = (
            f"does NOT fit at max_model_len {context}: its KV cache alone is {phase['kv cache'] / GIB:.2f} GiB. "
            f"The largest context that fits at gpu_memory_utilization {VLLM_UTILIZATION} is {longest} tokens: set "
            f"max_model_len: {longest} (or less) on the vllm model in your YAML (rlaif plan --max-model-len "
            f"{longest} to check)"
        )
    return result


# -- grpo/rloo: the rollout engine beside the trainer --------------------------------------------------------------
def rollout_kv_bytes(arch: Arch, s: Settings) -> float:
    """The rollout engine's KV cache: one group of num_generations sequences of seq_len tokens, and at least one
    max_model_len sequence (vLLM refuses to start otherwise); max_model_len defaults to seq_len here, because a
    rollout engine is started for prompt + completion (rlaif's ``vllm.max_model_len``, TRL's
    ``vllm_max_model_length``), not the model's whole context."""
    return max(
        kv_cache_bytes(arch, 1, s.max_model_len or s.seq_len), kv_cache_bytes(arch, s.num_generations, s.seq_len)
    )


def merge_transient_bytes(arch: Arch, s: Settings) -> float:
    """TRL's sync with a PEFT model merges the adapter into the base layer by layer: the largest linear weight
    (h x i) dequantized to bf16 beside its LoRA delta B @ A in fp32; on a bf16 base only the delta."""
    return arch.hidden * arch.intermediate * (6 if s.quantize != "none" else 4)


def group_layouts(arch: Arch, s: Settings, stage: str = "grpo") -> dict[str, dict[str, object]]:
    """GRPO/RLOO with a vLLM engine on the same GPU as the trainer, per layout: bytes of its two phases, generate
    (the trainer's weights, adapters and optimizer states stay resident beside the awake engine) and update (the
    trainer's step, :func:`estimate`, beside what the engine keeps), and the peak of the two. The trainer is the same
    in every layout: the quantized base with the trained LoRA, the reference = that base with the adapter disabled.

    - ``rlaif``: ONE engine (the loop's, or the recipe's own) loads the base as the model is named (bf16) with a LoRA
      slot; the trained adapter is a LoRA request (no merge, nothing else pushed); it sleeps (level 1: weights to
      host memory, KV cache freed) while the trainer steps.
    - ``rlaif_4bit_engine``: the same with the engine's base in 4-bit (vLLM's bitsandbytes with LoRA) — not built by
      rlaif yet: what the engine's bf16 copy costs.
    - ``trl_colocate``: TRL's ``use_vllm``/``vllm_mode: colocate`` with a QLoRA model: vLLM loads its own bitsandbytes
      4-bit copy (bf16 for ``quantize: none``; TRL refuses int8), the adapter is merged into the trainer's base, every
      weight pushed and the merge undone each sync; with TRL's default ``vllm_enable_sleep_mode: false`` the engine
      keeps its weights and KV cache through the update.
    - ``trl_colocate_sleep``: the same with ``vllm_enable_sleep_mode: true`` (level 2: weights discarded during the
      update, pushed again before the next generation).
    """
    train = estimate(arch, stage, s)
    resident = train["weights"] + train["adapters"] + train["optimizer"]
    kv, lora_slot = rollout_kv_bytes(arch, s), arch.lora_params(s.lora_r) * 2
    four_bit = sum(weight_parts(arch, replace(s, quantize="nf4"), frozen=True))  # 4-bit linears, bf16 rest
    engines: dict[str, dict[str, float]] = {
        "rlaif": {"engine weights": arch.total_params() * 2, "engine LoRA slot": lora_slot, "engine kv cache": kv},
        "rlaif_4bit_engine": {"engine weights": four_bit, "engine LoRA slot": lora_slot, "engine kv cache": kv},
    }
    if s.quantize != "int8":
        trl_weights = four_bit if s.quantize == "nf4" else arch.total_params() * 2.0
        trl = {
            "engine weights": trl_weights,
            "engine kv cache": kv,
            "merge (transient)": merge_transient_bytes(arch, s),
        }
        engines["trl_colocate"] = engines["trl_colocate_sleep"] = trl
    layouts: dict[str, dict[str, object]] = {}
    for name, engine in engines.items():
        awake = sum(engine.values())
        # rlaif sleeps its engine and TRL's sleep mode discards it; TRL's default keeps weights and KV cache resident
        kept = awake - engine.get("merge (transient)", 0.0) if name == "trl_colocate" else 0.0
        phases = {"generate": resident + awake + OVERHEAD_BYTES, "update": total(train) + kept}
        layouts[name] = {
            "engine": engine,
            "trainer_resident": resident,
            "phases": phases,
            "peak": max(phases.values()),
        }
    return layouts
