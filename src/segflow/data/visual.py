"""Pictures of data: display conversion, colour masks, overlays and thumbnails (numpy + OpenCV)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segflow.classes import ClassInfo


def to_display_rgb(image: np.ndarray) -> np.ndarray:
    """An ``H x W x 3`` uint8 view of any image, for display.

    Grey becomes RGB, more than 3 bands keep the first 3, 16-bit and float data are stretched
    between their 1st and 99th percentile (how remote-sensing viewers show raw bands).
    """
    arr = image if image.ndim == 3 else image[:, :, None]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 2:
        arr = np.concatenate([arr, arr[:, :, :1]], axis=2)
    elif arr.shape[2] > 3:
        arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    data = arr.astype(np.float32)
    finite = np.isfinite(data)
    if not finite.all():  # NaN/inf pixels (reported by check) are shown black
        data = np.where(finite, data, np.float32(np.nanmin(data[finite]) if finite.any() else 0))
    lo, hi = np.percentile(data, [1, 99])
    if hi <= lo:
        hi = lo + 1.0
    out: np.ndarray = np.clip((data - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    return out


def palette_array(
    classes: Sequence[ClassInfo], ignore_color: tuple[int, int, int] = (255, 255, 255)
) -> np.ndarray:
    """A 256 x 3 uint8 lookup table from class id to colour.

    Ids without a class are magenta (so invalid mask values stand out); 255 is ``ignore_color``.
    """
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:] = (255, 0, 255)
    for c in classes:
        lut[c.id] = c.color
    lut[255] = ignore_color
    return lut


def colorize(mask: np.ndarray, classes: Sequence[ClassInfo]) -> np.ndarray:
    """Colour mask ``H x W x 3`` uint8 from class ids."""
    colored: np.ndarray = palette_array(classes)[mask]
    return colored


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    classes: Sequence[ClassInfo],
    alpha: float = 0.5,
    background_id: int | None = 0,
) -> np.ndarray:
    """Blend the coloured mask onto the image.

    Background pixels stay untouched; ignore pixels are tinted lightly so unlabelled areas stay
    visible.
    """
    rgb = to_display_rgb(image).astype(np.float32)
    colors = colorize(mask, classes).astype(np.float32)
    paint = np.ones(mask.shape, dtype=bool) if background_id is None else mask != background_id
    a = np.where(paint, alpha, 0.0)[:, :, None]
    a[mask == 255] = 0.25
    out = rgb * (1 - a) + colors * a
    blended: np.ndarray = out.clip(0, 255).astype(np.uint8)
    return blended


def thumbnail(image: np.ndarray, max_side: int, nearest: bool = False) -> np.ndarray:
    """Downscale so the longer side is at most ``max_side`` (never upscales)."""
    import cv2

    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(image, size, interpolation=interp)


def encode_jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    """JPEG bytes of an RGB uint8 image."""
    import cv2

    ok, buf = cv2.imencode(
        ".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()
