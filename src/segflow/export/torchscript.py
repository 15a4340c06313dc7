"""Export a bundle's network to ``model.ts`` (TorchScript) inside the bundle, verified like ONNX.

``torch.jit.trace`` records the network on an example batch (``torch.jit.script`` is tried when
tracing fails or the traced module misses parity: SMP networks rarely script). The file is written
under a temporary name, loaded back with ``torch.jit.load`` and compared with the eager network at
several sizes and batch sizes (:mod:`segflow.export.verify`): a trace that baked the example's
size into the graph fails there. Only then is it renamed to ``model.ts`` and listed in
``bundle.yaml``.

TorchScript is deprecated in torch 2.14: ``torch.jit.trace``, ``trace_method``, ``script``,
``save`` and ``load`` each emit a FutureWarning ("Please switch to torch.compile or torch.export"). They are
silenced locally around those calls; the format is kept because libtorch (C++) and older
deployment stacks still load it. A ``.ts`` archive holds TorchScript code and tensors; its
``data.pkl`` is read by TorchScript's own restricted unpickler, which builds tensors and
TorchScript objects only, never arbitrary Python objects. segflow itself loads the file only to
verify it right after writing.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segflow._io import file_sha256
from segflow.errors import DataError
from segflow.export.verify import (
    DEFAULT_SHAPES,
    LogitsFn,
    check_parity,
    example_input,
    first_line,
    stage_verify_publish,
    torch_runner,
)
from segflow.models.bundle import ExportInfo

if TYPE_CHECKING:
    import torch

TS_FILE = "model.ts"
DYNAMIC_AXES = ["batch", "height", "width"]


@contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence TorchScript's deprecation notices and tracer warnings for the calls inside.

    torch 2.14 deprecates torch.jit (FutureWarning on trace, script, save, load); the tracer warns
    wherever a size becomes a Python value, and whether the trace still generalises is what the
    parity check at several sizes decides.
    """
    from torch.jit._trace import TracerWarning  # defined there; torch.jit re-exports it untyped

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        warnings.filterwarnings("ignore", category=TracerWarning)
        yield


def load_torchscript(path: str | os.PathLike[str]) -> torch.jit.ScriptModule:
    """Load a ``.ts`` file on the CPU (TorchScript's loader; no Python unpickling)."""
    import torch

    with quiet_jit():
        module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
            str(path), map_location="cpu"
        )
    return module.eval()


def _trace(model: torch.nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    import torch

    with quiet_jit(), torch.no_grad():
        traced: torch.jit.ScriptModule = torch.jit.trace(  # type: ignore[no-untyped-call]
            model, example, check_trace=False
        )
    return traced


def _script(model: torch.nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    import torch

    with quiet_jit():
        scripted: torch.jit.ScriptModule = torch.jit.script(model)
    return scripted


_METHODS: dict[str, Callable[[torch.nn.Module, torch.Tensor], torch.jit.ScriptModule]] = {
    "torch.jit.trace": _trace,
    "torch.jit.script": _script,
}


def _runner(path: Path) -> LogitsFn:
    import torch

    module = load_torchscript(path)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            result: np.ndarray = module(torch.from_numpy(batch)).float().numpy()
        return result

    return run


def export_torchscript(
    bundle_path: str | os.PathLike[str],
    *,
    tolerance: float = 1e-4,
    agreement: float = 0.9999,
    shapes: Sequence[tuple[int, int, int]] = DEFAULT_SHAPES,
    seed: int = 0,
) -> ExportInfo:
    """Write the bundle's network as ``model.ts`` inside the bundle, after a parity check.

    Args:
        bundle_path: the ``NAME.segflow`` folder.
        tolerance: largest |logit difference| allowed against eager PyTorch.
        agreement: smallest share of pixels whose class decision must agree.
        shapes: ``(batch, height, width)`` checked; the first (with batch 2) is the example traced.
        seed: seed of the random inputs.

    Returns:
        What ``bundle.yaml`` now lists under ``exports.torchscript``.

    Raises:
        DataError: neither tracing nor scripting gives a module that passes parity (no file is
            written then).
    """
    import torch

    from segflow.models.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    folder, meta = bundle.path, bundle.meta
    eager = torch_runner(bundle.model)
    example = example_input(shapes, meta.in_channels, seed)

    def attempt(
        method: str, make: Callable[[torch.nn.Module, torch.Tensor], torch.jit.ScriptModule]
    ) -> Callable[[Path], ExportInfo]:
        def run(staged: Path) -> ExportInfo:
            try:
                module = make(bundle.model, example)
                with quiet_jit():
                    torch.jit.save(module, str(staged))
            except Exception as exc:  # tracing/scripting raise many types: "cannot export"
                raise DataError(folder, f"cannot export: {first_line(exc)}") from exc
            parity = check_parity(
                eager,
                _runner(staged),
                shapes,
                meta.in_channels,
                seed,
                tolerance=tolerance,
                agreement=agreement,
                label="TorchScript export",
                path=folder,
            )
            return ExportInfo(
                file=TS_FILE,
                format="torchscript",
                opset=None,
                exporter=method,
                torch_version=str(torch.__version__),
                sha256=file_sha256(staged),
                dynamic_axes=DYNAMIC_AXES,
                parity=parity,
            )

        return run

    info, _, _ = stage_verify_publish(
        folder,
        TS_FILE,
        [(method, attempt(method, make)) for method, make in _METHODS.items()],
        failed=lambda failures: (
            f"TorchScript export failed: {'; '.join(failures)}; no file written"
        ),
    )
    return info
