"""``rlaif plan``'s output: one plan as data (:func:`plan_data`, what ``--json`` prints), drawn as plain text for a
terminal or as markdown (``--format md``)."""

from __future__ import annotations

import json
from typing import Any

from rlaif.memory_plan import (
    GIB,
    GROUP_STAGES,
    HEADROOM,
    VLLM_UTILIZATION,
    Arch,
    Settings,
    batch_field,
    estimate,
    group_layouts,
    largest_batch,
    status,
    total,
    verdict,
    vllm_summary,
    weight_parts,
)

FORMATS = ("text", "md", "json")
NOTES = {
    "sft": "sft: base + LoRA + AdamW on the LoRA params; activations of batch sequences.",
    "rm": "rm: the base as a one-logit classifier (no LM head); chosen + rejected in one batch (2 x batch sequences).",
    "dpo": "dpo: chosen + rejected (2 x batch sequences); the reference is the base with the adapter disabled: no "
    "extra weights, a transient no-grad pass (precompute_ref_log_probs saves its time, not memory).",
    "ppo": "ppo: ONE quantized base shared by the policy, value (+ head) and reward adapters, reference = adapters "
    "disabled; activations include the policy's fp32 response logits; kv cache = HF-generate rollouts.",
    "grpo": "grpo: the trainer's update: quantized base + the trained LoRA + AdamW, activations of one group "
    "(num_generations completions of seq-len tokens, TRL's fused LM head); reference = the base with the adapter "
    "disabled (beta > 0), no value model; an RM adapter reward is a frozen second LoRA on the same base. Rollouts "
    "come from a vLLM engine beside it: the layouts below.",
    "rloo": "rloo: as grpo (TRL's RLOOTrainer: the same group, the leave-one-out baseline costs nothing).",
}
LAYOUTS = {
    "rlaif": "rlaif, one engine (bf16 base + LoRA slot; the adapter is a LoRA request: no merge, no weight push; "
    "engine asleep during the update)",
    "rlaif_4bit_engine": "rlaif with a 4-bit engine (vLLM bitsandbytes + LoRA; not built by rlaif yet)",
    "trl_colocate": "TRL QLoRA colocate (vLLM's own 4-bit copy; adapter merged, every weight pushed each step; "
    "vllm_enable_sleep_mode false, TRL's default: engine resident during the update)",
    "trl_colocate_sleep": "TRL colocate with vllm_enable_sleep_mode (weights discarded in the update, pushed again)",
}
STATUSES = {"fits": f"fits with {HEADROOM:.0%} headroom", "tight": "tight", "over": "does NOT fit"}
QUANT_LABELS = {"nf4": "NF4 (double quant)", "int8": "int8", "none": "bf16 (not quantized)"}


def _gib(value: float) -> float:
    return round(value / GIB, 4)


def plan_data(model: str, arch: Arch, source: str, stages: tuple[str, ...], s: Settings) -> dict[str, Any]:
    """Everything the plan says, in GiB, JSON-ready."""
    data: dict[str, Any] = {
        "estimate": True,  # arithmetic on the architecture, not a measurement
        "model": model,
        "architecture": {
            "name": arch.name,
            "source": source,
            "assumed": source.startswith("--params") and " ASSUMED: " in source,
            "params": arch.total_params(),
            "layers": arch.layers,
            "hidden": arch.hidden,
            "intermediate": arch.intermediate,
            "heads": arch.heads,
            "kv_heads": arch.kv_heads,
            "head_dim": arch.head_dim,
            "vocab": arch.vocab,
            "tied_embeddings": arch.tied,
            "qkv_bias": arch.qkv_bias,
            "context": arch.context,
            "sliding_window": arch.sliding_window,
            "sliding_layers": arch.sliding_layers,
        },
        "settings": {**s.__dict__, "lora_params": arch.lora_params(s.lora_r), "headroom": HEADROOM},
        "stages": {},
        "weights_explained": _weights_explained(arch, s),
    }
    for stage in stages:
        rows = estimate(arch, stage, s)
        data["stages"][stage] = {
            "rows_gib": {name: _gib(value) for name, value in rows.items()},
            "total_gib": _gib(total(rows)),
            "status": status(total(rows), s.gpu_mem_gib),
            "verdict": verdict(total(rows), s.gpu_mem_gib),
            "largest_batch": largest_batch(arch, stage, s),
            "batch_setting": batch_field(stage),
        }
    if "ppo" in stages:
        naive = total(estimate(arch, "ppo", s, shared=False))
        data["ppo_naive_4_models"] = {"total_gib": _gib(naive), "verdict": verdict(naive, s.gpu_mem_gib)}
    vllm = vllm_summary(arch, s)
    vllm["rows_gib"] = {name: _gib(value) for name, value in vllm.pop("rows").items()}  # type: ignore[attr-defined]
    vllm["total_gib"] = _gib(vllm.pop("total"))  # type: ignore[arg-type]
    if s.max_model_len and s.max_model_len > arch.context:
        vllm["warning"] = (
            f"--max-model-len {s.max_model_len} exceeds the model's max_position_embeddings ({arch.context}): vLLM "
            "refuses it unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1, and quality past the trained context is not assured"
        )
    data["vllm"] = vllm
    if group := [stage for stage in stages if stage in GROUP_STAGES]:  # grpo and rloo: the same memory
        data["group_layouts"] = _layouts(arch, s, group[0])
    if "ppo" in stages:  # PPO's trainer stays resident while vLLM generates its rollouts
        ppo = estimate(arch, "ppo", s)
        both = ppo["weights"] + ppo["adapters"] + ppo["optimizer"] + vllm["total_gib"] * GIB
        data["ppo_rollouts_through_vllm"] = {"total_gib": _gib(both), "verdict": verdict(both, s.gpu_mem_gib)}
    return data


def _layouts(arch: Arch, s: Settings, stage: str) -> dict[str, Any]:
    layouts = {}
    for name, layout in group_layouts(arch, s, stage).items():
        peak = float(layout["peak"])  # type: ignore[arg-type]
        layouts[name] = {
            "label": LAYOUTS[name],
            "engine_gib": {k: _gib(v) for k, v in layout["engine"].items()},  # type: ignore[attr-defined]
            "trainer_resident_gib": _gib(layout["trainer_resident"]),  # type: ignore[arg-type]
            "phases_gib": {k: _gib(v) for k, v in layout["phases"].items()},  # type: ignore[attr-defined]
            "peak_gib": _gib(peak),
            "status": status(peak, s.gpu_mem_gib),
            "verdict": verdict(peak, s.gpu_mem_gib),
        }
    for name in LAYOUTS:
        # TRL's colocated vLLM quantizes in flight only to 4 bits: it refuses an int8 model
        layouts.setdefault(name, {"status": "unsupported", "verdict": "TRL refuses int8 with vLLM (no 8-bit engine)"})
    return layouts


def _weights_explained(arch: Arch, s: Settings) -> dict[str, Any]:
    linear, other = weight_parts(arch, s)
    head = (
        "the input embeddings, the LM head (untied)" if not arch.tied else "the embeddings (shared with the LM head)"
    )
    if s.quantize == "none":
        text = f"weights: bf16 throughout ({arch.total_params() / 1e9:.2f}B params x 2 bytes)."
    else:
        text = (
            f"weights, {s.quantize}: the {arch.linear_params() / 1e9:.2f}B params of the linear layers take "
            f"{linear / GIB:.2f} GiB; {head} and the norms, {arch.other_params() / 1e9:.2f}B "
            f"params, are not quantized and take {other / GIB:.2f} GiB, because peft's "
            "prepare_model_for_kbit_training upcasts every non-quantized parameter to fp32 (4 bytes) for stable "
            "training. rm has no LM head."
        )
    return {"quantized_gib": _gib(linear), "unquantized_fp32_gib": _gib(other), "text": text}


# -- drawing ------------------------------------------------------------------------------------------------------
def render(data: dict[str, Any], fmt: str = "text") -> str:
    if fmt == "json":
        return json.dumps(data, indent=2)
    arch, s, stages = data["architecture"], data["settings"], data["stages"]
    lines = [
        f"rlaif plan: memory ESTIMATE for {data['model']} (arithmetic on the architecture, not a measurement; "
        "formulas: docs/memory-planning.md)",
        _arch_line(arch),
        f"settings: {QUANT_LABELS[s['quantize']]}, LoRA r={s['lora_r']} on all linear layers "
        f"({s['lora_params'] / 1e6:.1f}M params per adapter), batch {s['batch_size']} x {s['seq_len']} tokens, "
        f"gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}, GPU {s['gpu_mem_gib']:g} GiB",
        "",
        *(_md_table if fmt == "md" else _text_table)(stages),
        "",
        data["weights_explained"]["text"],
    ]
    for stage, row in stages.items():
        batch = "num_generations" if row["batch_setting"] == "num_generations" else "batch"
        lines.append(
            f"{stage}: {row['total_gib']:.2f} of {s['gpu_mem_gib']:g} GiB, {row['verdict']}; largest {batch} with "
            f"{HEADROOM:.0%} headroom: {row['largest_batch']}"
        )
    lines += ["", *(NOTES[stage] for stage in stages)]
    if naive := data.get("ppo_naive_4_models"):
        lines.append(
            f"ppo, naive 4-model setup (policy, reference, value and reward each load the base): "
            f"{naive['total_gib']:.2f} GiB, {naive['verdict']}"
        )
    return "\n".join([*lines, "", *_vllm_lines(data), *_layout_lines(data)])


def _arch_line(arch: dict[str, Any]) -> str:
    extras = [f"context {arch['context']}"]
    if arch["sliding_layers"]:
        extras.append(f"{arch['sliding_layers']} of {arch['layers']} layers a {arch['sliding_window']}-token window")
    if arch["qkv_bias"]:
        extras.append("q/k/v biases")
    source = arch["source"].split(" ASSUMED: ")[0]
    line = (
        f"architecture: {arch['name']} from {source}: {arch['params'] / 1e9:.2f}B params, {arch['layers']} "
        f"layers, hidden {arch['hidden']}, intermediate {arch['intermediate']}, {arch['heads']}/{arch['kv_heads']} "
        f"q/kv heads of {arch['head_dim']}, vocab {arch['vocab']}, "
        f"{'tied' if arch['tied_embeddings'] else 'untied'} embeddings, " + ", ".join(extras)
    )
    return line + ("\nassumption: " + arch["source"].split(" ASSUMED: ", 1)[1] if arch["assumed"] else "")


def _components(stages: dict[str, Any]) -> list[str]:
    return list(next(iter(stages.values()))["rows_gib"])


def _md_table(stages: dict[str, Any]) -> list[str]:
    lines = ["| GiB | " + " | ".join(stages) + " |", "| --- |" + " ---: |" * len(stages)]
    for name in _components(stages):
        lines.append(f"| {name} | " + " | ".join(f"{row['rows_gib'][name]:.2f}" for row in stages.values()) + " |")
    lines.append("| **total** | " + " | ".join(f"**{row['total_gib']:.2f}**" for row in stages.values()) + " |")
    return lines


def _text_table(stages: dict[str, Any]) -> list[str]:
    width = max(9, *(len(stage) for stage in stages))
    label = max(len(name) for name in [*_components(stages), "total"])

    def row(name: str, values: list[str]) -> str:
        return f"{name:<{label}}" + "".join(f"{value:>{width + 2}}" for value in values)

    lines = [row("GiB", list(stages))]
    lines += [row(name, [f"{r['rows_gib'][name]:.2f}" for r in stages.values()]) for name in _components(stages)]
    rule = "-" * (label + (width + 2) * len(stages))
    return [*lines, rule, row("total", [f"{r['total_gib']:.2f}" for r in stages.values()])]


def _vllm_lines(data: dict[str, Any]) -> list[str]:
    vllm = data["vllm"]
    parts = " + ".join(f"{name} {value:.2f}" for name, value in vllm["rows_gib"].items())
    source = "the config's max_position_embeddings" if vllm["max_model_len_source"].startswith("config") else "yours"
    lines = [
        f"vLLM generation phase (the loop alternates generating and training; the engine sleeps while the trainer "
        f"steps), max_model_len {vllm['max_model_len']} ({source}; the KV cache must hold one sequence that long): "
        f"{parts} = {vllm['total_gib']:.2f} GiB; {vllm['message']}"
    ]
    if warning := vllm.get("warning"):
        lines.append(f"warning: {warning}")
    if both := data.get("ppo_rollouts_through_vllm"):
        lines.append(
            f"ppo rollouts through vLLM: the trainer's weights, adapters and optimizer stay resident: "
            f"{both['total_gib']:.2f} GiB, {both['verdict']}"
        )
    return lines


def _layout_lines(data: dict[str, Any]) -> list[str]:
    layouts, s = data.get("group_layouts"), data["settings"]
    if not layouts:
        return []
    lines = [
        "",
        f"grpo/rloo with the rollout engine beside the trainer on one {s['gpu_mem_gib']:g} GiB GPU (groups of "
        f"{s['num_generations']} completions x {s['seq_len']} tokens; engine max_model_len "
        f"{s['max_model_len'] or s['seq_len']}; peak = the larger of generate (trainer weights, adapters, optimizer "
        "resident + the awake engine) and update (the grpo/rloo column + what the engine keeps), GiB:",
    ]
    for name in LAYOUTS:
        layout = layouts[name]
        if "phases_gib" not in layout:
            lines.append(f"- {LAYOUTS[name]}: {layout['verdict']}")
            continue
        engine = " + ".join(f"{k.removeprefix('engine ')} {v:.2f}" for k, v in layout["engine_gib"].items())
        phases = layout["phases_gib"]
        lines.append(
            f"- {layout['label']}: engine {engine}; generate {phases['generate']:.2f}, update {phases['update']:.2f}: "
            f"peak {layout['peak_gib']:.2f} GiB, {layout['verdict']}"
        )
    by_status = {key: [LAYOUTS[n].split(" (")[0] for n in LAYOUTS if layouts[n]["status"] == key] for key in STATUSES}
    lines.append("; ".join(f"{label}: {', '.join(by_status[key]) or '-'}" for key, label in STATUSES.items()))
    return lines


def render_plan(model: str, arch: Arch, source: str, stages: tuple[str, ...], s: Settings, fmt: str = "text") -> str:
    """The plan for ``stages`` as text, markdown or JSON (``fmt``)."""
    return render(plan_data(model, arch, source, stages, s), fmt)


def model_table(fmt: str = "text") -> str:
    """The offline table (``rlaif plan --list``): what resolves without the Hub."""
    from rlaif.plan_models import ARCHITECTURES

    rows = [
        (key, a.name, f"{a.total_params() / 1e9:.2f}B", str(a.layers), str(a.hidden), f"{a.heads}/{a.kv_heads}",
         str(a.head_dim), str(a.vocab), "yes" if a.tied else "no", str(a.context))
        for key, a in ARCHITECTURES.items()
    ]  # fmt: skip
    head = ("key", "model", "params", "layers", "hidden", "q/kv heads", "head_dim", "vocab", "tied", "context")
    if fmt == "json":
        return json.dumps([dict(zip(head, row, strict=True)) for row in rows], indent=2)
    if fmt == "md":
        return "\n".join(
            ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in [head, *rows])


__all__ = ["FORMATS", "VLLM_UTILIZATION", "model_table", "plan_data", "render", "render_plan"]
