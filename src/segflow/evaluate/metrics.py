"""Scores from a confusion matrix (pure numpy).

Convention: a class absent from both the truth and the prediction has an undefined score (NaN)
and is left out of the means; it is neither a perfect 1 nor a 0. Means are over the classes
with a defined score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def scores_from_confusion(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class IoU, Dice, precision, recall (NaN where undefined) from a ``K x K`` matrix.

    ``confusion[t, p]`` counts pixels of true class ``t`` predicted as ``p``.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
        dice = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        precision = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        recall = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
    return {"iou": iou, "dice": dice, "precision": precision, "recall": recall}


def nanmean(values: np.ndarray) -> float:
    """Mean of the defined (non-NaN) values; NaN when none is defined."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def summary(
    confusion: np.ndarray, class_names: Sequence[str], prefix: str = ""
) -> dict[str, float]:
    """Flat metrics: mIoU, mDice (all classes), mIoU_fg (without class 0), accuracy, per class."""
    s = scores_from_confusion(confusion)
    cm = np.asarray(confusion, dtype=np.float64)
    total = cm.sum()
    out = {
        f"{prefix}mIoU": nanmean(s["iou"]),
        f"{prefix}mDice": nanmean(s["dice"]),
        f"{prefix}mIoU_fg": nanmean(s["iou"][1:]),
        f"{prefix}mDice_fg": nanmean(s["dice"][1:]),
        f"{prefix}acc": float(np.trace(cm) / total) if total else float("nan"),
    }
    for i, name in enumerate(class_names):
        out[f"{prefix}IoU/{name}"] = float(s["iou"][i])
        out[f"{prefix}Dice/{name}"] = float(s["dice"][i])
    return out
