"""GRPO and RLOO on TRL's GRPOTrainer / RLOOTrainer: online RL with a group of sampled completions per prompt and
no value model, so one GPU holds it (the reference, when ``beta`` > 0, is the base with the adapter disabled).

Read top to bottom like every TRL recipe (rlaif.train.recipes.run_trl): check the prompts (before any model loads)
→ the reward functions from the reward spec (rlaif.train.rl.group_rewards; an unresolvable one fails here too) → find
the checkpoint to resume → build the model with THE builder → TRL's trainer with the peft config, the reward
functions and their weights → train → evaluate on the held-out prompts (TRL samples and scores them) → save the
adapter, model card and metrics.jsonl. Generation is TRL's own (``rollout: hf``), or rlaif's vLLM engine with the
trained adapter as a LoRA request (``rollout: vllm``: TRL's trainer with its sampling method replaced, see
rlaif.train.rl.group_rollout).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rlaif.backends.base import Backend
from rlaif.formats import as_messages
from rlaif.train.config import import_object, trl_args
from rlaif.train.data import TrainingData, load_training_data
from rlaif.train.grpo_config import GroupRecipe
from rlaif.train.model import build_model
from rlaif.train.outputs import TrainResult, resume_checkpoint
from rlaif.train.rl.group_rewards import GroupRewards

TRAINERS = {"grpo": "trl.GRPOTrainer", "rloo": "trl.RLOOTrainer"}
ENGINE_TRAINERS = {  # rollout: vllm
    "grpo": "rlaif.train.rl.group_rollout.VllmGRPOTrainer",
    "rloo": "rlaif.train.rl.group_rollout.VllmRLOOTrainer",
}
# Columns of preference/SFT rows that an online recipe never reads (it samples its own completions); dropped so a
# preference data set trains too (GRPO's ``completion`` argument would otherwise clash with a ``completion`` column).
NOT_PROMPTS = ("chosen", "rejected", "completion", "label", "messages")


def run_group(
    cfg: GroupRecipe,
    resume: bool,
    callbacks: list[Any],
    finish: Callable[..., TrainResult],
    backend: Backend | None = None,
) -> TrainResult:
    """Train ``cfg`` (recipe grpo or rloo) with TRL's trainer and rlaif's reward spec. ``callbacks`` and ``finish``
    are the TRL recipes' own (rlaif.train.recipes: metrics.jsonl; train, evaluate, save), handed in. ``backend``: a
    vLLM backend (``enable_lora``) for ``rollout: vllm`` instead of one built here; not closed or put to sleep."""
    data = load_training_data(cfg.data, cfg.recipe)  # bad rows fail here, before any model loads
    rewards = GroupRewards(cfg)  # model rewards' files, heads and bases checked here too, before any model loads
    checkpoint = resume_checkpoint(cfg, resume)
    args = trl_args(cfg)  # TRL checks option values (and the group shape again) here, still before the model loads
    args.reward_weights = rewards.weights
    built = build_model(
        cfg.model, cfg.lora, cpu=cfg.cpu, require_chat_template=data.conversational, **rewards.model_kwargs()
    )
    funcs = rewards.bind(built)  # an RM adapter or the judge reads this model's base: no second copy
    data = chat_prompts(data, built.tokenizer)
    trainer_path, engine = TRAINERS[cfg.recipe], {}
    if cfg.train.rollout == "vllm":
        from rlaif.train.rl.group_rollout import build_rollouts

        rank = (built.peft_config or built.model.peft_config["default"]).r  # a continued adapter keeps its rank
        trainer_path, engine = ENGINE_TRAINERS[cfg.recipe], {"rollouts": build_rollouts(cfg, args, rank, backend)}
    try:
        trainer = import_object(trainer_path)(
            model=built.model,
            reward_funcs=funcs,
            args=args,
            train_dataset=data.train,
            eval_dataset=data.eval,
            processing_class=built.tokenizer,
            peft_config=built.peft_config,
            callbacks=callbacks,
            **engine,
        )
        rewards.policy_only_saves(trainer)
        return finish(trainer, cfg, built, data, checkpoint)
    finally:
        if engine:
            engine["rollouts"].close()


def chat_prompts(data: TrainingData, tokenizer: Any) -> TrainingData:
    """Plain-text prompts become one user message when the tokenizer has a chat template (TRL applies the template
    to conversational prompts only; an instruct model prompted with raw text continues it instead of answering), as
    PPO's rollouts do; columns only offline recipes read are dropped."""

    def convert(dataset: Any) -> Any:
        if dataset is None:
            return None
        dataset = dataset.remove_columns([c for c in NOT_PROMPTS if c in dataset.column_names])
        if isinstance(dataset[0]["prompt"], str) and tokenizer.chat_template:
            dataset = dataset.map(lambda row: {"prompt": as_messages(row["prompt"])})
        return dataset

    data.train, data.eval = convert(data.train), convert(data.eval)
    return data
