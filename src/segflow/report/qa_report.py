"""The HTML report of ``segflow check``: findings, class balance, sizes and overlays."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segflow._version import __version__
from segflow.data import image_io
from segflow.data.dataset import CanonicalDataset
from segflow.errors import SegflowError
from segflow.report._html import figure_uri, jpeg_uri, new_figure, render

if TYPE_CHECKING:
    from segflow.data.qa import CheckResult, SampleScan

#: Overlays shown in the report (samples with findings first).
MAX_OVERLAYS = 48
THUMB_SIDE = 320


def _class_plot(rows: list[dict[str, Any]]) -> str:
    fig = new_figure(7.0, 0.5 + 0.32 * max(len(rows), 2))
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    names = [r["name"] for r in rows]
    colors = [np.array(r["color"]) / 255 for r in rows]
    y = np.arange(len(rows))
    ax1.barh(y, [max(r["frequency"], 1e-9) for r in rows], color=colors, edgecolor="#555")
    ax1.set_xscale("log")
    ax1.set_xlabel("share of labelled pixels (log)")
    ax1.set_yticks(y, names)
    ax1.invert_yaxis()
    ax2.barh(y, [r["images"] for r in rows], color=colors, edgecolor="#555")
    ax2.set_xlabel("images containing the class")
    return figure_uri(fig)


def _size_plot(scans: list[SampleScan]) -> str:
    fig = new_figure(7.0, 3.0)
    ax1, ax2 = fig.subplots(1, 2)
    stats = [s.stats for s in scans if s.stats is not None]
    heights = [s.height for s in stats]
    widths = [s.width for s in stats]
    bins = min(30, max(5, len(stats) // 2))
    ax1.hist([heights, widths], bins=bins, label=["height", "width"], color=["#2e86c1", "#d68910"])
    ax1.set_xlabel("pixels")
    ax1.set_ylabel("images")
    ax1.legend()
    ax2.scatter(widths, heights, s=12, alpha=0.6, color="#1d2330")
    ax2.set_xlabel("width")
    ax2.set_ylabel("height")
    ax2.set_title("image sizes", fontsize=9)
    return figure_uri(fig)


def _overlay_cards(dataset: CanonicalDataset, result: CheckResult) -> list[dict[str, Any]]:
    from segflow.data.visual import overlay, thumbnail, to_display_rgb

    severity: dict[str, str] = {}
    note: dict[str, str] = {}
    for f in result.report.findings:
        if f.severity.value == "info":
            continue
        for stem in f.stems:
            if severity.get(stem) != "error":
                severity[stem] = f.severity.value
                note[stem] = f.check
    scans = result.scans
    flagged = [s for s in scans if s.stem in severity]
    rest = [s for s in scans if s.stem not in severity]
    room = max(MAX_OVERLAYS - len(flagged), 0)
    if len(rest) > room:
        idx = np.linspace(0, len(rest) - 1, room).round().astype(int).tolist() if room else []
        rest = [rest[i] for i in idx]
    names = {c.id: c.name for c in dataset.meta.classes}
    cards = []
    for s in (flagged + rest)[:MAX_OVERLAYS]:
        try:
            image = image_io.read_image(s.image_file)
        except SegflowError:
            continue
        small = thumbnail(to_display_rgb(image), THUMB_SIDE)
        if s.mask_file is not None and s.ok:
            mask = image_io.read_mask(s.mask_file)
            small_mask = thumbnail(mask, THUMB_SIDE, nearest=True)
            if small_mask.shape == small.shape[:2]:
                small = overlay(small, small_mask, dataset.meta.classes)
        present = [names.get(c, str(c)) for c in s.present_classes() if c != 0]
        cards.append(
            {
                "stem": s.stem,
                "uri": jpeg_uri(small),
                "height": s.stats.height if s.stats else 0,
                "width": s.stats.width if s.stats else 0,
                "classes": ", ".join(present) if s.mask_file else "no mask",
                "severity": severity.get(s.stem, ""),
                "note": note.get(s.stem, ""),
            }
        )
    return cards


def write_qa_report(dataset: CanonicalDataset, result: CheckResult, out: Path) -> Path:
    """Render the QA report for ``result`` to ``out``."""
    fp = result.report.fingerprint
    class_rows: list[dict[str, Any]] = []
    if fp is not None:
        colors = {c.id: c.color for c in dataset.meta.classes}
        class_rows = [{**c.model_dump(), "color": colors[c.id]} for c in fp.classes]
    plots = []
    if class_rows:
        plots.append(("Class balance", _class_plot(class_rows)))
    if any(s.stats is not None for s in result.scans):
        plots.append(("Image sizes", _size_plot(result.scans)))
    return render(
        "qa.html.j2",
        out,
        name=dataset.meta.name,
        root=str(dataset.root),
        report=result.report,
        fingerprint=fp,
        class_rows=class_rows,
        plots=plots,
        overlays=_overlay_cards(dataset, result),
        version=__version__,
        created_at=result.report.created_at,
    )
