"""Input manifests for ``segflow predict``: a CSV or Parquet table with a ``path`` column.

Relative paths are taken relative to the manifest's folder. Every listed file must exist; the
list is checked whole before any prediction starts (a wrong manifest costs nothing).
"""

from __future__ import annotations

import csv
from pathlib import Path

from segflow.errors import DataError

MANIFEST_SUFFIXES = (".csv", ".parquet")
COLUMN = "path"


def is_manifest(path: Path) -> bool:
    """A ``.csv`` or ``.parquet`` file given as an input is a manifest, not an image."""
    return path.suffix.lower() in MANIFEST_SUFFIXES


def _csv_paths(manifest: Path) -> list[str]:
    from segflow._textio import read_text

    rows = list(csv.reader(read_text(manifest).splitlines()))
    if not rows or COLUMN not in rows[0]:
        found = ", ".join(rows[0]) if rows else "nothing"
        raise DataError(manifest, f"a manifest needs a {COLUMN!r} column (found: {found})")
    column = rows[0].index(COLUMN)
    return [row[column] if column < len(row) else "" for row in rows[1:] if row]


def _parquet_paths(manifest: Path) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DataError(
            manifest, "reading a Parquet manifest needs pyarrow: pip install pyarrow"
        ) from exc
    try:
        schema = pq.read_schema(manifest)
    except Exception as exc:  # pyarrow's errors for a file that is not Parquet
        raise DataError(manifest, f"not a readable Parquet file ({exc})") from exc
    if COLUMN not in schema.names:
        raise DataError(
            manifest, f"a manifest needs a {COLUMN!r} column (found: {', '.join(schema.names)})"
        )
    return [str(v) for v in pq.read_table(manifest, columns=[COLUMN]).column(COLUMN).to_pylist()]


def read_manifest(manifest: Path) -> list[Path]:
    """The image files a manifest lists, in its order; one-line errors for any bad row."""
    raw = (
        _parquet_paths(manifest) if manifest.suffix.lower() == ".parquet" else _csv_paths(manifest)
    )
    if not raw:
        raise DataError(manifest, "the manifest lists no images")
    out = []
    for i, entry in enumerate(raw, start=2):
        text = entry.strip()
        if not text or text.lower() in ("none", "nan"):
            raise DataError(manifest, f"row {i}: empty {COLUMN!r}")
        if "://" in text:
            raise DataError(
                manifest, f"row {i}: {text!r}: URLs are not read yet; copy the files locally"
            )
        path = Path(text) if Path(text).is_absolute() else manifest.parent / text
        if not path.is_file():
            raise DataError(manifest, f"row {i}: {path}: not found")
        out.append(path)
    return out
