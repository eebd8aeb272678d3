"""What every `jijian` sub-command shares: the consoles and the user-error handler.

Sub-command groups live in their own modules (`jijian.cli.<area>`), each exposing a `typer.Typer`
that `jijian.cli.main` mounts; they import this module, never `main`, and import the rest of
jijian inside their commands so `jijian --help` stays instant.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import typer
import typer.core
from rich.console import Console

err_console = Console(stderr=True)
out_console = Console()
P = ParamSpec("P")
R = TypeVar("R")


def _user_errors() -> tuple[type[BaseException], ...]:
    # Errors caused by the user's input get one clear line and exit code 2; anything else is a bug
    # and keeps its traceback. Imported here, not at the top, so `jijian --help` stays instant.
    from jijian.config import ConfigError, UserInputError

    return (ConfigError, UserInputError, FileNotFoundError)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `error: message` in red on stderr and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message.replace('[', chr(92) + '[')}", soft_wrap=True)
    return typer.Exit(code=code)


def reports_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn user-input errors into a red message on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except _user_errors() as exc:
            # soft_wrap inside fail(): paths in messages must stay copyable, not broken at the terminal width.
            raise fail(str(exc)) from None

    return wrapper


class DefaultCommandGroup(typer.core.TyperGroup):
    """A command group whose first argument, when it names no sub-command, goes to a default one.

    So `jijian train deploy.toml` runs training while `jijian train report RUN_DIR` still works.
    """

    default_command = "run"

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """Insert the default sub-command before an argument that is not a known sub-command."""
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)
