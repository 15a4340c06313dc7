"""What the inference benchmarks share: a seeded 3-class Unet bundle and a test image of discs.

Imported by the scripts next to it (``python benchmarks/NAME.py`` puts this folder on sys.path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def bench_bundle(work: Path, encoder: str, tile: int, *, realistic_bn: bool = False) -> Path:
    """Save ``work/bench.segflow``: SMP Unet-``encoder``, 3 classes, seeded random weights.

    ImageNet normalisation for uint8 RGB, inference tile ``tile`` with overlap 0.25. With
    ``realistic_bn`` BatchNorm first takes the running statistics of real activations, as
    training would: with the initial ones an untrained ResNet's logits reach ~100 and float32
    rounding alone exceeds the export's 1e-4 parity tolerance (they stay near 1 after this).
    """
    import torch

    from segflow.data.dataset import make_classes
    from segflow.models.bundle import BundleMeta, InferenceSettings, Normalization, save_bundle
    from segflow.models.factory import create_model

    torch.manual_seed(0)
    model = create_model("Unet", encoder, in_channels=3, classes=3)
    if realistic_bn:
        with torch.no_grad():
            for _ in range(5):
                model(torch.randn(4, 3, 256, 256))
    model.eval()
    meta = BundleMeta(
        name="bench",
        task="multiclass",
        classes=make_classes(["background", "a", "b"]),
        arch="Unet",
        encoder=encoder,
        model_kwargs={},
        in_channels=3,
        out_channels=3,
        normalization=Normalization(
            scale=255.0, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]
        ),
        input_dtype="uint8",
        tile_size=tile,
        inference=InferenceSettings(tile_size=tile, overlap=0.25),
    )
    return save_bundle(work / "bench.segflow", model, meta)


def disc_image(
    size: int, discs: int, radius: tuple[int, int], *, background: int = 0
) -> np.ndarray:
    """A ``size x size`` RGB uint8 image of ``discs`` random discs: structure, not noise."""
    import cv2

    rng = np.random.default_rng(0)
    image = np.full((size, size, 3), background, np.uint8)
    for _ in range(discs):
        centre = (int(rng.integers(size)), int(rng.integers(size)))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.circle(image, centre, int(rng.integers(*radius)), colour, -1)
    return image
