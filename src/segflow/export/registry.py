"""The model export formats, one registry: ``segflow export BUNDLE --format NAME``.

Each entry takes ``(bundle, opset=, exporter=, tolerance=)`` and returns the bundle's new
``exports`` entry; the heavy modules (torch, onnx) are imported only when one runs. An unknown
name raises the Registry's error with the valid names and a "did you mean".
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from segflow.errors import UsageError
from segflow.registry import Registry

if TYPE_CHECKING:
    from segflow.models.bundle import ExportInfo

ModelExporter = Callable[..., "ExportInfo"]

MODEL_EXPORTERS: Registry[ModelExporter] = Registry("model export format")


@MODEL_EXPORTERS.register("onnx")
def _onnx(
    bundle: str | os.PathLike[str], *, opset: int | None, exporter: str, tolerance: float
) -> ExportInfo:
    from segflow.export.onnx import export_onnx

    return export_onnx(bundle, opset=opset, exporter=exporter, tolerance=tolerance)


@MODEL_EXPORTERS.register("torchscript")
def _torchscript(
    bundle: str | os.PathLike[str], *, opset: int | None, exporter: str, tolerance: float
) -> ExportInfo:
    if opset is not None or exporter != "auto":
        raise UsageError("--opset and --exporter apply to --format onnx only")
    from segflow.export.torchscript import export_torchscript

    return export_torchscript(bundle, tolerance=tolerance)
