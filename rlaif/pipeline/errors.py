"""Moved to ``rlaif.config`` (the bottom floor); kept so older imports keep working."""

from rlaif.config.errors import ConfigError, Problem

__all__ = ["ConfigError", "Problem"]
