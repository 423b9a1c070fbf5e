"""THE model builder (DESIGN.md principle 11): every recipe — SFT, RM, DPO, KTO, and PPO — gets its model here.

One quantized base, LoRA on top. For TRL's trainers the builder returns the prepared base plus a peft ``LoraConfig``
and lets the trainer wrap it: DPO/KTO then compute the reference with the adapter disabled (no second model). For
recipes that own their loop (PPO), ``adapters={"policy": None, "value": None, "reward": "runs/rm/adapter"}`` wraps
the one base with several named adapters — fresh (None) or loaded from a directory; the reference is
``with model.disable_adapter():``.

Heavy imports (torch, transformers, peft) stay inside functions so the CLI starts fast.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rlaif.models import resolve_model
from rlaif.train.config import LoraConfig, ModelConfig, Quantize

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)
Task = Literal["causal_lm", "seq_cls"]


class ChatTemplateError(ValueError):
    """Conversational data, but the tokenizer has no chat template to render it."""


@dataclass
class BuiltModel:
    """What the builder returns. ``peft_config`` is set when the caller (a TRL trainer) is to wrap ``model``."""

    model: Any  # PreTrainedModel, or peft.PeftModel when adapters were requested
    tokenizer: PreTrainedTokenizerBase
    peft_config: PeftLoraConfig | None
    base: str  # the reference as configured (builtin:..., a Hub id, a path)
    resolved: str  # what from_pretrained loaded
    quantize: Quantize
    dtype: torch.dtype
    task: Task


def build_model(
    model_cfg: ModelConfig,
    lora_cfg: LoraConfig | None = None,
    *,
    quantize: Quantize | None = None,
    task: Task = "causal_lm",
    adapters: Mapping[str, str | Path | None] | None = None,
    trainable: Collection[str] = (),
    cpu: bool = False,
    require_chat_template: bool = False,
) -> BuiltModel:
    """Load the base (``quantize`` overrides ``model_cfg.quantize``) for a causal LM or a one-logit classifier.

    ``adapters`` wraps the model in PEFT with the named adapters (None: fresh from ``lora_cfg``; a path: loaded,
    frozen unless named in ``trainable``); the first is active. Without it, ``peft_config`` is returned for a TRL
    trainer to apply. The tokenizer is checked before any weight loads: pad token (eos when missing) and, with
    ``require_chat_template``, a chat template.
    """
    quantize = quantize or model_cfg.quantize
    if quantize != "none" and lora_cfg is None and not adapters:
        raise ValueError("a quantized base trains only through LoRA adapters: give a LoRA config")
    resolved = resolve_model(model_cfg.name)
    tokenizer = load_tokenizer(resolved, model_cfg, require_chat_template)
    dtype = compute_dtype(model_cfg.compute_dtype, cpu)
    model = _load_base(resolved, model_cfg, quantize, task, dtype, cpu)
    # A classifier pools the last non-pad token, found by the pad id; a causal LM pads batches with it.
    model.config.pad_token_id = tokenizer.pad_token_id
    if quantize != "none":
        # Casts norms/embeddings to fp32 and freezes the base: 4-bit weights take no gradient.
        model = _prepare_kbit(model, model_cfg.gradient_checkpointing)
    elif model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    peft_config = peft_lora_config(lora_cfg, task) if lora_cfg else None
    if adapters is None and model_cfg.adapter:
        # Continue an existing adapter: trainable, named "default" as TRL expects (it adds its "ref" copy beside).
        adapters, trainable = {"default": model_cfg.adapter}, {"default"}
    if adapters:
        model = attach_adapters(model, peft_config, adapters, trainable)
        peft_config = None
    return BuiltModel(model, tokenizer, peft_config, model_cfg.name, resolved, quantize, dtype, task)


def compute_dtype(name: str, cpu: bool) -> torch.dtype:
    import torch

    if name != "auto":
        return getattr(torch, name)
    on_gpu = not cpu and torch.cuda.is_available()
    # CPU matmuls in bf16 are slow on most x86 parts and lose precision; fp32 is the safe CPU choice.
    return torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32


def load_tokenizer(resolved: str, model_cfg: ModelConfig, require_chat_template: bool) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        resolved, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
    )
    if model_cfg.chat_template:
        tokenizer.chat_template = Path(model_cfg.chat_template).expanduser().read_text()
    if require_chat_template and not tokenizer.chat_template:
        raise ChatTemplateError(
            f"{model_cfg.name}: the tokenizer has no chat template, and the data is conversational (message lists). "
            "Use a chat/instruct model or set model.chat_template: path/to/template.jinja"
        )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{model_cfg.name}: the tokenizer has neither a pad nor an eos token")
        log.info("%s has no pad token: padding with eos (%s)", model_cfg.name, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(quantize: Quantize, dtype: torch.dtype, double_quant: bool) -> Any:
    """bitsandbytes settings of QLoRA (Dettmers et al. 2023): NF4 with double quantization, compute in ``dtype``."""
    from transformers import BitsAndBytesConfig

    if quantize == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
    if quantize == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def _load_base(
    resolved: str, model_cfg: ModelConfig, quantize: Quantize, task: Task, dtype: torch.dtype, cpu: bool
) -> PreTrainedModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "revision": model_cfg.revision,
        "trust_remote_code": model_cfg.trust_remote_code,
        "quantization_config": quantization_config(quantize, dtype, model_cfg.double_quant),
    }
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    if quantize != "none":
        # bitsandbytes quantizes where the weights land: pin the whole model to one device (this process's GPU).
        kwargs["device_map"] = {"": "cpu"} if cpu or not torch.cuda.is_available() else {"": _local_gpu()}
    if task == "seq_cls":
        model = AutoModelForSequenceClassification.from_pretrained(resolved, num_labels=1, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(resolved, **kwargs)
    return one_4bit_kernel(model)


def one_4bit_kernel(model: Any) -> Any:
    """Keep bitsandbytes' NF4 layers on their dequantize-then-matmul path in every mode.

    On CPUs with AVX512-BF16, bitsandbytes >= 0.49 repacks a Linear4bit's weight for a bf16 GEMV kernel at its first
    forward in eval mode without grad (a rollout, an eval loop), and keeps using that kernel afterwards, in training
    too. That kernel (a) computes in bf16 (outputs differ from the training path by ~6e-3 on a 64-wide layer),
    (b) has no autograd formula, so no gradient flows back through the base layer once it is packed (seen: the input
    grad is None), and (c) saving any adapter calls the layer's state_dict, which unpacks the weight with a lossy
    re-quantization of its absmax: the base drifts at every checkpoint, and a resumed run differs from the run it
    resumes. Measured on this project's CI machines. Training needs one exact, differentiable kernel."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def _local_gpu() -> int:
    import os

    return int(os.environ.get("LOCAL_RANK", "0"))  # one process per GPU under accelerate/torchrun


def _prepare_kbit(model: PreTrainedModel, gradient_checkpointing: bool) -> PreTrainedModel:
    from peft import prepare_model_for_kbit_training

    # Non-reentrant checkpointing works with frozen inputs; the reentrant kind needs input grads hooked in.
    return prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )


def peft_lora_config(lora_cfg: LoraConfig, task: Task) -> PeftLoraConfig:
    from peft import LoraConfig as PeftLoraConfig

    # SEQ_CLS makes peft train and save the fresh `score` head beside the adapter (modules_to_save).
    return PeftLoraConfig(
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


def attach_adapters(
    model: PreTrainedModel,
    peft_config: PeftLoraConfig | None,
    adapters: Mapping[str, str | Path | None],
    trainable: Collection[str] = (),
) -> Any:
    """Wrap ``model`` with named adapters on the one base; fresh ones need ``peft_config``. First one active."""
    from peft import PeftModel, get_peft_model

    wrapped: Any = None
    for name, source in adapters.items():
        if source is None and peft_config is None:
            raise ValueError(f"adapter {name!r} is fresh but no LoRA config was given")
        if wrapped is None:
            wrapped = (
                get_peft_model(model, peft_config, adapter_name=name)
                if source is None
                else PeftModel.from_pretrained(model, str(source), adapter_name=name, is_trainable=name in trainable)
            )
        elif source is None:
            wrapped.add_adapter(name, peft_config)
        else:
            wrapped.load_adapter(str(source), adapter_name=name, is_trainable=name in trainable)
    first = next(iter(adapters))
    wrapped.set_adapter(first, inference_mode=adapters[first] is not None and first not in trainable)
    return wrapped


def merge_adapter(
    model_cfg: ModelConfig, adapter_dir: str | Path, out_dir: str | Path, task: Task = "causal_lm", cpu: bool = False
) -> Path:
    """Save base + adapter as one plain model. The base is reloaded unquantized: merging into 4-bit weights would
    round the LoRA delta away, and a merged 4-bit checkpoint would not load in vLLM."""
    plain = model_cfg.model_copy(update={"gradient_checkpointing": False})
    built = build_model(plain, None, quantize="none", task=task, adapters={"default": adapter_dir}, cpu=cpu)
    merged = built.model.merge_and_unload()
    out = Path(out_dir)
    merged.save_pretrained(out)
    built.tokenizer.save_pretrained(out)
    return out
