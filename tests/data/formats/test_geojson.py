"""GeoJSON importer on the SpaceNet/solaris files and on generated GeoTIFFs and plain images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio import features
from rasterio.transform import Affine
from rasterio.warp import transform as warp_transform

from segflow.data.formats.base import ImportOptions, run_import
from segflow.data.image_io import read_image, read_mask
from segflow.errors import DataError, UsageError

SOLARIS = "geojson/spacenet_solaris"


def _reference(geojson: Path, transform: Affine) -> np.ndarray:
    """Independent rasterisation: every feature burnt with rasterio, pixel-centre rule."""
    doc = json.loads(geojson.read_text())
    shapes = [(f["geometry"], 1) for f in doc["features"]]
    return features.rasterize(shapes, out_shape=(900, 900), transform=transform, dtype="uint8")


def _import_one(real: Path, out: Path, name: str, **options) -> tuple[np.ndarray, dict]:
    """Import one fixture GeoJSON with --images naming the GeoTIFF file."""
    tif = real / SOLARIS / "sample_geotiff.tif"
    report = run_import("geojson", real / SOLARIS / name, out, ImportOptions(images=tif, **options))
    return read_mask(out / "masks" / f"{Path(name).stem}.png"), report.class_pixels


def test_utm_file_via_crs_and_pixel_file_via_auto(real: Path, tmp_path: Path) -> None:
    with rasterio.open(real / SOLARIS / "sample_geotiff.tif") as ds:
        geo_transform = ds.transform
    utm_mask, utm_counts = _import_one(real, tmp_path / "utm", "geotiff_labels.geojson")
    px_mask, px_counts = _import_one(real, tmp_path / "px", "gj_to_px_result.geojson")
    utm_ref = _reference(real / SOLARIS / "geotiff_labels.geojson", geo_transform)
    px_ref = _reference(real / SOLARIS / "gj_to_px_result.geojson", Affine.identity())
    np.testing.assert_array_equal(utm_mask, utm_ref)
    np.testing.assert_array_equal(px_mask, px_ref)
    # 33,818 is also solaris's own reference mask; the pixel file declares the UTM crs but holds
    # pixel coordinates that solaris rounded to whole pixels, so it differs by a few pixels.
    assert utm_counts["foreground"] == int(utm_ref.sum()) == 33818
    assert px_counts["foreground"] == int(px_ref.sum()) == 33821
    union = np.logical_or(utm_mask, px_mask).sum()
    assert np.logical_and(utm_mask, px_mask).sum() / union > 0.97
    explicit, _ = _import_one(real, tmp_path / "crs", "geotiff_labels.geojson", coords="crs")
    np.testing.assert_array_equal(explicit, utm_mask)
    forced, _ = _import_one(real, tmp_path / "pixel", "gj_to_px_result.geojson", coords="pixel")
    np.testing.assert_array_equal(forced, px_mask)


def test_folder_pairs_the_only_image_and_keeps_16_bit(real: Path, tmp_path: Path) -> None:
    src = real / SOLARIS
    report = run_import("geojson", src, tmp_path / "ds")
    assert [s.stem for s in report.samples] == ["geotiff_labels", "gj_to_px_result"]
    assert report.meta.class_names == ["background", "foreground"]  # 'name' = "Occlusion" unused
    assert "2 file(s) paired with the only image" in report.meta.notes
    image = tmp_path / "ds" / "images" / "geotiff_labels.tif"
    assert image.read_bytes() == (src / "sample_geotiff.tif").read_bytes()
    arr = read_image(image)
    assert arr.shape == (900, 900, 1) and arr.dtype == np.uint16
    assert report.warnings == []


def test_label_property_and_missing_values(real: Path, tmp_path: Path) -> None:
    tif = real / SOLARIS / "sample_geotiff.tif"
    gj = real / SOLARIS / "geotiff_labels.geojson"
    report = run_import(
        "geojson", gj, tmp_path / "a", ImportOptions(images=tif, label_property="building")
    )
    assert report.meta.class_names == ["background", "yes"]
    report = run_import(
        "geojson", gj, tmp_path / "b", ImportOptions(images=tif, label_property="name")
    )
    assert report.meta.class_names == ["background", "Occlusion"]
    assert any("20 feature(s) without the 'name' property skipped" in w for w in report.warnings)
    with pytest.raises(
        DataError, match=r"geotiff_labels\.geojson: feature \d+ has no 'name' property"
    ):
        run_import(
            "geojson",
            gj,
            tmp_path / "c",
            ImportOptions(images=tif, label_property="name", strict=True),
        )
    with pytest.raises(DataError, match="no feature has the property 'kind'"):
        run_import("geojson", gj, tmp_path / "d", ImportOptions(images=tif, label_property="kind"))
    assert not any((tmp_path / d).exists() for d in "cd")


def _feature(geometry: dict, **props) -> dict:
    return {"type": "Feature", "properties": props, "geometry": geometry}


def _square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def test_pixel_polygons_holes_multipolygon_order_and_skipped_types(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (60, 40)).save(src / "tile.png")
    feats = [
        _feature(
            {"type": "Polygon", "coordinates": [_square(0, 0, 20, 20), _square(5, 5, 15, 15)]},
            label="roof",
        ),
        _feature(
            {
                "type": "MultiPolygon",
                "coordinates": [[_square(30, 0, 40, 10)], [_square(30, 20, 40, 30)]],
            },
            label="tree",
        ),
        _feature(
            {"type": "Polygon", "coordinates": [_square(35, 5, 45, 10)]}, label="roof"
        ),  # over a tree
        _feature({"type": "Point", "coordinates": [1, 1]}, label="roof"),
        _feature({"type": "LineString", "coordinates": [[1, 1], [9, 9]]}, label="roof"),
        _feature({"type": "Point", "coordinates": [2, 2]}, label="roof"),
    ]
    (src / "tile.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    report = run_import("geojson", src, tmp_path / "ds")
    mask = read_mask(tmp_path / "ds" / "masks" / "tile.png")
    assert report.meta.class_names == ["background", "roof", "tree"]
    assert mask[10, 10] == 0 and mask[2, 2] == 1  # the hole stays background
    assert int((mask == 1).sum()) == 400 - 100 + 10 * 5
    assert int((mask == 2).sum()) == 200 - 5 * 5  # the later roof covers part of the tree
    assert any("(1 LineString, 2 Point)" in w for w in report.warnings)


def _utm_geotiff(path: Path, size: int = 64) -> Affine:
    transform = Affine(1.0, 0.0, 500000.0, 0.0, -1.0, 5000000.0)  # UTM 32N, 1 m pixels
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype="uint16",
        crs="EPSG:32632",
        transform=transform,
    ) as ds:
        ds.write(np.arange(size * size, dtype=np.uint16).reshape(1, size, size))
    return transform


def _lonlat(ring: list[list[float]]) -> list[list[float]]:
    lons, lats = warp_transform(
        "EPSG:32632", "EPSG:4326", [p[0] for p in ring], [p[1] for p in ring]
    )
    return [[lo, la] for lo, la in zip(lons, lats, strict=True)]


@pytest.mark.parametrize(
    "crs_member", [None, "urn:ogc:def:crs:OGC:1.3:CRS84", "EPSG:32632", "utm-no-member"]
)
def test_wgs84_declared_and_utm_coordinates(tmp_path: Path, crs_member: str | None) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _utm_geotiff(src / "scene.tif")
    ring = _square(500010, 4999990, 500030, 4999970)  # pixel columns and rows 10..29
    coords = ring if crs_member in ("EPSG:32632", "utm-no-member") else _lonlat(ring)
    doc: dict = {
        "type": "FeatureCollection",
        "features": [_feature({"type": "Polygon", "coordinates": [coords]})],
    }
    if crs_member not in (None, "utm-no-member"):
        doc["crs"] = {"type": "name", "properties": {"name": crs_member}}
    (src / "scene.geojson").write_text(json.dumps(doc))
    report = run_import("geojson", src, tmp_path / "ds")
    mask = read_mask(tmp_path / "ds" / "masks" / "scene.png")
    assert report.class_pixels["foreground"] == 400
    assert mask[10:30, 10:30].all() and "in crs" in report.meta.notes


def test_coordinate_errors(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _utm_geotiff(src / "scene.tif")
    Image.new("L", (64, 64)).save(src / "plain.png")
    far = {
        "type": "FeatureCollection",
        "features": [
            _feature({"type": "Polygon", "coordinates": [_square(9e5, 9e5, 9e5 + 5, 9e5 + 5)]})
        ],
    }
    (src / "scene.geojson").write_text(json.dumps(far))
    with pytest.raises(
        DataError, match=r"scene\.geojson: coordinates .* neither inside .*pass --coords"
    ):
        run_import("geojson", src / "scene.geojson", tmp_path / "a")
    near = {
        "type": "FeatureCollection",
        "features": [_feature({"type": "Polygon", "coordinates": [_square(1, 1, 5, 5)]})],
    }
    (src / "plain.geojson").write_text(json.dumps(near))
    with pytest.raises(
        DataError, match=r"plain\.geojson: --coords crs needs a georeferenced image"
    ):
        run_import("geojson", src / "plain.geojson", tmp_path / "b", ImportOptions(coords="crs"))
    report = run_import("geojson", src / "plain.geojson", tmp_path / "c")  # non-geo: auto is pixel
    assert report.class_pixels["foreground"] == 16
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_image_pairing_errors(real: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(real / SOLARIS / "gj_to_px_result.geojson", src)
    Image.new("L", (900, 900)).save(src / "one.png")
    Image.new("L", (900, 900)).save(src / "two.png")
    with pytest.raises(
        DataError, match=r"gj_to_px_result\.geojson: no image named gj_to_px_result\.\*.*--images"
    ):
        run_import("geojson", src, tmp_path / "a")
    with pytest.raises(UsageError, match="--images FILE pairs one GeoJSON"):
        run_import(
            "geojson",
            src,
            tmp_path / "b",
            ImportOptions(images=real / SOLARIS / "sample_geotiff.tif"),
        )
    report = run_import("geojson", src, tmp_path / "c", ImportOptions(images=real / SOLARIS))
    assert report.class_pixels["foreground"] == 33821  # the only image in --images DIR
    with pytest.raises(DataError, match=r"pseudo_dataset: no \.geojson or \.json file found"):
        run_import("geojson", real / "mmseg" / "pseudo_dataset", tmp_path / "d")


def test_cli_import_and_error(real: Path, tmp_path: Path, cli) -> None:
    result = cli("import", "geojson", real / SOLARIS, tmp_path / "ok")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "ok" / "masks" / "geotiff_labels.png").is_file()
    src = tmp_path / "src"
    src.mkdir()
    (src / "broken.geojson").write_text('{"type": "FeatureCollection", "features": [')
    result = cli("import", "geojson", src, tmp_path / "bad")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "broken.geojson" in lines[0]
    assert not (tmp_path / "bad").exists()


def _geotiff(path: Path, crs: str, transform: Affine, size: int = 64) -> None:
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint8", crs=crs,
        transform=transform,
    ) as ds:  # fmt: skip
        ds.write(np.zeros((1, size, size), np.uint8))


def test_geographic_raster_wins_tie_and_projected_tie_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    # A lon/lat raster: its coordinates (10.00x, 49.99x) also fit the 64x64 pixel frame.
    _geotiff(src / "geo.tif", "EPSG:4326", Affine(0.0001, 0, 10.0, 0, -0.0001, 50.0))
    ring = _square(10.001, 49.999, 10.003, 49.997)  # pixel columns and rows 10..29
    doc = {
        "type": "FeatureCollection",
        "features": [_feature({"type": "Polygon", "coordinates": [ring]})],
    }
    (src / "geo.geojson").write_text(json.dumps(doc))
    report = run_import("geojson", src / "geo.geojson", tmp_path / "a")
    assert report.class_pixels["foreground"] == 400 and "in crs" in report.meta.notes
    # A projected raster whose bounds are its pixel frame: no way to tell, so ask.
    _geotiff(src / "local.tif", "EPSG:32632", Affine(1, 0, 0, 0, -1, 64))
    doc = {
        "type": "FeatureCollection",
        "features": [_feature({"type": "Polygon", "coordinates": [_square(10, 10, 30, 30)]})],
    }
    (src / "local.geojson").write_text(json.dumps(doc))
    with pytest.raises(
        DataError, match=r"local\.geojson: coordinates .* both inside .*--coords pixel or"
    ):
        run_import("geojson", src / "local.geojson", tmp_path / "b")
    report = run_import(
        "geojson", src / "local.geojson", tmp_path / "c", ImportOptions(coords="crs")
    )
    assert report.class_pixels["foreground"] == 400
