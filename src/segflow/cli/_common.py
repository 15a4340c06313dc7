"""Helpers shared by the CLI command modules."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])


def print_error(message: str) -> None:
    """Print a one-line error on stderr (never wrapped, never a traceback)."""
    sys.stderr.write(f"error: {' '.join(message.split())}\n")


def cli_errors(func: F) -> F:
    """Turn segflow's user errors into one line on stderr and their exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from segflow.errors import SegflowError

        try:
            return func(*args, **kwargs)
        except SegflowError as exc:
            print_error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            print_error("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


class OneLineHandler(logging.Handler):
    """Log records as ``warning: message`` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record as one line."""
        sys.stderr.write(f"{record.levelname.lower()}: {' '.join(record.getMessage().split())}\n")


def console() -> Any:
    """A rich console on stdout."""
    from rich.console import Console

    return Console(highlight=False)
