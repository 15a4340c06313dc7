"""COCO JSON: instance segmentation (polygons, RLE) and panoptic segmentation.

**Instances.** ``segmentation`` is a list of flat polygons, a compressed RLE (``counts`` a string)
or an uncompressed RLE (``counts`` a list); pycocotools, COCO's own API, rasterises all three.
Annotations are painted **in file order, later ones over earlier ones** (the rule of COCO's
``cocostuffhelper``). ``iscrowd`` regions get their category (``--crowd class``, the default) or
the ignore index (``--crowd ignore``), painted in the same order. An annotation with an empty
segmentation or a bbox only is skipped with a warning.

**Panoptic.** A JSON whose annotations carry ``file_name`` + ``segments_info``, next to a PNG
folder with the JSON's stem (``panoptic_val2017.json`` + ``panoptic_val2017/``). Segment id =
R + 256·G + 256²·B; id 0 is VOID and becomes the ignore index; crowd segments follow ``--crowd``.

**Classes.** Class 0 is background, then every declared category (used or not) sorted by id, so
sparse ids become dense. Everything is keyed by category id: when two *used* categories share a
name, each becomes ``"name (id N)"`` (with a warning); an unused duplicate is dropped.

**Images.** ``file_name`` is looked up relative to the JSON's folder, then in ``--images``,
``images/`` and ``images/<split>/`` beside the JSON or beside its ``annotations/`` folder; never
outside SRC (and ``--images``). The split comes from the file name (``instances_val2017.json``)
or the folder (``train/_annotations.coco.json``). Width and height are checked against the image.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from segflow.data.dataset import IGNORE_INDEX
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
    resolve_image_path,
    safe_stem,
)
from segflow.data.formats.raster import as_points, check_bounds, coco_polygons, coco_rle
from segflow.errors import DataError

SPLITS = {"train": "train", "training": "train", "val": "val", "valid": "val",
          "validation": "val", "test": "test"}  # fmt: skip
_SPLIT_RE = re.compile(r"(?:^|[^a-z])(training|train|validation|valid|val|test)\d*(?=$|[^a-z])")


@dataclass
class CocoFile:
    """A parsed COCO JSON and what was learned from its name."""

    path: Path
    doc: dict[str, Any]
    panoptic: bool
    split: str = ""
    split_dir: str = ""  # the split as written (``valid``), for ``images/<split>/`` lookups


@dataclass
class CocoShape:
    """One instance annotation to paint."""

    ann_id: Any
    label: str
    crowd: bool
    polygons: list[np.ndarray] | None = None
    rle: dict[str, Any] | None = None


@dataclass
class PanopticPayload:
    """One panoptic PNG and its segments: id -> (label, iscrowd)."""

    png: Path
    segments: dict[int, tuple[str, bool]]


def coco_problem(doc: Any) -> str | None:
    """Why ``doc`` is not a COCO file, or ``None`` when it is one."""
    if not isinstance(doc, dict):
        return f"the top level is a {type(doc).__name__}, not an object"
    missing = [
        k for k in ("images", "annotations", "categories") if not isinstance(doc.get(k), list)
    ]
    if missing:
        return f"no {', '.join(repr(k) for k in missing)} list"
    return None


def load_coco(path: Path) -> CocoFile:
    """Read a COCO JSON, detect instances vs panoptic and its split; DataError if not COCO."""
    doc = read_json(path)
    problem = coco_problem(doc)
    if problem is not None:
        raise DataError(path, f"not a COCO file ({problem})")
    anns = doc["annotations"]
    panoptic = bool(anns) and all(isinstance(a, dict) and "segments_info" in a for a in anns)
    raw, split = "", ""
    for text in (path.stem, path.parent.name):
        match = _SPLIT_RE.search(text.lower())
        if match:
            raw, split = match.group(1), SPLITS[match.group(1)]
            break
    return CocoFile(path, doc, panoptic, split, raw)


def _int_id(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _few(ids: Sequence[Any]) -> str:
    return ", ".join(str(i) for i in ids[:5]) + (", ..." if len(ids) > 5 else "")


def _used_categories(files: Sequence[CocoFile]) -> set[int]:
    """Category ids referenced by annotations; an undeclared one is a DataError."""
    used: set[int] = set()
    for cf in files:
        declared = {c.get("id") for c in cf.doc["categories"] if isinstance(c, dict)}
        for i, ann in enumerate(cf.doc["annotations"]):
            if not isinstance(ann, dict):
                raise DataError(cf.path, f"annotation #{i} is not an object")
            items = ann.get("segments_info") if cf.panoptic else [ann]
            if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
                raise DataError(
                    cf.path, f"annotation #{i}: 'segments_info' is not a list of objects"
                )
            for item in items:
                cid = item.get("category_id")
                if not _int_id(cid) or cid not in declared:
                    what = (
                        f"segment {item.get('id')} of {ann.get('file_name')}"
                        if cf.panoptic
                        else f"annotation {ann.get('id', f'#{i}')}"
                    )
                    raise DataError(
                        cf.path, f"{what} has category_id {cid!r}, not declared in 'categories'"
                    )
                used.add(cid)
    return used


def category_labels(
    files: Sequence[CocoFile], warnings: list[str], *, drop_placeholder: bool = False
) -> tuple[dict[int, str], list[str], dict[str, tuple[int, int, int]]]:
    """Class labels of the categories, keyed by id (see the module docstring).

    Args:
        files: the parsed COCO files; their categories must agree on id -> name.
        warnings: receives a warning for each disambiguated name.
        drop_placeholder: Roboflow rule: category 0 with supercategory "none" is the project's
            superclass placeholder, dropped when no annotation uses it.

    Returns:
        label per category id, labels in category-id order, and the colours categories declare.
    """
    cats: dict[int, tuple[str, dict[str, Any], Path]] = {}
    for cf in files:
        for i, cat in enumerate(cf.doc["categories"]):
            if not isinstance(cat, dict) or not _int_id(cat.get("id")):
                raise DataError(cf.path, f"category #{i} has no integer 'id'")
            cid = cat["id"]
            name = str(cat.get("name") or "").strip() or f"category {cid}"
            if cid in cats and cats[cid][0] != name:
                raise DataError(
                    cf.path,
                    f"category id {cid} is {name!r} here but {cats[cid][0]!r} in {cats[cid][2]}",
                )
            cats.setdefault(cid, (name, cat, cf.path))
    used = _used_categories(files)
    placeholder = cats.get(0, ("", {}, None))[1].get("supercategory") == "none"
    if drop_placeholder and placeholder and 0 not in used:
        del cats[0]
    by_name: dict[str, list[int]] = {}
    for cid in sorted(cats):
        by_name.setdefault(cats[cid][0], []).append(cid)
    labels: dict[int, str] = {}
    for name, ids in by_name.items():
        used_ids = [i for i in ids if i in used]
        if len(used_ids) > 1:
            for i in used_ids:
                labels[i] = f"{name} (id {i})"
            warnings.append(
                f"{files[0].path}: categories {_few(used_ids)} are all named {name!r}; "
                f"they become classes {', '.join(repr(labels[i]) for i in used_ids)}"
            )
        else:
            labels[(used_ids or ids)[0]] = name
    order = [labels[cid] for cid in sorted(labels)]
    colors = {}
    for cid, label in labels.items():
        rgb = cats[cid][1].get("color")
        if (
            isinstance(rgb, list)
            and len(rgb) == 3
            and all(_int_id(c) and 0 <= c < 256 for c in rgb)
        ):
            colors[label] = (rgb[0], rgb[1], rgb[2])
    return labels, order, colors


def source_roots(src: Path, options: ImportOptions) -> list[Path]:
    """Folders images may be read from: SRC (for a JSON in ``annotations/``, its parent too)."""
    if src.is_dir():
        roots = [src]
    else:
        roots = [src.parent]
        if src.parent.name.lower() == "annotations":
            roots.append(src.parent.parent)
    return roots + ([options.images] if options.images is not None else [])


def _images(cf: CocoFile) -> dict[Any, dict[str, Any]]:
    out: dict[Any, dict[str, Any]] = {}
    for i, img in enumerate(cf.doc["images"]):
        if not isinstance(img, dict) or not isinstance(img.get("id"), int | str):
            raise DataError(cf.path, f"image entry #{i} has no 'id'")
        if not isinstance(img.get("file_name"), str):
            raise DataError(cf.path, f"image {img['id']} has no 'file_name'")
        if img["id"] in out:
            raise DataError(cf.path, f"image id {img['id']!r} is listed twice")
        out[img["id"]] = img
    return out


def _parse_segmentation(seg: Any, ann: dict[str, Any], cf: CocoFile, what: str) -> CocoShape | None:
    """The shape of one annotation, or None when it has nothing to paint."""
    shape = CocoShape(ann.get("id"), "", bool(ann.get("iscrowd")))
    if isinstance(seg, dict) and "counts" in seg:
        shape.rle = seg
        return shape
    if seg is None or isinstance(seg, list):
        polygons = [as_points(p, cf.path, what) for p in seg or []]
        shape.polygons = [p for p in polygons if len(p) >= 3]
        return shape if shape.polygons else None
    raise DataError(cf.path, f"{what}: 'segmentation' is neither polygons nor an RLE")


@dataclass
class _Planner:
    """Turns parsed COCO files into samples, once the category labels are known."""

    labels: Mapping[int, str]
    roots: list[Path]
    options: ImportOptions
    warnings: list[str]

    def sample(self, cf: CocoFile, img: dict[str, Any], payload: Any) -> SampleSpec:
        image = self._find_image(img["file_name"], cf)
        h, w = img.get("height"), img.get("width")
        declared = (int(h), int(w)) if _int_id(h) and _int_id(w) else None
        stem = safe_stem(Path(portable_name(img["file_name"])).stem)
        return SampleSpec(stem, cf.path, image, payload, declared, split=cf.split)

    def _find_image(self, raw: str, cf: CocoFile) -> Path:
        """``file_name`` under a search folder (keeping sub-folders), else by its bare name."""
        splits = list(dict.fromkeys(s for s in (cf.split_dir, cf.split) if s))
        dirs: list[Path] = []
        if self.options.images is not None:
            dirs += [self.options.images, *(self.options.images / s for s in splits)]
        for folder in (cf.path.parent, cf.path.parent.parent):
            dirs += [*(folder / "images" / s for s in splits), folder / "images"]
        dirs = [d for d in dict.fromkeys([*dirs, cf.path.parent]) if d.is_dir()]
        norm = raw.replace("\\", "/")
        if norm and not norm.startswith("/") and not re.match(r"^[A-Za-z]:/", norm):
            for folder in dirs:
                candidate = folder / norm
                if candidate.is_file() and contained(candidate, self.roots):
                    return candidate
        return resolve_image_path(raw, cf.path, self.roots, dirs)

    def instances(self, cf: CocoFile) -> list[SampleSpec]:
        images = _images(cf)
        shapes: dict[Any, list[CocoShape]] = {img_id: [] for img_id in images}
        skipped = []
        for i, ann in enumerate(cf.doc["annotations"]):
            ann_id = ann.get("id", f"#{i}")
            if ann.get("image_id") not in shapes:
                raise DataError(
                    cf.path,
                    f"annotation {ann_id}: image_id {ann.get('image_id')!r} not in 'images'",
                )
            shape = _parse_segmentation(ann.get("segmentation"), ann, cf, f"annotation {ann_id}")
            if shape is None:
                skipped.append(ann_id)
                continue
            shape.ann_id, shape.label = ann_id, self.labels[ann["category_id"]]
            shapes[ann["image_id"]].append(shape)
        if skipped:
            self.warnings.append(
                f"{cf.path}: {len(skipped)} annotation(s) without a segmentation (empty, or a "
                f"bbox only) skipped: id {_few(skipped)}"
            )
        return [self.sample(cf, img, shapes[img_id]) for img_id, img in images.items()]

    def panoptic(self, cf: CocoFile) -> list[SampleSpec]:
        images = _images(cf)
        png_dir = cf.path.parent / cf.path.stem
        if not png_dir.is_dir():
            raise DataError(cf.path, f"panoptic PNG folder '{cf.path.stem}/' not found beside it")
        payloads: dict[Any, PanopticPayload] = {}
        for ann in cf.doc["annotations"]:
            name = ann.get("file_name")
            if ann.get("image_id") not in images or not isinstance(name, str):
                raise DataError(
                    cf.path,
                    f"panoptic PNG {name!r}: image_id {ann.get('image_id')!r} not in 'images'",
                )
            png = png_dir / name.replace("\\", "/")
            if not png.is_file() or not contained(png, [png_dir]):
                raise DataError(cf.path, f"panoptic PNG '{name}' not found in {png_dir}")
            segments: dict[int, tuple[str, bool]] = {}
            for seg in ann["segments_info"]:
                if not _int_id(seg.get("id")) or seg["id"] in segments or seg["id"] == 0:
                    raise DataError(
                        cf.path, f"{name}: segment id {seg.get('id')!r} is 0 or repeated"
                    )
                segments[seg["id"]] = (self.labels[seg["category_id"]], bool(seg.get("iscrowd")))
            payloads[ann["image_id"]] = PanopticPayload(png, segments)
        unlabelled = [str(img["file_name"]) for i, img in images.items() if i not in payloads]
        if unlabelled:
            self.warnings.append(
                f"{cf.path}: {len(unlabelled)} image(s) without a panoptic PNG skipped: "
                f"{_few(unlabelled)}"
            )
        return [self.sample(cf, images[i], payload) for i, payload in payloads.items()]


def licence_note(files: Sequence[CocoFile]) -> str:
    """``License: NAME (URL)`` when the files declare exactly one named licence, else ``""``."""
    found: dict[str, str] = {}
    for cf in files:
        for lic in cf.doc.get("licenses") or []:
            if isinstance(lic, dict) and str(lic.get("name") or "").strip():
                found.setdefault(str(lic["name"]).strip(), str(lic.get("url") or "").strip())
    if len(found) != 1:
        return ""
    name, url = next(iter(found.items()))
    return f"License: {name}" + (f" ({url})" if url else "")


def plan_coco(
    src: Path, files: Sequence[Path], options: ImportOptions, *, drop_placeholder: bool = False
) -> ImportPlan:
    """Plan an import of COCO JSON ``files`` found under ``src`` (shared with Roboflow).

    Args:
        src: what the user named (a JSON file or a folder); bounds where images may be read.
        files: the JSON files; non-COCO ones are ignored with a warning unless ``src`` is a file.
        options: the import options (``images``, ``crowd``).
        drop_placeholder: apply Roboflow's superclass-placeholder rule (see category_labels).
    """
    warnings: list[str] = []
    loaded: list[CocoFile] = []
    for path in files:
        try:
            loaded.append(load_coco(path))
        except DataError as exc:
            if src.is_file() or not exc.problem.startswith("not a COCO file"):
                raise
            warnings.append(f"{exc}, ignored")
    if not loaded:
        raise DataError(
            src, "no COCO JSON found (a COCO file has 'images', 'annotations' and 'categories')"
        )
    labels, order, colors = category_labels(loaded, warnings, drop_placeholder=drop_placeholder)
    planner = _Planner(labels, source_roots(src, options), options, warnings)
    samples = [
        s for cf in loaded for s in (planner.panoptic if cf.panoptic else planner.instances)(cf)
    ]
    return ImportPlan(
        samples, order, source_colors=colors, warnings=warnings, notes=licence_note(loaded)
    )


def _value(
    label: str, crowd: bool, label_ids: Mapping[str, int], options: ImportOptions
) -> int | None:
    """A region's mask value: ignore for crowd regions under ``--crowd ignore``, else its class."""
    return IGNORE_INDEX if crowd and options.crowd == "ignore" else label_ids.get(label)


def render_coco(
    spec: SampleSpec, height: int, width: int, label_ids: Mapping[str, int], options: ImportOptions
) -> RenderResult:
    """Paint one COCO sample planned by :func:`plan_coco` (instances or panoptic)."""
    if isinstance(spec.payload, PanopticPayload):
        return RenderResult(_render_panoptic(spec.payload, height, width, label_ids, options))
    mask = np.zeros((height, width), dtype=np.uint8)
    for shape in spec.payload:
        value = _value(shape.label, shape.crowd, label_ids, options)
        if value is None:
            continue  # a label the classes file drops
        what = f"annotation {shape.ann_id} ({shape.label!r})"
        if shape.rle is not None:
            bits = coco_rle(shape.rle, height, width, spec.source, what)
        else:
            for points in shape.polygons:
                check_bounds(points, height, width, spec.source, what)
            bits = coco_polygons(shape.polygons, height, width)
        mask[bits] = value
    return RenderResult(mask)


def _render_panoptic(
    payload: PanopticPayload,
    height: int,
    width: int,
    label_ids: Mapping[str, int],
    options: ImportOptions,
) -> np.ndarray:
    from segflow.data import image_io

    rgb = image_io.read_image(payload.png)
    if rgb.dtype != np.uint8 or rgb.shape[2] < 3:
        raise DataError(
            payload.png, "panoptic PNG must be 8-bit RGB (segment id = R + 256·G + 256²·B)"
        )
    if rgb.shape[:2] != (height, width):
        raise DataError(
            payload.png, f"is {rgb.shape[1]}x{rgb.shape[0]} but the image is {width}x{height}"
        )
    rgb = rgb[:, :, :3].astype(np.int64)
    ids = rgb[:, :, 0] + 256 * rgb[:, :, 1] + 65536 * rgb[:, :, 2]
    uniq, inverse = np.unique(ids, return_inverse=True)
    unknown = [int(u) for u in uniq if u != 0 and int(u) not in payload.segments]
    if unknown:
        raise DataError(
            payload.png, f"segment id(s) {_few(unknown)} are not listed in its segments_info"
        )
    values = np.empty(len(uniq), dtype=np.uint8)
    for i, seg_id in enumerate(uniq.tolist()):
        if seg_id == 0:
            values[i] = IGNORE_INDEX  # VOID
            continue
        value = _value(*payload.segments[seg_id], label_ids, options)
        values[i] = 0 if value is None else value  # a dropped label leaves background
    return values[inverse.reshape(height, width)]


@IMPORTERS.register("coco")
class CocoImporter(Importer):
    """COCO instances or panoptic JSON (a file, or a folder searched recursively)."""

    name = "coco"
    summary = "COCO JSON: instance polygons, compressed/uncompressed RLE, panoptic PNGs"

    def plan(self, src: Path, options: ImportOptions) -> ImportPlan:
        """Read every COCO JSON under ``src``; find each image; keep the annotations per image."""
        return plan_coco(src, [src] if src.is_file() else find_files(src, [".json"]), options)

    def render(
        self,
        spec: SampleSpec,
        height: int,
        width: int,
        label_ids: Mapping[str, int],
        options: ImportOptions,
    ) -> RenderResult:
        """Paint the annotations in file order, or decode the panoptic PNG."""
        return render_coco(spec, height, width, label_ids, options)
