"""The architectures ``rlaif plan`` reasons about: config.json fields, an offline table of common models, --params.

Only what memory depends on is kept: layer count and widths, attention heads, vocabulary, tied embeddings, q/k/v
biases, the context (``max_position_embeddings``) and sliding-window attention layers. No torch, no network except
the one config.json download in :func:`hub_config`.
"""

from __future__ import annotations

import json
import math
import re
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


class PlanError(ValueError):
    """A model whose architecture cannot be found or modelled; the message says what to pass instead."""


@dataclass(frozen=True)
class Arch:
    """A dense decoder-only transformer with a gated MLP (Llama, Qwen, Mistral, Gemma), as config.json describes it.

    ``context`` is max_position_embeddings (vLLM's default max_model_len); ``sliding_layers`` of the layers attend
    to the last ``sliding_window`` tokens only (Gemma 2 and 3, Mistral-7B-v0.1), so their KV cache stops growing
    there. ``qkv_bias``: q, k, v projections with biases (Qwen2/2.5)."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    context: int = 8192
    qkv_bias: bool = False
    sliding_window: int = 0
    sliding_layers: int = 0

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_params(self) -> int:
        """The weights bitsandbytes quantizes: q, k, v, o and gate, up, down of every layer."""
        h, q = self.hidden, self.heads * self.head_dim
        return self.layers * (2 * h * q + 2 * h * self.kv_dim + 3 * h * self.intermediate)

    def embedding_params(self, lm_head: bool = True) -> int:
        """The input embeddings, plus the LM head when untied (a classifier has none)."""
        return self.vocab * self.hidden * (2 if lm_head and not self.tied else 1)

    def other_params(self, lm_head: bool = True) -> int:
        """Everything bitsandbytes leaves unquantized: embeddings (+ untied head), two RMSNorms per layer and the
        final one (Gemma's extra norms: < 0.01% of its params, not counted), q/k/v biases."""
        bias = self.layers * (self.heads * self.head_dim + 2 * self.kv_dim) if self.qkv_bias else 0
        return self.embedding_params(lm_head) + (2 * self.layers + 1) * self.hidden + bias

    def total_params(self) -> int:
        return self.linear_params() + self.other_params()

    def lora_params(self, r: int) -> int:
        """LoRA on all linear layers: r x (fan_in + fan_out) per matrix."""
        h, q, i = self.hidden, self.heads * self.head_dim, self.intermediate
        return self.layers * r * ((h + q) * 2 + (h + self.kv_dim) * 2 + (h + i) * 3)


def _family(specs: dict[str, tuple[Any, ...]], **common: Any) -> dict[str, Arch]:
    return {key: Arch(*spec, **common) for key, spec in specs.items()}


# Offline table, values from each model's config.json (the Hub is not reachable everywhere, gated repos need a token).
# key: the repo name lowercased, without its -Instruct/-it/-chat/-Base/-pt suffix (tunes share the base's shape).
# Columns: name, layers, hidden, intermediate, heads, kv heads, head_dim, vocab, tied, context.
ARCHITECTURES: dict[str, Arch] = {
    **_family(
        {
            "smollm2-135m": ("SmolLM2-135M", 30, 576, 1536, 9, 3, 64, 49152, True, 8192),
            "smollm2-360m": ("SmolLM2-360M", 32, 960, 2560, 15, 5, 64, 49152, True, 8192),
            "smollm2-1.7b": ("SmolLM2-1.7B", 24, 2048, 8192, 32, 32, 64, 49152, True, 8192),
            "llama-3.2-1b": ("Llama-3.2-1B", 16, 2048, 8192, 32, 8, 64, 128256, True, 131072),
            "llama-3.2-3b": ("Llama-3.2-3B", 28, 3072, 8192, 24, 8, 128, 128256, True, 131072),
            "llama-3.1-8b": ("Llama-3.1-8B", 32, 4096, 14336, 32, 8, 128, 128256, False, 131072),
            "llama-3-8b": ("Llama-3-8B", 32, 4096, 14336, 32, 8, 128, 128256, False, 8192),
            "llama-3.1-70b": ("Llama-3.1-70B", 80, 8192, 28672, 64, 8, 128, 128256, False, 131072),
            "llama-3.3-70b": ("Llama-3.3-70B", 80, 8192, 28672, 64, 8, 128, 128256, False, 131072),
            # Qwen3: q/k RMSNorms (head_dim wide, negligible), no biases; one checkpoint for base and chat (hybrid)
            "qwen3-0.6b": ("Qwen3-0.6B", 28, 1024, 3072, 16, 8, 128, 151936, True, 40960),
            "qwen3-1.7b": ("Qwen3-1.7B", 28, 2048, 6144, 16, 8, 128, 151936, True, 40960),
            "qwen3-4b": ("Qwen3-4B", 36, 2560, 9728, 32, 8, 128, 151936, True, 40960),
            "qwen3-8b": ("Qwen3-8B", 36, 4096, 12288, 32, 8, 128, 151936, False, 40960),
            "qwen3-14b": ("Qwen3-14B", 40, 5120, 17408, 40, 8, 128, 151936, False, 40960),
            "qwen3-32b": ("Qwen3-32B", 64, 5120, 25600, 64, 8, 128, 151936, False, 40960),
            "mistral-7b-v0.2": ("Mistral-7B-v0.2", 32, 4096, 14336, 32, 8, 128, 32000, False, 32768),
            "mistral-7b-v0.3": ("Mistral-7B-v0.3", 32, 4096, 14336, 32, 8, 128, 32768, False, 32768),
            "mistral-nemo-2407": ("Mistral-Nemo-12B-2407", 40, 5120, 14336, 32, 8, 128, 131072, False, 131072),
            "mistral-small-24b-2501": ("Mistral-Small-24B-2501", 40, 5120, 32768, 32, 8, 128, 131072, False, 32768),
        }
    ),
    # Mistral-7B-v0.1: every layer attends to the last 4096 tokens
    "mistral-7b-v0.1": Arch("Mistral-7B-v0.1", 32, 4096, 14336, 32, 8, 128, 32000, False, 32768, False, 4096, 32),
    # Qwen2.5: q/k/v biases. Context: the -Instruct configs' 32768 (YaRN extends it; the base configs say 131072).
    **_family(
        {
            "qwen2.5-0.5b": ("Qwen2.5-0.5B", 24, 896, 4864, 14, 2, 64, 151936, True, 32768),
            "qwen2.5-1.5b": ("Qwen2.5-1.5B", 28, 1536, 8960, 12, 2, 128, 151936, True, 32768),
            "qwen2.5-3b": ("Qwen2.5-3B", 36, 2048, 11008, 16, 2, 128, 151936, True, 32768),
            "qwen2.5-7b": ("Qwen2.5-7B", 28, 3584, 18944, 28, 4, 128, 152064, False, 32768),
            "qwen2.5-14b": ("Qwen2.5-14B", 48, 5120, 13824, 40, 8, 128, 152064, False, 32768),
            "qwen2.5-32b": ("Qwen2.5-32B", 64, 5120, 27648, 40, 8, 128, 152064, False, 32768),
        },
        qkv_bias=True,
    ),
    # Gemma 2: head_dim 256 (128 at 27B) independent of hidden/heads, a 256k vocabulary (tied: 0.59B params at 2B),
    # every other layer a 4096-token sliding window.
    **_family(
        {
            "gemma-2-2b": ("Gemma-2-2B", 26, 2304, 9216, 8, 4, 256, 256000, True, 8192, False, 4096, 13),
            "gemma-2-9b": ("Gemma-2-9B", 42, 3584, 14336, 16, 8, 256, 256000, True, 8192, False, 4096, 21),
            "gemma-2-27b": ("Gemma-2-27B", 46, 4608, 36864, 32, 16, 128, 256000, True, 8192, False, 4096, 23),
        }
    ),
    # Gemma 3 (4B and up: the text_config of the multimodal checkpoint; the vision tower is not counted): five of
    # every six layers a sliding window (512 tokens at 1B, 1024 above), a 262k vocabulary.
    **_family(
        {
            "gemma-3-1b": ("Gemma-3-1B", 26, 1152, 6912, 4, 1, 256, 262144, True, 32768, False, 512, 22),
            "gemma-3-4b": ("Gemma-3-4B", 34, 2560, 10240, 8, 4, 256, 262208, True, 131072, False, 1024, 29),
            "gemma-3-12b": ("Gemma-3-12B", 48, 3840, 15360, 16, 8, 256, 262208, True, 131072, False, 1024, 40),
            "gemma-3-27b": ("Gemma-3-27B", 62, 5376, 21504, 32, 16, 128, 262208, True, 131072, False, 1024, 52),
        }
    ),
}
# --params: these size labels name a Llama model outright; any other size scales the nearest table model.
SIZE_CLASSES = {"1B": "llama-3.2-1b", "3B": "llama-3.2-3b", "8B": "llama-3.1-8b", "70B": "llama-3.1-70b"}
_SUFFIXES = ("-instruct", "-chat", "-it", "-base", "-pt", "-hf")
_NOT_REFERENCES = {"llama-3-8b", "llama-3.3-70b", "mistral-7b-v0.1", "mistral-7b-v0.2"}  # same shapes as others


def table_key(ref: str) -> str:
    """``meta-llama/Meta-Llama-3.1-8B-Instruct`` -> ``llama-3.1-8b``; ``mistralai/Mistral-7B-Instruct-v0.3`` ->
    ``mistral-7b-v0.3``: chat/instruct tunes share the base's shape."""
    name = ref.rstrip("/").rsplit("/", 1)[-1].lower().removeprefix("meta-")
    for suffix in _SUFFIXES:
        name = name.replace(suffix + "-", "-")
        name = name.removesuffix(suffix)
    return name


# -- --params -----------------------------------------------------------------------------------------------------
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmbt])?\s*$", re.IGNORECASE)
_SCALE = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def parse_params(text: str) -> float:
    """``7B`` -> 7e9, ``1.5b`` -> 1.5e9, ``500M`` -> 5e8, ``7000000000`` -> 7e9."""
    match = _SIZE.match(text)
    if not match:
        raise PlanError(f"--params {text!r}: expected a parameter count such as 7B, 1.5B, 500M or 70B")
    count = float(match[1]) * _SCALE[(match[2] or "").lower()] if match[2] else float(match[1])
    if not 1e7 <= count <= 2e12:
        raise PlanError(f"--params {text!r}: {count:.3g} parameters is outside 10M..2T (expected e.g. 7B, 1.5B, 500M)")
    return count


def arch_for_params(text: str) -> tuple[Arch, str]:
    """A size class (1B/3B/8B/70B: that Llama model), else the table model nearest in size with its layer count
    scaled so the total matches. Gemma is left out of the search: its 256k vocabulary is not typical."""
    if (key := SIZE_CLASSES.get(text.strip().upper())) is not None:
        arch = ARCHITECTURES[key]
        return arch, f"--params {text.strip().upper()}: {arch.name}'s architecture (built-in table)"
    count = parse_params(text)
    candidates = [a for key, a in ARCHITECTURES.items() if key not in _NOT_REFERENCES and not key.startswith("gemma")]
    ref = min(candidates, key=lambda a: abs(math.log(a.total_params() / count)))
    per_layer = (ref.linear_params() + ref.other_params() - ref.embedding_params() - ref.hidden) / ref.layers
    layers = max(1, round((count - ref.embedding_params() - ref.hidden) / per_layer))
    arch = replace(ref, name=f"{ref.name}-shaped, {layers} layers", layers=layers)
    depth = f"{layers} layers instead of {ref.layers}" if layers != ref.layers else f"its {layers} layers"
    note = (
        f"--params {text.strip()} ASSUMED: {ref.name}'s architecture (the built-in table's model nearest in size, "
        f"{_size(ref.total_params())}) with {depth}: {_size(arch.total_params())}. Name the model (Hub id or local "
        "directory) to plan with its real config.json"
    )
    return arch, note


def _size(count: float) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.0f}M"


# -- config.json --------------------------------------------------------------------------------------------------
# transformers' defaults for fields these configs may leave out (a Gemma 3 checkpoint's sparse text_config)
CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma2": {"head_dim": 256, "vocab_size": 256000, "max_position_embeddings": 8192, "sliding_window": 4096},
    "gemma3_text": {
        "head_dim": 256,
        "vocab_size": 262208,
        "max_position_embeddings": 131072,
        "sliding_window": 4096,
        "sliding_window_pattern": 6,
    },
}


def arch_from_config(config: dict[str, Any], name: str) -> Arch:
    """The architecture in a transformers config.json (a multimodal one's ``text_config``)."""
    model_type = str(config.get("model_type", ""))
    config = config.get("text_config") or config
    model_type = str(config.get("model_type", model_type + "_text" if model_type == "gemma3" else model_type))
    config = {**CONFIG_DEFAULTS.get(model_type, {}), **config}
    if any(config.get(key) for key in ("num_local_experts", "num_experts", "n_routed_experts")):
        raise PlanError(f"{name}: mixture-of-experts models are not modelled (dense decoders only)")
    required = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")
    if missing := [key for key in required if not config.get(key)]:
        raise PlanError(f"{name}: config.json lacks {', '.join(missing)} (not a decoder-only transformer?)")
    heads, layers = config["num_attention_heads"], config["num_hidden_layers"]
    window, sliding = _sliding(config, model_type, layers)
    return Arch(
        name,
        layers,
        config["hidden_size"],
        config["intermediate_size"],
        heads,
        config.get("num_key_value_heads") or heads,
        config.get("head_dim") or config["hidden_size"] // heads,
        config["vocab_size"],
        bool(config.get("tie_word_embeddings", model_type.startswith("gemma"))),  # Gemma's configs omit it: tied
        int(config.get("max_position_embeddings") or 2048),
        bool(config.get("attention_bias", model_type == "qwen2")),  # Qwen2 has q/k/v biases without saying so
        window,
        sliding,
    )


def _sliding(config: dict[str, Any], model_type: str, layers: int) -> tuple[int, int]:
    """(window, number of sliding-window layers) as transformers reads them."""
    window = int(config.get("sliding_window") or 0)
    if not window or config.get("use_sliding_window") is False:
        return 0, 0
    if isinstance(types := config.get("layer_types"), list):
        return window, sum(kind == "sliding_attention" for kind in types)
    if model_type == "gemma2":  # even layers slide
        return window, (layers + 1) // 2
    if model_type.startswith("gemma3"):
        pattern = int(config.get("sliding_window_pattern") or config.get("_sliding_window_pattern") or 6)
        return window, layers - layers // pattern
    return window, layers  # Mistral-style: every layer


def resolve_arch(model: str, params: str | None = None) -> tuple[Arch, str]:
    """The architecture to plan for and where it came from. ``params`` (7B, 1.5B, 500M...) skips config.json."""
    from rlaif.models import BUILTIN_PREFIX, builtin_path, is_prepared, reference_problem

    if params:
        return arch_for_params(params)
    path = Path(model).expanduser()
    if model.startswith(BUILTIN_PREFIX) or path.is_dir():
        if problem := reference_problem(model):
            raise PlanError(problem)
        name = model.removeprefix(BUILTIN_PREFIX)
        if path.is_dir() or is_prepared(name):  # a builtin's converted checkpoint; converting would import torch
            return _read_config((path if path.is_dir() else builtin_path(name)) / "config.json", model)
        if table_key(name) not in ARCHITECTURES:
            raise PlanError(f"{model} is not converted yet: run `rlaif models pull {model}` first")
        return ARCHITECTURES[table_key(name)], "built-in table (GGUF not converted yet)"
    if (key := table_key(model)) in ARCHITECTURES:
        return ARCHITECTURES[key], "built-in table"
    if problem := reference_problem(model):
        raise PlanError(problem)
    config, reason = hub_config(model)
    if config is None:
        raise PlanError(
            f"cannot read config.json of {model!r}: {reason}. Pass --params SIZE (e.g. 7B, 1.5B, 500M) to plan "
            f"with an assumed architecture, or name a model of the built-in table (rlaif plan --list)."
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
