"""A small name -> object registry shared by formats, losses, models and QA checks."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from segflow.errors import UnknownNameError

T = TypeVar("T")


def did_you_mean(
    name: str, candidates: Iterable[str], *, n: int = 1, cutoff: float = 0.6, prefix: str = ""
) -> str:
    """`` (did you mean a, b?)`` for the candidates closest to ``name`` (any case), else ``""``.

    The one home of the hint every "unknown name" message carries. Candidates are shown as they
    are spelled, after ``prefix`` (``"tu-"`` for timm encoders).
    """
    spelled = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(spelled), n=n, cutoff=cutoff)
    return f" (did you mean {', '.join(prefix + spelled[c] for c in close)}?)" if close else ""


class Registry(Generic[T]):
    """Maps names to objects. Unknown names raise an error listing the valid ones.

    Args:
        kind: what the registry holds, used in error messages ("annotation format").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its argument under ``name``."""

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name``; a name can be registered once."""
        key = name.lower()
        if key in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[key] = obj

    def get(self, name: str) -> T:
        """Return the object registered as ``name`` (case-insensitive)."""
        key = name.lower()
        if key in self._items:
            return self._items[key]
        raise UnknownNameError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        """The message for an unknown ``name``: valid names and the closest matches."""
        hint = did_you_mean(name, self._items, n=3, cutoff=0.5)
        return f"unknown {self.kind} {name!r}{hint}; valid: {', '.join(self.names())}"

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
