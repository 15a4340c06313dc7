"""Training curves (loss, validation metrics, learning rate per epoch) as one PNG.

The one plotting rule for curves: training's ``curves.png`` (drawn by the history callback as
epochs finish) and the evaluation report's fallback for a run folder that has only
``history.csv`` both call :func:`plot_curves`, so the two pictures are the same.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from segflow.report._html import new_figure

#: (history column, panel) pairs drawn, in legend order.
CURVES: tuple[tuple[str, str], ...] = (
    ("train/loss_epoch", "loss"),
    ("val/loss", "loss"),
    ("val/mIoU", "validation"),
    ("val/mDice", "validation"),
    ("val/mIoU_fg", "validation"),
    ("lr", "learning rate"),
)


def plot_curves(rows: Sequence[Mapping[str, float]], out: Path) -> Path:
    """Draw ``rows`` to the PNG ``out`` (through a temporary file and a rename).

    Each row is one epoch with an ``epoch`` key; a NaN or absent value is a curve not measured.
    """
    fig = new_figure(9.0, 3.2)
    titles = list(dict.fromkeys(panel for _, panel in CURVES))
    axes = dict(zip(titles, fig.subplots(1, len(titles)), strict=True))
    epochs = [r["epoch"] for r in rows]
    for key, panel in CURVES:
        ys = [r.get(key, math.nan) for r in rows]
        if any(not math.isnan(y) for y in ys):
            axes[panel].plot(epochs, ys, marker="o", markersize=3, label=key.replace("_epoch", ""))
    for title, ax in axes.items():
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        if ax.lines:
            ax.legend(fontsize=7)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(out)
    return out


def read_history(path: Path) -> list[dict[str, float]]:
    """The rows of a run's ``history.csv`` (empty cells NaN); [] without an ``epoch`` column."""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "epoch" not in rows[0]:
        return []
    return [{k: float(v) if v else math.nan for k, v in r.items()} for r in rows]
