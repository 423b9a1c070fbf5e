"""Moved to ``rlaif.config`` (the bottom floor); kept so older imports keep working."""

from rlaif.config.yamlio import Located, PathKey, apply_overrides, load_yaml, parse_value

__all__ = ["Located", "PathKey", "apply_overrides", "load_yaml", "parse_value"]
