"""Tiling primitives: coverage, even spread, Gaussian weights."""

from __future__ import annotations

import numpy as np
import pytest

from segflow.infer.tiling import gaussian_weights, padded_size, tile_origins, tile_starts


@pytest.mark.parametrize("length", [1, 63, 64, 65, 100, 511, 512, 513, 1000, 4096])
@pytest.mark.parametrize("tile", [64, 512])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_tiles_cover_and_respect_the_step(length: int, tile: int, overlap: float) -> None:
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0
    if length <= tile:
        assert starts == [0]
        return
    assert starts[-1] + tile == length  # last tile ends at the border
    steps = np.diff(starts)
    assert (steps > 0).all() and steps.max() <= max(1, int(tile * (1 - overlap)))
    assert steps.max() - steps.min() <= 1  # spread evenly
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(10, 4, 1.0)
    with pytest.raises(ValueError, match="positive"):
        tile_starts(0, 4, 0.2)


def test_origins_row_major_and_padded_size() -> None:
    assert tile_origins(100, 60, 64, 0.25) == [(0, 0), (36, 0)]
    assert padded_size(100, 60, 32) == (128, 64)
    assert padded_size(10, 10, 32, minimum=64) == (64, 64)


def test_gaussian_weights() -> None:
    w = gaussian_weights(64, 32)
    assert w.shape == (64, 32) and w.dtype == np.float32
    assert w.max() == pytest.approx(1.0) and w.min() >= 1e-3
    assert w[32, 16] > w[0, 0] and np.allclose(w, w[::-1, ::-1])
