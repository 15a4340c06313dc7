"""Rasterisation shared by the importers, each following its format's reference tool.

Conventions (also in docs/formats.md):

* **COCO-style continuous coordinates** (COCO, Roboflow COCO, CVAT, Label Studio): pixel ``(x, y)``
  covers the square ``[x, x+1) x [y, y+1)``; polygons are rasterised by pycocotools, COCO's own
  API (a pixel is in when its centre is inside). A polygon through pixel corners covers exactly
  the enclosed pixels, which makes COCO export -> import lossless.
* **LabelMe**: vertices are pixel centres; shapes are drawn with Pillow as labelme's own
  ``shape_to_mask`` does (outline included, lines 10 px wide, points as disks of radius 5).
* **GeoJSON**: rasterio's pixel-centre rule (``all_touched=False``), after mapping CRS
  coordinates through the GeoTIFF's affine transform.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segflow.errors import DataError

#: A vertex may lie this share of the image size outside it (annotation tools let users drag a
#: point a little past the border; rasterisation clips it). Further out is an error.
OUT_OF_BOUNDS_TOLERANCE = 0.1


def check_bounds(
    points: np.ndarray, height: int, width: int, source: Path | str, what: str
) -> None:
    """Raise DataError when a vertex lies far outside the image (see OUT_OF_BOUNDS_TOLERANCE)."""
    if points.size == 0:
        return
    if not np.all(np.isfinite(points)):
        raise DataError(source, f"{what} has non-finite coordinates")
    tx, ty = OUT_OF_BOUNDS_TOLERANCE * width + 1, OUT_OF_BOUNDS_TOLERANCE * height + 1
    xs, ys = points[:, 0], points[:, 1]
    if xs.min() < -tx or xs.max() > width + tx or ys.min() < -ty or ys.max() > height + ty:
        far = points[
            np.argmax(np.maximum(np.abs(xs - width / 2) / width, np.abs(ys - height / 2) / height))
        ]
        raise DataError(
            source,
            f"{what} has a point at ({far[0]:g}, {far[1]:g}), far outside the {width}x{height} image",
        )


def as_points(raw: Any, source: Path | str, what: str) -> np.ndarray:
    """``[[x, y], ...]`` or a flat ``[x0, y0, x1, y1, ...]`` list as an ``N x 2`` float array."""
    try:
        arr = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(source, f"{what} has malformed coordinates") from None
    if arr.ndim == 1:
        if arr.size % 2:
            raise DataError(source, f"{what} has an odd number of coordinates")
        arr = arr.reshape(-1, 2)
    if arr.ndim != 2 or (arr.size and arr.shape[1] != 2):
        raise DataError(source, f"{what} coordinates are not (x, y) pairs")
    return arr.reshape(-1, 2)


def coco_polygons(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Union of polygons (``N x 2`` arrays), rasterised by pycocotools; bool ``H x W``."""
    from pycocotools import mask as mask_utils

    flat = [p.reshape(-1).tolist() for p in polygons if len(p) >= 3]
    if not flat:
        return np.zeros((height, width), dtype=bool)
    rles = mask_utils.frPyObjects(flat, height, width)
    mask: np.ndarray = mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    return mask


def coco_rle(
    segmentation: dict[str, Any], height: int, width: int, source: Path | str, what: str
) -> np.ndarray:
    """Decode a COCO RLE (compressed string or uncompressed list ``counts``); bool ``H x W``."""
    from pycocotools import mask as mask_utils

    size = segmentation.get("size")
    counts = segmentation.get("counts")
    if not isinstance(size, list | tuple) or len(size) != 2 or counts is None:
        raise DataError(source, f"{what}: RLE needs 'size' [h, w] and 'counts'")
    if (int(size[0]), int(size[1])) != (height, width):
        raise DataError(
            source, f"{what}: RLE size {size[1]}x{size[0]} differs from the image {width}x{height}"
        )
    try:
        if isinstance(counts, list):
            if sum(int(c) for c in counts) != height * width:
                raise DataError(
                    source, f"{what}: RLE counts sum to {sum(counts)}, not {height * width}"
                )
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = {
                "size": [height, width],
                "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
            }
        decoded: np.ndarray = mask_utils.decode(rle).astype(bool)
        return decoded
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise DataError(source, f"{what}: cannot decode RLE ({exc})") from None


def box_polygon(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """The 4 corners of an axis-aligned box, as a polygon."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def rotated_box_polygon(x: float, y: float, w: float, h: float, degrees: float) -> np.ndarray:
    """Corners of a ``w x h`` box whose top-left corner is ``(x, y)``, rotated about that corner."""
    theta = np.deg2rad(degrees)
    c, s = np.cos(theta), np.sin(theta)
    local = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    rot = np.array([[c, -s], [s, c]])
    corners: np.ndarray = local @ rot.T + np.array([x, y])
    return corners


def filled_ellipse(
    cx: float, cy: float, rx: float, ry: float, degrees: float, height: int, width: int
) -> np.ndarray:
    """A filled, rotated ellipse by CVAT's own rule; bool ``H x W``.

    CVAT (``EllipsesToMasks``) rounds the centre and the radii to whole pixels and fills with
    ``cv2.ellipse``; ``degrees`` turns clockwise on screen (y points down).
    """
    import cv2

    out = np.zeros((height, width), dtype=np.uint8)
    axes = (max(round(rx), 0), max(round(ry), 0))
    cv2.ellipse(out, (round(cx), round(cy)), axes, float(degrees), 0, 360, 1, thickness=-1)
    return out.astype(bool)
