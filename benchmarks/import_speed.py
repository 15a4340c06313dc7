"""Import speed: 1,000 LabelMe files (1024 x 1024, 20 polygons each) -> canonical dataset.

Measured in one run, on the same generated files:

* ``segflow``   -- ``segflow import labelme`` (worker processes, full decode of every image to
  catch truncated files, mask written as PNG, atomic output);
* ``notebook``  -- the loop people write by hand: json.load -> Pillow polygons -> cv2.imwrite,
  single process, no image validation (copies the image, never decodes it).

Prints files/s for both and the ratio. Goal (issue 2): segflow >= 50 files/s on 2 cores.

    python benchmarks/import_speed.py [--n 1000] [--size 1024] [--polygons 20] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from segflow.api import import_dataset

LABELS = ["vein", "artery", "nerve"]


def generate(folder: Path, n: int, size: int, polygons: int, seed: int = 0) -> None:
    """Write ``n`` JPEG images and LabelMe JSONs with random convex-ish polygons."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    base = cv2.GaussianBlur(base, (0, 0), 3)
    for i in range(n):
        img = np.roll(base, shift=i * 7, axis=1)
        name = f"img_{i:05d}"
        cv2.imwrite(str(folder / f"{name}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        shapes = []
        for _ in range(polygons):
            cx, cy = rng.uniform(50, size - 50, size=2)
            r = rng.uniform(10, 60)
            angles = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(5, 12))))
            pts = [[float(cx + r * np.cos(a)), float(cy + r * np.sin(a))] for a in angles]
            shapes.append(
                {
                    "label": str(rng.choice(LABELS)),
                    "points": pts,
                    "group_id": None,
                    "shape_type": "polygon",
                    "flags": {},
                }
            )
        doc = {
            "version": "5.0.1",
            "flags": {},
            "shapes": shapes,
            "imagePath": f"{name}.jpg",
            "imageData": None,
            "imageHeight": size,
            "imageWidth": size,
        }
        (folder / f"{name}.json").write_text(json.dumps(doc))


def notebook_loop(src: Path, out: Path) -> None:
    """The hand-written baseline: what a notebook does, single process, no validation."""
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    names = ["_background_", *sorted(LABELS)]
    for path in sorted(src.glob("*.json")):
        doc = json.loads(path.read_text())
        canvas = Image.new("L", (doc["imageWidth"], doc["imageHeight"]), 0)
        draw = ImageDraw.Draw(canvas)
        for shape in doc["shapes"]:
            draw.polygon(
                [tuple(p) for p in shape["points"]],
                fill=names.index(shape["label"]),
                outline=names.index(shape["label"]),
            )
        shutil.copyfile(src / doc["imagePath"], out / "images" / doc["imagePath"])
        cv2.imwrite(str(out / "masks" / f"{path.stem}.png"), np.asarray(canvas))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--polygons", type=int, default=20)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="segflow-bench-") as tmp:
        src = Path(tmp) / "labelme"
        src.mkdir()
        t0 = time.perf_counter()
        generate(src, args.n, args.size, args.polygons)
        print(f"generated {args.n} files in {time.perf_counter() - t0:.1f}s")

        t0 = time.perf_counter()
        notebook_loop(src, Path(tmp) / "notebook")
        t_notebook = time.perf_counter() - t0

        t0 = time.perf_counter()
        report = import_dataset("labelme", src, Path(tmp) / "segflow", workers=args.workers)
        t_segflow = time.perf_counter() - t0
        assert len(report.samples) == args.n

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    seg_rate, nb_rate = args.n / t_segflow, args.n / t_notebook
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {cpus} CPUs usable, Python {platform.python_version()}")
    print(f"segflow import labelme: {t_segflow:6.1f}s  {seg_rate:6.1f} files/s")
    print(f"hand-written loop:      {t_notebook:6.1f}s  {nb_rate:6.1f} files/s")
    print(
        f"ratio segflow / hand-written: {seg_rate / nb_rate:.2f}  (goal: segflow >= 50 files/s: "
        f"{'met' if seg_rate >= 50 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
