"""Helpers shared by the CLI command modules."""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])


def print_error(message: str) -> None:
    """Print a one-line error on stderr (never wrapped, never a traceback)."""
    sys.stderr.write(f"error: {' '.join(message.split())}\n")


def cli_errors(func: F) -> F:
    """Turn user errors into one line on stderr and their exit code (see :mod:`segflow.errors`).

    ``SegflowError`` keeps its own code; OS, text-encoding, validation and Lightning
    configuration errors are translated by :func:`segflow.errors.user_error` (a real bug keeps
    its traceback). SIGTERM is handled like Ctrl-C, so temporary outputs are cleaned up.
    With ``--debug`` or ``SEGFLOW_DEBUG=1`` every error shows its full traceback.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from segflow.errors import SegflowError, debug_enabled, user_error

        with _sigterm_as_interrupt():
            try:
                return func(*args, **kwargs)
            except KeyboardInterrupt as exc:
                print_error("terminated" if isinstance(exc, Terminated) else "interrupted")
                raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None
            except Exception as exc:
                if debug_enabled():
                    raise
                error = exc if isinstance(exc, SegflowError) else user_error(exc)
                if error is None:
                    raise
                print_error(str(error))
                raise typer.Exit(error.exit_code) from None

    return wrapper  # type: ignore[return-value]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that ``finally`` blocks remove temporary outputs."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
