"""What every ``rlaif`` command shares: ``-v``/``-q`` (before or after the subcommand), the two consoles (results on
stdout, everything else on stderr, neither hard-wrapped when not a terminal) and the exit codes.

Exit codes, everywhere: 0 ok, 1 the run failed, 2 a usage or config error (click's own usage errors are 2 too).
Light (typer, rich): imported when ``rlaif --help`` builds the command tree.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from rlaif import logs

OK, FAILED, USAGE = 0, 1, 2
_META = "rlaif.verbosity"
_LEVEL: ContextVar[int] = ContextVar("rlaif_verbosity", default=logs.DEFAULT)
VERBOSE_HELP = "Show library logs on stderr (-vv: also the known-harmless CPU warnings, and debug records)."
QUIET_HELP = "Only results and errors: no progress bars, no warnings."


def out_console() -> Console:
    """Results (tables, generated text, paths): stdout, soft-wrapped when redirected (no breaks at 80 columns)."""
    console = Console()
    console.soft_wrap = not console.is_terminal
    return console


def err_console() -> Console:
    """Progress, notes, warnings and errors: stderr."""
    console = Console(stderr=True)
    console.soft_wrap = not console.is_terminal
    return console


def fail(message: str, code: int = USAGE, label: str = "error") -> NoReturn:
    """Print ``label: message`` on stderr (markup off: paths and YAML keys may hold [brackets]) and exit."""
    console = err_console()
    console.print(f"[red]{label}:[/red] ", end="")
    console.print(message, highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(code)


def set_verbosity(verbose: int, quiet: bool, ctx: typer.Context | None = None) -> int:
    """Combine this command's ``-v``/``-q`` with the ones given before the subcommand (kept in the context's
    ``meta``, shared by the group and its subcommands); route logs accordingly."""
    meta = ctx.meta if ctx is not None else {}
    before = meta.get(_META, logs.DEFAULT)
    if (quiet and (verbose or before > logs.DEFAULT)) or (verbose and before < logs.DEFAULT):
        raise typer.BadParameter("give -v or -q, not both", param_hint="-v/-q")
    level = logs.QUIET if quiet or before < logs.DEFAULT else max(before, min(verbose, logs.DEBUG))
    meta[_META] = level
    _LEVEL.set(level)
    logs.setup(level)
    return level


def verbosity() -> int:
    """The verbosity the running command was given (``logs.QUIET`` .. ``logs.DEBUG``)."""
    return _LEVEL.get()


def log_to(directory: Path, bars: bool = True) -> Path:
    """Library logs of this command go to ``directory/library.log`` from now on; returns that path."""
    return logs.attach_log_file(directory / "library.log", verbosity(), bars)


def with_verbosity(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` with ``-v``/``--verbose`` and ``-q``/``--quiet`` added, so they work after the subcommand too."""
    signature = inspect.signature(command, eval_str=True)
    for parameter in signature.parameters.values():
        _show_default(parameter)
    extra = [
        inspect.Parameter("rlaif_context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
        inspect.Parameter(
            "verbose",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(0, "--verbose", "-v", count=True, help=VERBOSE_HELP, show_default=False),
            annotation=int,
        ),
        inspect.Parameter(
            "quiet",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(False, "--quiet", "-q", help=QUIET_HELP, show_default=False),
            annotation=bool,
        ),
    ]

    @functools.wraps(command)
    def wrapper(
        *args: Any, rlaif_context: typer.Context | None = None, verbose: int = 0, quiet: bool = False, **kwargs: Any
    ) -> Any:
        set_verbosity(verbose, quiet, rlaif_context)
        return command(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra])  # type: ignore[attr-defined]
    return wrapper


def _show_default(parameter: inspect.Parameter) -> None:
    """Every option's help states its default: click hides an off flag's and a None default; say them."""
    from typer.models import OptionInfo

    infos = [m for m in getattr(parameter.annotation, "__metadata__", ()) if isinstance(m, OptionInfo)]
    if isinstance(parameter.default, OptionInfo):
        info, value = parameter.default, parameter.default.default
    elif infos:
        info, value = infos[0], parameter.default
    else:
        return
    if isinstance(info.show_default, str) or info.show_default is False or value is ...:
        return
    if value is None:
        info.show_default = "none"
    elif value is False and not any("/" in str(decl) for decl in info.param_decls or ()):
        info.show_default = "off"
