"""Bundles shared by the serving tests (made once per session: torch import + export take seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from segflow.export.onnx import export_onnx
from tests.export import SHAPES, tiny_bundle


@pytest.fixture(scope="session")
def torch_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class Unet (timm resnet10t, 3 stages) with seeded random weights, no export."""
    return tiny_bundle(tmp_path_factory.mktemp("serve-torch") / "cells.segflow")


@pytest.fixture(scope="session")
def onnx_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same kind of bundle with ``model.onnx`` (served with onnxruntime by default)."""
    bundle = tiny_bundle(tmp_path_factory.mktemp("serve-onnx") / "cells.segflow", seed=1)
    export_onnx(bundle, shapes=SHAPES[:1])
    return bundle
