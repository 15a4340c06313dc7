"""One contract over every architecture: build, forward, backward, bundle round trip.

Each architecture gets the smallest encoder SMP supports for it and the smallest input it accepts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from segflow.models.bundle import load_bundle, save_bundle
from segflow.models.factory import ARCHITECTURES, create_model
from tests.models import make_meta

# arch -> (encoder, extra kwargs, input side). PAN's pyramid attention needs 128 px; DPT takes only
# timm ViT encoders (tiny ViT, any input size, small decoder to keep the test fast).
SMALL: dict[str, tuple[str, dict[str, Any], int]] = {
    arch: ("resnet18", {}, 64) for arch in ARCHITECTURES
}
SMALL["PAN"] = ("resnet18", {}, 128)
SMALL["DPT"] = (
    "tu-vit_tiny_patch16_224",
    {
        "dynamic_img_size": True,
        "decoder_intermediate_channels": [16, 32, 64, 64],
        "decoder_fusion_channels": 32,
    },
    64,
)
# (in_channels, classes): grey in / multiclass out and RGB in / binary out cover both values of
# each while keeping the file fast on two CPU cores; one 4-channel case besides.
CASES = [(arch, c_in, c_out) for arch in ARCHITECTURES for c_in, c_out in ((1, 3), (3, 1))]
CASES.append(("Unet", 4, 2))


def test_architectures_match_smp() -> None:
    import segmentation_models_pytorch as smp

    names = {cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values()}
    assert set(ARCHITECTURES) == names, "a new SMP architecture needs its place in the contract"


@pytest.mark.parametrize(("arch", "in_channels", "classes"), CASES)
class TestArchitectureContract:
    def test_forward_backward_and_bundle_round_trip(
        self, arch: str, in_channels: int, classes: int, tmp_path: Path
    ) -> None:
        encoder, kwargs, side = SMALL[arch]
        torch.manual_seed(0)
        model = create_model(arch, encoder, in_channels=in_channels, classes=classes, **kwargs)
        x = torch.rand(2, in_channels, side, side)

        out = model(x)
        assert out.shape == (2, classes, side, side)
        out.square().mean().backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and any(bool(g.abs().sum() > 0) for g in grads)
        assert all(bool(torch.isfinite(g).all()) for g in grads)

        model.eval()
        meta = make_meta(
            arch, encoder, in_channels=in_channels, out_channels=classes, model_kwargs=kwargs
        )
        path = save_bundle(tmp_path / "m.segflow", model, meta)
        loaded = load_bundle(path)
        assert not loaded.model.training
        with torch.no_grad():
            expected = model(x)
            actual = loaded.model(x)
        torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)
        assert loaded.meta.arch == arch and loaded.meta.encoder == encoder
