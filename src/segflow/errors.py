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


def debug_enabled() -> bool:
    """``SEGFLOW_DEBUG=1`` (or ``segflow --debug``): every error keeps its full traceback."""
    import os

    return os.environ.get("SEGFLOW_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


#: errno name -> (what it means for the user, exit code). Path-shaped mistakes are usage errors.
_OS_ERRORS: dict[str, tuple[str, int]] = {
    "EACCES": ("permission denied: check the owner and mode, or choose another path", 1),
    "EPERM": ("operation not permitted: check the owner and mode, or choose another path", 1),
    "EROFS": ("read-only file system: write the output somewhere else", 1),
    "ENOSPC": ("no space left on the device: free some space or write elsewhere", 1),
    "EDQUOT": ("disk quota exceeded: free some space or write elsewhere", 1),
    "EFBIG": ("file too large for this file system or the process's file-size limit", 1),
    "EIO": ("input/output error: the disk or network share failed", 1),
    "ELOOP": ("too many levels of symbolic links", 1),
    "EMFILE": ("too many open files: raise `ulimit -n`", 1),
    "ECONNREFUSED": ("connection refused: is the server (e.g. --tracking-uri) running?", 1),
    "ENAMETOOLONG": ("file name too long: use a shorter name", 2),
    "EEXIST": ("already exists: choose a new path", 2),
    "ENOTDIR": ("a part of this path is a file, not a folder", 2),
    "EISDIR": ("is a folder, not a file", 2),
    "ENOENT": ("not found", 2),
}


def os_error(exc: OSError, path: str | PathLike[str] | None = None) -> SegflowError | None:
    """A user error for an ``OSError`` caused by the user's files or disk; None for the others."""
    import errno

    name = errno.errorcode.get(exc.errno or -1, "")
    if name not in _OS_ERRORS:
        return None
    problem, code = _OS_ERRORS[name]
    where = path if path is not None else exc.filename
    message = problem if where is None else f"{where}: {problem}"
    return UsageError(message) if code == 2 else DataError(None, message)


def user_error(exc: BaseException) -> SegflowError | None:
    """The last-resort translation of a non-segflow exception caused by the user; None: a bug.

    The message names the file where the exception knows it; errors are better converted where
    the file is read (see :func:`segflow._textio.read_text`), which names it always.
    """
    if isinstance(exc, OSError):
        return os_error(exc)
    if isinstance(exc, UnicodeDecodeError):
        return DataError(
            None, f"a file is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        )
    if isinstance(exc, OverflowError):
        return DataError(None, f"a number in the input is too large ({exc})")
    if isinstance(exc, MemoryError):
        return DataError(None, "not enough memory for this input (is a declared size too large?)")
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "ValidationError" in names and hasattr(exc, "errors"):
        return ConfigError(validation_message(exc))
    if "MisconfigurationException" in names:
        return ConfigError(f"Lightning rejected the training settings: {exc}")
    return None
