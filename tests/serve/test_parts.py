"""The server's parts on their own: upload decoding, per-request options, the admission gate."""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from segflow.errors import DataError, UsageError
from segflow.infer.postprocess import PostProcess
from segflow.infer.predictor import Predictor
from segflow.serve.decode import (
    ImageTooLargeError,
    UnsupportedImageError,
    decode_upload,
    sniff_format,
)
from segflow.serve.gate import Gate, GateTimeoutError, SaturatedError
from segflow.serve.options import PredictOptions, parse_tta, with_options
from tests.serve import encode, noise_image, png_declaring, tiff_declaring


def _pil_bytes(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_decode_reads_like_segflow_predict() -> None:
    grey16 = (np.arange(30 * 20, dtype=np.uint16).reshape(30, 20) * 97).astype(np.uint16)
    out = decode_upload(_pil_bytes(Image.fromarray(grey16), "PNG"), "g.png", 10**6)
    assert out.dtype == np.uint16 and out.shape == (30, 20, 1)
    np.testing.assert_array_equal(out[:, :, 0], grey16)

    rgba = np.dstack([noise_image(10, 12), np.full((10, 12), 7, np.uint8)])
    out = decode_upload(_pil_bytes(Image.fromarray(rgba), "PNG"), "a.png", 10**6)
    np.testing.assert_array_equal(out, rgba[:, :, :3])  # alpha dropped

    rotated = Image.fromarray(noise_image(10, 30))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    out = decode_upload(_pil_bytes(rotated, "JPEG", exif=exif), "r.jpg", 10**6)
    assert out.shape[:2] == (30, 10)

    bands = np.random.default_rng(0).integers(0, 4000, (16, 24, 5), dtype=np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, bands, planarconfig="contig", photometric="minisblack")
    out = decode_upload(buf.getvalue(), "b.tif", 10**6)
    np.testing.assert_array_equal(out, bands)


def test_decode_refusals() -> None:
    assert sniff_format(b"%!PS-Adobe-3.0 EPSF") is None  # Ghostscript formats never reach Pillow
    assert sniff_format(png_declaring(2, 2)) == "PNG"
    with pytest.raises(UnsupportedImageError, match=r"e\.eps: not an image"):
        decode_upload(b"%!PS-Adobe-3.0 EPSF-3.0\n", "e.eps", 10**6)
    with pytest.raises(UnsupportedImageError):
        decode_upload(_pil_bytes(Image.new("RGB", (4, 4)), "GIF"), "x.gif", 10**6)
    with pytest.raises(DataError, match="empty"):
        decode_upload(b"", "x.png", 10**6)
    with pytest.raises(ImageTooLargeError, match=r"64x64 = 4,096 pixels, above .* 4,095"):
        decode_upload(encode(noise_image(64, 64)), "x.png", 4095)
    assert decode_upload(encode(noise_image(64, 64)), "x.png", 4096).shape == (64, 64, 3)
    with pytest.raises(ImageTooLargeError):
        decode_upload(tiff_declaring(5000, 5000), "t.tif", 10**6)
    with pytest.raises(DataError, match=r"t\.tif"):
        decode_upload(tiff_declaring(50, 50)[:40], "t.tif", 10**6)


@pytest.fixture(scope="module")
def predictor(torch_bundle: Path) -> Predictor:
    return Predictor.from_bundles(torch_bundle, backend="torch", device="cpu")


def test_options_make_a_copy_sharing_the_networks(predictor: Predictor) -> None:
    assert with_options(predictor, PredictOptions()) is predictor
    opts = PredictOptions(tta="h,hv", tile=96, overlap=0.5, min_size=("c1=4",), fill_holes=("2",))
    variant = with_options(predictor, opts)
    assert variant is not predictor
    (mine,), (theirs,) = variant.members, predictor.members
    assert mine.backend is theirs.backend and mine.preprocessor is theirs.preprocessor
    assert (mine.tile, mine.overlap, mine.tta) == (96, 0.5, ("h", "hv"))
    assert (theirs.tile, theirs.overlap, theirs.tta) == (64, 0.25, ())
    assert variant.post == PostProcess(min_size={1: 4}, fill_holes=[2])
    assert predictor.post == PostProcess()
    assert with_options(predictor, PredictOptions(tta="none")).members[0].tta == ()


def test_tta_parsing() -> None:
    assert parse_tta("h, v,h") == ("h", "v")
    assert parse_tta("NONE") == ()
    with pytest.raises(UsageError, match="unknown flip"):
        parse_tta("h,d")


def test_gate_admits_running_plus_queue_and_frees_slots_on_errors() -> None:
    gate = Gate(running=1, queue=1)
    release = threading.Event()
    first = gate.submit(lambda: release.wait(10))
    second = gate.submit(lambda: 2)
    with pytest.raises(SaturatedError):
        gate.submit(lambda: 3)
    assert gate.admitted == 2
    release.set()
    assert first.result(10) is True and second.result(10) == 2

    def boom() -> None:
        raise ValueError("x")

    failed = gate.submit(boom)
    with pytest.raises(ValueError):
        failed.result(10)
    assert gate.admitted == 0
    gate.close()
    assert gate.submit(lambda: 5).result(10) == 5  # a new pool after close
    gate.close()


def test_gate_timeouts_tell_queued_from_running() -> None:
    gate = Gate(running=1, queue=1)
    release = threading.Event()

    async def scenario() -> tuple[bool, bool]:
        running = asyncio.ensure_future(gate.run(lambda: release.wait(10), timeout=0.2))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(gate.run(lambda: 1, timeout=0.1))
        results = await asyncio.gather(running, queued, return_exceptions=True)
        assert all(isinstance(r, GateTimeoutError) for r in results), results
        return results[0].started, results[1].started  # type: ignore[union-attr]

    assert asyncio.run(scenario()) == (True, False)
    assert gate.admitted == 1  # the running one still holds its slot
    release.set()
    gate.close()
