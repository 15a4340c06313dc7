"""Sliding-window maths as small pure functions (numpy only, no I/O, no torch).

Tiles are laid out as nnU-Net does: the number of tiles along an axis is the smallest that keeps
the step at most ``tile * (1 - overlap)``, and the tiles are then spread evenly so the first
starts at 0 and the last ends at the border. Overlapping predictions are blended with a Gaussian
importance map (centre pixels weigh more than borders, where the network sees less context).
"""

from __future__ import annotations

import math

import numpy as np


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)``.

    Args:
        length: the image side (pixels).
        tile: the tile side; a side no longer than ``tile`` gives one tile at 0.
        overlap: wanted overlap share between neighbours, in ``[0, 1)``.
    """
    if length <= 0 or tile <= 0:
        raise ValueError(f"length ({length}) and tile ({tile}) must be positive")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap {overlap} must be in [0, 1)")
    if length <= tile:
        return [0]
    max_step = max(1, math.floor(tile * (1 - overlap)))
    n = math.ceil((length - tile) / max_step) + 1
    step = (length - tile) / (n - 1)
    return [round(i * step) for i in range(n)]


def tile_origins(
    height: int, width: int, tile: int, overlap: float, tile_w: int | None = None
) -> list[tuple[int, int]]:
    """``(y, x)`` top-left corners of the tiles covering a ``height x width`` image, row-major.

    Tiles are ``tile x tile``, or ``tile x tile_w`` when ``tile_w`` is given.
    """
    xs = tile_starts(width, tile if tile_w is None else tile_w, overlap)
    return [(y, x) for y in tile_starts(height, tile, overlap) for x in xs]


def fit_tile(height: int, width: int, tile: int, divisor: int) -> tuple[int, int]:
    """Tile ``(h, w)`` for an image already padded to a multiple of ``divisor``.

    An axis shorter than ``tile`` gets a tile of its own length (rounded up to ``divisor``), so a
    small image is one tile of its own size rather than padded up to ``tile``.
    """
    tile = max(divisor, (tile // divisor) * divisor)
    return (
        min(tile, math.ceil(height / divisor) * divisor),
        min(tile, math.ceil(width / divisor) * divisor),
    )


def gaussian_weights(
    tile_h: int, tile_w: int, sigma_scale: float = 0.125, floor: float = 1e-3
) -> np.ndarray:
    """A ``tile_h x tile_w`` float32 Gaussian importance map, peak 1, never below ``floor``.

    ``sigma = side * sigma_scale`` per axis (nnU-Net uses 1/8). The floor keeps border pixels of
    the image (covered by one tile only) from being divided by ~0.
    """
    ys = np.arange(tile_h, dtype=np.float64) - (tile_h - 1) / 2
    xs = np.arange(tile_w, dtype=np.float64) - (tile_w - 1) / 2
    gy = np.exp(-0.5 * (ys / max(tile_h * sigma_scale, 1e-6)) ** 2)
    gx = np.exp(-0.5 * (xs / max(tile_w * sigma_scale, 1e-6)) ** 2)
    weights = np.outer(gy, gx)
    weights /= weights.max()
    out: np.ndarray = np.maximum(weights, floor).astype(np.float32)
    return out


def padded_size(height: int, width: int, divisor: int, minimum: int = 0) -> tuple[int, int]:
    """The smallest size >= ``(height, width)`` (and >= ``minimum``) divisible by ``divisor``."""
    h = max(height, minimum)
    w = max(width, minimum)
    return math.ceil(h / divisor) * divisor, math.ceil(w / divisor) * divisor
