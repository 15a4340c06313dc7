"""Inference backends: one call that maps a batch of normalised tiles to logits.

A backend is any callable ``batch (N x C x h x w float32 numpy) -> logits (N x K x h x w float32
numpy)``. The Predictor does everything else (preprocessing, tiling, activation, blending, TTA,
post-processing) in numpy, so every backend gives the same masks for the same image.

This module imports neither torch nor onnxruntime at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

#: ``--precision`` values: ``auto`` (bf16 where the CPU runs it natively and the bundle's export
#: check found it safe, else f32), ``f32`` or ``bf16``.
PRECISIONS = ("auto", "f32", "bf16")
#: ``--backend`` values.
BACKENDS = ("auto", "torch", "onnx", "openvino")

if TYPE_CHECKING:
    from segflow.models.bundle import LoadedBundle


class Backend(Protocol):
    """Maps a normalised ``N x C x h x w`` float32 batch to ``N x K x h x w`` float32 logits."""

    name: str

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Logits for the batch."""
        ...


class TorchBackend:
    """Eager PyTorch on CPU or GPU (bf16 autocast on GPUs that support it).

    Args:
        bundle: the loaded bundle (its model is moved to ``device``).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...
        amp: mixed precision on CUDA.
        precision: ``f32`` or ``bf16``; on the CPU ``bf16`` runs under
            ``torch.autocast("cpu", dtype=torch.bfloat16)`` (on CUDA ``amp`` decides).
    """

    name = "torch"

    def __init__(
        self,
        bundle: LoadedBundle,
        device: str = "auto",
        amp: bool = True,
        precision: str = "f32",
    ) -> None:
        import torch

        from segflow.errors import UsageError

        if precision not in PRECISIONS[1:]:
            raise UsageError(f"torch precision {precision!r}; valid: f32, bf16")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = bundle.model.to(self.device).eval()
        self.amp = amp and self.device.type == "cuda"
        self.dtype = (
            torch.bfloat16 if self.amp and torch.cuda.is_bf16_supported() else torch.float16
        )
        if self.device.type == "cpu" and precision == "bf16":
            self.amp, self.dtype = True, torch.bfloat16
        self.precision = (
            ("bf16" if self.dtype == torch.bfloat16 else "f16") if self.amp else precision
        )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Logits for the batch (float32 numpy)."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, non_blocking=True)
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=self.dtype, enabled=self.amp),
        ):
            out = self.model(x)
        result: np.ndarray = out.float().cpu().numpy()
        return result


def onnx_file(bundle_path: Path) -> Path | None:
    """The bundle's exported ONNX model, if any."""
    path = bundle_path / "model.onnx"
    return path if path.is_file() else None


def resolve_backend_name(requested: str, bundle_path: Path) -> str:
    """A quick guess without measuring: ``auto`` means onnx when exported, else torch.

    :func:`segflow.infer.choose.choose_backend` is what the Predictor uses (it measures);
    explicit names are checked here.
    """
    from segflow.errors import UsageError

    if requested not in BACKENDS:
        raise UsageError(f"unknown backend {requested!r}; valid: {', '.join(BACKENDS)}")
    if requested in ("onnx", "openvino") and onnx_file(bundle_path) is None:
        raise UsageError(
            f"{bundle_path}: no model.onnx; run `segflow export {bundle_path} --format onnx` first"
        )
    if requested != "auto":
        return requested
    if onnx_file(bundle_path) is not None and _has_module("onnxruntime"):
        return "onnx"
    return "torch"


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def default_threads() -> int:
    """Threads for CPU inference: the CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def describe(backend: Any) -> str:
    """A short name for logs and /info."""
    return str(getattr(backend, "name", type(backend).__name__))
