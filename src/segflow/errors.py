"""Exception tree. Every message says what went wrong and, where possible, what to do.

User errors (bad data, bad arguments) are :class:`SegflowError` subclasses; the CLI prints them as
one line and exits with ``exit_code``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from os import PathLike
from typing import Any


class SegflowError(Exception):
    """Base class of every error segflow raises on purpose."""

    exit_code: int = 1


class UsageError(SegflowError):
    """The command or call was asked for something invalid (wrong option, existing output...)."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration value or file is invalid."""


class UnknownNameError(UsageError):
    """A name looked up in a registry does not exist; the message lists the valid names."""


class DataError(SegflowError):
    """Input data is broken or inconsistent. The message names the file and the problem."""

    exit_code = 1

    def __init__(self, path: str | PathLike[str] | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if self.path is None else f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[type[DataError], tuple[str | None, str]]:
        # Keeps the exception picklable across worker processes.
        return (type(self), (self.path, self.problem))


def validation_message(exc: Any) -> str:
    """One line from a pydantic ``ValidationError``: where, what, and how many more problems."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "top level"
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"
