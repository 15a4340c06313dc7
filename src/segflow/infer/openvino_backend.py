"""Run a bundle's ``model.onnx`` with OpenVINO: bf16 on CPUs with AMX / AVX-512 BF16, else f32.

Like :mod:`segflow.infer.onnx_backend` this module never imports torch: it reads ``bundle.yaml``
with :func:`segflow.models.bundle.read_bundle_meta`, checks the ONNX file against its sha256 there
and compiles it for OpenVINO's CPU plugin (the GPU plugin when asked for and present). The
precision is OpenVINO's ``INFERENCE_PRECISION_HINT``; the threads ``INFERENCE_NUM_THREADS``.
The ONNX export's batch, height and width are dynamic, and stay so in the compiled model.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from segflow.errors import DataError, UsageError
from segflow.infer.backends import PRECISIONS, default_threads
from segflow.models.bundle import BundleMeta, export_file, read_bundle_meta

log = logging.getLogger("segflow.infer")

#: OpenVINO's names for our precisions, per device (GPUs compute in f16, not bf16).
_HINTS = {"CPU": {"f32": "f32", "bf16": "bf16"}, "GPU": {"f32": "f32", "bf16": "f16"}}


def openvino_devices() -> list[str]:
    """The devices this OpenVINO can use (``["CPU"]``, ``["CPU", "GPU"]``...)."""
    import openvino as ov

    return list(ov.Core().available_devices)


def _pick_device(device: str, available: list[str]) -> str:
    if device == "auto":
        return "GPU" if any(d.startswith("GPU") for d in available) else "CPU"
    wanted = "CPU" if device == "cpu" else "GPU" if device.startswith(("cuda", "gpu")) else device
    if wanted not in available and not any(d.startswith(wanted) for d in available):
        raise UsageError(
            f"OpenVINO has no device {device!r}; available: {', '.join(available) or 'none'}"
        )
    return wanted


class OpenVinoBackend:
    """OpenVINO over ``model.onnx``: ``batch N x C x h x w float32 -> logits N x K x h x w``.

    Args:
        bundle_path: the ``NAME.segflow`` folder, exported with ``segflow export --format onnx``.
        threads: CPU threads (``INFERENCE_NUM_THREADS``); default: the CPUs this process may use.
        precision: ``f32`` or ``bf16`` (``INFERENCE_PRECISION_HINT``; f16 on a GPU).
        device: ``auto`` (the GPU plugin when present, else the CPU), ``cpu`` or an OpenVINO
            device name (``CPU``, ``GPU``, ``GPU.1``).

    Raises:
        DataError: no ONNX export listed in ``bundle.yaml``, the file is missing or does not match
            its sha256, or OpenVINO cannot read or compile it.
        UsageError: bad threads, precision or device.
    """

    name = "openvino"

    def __init__(
        self,
        bundle_path: str | os.PathLike[str],
        *,
        threads: int | None = None,
        precision: str = "f32",
        device: str = "auto",
    ) -> None:
        import openvino as ov

        self.path = Path(bundle_path)
        self.meta: BundleMeta = read_bundle_meta(self.path)
        file = export_file(self.path, self.meta, "onnx")
        if threads is not None and threads < 1:
            raise UsageError(f"threads must be >= 1, got {threads}")
        if precision not in PRECISIONS[1:]:
            raise UsageError(f"OpenVINO precision {precision!r}; valid: f32, bf16")
        core = ov.Core()
        self.device = _pick_device(device, list(core.available_devices))
        self.precision = precision
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _HINTS["GPU" if "GPU" in self.device else "CPU"][precision],
            "PERFORMANCE_HINT": "LATENCY",
        }
        if self.device == "CPU":
            config["INFERENCE_NUM_THREADS"] = threads or default_threads()
        try:
            model = core.read_model(str(file))
            self.compiled = core.compile_model(model, self.device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(file, f"OpenVINO cannot compile it ({first[:300]})") from exc
        self._local = threading.local()  # an infer request per thread (serve runs several)

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Logits for the batch (float32 numpy)."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != self.meta.in_channels:
            raise UsageError(
                f"{self.path}: expects N x {self.meta.in_channels} x H x W input, got "
                f"{'x'.join(map(str, x.shape))}"
            )
        request = self._request()
        request.infer({0: x})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
