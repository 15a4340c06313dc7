"""Streaming confusion matrices (pure numpy).

``confusion[t, p]`` counts the pixels of true class ``t`` predicted as class ``p``. Only *valid*
pixels count: the truth is not ``ignore_index`` and the pixel lies inside the region of interest
(when one is given). Pixels outside the ROI or marked ignore are tallied separately so a report can
say how many pixels were left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _valid_pixels(
    truth: np.ndarray, pred: np.ndarray, ignore_index: int, roi: np.ndarray | None
) -> np.ndarray:
    if truth.shape != pred.shape or truth.ndim != 2:
        raise ValueError(
            f"truth and prediction must be H x W arrays of one shape, got {truth.shape} and "
            f"{pred.shape}"
        )
    valid: np.ndarray = truth != ignore_index
    if roi is not None:
        if roi.shape != truth.shape:
            raise ValueError(
                f"region-of-interest mask is {roi.shape}, the truth {truth.shape}: sizes differ"
            )
        valid &= roi.astype(bool, copy=False)
    return valid


def confusion(
    truth: np.ndarray,
    pred: np.ndarray,
    num_classes: int,
    *,
    ignore_index: int = 255,
    roi: np.ndarray | None = None,
) -> np.ndarray:
    """The ``K x K`` int64 confusion matrix of one image.

    Args:
        truth: ``H x W`` class ids; ``ignore_index`` marks unlabelled pixels.
        pred: ``H x W`` predicted class ids, every counted one in ``0..K-1``.
        num_classes: ``K``.
        ignore_index: truth value of pixels left out.
        roi: optional ``H x W`` mask; only pixels where it is true (non-zero) count.

    Raises:
        ValueError: shapes differ, or a counted truth or prediction value is not a class id.
    """
    valid = _valid_pixels(truth, pred, ignore_index, roi)
    t = truth[valid].astype(np.intp, copy=False)
    p = pred[valid].astype(np.intp, copy=False)
    k = int(num_classes)
    if t.size:
        for name, values in (("prediction", p), ("truth", t)):
            lo, hi = int(values.min()), int(values.max())
            if lo < 0 or hi >= k:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"{name} holds value {bad}, not a class id 0..{k - 1} (nor ignore "
                    f"{ignore_index})"
                )
    counts = np.bincount(t * k + p, minlength=k * k)
    return counts.reshape(k, k).astype(np.int64, copy=False)


@dataclass
class ConfusionAccumulator:
    """Sums confusion matrices over images and keeps each image's own matrix.

    Each image's matrix is kept for the per-image scores: ``K * K * 8`` bytes per image (3 classes:
    72 bytes; 150 classes: 180 KB, so 10,000 ADE20K-sized images would take 1.8 GB). The total
    is exact in int64 whatever the number of pixels.

    Args:
        num_classes: ``K``.
        ignore_index: truth value of unlabelled pixels.
    """

    num_classes: int
    ignore_index: int = 255
    total: np.ndarray = field(init=False)
    stems: list[str] = field(default_factory=list, init=False)
    per_image: list[np.ndarray] = field(default_factory=list, init=False)
    ignored_pixels: int = field(default=0, init=False)
    outside_roi_pixels: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.total = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(
        self, truth: np.ndarray, pred: np.ndarray, roi: np.ndarray | None = None, stem: str = ""
    ) -> np.ndarray:
        """Add one image; returns its confusion matrix (see :func:`confusion`)."""
        cm = confusion(truth, pred, self.num_classes, ignore_index=self.ignore_index, roi=roi)
        inside = truth.size if roi is None else int(np.count_nonzero(roi))
        self.outside_roi_pixels += truth.size - inside
        self.ignored_pixels += inside - int(cm.sum())
        self.total += cm
        self.per_image.append(cm)
        self.stems.append(stem or str(len(self.stems)))
        return cm

    @property
    def stack(self) -> np.ndarray:
        """The per-image matrices as one ``N x K x K`` int64 array."""
        if not self.per_image:
            return np.zeros((0, self.num_classes, self.num_classes), dtype=np.int64)
        return np.stack(self.per_image)
