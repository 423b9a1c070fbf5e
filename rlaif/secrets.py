"""Keep secrets out of anything rlaif writes (dataset and model cards, error messages)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

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
