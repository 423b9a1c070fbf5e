"""Configuration errors that name the file, the line and what was expected; all problems are reported together."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where (file, 1-based line when known) and what was expected."""

    file: str | None
    line: int | None
    message: str

    def __str__(self) -> str:
        if not self.file:
            return self.message
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


class ConfigError(ValueError):
    """One or more problems found before anything ran (a pipeline, training or loop file, or an override)."""

    def __init__(self, problems: list[Problem] | str) -> None:
        # A bare message is one problem that names no file (e.g. "no CUDA GPU here: run with --cpu").
        self.problems = [Problem(None, None, problems)] if isinstance(problems, str) else problems
        count = f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}"
        super().__init__(f"{count}:\n" + "\n".join(f"  {p}" for p in self.problems))

    @classmethod
    def one(cls, file: str | None, message: str, line: int | None = None) -> ConfigError:
        """A single problem: ``raise ConfigError.one(path, "what was expected")``."""
        return cls([Problem(file, line, message)])
