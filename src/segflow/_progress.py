"""A rich progress bar on stderr that can be switched off (tests, library use)."""

from __future__ import annotations

from types import TracebackType
from typing import Any


class ProgressBar:
    """Counts finished items of one long job; does nothing when ``enabled`` is false.

    The bar is drawn only when stderr is a terminal, so logs and pipes get no control characters
    and error messages stay on one line.

    Args:
        enabled: draw the bar (the CLI passes True, the library default is False).
        label: text shown left of the bar.
        total: number of items.
    """

    def __init__(self, enabled: bool, label: str, total: int) -> None:
        self._progress: Any = None
        self._task: Any = None
        self._detail: Any = None
        if enabled:
            from rich.console import Console

            console = Console(stderr=True)
            if not console.is_terminal:
                return
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._task = self._progress.add_task(label, total=total)

    def __enter__(self) -> ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, n: int = 1) -> None:
        """Mark ``n`` more items done."""
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def detail(self, label: str, completed: int, total: int) -> None:
        """Show progress within the current item on a second line (tiles of a large image)."""
        if self._progress is None:
            return
        if self._detail is None:
            self._detail = self._progress.add_task(label, total=total)
        self._progress.update(self._detail, description=label, completed=completed, total=total)
