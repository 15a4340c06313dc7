"""A raster larger than memory: `segflow predict` window by window vs reading it whole.

Writes a SIZE x SIZE 3-band uint8 GeoTIFF (tiled, deflate; made band by band so the generator
never holds it), then predicts it twice, each in its own process (its own peak RSS): the
windowed path (`segflow.infer.windowed`, the default for rasters >= 64 Mpx) and the whole-image
path (the raster read into memory, the label GeoTIFF written from an in-memory array). Both use
the same bundle (SMP Unet-resnet18, seeded weights with BatchNorm statistics of real
activations, exported to ONNX so that `auto` picks the fastest backend here), tile 512, overlap
0.25, Gaussian blending. Prints seconds, Mpx/s and peak RSS of each, their ratios, and the pixel
agreement of the two label rasters (compared window by window).

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/windowed_raster.py [--size 20000]
        [--tile 512] [--backend auto] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _bench import bench_bundle

ROWS = 1024


def _make_raster(path: Path, size: int) -> None:
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8",
        "crs": "EPSG:32633", "transform": from_origin(500000.0, 4100000.0, 0.5, 0.5),
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    xx = np.arange(size)[None, :]
    with rasterio.open(path, "w", **profile) as dst:
        for y0 in range(0, size, ROWS):
            yy = np.arange(y0, min(size, y0 + ROWS))[:, None]
            discs = ((xx % 700 - 350) ** 2 + (yy % 600 - 300) ** 2 < 200**2).astype(np.int64)
            band = [
                (40 + 160 * discs + (xx * (b + 1) + yy) % 37).astype(np.uint8) for b in range(3)
            ]
            dst.write(np.stack(band), window=Window(0, y0, size, yy.shape[0]))


def _child(kind: str, bundle: Path, raster: Path, out: Path, backend: str, precision: str) -> None:
    from segflow.api import predict
    from segflow.infer import windowed

    windowed.MIN_PIXELS = 1 if kind == "windowed" else 10**15
    start = time.perf_counter()
    files = predict(bundle, raster, out=out, backend=backend, precision=precision, color=False,
                    overlay=False)  # fmt: skip
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"kind": kind, "seconds": seconds, "peak_mb": peak,
                      "mask": str(files[0]["mask_geotiff"])}))  # fmt: skip


def _agreement(a: Path, b: Path) -> float:
    import rasterio
    from rasterio.windows import Window

    same = total = 0
    with rasterio.open(a) as sa, rasterio.open(b) as sb:
        for y0 in range(0, sa.height, ROWS):
            window = Window(0, y0, sa.width, min(ROWS, sa.height - y0))
            la, lb = sa.read(1, window=window), sb.read(1, window=window)
            same += int((la == lb).sum())
            total += la.size
    return same / total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, bundle, raster, out = args.child
        _child(kind, Path(bundle), Path(raster), Path(out), args.backend, args.precision)
        return
    from segflow.export.onnx import export_onnx

    work = Path(tempfile.mkdtemp(prefix="segflow-windowed-")) if args.work is None else args.work
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    raster = work / "scene.tif"
    _make_raster(raster, args.size)
    bundle = bench_bundle(work, "resnet18", args.tile, realistic_bn=True)
    export_onnx(bundle)
    print(f"made a {args.size}x{args.size} 3-band GeoTIFF ({raster.stat().st_size / 2**20:.0f} MiB "
          f"on disk, {3 * args.size**2 / 2**30:.2f} GiB raw) and the bundle in "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    # the whole-image read must be allowed past segflow's decompression-bomb limit (178 Mpx)
    env = {
        **os.environ,
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "SEGFLOW_MAX_PIXELS": str(2 * args.size**2),
    }
    results = {}
    for kind in ("windowed", "whole"):
        command = [sys.executable, __file__, "--child", kind, str(bundle), str(raster),
                   str(work / kind), "--backend", args.backend, "--precision", args.precision]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            print(f"{kind}: failed ({done.stderr.strip().splitlines()[-1:]})")
            continue
        results[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    mpx = args.size**2 / 1e6
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs; Unet-resnet18, "
          f"tile {args.tile}, overlap 0.25, gaussian, backend {args.backend} "
          f"{args.precision}")  # fmt: skip
    for r in results.values():
        print(f"{r['kind']:9s} {r['seconds']:8.1f} s  {mpx / r['seconds']:6.2f} Mpx/s  "
              f"peak RSS {r['peak_mb']:7.0f} MiB")  # fmt: skip
    if len(results) == 2:
        w, h = results["windowed"], results["whole"]
        print(f"windowed / whole: time {w['seconds'] / h['seconds']:.2f}, "
              f"peak RSS {w['peak_mb'] / h['peak_mb']:.2f}")  # fmt: skip
        print(
            f"label agreement windowed vs whole: {_agreement(Path(w['mask']), Path(h['mask'])):.6f}"
        )


if __name__ == "__main__":
    main()
