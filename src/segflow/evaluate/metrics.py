"""Scores from confusion matrices (pure numpy).

``confusion[t, p]`` counts pixels of true class ``t`` predicted as ``p`` (ignore and out-of-ROI
pixels are never counted). For class ``c``: ``TP = C[c, c]``, ``FP = column sum - TP``,
``FN = row sum - TP``, and

- IoU = TP / (TP + FP + FN), Dice = 2 TP / (2 TP + FP + FN),
- precision = TP / (TP + FP), recall = TP / (TP + FN),
- pixel accuracy = trace(C) / sum(C).

Convention: a score whose denominator is 0 is undefined (NaN). For IoU and Dice that is a class
absent from both the truth and the prediction: it is neither a perfect 1 nor a 0, it is left out
of every mean, and JSON reports it as ``null`` (:func:`json_ready`). Means are over the classes
(or images) with a defined score; a mean over nothing is NaN.

Aggregates (:func:`evaluation_metrics`):

- **micro**: pooled over every counted pixel and every class of the total matrix.
  ``accuracy = sum TP / sum C``; ``iou = sum_c TP_c / sum_c (TP_c + FP_c + FN_c)``;
  ``dice = 2 sum_c TP_c / sum_c (2 TP_c + FP_c + FN_c)``. Every wrong pixel is one FP (of the
  predicted class) and one FN (of the true class), so micro Dice = micro precision = micro recall
  = accuracy, and micro IoU = accuracy / (2 - accuracy). (torchmetrics ``average="micro"`` and
  segmentation_models_pytorch ``reduction="micro"`` compute the same numbers.)
- **macro**: the mean over classes of the per-class scores of the total matrix (all images'
  pixels pooled per class), undefined classes excluded; **macro_fg** the same without class 0
  (background).
- **micro_imagewise**: TP/FP/FN summed over the classes of one image, that image's IoU/Dice, the
  mean over images (segmentation_models_pytorch ``reduction="micro-imagewise"``); over every class
  it follows each image's pixel accuracy, so **micro_imagewise_fg** sums over the foreground
  classes only (class 0 left out: SMP's binary mode), which is what a per-image "vessel Dice" or
  "nucleus Dice" means. Images whose sums are 0 (nothing to find, nothing found) are undefined
  and left out of the mean.
- **per_image**: each image's scores from its own matrix; ``iou``/``dice`` (and ``_fg``) are the
  mean over images of each image's macro score, ``accuracy`` the mean pixel accuracy, and
  ``per_class[name]`` the mean over images of that class's score; images where the score is
  undefined are excluded from each mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

SCORES = ("iou", "dice", "precision", "recall")
#: The per-image aggregate columns of ``per_image.csv``, in order.
IMAGE_AGGREGATES = (
    "mIoU",
    "mDice",
    "mIoU_fg",
    "mDice_fg",
    "acc",
    "IoU_micro",
    "Dice_micro",
    "IoU_micro_fg",
    "Dice_micro_fg",
)


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


def pixel_accuracy(confusion: np.ndarray) -> float:
    """Share of counted pixels predicted right; NaN when no pixel counts."""
    cm = np.asarray(confusion, dtype=np.float64)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def micro_scores(confusion: np.ndarray) -> dict[str, float]:
    """Pixel accuracy, micro IoU and micro Dice of a ``K x K`` matrix (see the module docstring)."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp = float(np.trace(cm))
    wrong = float(cm.sum()) - tp  # = sum of FP = sum of FN
    iou_den = tp + 2 * wrong
    return {
        "accuracy": pixel_accuracy(cm),
        "iou": tp / iou_den if iou_den else float("nan"),
        "dice": 2 * tp / (2 * tp + 2 * wrong) if iou_den else float("nan"),
    }


def micro_fg_scores(confusion: np.ndarray) -> dict[str, float]:
    """IoU and Dice of one matrix with TP/FP/FN summed over the foreground classes (1..K-1)."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp_all = np.diag(cm)
    tp = float(tp_all[1:].sum())
    fp = float((cm.sum(axis=0) - tp_all)[1:].sum())
    fn = float((cm.sum(axis=1) - tp_all)[1:].sum())
    den = tp + fp + fn
    return {
        "iou": tp / den if den else float("nan"),
        "dice": 2 * tp / (2 * tp + fp + fn) if den else float("nan"),
    }


def macro_scores(
    per_class: dict[str, np.ndarray], *, skip_background: bool = False
) -> dict[str, float]:
    """Mean of each per-class score over the classes where it is defined (class 0 left out on request)."""
    start = 1 if skip_background else 0
    return {name: nanmean(np.asarray(values)[start:]) for name, values in per_class.items()}


def image_scores(stack: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of each image from an ``N x K x K`` stack of per-image matrices.

    Returns ``iou``/``dice``/``precision``/``recall`` as ``N x K`` arrays, and per image (``N``):
    ``mIoU``/``mDice`` (mean over defined classes), ``mIoU_fg``/``mDice_fg`` (without class 0),
    ``acc`` (pixel accuracy), ``IoU_micro``/``Dice_micro`` (TP/FP/FN summed over the classes) and
    ``IoU_micro_fg``/``Dice_micro_fg`` (summed over the foreground classes); NaN where undefined.
    """
    cms = np.asarray(stack, dtype=np.float64)
    n = cms.shape[0]
    rows = [scores_from_confusion(cm) for cm in cms]
    k = cms.shape[1] if cms.ndim == 3 else 0
    out = {s: np.array([r[s] for r in rows]).reshape(n, k) for s in SCORES}
    out["mIoU"] = np.array([nanmean(r) for r in out["iou"]])
    out["mDice"] = np.array([nanmean(r) for r in out["dice"]])
    out["mIoU_fg"] = np.array([nanmean(r[1:]) for r in out["iou"]])
    out["mDice_fg"] = np.array([nanmean(r[1:]) for r in out["dice"]])
    out["acc"] = np.array([pixel_accuracy(cm) for cm in cms])
    micro = [micro_scores(cm) for cm in cms]
    micro_fg = [micro_fg_scores(cm) for cm in cms]
    out["IoU_micro"] = np.array([m["iou"] for m in micro], dtype=np.float64)
    out["Dice_micro"] = np.array([m["dice"] for m in micro], dtype=np.float64)
    out["IoU_micro_fg"] = np.array([m["iou"] for m in micro_fg], dtype=np.float64)
    out["Dice_micro_fg"] = np.array([m["dice"] for m in micro_fg], dtype=np.float64)
    return out


def evaluation_metrics(
    total: np.ndarray, stack: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Per-class, micro, macro, macro_fg and per-image aggregates (module docstring), NaN kept.

    Args:
        total: the ``K x K`` matrix summed over images.
        stack: the ``N x K x K`` per-image matrices (their sum is ``total``).
        class_names: ``K`` names in id order.

    Returns:
        A nested dict of floats (NaN where undefined): ``per_class[name][score]``, ``micro``,
        ``macro``, ``macro_fg``, ``micro_imagewise``, ``micro_imagewise_fg``, ``per_image``
        (with ``per_class[name]["iou" | "dice"]``).
    """
    per_class = scores_from_confusion(total)
    images = image_scores(stack)
    names = list(class_names)
    per_image_class = {
        name: {
            "iou": nanmean(images["iou"][:, i]),
            "dice": nanmean(images["dice"][:, i]),
            "images": int(np.count_nonzero(~np.isnan(images["iou"][:, i]))),
        }
        for i, name in enumerate(names)
    }
    return {
        "per_class": {
            name: {s: float(per_class[s][i]) for s in SCORES} for i, name in enumerate(names)
        },
        "micro": micro_scores(total),
        "macro": macro_scores(per_class),
        "macro_fg": macro_scores(per_class, skip_background=True),
        "micro_imagewise": {
            "iou": nanmean(images["IoU_micro"]),
            "dice": nanmean(images["Dice_micro"]),
        },
        "micro_imagewise_fg": {
            "iou": nanmean(images["IoU_micro_fg"]),
            "dice": nanmean(images["Dice_micro_fg"]),
        },
        "per_image": {
            "iou": nanmean(images["mIoU"]),
            "dice": nanmean(images["mDice"]),
            "iou_fg": nanmean(images["mIoU_fg"]),
            "dice_fg": nanmean(images["mDice_fg"]),
            "accuracy": nanmean(images["acc"]),
            "per_class": per_image_class,
        },
    }


def json_ready(value: Any) -> Any:
    """A copy with every NaN/inf float as None and numpy scalars/arrays as Python (for JSON)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def per_image_rows(
    stems: Sequence[str], stack: np.ndarray, names: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per image: ``stem``, ``IoU/<class>``, ``Dice/<class>``, the per-image aggregates.

    The aggregates: mIoU, mDice, mIoU_fg, mDice_fg, acc, IoU_micro, Dice_micro, IoU_micro_fg,
    Dice_micro_fg (see :func:`image_scores`).
    """
    scores = image_scores(stack)
    rows = []
    for i, stem in enumerate(stems):
        row: dict[str, Any] = {"stem": stem}
        for j, name in enumerate(names):
            row[f"IoU/{name}"] = float(scores["iou"][i, j])
            row[f"Dice/{name}"] = float(scores["dice"][i, j])
        for key in IMAGE_AGGREGATES:
            row[key] = float(scores[key][i])
        rows.append(row)
    return rows


def metric_prefix(split_label: str) -> str:
    """MLflow key prefix: ``test/`` for the test split, ``eval_<split>/`` otherwise.

    Other splits get their own prefix so they never add points to training's ``val/`` curves.
    """
    return "test/" if split_label == "test" else f"eval_{split_label}/"


def flat_metrics(metrics: dict[str, Any], total: np.ndarray, prefix: str) -> dict[str, float]:
    """Flat numbers for MLflow (``test/mIoU``, ``test/IoU/<class>``...), undefined ones dropped.

    Args:
        metrics: the result of :func:`evaluation_metrics`.
        total: the confusion matrix it was computed from.
        prefix: key prefix, e.g. ``test/``.
    """
    names = list(metrics["per_class"])
    flat = summary(total, names, prefix=prefix)
    flat[f"{prefix}micro_IoU"] = metrics["micro"]["iou"]
    flat[f"{prefix}mIoU_per_image"] = metrics["per_image"]["iou"]
    flat[f"{prefix}IoU_micro_imagewise"] = metrics["micro_imagewise"]["iou"]
    flat[f"{prefix}IoU_micro_imagewise_fg"] = metrics["micro_imagewise_fg"]["iou"]
    flat[f"{prefix}Dice_micro_imagewise_fg"] = metrics["micro_imagewise_fg"]["dice"]
    for name, scores in metrics["per_class"].items():
        flat[f"{prefix}Precision/{name}"] = scores["precision"]
        flat[f"{prefix}Recall/{name}"] = scores["recall"]
    return {k: float(v) for k, v in flat.items() if math.isfinite(v)}
