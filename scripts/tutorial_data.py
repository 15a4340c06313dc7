"""Synthetic data for the tutorials in ``docs/tutorials/``, written in each labelling tool's format.

Usage::

    python scripts/tutorial_data.py TUTORIAL OUT [--size tiny|demo] [--seed N]

``TUTORIAL`` is one of ``veins``, ``ultrasound``, ``vessels``, ``satellite``, ``pets``. ``OUT``
becomes a project folder holding the annotation export exactly as the tool writes it, plus
``new/`` with unlabelled images to predict on:

========== ============================================================================
veins      ``labelme/``: LabelMe 5 JSON (polygons, ``imageData: null``) beside grey NIR
           JPEGs of the back of a hand, and labelme's ``labels.txt``
ultrasound ``thyroid.v2i.png-mask-semantic/``: a Roboflow "Semantic Segmentation Masks"
           export (``train/valid/test``, ``_classes.csv``, ``<stem>_mask.png``, READMEs);
           several frames per patient, spread over the splits as Roboflow does
vessels    ``photos/``: fundus-like photographs with one GeoJSON FeatureCollection per
           photo (pixel coordinates, ``class`` property); ``new/`` holds a larger photo
satellite  ``scenes/images/aoiA_sceneSS_tT.png`` (several dates per scene) +
           ``scenes/masks/aoiA_sceneSS.png`` (RGB colour masks) and ``classes.yaml``
pets       ``pets/``: MMSegmentation ``img_dir/`` + ``ann_dir/`` (index PNGs, 255 = border)
           with ``splits/{train,val}.txt`` and ``classes.txt``; a few planted label problems
========== ============================================================================

``--size tiny`` writes a handful of small images (the test suite trains on them for one epoch);
``demo`` (default) writes enough data, at realistic sizes, for a model to learn something on a
CPU in minutes. Everything is drawn from ``--seed``: same seed, same files. The images are
synthetic: they imitate the look of the real modality (speckle, vessels, seasons) so every
command behaves as on real data, but a model trained on them says nothing about real images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from shapely import affinity
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

Array = np.ndarray


@dataclass(frozen=True)
class Size:
    """How much data one tutorial gets: labelled images, their size, unlabelled new images."""

    n: int
    height: int
    width: int
    new: int = 2


SIZES: dict[str, dict[str, Size]] = {
    "veins": {"tiny": Size(8, 72, 96), "demo": Size(40, 240, 320, 4)},
    "ultrasound": {"tiny": Size(12, 80, 96), "demo": Size(72, 240, 288, 4)},
    "vessels": {"tiny": Size(6, 144, 176, 1), "demo": Size(12, 768, 1024, 2)},
    # satellite: n scenes of `dates` images each, in groups of `scenes per AOI`
    "satellite": {"tiny": Size(6, 64, 64), "demo": Size(24, 192, 192, 4)},
    "pets": {"tiny": Size(16, 64, 80), "demo": Size(120, 192, 240, 4)},
}


# --------------------------------------------------------------------------- shared helpers
def smooth_noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> Array:
    """Gaussian-blurred white noise rescaled to [-1, 1] (clouds, texture, illumination)."""
    field = cv2.GaussianBlur(rng.normal(size=(h, w)).astype(np.float32), (0, 0), max(sigma, 0.5))
    span = float(np.abs(field).max()) or 1.0
    return field / span


def meander(
    rng: np.random.Generator,
    start: tuple[float, float],
    angle: float,
    length: float,
    step: float,
    wiggle: float = 0.25,
) -> list[tuple[float, float]]:
    """A smooth random walk: ``length`` pixels from ``start`` heading ``angle`` (radians)."""
    x, y = start
    points = [(x, y)]
    turn = 0.0
    for _ in range(max(2, int(length / step))):
        turn = 0.7 * turn + rng.normal(0, wiggle)
        angle += turn * 0.3
        x, y = x + step * math.cos(angle), y + step * math.sin(angle)
        points.append((x, y))
    return points


def polygons_of(geom: BaseGeometry) -> list[Polygon]:
    """The non-empty polygons inside a shapely geometry (intersections return mixed types)."""
    if isinstance(geom, Polygon):
        return [geom] if not geom.is_empty and geom.area > 0 else []
    if isinstance(geom, MultiPolygon) or hasattr(geom, "geoms"):
        return [p for g in geom.geoms for p in polygons_of(g)]
    return []


def ring(poly: Polygon, closed: bool, tolerance: float = 0.3) -> list[list[float]]:
    """The exterior ring as ``[[x, y], ...]`` with 2 decimals (closed for GeoJSON)."""
    coords = list(poly.simplify(tolerance).exterior.coords)
    if not closed:
        coords = coords[:-1]
    return [[round(x, 2), round(y, 2)] for x, y in coords]


def fill(canvas: Array, polys: Sequence[Polygon], value: float | tuple[int, ...]) -> Array:
    """Paint polygons (exterior rings, holes kept) onto ``canvas`` with sub-pixel precision."""
    shift = 4
    for poly in polys:
        rings = [poly.exterior, *poly.interiors]
        pts = [
            np.round((np.asarray(r.coords)[:, :2] - 0.5) * (1 << shift)).astype(np.int32)
            for r in rings
        ]
        cv2.fillPoly(canvas, pts, value, lineType=cv2.LINE_8, shift=shift)
    return canvas


def soft(mask: Array, sigma: float) -> Array:
    """A 0/1 mask blurred into a soft 0..1 layer (edges of painted structures)."""
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), max(sigma, 0.3))


def to_u8(x: Array) -> Array:
    """Clip to 0..255 and round to uint8."""
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def write_image(path: Path, image: Array, quality: int = 92) -> None:
    """Write a grey or RGB image (PNG lossless, JPEG at ``quality``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = image[:, :, ::-1] if image.ndim == 3 else image  # OpenCV wants BGR
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() == ".jpg" else []
    if not cv2.imwrite(str(path), np.ascontiguousarray(data), params):
        raise OSError(f"could not write {path}")


def write_json(path: Path, doc: object) -> None:
    """Write JSON as the tools do: UTF-8, indented."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- 1. veins (LabelMe)
def hand_image(rng: np.random.Generator, h: int, w: int) -> tuple[Array, list[Polygon]]:
    """A near-infrared view of the back of a hand: dark background, darker veins."""
    cx, cy = w * rng.uniform(0.45, 0.55), h * rng.uniform(0.5, 0.6)
    hand = affinity.scale(Point(cx, cy).buffer(1.0, 64), w * 0.36, h * 0.40)
    hand = unary_union([hand, box(cx - 0.22 * w, cy, cx + 0.22 * w, h + 2)])
    hand = affinity.rotate(hand, rng.uniform(-12, 12), origin=(cx, h))
    hand = hand.intersection(box(0, 0, w, h))
    hand_mask = fill(np.zeros((h, w), np.uint8), polygons_of(hand), 1)
    inside = soft(hand_mask, 0.02 * w)

    width = max(2.0, w / 70)
    veins: list[Polygon] = []
    for k in range(int(rng.integers(2, 5))):
        x0 = cx + (k - 1.5) * 0.1 * w + rng.normal(0, 0.03 * w)
        trunk = meander(rng, (x0, h + 2), -math.pi / 2 + rng.normal(0, 0.2), 0.8 * h, w / 60)
        paths = [(trunk, width * rng.uniform(0.9, 1.3))]
        fork = trunk[int(len(trunk) * rng.uniform(0.3, 0.6))]
        side = rng.choice([-1.0, 1.0])
        paths.append((meander(rng, fork, -math.pi / 2 + side * 0.7, 0.35 * h, w / 60), width))
        for pts, wd in paths:
            shape = LineString(pts).buffer(wd / 2, quad_segs=4).intersection(hand)
            veins += [p for p in polygons_of(shape) if p.area > wd * wd]
    vein_mask = fill(np.zeros((h, w), np.uint8), veins, 1)

    image = 18 + 6 * smooth_noise(rng, h, w, 0.1 * w)
    skin = 150 + 25 * smooth_noise(rng, h, w, 0.15 * w) + 10 * smooth_noise(rng, h, w, 0.02 * w)
    image = image * (1 - inside) + skin * inside
    image -= rng.uniform(35, 55) * soft(vein_mask, width / 3) * inside
    image += rng.normal(0, 5, size=(h, w))
    return to_u8(image), veins


def make_veins(out: Path, size: Size, rng: np.random.Generator) -> None:
    """LabelMe JSON + JPEG pairs (as labelme saves them) and labelme's labels.txt."""
    folder = out / "labelme"
    for i in range(size.n + size.new):
        image, veins = hand_image(rng, size.height, size.width)
        if i >= size.n:
            write_image(out / "new" / f"hand_{101 + i - size.n}.jpg", image)
            continue
        name = f"hand_{i + 1:03d}"
        write_image(folder / f"{name}.jpg", image)
        shapes = [
            {
                "label": "vein",
                "points": ring(p, closed=False),
                "group_id": None,
                "description": "",
                "shape_type": "polygon",
                "flags": {},
                "mask": None,
            }
            for p in veins
        ]
        doc = {
            "version": "5.4.1",
            "flags": {},
            "shapes": shapes,
            "imagePath": f"{name}.jpg",
            "imageData": None,
            "imageHeight": size.height,
            "imageWidth": size.width,
        }
        write_json(folder / f"{name}.json", doc)
    (folder / "labels.txt").write_text("__ignore__\n_background_\nvein\n", encoding="utf-8")


# --------------------------------------------------------------------------- 2. ultrasound (Roboflow)
@dataclass
class Patient:
    """Anatomy that stays put across the frames of one patient's clip."""

    lobe: tuple[float, float, float, float, float]  # cx, cy, ax, ay (fractions), angle (deg)
    nodule: tuple[float, float, float] | None  # dx, dy within the lobe, radius (fractions)
    artery: tuple[float, float, float]  # cx, cy, r (fractions)


def new_patient(rng: np.random.Generator) -> Patient:
    """Random thyroid lobe, maybe a nodule, and the carotid artery beside it."""
    side = rng.choice([-1.0, 1.0])
    lobe = (0.5 + rng.uniform(-0.06, 0.06), 0.5 + rng.uniform(-0.05, 0.08))
    nodule = (
        (rng.uniform(-0.05, 0.05), rng.uniform(-0.03, 0.03), rng.uniform(0.05, 0.09))
        if rng.random() < 0.8
        else None
    )
    return Patient(
        (*lobe, rng.uniform(0.16, 0.22), rng.uniform(0.11, 0.15), rng.uniform(-15, 15)),
        nodule,
        (lobe[0] + side * rng.uniform(0.25, 0.3), lobe[1] + rng.uniform(-0.04, 0.04), 0.07),
    )


def ultrasound_frame(
    rng: np.random.Generator, h: int, w: int, patient: Patient
) -> tuple[Array, Array]:
    """A B-mode frame (grey, speckled, inside a fan) and its mask: 1 nodule, 2 thyroid."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    apex = (w / 2, -0.15 * h)
    radius = np.hypot(xx - apex[0], yy - apex[1])
    theta = np.degrees(np.arctan2(xx - apex[0], yy - apex[1]))
    fan = (np.abs(theta) < 32) & (radius > 0.25 * h) & (radius < 1.05 * h)

    jitter = rng.normal(0, 0.008, size=2)  # the probe moves a little between frames
    cx, cy, ax, ay, ang = patient.lobe
    lobe = affinity.rotate(
        affinity.scale(
            Point((cx + jitter[0]) * w, (cy + jitter[1]) * h).buffer(1.0, 48), ax * w, ay * h
        ),
        ang,
    )
    mask = np.zeros((h, w), np.uint8)
    fill(mask, polygons_of(lobe), 2)
    nodule_mask = np.zeros((h, w), np.uint8)
    if patient.nodule is not None:
        dx, dy, r = patient.nodule
        blob = affinity.scale(
            Point((cx + dx + jitter[0]) * w, (cy + dy + jitter[1]) * h).buffer(1.0, 32),
            r * w * rng.uniform(0.95, 1.05),
            r * w * 0.8,
        ).intersection(lobe)
        fill(nodule_mask, polygons_of(blob), 1)
        mask[nodule_mask > 0] = 1
    ax_, ay_, ar = patient.artery
    artery = np.hypot(xx - (ax_ + jitter[0]) * w, yy - (ay_ + jitter[1]) * h) < ar * w
    mask[~fan] = 0

    echo = 70 + 12 * smooth_noise(rng, h, w, 0.08 * w)
    echo += 40 * soft(mask == 2, 1.5) - 45 * soft(nodule_mask, 1.2) - 60 * soft(artery, 1.0)
    echo += 30 * soft(np.abs(radius - 0.3 * h) < 0.02 * h, 1.0)  # skin line
    speckle = cv2.GaussianBlur(rng.rayleigh(1.0, size=(h, w)).astype(np.float32), (0, 0), 0.7)
    image = echo * speckle * (1.0 - 0.45 * np.clip(radius / (1.05 * h), 0, 1))
    image = np.where(fan, 0.75 * image, rng.uniform(0, 3, size=(h, w)))
    grey = to_u8(image)
    return np.repeat(grey[:, :, None], 3, axis=2), mask


def make_ultrasound(out: Path, size: Size, rng: np.random.Generator) -> None:
    """A Roboflow semantic-mask export; frames of one patient land in several splits."""
    root = out / "thyroid.v2i.png-mask-semantic"
    patients = [new_patient(rng) for _ in range(max(4, size.n // 6))]
    # Roboflow splits frames at random (70/20/10), so one patient's frames land in several splits.
    splits = ["train"] * 7 + ["valid"] * 2 + ["test"]
    for i in range(size.n):
        p = i % len(patients)
        image, mask = ultrasound_frame(rng, size.height, size.width, patients[p])
        stem = f"patient{p + 1:02d}_frame{i // len(patients) * 7 + 3:04d}_png"
        digest = hashlib.md5(f"{stem}{i}".encode(), usedforsecurity=False).hexdigest()
        split = splits[(i * 7 + 3) % len(splits)] if i >= 3 else ["train", "valid", "test"][i]
        name = f"{stem}.rf.{digest}"
        write_image(root / split / f"{name}.jpg", image)
        write_image(root / split / f"{name}_mask.png", mask)
    for split in ("train", "valid", "test"):
        (root / split / "_classes.csv").write_text(
            "Pixel Value, Class\n0, background\n1, nodule\n2, thyroid", encoding="utf-8"
        )
    (root / "README.dataset.txt").write_text(
        "# Thyroid US (synthetic) > 2024-06-11 2:14pm\n"
        "https://universe.roboflow.com/segflow/thyroid-us-synthetic\n\n"
        "Provided by segflow's scripts/tutorial_data.py (synthetic frames, no patient data)\n"
        "License: Public Domain\n",
        encoding="utf-8",
    )
    (root / "README.roboflow.txt").write_text(
        "\nThyroid US (synthetic) - v2 2024-06-11 2:14pm\n"
        "==============================\n\n"
        "This dataset was exported via roboflow.com on June 11, 2024 at 2:15 PM GMT\n\n"
        "The dataset includes "
        f"{size.n} images.\nThyroid are annotated in Semantic Segmentation Masks format.\n",
        encoding="utf-8",
    )
    for k in range(size.new):
        anatomy = new_patient(rng)
        image, _ = ultrasound_frame(rng, size.height, size.width, anatomy)
        write_image(out / "new" / f"clip{k + 1:02d}_frame0001.png", image)


# --------------------------------------------------------------------------- 3. vessels (GeoJSON)
def fundus_photo(
    rng: np.random.Generator, h: int, w: int
) -> tuple[Array, list[Polygon], list[Polygon]]:
    """A retina-like photo: vessels branching from the optic disc, plus small dark spots."""
    scale = min(h, w)
    cx, cy, fov = w / 2, h / 2, 0.47 * scale
    disc = (cx + rng.choice([-1.0, 1.0]) * 0.22 * scale, cy + rng.normal(0, 0.03 * scale))
    field = Point(cx, cy).buffer(fov, 128)

    vessels: list[Polygon] = []

    def grow(start: tuple[float, float], angle: float, width: float, depth: int) -> None:
        pts = meander(rng, start, angle, scale * rng.uniform(0.25, 0.45), scale / 60, 0.15)
        shape = LineString(pts).buffer(width / 2, quad_segs=3).intersection(field)
        vessels.extend(p for p in polygons_of(shape) if p.area > width)
        if depth and width > 2.4:
            for _ in range(2):
                at = pts[int(len(pts) * rng.uniform(0.3, 0.8))]
                grow(
                    at,
                    angle + rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 0.9),
                    width * 0.7,
                    depth - 1,
                )

    for k in range(4):
        grow(disc, k * math.pi / 2 + math.pi / 4 + rng.normal(0, 0.2), max(3.0, scale / 90), 3)

    spots = [
        Point(cx + rng.uniform(-0.6, 0.6) * fov, cy + rng.uniform(-0.6, 0.6) * fov).buffer(
            rng.uniform(1.0, 2.2) * max(1.0, scale / 300), 12
        )
        for _ in range(int(rng.integers(4, 9)))
    ]

    fov_mask = soft(fill(np.zeros((h, w), np.uint8), [field], 1), 1.0)
    vessel_mask = soft(fill(np.zeros((h, w), np.uint8), vessels, 1), 0.6)
    spot_mask = soft(fill(np.zeros((h, w), np.uint8), spots, 1), 0.6)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    vignette = 1 - 0.45 * (np.hypot(xx - cx, yy - cy) / fov) ** 2
    disc_glow = np.exp(-((np.hypot(xx - disc[0], yy - disc[1]) / (0.06 * scale)) ** 2))
    base = np.array([205.0, 95.0, 45.0]) * rng.uniform(0.85, 1.1)
    tex = smooth_noise(rng, h, w, scale / 40)
    image = np.empty((h, w, 3), np.float32)
    for c in range(3):
        chan = base[c] * vignette * (1 + 0.08 * tex)
        chan += (255 - chan) * 0.8 * disc_glow
        chan *= 1 - 0.5 * vessel_mask - 0.45 * spot_mask
        image[:, :, c] = chan * fov_mask
    image += rng.normal(0, 3, size=image.shape)
    return to_u8(image), vessels, spots


def make_vessels(out: Path, size: Size, rng: np.random.Generator) -> None:
    """One GeoJSON FeatureCollection (pixel coordinates) beside each JPEG photo."""
    for i in range(size.n + size.new):
        new = i >= size.n
        h, w = (size.height * 3 // 2, size.width * 3 // 2) if new else (size.height, size.width)
        image, vessels, _ = fundus_photo(rng, h, w)
        name = f"fundus_{101 + i - size.n}" if new else f"fundus_{i + 1:02d}"
        if new:
            write_image(out / "new" / f"{name}.jpg", image, quality=95)
            continue
        write_image(out / "photos" / f"{name}.jpg", image, quality=95)
        features = [
            {
                "type": "Feature",
                "id": k,
                "properties": {"class": "vessel", "annotator": "grader1"},
                "geometry": {"type": "Polygon", "coordinates": [ring(p, closed=True)]},
            }
            for k, p in enumerate(vessels)
        ]
        write_json(
            out / "photos" / f"{name}.geojson", {"type": "FeatureCollection", "features": features}
        )


# --------------------------------------------------------------------------- 4. satellite (masks)
LAND_COVER = {  # class -> (mask colour, reflectance per season t1..t3 as RGB)
    "background": ((0, 0, 0), [(150, 140, 100), (170, 150, 105), (140, 120, 90)]),
    "water": ((31, 120, 180), [(40, 70, 100), (45, 80, 95), (55, 75, 80)]),
    "forest": ((51, 160, 44), [(60, 110, 50), (40, 90, 35), (120, 90, 40)]),
    "building": ((227, 26, 28), [(190, 180, 175), (200, 190, 185), (185, 175, 170)]),
}


def scene_layout(rng: np.random.Generator, h: int, w: int, has_town: bool) -> Array:
    """A land-cover map: fields, a river or lake, forest patches, maybe a town."""
    labels = np.zeros((h, w), np.uint8)
    forest = smooth_noise(rng, h, w, w / 10) > rng.uniform(0.15, 0.4)
    labels[forest] = 2
    if rng.random() < 0.8:
        y0 = rng.uniform(0.1, 0.9) * h
        river = meander(rng, (-2.0, y0), rng.normal(0, 0.3), w * 1.6, w / 20, 0.2)
        fill(labels, polygons_of(LineString(river).buffer(rng.uniform(0.03, 0.06) * w)), 1)
    else:
        lake = Point(rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h).buffer(0.15 * w, 24)
        fill(labels, polygons_of(affinity.scale(lake, 1.3, 0.8)), 1)
    if has_town:
        tx, ty = rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h
        for _ in range(int(rng.integers(6, 14))):
            bx, by = tx + rng.normal(0, 0.1 * w), ty + rng.normal(0, 0.1 * h)
            s = rng.uniform(0.02, 0.045) * w
            labels[
                max(0, int(by - s)) : max(0, int(by + s)), max(0, int(bx - s)) : max(0, int(bx + s))
            ] = 3
    return labels


def scene_image(rng: np.random.Generator, labels: Array, date: int) -> Array:
    """One acquisition of a scene: season-dependent colours, texture, maybe a cloud."""
    h, w = labels.shape
    table = np.array([v[1][date % 3] for v in LAND_COVER.values()], np.float32)
    image = table[labels] * rng.uniform(0.9, 1.1)
    image *= (1 + 0.12 * smooth_noise(rng, h, w, w / 30))[:, :, None]
    if rng.random() < 0.35:
        cloud = np.clip(smooth_noise(rng, h, w, w / 8) * 2 - 0.6, 0, 1)[:, :, None]
        image = image * (1 - cloud) + 235 * cloud
    image += rng.normal(0, 4, size=image.shape)
    return to_u8(image)


def make_satellite(out: Path, size: Size, rng: np.random.Generator) -> None:
    """images/aoiA_sceneSS_tT.png (2-3 dates) sharing masks/aoiA_sceneSS.png (RGB colours)."""
    root = out / "scenes"
    per_aoi = 2 if size.n <= 8 else 3
    dates = 2 if size.n <= 8 else 3
    colours = np.array([v[0] for v in LAND_COVER.values()], np.uint8)
    for s in range(size.n + size.new):
        aoi, scene = s // per_aoi + 1, s % per_aoi + 1
        labels = scene_layout(rng, size.height, size.width, has_town=rng.random() < 0.5)
        stem = f"aoi{aoi}_scene{scene:02d}"
        if s >= size.n:  # a region the model never saw
            new = f"aoi9_scene{s - size.n + 1:02d}_t1.png"
            write_image(out / "new" / new, scene_image(rng, labels, 0))
            continue
        write_image(root / "masks" / f"{stem}.png", colours[labels])
        for t in range(dates):
            write_image(root / "images" / f"{stem}_t{t + 1}.png", scene_image(rng, labels, t))
    lines = ["classes:"]
    lines += [
        f"  - {{name: {name}, color: '#{c[0]:02x}{c[1]:02x}{c[2]:02x}'}}"
        for name, (c, _) in LAND_COVER.items()
    ]
    (out / "classes.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- 5. pets (MMSeg)
CAT_BREEDS = ("Abyssinian", "Bengal", "Birman", "Persian", "Siamese")
DOG_BREEDS = ("beagle", "boxer", "pug", "samoyed", "shiba_inu", "yorkshire_terrier", "havanese")


def pet_photo(rng: np.random.Generator, h: int, w: int, cat: bool) -> tuple[Array, Array]:
    """A pet (body, head, ears) on a cluttered background; mask 1 cat / 2 dog, 255 border."""
    cx, cy = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.45, 0.65)
    s = min(h, w) * rng.uniform(0.22, 0.32)
    body = affinity.rotate(
        affinity.scale(Point(cx, cy).buffer(1, 32), s * 1.3, s * 0.8), rng.uniform(-20, 20)
    )
    hx, hy = cx + rng.choice([-1.0, 1.0]) * s * 1.1, cy - s * 0.7
    head = Point(hx, hy).buffer(s * (0.5 if cat else 0.6), 32)
    if cat:  # pointed ears
        ears = [
            Polygon(
                [
                    (hx + d * s * 0.45, hy - s * 0.2),
                    (hx + d * s * 0.15, hy - s * 0.35),
                    (hx + d * s * 0.4, hy - s * 0.85),
                ]
            )
            for d in (-1, 1)
        ]
    else:  # floppy ears
        ears = [
            affinity.scale(Point(hx + d * s * 0.55, hy + s * 0.1).buffer(1, 16), s * 0.2, s * 0.4)
            for d in (-1, 1)
        ]
    pet = unary_union([body, head, *ears]).intersection(box(0, 0, w, h))

    inside = fill(np.zeros((h, w), np.uint8), polygons_of(pet), 1)
    background = np.empty((h, w, 3), np.float32)
    wall = rng.uniform(80, 200, size=3)
    for c in range(3):
        background[:, :, c] = wall[c] + 25 * smooth_noise(rng, h, w, w / 6)
    for _ in range(int(rng.integers(2, 6))):  # furniture, toys
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        cv2.rectangle(
            background,
            (int(x0), int(y0)),
            (int(x0 + rng.uniform(0.1, 0.4) * w), int(y0 + rng.uniform(0.1, 0.4) * h)),
            tuple(float(v) for v in rng.uniform(30, 230, size=3)),
            -1,
        )
    fur = rng.uniform(40, 230, size=3) if not cat else rng.uniform([120, 80, 40], [230, 190, 140])
    stripes = 0.5 + 0.5 * np.sin(
        np.arange(w)[None, :] / max(2.0, w / 40) + smooth_noise(rng, h, w, w / 20) * 4
    )
    coat = np.empty((h, w, 3), np.float32)
    for c in range(3):
        coat[:, :, c] = fur[c] * (0.75 + 0.25 * (stripes if cat else 1.0)) + 10 * smooth_noise(
            rng, h, w, 1.5
        )
    a = soft(inside, 0.8)[:, :, None]
    image = background * (1 - a) + coat * a + rng.normal(0, 4, size=(h, w, 3))

    mask = inside * (1 if cat else 2)
    kernel = np.ones((3, 3), np.uint8)
    border = cv2.dilate(inside, kernel) - cv2.erode(inside, kernel)
    mask[border > 0] = 255  # the trimap's "not sure" band, ignored in training
    return to_u8(image), mask.astype(np.uint8)


#: Problems planted in the pets data (fixed names, whatever the size), as found in real pet sets.
PLANTED_DUPLICATE = "samoyed_201"  # saved twice: samoyed_201 and samoyed_201_copy (train)
PLANTED_EMPTY = "Persian_202"  # a cat photo whose mask was left empty (train)
PLANTED_WRONG_CLASS = "Bengal_203"  # a cat labelled as a dog (val)


def make_pets(out: Path, size: Size, rng: np.random.Generator) -> None:
    """MMSeg flat img_dir/ann_dir + split lists; planted: a duplicate, an empty and a wrong mask."""
    root = out / "pets"

    def save(stem: str, image: Array, mask: Array) -> None:
        write_image(root / "img_dir" / f"{stem}.jpg", image)
        write_image(root / "ann_dir" / f"{stem}.png", mask)

    train: list[str] = []
    val: list[str] = []
    counters: dict[str, int] = {}
    for i in range(size.n - 3 + size.new):
        cat = rng.random() < 0.33  # about one cat for two dogs, as in Oxford-IIIT Pet
        breed = str(rng.choice(CAT_BREEDS if cat else DOG_BREEDS))
        counters[breed] = counters.get(breed, 0) + 1
        stem = f"{breed}_{counters[breed] * 5 + 1}"
        image, mask = pet_photo(rng, size.height, size.width, cat)
        if i >= size.n - 3:
            write_image(out / "new" / f"{stem}.jpg", image)
            continue
        save(stem, image, mask)
        (val if i % 5 == 2 else train).append(stem)

    image, mask = pet_photo(rng, size.height, size.width, cat=False)
    save(PLANTED_DUPLICATE, image, mask)
    save(f"{PLANTED_DUPLICATE}_copy", image, mask)
    image, mask = pet_photo(rng, size.height, size.width, cat=True)
    save(PLANTED_EMPTY, image, np.zeros_like(mask))
    image, mask = pet_photo(rng, size.height, size.width, cat=True)
    save(PLANTED_WRONG_CLASS, image, np.where(mask == 1, 2, mask).astype(np.uint8))
    train += [PLANTED_DUPLICATE, f"{PLANTED_DUPLICATE}_copy", PLANTED_EMPTY]
    val.append(PLANTED_WRONG_CLASS)

    (root / "splits").mkdir(parents=True, exist_ok=True)
    (root / "splits" / "train.txt").write_text("\n".join(sorted(train)) + "\n", encoding="utf-8")
    (root / "splits" / "val.txt").write_text("\n".join(sorted(val)) + "\n", encoding="utf-8")
    (root / "classes.txt").write_text("background\ncat\ndog\n", encoding="utf-8")


MAKERS: dict[str, Callable[[Path, Size, np.random.Generator], None]] = {
    "veins": make_veins,
    "ultrasound": make_ultrasound,
    "vessels": make_vessels,
    "satellite": make_satellite,
    "pets": make_pets,
}


def make(tutorial: str, out: Path, size: str = "demo", seed: int = 0) -> Path:
    """Write ``tutorial``'s data into ``out`` (which must not exist yet) and return it."""
    if tutorial not in MAKERS:
        raise SystemExit(f"unknown tutorial {tutorial!r}; choose from {', '.join(MAKERS)}")
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} exists and is not empty; choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    MAKERS[tutorial](out, SIZES[tutorial][size], np.random.default_rng(seed))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``tutorial_data.py TUTORIAL OUT [--size tiny|demo] [--seed N]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tutorial", choices=list(MAKERS))
    parser.add_argument("out", type=Path, help="folder to create")
    parser.add_argument("--size", choices=["tiny", "demo"], default="demo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = make(args.tutorial, args.out, args.size, args.seed)
    files = sum(1 for p in out.rglob("*") if p.is_file())
    print(f"wrote {files} files to {out}")


if __name__ == "__main__":
    main()
