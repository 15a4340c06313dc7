"""LabelMe JSON (3.x to 5.x): one JSON per image, shapes painted in list order.

Every shape type is drawn the way labelme's own ``shape_to_mask`` draws it (Pillow, vertices at
pixel centres, outline included): ``polygon`` (also 3.x files without ``shape_type``),
``rectangle``, ``circle`` (centre + a point on the rim), ``line``/``linestrip`` (``line_width``,
10 px by default), ``point`` (disk of ``point_radius``, 5 px) and ``mask`` (a base64 PNG placed at
its box). Later shapes paint over earlier ones. The image is ``imageData`` when embedded, else the
file ``imagePath`` names (Windows separators accepted, never outside the source folder).
Labels become classes from ``--classes`` or, by default, background = 0 then labels sorted.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from segflow.data.formats import IMPORTERS
from segflow.data.formats.base import (
    Importer,
    ImportOptions,
    ImportPlan,
    RenderResult,
    SampleSpec,
    find_files,
    read_json,
    resolve_image_path,
    safe_stem,
)
from segflow.data.formats.raster import as_points, check_bounds
from segflow.errors import DataError

SHAPE_TYPES = ("polygon", "rectangle", "circle", "line", "linestrip", "point", "mask")
_MIN_POINTS = {
    "polygon": 3,
    "rectangle": 2,
    "circle": 2,
    "line": 2,
    "linestrip": 2,
    "point": 1,
    "mask": 2,
}


def _is_labelme(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("shapes"), list)


@IMPORTERS.register("labelme")
class LabelMeImporter(Importer):
    """LabelMe JSON files (a file, or a folder searched recursively)."""

    name = "labelme"
    summary = "LabelMe JSON: polygon, rectangle, circle, line, linestrip, point, mask shapes"

    def plan(self, src: Path, options: ImportOptions) -> ImportPlan:
        """Read every JSON, keep the shapes, note where each image is."""
        files = [src] if src.is_file() else find_files(src, [".json"])
        root = src.parent if src.is_file() else src
        roots = [root] + ([options.images] if options.images else [])
        search = ([options.images] if options.images else []) + [root]
        samples: list[SampleSpec] = []
        labels: list[str] = []
        warnings: list[str] = []
        for path in files:
            doc = read_json(path)
            if not _is_labelme(doc):
                if src.is_file():
                    raise DataError(path, "not a LabelMe file (no 'shapes' list)")
                warnings.append(f"{path}: not a LabelMe file (no 'shapes' list), ignored")
                continue
            shapes = self._parse_shapes(path, doc["shapes"], warnings, options)
            labels += [s["label"] for s in shapes]
            image: Path | None = None
            if not doc.get("imageData"):
                image = resolve_image_path(
                    str(doc.get("imagePath") or ""), path, roots, [path.parent, *search]
                )
            declared = None
            if isinstance(doc.get("imageHeight"), int) and isinstance(doc.get("imageWidth"), int):
                declared = (doc["imageHeight"], doc["imageWidth"])
            samples.append(SampleSpec(safe_stem(path.stem), path, image, shapes, declared))
        if files and not samples:
            raise DataError(src, "no LabelMe JSON found (every .json lacks a 'shapes' list)")
        return ImportPlan(samples, labels, sort_labels=True, warnings=warnings)

    @staticmethod
    def _parse_shapes(
        path: Path, raw_shapes: list[Any], warnings: list[str], options: ImportOptions
    ) -> list[dict[str, Any]]:
        shapes = []
        for i, shape in enumerate(raw_shapes):
            where = f"shape {i}"
            if not isinstance(shape, dict):
                raise DataError(path, f"{where} is not an object")
            label = str(shape.get("label") or "").strip()
            kind = shape.get("shape_type") or "polygon"  # LabelMe 3.x has no shape_type
            if kind not in SHAPE_TYPES:
                raise DataError(path, f"{where} ({label!r}) has unknown shape_type {kind!r}")
            if not label:
                msg = f"{path}: {where} ({kind}) has an empty label, skipped"
                if options.strict:
                    raise DataError(path, f"{where} ({kind}) has an empty label")
                warnings.append(msg)
                continue
            points = as_points(shape.get("points", []), path, f"{where} ({label!r})")
            if len(points) < _MIN_POINTS[kind]:
                raise DataError(
                    path,
                    f"{where} ({label!r}) is a {kind} with {len(points)} point(s); it needs at least "
                    f"{_MIN_POINTS[kind]}",
                )
            shapes.append(
                {"label": label, "kind": kind, "points": points, "mask": shape.get("mask")}
            )
        return shapes

    def image_bytes(self, spec: SampleSpec) -> bytes:
        """Decode the embedded ``imageData``."""
        doc = read_json(spec.source)
        try:
            return base64.b64decode(doc["imageData"], validate=False)
        except (binascii.Error, TypeError, ValueError):
            raise DataError(spec.source, "imageData is not valid base64") from None

    def render(
        self,
        spec: SampleSpec,
        height: int,
        width: int,
        label_ids: Mapping[str, int],
        options: ImportOptions,
    ) -> RenderResult:
        """Paint the shapes in order with Pillow (see the module docstring)."""
        from PIL import Image, ImageDraw

        canvas = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(canvas)
        for i, shape in enumerate(spec.payload):
            value = label_ids.get(shape["label"])
            if value is None:
                continue
            pts: np.ndarray = shape["points"]
            what = f"shape {i} ({shape['label']!r})"
            check_bounds(pts, height, width, spec.source, what)
            xy = [(float(x), float(y)) for x, y in pts]
            kind = shape["kind"]
            if kind == "polygon":
                draw.polygon(xy, fill=value, outline=value)
            elif kind == "rectangle":
                (x0, y0), (x1, y1) = xy[0], xy[1]
                draw.rectangle(
                    [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=value, outline=value
                )
            elif kind == "circle":
                (cx, cy), (px, py) = xy[0], xy[1]
                r = math.hypot(cx - px, cy - py)
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=value, outline=value)
            elif kind in ("line", "linestrip"):
                draw.line(xy, fill=value, width=options.line_width)
            elif kind == "point":
                cx, cy = xy[0]
                r = options.point_radius
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=value, outline=value)
            else:  # mask
                canvas = self._paste_mask(canvas, shape, value, spec.source, what)
                draw = ImageDraw.Draw(canvas)
        return RenderResult(np.asarray(canvas, dtype=np.uint8).copy())

    @staticmethod
    def _paste_mask(canvas: Any, shape: dict[str, Any], value: int, source: Path, what: str) -> Any:
        from PIL import Image

        try:
            data = base64.b64decode(shape.get("mask") or "", validate=False)
            bits = np.asarray(Image.open(io.BytesIO(data)).convert("L")) > 0
        except Exception:  # any decoding failure of the embedded PNG is a data error
            raise DataError(source, f"{what}: 'mask' is not a base64 PNG") from None
        arr = np.asarray(canvas).copy()
        x0, y0 = (int(v) for v in shape["points"][0])
        h, w = bits.shape
        ys, xs = (
            slice(max(y0, 0), min(y0 + h, arr.shape[0])),
            slice(max(x0, 0), min(x0 + w, arr.shape[1])),
        )
        sub = bits[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        arr[ys, xs][sub] = value
        return Image.fromarray(arr)
