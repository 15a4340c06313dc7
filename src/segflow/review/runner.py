"""``segflow review``: rank a dataset's labelled images by label quality, worst first.

Probabilities come from a :data:`ProbabilitySource` (stem, image -> ``K x H x W`` class
probabilities per model); :func:`bundle_source` builds one from bundles. Out-of-fold
probabilities of a fold ensemble plug in the same way (a source reading them by stem).
Everything is validated before any work, and the output folder is staged beside its final place
and renamed at the end: a failed review leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segflow.data.dataset import CanonicalDataset, Sample
from segflow.errors import DataError, UsageError
from segflow.review import gallery
from segflow.review.scoring import TEMPERATURE, class_probabilities, score_image, uncertainty

log = logging.getLogger("segflow.review")

PathLike = str | os.PathLike[str]
#: ``(stem, image H x W x C) -> [K x H x W class probabilities of each model]``.
ProbabilitySource = Callable[[str, np.ndarray], list[np.ndarray]]
CSV_FIELDS = ("stem", "split", "score", "rank", "kind", "pixels", "kinds")
IN_SAMPLE = (
    "bundle probabilities are in-sample for the images the model trained on, so their scores "
    "understate label errors"
)
SKIP_TRAIN = "training images are skipped (--include-train scores them)"
NO_SPLITS = "without splits.csv the training images are unknown: every image is scored"


@dataclass
class ReviewResult:
    """What a review found and wrote."""

    out: Path
    rows: list[dict[str, Any]]  # review.csv's rows, worst first
    unlabeled: list[dict[str, Any]] = field(default_factory=list)  # label_next.csv's rows
    skipped_train: int = 0
    files: dict[str, Path] = field(default_factory=dict)


def bundle_source(bundles: Sequence[Path], *, backend: str, device: str) -> ProbabilitySource:
    """Probabilities of each bundle (no TTA, no post-processing), binary ones as 2 classes."""
    from segflow.infer.predictor import Predictor

    predictors = [
        Predictor.from_bundles(b, backend=backend, device=device, tta=[], postprocess={})
        for b in bundles
    ]

    def source(stem: str, image: np.ndarray) -> list[np.ndarray]:
        return [class_probabilities(p.probabilities(image), p.task == "binary") for p in predictors]

    return source


def oof_source(run: Path) -> tuple[ProbabilitySource, set[str], Path]:
    """The out-of-fold probabilities of a ``segflow train --folds K`` run, by stem.

    Returns the source, the stems it covers (every non-test image, each predicted by the member
    that did not train on it) and the ensemble folder (whose classes they follow).
    """
    from segflow._textio import read_text
    from segflow.models.bundle import read_bundle_meta
    from segflow.train.ensemble import OOF_DIR, dequantise

    ensemble = run / "ensemble.segflow" if (run / "ensemble.segflow").is_dir() else run
    oof = ensemble / OOF_DIR
    if not (oof / "oof.csv").is_file():
        raise DataError(run, "no out-of-fold predictions (ensemble.segflow/oof/oof.csv): make "
                        "them with `segflow train --folds K`, or review with --bundle")  # fmt: skip
    binary = read_bundle_meta(ensemble).task == "binary"
    stems = {row["stem"] for row in csv.DictReader(io.StringIO(read_text(oof / "oof.csv")))}

    def source(stem: str, image: np.ndarray) -> list[np.ndarray]:
        path = oof / f"{stem}.npy"
        try:
            q = np.load(path, allow_pickle=False)  # never a pickle
        except (OSError, ValueError) as exc:
            raise DataError(path, f"unreadable out-of-fold map ({exc})") from None
        if q.dtype != np.uint8 or q.ndim != 3 or q.shape[1:] != image.shape[:2]:
            raise DataError(path, f"expected a uint8 C x {image.shape[0]} x {image.shape[1]} map, "
                            f"got {q.dtype} {q.shape}")  # fmt: skip
        return [class_probabilities(dequantise(q), binary)]

    return source, stems, ensemble


def _check_options(top: int, temperature: float, models: int) -> None:
    if top < 1:
        raise UsageError(f"--top {top}: must be at least 1 (the suspects listed and in stems.txt)")
    if not math.isfinite(temperature) or temperature <= 0:
        raise UsageError(f"--temperature {temperature}: must be a number > 0 (default 0.1)")
    if models < 1:
        raise UsageError("give the model to score with: --bundle NAME.segflow (repeatable)")


def _check_out(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"{out}: already exists and is a file; --out must be a folder")
    if not overwrite:
        raise UsageError(f"{out}: output already exists; choose a new folder or pass --overwrite")
    if not (out / "review.csv").is_file():
        raise UsageError(f"{out}: exists and is not a segflow review; refusing to overwrite it")


def _samples(ds: CanonicalDataset, include_train: bool) -> tuple[list[Sample], dict[str, str], int]:
    samples = ds.labelled_samples()
    if not samples:
        raise DataError(ds.masks_dir, "no masks: review scores labelled images (masks/<stem>.png)")
    splits = {stem: row.split for stem, row in ds.splits().items()}
    kept = samples if include_train else [s for s in samples if splits.get(s.stem) != "train"]
    if not kept:
        raise UsageError(
            f"{ds.root}: every labelled image is in the train split of splits.csv; pass "
            "--include-train to score them anyway (in-sample scores understate errors)"
        )
    return kept, splits, len(samples) - len(kept)


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out``, renamed to ``out`` when the block ends without error."""
    from segflow._tempfiles import sweep_stale, tag
    from segflow.errors import os_error

    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(parent, f".{out.name}.tmp-")  # left by a killed review
        tmp = parent / f".{out.name}.tmp-{tag()}"
        tmp.mkdir()
    except OSError as exc:
        error = os_error(exc, out)
        if error is None:
            raise
        raise error from None
    try:
        yield tmp
        if out.exists():
            old = parent / f".{out.name}.old-{tag()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _score_text(score: float) -> str:
    return "nan" if math.isnan(score) else f"{score:.4f}"


def _rank(rows: list[dict[str, Any]], *, worst_is_low: bool) -> list[dict[str, Any]]:
    def key(r: dict[str, Any]) -> tuple[bool, float, str]:
        s = r["score"]
        return (math.isnan(s), s if worst_is_low else -s, r["stem"])

    ranked = sorted(rows, key=key)
    for i, r in enumerate(ranked, start=1):
        r["rank"] = i
        r["score_text"] = _score_text(r["score"])
    return ranked


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in rows:
        cells = [r["stem"], r["split"], r["score_text"], r["rank"], r["kind"], r["pixels"]]
        writer.writerow([*cells, r.get("kinds", "")])
    return buf.getvalue()


def _score_labelled(
    ds: CanonicalDataset,
    samples: Sequence[Sample],
    splits: dict[str, str],
    source: ProbabilitySource,
    temperature: float,
    thumbs: Path,
    progress: bool,
) -> list[dict[str, Any]]:
    from segflow._progress import ProgressBar
    from segflow.evaluate.tuning import read_labelled

    classes, ignore = ds.meta.classes, ds.meta.ignore_index
    thumbs.mkdir()
    rows = []
    with ProgressBar(progress, "reviewing", len(samples)) as bar:
        for i, s in enumerate(samples):
            image, mask = read_labelled(ds, s, len(classes), ignore)
            probs = np.mean(source(s.stem, image), axis=0)
            try:
                result = score_image(probs, mask, ignore, temperature)
            except ValueError as exc:
                raise DataError(s.mask, str(exc)) from None
            panels = gallery.labelled_panels(image, mask, result.prediction, result.kinds, classes)
            rows.append(
                {
                    "stem": s.stem,
                    "split": splits.get(s.stem, ""),
                    "score": result.score,
                    "kind": result.kind,
                    "pixels": result.pixels,
                    "kinds": "; ".join(f"{k} {n}" for k, n in result.by_kind.items()),
                    "thumbs": gallery.write_thumbs(thumbs, i, panels),
                }
            )
            bar.advance()
    return _rank(rows, worst_is_low=True)


def _score_unlabeled(
    ds: CanonicalDataset,
    files: Sequence[Path],
    source: ProbabilitySource,
    thumbs: Path,
    progress: bool,
) -> tuple[list[dict[str, Any]], int]:
    """Rows ranked most uncertain first, and how many models gave probabilities."""
    from segflow._progress import ProgressBar
    from segflow.data import image_io
    from segflow.infer.predictor import argmax_classes

    thumbs.mkdir()
    rows = []
    models = 0
    with ProgressBar(progress, "ranking unlabelled", len(files)) as bar:
        for i, path in enumerate(files):
            image = image_io.read_image(path)
            members = source(path.stem, image)
            models = len(members)
            score, heat = uncertainty(members)
            pred = argmax_classes(np.mean(members, axis=0))
            panels = gallery.uncertainty_panels(image, pred, heat, ds.meta.classes)
            rows.append(
                {
                    "stem": path.stem,
                    "split": "unlabeled",
                    "score": score,
                    "kind": "uncertain",
                    "pixels": int((heat > 0.5).sum()),
                    "thumbs": gallery.write_thumbs(thumbs, i, panels),
                }
            )
            bar.advance()
    return _rank(rows, worst_is_low=False), models


def review(
    dataset: PathLike | CanonicalDataset,
    bundles: Sequence[PathLike] = (),
    *,
    out: PathLike | None = None,
    top: int = 20,
    include_train: bool = False,
    unlabeled: PathLike | None = None,
    temperature: float = TEMPERATURE,
    overwrite: bool = False,
    backend: str = "auto",
    device: str = "auto",
    source: ProbabilitySource | None = None,
    progress: bool = False,
    from_run: PathLike | None = None,
) -> ReviewResult:
    """Score every labelled image's labels; write ``review.csv``, ``review.html``, ``stems.txt``.

    Args:
        dataset: the canonical dataset (folder or opened).
        bundles: model bundles whose mean probabilities score the labels.
        out: output folder (default ``./review_<dataset name>/``).
        top: how many of the worst images ``stems.txt`` lists (>= 1).
        include_train: also score images of the train split (in-sample: errors understated).
        unlabeled: a folder of unlabelled images to rank by model uncertainty (what to label
            next): ``label_next.csv`` and ``label_next.html``.
        temperature: the softmin temperature (> 0).
        overwrite: replace an earlier review in ``out``.
        backend: ``auto``, ``torch``, ``onnx`` or ``openvino`` (see the Predictor).
        device: ``auto``, ``cpu``, ``cuda``... for the torch backend.
        source: probabilities to use instead of the bundles' (e.g. out-of-fold ones).
        progress: draw a progress bar on a terminal.
        from_run: a ``segflow train --folds K`` run: score every image it has an out-of-fold
            map of with that map (out of sample, so the training images are scored too).

    Raises:
        UsageError: an option out of range, an existing output, only training images.
        DataError: no dataset or masks, classes that differ from the bundles', a broken file.
    """
    from segflow.evaluate.evaluator import check_classes
    from segflow.infer.predictor import expand_inputs
    from segflow.models.bundle import read_bundle_meta

    paths = [Path(b) for b in bundles]
    if from_run is not None and (paths or source is not None):
        raise UsageError("--from-run scores with the run's out-of-fold maps: leave --bundle out")
    covered: set[str] | None = None
    manifests = [p / "bundle.yaml" for p in paths]
    if from_run is not None:
        source, covered, ensemble = oof_source(Path(from_run))
        manifests = [ensemble / "ensemble.yaml"]
    _check_options(top, temperature, len(paths) if source is None else 1)
    ds = dataset if isinstance(dataset, CanonicalDataset) else CanonicalDataset(dataset)
    for manifest in manifests:
        meta = read_bundle_meta(manifest.parent)
        check_classes(manifest, f"model {meta.name!r}", meta.classes, ds)
    samples, splits, skipped = _samples(ds, include_train or source is not None)
    if covered is not None:
        samples = [s for s in samples if s.stem in covered]
        if not samples:
            raise DataError(Path(from_run or ""), "its out-of-fold maps cover none of the "
                            f"labelled images of {ds.root}")  # fmt: skip
    files = expand_inputs(Path(unlabeled)) if unlabeled is not None else []
    out_dir = Path(out) if out is not None else Path.cwd() / f"review_{ds.meta.name}"
    _check_out(out_dir, overwrite)
    if source is None:
        why = "" if include_train else f"; {SKIP_TRAIN if splits else NO_SPLITS}"
        log.warning("%s%s", IN_SAMPLE, why)
        source = bundle_source(paths, backend=backend, device=device)
    with staged_folder(out_dir) as tmp:
        rows = _score_labelled(ds, samples, splits, source, temperature, tmp / "thumbs", progress)
        notes = [f"{ds.root}: {len(rows)} labelled images scored (softmin T={temperature:g})."]
        if skipped:
            notes.append(f"{skipped} training image(s) skipped: {IN_SAMPLE}.")
        names = _write_review(tmp, f"Label review: {ds.meta.name}", rows, notes, top)
        next_rows: list[dict[str, Any]] = []
        if files:
            folder = tmp / "thumbs_unlabeled"
            next_rows, models = _score_unlabeled(ds, files, source, folder, progress)
            how = "the models' disagreement" if models > 1 else "mean per-pixel entropy"
            notes = [f"{len(next_rows)} unlabelled images, most uncertain first ({how})."]
            title = f"What to label next: {Path(unlabeled or '').name}"
            names += _write_review(tmp, title, next_rows, notes, 0, stem="label_next")
    written = {n: out_dir / n for n in names}
    return ReviewResult(out_dir, rows, next_rows, skipped, written)


def _write_review(
    folder: Path,
    title: str,
    rows: list[dict[str, Any]],
    notes: list[str],
    top: int,
    stem: str = "review",
) -> list[str]:
    """``<stem>.csv``, ``<stem>.html`` (and ``stems.txt`` of the ``top`` worst when top > 0)."""
    from segflow._io import now_iso
    from segflow._version import __version__

    (folder / f"{stem}.csv").write_text(_csv_text(rows), encoding="utf-8")
    gallery.write_gallery(
        folder / f"{stem}.html",
        title=title,
        rows=rows,
        labelled=stem == "review",
        notes=notes,
        version=__version__,
        created_at=now_iso(),
    )
    names = [f"{stem}.csv", f"{stem}.html"]
    if top > 0:
        (folder / "stems.txt").write_text("".join(f"{r['stem']}\n" for r in rows[:top]))
        names.append("stems.txt")
    return names
