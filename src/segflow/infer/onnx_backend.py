"""Run a bundle's ``model.onnx`` with onnxruntime: the Backend for machines without torch.

This module never imports torch, directly or through segflow: it reads ``bundle.yaml`` with
:func:`segflow.models.bundle.read_bundle_meta` (pydantic and YAML only) and checks the ONNX file
against the sha256 listed there before opening it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segflow.errors import DataError, UsageError
from segflow.infer.backends import default_threads
from segflow.models.bundle import BundleMeta, export_file, read_bundle_meta


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, the CPU always."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in preferred if p in available] or ["CPUExecutionProvider"]


class OnnxBackend:
    """onnxruntime over ``model.onnx``: ``batch N x C x h x w float32 -> logits N x K x h x w``.

    Args:
        bundle_path: the ``NAME.segflow`` folder, exported with ``segflow export --format onnx``.
        threads: CPU threads per call (``intra_op_num_threads``); default: the CPUs this process
            may use.
        providers: onnxruntime execution providers in order of preference; default
            ``CUDAExecutionProvider`` (when available) then ``CPUExecutionProvider``.

    Raises:
        DataError: no ONNX export listed in ``bundle.yaml``, the file is missing or does not match
            its sha256 there, or onnxruntime cannot open it.
        UsageError: a provider this onnxruntime does not have.
    """

    name = "onnx"

    def __init__(
        self,
        bundle_path: str | os.PathLike[str],
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(bundle_path)
        self.meta: BundleMeta = read_bundle_meta(self.path)
        file = export_file(self.path, self.meta, "onnx")
        if threads is not None and threads < 1:
            raise UsageError(f"threads must be >= 1, got {threads}")
        chosen = list(providers) if providers is not None else default_providers()
        unknown = [p for p in chosen if p not in ort.get_available_providers()]
        if unknown or not chosen:
            raise UsageError(
                f"onnxruntime has no provider {', '.join(unknown) or '(none given)'}; "
                f"available: {', '.join(ort.get_available_providers())}"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(file), options, providers=chosen)
        except Exception as exc:  # onnxruntime's own error types (Fail, InvalidGraph...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(file, f"onnxruntime cannot open it ({first})") from exc
        self.providers: list[str] = list(self.session.get_providers())
        self.input_name: str = self.session.get_inputs()[0].name
        self.output_name: str = self.session.get_outputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Logits for the batch (float32 numpy)."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != self.meta.in_channels:
            raise UsageError(
                f"{self.path}: expects N x {self.meta.in_channels} x H x W input, got "
                f"{'x'.join(map(str, x.shape))}"
            )
        out = self.session.run([self.output_name], {self.input_name: x})[0]
        return np.asarray(out, dtype=np.float32)
