"""GeoJSON FeatureCollections of polygons over an image (GIS tools, QGIS, QuPath, solaris).

SRC is a ``.geojson``/``.json`` file or a folder of them (searched recursively). Each pairs with an
image: the one with the same stem beside it or in ``--images DIR``; with a single SRC file,
``--images`` may name the image file itself; else the only image in the GeoJSON's folder (noted).
Images are read as they are (a 16-bit single-band GeoTIFF stays 16-bit).

Geometries: ``Polygon`` and ``MultiPolygon``; holes stay unlabelled (or the class underneath).
Other types (``Point``, ``LineString``...) have no area and are skipped with one warning per file.
Features are drawn in file order, later over earlier, with rasterio's pixel-centre rule
(``all_touched=False``).

Coordinates (``--coords``):

* ``pixel``: x right, y down, (0, 0) the top-left corner of the top-left pixel;
* ``crs``: the raster's CRS, mapped through its affine transform. A legacy ``crs`` member naming
  another CRS is reprojected. Without a ``crs`` member, coordinates that are lon/lat and lie inside
  the raster's lon/lat footprint are RFC 7946 WGS84 (what QGIS writes); otherwise they are taken to
  be in the raster's CRS;
* ``auto`` (default): ``crs`` when the coordinates lie inside the raster's bounds, ``pixel`` when
  they lie inside the image's pixel frame; both or neither is an error asking for ``--coords``
  (coordinates in a geographic CRS that fit the raster's footprint win: they cannot be a
  coincidence). The ``crs`` member alone never decides: solaris writes pixel coordinates under a
  UTM ``crs`` member. A non-georeferenced image always means ``pixel``. In the pixel frame, a
  vertex far outside the image is an error (as in every importer), never an empty mask.

Classes: ``--label-property KEY``, else the first of ``class``, ``label``, ``classification``
(QuPath: its ``name``), ``category``, ``class_name`` that any feature has; ``name`` is never used
(it usually names the feature, not its class). With none of them, every feature is the single
class ``foreground``. A feature without the property, when others have it, is skipped with a
warning (an error under ``--strict``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segflow.data import image_io
from segflow.data.formats import IMPORTERS
from segflow.data.formats._georef import Geometry, choose_frame, raster_info
from segflow.data.formats._pairing import summarise
from segflow.data.formats.base import (
    Importer,
    ImportOptions,
    ImportPlan,
    RenderResult,
    SampleSpec,
    find_files,
    read_json,
    safe_stem,
)
from segflow.errors import DataError, UsageError

log = logging.getLogger("segflow.import")

LABEL_KEYS = ("class", "label", "classification", "category", "class_name")
DEFAULT_LABEL = "foreground"
_AREA_TYPES = ("Polygon", "MultiPolygon")


@dataclass(frozen=True)
class _Payload:
    shapes: list[tuple[Geometry, str]]  # in the chosen frame, file order
    transform: tuple[float, float, float, float, float, float]
    size: tuple[int, int]


def _ring(raw: Any, path: Path, what: str) -> list[list[float]]:
    try:
        arr = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(path, f"{what} has malformed coordinates") from None
    if arr.ndim != 2 or arr.shape[1] < 2 or len(arr) < 3:
        raise DataError(
            path, f"{what} has a ring that is not a list of at least 3 [x, y] positions"
        )
    if not np.all(np.isfinite(arr[:, :2])):
        raise DataError(path, f"{what} has non-finite coordinates")
    ring: list[list[float]] = arr[:, :2].tolist()
    return ring


def _clean_geometry(geom: Geometry, path: Path, what: str) -> Geometry | None:
    """A Polygon/MultiPolygon with 2-D coordinates, or None when it has no ring."""
    coords = geom.get("coordinates")
    if not isinstance(coords, list):
        raise DataError(path, f"{what} has no 'coordinates' list")
    polygons = [coords] if geom["type"] == "Polygon" else coords
    cleaned = [
        [_ring(r, path, what) for r in poly] for poly in polygons if isinstance(poly, list) and poly
    ]
    if not cleaned:
        return None
    return {"type": "MultiPolygon", "coordinates": cleaned}


def _label_of(value: Any) -> str | None:
    if isinstance(value, dict):  # QuPath: {"name": "Tumor", "color": [r, g, b]}
        value = value.get("name")
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value).strip()
    return text or None


def _color_of(value: Any) -> tuple[int, int, int] | None:
    if not isinstance(value, dict):
        return None
    color = value.get("color")
    if (
        isinstance(color, list)
        and len(color) == 3
        and all(isinstance(c, int) and 0 <= c < 256 for c in color)
    ):
        return (color[0], color[1], color[2])
    rgb = value.get("colorRGB")  # older QuPath: packed (A)RGB integer
    if isinstance(rgb, int):
        return ((rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255)
    return None


@IMPORTERS.register("geojson")
class GeoJsonImporter(Importer):
    """GeoJSON polygons over an image or a GeoTIFF (a file, or a folder searched recursively)."""

    name = "geojson"
    summary = (
        "GeoJSON polygons over images or GeoTIFFs: pixel or CRS coordinates, holes, reprojection"
    )
    images_may_be_file = True

    def plan(self, src: Path, options: ImportOptions) -> ImportPlan:
        """Read every GeoJSON, pick the class property, pair images, choose the coordinate frame."""
        if options.images is not None and options.images.is_file() and not src.is_file():
            raise UsageError(
                f"{options.images}: --images FILE pairs one GeoJSON file with one image; "
                "pass --images DIR for a folder"
            )
        files = [src] if src.is_file() else find_files(src, [".geojson", ".json"])
        if not files:
            raise DataError(src, "no .geojson or .json file found")
        warnings: list[str] = []
        docs: list[tuple[Path, dict[str, Any], list[tuple[Geometry, dict[str, Any]]]]] = []
        for path in files:
            doc = read_json(path)
            if not (isinstance(doc, dict) and doc.get("type") in ("FeatureCollection", "Feature")):
                if src.is_file():
                    raise DataError(path, "not a GeoJSON FeatureCollection")
                warnings.append(f"{path}: not a GeoJSON FeatureCollection, ignored")
                continue
            docs.append((path, doc, self._features(path, doc, warnings)))
        if files and not docs:
            raise DataError(src, "no GeoJSON FeatureCollection found")
        key = self._label_key(src, [props for _, _, feats in docs for _, props in feats], options)
        samples: list[SampleSpec] = []
        labels: list[str] = []
        colors: dict[str, tuple[int, int, int]] = {}
        frames: Counter[str] = Counter()
        paired_alone = 0
        folder_images: dict[Path, list[Path]] = {}
        for path, doc, feats in docs:
            shapes: list[tuple[Geometry, str]] = []
            missing = 0
            for i, (geom, props) in enumerate(feats):
                label = DEFAULT_LABEL if key is None else _label_of(props.get(key))
                if label is None:
                    if options.strict:
                        raise DataError(
                            path, f"feature {i} has no {key!r} property (other features have it)"
                        )
                    missing += 1
                    continue
                color = _color_of(props.get(key)) if key else None
                if color is not None:
                    colors.setdefault(label, color)
                shapes.append((geom, label))
                labels.append(label)
            if missing:
                warnings.append(
                    f"{path}: {missing} feature(s) without the {key!r} property skipped"
                )
            image, alone = self._image_for(path, options, folder_images)
            paired_alone += alone
            raster = raster_info(image)
            geoms, transform, frame = choose_frame(
                [g for g, _ in shapes], doc, path, image, raster, options.coords
            )
            frames[frame] += 1
            log.info("%s: %s coordinates over %s", path, frame, image.name)
            payload = _Payload(
                [(g, lb) for g, (_, lb) in zip(geoms, shapes, strict=True)],
                (transform.a, transform.b, transform.c, transform.d, transform.e, transform.f),
                (raster.height, raster.width),
            )
            samples.append(SampleSpec(safe_stem(path.stem), path, image, payload))
        notes = "GeoJSON coordinates: " + ", ".join(
            f"{n} file(s) in {f}" for f, n in sorted(frames.items())
        )
        if paired_alone:
            notes += f"; {paired_alone} file(s) paired with the only image in their folder"
        return ImportPlan(samples, labels, source_colors=colors, warnings=warnings, notes=notes)

    @staticmethod
    def _features(
        path: Path, doc: dict[str, Any], warnings: list[str]
    ) -> list[tuple[Geometry, dict[str, Any]]]:
        """Polygon features (cleaned to 2-D MultiPolygons) and their properties, in file order."""
        raw = [doc] if doc.get("type") == "Feature" else doc.get("features")
        if not isinstance(raw, list):
            raise DataError(path, "FeatureCollection has no 'features' list")
        out = []
        skipped: Counter[str] = Counter()
        for i, feat in enumerate(raw):
            if not isinstance(feat, dict):
                raise DataError(path, f"feature {i} is not an object")
            geom = feat.get("geometry")
            kind = geom.get("type") if isinstance(geom, dict) else None
            if not isinstance(geom, dict) or kind not in _AREA_TYPES:
                skipped[str(kind or "null-geometry")] += 1
                continue
            cleaned = _clean_geometry(geom, path, f"feature {i} ({kind})")
            if cleaned is None:
                skipped[f"empty {kind}"] += 1
                continue
            props = feat.get("properties")
            out.append((cleaned, props if isinstance(props, dict) else {}))
        if skipped:
            what = ", ".join(f"{n} {k}" for k, n in sorted(skipped.items()))
            warnings.append(
                f"{path}: features without area skipped ({what}); only Polygon and "
                "MultiPolygon are drawn"
            )
        return out

    @staticmethod
    def _label_key(src: Path, props: list[dict[str, Any]], options: ImportOptions) -> str | None:
        """The property holding the class (see the module docstring); None: single class."""
        if options.label_property is not None:
            key = options.label_property
            if props and not any(_label_of(p.get(key)) for p in props):
                seen = sorted({k for p in props for k in p})
                raise DataError(
                    src,
                    f"no feature has the property {key!r}; properties found: {summarise(seen, 12)}",
                )
            return key
        return next((k for k in LABEL_KEYS if any(_label_of(p.get(k)) for p in props)), None)

    @staticmethod
    def _image_for(
        path: Path, options: ImportOptions, cache: dict[Path, list[Path]]
    ) -> tuple[Path, bool]:
        """The image a GeoJSON file annotates, and whether it was the only one in its folder."""
        if options.images is not None and options.images.is_file():
            return options.images, False
        folders = [path.parent] + ([options.images] if options.images is not None else [])
        for folder in folders:
            if folder not in cache:
                cache[folder] = sorted(
                    p for p in folder.iterdir() if p.is_file() and image_io.is_image_file(p)
                )
            same = [p for p in cache[folder] if p.stem == path.stem]
            if same:
                return same[0], False
        for folder in folders:
            if len(cache[folder]) == 1:
                log.info(
                    "%s: paired with %s, the only image in %s", path, cache[folder][0].name, folder
                )
                return cache[folder][0], True
        looked = " or ".join(str(f) for f in folders)
        raise DataError(
            path,
            f"no image named {path.stem}.* in {looked}, and no folder holds exactly one image; "
            "pass --images DIR (or --images FILE for a single GeoJSON)",
        )

    def render(
        self,
        spec: SampleSpec,
        height: int,
        width: int,
        label_ids: Mapping[str, int],
        options: ImportOptions,
    ) -> RenderResult:
        """Burn the polygons in file order, later over earlier (pixel-centre rule)."""
        from rasterio import features
        from rasterio.transform import Affine

        payload: _Payload = spec.payload
        if (height, width) != payload.size:
            h, w = payload.size
            raise DataError(
                spec.source,
                f"image {spec.image} decodes as {width}x{height} but its header says {w}x{h}",
            )
        shapes = [(g, label_ids[lb]) for g, lb in payload.shapes if lb in label_ids]
        if not shapes:
            return RenderResult(np.zeros((height, width), dtype=np.uint8))
        mask = features.rasterize(
            shapes,
            out_shape=(height, width),
            transform=Affine(*payload.transform),
            fill=0,
            all_touched=False,
            dtype="uint8",
        )
        return RenderResult(np.asarray(mask, dtype=np.uint8))
