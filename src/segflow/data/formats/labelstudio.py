"""Label Studio JSON export: one task per image, the first non-cancelled annotation painted.

Results are painted in list order (later over earlier). Coordinates are percentages of
``original_width``/``original_height``; after converting them to pixels the COCO rules apply (as
in Label Studio's own COCO export): ``polygonlabels`` and ``rectanglelabels`` (``rotation`` in
degrees, clockwise about the top-left corner) are rasterised with pycocotools, ``brushlabels`` are
decoded from Label Studio's brush RLE (alpha channel > 0), ``ellipselabels`` are filled like CVAT
ellipses. ``keypointlabels`` have no area and are skipped with one warning; image-level results
(choices, text...) are ignored. Generic ``labels`` results are recognised by their geometry.

Classes: the ``<Label>`` values of a ``label_config.xml`` (or the one ``*.xml`` holding a
``<View>``) next to the export, in order and with their ``background`` colours, then labels used
but not declared; class 0 is background. Images are never fetched: the file is looked up by name
(see :func:`image_candidates`) in ``--images``, beside the JSON, or in an ``images/`` folder there.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

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
    portable_name,
    read_json,
    safe_stem,
)
from segflow.data.formats.cvat import read_xml
from segflow.data.formats.raster import (
    as_points,
    check_bounds,
    coco_polygons,
    filled_ellipse,
    rotated_box_polygon,
)
from segflow.data.image_io import IMAGE_EXTENSIONS
from segflow.errors import DataError

LABEL_TAGS = (
    "PolygonLabels",
    "RectangleLabels",
    "BrushLabels",
    "KeyPointLabels",
    "EllipseLabels",
    "Labels",
)
_UPLOAD_PREFIX = re.compile(r"^[0-9a-fA-F]{8}-")  # Label Studio renames uploads e97d4735-x.jpg
_KINDS = ("polygon", "rectangle", "brush", "ellipse", "keypoint")
_NOT_A_REGION = frozenset(
    {"choices", "textarea", "rating", "taxonomy", "number", "datetime", "relation"}
)


def decode_brush_rle(data: Sequence[int], expected: int | None = None) -> np.ndarray:
    """Decode Label Studio's brush RLE into its flat array of words (RGBA bytes for a brush mask).

    The format is the ``rle-pack`` bitstream of thi-ng/umbrella (MSB first): a 32-bit value
    count, 5 bits word size - 1, four 4-bit run-size fields - 1, then until the count is reached:
    a 1-bit flag, 2 bits choosing a run size, the run length - 1 in that many bits, and either one
    word repeated (flag 1) or that many literal words (flag 0). Written here because the only
    Python implementation ships in label-studio-sdk, which pulls in a whole API client.

    ``expected``: the number of values the image needs; a stream declaring another count is
    refused before anything is allocated for it.

    Raises:
        ValueError: when the stream is truncated, declares another count than ``expected`` or
            its runs overshoot the count.
    """
    raw = np.asarray(data)
    if raw.ndim != 1 or not np.issubdtype(raw.dtype, np.integer):
        raise ValueError("brush RLE is not a list of bytes")
    if raw.min() < 0 or raw.max() > 255:
        raise ValueError("brush RLE holds values outside 0..255")
    bits = np.unpackbits(raw.astype(np.uint8)).astype(np.int64)
    weights = np.int64(1) << np.arange(31, -1, -1, dtype=np.int64)
    pos = 0

    def read(n: int, count: int = 1) -> np.ndarray:
        nonlocal pos
        end = pos + n * count
        if end > bits.size:
            raise ValueError("brush RLE is truncated")
        words = bits[pos:end].reshape(count, n) @ weights[32 - n :]
        pos = end
        return words

    num = int(read(32)[0])
    if expected is not None and num != expected:
        raise ValueError(f"brush RLE declares {num} values, not the {expected} of the image")
    word_size = int(read(5)[0]) + 1
    run_sizes = [int(v) + 1 for v in read(4, 4)]
    out = np.zeros(num, dtype=np.uint8 if word_size <= 8 else np.uint32)
    i = 0
    while i < num:
        repeat = int(read(1)[0])
        run = int(read(run_sizes[int(read(2)[0])])[0]) + 1
        if i + run > num:
            raise ValueError(f"brush RLE run ends at {i + run}, past its {num} values")
        out[i : i + run] = read(word_size)[0] if repeat else read(word_size, run)
        i += run
    return out


def image_candidates(task: Mapping[str, Any], key: str) -> list[str]:
    """File names to look for, in order, for a task's image (never a URL to fetch).

    The base name of ``data[key]`` (``/data/upload/1/x.jpg``, ``s3://b/x.jpg``, a local-files
    ``?d=dir/x.jpg``), ``file_upload``, both without Label Studio's 8-hex-digit upload prefix,
    then the base name with common image extensions when it has none (``/image2``).
    """
    from urllib.parse import parse_qs, unquote, urlsplit

    names = []
    raw = task.get("data", {}).get(key)
    base = ""
    if isinstance(raw, str) and raw.strip() and not raw.startswith("data:"):  # not inline bytes
        url = urlsplit(raw.strip())
        local = parse_qs(url.query).get("d")
        base = portable_name(unquote(local[0] if local else url.path))
        names += [base, _UPLOAD_PREFIX.sub("", base)]
    upload = task.get("file_upload")
    if isinstance(upload, str) and upload.strip():
        name = portable_name(upload.strip())
        names += [name, _UPLOAD_PREFIX.sub("", name)]
    if base and not PurePosixPath(base).suffix:
        names += [base + ext for ext in IMAGE_EXTENSIONS]
    return [n for n in dict.fromkeys(names) if n]


def _tasks(doc: Any) -> list[dict[str, Any]] | None:
    tasks = [doc] if isinstance(doc, dict) else doc
    if not isinstance(tasks, list):
        return None
    ok = all(
        isinstance(t, dict)
        and isinstance(t.get("data"), dict)
        and isinstance(t.get("annotations", t.get("completions", [])), list)
        for t in tasks
    )
    return tasks if ok else None


@dataclass
class LabelConfig:
    """What a Label Studio labelling config declares."""

    labels: list[str]
    colors: dict[str, tuple[int, int, int]]
    image_key: str = "image"


def read_label_config(path: Path) -> LabelConfig | None:
    """Labels (value or alias), colours and image variable of a ``<View>`` config; else None."""
    from PIL import ImageColor

    root = read_xml(path)
    if root.tag != "View":
        return None
    config = LabelConfig([], {})
    image = next(root.iter("Image"), None)
    if image is not None and (image.get("value") or "").startswith("$"):
        config.image_key = (image.get("value") or "")[1:]
    for tag in (e for e in root.iter() if e.tag in LABEL_TAGS):
        for label in tag.iter("Label"):
            name = label.get("alias") or label.get("value") or ""
            if not name.strip():
                continue
            config.labels.append(name)
            with contextlib.suppress(ValueError):  # no or unreadable colour: default palette
                config.colors[name] = ImageColor.getrgb(label.get("background") or "")[:3]
    return config


def _find_config(folder: Path, warnings: list[str]) -> LabelConfig | None:
    files = sorted(folder.glob("*.xml"), key=lambda p: (p.name != "label_config.xml", p.name))
    configs = [(p, c) for p in files if (c := read_label_config(p)) is not None]
    if len(configs) > 1:
        warnings.append(f"{folder}: several label configs; used {configs[0][0].name}")
    return configs[0][1] if configs else None


def _kind(rtype: str, value: Mapping[str, Any]) -> str | None:
    base = rtype.lower().removesuffix("labels")
    if base in _KINDS:
        return base
    if base:  # choices, textarea...: not a region
        return None
    if "points" in value:
        return "polygon"
    if "rle" in value:
        return "brush"
    if "radiusX" in value:
        return "ellipse"
    if "width" in value and "height" in value and "x" in value:
        return "rectangle"
    return "keypoint" if "x" in value and "y" in value else None


_Regions = tuple[list[dict[str, Any]], "tuple[int, int] | None"]


class _TaskParser:
    """Turns a file's tasks into regions; counts what it skipped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.used: list[str] = []
        self.skipped: Counter[str] = Counter()

    def regions(self, task: Mapping[str, Any], tid: Any) -> _Regions | None:
        """The regions of the task's first submitted annotation and the image size they state."""
        annotations = task.get("annotations") or task.get("completions") or []
        chosen = next(
            (a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")), None
        )
        if chosen is None:
            self.skipped["task(s) without a submitted annotation"] += 1
            return None
        results = chosen.get("result")
        if not isinstance(results, list):
            raise DataError(self.path, f"task {tid}: annotation 'result' is not a list")
        regions: list[dict[str, Any]] = []
        sizes: set[tuple[int, int]] = set()
        for i, r in enumerate(results):
            if not isinstance(r, dict):
                raise DataError(self.path, f"task {tid}: result {i} is not an object")
            rtype, value = str(r.get("type", "")), r.get("value")
            kind = _kind(rtype, value) if isinstance(value, dict) else None
            if kind is None or not isinstance(value, dict):
                if rtype.lower() not in _NOT_A_REGION:
                    self.skipped[f"result(s) of unknown type {rtype!r}"] += 1
                continue
            h, w = r.get("original_height"), r.get("original_width")
            if isinstance(h, int) and isinstance(w, int):
                sizes.add((h, w))
            labels = value.get(rtype) or value.get("labels") or []
            label = str(labels[0]).strip() if isinstance(labels, list) and labels else ""
            if not label:
                self.skipped[f"{kind} result(s) with no label"] += 1
                continue
            self.used.append(label)
            if kind == "keypoint":
                self.skipped["keypoint result(s): no area"] += 1
                continue
            if len(labels) > 1:
                self.skipped[f"{kind} result(s) with several labels: first label kept"] += 1
            what = f"task {tid} result {i}"
            regions.append({"label": label, "kind": kind, "value": value, "what": what})
        if len(sizes) > 1:
            raise DataError(self.path, f"task {tid}: results state different sizes {sorted(sizes)}")
        return regions, next(iter(sizes), None)

    def warnings(self) -> list[str]:
        """One warning per kind of thing skipped, with its count."""
        return [f"{self.path}: skipped {n} {what}" for what, n in self.skipped.items()]


@IMPORTERS.register("labelstudio")
class LabelStudioImporter(Importer):
    """Label Studio JSON exports (a file, or a folder of them) with an optional label config."""

    name = "labelstudio"
    summary = "Label Studio JSON export: polygon, rectangle (rotated), brush, ellipse labels"

    def plan(self, src: Path, options: ImportOptions) -> ImportPlan:
        """Read every export, keep each task's regions, find each task's image."""
        folder = src.parent if src.is_file() else src
        files = [src] if src.is_file() else find_files(src, [".json"])
        warnings: list[str] = []
        config = _find_config(folder, warnings) or LabelConfig([], {})
        roots = [folder] + ([options.images] if options.images else [])
        samples: list[SampleSpec] = []
        used: list[str] = []
        for path in files:
            tasks = _tasks(read_json(path))
            if tasks is None:
                problem = "not a Label Studio JSON export (tasks with 'data' and 'annotations')"
                if src.is_file():
                    raise DataError(path, problem)
                warnings.append(f"{path}: {problem}, ignored")
                continue
            parser = _TaskParser(path)
            for n, task in enumerate(tasks):
                tid = task.get("id", f"#{n}")
                found = parser.regions(task, tid)
                if found is None:
                    continue  # no submitted annotation: the image is not labelled
                regions, declared = found
                image = self._find_image(task, tid, path, config.image_key, roots, options)
                samples.append(SampleSpec(safe_stem(image.stem), path, image, regions, declared))
            used += parser.used
            warnings += parser.warnings()
        labels = [*config.labels, *used]
        return ImportPlan(samples, labels, source_colors=config.colors, warnings=warnings)

    @staticmethod
    def _find_image(
        task: Mapping[str, Any],
        tid: Any,
        path: Path,
        key: str,
        roots: list[Path],
        options: ImportOptions,
    ) -> Path:
        names = image_candidates(task, key)
        folders = [options.images] if options.images else []
        folders += [path.parent, path.parent / "images"]
        for name in names:
            for folder in folders:
                candidate = folder / name
                if candidate.is_file() and contained(candidate, roots):
                    return candidate
        if not names:
            raise DataError(path, f"task {tid}: data.{key} names no image")
        raise DataError(
            path,
            f"task {tid}: image not found (tried {', '.join(names)} in "
            f"{', '.join(str(f) for f in folders)}); pass --images DIR",
        )

    def render(
        self,
        spec: SampleSpec,
        height: int,
        width: int,
        label_ids: Mapping[str, int],
        options: ImportOptions,
    ) -> RenderResult:
        """Paint the regions in list order (see the module docstring)."""
        mask = np.zeros((height, width), dtype=np.uint8)
        for region in spec.payload:
            value = label_ids.get(region["label"])
            if value is not None:
                mask[_region_mask(region, height, width, spec.source)] = value
        return RenderResult(mask)


def _region_mask(region: Mapping[str, Any], height: int, width: int, source: Path) -> np.ndarray:
    v, kind = region["value"], region["kind"]
    what = f"{region['what']} ({kind} {region['label']!r})"
    if kind == "brush":
        if v.get("format", "rle") != "rle":
            raise DataError(source, f"{what}: brush format {v.get('format')!r} is not 'rle'")
        try:
            words = decode_brush_rle(v.get("rle") or [], height * width * 4)
        except ValueError as exc:
            raise DataError(source, f"{what}: {exc}") from None
        if words.size != height * width * 4:
            size = f"{width}x{height}x4"
            raise DataError(source, f"{what}: brush RLE holds {words.size} values, not {size}")
        return words.reshape(height, width, 4)[:, :, 3] > 0
    scale = np.array([width / 100.0, height / 100.0])
    try:
        if kind == "polygon":
            pts = as_points(v.get("points"), source, what) * scale
            if len(pts) < 3:
                raise DataError(source, f"{what} has {len(pts)} point(s); a polygon needs 3")
        else:
            x, y = float(v["x"]) * scale[0], float(v["y"]) * scale[1]
            rotation = float(v.get("rotation") or 0.0)
            if kind == "ellipse":
                rx, ry = float(v["radiusX"]) * scale[0], float(v["radiusY"]) * scale[1]
                corners = np.array([[x - rx, y - ry], [x + rx, y + ry]])
                check_bounds(corners, height, width, source, what)
                return filled_ellipse(x, y, rx, ry, rotation, height, width)
            w, h = float(v["width"]) * scale[0], float(v["height"]) * scale[1]
            pts = rotated_box_polygon(x, y, w, h, rotation)
    except (KeyError, TypeError, ValueError):
        raise DataError(source, f"{what}: missing or non-numeric coordinates") from None
    check_bounds(pts, height, width, source, what)
    return coco_polygons([pts], height, width)
