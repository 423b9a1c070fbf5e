"""The reward-function registry and the rule rewards it ships: pure Python, no torch, so that configs can check a
``reward.function`` name (rlaif.train.config) without loading the RL stack. The reward sources that call them (and
reward models, LLM judges) are in rlaif.train.rl.reward_sources.

Rule functions follow TRL's reward-function convention::

    def my_reward(prompts: list[str], completions: list[str], **kwargs) -> list[float]

resolved by registry name first (:data:`REWARD_FUNCTIONS`), dotted path second (``my_pkg.rewards.brevity``).
``prompts`` holds the last user message of each prompt; ``kwargs`` the config's ``reward.kwargs`` and the rows'
other columns, as lists (only those the function names, unless it takes ``**kwargs``).
"""

from __future__ import annotations

import re
from typing import Any

REWARD_FUNCTIONS: dict[str, str] = {
    "contains": "rlaif.train.reward_functions:contains",
    "length_penalty": "rlaif.train.reward_functions:length_penalty",
    "regex_match": "rlaif.train.reward_functions:regex_match",
}


# -- rule rewards -------------------------------------------------------------------------------------------------
def contains(
    prompts: list[str], completions: list[str], *, word: str, case_sensitive: bool = False, **_: Any
) -> list[float]:
    """1.0 when the completion contains ``word`` (a whole word), else 0.0."""
    pattern = re.compile(rf"\b{re.escape(word)}\b", 0 if case_sensitive else re.IGNORECASE)
    return [1.0 if pattern.search(text) else 0.0 for text in completions]


def length_penalty(
    prompts: list[str], completions: list[str], *, target_chars: int = 0, scale: float = 100.0, **_: Any
) -> list[float]:
    """-|characters - target_chars| / scale: with the default target 0, shorter answers score higher."""
    return [-abs(len(text) - target_chars) / scale for text in completions]


def regex_match(prompts: list[str], completions: list[str], *, pattern: str, **_: Any) -> list[float]:
    """1.0 when ``pattern`` is found in the completion (re.search), else 0.0: format rewards."""
    compiled = re.compile(pattern)
    return [1.0 if compiled.search(text) else 0.0 for text in completions]
