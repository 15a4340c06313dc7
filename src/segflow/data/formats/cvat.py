"""CVAT for images 1.1 XML: ``<image>`` elements holding shapes, painted in ``z_order``.

Area shapes are rasterised the way CVAT/datumaro turn them into masks: ``polygon`` and ``box``
(``rotation`` in degrees, clockwise about the box centre) with pycocotools, ``mask`` (CVAT's RLE:
run lengths alternating off/on from an off-run, row-major inside its ``left top width height``
box) placed exactly, ``ellipse`` with ``cv2.ellipse`` after rounding (CVAT's ``EllipsesToMasks``).
``polyline``, ``points`` and ``cuboid`` have no area and are skipped with one warning per kind;
``tag`` and ``skeleton`` elements are ignored. Shapes are painted in ascending ``z_order``,
document order breaking ties. ``<track>`` shapes (video mode) join the image whose ``id`` is their
``frame`` unless ``outside="1"``.

Classes: the labels declared in ``<meta>`` (except ``tag`` and ``skeleton`` labels and skeleton
parts), in order, with their ``<color>``, then labels used by shapes but not declared; class 0 is
background (a label named ``background`` becomes it). Shapes with an empty label are skipped.
SRC is the XML, or a folder of them (``annotations.xml``, or per-subset files such as
``train.xml`` whose name gives the split). Images are looked up beside the XML, in an ``images/``
folder next to it, or in ``--images``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from segflow.data.formats import IMPORTERS
from segflow.data.formats.base import (
    Importer,
    ImportOptions,
    ImportPlan,
    RenderResult,
    SampleSpec,
    contained,
    find_files,
    resolve_image_path,
    safe_stem,
)
from segflow.data.formats.raster import (
    as_points,
    box_polygon,
    check_bounds,
    coco_polygons,
    filled_ellipse,
    rotated_box_polygon,
)
from segflow.errors import DataError

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

AREA_KINDS = ("polygon", "box", "mask", "ellipse")
NO_AREA_KINDS = ("polyline", "points", "cuboid")
SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_NOT_CLASSES = ("tag", "skeleton")  # declared label types that never paint pixels


def read_xml(path: Path) -> Element:
    """Parse an XML file with defusedxml: entity declarations and external references are refused.

    Raises:
        DataError: naming ``path``, when the file is unsafe, malformed or unreadable.
    """
    from xml.etree.ElementTree import ParseError

    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import parse

    try:
        root: Element | None = parse(path).getroot()
    except DefusedXmlException as exc:
        raise DataError(
            path, f"unsafe XML refused: it declares entities or external references ({exc!r})"
        ) from None
    except ParseError as exc:
        line, column = exc.position
        reason = str(exc).split(":")[0]
        raise DataError(path, f"not valid XML ({reason} at line {line}, column {column})") from None
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror}") from None
    if root is None:
        raise DataError(path, "XML file has no root element")
    return root


@dataclass
class CvatShape:
    """One area shape of an image, ready to paint."""

    label: str
    kind: str  # one of AREA_KINDS
    z: int
    seq: int  # document order, breaks z ties
    points: np.ndarray  # polygon vertices, box/ellipse/mask numbers (see _parse_area)
    what: str  # where it is, for messages: "image 'a.jpg' shape 3 (box 'car')"
    rotation: float = 0.0
    rle: str = ""  # mask only: CVAT's RLE, decoded once the box is checked against the image


def _num(elem: Element, name: str, path: Path, what: str) -> float:
    raw = elem.get(name, "")
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(path, f"{what}: attribute {name}={raw!r} is not a finite number")
    return value


def _parse_points(text: str, path: Path, what: str) -> np.ndarray:
    try:
        pairs = [[float(v) for v in pair.split(",")] for pair in text.split(";") if pair.strip()]
    except ValueError:
        raise DataError(path, f"{what}: malformed points {text[:40]!r}") from None
    return as_points(pairs, path, what)


def decode_mask_rle(rle: str, width: int, height: int, path: Path, what: str) -> np.ndarray:
    """Decode CVAT's mask RLE (``"3, 5, 7"``: off/on runs, row-major) to bool ``height x width``."""
    try:
        counts = np.array([int(c) for c in rle.split(",")], dtype=np.int64)
    except (ValueError, OverflowError):
        raise DataError(path, f"{what}: rle is not comma-separated integers") from None
    if width <= 0 or height <= 0 or (counts < 0).any():
        raise DataError(path, f"{what}: negative run or empty {width}x{height} box")
    if int(counts.sum()) != width * height:
        total, size = int(counts.sum()), f"{width}x{height} = {width * height}"
        raise DataError(path, f"{what}: rle counts sum to {total}, not {size}")
    return np.repeat(np.arange(len(counts)) % 2 == 1, counts).reshape(height, width)


def _parse_area(elem: Element, label: str, z: int, seq: int, path: Path, what: str) -> CvatShape:
    kind = elem.tag
    rotation = _num(elem, "rotation", path, what) if elem.get("rotation") else 0.0
    if kind == "polygon":
        pts = _parse_points(elem.get("points") or "", path, what)
        if len(pts) < 3:
            raise DataError(path, f"{what} has {len(pts)} point(s); a polygon needs at least 3")
        return CvatShape(label, kind, z, seq, pts, what)
    if kind in ("box", "ellipse"):
        names = ("xtl", "ytl", "xbr", "ybr") if kind == "box" else ("cx", "cy", "rx", "ry")
        nums = np.array([_num(elem, a, path, what) for a in names])
        return CvatShape(label, kind, z, seq, nums, what, rotation)
    box = [int(_num(elem, a, path, what)) for a in ("left", "top", "width", "height")]
    if box[2] <= 0 or box[3] <= 0:
        raise DataError(path, f"{what}: empty {box[2]}x{box[3]} mask box")
    rle = elem.get("rle") or ""
    return CvatShape(label, kind, z, seq, np.array(box, dtype=np.float64), what, rle=rle)


def _declared_labels(doc: Element) -> tuple[list[str], dict[str, tuple[int, int, int]]]:
    names: list[str] = []
    colors: dict[str, tuple[int, int, int]] = {}
    for label in doc.iterfind("meta/*/labels/label"):
        name = (label.findtext("name") or "").strip()
        kind = (label.findtext("type") or "").strip()
        if not name or kind in _NOT_CLASSES or label.find("parent") is not None:
            continue
        names.append(name)
        color = (label.findtext("color") or "").strip().lstrip("#")
        if re.fullmatch(r"[0-9a-fA-F]{6}", color):
            colors[name] = (int(color[0:2], 16), int(color[2:4], 16), int(color[4:6], 16))
    return names, colors


class _FileParser:
    """Turns one XML file's shape elements into CvatShapes; notes labels used and skips."""

    def __init__(self, path: Path, strict: bool) -> None:
        self.path = path
        self.strict = strict
        self.used: list[str] = []
        self.skipped: Counter[str] = Counter()
        self.unlabelled: Counter[str] = Counter()

    def shape(self, elem: Element, label: str, seq: int, where: str) -> CvatShape | None:
        kind = elem.tag
        if kind not in AREA_KINDS and kind not in NO_AREA_KINDS:
            return None  # tag, skeleton, attribute and anything newer: not a region
        if not label.strip():
            if self.strict:
                raise DataError(self.path, f"--strict: {where} ({kind}) has an empty label")
            self.unlabelled[kind] += 1
            return None
        self.used.append(label)
        if kind in NO_AREA_KINDS:
            self.skipped[kind] += 1
            return None
        what = f"{where} ({kind} {label!r})"
        z = int(_num(elem, "z_order", self.path, what)) if elem.get("z_order") else 0
        return _parse_area(elem, label, z, seq, self.path, what)

    def warnings(self) -> list[str]:
        out = [f"{self.path}: skipped {n} {k} shape(s): no area" for k, n in self.skipped.items()]
        if self.unlabelled:
            kinds = ", ".join(f"{n} {k}" for k, n in self.unlabelled.items())
            total = sum(self.unlabelled.values())
            out.append(f"{self.path}: skipped {total} shape(s) with an empty label ({kinds})")
        return out


def _track_shapes(doc: Element, parser: _FileParser, first_seq: int) -> dict[int, list[CvatShape]]:
    by_frame: dict[int, list[CvatShape]] = {}
    seq = first_seq
    for track in doc.iterfind("track"):
        label = track.get("label") or ""
        for elem in track:
            if elem.get("outside") == "1":
                continue
            where = f"track {track.get('id')!r}"
            frame = int(_num(elem, "frame", parser.path, where))
            shape = parser.shape(elem, label, seq, f"{where} frame {frame}")
            seq += 1
            if shape is not None:
                by_frame.setdefault(frame, []).append(shape)
    return by_frame


def _find_image(name: str, xml: Path, roots: list[Path], options: ImportOptions) -> Path:
    norm = name.replace("\\", "/")
    search = ([options.images] if options.images else []) + [xml.parent / "images", xml.parent]
    if not norm.startswith("/"):
        for folder in search[:-1]:
            candidate = folder / norm
            if candidate.is_file() and contained(candidate, roots):
                return candidate
    return resolve_image_path(name, xml, roots, search)


@IMPORTERS.register("cvat")
class CvatImporter(Importer):
    """CVAT for images 1.1 XML (a file, or a folder of per-subset files)."""

    name = "cvat"
    summary = "CVAT for images 1.1 XML: polygon, box (rotated), mask, ellipse shapes; tracks"

    def plan(self, src: Path, options: ImportOptions) -> ImportPlan:
        """Read every XML, keep each image's area shapes sorted by z_order, note the images."""
        files = [src] if src.is_file() else find_files(src, [".xml"])
        root = src.parent if src.is_file() else src
        roots = [root] + ([options.images] if options.images else [])
        samples: list[SampleSpec] = []
        declared: list[str] = []
        used: list[str] = []
        colors: dict[str, tuple[int, int, int]] = {}
        warnings: list[str] = []
        for path in files:
            doc = read_xml(path)
            if doc.tag != "annotations":
                if src.is_file():
                    raise DataError(path, f"not CVAT XML (root <{doc.tag}>, not <annotations>)")
                warnings.append(f"{path}: not CVAT XML (root <{doc.tag}>), ignored")
                continue
            names, file_colors = _declared_labels(doc)
            declared += names
            colors = {**file_colors, **colors}
            parser = _FileParser(path, options.strict)
            samples += self._file_samples(doc, parser, roots, options)
            used += parser.used
            warnings += parser.warnings()
        return ImportPlan(samples, [*declared, *used], source_colors=colors, warnings=warnings)

    @staticmethod
    def _file_samples(
        doc: Element, parser: _FileParser, roots: list[Path], options: ImportOptions
    ) -> list[SampleSpec]:
        path = parser.path
        images = doc.findall("image")
        if not images and doc.find("track") is not None:
            raise DataError(
                path, "CVAT for video export (tracks, no <image>); export 'CVAT for images 1.1'"
            )
        file_split = SPLITS.get(path.stem.lower(), "")
        samples = []
        frames: list[tuple[Element, int, list[CvatShape]]] = []
        seq = 0
        for image in images:
            name = image.get("name") or ""
            shapes = []
            for i, elem in enumerate(image):
                where = f"image {name!r} shape {i}"
                shape = parser.shape(elem, elem.get("label") or "", seq, where)
                seq += 1
                if shape is not None:
                    shapes.append(shape)
            frame = int(_num(image, "id", path, f"image {name!r}")) if image.get("id") else -1
            frames.append((image, frame, shapes))
        tracks = _track_shapes(doc, parser, seq)
        for image, frame, shapes in frames:
            name = image.get("name") or ""
            what = f"image {name!r}"
            declared = None
            if image.get("width") and image.get("height"):
                h, w = (int(_num(image, a, path, what)) for a in ("height", "width"))
                declared = (h, w)
                for shape in (s for s in shapes if s.kind == "mask"):  # before decoding its RLE
                    check_bounds(_box_corners(shape), h, w, path, shape.what)
            relative = PurePosixPath(name.replace("\\", "/").lstrip("/"))
            samples.append(
                SampleSpec(
                    safe_stem(str(relative.with_suffix(""))),
                    path,
                    _find_image(name, path, roots, options),
                    sorted([*shapes, *tracks.get(frame, [])], key=lambda s: (s.z, s.seq)),
                    declared,
                    split=SPLITS.get((image.get("subset") or "").strip().lower(), file_split),
                )
            )
        return samples

    def render(
        self,
        spec: SampleSpec,
        height: int,
        width: int,
        label_ids: Mapping[str, int],
        options: ImportOptions,
    ) -> RenderResult:
        """Paint the shapes in z order (see the module docstring)."""
        mask = np.zeros((height, width), dtype=np.uint8)
        for shape in spec.payload:
            value = label_ids.get(shape.label)
            if value is None:
                continue
            if shape.kind == "mask":
                _paste(mask, shape, value, spec.source)
            else:
                mask[_region(shape, height, width, spec.source)] = value
        return RenderResult(mask)


def _region(shape: CvatShape, height: int, width: int, source: Path) -> np.ndarray:
    what = shape.what
    if shape.kind == "ellipse":
        cx, cy, rx, ry = shape.points
        corners = np.array([[cx - rx, cy - ry], [cx + rx, cy + ry]])
        check_bounds(corners, height, width, source, what)
        return filled_ellipse(cx, cy, rx, ry, shape.rotation, height, width)
    pts = shape.points
    if shape.kind == "box":
        x0, y0, x1, y1 = shape.points
        pts = box_polygon(x0, y0, x1, y1)
        if shape.rotation:  # CVAT turns boxes about their centre
            pts = rotated_box_polygon(x0, y0, x1 - x0, y1 - y0, shape.rotation)
            pts += np.array([(x0 + x1) / 2, (y0 + y1) / 2]) - pts.mean(axis=0)
    check_bounds(pts, height, width, source, what)
    return coco_polygons([pts], height, width)


def _box_corners(shape: CvatShape) -> np.ndarray:
    left, top, w, h = shape.points
    return np.array([[left, top], [left + w, top + h]], dtype=np.float64)


def _paste(mask: np.ndarray, shape: CvatShape, value: int, source: Path) -> None:
    left, top, w, h = (int(v) for v in shape.points)
    check_bounds(_box_corners(shape), mask.shape[0], mask.shape[1], source, shape.what)
    bits = decode_mask_rle(shape.rle, w, h, source, shape.what)
    ys = slice(max(top, 0), min(top + h, mask.shape[0]))
    xs = slice(max(left, 0), min(left + w, mask.shape[1]))
    sub = bits[ys.start - top : ys.stop - top, xs.start - left : xs.stop - left]
    mask[ys, xs][sub] = value
