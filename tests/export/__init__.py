"""Export tests; ``tiny_bundle`` saves a small random network (timm resnet10t, 3 stages) as a bundle."""

from __future__ import annotations

from pathlib import Path

import torch

from segflow.models.bundle import save_bundle
from segflow.models.factory import create_model
from tests.models import make_meta

ENCODER = "tu-resnet10t"
KWARGS = {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}
#: (batch, height, width) for parity in tests: non-square, two batch sizes, small enough for CPUs.
SHAPES = ((2, 64, 96), (1, 96, 64), (3, 64, 64))


def tiny_bundle(path: Path, *, classes: int = 3, in_channels: int = 3, seed: int = 0) -> Path:
    """A Unet bundle with random (seeded) weights; ``classes=1`` makes a binary (1-logit) one."""
    torch.manual_seed(seed)
    model = create_model("Unet", ENCODER, in_channels=in_channels, classes=classes, **KWARGS).eval()
    meta = make_meta(
        "Unet",
        ENCODER,
        in_channels=in_channels,
        out_channels=classes,
        model_kwargs=KWARGS,
        name=path.stem,
    )
    return save_bundle(path, model, meta)
