"""Uploaded bytes -> ``H x W x C`` image, refusing oversized images before decoding their pixels.

Only PNG, JPEG, TIFF, BMP and WebP are accepted, recognised by their magic number (never by the
file name a client sends): Pillow knows formats that run external programs (EPS) or that have no
place on a prediction server. The width and height come from the header first (Pillow opens
lazily; tifffile reads the IFD only) and an image above the pixel limit is refused without
allocating its pixels. In a TIFF every page counts, and its bands: the first series is decoded
whole before its first plane is used, so the IFDs of all pages are checked first. Decoding itself
is :mod:`segflow.data.image_io`'s, so the server reads an image exactly as ``segflow predict``
does (EXIF orientation, 16-bit, multi-band TIFF, alpha).
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import numpy as np

from segflow.data import image_io
from segflow.errors import DataError

#: Formats accepted, by the name Pillow gives them.
PIL_FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
ACCEPTED = "PNG, JPEG, TIFF, BMP or WebP"
#: A TIFF may have this many pages at most (image_io decodes the first series whole).
MAX_TIFF_PAGES = 256
#: Values per pixel the pixel limit allows for (RGBA); a TIFF's pages may hold more bands each,
#: as long as pixels x bands over all pages stay under this many times ``max_pixels``.
BANDS_PER_PIXEL = 4


class ImageTooLargeError(DataError):
    """The image declares more pixels than the server accepts (HTTP 413)."""


class UnsupportedImageError(DataError):
    """The upload is not an image in an accepted format (HTTP 415)."""


def sniff_format(data: bytes) -> str | None:
    """``PNG``, ``JPEG``, ``TIFF``, ``BMP`` or ``WEBP`` from the magic number, else None."""
    ext = image_io.sniff_extension(data)
    if ext is not None:
        return {".png": "PNG", ".jpg": "JPEG", ".tif": "TIFF"}[ext]
    if data.startswith(b"BM"):
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _check_pixels(name: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLargeError(
            name,
            f"image declares {width}x{height} = {width * height:,} pixels, above this server's "
            f"limit of {max_pixels:,} pixels",
        )
    if width <= 0 or height <= 0:
        raise DataError(name, f"image declares an empty size {width}x{height}")


def _pil_header(data: bytes, name: str, fmt: str, max_pixels: int) -> None:
    """Read the header only (Pillow decodes nothing before ``load()``) and check the size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt]) as img:
                width, height = img.size
    except Image.DecompressionBombError:
        raise ImageTooLargeError(
            name,
            f"image declares more pixels than this server's limit of {max_pixels:,} "
            "(refused as a decompression bomb before decoding)",
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(name, f"cannot read the {fmt} header: {reason}") from None
    _check_pixels(name, width, height, max_pixels)


def _check_tiff_pages(path: Path, name: str, max_pixels: int) -> None:
    """Every page's declared size counts: reading the first series decodes all of its pages.

    The pixels of all pages together must stay under ``max_pixels``, their values (pixels x
    samples per pixel) under ``BANDS_PER_PIXEL x max_pixels``, and there are at most
    :data:`MAX_TIFF_PAGES` pages. Only the IFDs (headers) are read here.
    """
    import tifffile

    pixels = values = 0
    try:
        with tifffile.TiffFile(path) as tif:
            for index, page in enumerate(tif.pages):
                if index >= MAX_TIFF_PAGES:
                    raise ImageTooLargeError(
                        name, f"TIFF has more than {MAX_TIFF_PAGES} pages; send one image"
                    )
                width, height = int(page.imagewidth), int(page.imagelength)  # type: ignore[union-attr]
                pixels += width * height
                values += width * height * int(page.samplesperpixel)  # type: ignore[union-attr]
                if pixels > max_pixels or values > BANDS_PER_PIXEL * max_pixels:
                    raise ImageTooLargeError(
                        name,
                        f"TIFF pages 1-{index + 1} declare {pixels:,} pixels ({values:,} values) "
                        f"together, above this server's limit of {max_pixels:,} pixels "
                        f"({BANDS_PER_PIXEL} values each); every page is decoded, so every "
                        "page counts",
                    )
    except ImageTooLargeError:
        raise
    except Exception as exc:  # tifffile raises many types (TiffFileError, ValueError, OSError...)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(name, f"cannot read TIFF: {reason}") from None


def _decode_tiff(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """TIFF through a temporary file: image_io reads TIFFs (multi-band, 16-bit) from paths."""
    with tempfile.TemporaryDirectory(prefix="segflow-upload-") as tmp:
        path = Path(tmp) / "upload.tif"
        path.write_bytes(data)
        try:
            _check_tiff_pages(path, name, max_pixels)  # first: a series spans every page
            height, width = image_io.image_size(path)
            _check_pixels(name, width, height, max_pixels)
            return image_io.read_image(path)
        except ImageTooLargeError:
            raise
        except DataError as exc:
            raise DataError(name, exc.problem) from None


def decode_upload(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """Decode an uploaded image, refusing what is not an accepted image or is too large.

    Args:
        data: the file's bytes.
        name: the client's file name, for messages only.
        max_pixels: the largest width x height accepted.

    Raises:
        UnsupportedImageError: not PNG, JPEG, TIFF, BMP or WebP.
        ImageTooLargeError: the header declares more than ``max_pixels`` pixels.
        DataError: a damaged or truncated file.
    """
    name = name or "upload"
    if not data:
        raise DataError(name, "the uploaded file is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedImageError(name, f"not an image this server reads; send {ACCEPTED}")
    if fmt == "TIFF":
        return _decode_tiff(data, name, max_pixels)
    _pil_header(data, name, fmt, max_pixels)
    return image_io.decode_image_bytes(data, name)
