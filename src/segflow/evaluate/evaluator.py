"""``segflow eval``: predict a split of a dataset with a bundle (or an ensemble) and score it.

Every image is predicted at its original resolution with the :class:`~segflow.infer.predictor.
Predictor` (the bundle's tiling, TTA and post-processing unless overridden) and compared with its
mask; ``metrics.json``, ``per_image.csv``, ``confusion.png``, best/worst case pictures and a
self-contained ``report.html`` are written (metric definitions: :mod:`segflow.evaluate.metrics`).
When the bundle sits in a training run folder whose ``run.json`` names an MLflow run, the metrics
and the main files are logged to that run too.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from segflow._io import atomic_write_text, now_iso
from segflow._progress import ProgressBar
from segflow.classes import ClassInfo
from segflow.data import image_io
from segflow.data.dataset import SPLIT_NAMES, CanonicalDataset, Sample
from segflow.errors import DataError, UsageError
from segflow.evaluate.confusion import ConfusionAccumulator
from segflow.evaluate.metrics import (
    evaluation_metrics,
    flat_metrics,
    image_scores,
    json_ready,
    metric_prefix,
    per_image_rows,
)
from segflow.tracking import log_to_mlflow, run_folder

log = logging.getLogger("segflow.eval")
PathLike = str | os.PathLike[str]


class _HasLabels(Protocol):
    @property
    def labels(self) -> np.ndarray: ...


class PredictorLike(Protocol):
    """What the evaluator needs from a predictor (the real Predictor, or a fake in tests)."""

    @property
    def classes(self) -> Sequence[ClassInfo]:
        """The classes it predicts, in id order."""
        ...

    def predict_array(
        self, image: np.ndarray, *, probs: bool = False, stem: str = ""
    ) -> _HasLabels:
        """Predict an ``H x W x C`` image; ``.labels`` is ``H x W`` class ids."""
        ...


@dataclass
class EvalResult:
    """What ``evaluate`` measured and wrote.

    Attributes:
        metrics: the contents of ``metrics.json`` (NaN where ``metrics.json`` has null).
        per_image: one row per image, as in ``per_image.csv`` (NaN where undefined).
        out: the output folder.
        report: ``report.html``.
        confusion: the ``K x K`` confusion matrix over the split.
    """

    metrics: dict[str, Any]
    per_image: list[dict[str, Any]]
    out: Path
    report: Path
    confusion: np.ndarray


@dataclass
class _Cases:
    """The ``k`` worst and ``k`` best images so far, their pictures made only when they qualify."""

    k: int
    worst: list[dict[str, Any]] = field(default_factory=list)
    best: list[dict[str, Any]] = field(default_factory=list)

    def _fits(self, items: list[dict[str, Any]], key: tuple[float, str], sign: float) -> bool:
        if len(items) < self.k:
            return True
        return key < max((sign * c["score"], c["stem"]) for c in items)

    def offer(self, score: float, acc: float, stem: str, make: Callable[[], bytes]) -> None:
        """Consider one image (an undefined score is never ranked)."""
        if self.k <= 0 or math.isnan(score):
            return
        into = [
            (items, sign)
            for items, sign in ((self.worst, 1.0), (self.best, -1.0))
            if self._fits(items, (sign * score, stem), sign)
        ]
        if not into:
            return
        case = {"stem": stem, "score": score, "acc": acc, "jpeg": make()}
        for items, sign in into:
            items.append(case)
            items.sort(key=lambda c, s=sign: (s * c["score"], c["stem"]))  # type: ignore[misc]
            del items[self.k :]

    def ranked(self) -> dict[str, list[dict[str, Any]]]:
        """Worst first, best first; an image is never in both lists."""
        worst = {c["stem"] for c in self.worst}
        return {"worst": list(self.worst), "best": [c for c in self.best if c["stem"] not in worst]}


def _bundle_list(bundle: PathLike | Sequence[PathLike]) -> list[Path]:
    paths = [Path(bundle)] if isinstance(bundle, str | os.PathLike) else [Path(b) for b in bundle]
    if not paths:
        raise UsageError("evaluate needs at least one bundle")
    return paths


def _bundle_name(path: Path) -> str:
    return path.name.removesuffix(".segflow") or path.name


def default_out(bundles: Sequence[Path], split_label: str) -> Path:
    """``<run>/eval_<split>/`` for a bundle in a run folder, else ``./eval_<bundle>_<split>/``.

    An ensemble gets ``_ensemble`` appended so it never overwrites its first member's results.
    """
    suffix = "_ensemble" if len(bundles) > 1 else ""
    run = run_folder(bundles[0])
    if run is not None:
        return run / f"eval_{split_label}{suffix}"
    return Path.cwd() / f"eval_{_bundle_name(bundles[0])}_{split_label}{suffix}"


def _check_classes(
    source: Path | None, what: str, classes: Sequence[ClassInfo], ds: CanonicalDataset
) -> None:
    theirs = [(c.id, c.name) for c in classes]
    ours = [(c.id, c.name) for c in ds.meta.classes]
    if theirs != ours:
        raise DataError(
            source,
            f"{what} classes {[c.name for c in classes]} differ from the classes "
            f"{ds.meta.class_names} of {ds.root / 'dataset.yaml'} (names and ids must match): "
            "evaluate on a dataset labelled with the model's classes",
        )


def check_classes(
    source: Path | None, what: str, classes: Sequence[ClassInfo], ds: CanonicalDataset
) -> None:
    """Refuse a model whose classes (ids and names) differ from the dataset's (DataError)."""
    _check_classes(source, what, classes, ds)


def _samples(ds: CanonicalDataset, split: str | None) -> tuple[list[Sample], str]:
    if split is None or split == "all":
        samples, label = ds.labelled_samples(None), "all"
    elif split in SPLIT_NAMES:
        samples, label = ds.labelled_samples(split), split
    else:
        raise UsageError(f"unknown split {split!r}; choose train, val, test or all")
    if not samples:
        where = "the dataset" if label == "all" else f"the {label!r} split of splits.csv"
        raise UsageError(
            f"{ds.root}: no labelled images in {where}; run `segflow split {ds.root}` with a "
            "non-zero share for it, or pick another --split"
        )
    return samples, label


def _roi_files(roi: Path, samples: Sequence[Sample]) -> dict[str, Path]:
    if not roi.is_dir():
        raise DataError(roi, "region-of-interest folder not found")
    files: dict[str, Path] = {}
    for p in sorted(roi.iterdir()):
        if p.is_file() and image_io.is_image_file(p):
            files.setdefault(p.stem, p)
    for s in samples:
        if s.stem not in files:
            raise DataError(
                roi / f"{s.stem}.png",
                f"no region-of-interest mask for image {s.image.name} (one per image, same stem)",
            )
    return files


def _read_roi(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    arr = image_io.read_image(path)
    if arr.shape[:2] != shape:
        raise DataError(
            path,
            f"region-of-interest mask is {arr.shape[1]}x{arr.shape[0]}, its image "
            f"{shape[1]}x{shape[0]}",
        )
    inside: np.ndarray = (arr != 0).any(axis=2)
    return inside


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    keys = list(rows[0]) if rows else ["stem"]
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys)
    for r in rows:
        writer.writerow(
            [
                ""
                if isinstance(v, float) and math.isnan(v)
                else f"{v:.6g}"
                if isinstance(v, float)
                else v
                for v in (r[k] for k in keys)
            ]
        )
    return buf.getvalue()


def _counts(acc: ConfusionAccumulator, names: Sequence[str]) -> dict[str, Any]:
    """Pixels scored, ignored and outside the ROI; per class: truth, predicted, TP, FP, FN, images."""
    total, stack = acc.total, acc.stack
    return {
        "pixels": int(total.sum()),
        "ignored": acc.ignored_pixels,
        "outside_roi": acc.outside_roi_pixels,
        "per_class": {
            name: {
                "truth": int(total[i].sum()),
                "predicted": int(total[:, i].sum()),
                "tp": int(total[i, i]),
                "fp": int(total[:, i].sum() - total[i, i]),
                "fn": int(total[i].sum() - total[i, i]),
                "images": int(np.count_nonzero(stack[:, i, :].sum(axis=1))),
            }
            for i, name in enumerate(names)
        },
    }


def evaluate(
    bundle: PathLike | Sequence[PathLike],
    dataset: PathLike | CanonicalDataset,
    *,
    split: str | None = "test",
    out: PathLike | None = None,
    roi: PathLike | None = None,
    backend: str = "auto",
    device: str = "auto",
    tta: str | Sequence[str] | None = None,
    predictor: PredictorLike | None = None,
    worst_k: int = 8,
    progress: bool = False,
    precision: str = "auto",
    threads: int | None = None,
    **inference: Any,
) -> EvalResult:
    """Score a bundle (or an ensemble: a list of bundles) on a split of a canonical dataset.

    Args:
        bundle: a ``NAME.segflow`` folder, or several for an ensemble (probabilities averaged).
        dataset: the canonical dataset (folder or opened).
        split: ``train``/``val``/``test`` from ``splits.csv``; ``all`` or None: every labelled,
            non-excluded image.
        out: output folder (default: ``<run>/eval_<split>/`` when the bundle is in a training
            run folder, else ``./eval_<bundle>_<split>/``).
        roi: folder of region-of-interest masks, one per image with the same stem (non-zero =
            inside); pixels outside are not scored.
        backend: ``auto``, ``torch``, ``onnx`` or ``openvino`` (see the Predictor).
        device: ``auto``, ``cpu``, ``cuda``... for the torch backend.
        tta: flips averaged in (``h``, ``v``, ``hv``); None keeps the bundle's, ``[]`` turns TTA off.
        inference: the other inference flags of ``predict`` (``tile``, ``overlap``, ``batch``,
            ``threshold``, ``min_size``, ``fill_holes``, ``keep_largest``, ``combine``), parsed
            and merged with the bundle's settings by
            :meth:`~segflow.infer.options.InferenceOptions.from_flags`: by default eval scores
            what the bundle ships (its threshold and post-processing). ``metrics.json`` records
            the settings applied under ``settings``.
        predictor: a ready predictor to use instead of building one (tests inject fakes).
        worst_k: how many worst and best images to picture.
        progress: draw a progress bar on stderr.
        precision: ``auto``, ``f32`` or ``bf16`` (see the Predictor).
        threads: CPU threads of onnxruntime / OpenVINO (default: the CPUs this process may use).

    Raises:
        UsageError: unknown or empty split, no ``splits.csv``, an inference flag out of range.
        DataError: model and dataset classes differ, a ROI mask is missing, a file is broken.
    """
    from segflow.infer.options import InferenceOptions
    from segflow.models.bundle import read_bundle_meta
    from segflow.models.ensemble import meta_file
    from segflow.report.eval_report import confusion_figure, copy_curves, write_eval_report

    started = time.monotonic()
    bundles = _bundle_list(bundle)
    if worst_k < 0:
        raise UsageError(f"worst_k must be >= 0, got {worst_k}")
    ds = dataset if isinstance(dataset, CanonicalDataset) else CanonicalDataset(dataset)
    metas = [read_bundle_meta(b) for b in bundles]
    options = InferenceOptions.from_flags(
        metas[0], backend=backend, device=device, tta=tta, precision=precision, threads=threads,
        **inference,
    )  # fmt: skip
    for path, meta in zip(bundles, metas, strict=True):
        _check_classes(meta_file(path), f"model {meta.name!r}", meta.classes, ds)
    samples, label = _samples(ds, split)
    roi_dir = Path(roi) if roi is not None else None
    rois = _roi_files(roi_dir, samples) if roi_dir is not None else {}
    out_dir = Path(out) if out is not None else default_out(bundles, label)
    if out_dir.exists() and not out_dir.is_dir():  # before the backend is chosen (measured)
        raise UsageError(f"{out_dir}: already exists and is a file; --out must be a folder")
    if predictor is None:
        predictor = options.predictor(bundles)
    if hasattr(predictor, "describe_backends"):  # injected predictors (tests) may not say
        logging.getLogger("segflow.infer.backend").info("%s", predictor.describe_backends())
    _check_classes(bundles[0], "predictor", list(predictor.classes), ds)
    classes, names = ds.meta.classes, ds.meta.class_names
    acc, cases = _score(ds, samples, predictor, rois if roi_dir is not None else None, worst_k,
                        progress)  # fmt: skip
    metrics = _metrics_doc(bundles, metas, ds, label, samples, roi_dir, options, predictor, acc)
    rows = per_image_rows(acc.stems, acc.stack, names)
    out_dir.mkdir(parents=True, exist_ok=True)
    ranked = _write_cases(out_dir, cases)
    atomic_write_text(out_dir / "per_image.csv", _csv_text(rows))
    confusion_png = confusion_figure(acc.total, names, out_dir / "confusion.png")
    run = run_folder(bundles[0])
    curves = copy_curves(run, out_dir)
    metrics["seconds"] = round(time.monotonic() - started, 3)
    metrics_json = out_dir / "metrics.json"
    atomic_write_text(metrics_json, json.dumps(json_ready(metrics), indent=2, allow_nan=False))
    report = write_eval_report(
        out_dir / "report.html",
        metrics,
        classes,
        [r["mIoU_fg"] for r in rows],
        ranked,
        confusion_png,
        curves,
    )
    if run is not None:
        log_to_mlflow(
            run,
            flat_metrics(metrics, acc.total, metric_prefix(label)),
            [metrics_json, report, confusion_png],
            f"eval_{label}",
        )
    return EvalResult(metrics, rows, out_dir, report, acc.total.copy())


def _score(
    ds: CanonicalDataset,
    samples: Sequence[Sample],
    predictor: PredictorLike,
    rois: dict[str, Path] | None,
    worst_k: int,
    progress: bool,
) -> tuple[ConfusionAccumulator, _Cases]:
    """Predict every sample, check it against its mask and count it (ROI pixels only)."""
    from segflow.report.eval_report import case_picture

    classes = ds.meta.classes
    k, ignore = len(classes), ds.meta.ignore_index
    acc = ConfusionAccumulator(k, ignore)
    cases = _Cases(worst_k)
    with ProgressBar(progress, "evaluating", len(samples)) as bar:
        for s in samples:
            image, truth = ds.read_image(s), ds.read_mask(s)
            if image.shape[:2] != truth.shape:
                raise DataError(
                    s.mask,
                    f"mask is {truth.shape[1]}x{truth.shape[0]} but image {s.image.name} is "
                    f"{image.shape[1]}x{image.shape[0]}",
                )
            bad = np.unique(truth[(truth >= k) & (truth != ignore)])
            if bad.size:
                raise DataError(
                    s.mask, f"holds values {bad[:5].tolist()} that are no class id 0..{k - 1}"
                )
            region = _read_roi(rois[s.stem], truth.shape) if rois is not None else None
            pred = np.asarray(predictor.predict_array(image, stem=s.stem).labels)
            if pred.shape != truth.shape:
                raise ValueError(f"the predictor returned a {pred.shape} mask for {s.image.name}")
            cm = acc.update(truth, pred, region, stem=s.stem)
            one = image_scores(cm[None])

            def make(
                image: np.ndarray = image,
                truth: np.ndarray = truth,
                pred: np.ndarray = pred,
                region: np.ndarray | None = region,
            ) -> bytes:
                from segflow.data.visual import encode_jpeg

                return encode_jpeg(case_picture(image, truth, pred, classes, ignore, region))

            cases.offer(float(one["mIoU_fg"][0]), float(one["acc"][0]), s.stem, make)
            bar.advance()
    return acc, cases


def _metrics_doc(
    bundles: Sequence[Path],
    metas: Sequence[Any],
    ds: CanonicalDataset,
    label: str,
    samples: Sequence[Sample],
    roi_dir: Path | None,
    options: Any,
    predictor: PredictorLike,
    acc: ConfusionAccumulator,
) -> dict[str, Any]:
    """``metrics.json``'s content: what was scored, with which settings, and the scores."""
    classes, names = ds.meta.classes, ds.meta.class_names
    metrics: dict[str, Any] = {
        "bundle": {
            "name": metas[0].name,
            "path": str(bundles[0].absolute()),
            "weights_sha256": metas[0].weights_sha256,
        },
        "ensemble": (
            [
                {"name": m.name, "path": str(b.absolute()), "weights_sha256": m.weights_sha256}
                for b, m in zip(bundles, metas, strict=True)
            ]
            if len(bundles) > 1
            else []
        ),
        "dataset": {"name": ds.meta.name, "path": str(ds.root.absolute())},
        "split": label,
        "n_images": len(samples),
        "roi": str(roi_dir.absolute()) if roi_dir is not None else None,
        "settings": options.applied(predictor, metas[0]),
        "classes": [c.model_dump(mode="json") for c in classes],
        "counts": _counts(acc, names),
        **evaluation_metrics(acc.total, acc.stack, names),
        "confusion": acc.total.tolist(),
        "created_at": now_iso(),
        "seconds": 0.0,
    }
    return metrics


def _write_cases(out_dir: Path, cases: _Cases) -> dict[str, list[dict[str, Any]]]:
    """The best/worst pictures under ``out_dir/cases`` (earlier ones replaced); the ranking."""
    (out_dir / "cases").mkdir(exist_ok=True)
    for old in (out_dir / "cases").glob("*.jpg"):
        if old.name.startswith(("best_", "worst_")):
            old.unlink()
    ranked = cases.ranked()
    for kind, items in ranked.items():
        for i, case in enumerate(items):
            _atomic_bytes(out_dir / "cases" / f"{kind}_{i:02d}_{case['stem']}.jpg", case["jpeg"])
    return ranked
