"""Writing predictions: class-id PNG, colour PNG, overlay JPEG, probabilities, polygons.

For a GeoTIFF input the mask and probabilities are also written as GeoTIFFs with the input's
CRS and transform, and GeoJSON polygons are in that CRS; otherwise polygons are in pixel
coordinates (x right, y down, pixel corners: the polygon of one pixel (0, 0) is the unit square).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from segflow._io import atomic_write_text
from segflow._tempfiles import tag
from segflow.classes import ClassInfo
from segflow.data import image_io
from segflow.infer.predictor import GeoInfo, Prediction

PolygonFormat = Literal["geojson", "coco"]


def _tmp_name(path: Path, suffix: str = "") -> Path:
    """``.NAME.tmp-<pid>-<hex>SUFFIX`` beside ``path``.

    A killed writer's leftover is recognisable (:func:`segflow._tempfiles.sweep_stale_outputs`).
    """
    return path.with_name(f".{path.name}.tmp-{tag()}{suffix}")


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = _tmp_name(path)
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # after a failed write (disk full, SIGTERM): no partial file


def _png(array: np.ndarray) -> bytes:
    import cv2

    arr = array[:, :, ::-1] if array.ndim == 3 else array
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr))
    if not ok:
        raise ValueError("PNG encoding failed")
    return bytes(buf.tobytes())


def _write_geotiff(path: Path, bands: np.ndarray, geo: GeoInfo) -> None:
    """``bands``: B x H x W (uint8) with the input's CRS and transform."""
    import rasterio
    from affine import Affine

    tmp = _tmp_name(path, ".tif")
    with rasterio.open(
        tmp, "w", driver="GTiff", width=bands.shape[2], height=bands.shape[1], count=bands.shape[0],
        dtype=str(bands.dtype), crs=geo.crs, transform=Affine(*geo.transform), compress="deflate",
    ) as dst:  # fmt: skip
        dst.write(bands)
    tmp.replace(path)


def polygons(
    labels: np.ndarray, classes: Sequence[ClassInfo], geo: GeoInfo | None = None
) -> list[dict[str, Any]]:
    """GeoJSON features (one per connected region of each foreground class), holes kept."""
    import warnings

    from affine import Affine
    from rasterio import features

    transform = Affine(*geo.transform) if geo is not None else Affine.identity()
    names = {c.id: c.name for c in classes}
    out = []
    with warnings.catch_warnings():
        # rasterio multiplies affine matrices with `*` (pending deprecation in affine 3)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        for geom, value in features.shapes(
            labels, mask=labels > 0, connectivity=8, transform=transform
        ):
            cid = int(value)
            if cid == 0 or cid not in names:
                continue
            out.append(
                {
                    "type": "Feature",
                    "properties": {"class_id": cid, "class": names[cid]},
                    "geometry": geom,
                }
            )
    return out


def write_prediction(
    pred: Prediction,
    out_dir: Path,
    classes: Sequence[ClassInfo],
    *,
    color: bool = True,
    overlay: bool = True,
    probs: bool = False,
    polygon_format: PolygonFormat | None = None,
) -> dict[str, Path]:
    """Write one prediction's files into ``out_dir``; returns them by kind.

    Every file is written under a temporary name and renamed; the class-id PNG (``mask``) is
    renamed last, so its presence means every file of this image is complete (the Ray engine's
    resume relies on it).
    """
    from segflow.data.visual import colorize, encode_jpeg
    from segflow.data.visual import overlay as blend

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = pred.stem or "prediction"
    written: dict[str, Path] = {}
    written["mask"] = out_dir / f"{stem}.png"
    if pred.geo is not None:
        written["mask_geotiff"] = out_dir / f"{stem}_mask.tif"
        _write_geotiff(written["mask_geotiff"], pred.labels[None], pred.geo)
    if color:
        written["color"] = out_dir / f"{stem}_color.png"
        _atomic_bytes(written["color"], _png(colorize(pred.labels, classes)))
    if overlay and pred.image is not None:
        written["overlay"] = out_dir / f"{stem}_overlay.jpg"
        _atomic_bytes(written["overlay"], encode_jpeg(blend(pred.image, pred.labels, classes)))
    if probs and pred.probs is not None:
        quantised = np.clip(np.rint(pred.probs * 255.0), 0, 255).astype(np.uint8)
        written["probs"] = out_dir / f"{stem}_probs.tif"
        if pred.geo is not None:
            _write_geotiff(written["probs"], quantised, pred.geo)
        else:
            import tifffile

            tmp = _tmp_name(written["probs"], ".tif")
            tifffile.imwrite(tmp, quantised, photometric="minisblack", compression="zlib")
            tmp.replace(written["probs"])
    if polygon_format == "geojson":
        collection: dict[str, Any] = {
            "type": "FeatureCollection",
            "features": polygons(pred.labels, classes, pred.geo),
        }
        if pred.geo is not None and pred.geo.crs:
            collection["crs_wkt"] = pred.geo.crs
        written["polygons"] = out_dir / f"{stem}.geojson"
        atomic_write_text(written["polygons"], json.dumps(collection))
    _atomic_bytes(written["mask"], _png(pred.labels))  # last: the image's outputs are complete
    return written


def write_coco(predictions: Sequence[Prediction], path: Path, classes: Sequence[ClassInfo]) -> Path:
    """All predictions as one COCO instances JSON (exact polygons, RLE where a region has holes)."""
    from segflow.data.formats.coco_export import component_annotations

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    fg = [c.id for c in classes if c.id != 0]
    for image_id, pred in enumerate(predictions, start=1):
        h, w = pred.labels.shape
        name = pred.source.name if pred.source is not None else f"{pred.stem}.png"
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        for ann in component_annotations(pred.labels, fg):
            ann.update({"id": len(annotations) + 1, "image_id": image_id})
            annotations.append(ann)
    doc = {
        "info": {"description": "segflow predictions"},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": c.id, "name": c.name, "supercategory": ""} for c in classes if c.id != 0
        ],
    }
    atomic_write_text(path, json.dumps(doc))
    return path


def read_mask_png(path: Path) -> np.ndarray:
    """Read back a class-id PNG written here (tests, tools)."""
    return image_io.read_mask(path)
