"""Reading the user's text files: one-line errors naming the file, and bounded YAML.

``read_text`` turns a non-UTF-8 file or an OS error into a :class:`~segflow.errors.DataError`
that names the file. ``load_yaml`` is ``yaml.safe_load`` that refuses documents whose aliases
expand to more than :data:`MAX_YAML_NODES` nodes (a 600-byte "billion laughs" alias bomb would
otherwise expand when the config is validated or dumped) and recursive aliases.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from segflow.errors import DataError, os_error

#: Nodes a YAML document may expand to once its aliases are followed (configs have ~100).
MAX_YAML_NODES = 100_000


def read_text(path: str | os.PathLike[str], what: str = "file", encoding: str = "utf-8") -> str:
    """The text of ``path``; a DataError naming it when it is unreadable or not UTF-8."""
    p = Path(path)
    try:
        return p.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise DataError(
            p, f"{what} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
        ) from None
    except OSError as exc:
        error = os_error(exc, p)
        if error is None:
            raise
        raise error from None


def _expanded_size(node: Any, sizes: dict[int, int], active: set[int]) -> int:
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in active:
        raise ValueError("a recursive alias (an anchor used inside itself)")
    active.add(key)
    children: list[Any] = []
    if isinstance(node.value, list):
        for item in node.value:
            children += list(item) if isinstance(item, tuple) else [item]
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, active)
        if total > MAX_YAML_NODES:
            break
    active.discard(key)
    sizes[key] = total
    return total


def load_yaml(text: str, source: str | os.PathLike[str]) -> Any:
    """``yaml.safe_load(text)`` with the alias expansion bounded; YAML errors name ``source``."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            size = _expanded_size(node, {}, set())
        except ValueError as exc:
            raise DataError(source, f"not accepted YAML: {exc}") from None
        if size > MAX_YAML_NODES:
            raise DataError(
                source,
                f"YAML aliases expand to more than {MAX_YAML_NODES:,} values (an alias bomb?); "
                "write the values out instead of using &anchors and *aliases",
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise DataError(source, f"not valid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise DataError(source, "not accepted YAML: nested too deeply") from None
    finally:
        loader.dispose()
