"""Model factory and bundle tests; ``make_meta`` builds valid bundle metadata for any network."""

from __future__ import annotations

from typing import Any

from segflow.data.dataset import make_classes
from segflow.models.bundle import BundleMeta, InferenceSettings, Normalization


def make_meta(
    arch: str = "Unet",
    encoder: str = "resnet18",
    *,
    in_channels: int = 3,
    out_channels: int = 1,
    model_kwargs: dict[str, Any] | None = None,
    name: str = "test",
) -> BundleMeta:
    """Metadata for a network with ``out_channels`` outputs (1: binary with 2 classes)."""
    binary = out_channels == 1
    names = ["background", "foreground"] if binary else [f"c{i}" for i in range(out_channels)]
    return BundleMeta(
        name=name,
        task="binary" if binary else "multiclass",
        classes=make_classes(names),
        arch=arch,
        encoder=encoder,
        model_kwargs=model_kwargs or {},
        in_channels=in_channels,
        out_channels=out_channels,
        normalization=Normalization(
            scale=255.0, mean=[0.5] * in_channels, std=[0.25] * in_channels
        ),
        input_dtype="uint8",
        tile_size=64,
        inference=InferenceSettings(tile_size=64),
    )
