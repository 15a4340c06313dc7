"""Lossless image reading and one-line errors for broken files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from segflow.data.image_io import image_size, read_image, read_mask
from segflow.errors import DataError


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width x height`` but holds almost no data (a bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
    return path


def test_16bit_png_keeps_every_bit(tmp_path: Path) -> None:
    arr = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint16 and out.shape == (12, 10, 1)
    np.testing.assert_array_equal(out[:, :, 0], arr)


def test_multiband_uint16_geotiff_is_read_whole(tmp_path: Path) -> None:
    import rasterio
    from rasterio.transform import from_origin

    data = np.random.default_rng(0).integers(0, 65535, size=(5, 20, 30), dtype=np.uint16)
    with rasterio.open(
        tmp_path / "scene.tif",
        "w",
        driver="GTiff",
        width=30,
        height=20,
        count=5,
        dtype="uint16",
        crs="EPSG:32616",
        transform=from_origin(733601, 3725139, 0.5, 0.5),
    ) as dst:
        dst.write(data)
    out = read_image(tmp_path / "scene.tif")
    assert out.shape == (20, 30, 5) and out.dtype == np.uint16
    np.testing.assert_array_equal(out.transpose(2, 0, 1), data)
    assert image_size(tmp_path / "scene.tif") == (20, 30)


def test_planar_and_contiguous_tiff(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 255, size=(8, 9, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", rgb, photometric="rgb")
    tifffile.imwrite(
        tmp_path / "p.tif", rgb.transpose(2, 0, 1), photometric="rgb", planarconfig="separate"
    )
    np.testing.assert_array_equal(read_image(tmp_path / "c.tif"), rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "p.tif"), rgb)


def test_rgba_drops_alpha_and_palette_becomes_rgb(tmp_path: Path) -> None:
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 7
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (4, 5, 3) and int(out[0, 0, 0]) == 200
    pal = Image.new("P", (5, 4), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png")[0, 0].tolist() == [10, 20, 30]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "o.jpg", exif=exif.tobytes(), quality=95)
    out = read_image(tmp_path / "o.jpg")
    assert out.shape[:2] == (40, 20)
    assert image_size(tmp_path / "o.jpg") == (40, 20)
    assert out[2, 10, 2] > 200  # the blue stripe is now on top


def test_truncated_jpeg_is_an_error(tmp_path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        tmp_path / "t.jpg"
    )
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t\.jpg: cannot decode image: image file is truncated"):
        read_image(tmp_path / "t.jpg")


def test_empty_and_non_image_files(tmp_path: Path) -> None:
    (tmp_path / "z.png").write_bytes(b"")
    (tmp_path / "n.png").write_text("hello")
    with pytest.raises(DataError, match=r"z\.png: file is empty"):
        read_image(tmp_path / "z.png")
    with pytest.raises(DataError, match=r"n\.png: not an image"):
        read_image(tmp_path / "n.png")
    with pytest.raises(DataError, match="file not found"):
        read_image(tmp_path / "missing.png")


def test_decompression_bomb_rejected_before_decoding(tmp_path: Path) -> None:
    bomb = png_declaring(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(DataError, match=r"bomb\.png: .*(too large|above the limit)"):
        read_image(bomb)
    medium = png_declaring(tmp_path / "m.png", 5000, 5000)
    with pytest.raises(DataError, match="above the limit"):
        import os

        os.environ["SEGFLOW_MAX_PIXELS"] = "1000000"
        try:
            read_image(medium)
        finally:
            del os.environ["SEGFLOW_MAX_PIXELS"]


def test_masks_palette_indices_and_rgb_rejected(tmp_path: Path) -> None:
    pal = Image.new("P", (3, 2), 2)
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pal.save(tmp_path / "p.png")
    assert read_mask(tmp_path / "p.png").tolist() == [[2, 2, 2], [2, 2, 2]]
    Image.new("RGB", (3, 2)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match=r"rgb\.png: mask must be a single-channel"):
        read_mask(tmp_path / "rgb.png")
