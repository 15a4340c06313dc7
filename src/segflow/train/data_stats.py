"""The training images of a run: which stems go where, and the statistics normalisation needs.

:func:`resolve_stems` reads ``splits.csv`` (writing a random 80/20 split when there is none) and
:func:`data_stats` measures the preprocessed training images once per run, in parallel: channel
mean/std in raw units (for ``normalize: dataset``) and class pixel counts (for class weights).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segflow._parallel import parallel_map
from segflow.config import SegflowConfig
from segflow.data import image_io
from segflow.data.dataset import CanonicalDataset
from segflow.errors import DataError, UsageError

log = logging.getLogger("segflow.train")

#: Images looked at to decide channel count and dtype before the statistics pass.
PEEK_IMAGES = 16


@dataclass
class DataStats:
    """Statistics of the preprocessed training images (what normalisation and weights need)."""

    channels: int
    dtype: str
    raw_mean: list[float]
    raw_std: list[float]
    class_pixels: list[int]
    images: int

    def digest(self) -> str:
        """A short hash identifying these statistics (logged as the dataset fingerprint)."""
        text = json.dumps(self.__dict__, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def resolve_stems(
    dataset: CanonicalDataset, fold: int | None, seed: int
) -> dict[str, Sequence[str]]:
    """Train/val/test stems from ``splits.csv`` (written with a random 80/20 split if missing)."""
    splits = dataset.splits()
    if not splits:
        from segflow.data.splits import make_splits

        make_splits(dataset.root, val=0.2, test=0.0, seed=seed)
        log.warning(
            "%s has no splits.csv: wrote a random 80/20 train/val split (run `segflow split` for "
            "groups, strata or a test set)",
            dataset.root,
        )
        splits = dataset.splits()
    labelled = {s.stem for s in dataset.labelled_samples()}
    rows = [r for r in splits.values() if r.stem in labelled]
    if fold is not None:
        folds = sorted({r.fold for r in rows if r.fold is not None})
        if fold not in folds:
            raise UsageError(
                f"{dataset.root / 'splits.csv'}: no fold {fold} (folds: {folds or 'none'}; "
                "run `segflow split --folds K`)"
            )
        stems: dict[str, Sequence[str]] = {
            "train": [r.stem for r in rows if r.fold is not None and r.fold != fold],
            "val": [r.stem for r in rows if r.fold == fold],
            "test": [r.stem for r in rows if r.split == "test"],
        }
    else:
        stems = {
            part: [r.stem for r in rows if r.split == part] for part in ("train", "val", "test")
        }
    if not stems["train"]:
        raise DataError(dataset.root / "splits.csv", "no training images (split 'train' is empty)")
    return stems


def _peek(dataset: CanonicalDataset, stems: Sequence[str]) -> tuple[int, str]:
    """Majority channel count and dtype of a few training images."""
    by_stem = {s.stem: s for s in dataset.samples()}
    picks = [by_stem[s] for s in stems[:PEEK_IMAGES] if s in by_stem]
    infos = [image_io.verify_image(s.image) for s in picks]
    channels = Counter(i[2] for i in infos).most_common(1)[0][0]
    dtype = Counter(i[3] for i in infos).most_common(1)[0][0]
    return int(channels), str(dtype)


@dataclass
class _StatsJob:
    image: Path
    mask: Path
    preprocess: dict[str, Any]
    channels: int
    scale: float


def _stats_job(job: _StatsJob) -> tuple[list[float], list[float], int, list[int]]:
    from segflow.config import PreprocessConfig
    from segflow.data.fingerprint import nonfinite_problem
    from segflow.data.transforms import Normalization, Preprocessor
    from segflow.errors import DataError

    norm = Normalization(scale=job.scale, mean=[0.0] * job.channels, std=[1.0] * job.channels)
    pre = Preprocessor(PreprocessConfig.model_validate(job.preprocess), job.channels, norm)
    raw = image_io.read_image(job.image)
    problem = nonfinite_problem(job.image, raw)
    if problem is not None:  # the normalisation (and every loss) would be NaN
        raise DataError(None, problem)
    image, geom = pre.image(raw)
    mask = pre.mask(image_io.read_mask(job.mask), geom)
    flat = image.reshape(-1, image.shape[2]).astype(np.float64)
    counts = image_io.class_histogram(np.ascontiguousarray(mask))
    return flat.sum(0).tolist(), np.square(flat).sum(0).tolist(), flat.shape[0], counts.tolist()


def data_stats(
    dataset: CanonicalDataset, stems: Sequence[str], cfg: SegflowConfig, *, progress: bool
) -> DataStats:
    """Channel mean/std (after preprocessing, in raw units) and class pixels of ``stems``."""
    channels, dtype = _peek(dataset, stems)
    scale = {"uint8": 255.0, "uint16": 65535.0}.get(dtype, 1.0)
    masks = {s.stem: (s.image, s.mask) for s in dataset.labelled_samples() if s.mask is not None}
    preprocess = cfg.data.preprocess.model_dump(mode="json")
    jobs = [_StatsJob(masks[s][0], masks[s][1], preprocess, channels, scale) for s in stems]
    sums = np.zeros(channels)
    sq = np.zeros(channels)
    n = 0
    pixels = np.zeros(256, dtype=np.int64)
    for s, q, count, hist in parallel_map(_stats_job, jobs, progress=progress, label="statistics"):
        sums += s
        sq += q
        n += count
        pixels += np.asarray(hist, dtype=np.int64)
    mean = sums / max(n, 1)
    std = np.sqrt(np.maximum(sq / max(n, 1) - mean**2, 1e-12))
    return DataStats(
        channels=channels,
        dtype=dtype,
        raw_mean=(mean * scale).tolist(),
        raw_std=(std * scale).tolist(),
        class_pixels=pixels[: dataset.meta.num_classes].tolist(),
        images=len(stems),
    )
