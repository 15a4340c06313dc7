"""Pictures and the HTML report of ``segflow eval``.

Case pictures put four panels side by side: the image, the truth overlay, the prediction overlay
and an error map. In the error map correct pixels show the darkened image, false positives
(foreground predicted on background) are red, false negatives (foreground predicted as
background) blue, foreground given the wrong foreground class yellow, and ignored or
out-of-ROI pixels flat grey.
"""

from __future__ import annotations

import base64
import logging
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segflow._version import __version__
from segflow.classes import ClassInfo
from segflow.report._html import css_color, figure_uri, new_figure, render
from segflow.report.curves import plot_curves, read_history

log = logging.getLogger("segflow.eval")

#: Longer side of each panel of a case picture, in pixels.
CASE_SIDE = 256
#: Error-map colours (RGB), also listed in the report's legend.
ERROR_COLORS: dict[str, tuple[int, int, int]] = {
    "false positive": (230, 40, 40),
    "false negative": (40, 110, 240),
    "wrong class": (245, 190, 30),
    "ignored or outside the ROI": (170, 170, 170),
}
#: Above this many classes the confusion matrix is drawn without the numbers in its cells.
MAX_ANNOTATED_CLASSES = 16


# -- case pictures ---------------------------------------------------------------------------------
def error_codes(
    truth: np.ndarray, pred: np.ndarray, ignore_index: int, roi: np.ndarray | None = None
) -> np.ndarray:
    """``H x W`` uint8: 0 correct, 1 false positive, 2 false negative, 3 wrong class, 4 ignored.

    Class 0 is background: a false positive is foreground predicted where the truth is
    background, a false negative the reverse, a wrong class two different foreground classes.
    """
    codes = np.zeros(truth.shape, dtype=np.uint8)
    wrong = truth != pred
    codes[wrong & (truth == 0)] = 1
    codes[wrong & (pred == 0) & (truth != 0)] = 2
    codes[wrong & (truth != 0) & (pred != 0)] = 3
    ignored = truth == ignore_index
    if roi is not None:
        ignored |= ~roi.astype(bool, copy=False)
    codes[ignored] = 4
    return codes


def _fit(image: np.ndarray, side: int, nearest: bool) -> np.ndarray:
    """Resize so the longer side is ``side`` (up or down)."""
    import cv2

    h, w = image.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return image
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interp)


def case_picture(
    image: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    classes: Sequence[ClassInfo],
    ignore_index: int = 255,
    roi: np.ndarray | None = None,
    side: int = CASE_SIDE,
) -> np.ndarray:
    """``image | truth overlay | prediction overlay | errors`` as one RGB uint8 picture."""
    import cv2

    from segflow.data.visual import overlay, to_display_rgb

    rgb = _fit(to_display_rgb(image), side, nearest=False)
    small_truth = _fit(truth, side, nearest=True)
    small_pred = _fit(pred, side, nearest=True)
    codes = _fit(error_codes(truth, pred, ignore_index, roi), side, nearest=True)
    grey = rgb.mean(axis=2, keepdims=True) * 0.4
    errors = np.repeat(grey, 3, axis=2).astype(np.uint8)
    for code, color in enumerate(ERROR_COLORS.values(), start=1):
        errors[codes == code] = color
    shown_truth = small_truth.copy()
    if roi is not None:
        shown_truth[~_fit(roi.astype(np.uint8), side, nearest=True).astype(bool)] = 255
    panels = [
        rgb,
        overlay(rgb, shown_truth, classes),
        overlay(rgb, small_pred, classes),
        errors,
    ]
    h, w = rgb.shape[:2]
    gap, head = 4, 18
    canvas = np.full((h + head, 4 * w + 3 * gap, 3), 255, dtype=np.uint8)
    for i, (panel, title) in enumerate(
        zip(panels, ("image", "truth", "prediction", "errors"), strict=True)
    ):
        x = i * (w + gap)
        canvas[head:, x : x + w] = panel
        cv2.putText(
            canvas, title, (x + 2, head - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (40, 40, 40), 1,
            cv2.LINE_AA,
        )  # fmt: skip
    return canvas


# -- figures ---------------------------------------------------------------------------------------
def confusion_figure(confusion: np.ndarray, names: Sequence[str], out: Path) -> Path:
    """Row-normalised confusion matrix (share of each true class) with counts, saved as PNG."""
    cm = np.asarray(confusion, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(rows > 0, cm / rows, 0.0)
    k = len(names)
    side = min(3.0 + 0.6 * k, 24.0)
    fig = new_figure(side + 1.2, side)
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    if k <= MAX_ANNOTATED_CLASSES:
        for t in range(k):
            for p in range(k):
                share = f"{norm[t, p]:.2f}" if rows[t, 0] else "–"
                ax.text(
                    p, t, f"{share}\n{int(cm[t, p]):,}", ha="center", va="center",
                    fontsize=7, color="white" if norm[t, p] > 0.5 else "#1d2330",
                )  # fmt: skip
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(out)
    return out


def class_chart(
    names: Sequence[str], colors: Sequence[tuple[int, int, int]], per_class: dict[str, Any]
) -> str:
    """Horizontal bars of IoU (in the class colour) and Dice per class, as a data URI.

    An undefined score (class absent from truth and prediction) is written as "undefined".
    """
    from matplotlib.patches import Patch

    fig = new_figure(7.0, 0.8 + 0.35 * max(len(names), 2))
    ax = fig.subplots()
    y = np.arange(len(names))
    iou = np.array([per_class[n]["iou"] for n in names], dtype=np.float64)
    dice = np.array([per_class[n]["dice"] for n in names], dtype=np.float64)
    ax.barh(y - 0.2, np.nan_to_num(iou), height=0.4, edgecolor="#555",
            color=[np.array(c) / 255 for c in colors])  # fmt: skip
    ax.barh(y + 0.2, np.nan_to_num(dice), height=0.4, color="#bbc4d6", edgecolor="#555")
    for i in np.flatnonzero(np.isnan(iou)):
        ax.text(0.01, y[i], "undefined", va="center", fontsize=7, color="#667")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("score (whole split)")
    handles = [Patch(facecolor="#777", label="IoU (class colour)"),
               Patch(facecolor="#bbc4d6", edgecolor="#555", label="Dice")]  # fmt: skip
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    return figure_uri(fig)


def iou_histogram(scores: Sequence[float]) -> str:
    """Histogram of the per-image foreground mean IoU (data URI); undefined images left out."""
    values = [s for s in scores if not math.isnan(s)]
    fig = new_figure(6.0, 2.8)
    ax = fig.subplots()
    ax.hist(values, bins=np.linspace(0, 1, 21).tolist(), color="#2e86c1", edgecolor="#fff")
    ax.set_xlabel("per-image mean IoU (foreground classes)")
    ax.set_ylabel("images")
    ax.set_xlim(0, 1)
    return figure_uri(fig)


def plot_history(history: Path, out: Path) -> Path | None:
    """Training curves from a run's ``history.csv`` (when the run has no ``curves.png``)."""
    rows = read_history(history)
    return plot_curves(rows, out) if rows else None


def png_uri(path: Path) -> str:
    """Data URI of a PNG file."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def jpeg_file_uri(data: bytes) -> str:
    """Data URI of JPEG bytes."""
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def copy_curves(run: Path | None, out: Path) -> Path | None:
    """Copy the run's ``curves.png`` (or plot its ``history.csv``) into ``out``."""
    if run is None:
        return None
    target = out / "curves.png"
    if (run / "curves.png").is_file():
        tmp = target.with_name(".curves.png.tmp")
        shutil.copyfile(run / "curves.png", tmp)
        tmp.replace(target)
        return target
    if (run / "history.csv").is_file():
        try:
            return plot_history(run / "history.csv", target)
        except (OSError, ValueError) as exc:
            log.warning("could not plot %s (%s)", run / "history.csv", exc)
    return None


# -- the report ------------------------------------------------------------------------------------
def write_eval_report(
    out: Path,
    metrics: dict[str, Any],
    classes: Sequence[ClassInfo],
    per_image_iou_fg: Sequence[float],
    cases: dict[str, list[dict[str, Any]]],
    confusion_png: Path,
    curves_png: Path | None,
) -> Path:
    """Render ``report.html`` (self-contained: every picture embedded).

    Args:
        out: the report path.
        metrics: the contents of ``metrics.json`` (NaN where undefined).
        classes: the classes, for names and colours.
        per_image_iou_fg: each image's foreground mean IoU, for the histogram.
        cases: ``{"worst": [...], "best": [...]}``, each case a dict with ``stem``, ``score``,
            ``acc`` and ``jpeg`` (bytes).
        confusion_png: the confusion-matrix picture.
        curves_png: the training curves, when the model comes from a run folder.
    """
    names = [c.name for c in classes]
    counts = metrics["counts"]["per_class"]
    class_rows = [
        {
            "id": c.id,
            "name": c.name,
            "color": c.color,
            **metrics["per_class"][c.name],
            "truth": counts[c.name]["truth"],
            "images": counts[c.name]["images"],
            "image_iou": metrics["per_image"]["per_class"][c.name]["iou"],
        }
        for c in classes
    ]
    figures = [
        ("Per-class scores", class_chart(names, [c.color for c in classes], metrics["per_class"])),
        ("Per-image IoU", iou_histogram(per_image_iou_fg)),
    ]
    case_cards = {
        kind: [{**c, "uri": jpeg_file_uri(c["jpeg"])} for c in items]
        for kind, items in cases.items()
    }
    return render(
        "eval.html.j2",
        out,
        m=metrics,
        class_rows=class_rows,
        figures=figures,
        confusion_uri=png_uri(confusion_png),
        curves_uri=png_uri(curves_png) if curves_png is not None else None,
        cases=case_cards,
        legend=[(name, css_color(rgb)) for name, rgb in ERROR_COLORS.items()],
        version=__version__,
        created_at=metrics["created_at"],
    )
