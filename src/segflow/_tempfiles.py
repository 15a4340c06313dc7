"""Temporary output names that say who made them, and the sweep of ones a killed run left.

Outputs are written under a temporary name beside their final place and renamed when complete.
The name carries the writing process's id (``.OUT.tmp-<pid>-<hex>``), so a later run can tell a
leftover of a killed process (its pid no longer runs on this machine) from the work of one still
running, and remove only the former, saying so.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from pathlib import Path

log = logging.getLogger("segflow")


def tag() -> str:
    """``<pid>-<8 hex digits>``: unique, and naming this process."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_stale(folder: Path, prefix: str, suffix: str = "") -> list[Path]:
    """Remove ``folder/<prefix><pid>-<hex><suffix>`` entries whose process is gone.

    Only names of exactly that shape are considered (ours); each removal is logged as one line.
    Returns the removed paths.
    """
    shape = re.compile(rf"^{re.escape(prefix)}(\d+)-[0-9a-f]{{8}}{re.escape(suffix)}$")
    return _sweep(folder, shape, files_only=False)


#: ``.NAME.tmp-<pid>-<hex>[.ext]``: a file being written by segflow.infer.outputs.
_OUTPUT_TMP = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}(\.[a-z]+)?$")


def sweep_stale_outputs(folder: Path) -> list[Path]:
    """Remove the temporary prediction files (``.NAME.tmp-<pid>-<hex>``) of killed writers.

    The process id is checked on this machine only: on a multi-machine run, sweep a shared
    output folder before the workers start (as ``segflow predict --engine ray`` does).
    """
    return _sweep(folder, _OUTPUT_TMP, files_only=True)


def _sweep(folder: Path, shape: re.Pattern[str], *, files_only: bool) -> list[Path]:
    """Remove entries of ``folder`` named like ``shape`` whose writer no longer runs.

    ``shape``'s group 1 is the writer's pid; each removal is logged as one line.
    """
    try:
        entries = list(folder.iterdir()) if folder.is_dir() else []
    except OSError:
        return []
    removed: list[Path] = []
    for entry in entries:
        match = shape.match(entry.name)
        if match is None or (files_only and not entry.is_file()) or _alive(int(match.group(1))):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue
        log.warning("removed %s, left by an interrupted segflow run", entry)
        removed.append(entry)
    return removed
