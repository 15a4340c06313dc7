"""``segflow train --folds K``: K fold models, their out-of-fold predictions and one ensemble.

Run folder (``runs/NAME/``)::

    folds.csv          stem, split, group, fold: the K folds over the dataset's non-test images
                       (made by the splitter of ``segflow split``; the dataset is not written)
    fold0/ ...         one training run per fold, validating on its fold (runner.py's layout)
    folds.json         the monitored metric of every fold, mean +- sd
    ensemble.segflow/  the ensemble bundle (segflow.models.ensemble):
      ensemble.yaml    members, combine rule, threshold / TTA / post-processing tuned out of fold
      fold0.segflow/   the member bundles
      oof/             out-of-fold predictions of every non-test image, each by the one member
                       that did not train on it: ``STEM.npy`` (uint8, ``q = floor(256 p)``
                       clipped to 255; binary 1 x H x W foreground, multiclass K x H x W) and
                       ``oof.csv`` (stem, fold, member, loss, dice)

The ensemble folder is written last, atomically: a failed run leaves no ``ensemble.segflow``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segflow._io import atomic_write_text
from segflow.config import SegflowConfig
from segflow.data.dataset import CanonicalDataset, SplitRow, splits_csv_text
from segflow.errors import DataError, UsageError

log = logging.getLogger("segflow.train")

ENSEMBLE_NAME = "ensemble.segflow"
FOLDS_FILE = "folds.csv"
OOF_DIR = "oof"


@dataclass
class EnsembleResult:
    """What ``segflow train --folds K`` produced."""

    run_dir: Path
    ensemble: Path
    folds: list[Any]  # TrainResult of each fold
    monitor: str
    mean: float
    sd: float
    oof: dict[str, float]  # out-of-fold score before and after tuning


def parse_folds(value: str | int) -> int | None:
    """``--folds``: ``"all"`` (None: the dataset's folds) or a number of folds K >= 2."""
    if value == "all":
        return None
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise UsageError(
            f"--folds {value!r}: give a number of folds (>= 2) or 'all' (splits.csv's folds)"
        ) from None
    if k < 2:
        raise UsageError(f"--folds {k}: an ensemble needs at least 2 folds")
    return k


def fold_rows(ds: CanonicalDataset, k: int, seed: int) -> list[SplitRow]:
    """K folds over the non-test labelled images (groups kept together, classes stratified)."""
    from segflow.data.splits import plan_splits

    splits = ds.splits()
    labelled = [s.stem for s in ds.labelled_samples()]
    test = [s for s in labelled if s in splits and splits[s].split == "test"]
    pool = [s for s in labelled if s not in set(test)]
    if not pool:
        raise DataError(ds.root, "no labelled non-test images to make folds of")
    planned = plan_splits(ds.root, val=0.0, test=0.0, stratify=True, folds=k, seed=seed,
                          only=pool)  # fmt: skip
    groups = sum(planned.groups.values())
    filled = {r.fold for r in planned.rows}
    if groups < k or len(filled) < k:
        raise UsageError(
            f"--folds {k}: the {len(pool)} non-test images of {ds.root} form {groups} group(s); "
            f"use --folds {max(2, min(groups, k - 1))} or fewer"
            if groups >= 2
            else f"--folds {k}: the non-test images of {ds.root} form only {groups} group"
        )
    rows = [SplitRow(r.stem, "val" if r.fold == 0 else "train", r.group, r.fold)
            for r in planned.rows]  # fmt: skip
    rows += [SplitRow(s, "test", splits[s].group, None) for s in test]
    return sorted(rows, key=lambda r: r.stem)


def write_fold_summary(
    root: Path, monitor: str, bests: dict[int, float | None]
) -> tuple[float, float]:
    """``folds.json``: each fold's best monitored value, their mean and sd (returned)."""
    values = [v for v in bests.values() if v is not None]
    mean = statistics.fmean(values) if values else float("nan")
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    summary = {"monitor": monitor, "folds": {f"fold{k}": v for k, v in bests.items()},
               "mean": mean, "sd": sd}  # fmt: skip
    atomic_write_text(root / "folds.json", json.dumps(summary, indent=2))
    return mean, sd


def fold_stems(rows: Sequence[SplitRow], fold: int) -> dict[str, Sequence[str]]:
    """Train / val / test stems of one fold (val: the fold, train: the other folds)."""
    return {
        "train": [r.stem for r in rows if r.fold is not None and r.fold != fold],
        "val": [r.stem for r in rows if r.fold == fold],
        "test": [r.stem for r in rows if r.split == "test"],
    }


def read_fold_rows(path: Path) -> list[SplitRow]:
    """The rows of a run's ``folds.csv``."""
    from segflow.data.dataset import read_splits

    return list(read_splits(path).values())


def train_fold_ensemble(
    cfg: SegflowConfig,
    run_name: str,
    k: int,
    *,
    fit_run: Callable[..., Any],
    progress: bool,
    callbacks: Sequence[Any],
) -> EnsembleResult:
    """Train K fold members, write their OOF predictions, tune on them, write the ensemble.

    ``fit_run`` trains one member (the runner's, passed in: the runner imports this module).
    """
    ds = CanonicalDataset(cfg.data.dataset or ".")
    root = cfg.train.output / run_name
    if root.exists() and {p.name for p in root.iterdir()} - {"plan.yaml"}:  # a plan: planned now
        raise UsageError(f"{root}: run already exists; choose another --name")
    rows = fold_rows(ds, k, cfg.train.seed)  # refused here: no run folder yet
    atomic_write_text(root / FOLDS_FILE, splits_csv_text(rows))
    results = []
    for fold in range(k):
        fold_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"fold": fold})})
        results.append(
            fit_run(fold_cfg, root / f"fold{fold}", f"{run_name}-fold{fold}", progress=progress,
                    extra_callbacks=callbacks, stems=fold_stems(rows, fold), tune=False)
        )  # fmt: skip
    mean, sd = write_fold_summary(root, cfg.train.monitor, dict(enumerate(r.best for r in results)))
    members = [(f"fold{i}.segflow", r.bundle) for i, r in enumerate(results)]
    parts = {name: list(fold_stems(rows, i)["val"]) for i, (name, _) in enumerate(members)}
    ensemble, oof = _write_ensemble(root, run_name, ds, members, parts, progress=progress)
    return EnsembleResult(root, ensemble, results, cfg.train.monitor, mean, sd, oof)


def _write_ensemble(
    root: Path,
    run_name: str,
    ds: CanonicalDataset,
    members: Sequence[tuple[str, Path]],
    parts: dict[str, list[str]],
    *,
    progress: bool,
) -> tuple[Path, dict[str, float]]:
    from segflow.models.bundle import read_bundle_meta
    from segflow.models.ensemble import EnsembleManifest, save_ensemble

    meta = read_bundle_meta(members[0][1])
    staging = root / f".{OOF_DIR}-staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        seconds = write_oof(ds, members, parts, staging, progress=progress)
        settings, oof = tune_out_of_fold(ds, members, parts, staging, progress=progress,
                                         seconds=seconds)  # fmt: skip
        manifest = EnsembleManifest(
            name=f"{run_name}-ensemble",
            task=meta.task,
            classes=meta.classes,
            members=[n for n, _ in members],
            folds=parts,
            metrics={f"oof/{k}": v for k, v in oof.items() if np.isfinite(v)},
            **settings,
        )
        path = save_ensemble(root / ENSEMBLE_NAME, members, manifest, [(OOF_DIR, staging)])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path, oof


def _member_predictor(bundle: Path, tta: Sequence[str] = ()) -> Any:
    from segflow.infer.predictor import Predictor

    return Predictor.from_bundles(bundle, backend="torch", tta=list(tta), postprocess={})


def write_oof(
    ds: CanonicalDataset,
    members: Sequence[tuple[str, Path]],
    parts: dict[str, list[str]],
    out: Path,
    *,
    progress: bool,
) -> float:
    """Each member's probabilities on the images it validated on: ``out/STEM.npy`` + oof.csv.

    Returns the seconds the inference took.
    """
    import time

    from segflow._progress import ProgressBar
    from segflow.evaluate.confusion import confusion
    from segflow.evaluate.metrics import image_scores

    by_stem = {s.stem: s for s in ds.labelled_samples()}
    out.mkdir(parents=True)
    k, ignore = len(ds.meta.classes), ds.meta.ignore_index
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["stem", "fold", "member", "loss", "dice"])
    total, seconds = sum(len(v) for v in parts.values()), 0.0
    with ProgressBar(progress, "out-of-fold", total) as bar:
        for fold, (name, bundle) in enumerate(members):
            predictor = _member_predictor(bundle)
            for stem in parts[name]:
                sample = by_stem[stem]
                image = ds.read_image(sample)
                started = time.perf_counter()
                probs = predictor.probabilities(image)
                seconds += time.perf_counter() - started
                truth = ds.read_mask(sample)
                np.save(out / f"{stem}.npy", quantise(probs), allow_pickle=False)
                labels = predictor.labels_from_probs(probs)
                cm = confusion(truth, labels, k, ignore_index=ignore)
                dice = float(image_scores(cm[None])["mDice_fg"][0])
                loss = pixel_loss(probs, truth, ignore)
                writer.writerow([stem, fold, name, _num(loss), _num(dice)])
                bar.advance()
    atomic_write_text(out / "oof.csv", table.getvalue())
    return seconds


def quantise(probs: np.ndarray) -> np.ndarray:
    """``floor(256 p)`` clipped to 255 as uint8 (``p > j / 256`` is exactly ``q >= j``)."""
    out: np.ndarray = np.minimum(probs * 256, 255).astype(np.uint8)
    return out


def dequantise(q: np.ndarray) -> np.ndarray:
    """Bin centres of :func:`quantise`'s bins (quantising them again gives ``q`` back)."""
    out: np.ndarray = (q.astype(np.float32) + 0.5) / 256
    return out


def pixel_loss(probs: np.ndarray, truth: np.ndarray, ignore: int) -> float:
    """Mean cross-entropy of the labelled pixels (binary: of the foreground probability)."""
    keep = truth != ignore
    if not keep.any():
        return float("nan")
    eps = 1e-7
    if probs.shape[0] == 1:
        p = np.clip(probs[0][keep], eps, 1 - eps)
        t = truth[keep] == 1
        return float(-np.mean(np.where(t, np.log(p), np.log1p(-p))))
    t = np.clip(truth[keep].astype(np.int64), 0, probs.shape[0] - 1)
    picked = np.take_along_axis(probs[:, keep], t[None], axis=0)[0]
    return float(-np.mean(np.log(np.clip(picked, eps, 1.0))))


def _num(value: float) -> str:
    return "" if not np.isfinite(value) else f"{value:.6f}"


def tune_out_of_fold(
    ds: CanonicalDataset,
    members: Sequence[tuple[str, Path]],
    parts: dict[str, list[str]],
    oof: Path,
    *,
    progress: bool,
    seconds: float | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Threshold, TTA and post-processing chosen on the OOF predictions (segflow tune's rules).

    The plain pass reads the saved OOF maps (no inference again; ``seconds``: the time their
    inference took, which TTA's time is weighed against); the TTA pass predicts each image with
    its own member. Returns the manifest fields and the OOF score before/after.
    """
    import tempfile

    from segflow.evaluate.tuning import (
        MARGIN,
        RowSource,
        choose_settings,
        predictor_rows,
        tuned_settings,
        tuning_record,
    )
    from segflow.models.bundle import read_bundle_meta

    meta = read_bundle_meta(members[0][1])
    by_stem = {s.stem: s for s in ds.labelled_samples()}
    order = [(i, stem) for i, (name, _) in enumerate(members) for stem in parts[name]]
    samples = [by_stem[stem] for _, stem in order]
    owner = [i for i, _ in order]

    def plain(_: Sequence[str]) -> RowSource:
        def rows(i: int, image: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
            q = np.load(oof / f"{samples[i].stem}.npy", allow_pickle=False)
            return [(0, q.shape[1], dequantise(q))]

        return rows

    def flipped(tta: Sequence[str]) -> RowSource:
        return predictor_rows([_member_predictor(b, tta) for _, b in members], owner)

    scratch = Path(tempfile.mkdtemp(prefix=".tune-", dir=oof.parent))
    try:
        result = choose_settings(meta, ds, samples, scratch, plain, flipped, try_tta=True,
                                 margin=MARGIN, progress=progress,
                                 plain_seconds=seconds)  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result.split = "out-of-fold"
    record = tuning_record(meta, result, ds, MARGIN)
    log.info("tuned the ensemble on %d out-of-fold images: %s %.4f -> %.4f", result.images,
             result.metric, result.before, result.after)  # fmt: skip
    before, after = f"{result.metric}_untuned", result.metric
    return tuned_settings(meta.threshold, result, record), {
        before.replace("val/", ""): result.before,
        after.replace("val/", ""): result.after,
    }
