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


def show_backend_choice() -> None:
    """Let the "backend: ... (why)" line through unless ``--quiet`` (it is INFO, off by default)."""
    if logging.getLogger("segflow").level <= logging.WARNING:
        logging.getLogger("segflow.infer.backend").setLevel(logging.INFO)


def console() -> Any:
    """A rich console on stdout."""
    from rich.console import Console

    return Console(highlight=False)


def quiet_training_logs() -> None:
    """Keep Lightning's and MLflow's INFO chatter out of the terminal (warnings still show).

    Lightning sets its loggers to INFO when imported, so this imports it first.
    """
    import os

    import lightning  # noqa: F401  (sets its log levels on import; we override them next)

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # "Experiment with name segflow not found. Creating it." is routine, not a warning.
    logging.getLogger("lightning.pytorch.loggers.mlflow").setLevel(logging.ERROR)
