"""rlaif: YAML pipelines for AI-feedback preference data, and QLoRA training that consumes it."""

__version__ = "0.1.0"
