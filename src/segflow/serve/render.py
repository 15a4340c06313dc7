"""A label map -> the bytes of one response format (PNG / WebP mask, overlay JPEG, JSON summary)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from segflow.classes import ClassInfo

Format = Literal["png", "webp", "json", "overlay"]
FORMATS: tuple[Format, ...] = ("png", "webp", "json", "overlay")
MEDIA_TYPES: dict[Format, str] = {
    "png": "image/png",
    "webp": "image/webp",
    "json": "application/json",
    "overlay": "image/jpeg",
}


def encode_mask(labels: np.ndarray, fmt: Literal["png", "webp"]) -> bytes:
    """Class ids as a lossless image the size of the input.

    PNG is single-channel 8-bit. WebP has no grey mode: the lossless WebP holds the class id in
    each of its three channels.
    """
    import cv2

    mask = np.ascontiguousarray(labels, dtype=np.uint8)
    if fmt == "png":
        ok, buf = cv2.imencode(".png", mask)
    else:
        # quality above 100 selects lossless WebP in OpenCV
        ok, buf = cv2.imencode(".webp", mask, [cv2.IMWRITE_WEBP_QUALITY, 101])
    if not ok:
        raise ValueError(f"{fmt} encoding failed")
    return bytes(buf.tobytes())


def encode_overlay(image: np.ndarray, labels: np.ndarray, classes: Sequence[ClassInfo]) -> bytes:
    """The class colours blended onto the image (as ``segflow predict``'s overlay), JPEG."""
    from segflow.data.visual import encode_jpeg, overlay

    return encode_jpeg(overlay(image, labels, classes))


def summary(
    labels: np.ndarray, classes: Sequence[ClassInfo], *, with_polygons: bool = True
) -> dict[str, Any]:
    """Size, per-class pixel areas and (optionally) GeoJSON polygons in pixel coordinates.

    Polygons follow ``segflow predict --polygons geojson``: one feature per connected region
    of each foreground class, holes kept, x right and y down, pixel corners as vertices.
    """
    from segflow.data.image_io import class_histogram

    height, width = labels.shape
    counts = class_histogram(labels)
    total = float(height * width)
    out: dict[str, Any] = {
        "width": int(width),
        "height": int(height),
        "classes": [
            {
                "id": c.id,
                "name": c.name,
                "color": list(c.color),
                "pixels": int(counts[c.id]),
                "fraction": float(counts[c.id]) / total,
            }
            for c in classes
        ],
    }
    if with_polygons:
        from segflow.infer.outputs import polygons

        out["polygons"] = {"type": "FeatureCollection", "features": polygons(labels, classes)}
    return out
