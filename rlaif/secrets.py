"""Keep secrets out of anything rlaif writes (dataset and model cards, error messages)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from rlaif.config import ConfigError, Located, Problem

REDACTED = "[REDACTED]"
_MIN_SECRET_LEN = 8  # shorter env values ("1", "true") would garble text without protecting anything
_SECRET_ENV_SUFFIXES = ("TOKEN", "KEY", "SECRET")
_HF_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{20,}")


def scrub_secrets(text: str, extra: Iterable[str | None] = ()) -> str:
    """Replace values of env vars named *TOKEN, *KEY or *SECRET, the ``extra`` values and ``hf_...`` tokens."""
    secrets = [value for name, value in os.environ.items() if name.upper().endswith(_SECRET_ENV_SUFFIXES)]
    secrets += [value for value in extra if value]
    # Longest first, so a secret that contains another one is removed whole.
    for secret in sorted({s for s in secrets if len(s) >= _MIN_SECRET_LEN}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return _HF_TOKEN_RE.sub(REDACTED, text)


# Shapes of real credentials (Hugging Face, OpenAI/Anthropic, GitHub, W&B): a config value like one of them is a
# secret written into a file that is committed, shared and copied into model cards. 40 hex digits alone (legacy W&B
# keys) are not matched: a git revision looks the same.
_SECRET_SHAPES = (
    ("a Hugging Face token", re.compile(r"\bhf_[A-Za-z0-9]{20,}")),
    ("an OpenAI/Anthropic-style API key", re.compile(r"\bsk-[A-Za-z0-9_-]{20,}")),
    ("a GitHub token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})")),
    ("a W&B API key", re.compile(r"\bwandb_v\d+_[A-Za-z0-9_]{20,}")),
)
# Keys that hold a credential whatever it looks like (tokenizer fields such as pad_token are not among them).
_SECRET_KEYS = frozenset({"token", "hub_token", "api_key", "apikey", "secret", "password", "access_token"})
_SECRET_KEY_SUFFIXES = ("_api_key", "_secret", "_password", "_access_token", "_write_token", "_auth_token")
_ENV_HINT = "put it in the environment instead (HF_TOKEN, WANDB_API_KEY, MLFLOW_TRACKING_TOKEN, ...), never in a file"


def secret_problems(data: object, path: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], str, str]]:
    """``(path, message, value)`` for every value of a config (nested dicts and lists) that looks like a credential,
    or that sits under a key meant for one: secrets come from the environment only."""
    found: list[tuple[tuple[str | int, ...], str, str]] = []
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        where = (*path, key)
        name = str(key).lower()
        if isinstance(value, str) and value and (name in _SECRET_KEYS or name.endswith(_SECRET_KEY_SUFFIXES)):
            found.append((where, f"{key!r} holds a credential: {_ENV_HINT}", value))
        elif isinstance(value, str) and (kind := next((k for k, p in _SECRET_SHAPES if p.search(value)), None)):
            found.append((where, f"this value looks like {kind}: {_ENV_HINT}", value))
        else:
            found += secret_problems(value, where)
    return found


def check_no_secrets(located: Located) -> None:
    """Raise ``ConfigError`` naming the file and line (or the override) of every credential in a config; the
    values themselves never reach the message."""
    problems = []
    for where, why, value in secret_problems(located.data):
        problem = located.problem(where, f"{'.'.join(map(str, where))}: {why}")
        problems.append(Problem(problem.file, problem.line, problem.message.replace(value, REDACTED)))
    if problems:
        raise ConfigError(problems)
