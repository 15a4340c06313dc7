"""Ground-floor file helpers every stage uses: atomic text writes, YAML dumping, time, hashes.

They live below the stages (they import only :mod:`segflow.errors`), so a stage that writes a
file or a ``*.yaml`` does not import the dataset module for it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import uuid
from pathlib import Path
from typing import Any

import yaml

from segflow.errors import UsageError


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{path}: cannot create its folder ({exc.strerror})") from exc
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


class FlowList(list[Any]):
    """A list written inline by :func:`dump_yaml` (``color: [0, 128, 0]``)."""


class _Dumper(yaml.SafeDumper):
    """SafeDumper that writes :class:`FlowList` in flow style."""


_Dumper.add_representer(
    FlowList,
    lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True),
)


def dump_yaml(data: Any) -> str:
    """Block-style YAML, keys in insertion order, Unicode kept, FlowList inline."""
    return yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False
    )


def now_iso() -> str:
    """The current UTC time, ISO 8601, seconds precision."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def file_sha256(path: Path) -> str:
    """sha256 of a file, hex (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
