"""Batch prediction: the local engine vs Ray Data with 1 and 2 workers, on this machine.

N generated RGB images of SIZE x SIZE (PNG) are predicted by `segflow predict` three ways, each
in its own process: `--engine local`, `--engine ray --workers 1`, `--engine ray --workers 2`
(Ray starting and stopping its local cluster inside the timed command, as a user's run does).
The bundle is an SMP Unet-resnet18 with seeded weights (BatchNorm statistics of real
activations), exported to ONNX; `--backend auto` (the fastest measured here, cached before the
timed runs). Prints images/s, Ray's overhead per image against the local engine, the peak RSS
of each Ray worker (from `summary.json`), checks that every engine wrote the same masks, and
projects the cost of 1 million images from the per-image figures.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/batch_predict.py [--images 200]
        [--size 1024] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _bench import bench_bundle, disc_image

SEGFLOW = Path(sys.executable).parent / "segflow"


def _images(folder: Path, n: int, size: int) -> None:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    base = disc_image(size, size // 5, (10, 240))
    for i in range(n):
        image = np.roll(base, (37 * i) % size, axis=1)  # every image different, same content
        cv2.imwrite(str(folder / f"img{i:04d}.png"), image[:, :, ::-1])


def _run(bundle: Path, images: Path, out: Path, engine: list[str], backend: str) -> float:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    command = [str(SEGFLOW), "predict", str(bundle), str(images), "--out", str(out),
               "--backend", backend, "--no-color", "--no-overlay", *engine]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(engine) or 'local'} failed: {done.stderr.strip()[-2000:]}")
    return seconds


def _same_masks(a: Path, b: Path) -> bool:
    import cv2

    for mask in sorted(a.glob("img*.png")):
        if not np.array_equal(cv2.imread(str(mask), cv2.IMREAD_UNCHANGED),
                              cv2.imread(str(b / mask.name), cv2.IMREAD_UNCHANGED)):  # fmt: skip
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    from segflow.export.onnx import export_onnx
    from segflow.infer.predictor import Predictor

    work = Path(tempfile.mkdtemp(prefix="segflow-batch-")) if args.work is None else args.work
    work.mkdir(parents=True, exist_ok=True)
    _images(work / "images", args.images, args.size)
    bundle = bench_bundle(work, "resnet18", 512, realistic_bn=True)
    export_onnx(bundle)
    chosen = Predictor.from_bundles(bundle, backend=args.backend).describe_backends()  # caches
    runs = {
        "local": [],
        "ray-1": ["--engine", "ray", "--workers", "1"],
        "ray-2": ["--engine", "ray", "--workers", "2"],
    }
    seconds = {k: _run(bundle, work / "images", work / k, v, args.backend) for k, v in runs.items()}
    n = args.images
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs; {n} images of "
          f"{args.size}x{args.size}; Unet-resnet18, tile 512; {chosen}")  # fmt: skip
    for kind, s in seconds.items():
        extra = ""
        if kind != "local":
            summary = json.loads((work / kind / "summary.json").read_text())
            rss = [w["peak_rss_mb"] for w in summary["workers"].values()]
            over = (s - seconds["local"]) / n * 1000
            extra = (f"  overhead vs local {over:+.0f} ms/image; worker peak RSS "
                     f"{', '.join(f'{r:.0f}' for r in rss)} MiB")  # fmt: skip
        print(f"{kind:6s} {s:7.1f} s  {n / s:6.2f} images/s{extra}")
    print(f"ray-2 / local throughput: {seconds['local'] / seconds['ray-2']:.2f}")
    same = all(_same_masks(work / "local", work / k) for k in ("ray-1", "ray-2"))
    print(f"every engine wrote the same masks: {same}")
    per_image = seconds["ray-2"] / n / 2  # seconds of one worker per image
    print(f"projection: 1,000,000 such images at {per_image:.2f} s per image and worker = "
          f"{1e6 * per_image / 3600:.0f} worker-hours (e.g. {1e6 * per_image / 3600 / 64:.1f} h "
          "on 64 workers like these)")  # fmt: skip


if __name__ == "__main__":
    main()
