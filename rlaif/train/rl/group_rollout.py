"""GRPO and RLOO rollouts on rlaif's vLLM engine (``train.rollout: vllm``), with the trained adapter as a LoRA request.

The hook: TRL 1.16's GRPOTrainer and RLOOTrainer both sample in ``_generate_single_turn(prompt_ids, images, ...)``:
TRL's prompt ids in (its chat template applied: the ids the trainer scores), completion ids out (GRPO: and the
sampled tokens' log-probs). It is where TRL's own vLLM path plugs in, so the two subclasses below override that one
method and nothing else: TRL keeps its prompt tokenization, decoding, reward calls, metrics, loss and checkpoints.
GRPO's public ``rollout_func`` was the other candidate: it is experimental (it warns), it skips TRL's prompt
tokenization, TRL's tool loop samples its follow-up turns in ``_generate_single_turn`` anyway, and RLOOTrainer has
none.

Every ``vllm_sync_steps`` optimizer steps (and at evaluation, once the adapter changed) the adapter is saved to a
fresh folder and sent as a new LoRA request (rlaif.train.rl.rollout.AdapterSync): no merge into the base, no second
copy of it; the engine holds the full-precision base once and applies the adapter per request.

Importance sampling (GRPO): the engine's kernels (and, with quantize: nf4, its unquantized base) are not the
trainer's, so samples come from a slightly different policy. TRL corrects that with the sampled tokens' log-probs
(``vllm_importance_sampling_correction``, on by default) when it drives vLLM itself; here the engine returns them
and the trainer is told it is vLLM-fed. They must be the log-probs after temperature: an engine built here runs
with ``logprobs_mode: processed_logprobs``; a handed-in engine (raw log-probs) qualifies only at temperature 1 and
top_p 1, where the two are equal, and otherwise the correction is off (logged).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from trl import GRPOTrainer, RLOOTrainer

from rlaif.backends.base import Backend
from rlaif.schema import GenerationParams
from rlaif.train.rl.rollout import AdapterSync, engine_awake, vllm_engine
from rlaif.train.rl.shared_base import save_peft_adapter

log = logging.getLogger(__name__)
WORKDIR = ".rollout-adapters"  # under output_dir, as PPO's; removed when training ends
POLICY = "default"  # the adapter TRL wraps the model with (or the continued model.adapter, loaded under that name)


class EngineRollouts:
    """Samples completions for TRL's prompt ids on ``backend`` (a vLLM backend with ``enable_lora`` that has
    ``generate_ids``) with the trained adapter as a LoRA request, synced every ``sync_steps`` optimizer steps."""

    def __init__(
        self,
        backend: Backend,
        workdir: Path,
        base_reference: str,
        params: GenerationParams,
        sync_steps: int,
        sleeps: bool,
        owned: bool,
    ) -> None:
        self.backend, self.base_reference, self.params = backend, base_reference, params
        self.sync_steps, self.sleeps, self.owned = sync_steps, sleeps, owned
        self.sync = AdapterSync(workdir)
        self.synced_step: int | None = None
        self.completions = 0  # completions served, and their tokens (observable for tests and benchmarks)
        self.generated_tokens = 0
        self.generate_seconds: list[float] = []

    @property
    def logprobs(self) -> bool:
        return self.params.logprobs is not None

    def sample(self, trainer: Any, prompt_ids: list[list[int]], images: Any) -> tuple[list[list[int]], Any]:
        """Completion ids (each ending with its stop token when one ended it) and, when asked, their log-probs."""
        if images is not None:
            raise ValueError("train.rollout: vllm serves text prompts; prompts with images need rollout: hf")
        self._sync(trainer)
        params = replace(self.params, lora=self.sync.current)
        started = time.perf_counter()
        with engine_awake(self.backend, self.sleeps):  # asleep (GPU) while TRL computes the loss and steps
            results = self.backend.generate_ids(prompt_ids, params)  # type: ignore[attr-defined]
        self.generate_seconds.append(time.perf_counter() - started)
        ids, logprobs = [], []
        for prompt, result in zip(prompt_ids, results, strict=True):
            if not result.ok or not result.completions:
                raise RuntimeError(
                    f"vLLM rollout failed for a prompt of {len(prompt)} tokens: {result.error or 'no completion'} "
                    "(train.vllm_max_model_length bounds prompt + completion)"
                )
            completion = result.completions[0]
            ids.append(list(completion.token_ids or []))
            if self.logprobs:
                logprobs.append([token.logprob for token in completion.logprobs or []])
        self.completions += len(ids)
        self.generated_tokens += sum(map(len, ids))
        return ids, (logprobs if self.logprobs else None)

    def _sync(self, trainer: Any) -> None:
        """Publish the adapter when none was sent yet, when ``sync_steps`` optimizer steps passed since the last
        one, or for evaluation once it changed (TRL samples the held-out prompts with the current policy)."""
        step = trainer.state.global_step
        if self.synced_step is not None:
            age = step - self.synced_step
            if age == 0 or (trainer.model.training and age < self.sync_steps):
                return
        model = trainer.accelerator.unwrap_model(trainer.model)
        # The adapter TRL trains, by name: an RM adapter on the same base (a reward source) is never sent.
        self.sync.publish(lambda folder: save_peft_adapter(model, POLICY, folder, self.base_reference))
        self.synced_step = step

    def close(self) -> None:
        if self.owned:
            self.backend.close()
        self.sync.close()


class VllmGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer sampling on rlaif's engine (``rollouts``): the one override is ``_generate_single_turn``."""

    def __init__(self, *args: Any, rollouts: EngineRollouts, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # use_vllm is off in args: TRL builds no engine of its own
        self.rollouts = rollouts
        # TRL applies its importance-sampling correction only to samples of an engine it drives (use_vllm). Raised
        # here, after __init__: its other use_vllm branches are the generation this class replaces and TRL's tool
        # loop (no tools here).
        self.use_vllm = rollouts.logprobs and self.vllm_importance_sampling_correction

    def _generate_single_turn(
        self, prompt_ids: Any, images: Any, multimodal_fields: Any, num_generations: int, has_tool_images: bool = False
    ) -> tuple[list[list[int]], Any]:
        # prompt_ids already repeat each prompt num_generations times (TRL's sampler): one completion per row.
        return self.rollouts.sample(self, prompt_ids, images)


class VllmRLOOTrainer(RLOOTrainer):
    """TRL's RLOOTrainer sampling on rlaif's engine; RLOO reads no sampling log-probs."""

    def __init__(self, *args: Any, rollouts: EngineRollouts, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rollouts = rollouts

    def _generate_single_turn(self, prompt_ids: Any, images: Any, multimodal_fields: Any) -> list[list[int]]:
        return self.rollouts.sample(self, prompt_ids, images)[0]


def build_rollouts(cfg: Any, args: Any, lora_rank: int, backend: Backend | None) -> EngineRollouts:
    """The rollouts of a grpo/rloo config with ``rollout: vllm``: on ``backend`` when handed one (not closed, not put
    to sleep: its owner's), else on an engine built here, asleep between rollouts on a GPU with sleep mode."""
    train = cfg.train
    owned = backend is None
    sleeps = owned and train.vllm_enable_sleep_mode and not cfg.cpu and torch.cuda.is_available()
    plain = train.temperature == 1.0 and args.top_p == 1.0  # raw log-probs equal processed ones
    importance = cfg.recipe == "grpo" and args.vllm_importance_sampling_correction and (owned or plain)
    if cfg.recipe == "grpo" and args.vllm_importance_sampling_correction and not importance:
        log.info("importance-sampling correction off: the handed-in engine returns log-probs before temperature")
    if owned:
        backend = vllm_engine(
            cfg.model.name,
            lora_rank,
            train.vllm_gpu_memory_utilization,
            train.vllm_max_model_length,
            train.seed,
            sleeps,
            cfg.model.trust_remote_code,
            engine_kwargs={"logprobs_mode": "processed_logprobs"} if importance else None,
        )
        if sleeps:
            backend.sleep(level=1)  # type: ignore[attr-defined]
    params = GenerationParams(
        n=1,
        temperature=train.temperature,
        top_p=args.top_p,
        max_tokens=train.max_completion_length,
        logprobs=0 if importance else None,  # 0: the sampled token's log-prob only
    )
    assert backend is not None
    workdir = Path(train.output_dir) / WORKDIR
    return EngineRollouts(backend, workdir, cfg.model.name, params, train.vllm_sync_steps, sleeps, owned)
