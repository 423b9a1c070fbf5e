"""The bottom floor: located YAML (file:line for every value), ``key=value`` overrides and the one error type, used
by pipeline, training and loop files alike. Imports nothing else from rlaif."""

from rlaif.config.errors import ConfigError, Problem
from rlaif.config.kind import Kind, check_kind, config_kind
from rlaif.config.yamlio import (
    Located,
    apply_overrides,
    bool_slips,
    closest,
    load_yaml,
    parse_value,
    validation_problems,
)

__all__ = [
    "ConfigError",
    "Kind",
    "Located",
    "Problem",
    "apply_overrides",
    "bool_slips",
    "check_kind",
    "closest",
    "config_kind",
    "load_yaml",
    "parse_value",
    "validation_problems",
]
