"""Training overhead: optimizer steps/s of `segflow train` vs a bare hand-written loop.

Both run in this process on the same generated data, the same model (SMP Unet, same encoder),
the same batch size, crop size, loss (CE 0.5 + Dice 0.5), optimiser (AdamW) and augmentation
(horizontal flip + brightness/contrast), with the same number of data-loader workers. The bare
loop is what people write by hand: a torch Dataset reading PNGs with OpenCV, an albumentations
pipeline, a DataLoader and `loss.backward(); opt.step()`. segflow runs its real `train()` with
defaults (MLflow tracking on, checkpoints, metric logging), validation off for both.

Both run at the same precision: by default the one ``segflow plan`` would choose here (on a
CPU with native bf16, bf16-mixed when a measured step is >= 1.2x faster; on a GPU bf16/fp16
mixed precision), the bare loop under ``torch.autocast`` with the same dtype; ``--precision``
forces one.

Time is taken over the same window of steps (after warm-up) with a Lightning callback for
segflow and a timer around the loop for the baseline; CUDA is synchronised at both ends.

    python benchmarks/train_overhead.py [--steps 30] [--warmup 5] [--batch 8] [--tile 256]
        [--encoder resnet18] [--workers 2] [--precision plan|32|bf16-mixed] [--smoke]

``--smoke`` (the test's mode): 8 images of 64 px, batch 2, 3 timed steps, no workers.

Goal (issue 3): ratio segflow / bare >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import lightning as L
import numpy as np
import segmentation_models_pytorch as smp
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from segflow.train.plan_cost import autocast_dtype
from segflow.train.runner import train


def make_data(root: Path, n: int, size: int, seed: int = 0) -> None:
    """A canonical dataset of noisy images with discs of 2 foreground classes."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        for c in (1, 2):
            for _ in range(4):
                center = (int(rng.integers(size)), int(rng.integers(size)))
                cv2.circle(mask, center, int(rng.integers(8, size // 6)), c, -1)
        img = np.array([[40, 40, 40], [200, 60, 60], [60, 200, 60]], np.float32)[mask]
        img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"{i:04d}.png"), img)
        cv2.imwrite(str(root / "masks" / f"{i:04d}.png"), mask)
    meta = {
        "name": "bench",
        "classes": [
            {"id": k, "name": n_, "color": [k * 80, 0, 0]}
            for k, n_ in enumerate(["background", "a", "b"])
        ],
    }
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta))
    stems = [f"{i:04d}" for i in range(n)]
    (root / "splits.csv").write_text(
        "stem,split,group,fold\n" + "".join(f"{s},train,,\n" for s in stems)
    )


class Timer(L.Callback):
    """Wall time between the end of step `warmup` and the end of step `warmup + steps`."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.start = self.end = 0.0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if step in (self.warmup, self.warmup + self.steps):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if step == self.warmup:
                self.start = time.perf_counter()
            else:
                self.end = time.perf_counter()
                trainer.should_stop = True


class PngDataset(Dataset):
    """The hand-written dataset: read with OpenCV, augment, normalise, to tensors."""

    def __init__(self, root: Path, tile: int) -> None:
        self.files = sorted((root / "images").glob("*.png"))
        self.masks = root / "masks"
        self.aug = A.Compose(
            [
                A.PadIfNeeded(tile, tile),
                A.RandomCrop(tile, tile),
                A.HorizontalFlip(),
                A.RandomBrightnessContrast(p=0.1),
                A.Normalize(),
            ]
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = cv2.cvtColor(cv2.imread(str(self.files[i])), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(self.masks / self.files[i].name), cv2.IMREAD_UNCHANGED)
        out = self.aug(image=img, mask=mask)
        return torch.from_numpy(out["image"].transpose(2, 0, 1).copy()), torch.from_numpy(
            out["mask"]
        ).long()


def bare_loop(root: Path, args: argparse.Namespace, device: torch.device) -> float:
    """Steps/s of the hand-written loop over the same window."""
    torch.manual_seed(0)
    model = smp.Unet(args.encoder, encoder_weights=None, in_channels=3, classes=3).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ce = torch.nn.CrossEntropyLoss(ignore_index=255)
    dice = smp.losses.DiceLoss("multiclass", ignore_index=255)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loader = DataLoader(
        PngDataset(root, args.tile),
        batch_size=args.batch,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    dtype = autocast_dtype("cuda" if device.type == "cuda" else "cpu", args.precision)
    model.train()
    step, start = 0, 0.0
    while True:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(x)
                loss = 0.5 * ce(logits.float(), y) + 0.5 * dice(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step in (args.warmup, args.warmup + args.steps):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if step == args.warmup:
                    start = time.perf_counter()
                else:
                    return args.steps / (time.perf_counter() - start)


def segflow_run(root: Path, out: Path, args: argparse.Namespace) -> float:
    """Steps/s of `segflow train` (defaults: MLflow on, checkpoints) over the same window."""
    timer = Timer(args.warmup, args.steps)
    overrides = [
        f"model.encoder={args.encoder}",
        "model.encoder_weights=null",
        f"data.tile_size={args.tile}",
        f"data.batch_size={args.batch}",
        f"data.num_workers={args.workers}",
        "augment.preset=light",
        "loss.ce=0.5",
        "loss.dice=0.5",
        "optimizer.name=adamw",
        "train.epochs=1000",
        f"train.output={out}",
        f"train.channels_last={str(args.channels_last).lower()}",
        f"train.precision={args.precision}",
        f"tracking.enabled={str(args.tracking).lower()}",
    ]
    train(None, data=root, overrides=overrides, name="bench", callbacks=[timer])
    state = json.loads((out / "bench" / "run.json").read_text())
    print(f"segflow precision: {state.get('precision')}")
    return args.steps / (timer.end - timer.start)


def planned_precision(args: argparse.Namespace, device: torch.device) -> tuple[str, str]:
    """The precision ``segflow plan`` would choose for this model, tile and batch, and why."""
    from segflow.train.plan_cost import MeasuredTimer, detect_device
    from segflow.train.plan_rules import cpu_precision

    if device.type == "cuda":
        return "auto", "GPU: mixed precision (bf16 where supported, else fp16), as segflow plans"
    model = {"model.arch": "Unet", "model.encoder": args.encoder, "model.kwargs": {}}
    timer = MeasuredTimer(detect_device("cpu"))
    return cpu_precision(timer, model, args.tile, args.batch, 3, 3)


def main(argv: list[str] | None = None) -> None:
    """Run both loops and print their steps/s and the ratio."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--channels-last", action="store_true", help="channels-last memory format (both)"
    )
    parser.add_argument(
        "--no-tracking", dest="tracking", action="store_false", help="MLflow off in segflow"
    )
    parser.add_argument(
        "--precision",
        default="plan",
        choices=["plan", "32", "bf16-mixed", "16-mixed"],
        help="both loops' precision (plan: what segflow plan chooses on this machine)",
    )
    parser.add_argument("--smoke", action="store_true", help="a few tiny steps (for the tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.warmup, args.batch, args.tile = 3, 1, 2, 64
        args.images, args.workers = 8, 0
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    why = "set by --precision"
    if args.precision == "plan":
        args.precision, why = planned_precision(args, device)
    with tempfile.TemporaryDirectory(prefix="segflow-train-bench-") as tmp:
        root = Path(tmp) / "data"
        make_data(root, args.images, args.tile)
        bare = bare_loop(root, args, device)
        ours = segflow_run(root, Path(tmp) / "runs", args)
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "none"
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, GPU: {gpu}, torch {torch.__version__}"
    )
    print(
        f"setting: Unet-{args.encoder}, batch {args.batch}, tile {args.tile}, {args.workers} workers, "
        f"{args.steps} timed steps after {args.warmup}, channels_last={args.channels_last}, "
        f"segflow tracking={args.tracking}"
    )
    print(f"precision (both): {args.precision}: {why}")
    print(f"bare PyTorch + SMP + albumentations loop: {bare:.3f} steps/s")
    print(f"segflow train:                            {ours:.3f} steps/s")
    print(
        f"ratio segflow / bare: {ours / bare:.3f}  "
        f"(goal >= 0.95: {'met' if ours / bare >= 0.95 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
