"""Bounds on the work of one request: checked before it starts, stopped when its time is up.

A small upload can still ask for a great deal of work: a tiny tile with a high overlap and every
TTA flip multiplies the network calls. Before predicting, :func:`check_work` estimates the cost
the way the predictor tiles (tiles x tile area x TTA passes x models, on the decoded image's size)
and refuses a request over the server's budget with 422. :func:`check_output` refuses formats
whose encoder cannot hold the image (WebP sides <= 16383 px, JPEG <= 65500 px) before any work.

The prediction then runs with a deadline: :func:`with_deadline` gives the predictor a per-batch
hook that stops it once the request's time is up, so a prediction whose client was already
answered 504 gives its slot back within one batch of tiles, not whenever it would have ended.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from segflow.errors import UsageError

#: Largest side each encoder can write (libwebp: 16383; libjpeg: 65500).
MAX_SIDE = {"webp": 16383, "overlay": 65500}


class WorkTooLargeError(UsageError):
    """The request would cost more than the server's budget (HTTP 422)."""


class PredictionStoppedError(Exception):
    """The request's time was up; the prediction stopped between two batches of tiles."""


def check_output(fmt: str, height: int, width: int) -> None:
    """Refuse a response format whose encoder cannot hold a ``height x width`` image.

    Raises:
        UsageError: WebP with a side over 16383 px, or the overlay (JPEG) over 65500 px.
    """
    limit = MAX_SIDE.get(fmt)
    if limit is not None and max(height, width) > limit:
        kind = "WebP" if fmt == "webp" else "the JPEG overlay"
        raise UsageError(
            f"format={fmt}: {kind} holds at most {limit} px a side and this image is "
            f"{width}x{height}; ask for format=png (or format=json)"
        )


def work_estimate(predictor: Any, height: int, width: int) -> tuple[int, int] | None:
    """``(tiles, network-input pixels)`` the predictor will run on a ``height x width`` image.

    Counts every model of an ensemble and every TTA pass, tiled exactly as the predictor tiles
    (the bundle's ``preprocess.resize`` if any, padding to the network stride, then ``tile`` /
    ``overlap``; a ``preprocess.roi`` crop only makes it smaller). None for a predictor without
    ``members`` (an injected fake): nothing to estimate.
    """
    from segflow.infer.predictor import DIVISOR
    from segflow.infer.tiling import fit_tile, padded_size, tile_starts

    members = getattr(predictor, "members", None)
    if not members:
        return None
    tiles = pixels = 0
    for m in members:
        resize = getattr(getattr(getattr(m, "preprocessor", None), "cfg", None), "resize", None)
        size = (int(resize[0]), int(resize[1])) if resize else (height, width)  # ROI only shrinks
        ph, pw = padded_size(*size, DIVISOR)
        th, tw = fit_tile(ph, pw, int(m.tile), DIVISOR)
        count = len(tile_starts(ph, th, m.overlap)) * len(tile_starts(pw, tw, m.overlap))
        passes = 1 + len(m.tta)
        tiles += count * passes
        pixels += count * passes * th * tw
    return tiles, pixels


def check_work(predictor: Any, height: int, width: int, *, budget: int, max_tiles: int) -> None:
    """Refuse a request whose estimated work is over the budget, before it starts.

    Raises:
        WorkTooLargeError: more than ``max_tiles`` tiles or ``budget`` network-input pixels.
    """
    estimate = work_estimate(predictor, height, width)
    if estimate is None:
        return
    tiles, pixels = estimate
    if tiles <= max_tiles and pixels <= budget:
        return
    first = predictor.members[0]
    passes = 1 + len(first.tta)
    raise WorkTooLargeError(
        f"this request would run {tiles:,} tiles ({pixels / 1e6:,.0f} Mpx of network input: "
        f"tile {first.tile}, overlap {first.overlap:g}, {passes} pass(es) on {width}x{height}); "
        f"this server allows {max_tiles:,} tiles and {budget / 1e6:,.0f} Mpx per request: use "
        "a larger tile, a smaller overlap or fewer tta flips"
    )


def with_deadline(predictor: Any, deadline: float) -> Any:
    """A shallow copy of ``predictor`` that stops between batches of tiles after ``deadline``.

    ``deadline`` is a :func:`time.monotonic` time. Predictors without the ``on_tiles`` hook are
    returned as they are (they cannot be stopped, only abandoned).
    """
    if not hasattr(predictor, "on_tiles"):
        return predictor
    previous = predictor.on_tiles

    def stop_when_late(done: int, total: int) -> None:
        if time.monotonic() > deadline and done < total:
            raise PredictionStoppedError(f"stopped after {done} of {total} tiles")
        if previous is not None:
            previous(done, total)

    variant = copy.copy(predictor)
    variant.on_tiles = stop_when_late
    return variant
