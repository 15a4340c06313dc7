"""Export a canonical dataset as one COCO instances JSON, for re-labelling in CVAT or Roboflow.

* ``images``: every image of the dataset (``file_name`` relative to its ``images/`` folder,
  ``width``, ``height``, ids from 1); images without a mask get no annotations.
* ``categories``: one per class except background (class 0), ``id`` = class id, so importing the
  file back with ``segflow import coco`` gives the same class ids.
* ``annotations``: one per 8-connected component of each class, ``iscrowd`` 0, with ``area``
  (pixels) and ``bbox``. The segmentation is polygons through pixel corners (from
  ``rasterio.features.shapes``, one per 4-connected piece) when pycocotools rasterises them back
  to exactly the component's pixels; a component with holes, or any other that would not come
  back pixel-identical, is written as a compressed RLE (``counts`` a string).

Pixels of the ignore index (255) and background are not exported. The file is written
atomically (a temporary file renamed over ``out``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segflow._io import atomic_write_text, now_iso
from segflow._progress import ProgressBar
from segflow._version import __version__
from segflow.data import image_io
from segflow.data.dataset import CanonicalDataset
from segflow.data.formats import EXPORTERS
from segflow.errors import DataError, UsageError


def _exact_polygons(component: np.ndarray) -> list[list[int]] | None:
    """Pixel-corner polygons of a bool component, or None when they would not decode exactly.

    The check compares pycocotools' RLE of the polygons with the RLE of the component itself
    (RLEs of equal masks are equal), which is COCO's own rasterisation rule.
    """
    from pycocotools import mask as mask_utils
    from rasterio import features

    bits = component.astype(np.uint8)
    polygons = []
    for geometry, _ in features.shapes(bits, mask=component, connectivity=4):
        rings = geometry["coordinates"]
        if len(rings) > 1:
            return None  # a hole: COCO polygons cannot subtract
        polygons.append([round(v) for xy in rings[0][:-1] for v in xy])
    height, width = component.shape
    drawn = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    exact = mask_utils.encode(np.asfortranarray(bits))
    return polygons if drawn["counts"] == exact["counts"] else None


def component_annotations(mask: np.ndarray, class_ids: Sequence[int]) -> list[dict[str, Any]]:
    """COCO annotations (without ``id``/``image_id``) for each 8-connected component per class."""
    import cv2
    from pycocotools import mask as mask_utils

    height, width = mask.shape
    out: list[dict[str, Any]] = []
    for class_id in class_ids:
        binary = (mask == class_id).astype(np.uint8)
        if not binary.any():
            continue
        count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        for k in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[k])
            # One pixel of margin: the polygons then never touch the crop's border unless they
            # touch the image's, so rasterising in the crop equals rasterising in the image.
            x0, y0, x1, y1 = (
                max(x - 1, 0),
                max(y - 1, 0),
                min(x + w + 1, width),
                min(y + h + 1, height),
            )
            component = labels[y0:y1, x0:x1] == k
            polygons = _exact_polygons(component)
            segmentation: Any
            if polygons is not None:
                segmentation = [
                    [v + (x0 if i % 2 == 0 else y0) for i, v in enumerate(p)] for p in polygons
                ]
            else:
                full = np.zeros((height, width), dtype=np.uint8, order="F")
                full[y0:y1, x0:x1] = component
                rle = mask_utils.encode(full)
                segmentation = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
            out.append(
                {
                    "category_id": class_id,
                    "segmentation": segmentation,
                    "area": area,
                    "bbox": [x, y, w, h],
                    "iscrowd": 0,
                }
            )
    return out


@EXPORTERS.register("coco")
def export_coco(
    dataset: CanonicalDataset, out: Path, *, progress: bool = False, overwrite: bool = False
) -> Path:
    """Write ``dataset`` as one COCO instances JSON at ``out`` (see the module docstring).

    Args:
        dataset: the canonical dataset to export.
        out: the JSON file to write.
        progress: show a progress bar on stderr.
        overwrite: replace ``out`` if it exists.

    Returns:
        The written path.
    """
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"{out}: is a folder; give the path of the JSON file to write")
    if out.exists() and not overwrite:
        raise UsageError(f"{out}: already exists; choose a new file or pass --overwrite")
    if out.resolve().parent.exists() and not out.resolve().parent.is_dir():
        raise UsageError(f"{out}: {out.resolve().parent} is a file, not a folder")
    meta = dataset.meta
    class_ids = [c.id for c in meta.classes if c.id != 0]
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    samples = dataset.samples()
    with ProgressBar(progress, "export coco", len(samples)) as bar:
        for image_id, sample in enumerate(samples, start=1):
            height, width = image_io.image_size(sample.image)
            images.append(
                {
                    "id": image_id,
                    "file_name": sample.image.relative_to(dataset.images_dir).as_posix(),
                    "width": width,
                    "height": height,
                }
            )
            if sample.mask is not None:
                mask = dataset.read_mask(sample)
                _check_mask(
                    mask, sample.mask, (height, width), len(meta.classes), meta.ignore_index
                )
                for ann in component_annotations(mask, class_ids):
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
            bar.advance()
    info = {"description": meta.name, "version": __version__, "date_created": now_iso()}
    if meta.notes:
        info["notes"] = meta.notes
    doc = {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i, "name": meta.classes[i].name, "supercategory": ""} for i in class_ids
        ],
    }
    atomic_write_text(out, json.dumps(doc, ensure_ascii=False, separators=(",", ":")))
    return out


def _check_mask(
    mask: np.ndarray, path: Path, size: tuple[int, int], num_classes: int, ignore: int
) -> None:
    if mask.shape != size:
        raise DataError(
            path, f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is {size[1]}x{size[0]}"
        )
    values = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    bad = [int(v) for v in values if v >= num_classes and v != ignore]
    if bad:
        raise DataError(
            path, f"mask values {bad} are not class ids (0..{num_classes - 1}) or {ignore}"
        )
