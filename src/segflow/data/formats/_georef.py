"""Which frame GeoJSON-style coordinates are in: the image's pixels or its raster's CRS.

Geometries here are GeoJSON ``MultiPolygon`` dicts with 2-D coordinates. The rules (also in the
``geojson`` module docstring) decide from the coordinates themselves, never from a ``crs`` member
alone: files exist that declare a UTM ``crs`` but hold pixel coordinates.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from segflow.data import image_io
from segflow.data.formats.raster import OUT_OF_BOUNDS_TOLERANCE, check_bounds
from segflow.errors import DataError

Bounds = tuple[float, float, float, float]  # min x, min y, max x, max y
Geometry = dict[str, Any]
Frame = Literal["pixel", "crs"]


@dataclass
class RasterInfo:
    """What choosing a frame needs from an image header."""

    height: int
    width: int
    transform: Any = None  # affine.Affine when georeferenced
    crs: Any = None  # rasterio CRS when known


def raster_info(image: Path) -> RasterInfo:
    """Size and georeferencing of ``image`` (header only; an identity transform is none)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # plain images are expected
            with rasterio.open(image) as ds:
                if not ds.transform.is_identity:
                    return RasterInfo(ds.height, ds.width, ds.transform, ds.crs)
    except RasterioIOError:
        pass  # not a format GDAL reads: a plain image
    height, width = image_io.image_size(image)  # EXIF-aware, like the image the mask must fit
    return RasterInfo(height, width)


def bounds(geoms: list[Geometry]) -> Bounds:
    """Bounding box of every vertex of ``geoms``."""
    pts = np.array([p for g in geoms for poly in g["coordinates"] for ring in poly for p in ring])
    return (
        float(pts[:, 0].min()),
        float(pts[:, 1].min()),
        float(pts[:, 0].max()),
        float(pts[:, 1].max()),
    )


def within(inner: Bounds, frame: Bounds) -> bool:
    """Whether ``inner`` lies inside ``frame`` grown by the out-of-bounds tolerance."""
    tx = OUT_OF_BOUNDS_TOLERANCE * (frame[2] - frame[0])
    ty = OUT_OF_BOUNDS_TOLERANCE * (frame[3] - frame[1])
    return bool(
        inner[0] >= frame[0] - tx
        and inner[2] <= frame[2] + tx
        and inner[1] >= frame[1] - ty
        and inner[3] <= frame[3] + ty
    )


def declared_crs(doc: dict[str, Any], path: Path) -> Any:
    """The CRS a legacy GeoJSON ``crs`` member names, or None."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    member = doc.get("crs")
    name = member.get("properties", {}).get("name") if isinstance(member, dict) else None
    if not isinstance(name, str) or not name:
        return None
    try:
        return CRS.from_user_input(name)
    except CRSError:
        raise DataError(
            path, f"'crs' member names {name!r}, which is not a CRS rasterio knows"
        ) from None


def _raster_bounds(raster: RasterInfo) -> Bounds:
    from rasterio.transform import array_bounds

    west, south, east, north = array_bounds(raster.height, raster.width, raster.transform)
    return (min(west, east), min(south, north), max(west, east), max(south, north))


def _source_crs(doc: dict[str, Any], path: Path, raw: Bounds, raster: RasterInfo) -> Any:
    """The CRS the coordinates are in; None means the raster's own CRS.

    The ``crs`` member if there is one; else WGS84 (RFC 7946) when the coordinates are lon/lat
    inside the raster's lon/lat footprint.
    """
    from rasterio.crs import CRS
    from rasterio.warp import transform_bounds

    source = declared_crs(doc, path)
    if source is None and raster.crs is not None and not raster.crs.is_geographic:
        lonlat = raw[0] >= -180 and raw[2] <= 180 and raw[1] >= -90 and raw[3] <= 90
        footprint = transform_bounds(raster.crs, "EPSG:4326", *_raster_bounds(raster))
        if lonlat and within(raw, footprint):
            source = CRS.from_epsg(4326)
    return source


def _reproject(geoms: list[Geometry], source: Any, target: Any) -> list[Geometry] | None:
    """``geoms`` from ``source`` to ``target`` (None when they cannot be coordinates there)."""
    from rasterio.warp import transform_geom

    if source is None or target is None or source == target:
        return geoms
    try:
        out = [dict(g) for g in transform_geom(source, target, geoms)]
    except Exception:  # any projection failure means these are not coordinates in ``source``
        return None
    return out if np.all(np.isfinite(bounds(out))) else None


def choose_frame(
    geoms: list[Geometry],
    doc: dict[str, Any],
    path: Path,
    image: Path,
    raster: RasterInfo,
    coords: str,
) -> tuple[list[Geometry], Any, Frame]:
    """Geometries in the frame rasterisation uses, that frame's affine transform, and its name.

    ``coords`` is ``pixel``, ``crs`` or ``auto``. In ``auto``, the frame whose bounds contain the
    coordinates wins; both or neither is a DataError asking for ``--coords``, except that
    coordinates in a geographic CRS fitting the raster's footprint win (no coincidence).
    """
    from rasterio.transform import Affine

    pixel: tuple[list[Geometry], Any, Frame] = (geoms, Affine.identity(), "pixel")
    if not geoms:
        return pixel
    if coords == "pixel" or (raster.transform is None and coords != "crs"):
        # Far outside the image is a mistake (wrong frame or image), as for every other importer.
        check_bounds(np.array(bounds(geoms)).reshape(2, 2), raster.height, raster.width, path,
                     f"a polygon over {image.name}")  # fmt: skip
        return pixel
    if raster.transform is None:
        raise DataError(
            path,
            f"--coords crs needs a georeferenced image, but {image.name} has no geotransform",
        )
    raw = bounds(geoms)
    source = _source_crs(doc, path, raw, raster)
    in_crs = _reproject(geoms, source, raster.crs)
    if coords == "crs":
        if in_crs is None:
            raise DataError(path, f"cannot reproject the coordinates from {source} to {raster.crs}")
        return in_crs, raster.transform, "crs"
    raster_bounds = _raster_bounds(raster)
    crs_ok = in_crs is not None and within(bounds(in_crs), raster_bounds)
    pixel_ok = within(raw, (0.0, 0.0, float(raster.width), float(raster.height)))
    effective = source if source is not None else raster.crs
    geographic = effective is not None and bool(effective.is_geographic)
    if in_crs is not None and crs_ok and (not pixel_ok or geographic):
        return in_crs, raster.transform, "crs"
    if pixel_ok and not crs_ok:
        return pixel
    where = "both inside" if pixel_ok else "neither inside"
    raise DataError(
        path,
        f"coordinates (bounds {', '.join(f'{v:g}' for v in raw)}) lie {where} the pixel frame of "
        f"{image.name} (0..{raster.width} x 0..{raster.height}) and its CRS bounds "
        f"({', '.join(f'{v:g}' for v in raster_bounds)}); pass --coords pixel or --coords crs",
    )
