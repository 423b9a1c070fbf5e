"""The PPO actors on ONE quantized base (DESIGN.md §1): adapters ``policy`` and ``value`` (+ a value head), an
optional ``reward`` adapter, and the reference = the same base with every adapter disabled — or, when the policy
starts from an existing adapter (``model.adapter``, e.g. the SFT stage), a frozen copy of that adapter: the
reference is the policy PPO started from (InstructGPT's SFT model), at the cost of one LoRA's weights.

Only the active adapter takes part in a forward pass, so each role is one adapter switch away and the base weights
exist once. peft's ``set_adapter`` also flips ``requires_grad`` (active on, others off); :meth:`SharedBase.use`
restores the trainable set after every switch so both trained adapters keep their gradients. With gradient
checkpointing the backward pass re-runs the forward with the adapter active *at backward time*, so a loss must be
backpropagated before the next switch — the recipe does policy forward+backward, then value forward+backward.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rlaif.train.outputs import portable_base
from rlaif.train.rl import core

if TYPE_CHECKING:
    from rlaif.train.rl.rollout import Rollout

VALUE_HEAD_FILE = "value_head.safetensors"
REFERENCE = None  # use(REFERENCE): every adapter off


class SharedBase:
    """One peft model with named adapters, plus the fp32 value head; forward helpers for every role."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        trainable: tuple[str, ...],
        value_head: nn.Linear,
        temperature: float,
        reference: str | None = None,
    ) -> None:
        self.model = model
        self.reference = reference  # a frozen adapter that is the reference, or None: adapters disabled
        self.tokenizer = tokenizer
        self.value_head = value_head
        self.temperature = temperature
        self.device = next(model.parameters()).device
        self._trainable = [p for n, p in model.named_parameters() if any(f".{a}." in n for a in trainable)]
        self._active: str | None = None
        self.activate(trainable[0])
        _no_dropout(model)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self._trainable, *self.value_head.parameters()]

    @contextlib.contextmanager
    def use(self, adapter: str | None) -> Iterator[None]:
        """Run the block with ``adapter`` active; REFERENCE (None): the reference policy."""
        if adapter is None and self.reference is None:
            with self.bare():
                yield
            return
        self.activate(adapter or self.reference)
        yield

    def bare(self) -> contextlib.AbstractContextManager[None]:
        """The base model alone, every adapter disabled (what a shared-base judge reads with)."""
        return self.model.disable_adapter()

    def activate(self, adapter: str) -> None:
        # Tracked here: peft keeps an active-adapter name on both the PeftModel and its tuner, and reading the
        # wrong one after a switch silently runs the previous adapter.
        if self._active != adapter:
            self.model.set_adapter(adapter, inference_mode=True)
            self._active = adapter
        for param in self._trainable:
            param.requires_grad_(True)

    # -- forward passes -------------------------------------------------------------------------------------------
    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return trunk_hidden(self.model, input_ids, attention_mask)

    def response_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
        """Logits (divided by the sampling temperature) that predicted each response token."""
        hidden = self.hidden(input_ids, attention_mask)[:, prompt_len - 1 : -1]
        logits = lm_head(self.model)(hidden)
        return logits.float() / max(self.temperature, 1e-7)

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
        """V(prompt + response[:t]) for every response position t, from the value adapter's trunk."""
        hidden = self.hidden(input_ids, attention_mask)[:, prompt_len - 1 : -1]
        return self.value_head(hidden.float()).squeeze(-1)

    # -- saving ---------------------------------------------------------------------------------------------------
    def save_adapter(self, adapter: str, dest: Path, base_reference: str) -> None:
        """Save one named adapter as a plain adapter folder (peft nests non-default names in a subfolder)."""
        save_peft_adapter(self.model, adapter, dest, base_reference)
        if adapter == "value":
            save_value_head(self.value_head, Path(dest))


def save_peft_adapter(model: Any, adapter: str, dest: Path, base_reference: str) -> None:
    """Save ``model``'s adapter ``adapter`` as a plain adapter folder ``dest`` (peft nests non-default names in a
    subfolder), staged beside it and renamed into place, with its base named as configured (portable_base)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{adapter}-", dir=dest.parent))
    model.save_pretrained(str(staging), selected_adapters=[adapter])
    saved = staging / adapter if (staging / adapter).is_dir() else staging
    portable_base(saved, base_reference)
    if dest.exists():
        shutil.rmtree(dest)
    saved.rename(dest)
    shutil.rmtree(staging, ignore_errors=True)


def forward_rollout(
    shared: SharedBase, rollout: Rollout, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(policy log-probs, reference log-probs, values, policy entropy) per response token, in micro-batches."""
    policy, reference, values, entropy = [], [], [], []
    prompt_len = rollout.query.shape[1]
    with torch.no_grad():
        for start in range(0, len(rollout.texts), batch_size):
            part = rollout.select(torch.arange(start, min(start + batch_size, len(rollout.texts))))
            ids, attention = (t.to(shared.device) for t in part.sequences())
            response = part.response.to(shared.device)
            with shared.use("policy"):
                logits = shared.response_logits(ids, attention, prompt_len)
            policy.append(core.logprobs_of(logits, response).cpu())
            entropy.append(core.entropy(logits).cpu())
            with shared.use(REFERENCE):
                logits = shared.response_logits(ids, attention, prompt_len)
            reference.append(core.logprobs_of(logits, response).cpu())
            del logits
            with shared.use("value"):
                values.append(shared.values(ids, attention, prompt_len).cpu())
    return torch.cat(policy), torch.cat(reference), torch.cat(values), torch.cat(entropy)


def _no_dropout(model: Any) -> None:
    # PPO's ratio compares the rollout pass with the update pass over the same tokens, so both must be deterministic
    # (Huang et al. 2024); an adapter PPO starts from (an SFT adapter trained with dropout) brings its own.
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, nn.ModuleDict):
            for name in list(dropouts):
                dropouts[name] = nn.Identity()


def trunk_hidden(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states of a causal LM's decoder trunk (peft-wrapped or plain), without the LM head: value and
    reward heads need no vocabulary logits, and the policy needs them only at response positions."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    trunk = getattr(base, base.base_model_prefix)
    # Left-padded prompts: positions count real tokens only, as generate() numbered them when sampling.
    positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
    return trunk(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False
    ).last_hidden_state


def lm_head(model: Any) -> nn.Module:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_output_embeddings()


def new_value_head(hidden_size: int, device: torch.device, seed: int) -> nn.Linear:
    """fp32 Linear(hidden, 1). Small init (std 1/sqrt(hidden+1), as OpenAI's lm-human-preferences) keeps the first
    value estimates near 0, so the first advantages are mostly the reward itself."""
    head = nn.Linear(hidden_size, 1, device=device, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) / (hidden_size + 1) ** 0.5)
        head.bias.zero_()
    return head


def save_value_head(head: nn.Linear, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(folder / VALUE_HEAD_FILE))


def load_value_head(folder: Path, head: nn.Linear) -> nn.Linear:
    from safetensors.torch import load_file

    state = load_file(str(Path(folder) / VALUE_HEAD_FILE))
    head.load_state_dict({k: v.to(head.weight.device, torch.float32) for k, v in state.items()})
    return head


def hidden_size(model: Any) -> int:
    config = model.get_base_model().config
    return int(getattr(config, "hidden_size", None) or config.get_text_config().hidden_size)
