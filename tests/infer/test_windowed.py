"""Rasters larger than memory: windows in, windows out, the same masks as the in-memory path.

The threshold that makes a raster "large" (64 Mpx) is lowered for these tests so that a
~0.14 Mpx GeoTIFF takes the windowed path; the 20,000² figures (time, peak RSS) are in
benchmarks/windowed_raster.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from segflow.api import predict
from segflow.infer import windowed
from segflow.infer.predictor import Predictor
from tests.conftest import run_cli
from tests.fixtures.bundles import make_bundle

CRS = "EPSG:32633"
TRANSFORM = from_origin(500000.0, 4100000.0, 0.5, 0.5)


def _geotiff(path: Path, h: int, w: int, bands: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    data = np.stack([((xx * (b + 1) + yy * 3) // 7 % 256) for b in range(bands)]).astype(np.uint8)
    data[:, rng.integers(0, h, 500), rng.integers(0, w, 500)] = 255
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=bands, dtype="uint8",
                       crs=CRS, transform=TRANSFORM, tiled=True) as dst:  # fmt: skip
        dst.write(data)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("windowed")
    return {
        "multi": make_bundle(tmp / "multi.segflow", classes=3, tile=64),
        "binary": make_bundle(tmp / "binary.segflow", classes=2, tile=64),
        "scene": _geotiff(tmp / "scene.tif", 330, 420),
    }


@pytest.fixture
def small_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(windowed, "MIN_PIXELS", 100_000)


@pytest.mark.parametrize("kind", ["multi", "binary"])
def test_windowed_equals_in_memory_and_keeps_the_georeference(setup, tmp_path, kind) -> None:
    predictor = Predictor.from_bundles(setup[kind], backend="torch")
    whole = predictor.predict_path(setup["scene"], probs=True)
    out = windowed.predict_windowed(predictor, setup["scene"], tmp_path, probs=True)
    assert out is not None and set(out) == {"mask_geotiff", "probs"}
    with rasterio.open(out["mask_geotiff"]) as src:
        labels = src.read(1)
        assert src.crs == rasterio.crs.CRS.from_string(CRS) and src.transform == TRANSFORM
        assert src.profile["tiled"] and src.compression.name == "deflate"
    np.testing.assert_array_equal(labels, whole.labels)  # bit for bit
    assert len(np.unique(labels)) > 1  # a real prediction, not a constant
    with rasterio.open(out["probs"]) as src:
        probs = src.read()
    expected = np.clip(np.rint(whole.probs * 255.0), 0, 255).astype(np.uint8)
    assert probs.shape == expected.shape
    assert np.abs(probs.astype(int) - expected).max() <= 1  # float32 sums in another order
    assert not list(tmp_path.glob(".*tmp*"))


def test_only_bands_of_rows_are_read(setup, tmp_path, monkeypatch) -> None:
    """The memory bound: no read spans more than a band of tile rows (here 330 rows in all)."""
    seen: list[int] = []
    original = windowed.RasterRows.__getitem__

    def spy(self, key):
        out = original(self, key)
        seen.append(self.max_rows)
        return out

    monkeypatch.setattr(windowed.RasterRows, "__getitem__", spy)
    predictor = Predictor.from_bundles(setup["multi"], backend="torch")
    assert windowed.predict_windowed(predictor, setup["scene"], tmp_path) is not None
    assert seen and max(seen) == 64  # one tile row at a time


def test_predict_takes_the_windowed_path_for_large_rasters(
    setup, tmp_path, small_threshold
) -> None:
    """Default settings of ``segflow predict`` (colour + overlay on): the label GeoTIFF is the
    mask, and the outputs that need the whole image are not written (a log line says so)."""
    res = run_cli("predict", setup["multi"], setup["scene"], "--out", tmp_path / "out",
                  "--backend", "torch")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["scene_mask.tif"]
    predictor = Predictor.from_bundles(setup["multi"], backend="torch")
    with rasterio.open(tmp_path / "out" / "scene_mask.tif") as src:
        np.testing.assert_array_equal(src.read(1), predictor.predict_path(setup["scene"]).labels)
    res = run_cli("predict", setup["multi"], setup["scene"], "--out", tmp_path / "poly",
                  "--polygons", "geojson")  # fmt: skip
    assert res.exit_code == 2 and "--polygons needs the whole label image" in res.stderr
    assert not (tmp_path / "poly").exists()


def test_post_processing_and_fallbacks(setup, tmp_path, small_threshold) -> None:
    predictor = Predictor.from_bundles(
        setup["multi"], backend="torch", postprocess={"min_size": {1: 50, 2: 50}}
    )
    out = windowed.predict_windowed(predictor, setup["scene"], tmp_path)
    assert out is not None
    with rasterio.open(out["mask_geotiff"]) as src:
        np.testing.assert_array_equal(src.read(1), predictor.predict_path(setup["scene"]).labels)
    ensemble = Predictor.from_bundles([setup["multi"], setup["multi"]], backend="torch")
    assert windowed.predict_windowed(ensemble, setup["scene"], tmp_path / "e") is None  # whole
    grey = _geotiff(tmp_path / "grey.tif", 320, 330, bands=1)  # 1 band -> 3: a conversion
    files = predict(setup["multi"], grey, out=tmp_path / "g", backend="torch")
    assert set(files[0]) >= {"mask", "mask_geotiff"}  # read whole, every output written
