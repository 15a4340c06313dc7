"""Tiled inference on a 4096 x 4096 RGB image: segflow (onnxruntime) vs MONAI vs raw onnxruntime.

Same network (SMP Unet-resnet34, 3 classes, seeded random weights), tile 512, overlap 0.25,
Gaussian blending, 4 tiles per batch, the same number of threads for everything:

* ``segflow``: `Predictor.predict_array` on the raw uint8 image with the ONNX backend -- the
  whole product path: preprocessing, normalisation, padding, tiles, softmax, Gaussian blending,
  argmax;
* ``monai``: `monai.inferers.sliding_window_inference` (torch, eager, `inference_mode`) on the
  normalised tensor with `mode="gaussian"`, then argmax -- the peer people use;
* ``raw``: the bare onnxruntime session run on exactly the tile batches segflow runs (no
  blending, no softmax): the limit for any ONNX-based tiler.

Each runs in a fresh subprocess so that peak RSS is its own. Goals (issue 4): segflow / MONAI
throughput >= 1.5; segflow / raw >= 0.90.

    python benchmarks/tiled_inference.py [--size 4096] [--tile 512] [--threads N] [--batch 4]
                                         [--repeat 2]
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
from _bench import bench_bundle, disc_image


def _make(work: Path, size: int, tile: int) -> tuple[Path, Path]:
    """A bundle with an ONNX export, and a test image with structure (not noise)."""
    from segflow.export.onnx import export_onnx

    bundle = bench_bundle(work, "resnet34", tile, realistic_bn=True)
    export_onnx(bundle)
    path = work / "image.npy"
    np.save(path, disc_image(size, 400, (10, 120)))
    return bundle, path


def _child(
    kind: str, bundle: Path, image_path: Path, tile: int, batch: int, threads: int, repeat: int
) -> None:
    """Run one contender ``repeat`` times; print a JSON line: best seconds, peak RSS, label counts.

    The best of several runs (as ``timeit`` reports) is the figure least disturbed by other work
    on the machine.
    """
    image = np.load(image_path)
    if kind == "segflow":
        from segflow.infer.predictor import Predictor

        predictor = Predictor.from_bundles(
            bundle, backend="onnx", tile_size=tile, overlap=0.25, batch_size=batch, threads=threads
        )
        predictor.predict_array(image[:tile, :tile])  # warm-up (session, allocations)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            labels = predictor.predict_array(image).labels
            times.append(time.perf_counter() - start)
        assert "torch" not in sys.modules, "the ONNX path imported torch"
    elif kind == "raw":
        from segflow.infer.onnx_backend import OnnxBackend
        from segflow.infer.tiling import gaussian_weights, tile_origins

        backend = OnnxBackend(bundle, threads=threads)
        mean = np.array([0.485, 0.456, 0.406], np.float32)
        std = np.array([0.229, 0.224, 0.225], np.float32)
        x = ((image.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)
        origins = tile_origins(x.shape[1], x.shape[2], tile, 0.25)
        gaussian_weights(tile, tile)
        backend(np.ascontiguousarray(x[None, :, :tile, :tile]))
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            for i in range(0, len(origins), batch):
                chunk = origins[i : i + batch]
                backend(
                    np.ascontiguousarray(
                        np.stack([x[:, y : y + tile, xx : xx + tile] for y, xx in chunk])
                    )
                )
            times.append(time.perf_counter() - start)
        labels = np.zeros(image.shape[:2], np.uint8)
    else:
        import torch
        from monai.inferers import sliding_window_inference

        from segflow.models.bundle import load_bundle

        torch.set_num_threads(threads)
        model = load_bundle(bundle).model.eval()
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        with torch.inference_mode():
            model(torch.zeros(1, 3, tile, tile))
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0 - mean) / std
                logits = sliding_window_inference(
                    x, (tile, tile), batch, model, overlap=0.25, mode="gaussian"
                )
                labels = logits.argmax(1)[0].numpy().astype(np.uint8)
                del logits, x
                times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "kind": kind,
                "seconds": min(times),
                "all_seconds": times,
                "peak_rss_mb": peak_mb,
                "labels": [int((labels == c).sum()) for c in range(3)],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeat", type=int, default=2, help="timed runs each (best is kept)")
    parser.add_argument(
        "--child", nargs=3, metavar=("KIND", "BUNDLE", "IMAGE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        kind, bundle, image = args.child
        _child(kind, Path(bundle), Path(image), args.tile, args.batch, args.threads, args.repeat)
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "NO_ALBUMENTATIONS_UPDATE": "1"}
    with tempfile.TemporaryDirectory(prefix="segflow-tiles-") as tmp:
        bundle, image = _make(Path(tmp), args.size, args.tile)
        results = {}
        for kind in ("segflow", "monai", "raw"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    kind,
                    str(bundle),
                    str(image),
                    "--tile",
                    str(args.tile),
                    "--batch",
                    str(args.batch),
                    "--threads",
                    str(args.threads),
                    "--repeat",
                    str(args.repeat),
                ],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            results[kind] = json.loads(out.stdout.strip().splitlines()[-1])
    seg, mon, raw = results["segflow"], results["monai"], results["raw"]
    agree = 1 - sum(abs(a - b) for a, b in zip(seg["labels"], mon["labels"], strict=True)) / (
        2 * args.size**2
    )
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads for all")
    print(
        f"image {args.size}x{args.size} RGB, Unet-resnet34, tile {args.tile}, overlap 0.25, "
        f"gaussian, batch {args.batch}"
    )
    for r in (seg, mon, raw):
        mpix = args.size**2 / 1e6 / r["seconds"]
        print(
            f"{r['kind']:8s} {r['seconds']:7.1f} s  {mpix:6.3f} Mpix/s  peak RSS {r['peak_rss_mb']:7.0f} MB"
        )
    print(f"segflow / MONAI throughput: {mon['seconds'] / seg['seconds']:.2f}  (goal >= 1.5)")
    print(f"segflow / raw onnxruntime:  {raw['seconds'] / seg['seconds']:.2f}  (goal >= 0.90)")
    print(f"class-count agreement segflow vs MONAI: {agree:.4f}")


if __name__ == "__main__":
    main()
