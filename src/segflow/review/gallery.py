"""The review gallery: four thumbnails per image (JPEG files) and a paginated HTML page.

Each row shows the image, the given mask, the model's prediction and the suspicious pixels
(coloured by error kind) — or, for unlabelled images, the model's uncertainty. Thumbnails are
files under ``thumbs/`` loaded lazily, so the page stays small with thousands of images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segflow.classes import ClassInfo
from segflow.review.scoring import KINDS

THUMB_SIDE = 192
PAGE_SIZE = 25
#: Colours of the error kinds in the suspicion panel (same order as KINDS).
KIND_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 126, 34),  # missing object: orange
    (142, 68, 173),  # extra object: purple
    (231, 76, 60),  # wrong class: red
    (23, 165, 137),  # boundary off: teal
)


@dataclass(frozen=True)
class Panels:
    """The pictures of one gallery row, at full size (RGB uint8)."""

    image: np.ndarray
    given: np.ndarray | None  # None for an unlabelled image
    predicted: np.ndarray
    suspicion: np.ndarray


def labelled_panels(
    image: np.ndarray,
    mask: np.ndarray,
    pred: np.ndarray,
    kinds: np.ndarray,
    classes: Sequence[ClassInfo],
) -> Panels:
    """Image, given mask overlay, prediction overlay, suspicious pixels coloured by kind."""
    from segflow.data.visual import overlay, to_display_rgb

    rgb = to_display_rgb(image)
    dim = (rgb.astype(np.float32) * 0.45).astype(np.uint8)
    lut = np.array([(0, 0, 0), *KIND_COLORS], np.uint8)
    suspicion = np.where(kinds[:, :, None] > 0, lut[kinds], dim)
    return Panels(rgb, overlay(rgb, mask, classes), overlay(rgb, pred, classes), suspicion)


def uncertainty_panels(
    image: np.ndarray, pred: np.ndarray, heat: np.ndarray, classes: Sequence[ClassInfo]
) -> Panels:
    """Image, no mask, prediction overlay, uncertainty (0..1) as a heat map."""
    import cv2

    from segflow.data.visual import overlay, to_display_rgb

    rgb = to_display_rgb(image)
    levels = np.clip(heat * 255, 0, 255).astype(np.uint8)
    colored = cv2.applyColorMap(levels, cv2.COLORMAP_INFERNO)[:, :, ::-1]
    return Panels(rgb, None, overlay(rgb, pred, classes), np.ascontiguousarray(colored))


def write_thumbs(folder: Path, index: int, panels: Panels) -> list[str]:
    """Write the panels as JPEG thumbnails into ``folder``; their paths relative to its parent."""
    from segflow.data.visual import encode_jpeg, thumbnail

    names = []
    for tag, picture in (
        ("image", panels.image),
        ("given", panels.given),
        ("predicted", panels.predicted),
        ("suspicion", panels.suspicion),
    ):
        if picture is None:
            names.append("")
            continue
        nearest = tag != "image"  # thin suspicious bands must stay visible
        small = thumbnail(picture, THUMB_SIDE, nearest=nearest)
        name = f"{index:05d}_{tag}.jpg"
        (folder / name).write_bytes(encode_jpeg(np.ascontiguousarray(small), 85))
        names.append(f"{folder.name}/{name}")
    return names


def write_gallery(
    out: Path,
    *,
    title: str,
    rows: list[dict[str, Any]],
    labelled: bool,
    notes: list[str],
    version: str,
    created_at: str,
) -> Path:
    """Render ``review.html.j2`` to ``out`` (rows worst first, each with ``thumbs``)."""
    from segflow.report import css_color, render

    legend = [(k, css_color(c)) for k, c in zip(KINDS, KIND_COLORS, strict=True)]
    return render(
        "review.html.j2",
        out,
        title=title,
        rows=rows,
        labelled=labelled,
        notes=notes,
        legend=legend,
        page_size=PAGE_SIZE,
        version=version,
        created_at=created_at,
    )
