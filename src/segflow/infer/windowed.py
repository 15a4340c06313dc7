"""Rasters larger than memory: read window by window, predict, write window by window.

A GeoTIFF / BigTIFF / COG of at least :data:`MIN_PIXELS` pixels (``segflow predict`` and the
Ray engine) is never read whole: :class:`RasterRows` hands the tiler the rows it asks for
through rasterio windows (one band of tile rows at a time, the overlap context included, as
:meth:`Predictor.network_probabilities` streams them for in-memory images), and the finished
rows go straight into a tiled, deflate-compressed GeoTIFF label raster (``NAME_mask.tif``,
and ``NAME_probs.tif`` with ``--probs``, uint8) with the input's CRS and transform, written in
whole block rows. Memory is a few tile rows, whatever the raster's size.

The masks are those of the in-memory path, bit for bit (same tiles, blending and threshold;
tested). Limits, each falling back to the whole-image path with a log line: ensembles of several
models, preprocessing that needs the whole image (ROI, resize, CLAHE, per-image normalisation,
a band-count conversion) and non-integer rasters. Post-processing (min size, holes, largest
component) needs the connected components of the whole label image: with it, the labels are kept
in memory (1 byte per pixel) and written after it. PNG, colour, overlay and polygon outputs are
not written for such rasters (a 20,000² colour PNG is 1.2 GB); the label GeoTIFF is the mask.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segflow.errors import DataError

if TYPE_CHECKING:
    from segflow.infer.predictor import Predictor

log = logging.getLogger("segflow.infer")

#: Rasters with at least this many pixels are predicted window by window (64 Mpx, 8192²).
MIN_PIXELS = 1 << 26
RASTER_SUFFIXES = (".tif", ".tiff")
BLOCK = 512
#: GDAL's block cache while reading and writing windows (MiB; its default is 5% of the RAM).
GDAL_CACHE_MB = 64


class RasterRows:
    """An ``H x W x C`` view of a raster whose row slices are read through rasterio windows.

    Only ``rows[y0:y1, :, ch]`` is supported (what :class:`NetworkInput` asks); the last band of
    rows read is kept, so the channels of one band cost one read. ``max_rows`` records the
    highest band read (the memory test checks it).
    """

    ndim = 3

    def __init__(self, src: Any) -> None:
        self.src = src
        self.shape = (src.height, src.width, src.count)
        self.dtype = np.dtype(src.dtypes[0])
        self.max_rows = 0
        self._band: tuple[int, int, np.ndarray] | None = None

    def __getitem__(self, key: tuple[slice, slice, int]) -> np.ndarray:
        from rasterio.windows import Window

        rows, cols, channel = key
        y0, y1 = rows.start or 0, min(rows.stop, self.shape[0])
        if self._band is None or self._band[:2] != (y0, y1):
            data = self.src.read(window=Window(0, y0, self.shape[1], y1 - y0))  # C x rows x W
            self._band = (y0, y1, data)
            self.max_rows = max(self.max_rows, y1 - y0)
        band: np.ndarray = self._band[2][channel]
        return band[:, cols]


def large_raster(path: Path, min_pixels: int | None = None) -> bool:
    """``path`` is a TIFF rasterio opens with at least ``min_pixels`` (:data:`MIN_PIXELS`)."""
    min_pixels = MIN_PIXELS if min_pixels is None else min_pixels
    if path.suffix.lower() not in RASTER_SUFFIXES:
        return False
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(path) as src:
            return bool(src.width * src.height >= min_pixels)
    except RasterioIOError:
        return False


class _BlockWriter:
    """Buffers finished rows and writes whole block rows into a tiled GeoTIFF."""

    def __init__(self, dst: Any, bands: int) -> None:
        self.dst, self.bands, self.y = dst, bands, 0
        self.parts: list[np.ndarray] = []
        self.buffered = 0

    def add(self, rows: np.ndarray) -> None:
        self.parts.append(rows)
        self.buffered += rows.shape[1]
        if self.buffered >= BLOCK:
            self.flush(whole_blocks=True)

    def flush(self, whole_blocks: bool = False) -> None:
        from rasterio.windows import Window

        if not self.parts:
            return
        data = np.concatenate(self.parts, axis=1) if len(self.parts) > 1 else self.parts[0]
        n = (data.shape[1] // BLOCK) * BLOCK if whole_blocks else data.shape[1]
        if n:
            self.dst.write(data[:, :n], window=Window(0, self.y, data.shape[2], n))
            self.y += n
        rest = data[:, n:]
        self.parts, self.buffered = ([rest] if rest.shape[1] else []), rest.shape[1]


def _open_out(path: Path, src: Any, bands: int) -> Any:
    import rasterio

    profile = {
        "driver": "GTiff", "width": src.width, "height": src.height, "count": bands,
        "dtype": "uint8", "crs": src.crs, "transform": src.transform, "compress": "deflate",
        "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK, "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    return rasterio.open(path, "w", **profile)


def _rows(
    predictor: Predictor, source: RasterRows, probs: bool
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(labels rows, uint8 probability rows or None), top to bottom."""
    normalise = probs or predictor.task == "binary"
    for _, _, strip in predictor.stream_input(source, normalise=normalise):
        labels = predictor.labels_from_probs(strip)
        quantised = None
        if probs:
            full = np.concatenate([1.0 - strip, strip]) if predictor.task == "binary" else strip
            quantised = np.clip(np.rint(full * 255.0), 0, 255).astype(np.uint8)
        yield labels, quantised


def _write(predictor: Predictor, source: RasterRows, tmp: dict[str, Path], probs: bool) -> None:
    """Stream the predictions of ``source`` into the temporary GeoTIFFs ``tmp``."""
    from segflow.infer.postprocess import postprocess

    post = predictor.post.active
    with ExitStack() as stack:
        masks = _BlockWriter(stack.enter_context(_open_out(tmp["mask_geotiff"], source.src, 1)), 1)
        prob_rows = None
        if probs:
            bands = len(predictor.classes)
            dst = stack.enter_context(_open_out(tmp["probs"], source.src, bands))
            prob_rows = _BlockWriter(dst, bands)
        kept: list[np.ndarray] = []  # with post-processing: the whole label image (1 B/pixel)
        for labels, quantised in _rows(predictor, source, probs):
            if post:
                kept.append(labels)
            else:
                masks.add(labels[None])
            if prob_rows is not None and quantised is not None:
                prob_rows.add(quantised)
        if post:
            whole = postprocess(np.concatenate(kept), predictor.post)
            kept.clear()
            for y in range(0, whole.shape[0], BLOCK):
                masks.add(whole[None, y : y + BLOCK])
        masks.flush()
        if prob_rows is not None:
            prob_rows.flush()


def predict_windowed(
    predictor: Predictor, path: Path, out_dir: Path, *, probs: bool = False
) -> dict[str, Path] | None:
    """Predict the raster ``path`` window by window into ``out_dir``.

    None where this path does not apply (see the module docstring): predict the image whole.
    """
    import rasterio

    from segflow._tempfiles import tag

    # GDAL's block cache defaults to 5% of the machine's memory and keeps written blocks: bound it
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(path) as src:
        source = RasterRows(src)
        why = predictor.windowed_unsupported(source)
        if why:
            log.info("%s: read whole (%s)", path, why)
            return None
        outputs = dict(zip(["mask_geotiff", "probs"], windowed_outputs(path, out_dir, probs),
                           strict=False))  # fmt: skip
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = {k: p.with_name(f".{p.name}.tmp-{tag()}.tif") for k, p in outputs.items()}
        try:
            _write(predictor, source, tmp, probs)
            if probs:
                tmp["probs"].replace(outputs["probs"])
            tmp["mask_geotiff"].replace(outputs["mask_geotiff"])  # last: the image is complete
        except rasterio.errors.RasterioIOError as exc:
            raise DataError(path, f"cannot read or write its windows ({exc})") from None
        finally:
            for p in tmp.values():
                p.unlink(missing_ok=True)
    log.info("%s: predicted window by window (at most %d rows read at once)", path, source.max_rows)
    return outputs


def windowed_outputs(path: Path, out_dir: Path, probs: bool) -> list[Path]:
    """The files :func:`predict_windowed` writes for ``path``."""
    names = [f"{path.stem}_mask.tif"] + ([f"{path.stem}_probs.tif"] if probs else [])
    return [out_dir / n for n in names]


def try_windowed(
    predictor: Predictor, path: Path, out_dir: Path, *, probs: bool, extras: bool
) -> dict[str, Path] | None:
    """:func:`predict_windowed` for a large raster, else None (predict it whole).

    ``extras``: colour/overlay outputs were asked for; they are not written for such a raster,
    and a log line says so.
    """
    if not large_raster(path):
        return None
    out = predict_windowed(predictor, path, out_dir, probs=probs)
    if out is not None and extras:
        log.info("%s: no PNG, colour or overlay outputs for a raster predicted window by window "
                 "(the mask is %s)", path, out["mask_geotiff"].name)  # fmt: skip
    return out
