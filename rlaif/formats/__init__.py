"""TRL's dataset row forms, so a saved dataset trains with no column mapping (TRL ``data_utils`` conventions).

- preference (conversational): ``prompt`` = list of messages, ``chosen`` / ``rejected`` = [one assistant message]
- SFT: ``messages`` = the whole conversation
- prompt-only (PPO/GRPO/online DPO): ``prompt`` = list of messages
Provenance columns (models, judge, principle, scores) ride along beside them.
"""

from __future__ import annotations

from typing import Any

Messages = list[dict[str, str]]
ROLES = ("system", "user", "assistant", "tool")  # the chat roles a message may carry


def as_messages(prompt: str | Messages) -> Messages:
    """A prompt column value as a conversation: a string is one user message."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


def prompt_text(prompt: str | Messages) -> str:
    """The last user message of a prompt (what judges and filters read)."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def assistant(text: str) -> Messages:
    return [{"role": "assistant", "content": text}]


def preference_row(prompt: str | Messages, chosen: str, rejected: str, **provenance: Any) -> dict[str, Any]:
    return {"prompt": as_messages(prompt), "chosen": assistant(chosen), "rejected": assistant(rejected), **provenance}


def sft_row(prompt: str | Messages, completion: str, **provenance: Any) -> dict[str, Any]:
    return {"messages": as_messages(prompt) + assistant(completion), **provenance}


def prompt_only_row(prompt: str | Messages, **provenance: Any) -> dict[str, Any]:
    return {"prompt": as_messages(prompt), **provenance}


def completion_text(value: str | Messages) -> str:
    """A chosen/rejected value as text: TRL allows a plain string or a list ending in the assistant message."""
    if isinstance(value, str):
        return value
    return value[-1]["content"] if value else ""


def reward_model_ids(tokenizer: Any, prompt: str | list[dict[str, str]], response: str) -> list[int]:
    """Token ids of prompt + response as TRL 1.16's RewardTrainer tokenizes a training pair: with a chat template, the
    conversation rendered by it (nothing appended); without one, the plain text prompt + response with the EOS token
    appended (TRL adds it to plain-text rows, unless the text already ends with it) and the tokenizer's own special
    tokens. A reward model reads the last token: the training EOS must be there at scoring time too."""
    if tokenizer.chat_template:
        return list(
            tokenizer.apply_chat_template(as_messages(prompt) + assistant(response), tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )
    eos = tokenizer.eos_token or ""
    text = response if response.endswith(eos) else response + eos
    return list(tokenizer(text=prompt_text(prompt) + text)["input_ids"])
