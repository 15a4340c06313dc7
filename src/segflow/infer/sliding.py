"""Sliding-window prediction in torch over the pure tiling functions of :mod:`tiling`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from segflow.infer.tiling import gaussian_weights, padded_size, tile_origins

PredictFn = Callable[[torch.Tensor], torch.Tensor]


def sliding_window(
    predict: PredictFn,
    image: torch.Tensor,
    *,
    tile: int,
    overlap: float = 0.25,
    batch_size: int = 4,
    blend: Literal["gaussian", "constant"] = "gaussian",
    divisor: int = 32,
) -> torch.Tensor:
    """Blend ``predict`` over tiles of a ``C x H x W`` image and return ``K x H x W`` outputs.

    ``predict`` maps an ``N x C x t x t`` batch to ``N x K x t x t`` (probabilities, usually).
    The image is padded (zeros) to at least one tile and to a multiple of ``divisor`` so no size
    is rejected; the result is cropped back. Accumulators are float32 on the image's device.
    """
    if image.ndim != 3:
        raise ValueError(f"expected C x H x W, got shape {tuple(image.shape)}")
    _, height, width = image.shape
    tile = max(divisor, (tile // divisor) * divisor)
    ph, pw = padded_size(height, width, divisor, minimum=tile)
    padded = F.pad(image, (0, pw - width, 0, ph - height))
    if blend == "gaussian":
        weight = torch.from_numpy(gaussian_weights(tile, tile)).to(image.device)
    else:
        weight = torch.ones((tile, tile), device=image.device)
    origins = tile_origins(ph, pw, tile, overlap)
    out: torch.Tensor | None = None
    norm = torch.zeros((ph, pw), dtype=torch.float32, device=image.device)
    for start in range(0, len(origins), batch_size):
        chunk = origins[start : start + batch_size]
        batch = torch.stack([padded[:, y : y + tile, x : x + tile] for y, x in chunk])
        pred = predict(batch).float()
        if out is None:
            out = torch.zeros((pred.shape[1], ph, pw), dtype=torch.float32, device=image.device)
        for (y, x), p in zip(chunk, pred, strict=True):
            out[:, y : y + tile, x : x + tile] += p * weight
            norm[y : y + tile, x : x + tile] += weight
    if out is None:  # pragma: no cover - origins is never empty
        raise RuntimeError("no tiles")
    return (out / norm)[:, :height, :width]
