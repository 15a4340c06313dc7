"""The Python API: the CLI's verbs as functions, with the CLI's parameter names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segflow.data.formats.base import ImportReport
    from segflow.data.qa import CheckResult
    from segflow.data.splits import SplitResult

PathLike = str | os.PathLike[str]


def import_dataset(
    format: str, src: PathLike, out: PathLike, *, progress: bool = False, **options: Any
) -> ImportReport:
    """``segflow import FORMAT SRC OUT``: options are the command's flags (``classes=``, ``strict=``...).

    Returns the import report (classes, per-class pixel counts, warnings).
    """
    from pydantic import ValidationError

    from segflow.data.formats.base import ImportOptions, run_import
    from segflow.errors import UsageError, validation_message

    try:
        opts = ImportOptions(**options)
    except ValidationError as exc:
        raise UsageError(validation_message(exc)) from None
    return run_import(format, src, out, opts, progress=progress)


def check(
    dataset: PathLike,
    *,
    report: PathLike | None = None,
    json_out: PathLike | None = None,
    exclude: PathLike | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> CheckResult:
    """``segflow check DATASET``: findings (``.report``), written files (``.paths``)."""
    from segflow.data.qa import run_check

    return run_check(
        dataset,
        report=Path(report) if report else None,
        json_out=Path(json_out) if json_out else None,
        exclude=Path(exclude) if exclude else None,
        workers=workers,
        progress=progress,
    )


def split(
    dataset: PathLike,
    *,
    val: float = 0.1,
    test: float = 0.1,
    stratify: bool = False,
    group_by: str | None = None,
    folds: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = False,
) -> SplitResult:
    """``segflow split DATASET``: writes ``splits.csv`` and returns the per-split class presence."""
    from segflow.data.splits import make_splits

    return make_splits(
        dataset,
        val=val,
        test=test,
        stratify=stratify,
        group_by=group_by,
        folds=folds,
        seed=seed,
        workers=workers,
        progress=progress,
    )


def export_dataset(
    format: str,
    dataset: PathLike,
    out: PathLike,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """``segflow export FORMAT DATASET OUT``: write a dataset in another format (e.g. ``coco``)."""
    from segflow.data.dataset import CanonicalDataset
    from segflow.data.formats import EXPORTERS

    exporter = EXPORTERS.get(format)
    return exporter(CanonicalDataset(dataset), Path(out), overwrite=overwrite, progress=progress)
