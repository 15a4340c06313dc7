"""Peak memory of tiled inference on a large image: segflow's Predictor vs MONAI's sliding window.

The same network (SMP Unet-resnet18, 3 classes, seeded weights) runs in torch for both, so the
difference is the tiler's own memory: MONAI's ``sliding_window_inference`` needs the normalised
image as one float32 tensor plus a float32 output and count map the size of the image; segflow
streams (input read in bands of tile rows, accumulators about one tile row high, labels out).

Each contender runs in a fresh subprocess; the figure is the peak RSS growth over the process
after loading the image and the model and predicting one tile (what the tiler adds). Tile 512,
overlap 0.25, Gaussian blending, 4 tiles per batch, the same thread count for both.

    python benchmarks/tiled_memory.py [--size 8192] [--threads N]
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

TILE = 512


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _make(work: Path, size: int) -> tuple[Path, Path]:
    bundle = bench_bundle(work, "resnet18", TILE)
    path = work / "image.npy"
    np.save(path, disc_image(size, 800, (10, 240)))
    return bundle, path


def _child(kind: str, bundle: Path, image_path: Path, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    image = np.load(image_path)
    if kind == "segflow":
        from segflow.infer.predictor import Predictor

        predictor = Predictor.from_bundles(
            bundle, backend="torch", device="cpu", tile_size=TILE, overlap=0.25, batch_size=4
        )
        predictor.predict_array(image[: 2 * TILE, : 2 * TILE])  # full batches of 4 tiles
        base = _rss_mb()
        start = time.perf_counter()
        labels = predictor.predict_array(image).labels
    else:
        from monai.inferers import sliding_window_inference

        from segflow.models.bundle import load_bundle

        model = load_bundle(bundle).model.eval()
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        with torch.inference_mode():
            model(torch.zeros(4, 3, TILE, TILE))
            base = _rss_mb()
            start = time.perf_counter()
            x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0 - mean) / std
            logits = sliding_window_inference(
                x, (TILE, TILE), 4, model, overlap=0.25, mode="gaussian"
            )
            labels = logits.argmax(1)[0].numpy().astype(np.uint8)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "kind": kind,
                "seconds": seconds,
                "base_mb": base,
                "added_mb": _rss_mb() - base,
                "image_mb": image.nbytes / 2**20,
                "labels": [int((labels == c).sum()) for c in range(3)],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument(
        "--child", nargs=3, metavar=("KIND", "BUNDLE", "IMAGE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        kind, bundle, image = args.child
        _child(kind, Path(bundle), Path(image), args.threads)
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "NO_ALBUMENTATIONS_UPDATE": "1"}
    results = {}
    with tempfile.TemporaryDirectory(prefix="segflow-memory-") as tmp:
        bundle, image = _make(Path(tmp), args.size)
        for kind in ("segflow", "monai"):
            command = [sys.executable, __file__, "--child", kind, str(bundle), str(image)]
            out = subprocess.run(
                [*command, "--threads", str(args.threads)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            results[kind] = json.loads(out.stdout.strip().splitlines()[-1])
    seg, mon = results["segflow"], results["monai"]
    agree = 1 - sum(abs(a - b) for a, b in zip(seg["labels"], mon["labels"], strict=True)) / (
        2 * args.size**2
    )
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads for both")
    print(
        f"image {args.size}x{args.size} RGB uint8 ({seg['image_mb']:.0f} MiB), Unet-resnet18 "
        f"(torch), tile {TILE}, overlap 0.25, gaussian, batch 4"
    )
    for r in (seg, mon):
        print(
            f"{r['kind']:8s} peak RSS +{r['added_mb']:6.0f} MiB over {r['base_mb']:5.0f} MiB "
            f"loaded  ({r['seconds']:.1f} s)"
        )
    print(f"MONAI / segflow added memory: {mon['added_mb'] / max(seg['added_mb'], 1.0):.1f}")
    print(f"class-count agreement segflow vs MONAI: {agree:.4f}")


if __name__ == "__main__":
    main()
