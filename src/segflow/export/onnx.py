"""Export a bundle's network to ``model.onnx`` inside the bundle, verified against eager PyTorch.

The file takes ``image`` (``N x C x H x W`` float32, normalised) and gives ``logits``
(``N x K x H x W`` float32); batch, height and width are dynamic. It is written under a temporary
name, checked with ``onnx.checker``, run with onnxruntime against the bundle's PyTorch network at
several sizes (:mod:`segflow.export.verify`), and only then renamed to ``model.onnx`` and listed in
``bundle.yaml``. A failed check leaves neither the file nor a change to ``bundle.yaml``.

Exporter choice (``exporter="auto"``): the legacy TorchScript-based exporter first, the dynamo
exporter (``torch.export`` + onnxscript) when the legacy one fails or misses parity. Measured on
this project's 2-core CPU machine (torch 2.14.1, onnx 1.23.2, onnxruntime 1.32.0, onnxscript
0.7.2; random-init networks, 3 channels, 3 classes, default opset 20).

1. Through ``export_onnx`` (example 2x3x128x160, parity at the default shapes; seconds include
   the parity check; resnet18 encoders unless named)::

    network        legacy                     dynamo                     TorchScript trace
    Unet           1.6 s  1.8e-5              7.9 s  1.8e-5              1.1 s  0
    UnetPlusPlus   2.0 s  7.7e-6             10.0 s  7.7e-6              1.8 s  0
    MAnet          2.2 s  5.4e-5             10.3 s  5.2e-5              1.5 s  0
    Linknet        1.0 s  3.1e-7              7.6 s  3.1e-7              0.9 s  0
    FPN            1.1 s  1.1e-5              7.6 s  1.1e-5              1.0 s  0
    PSPNet         fails (1)                  parity: 6.4e-1 at 1x160x224  0.6 s  0
    DeepLabV3      1.7 s  4.1e-7              6.0 s  4.3e-7              1.3 s  0
    DeepLabV3Plus  1.8 s  2.5e-7              6.6 s  2.4e-7              0.9 s  0
    PAN            1.0 s  5.8e-5 (2)         10.2 s  6.1e-5              1.5 s  0
    UPerNet        fails (1)                  parity: 2.2e-1 at 1x160x224  3.1 s  0
    Segformer      2.2 s  1.5e-5              8.9 s  1.5e-5              1.0 s  0
    DPT (ViT-tiny) fails (3)                 16.2 s  8.8e-5              1.2 s  0

   (1) adaptive_avg_pool2d of a dynamic size is unsupported; (2) 2 of 162,816 pixels changed
   class (near-ties), within the 0.9999 agreement; (3) ``aten::_upsample_bicubic2d_aa`` has no
   opset-20 symbolic. Max |logit diff| shown; decisions agreed on 100% otherwise.

2. Raw ``torch.onnx.export`` (example 1x3x256x256), then onnxruntime at 3x96x160, 2x160x96 and
   1x224x352 (non-square, multiples of 32 but not of 64) and at 1x3x512x512 (median of 12
   interleaved runs, 2 threads, on a shared and noisy machine)::

    network             exporter  export s  MB    ort 512 ms  other sizes
    Unet/resnet18       legacy     1.0-2.5  57.3      ~650    all match (1.6e-5)
    Unet/resnet18       dynamo     7.1-7.6  57.5      ~650    all match
    FPN/resnet18        legacy         0.6  52.2      ~500    all match
    FPN/resnet18        dynamo         8.3  52.5      ~550    all match
    Segformer/mit_b0    legacy         1.8  15.0      ~610    all match
    Segformer/mit_b0    dynamo        37.6  15.9      ~610    batch specialised to 1: fails at
                                                              other batches (fine when traced
                                                              at batch 2: 28.5 s)
    DeepLabV3+/resnet18 legacy         2.3  49.3      ~500    all match
    DeepLabV3+/resnet18 dynamo         7.3  49.5      ~480    all match
    Unet++/resnet18     legacy         0.8  63.9     ~1200    all match
    Unet++/resnet18     dynamo        10.3  64.1     ~1200    all match
    UPerNet/resnet18    dynamo        12.9  78.5      ~900    fails at 2 sizes, wrong logits
                                                              (|diff| 0.55) at 1x224x352

So the legacy exporter is 3-20x faster, needs no onnxscript (not a segflow dependency), writes
files of the same size that run as fast, and kept batch, height and width dynamic on every
network it could export; the dynamo exporter is the fallback for what the legacy one cannot
handle (DPT), and the parity check at several sizes and batches is what catches its silent
specialisations (PSPNet, UPerNet: no ONNX export passes; use TorchScript). Exporters trace a batch
of 2, never 1, which ``torch.export`` would specialise. The legacy exporter is deprecated in torch
2.x and says so with two DeprecationWarnings per call: they are silenced locally around the call
(``_export_legacy``). When torch drops it, ``auto`` falls through to dynamo.

Opset: the exporters' own default (``torch.onnx``'s ``ONNX_DEFAULT_OPSET``, 20 in torch 2.14);
``opset=`` asks for another. The opset in the file is what ``bundle.yaml`` records.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from segflow._io import file_sha256
from segflow.errors import DataError, SegflowError, UsageError
from segflow.export.torchscript import quiet_jit
from segflow.export.verify import (
    DEFAULT_SHAPES,
    LogitsFn,
    check_bf16,
    check_parity,
    example_input,
    first_line,
    stage_verify_publish,
    torch_runner,
)
from segflow.models.bundle import BundleMeta, ExportInfo

if TYPE_CHECKING:
    import torch

log = logging.getLogger("segflow.export")

ONNX_FILE = "model.onnx"
EXPORTERS = ("auto", "legacy", "dynamo")
EXPORTER_NAMES = {
    "legacy": "torch.onnx legacy (TorchScript-based)",
    "dynamo": "torch.onnx dynamo",
}
DYNAMIC_AXES = ["batch", "height", "width"]
INPUT_NAME, OUTPUT_NAME = "image", "logits"


@contextmanager
def _native_output_to_log() -> Iterator[None]:
    """Send what native code prints meanwhile (stdout and stderr) to the debug log instead.

    On failure the legacy exporter prints the whole TorchScript IR graph (tens of kilobytes) to
    stdout from C++, whatever ``verbose`` says (torch 2.14's ``setup_onnx_logging`` tests a
    function object for truth, so its ONNX log is always on); the one-line error says enough.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as sink:
        for fd in saved:
            os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            said = sink.read().decode(errors="replace").strip()
            if said:
                log.debug("torch.onnx printed: %s", said[:4000])


def _export_legacy(model: torch.nn.Module, x: torch.Tensor, out: Path, opset: int | None) -> None:
    import torch

    axes = {0: "batch", 2: "height", 3: "width"}
    # quiet_jit: the tracer warns wherever a size becomes a Python value; whether the graph
    # still generalises to other sizes is what the parity check at several sizes decides.
    with quiet_jit(), warnings.catch_warnings(), _native_output_to_log():
        # torch 2.9+ deprecates the TorchScript-based exporter (a DeprecationWarning from
        # torch.onnx.export and one from its utils); we choose it on purpose, see the module doc.
        warnings.filterwarnings(
            "ignore", "You are using the legacy TorchScript", DeprecationWarning
        )
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        torch.onnx.export(
            model,
            (x,),
            str(out),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
            opset_version=opset,
        )


def _export_dynamo(model: torch.nn.Module, x: torch.Tensor, out: Path, opset: int | None) -> None:
    import torch

    dynamic = torch.export.Dim.DYNAMIC
    torch.onnx.export(
        model,
        (x,),
        str(out),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: dynamic, 2: dynamic, 3: dynamic},),
        opset_version=opset,
        external_data=False,
        verbose=False,
    )


_EXPORT = {"legacy": _export_legacy, "dynamo": _export_dynamo}


def _has_onnxscript() -> bool:
    return importlib.util.find_spec("onnxscript") is not None


def _check_file(path: Path, bundle: Path) -> int:
    """``onnx.checker`` on the written file; returns its default-domain opset."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path), load_external_data=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise DataError(
            bundle, f"the exported ONNX file fails onnx.checker ({first_line(exc)})"
        ) from exc
    return int(next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))


def onnx_runner(path: Path, threads: int | None = None) -> LogitsFn:
    """Run an ONNX file with onnxruntime on the CPU (the parity check's exported side)."""
    import onnxruntime as ort

    from segflow.infer.backends import default_threads

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the check reports what matters
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own error types (Fail, InvalidGraph, NotImplemented)
        raise DataError(
            path.parent, f"onnxruntime cannot load the export ({first_line(exc)})"
        ) from exc

    def run(batch: np.ndarray) -> np.ndarray:
        result: np.ndarray = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        return result

    return run


def validation_images(meta: BundleMeta, limit: int = 4, size: int = 512) -> list[np.ndarray]:
    """Normalised ``1 x C x h x w`` centre crops of the training run's validation images.

    The dataset is the one in the bundle's config; an empty list when it cannot be read.
    """
    from segflow.config import PreprocessConfig
    from segflow.data.dataset import CanonicalDataset
    from segflow.data.image_io import read_image
    from segflow.data.preprocess import Preprocessor

    root = ((meta.config or {}).get("data") or {}).get("dataset")
    if not root:
        return []
    try:
        ds = CanonicalDataset(root)
        samples = ds.labelled_samples("val") if ds.splits() else ds.labelled_samples(None)
        pre = Preprocessor(
            PreprocessConfig.model_validate(meta.preprocess), meta.in_channels, meta.normalization
        )
        out = []
        for sample in samples[:limit]:
            x, _ = pre.network_input(read_image(sample.image))
            _, h, w = x.shape
            th, tw = min(size, h // 32 * 32), min(size, w // 32 * 32)
            if min(th, tw) >= 64:
                y0, x0 = (h - th) // 2, (w - tw) // 2
                out.append(np.ascontiguousarray(x.rows(y0, y0 + th)[None, :, :, x0 : x0 + tw]))
    except Exception as exc:  # moved, edited or unreadable: the random parity inputs do
        log.info("bf16 check on the parity inputs: %s", first_line(exc))
        return []
    return out


def relative_tolerance(bundle_path: str | os.PathLike[str], base: float = 1e-4) -> float:
    """``base`` x max(1, the largest |logit| of the network on the first parity input).

    float32 rounding grows with the logits: a trained network's logits on the random parity
    inputs reach the hundreds (818 measured after 40 s of CHASE_DB1 training), and onnxruntime
    then differs from PyTorch by ~1e-3 with no error at all (relative 1.6e-6). The decision
    agreement (>= 99.99%) still guards the masks.
    """
    import torch

    from segflow.models.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    _, height, width = DEFAULT_SHAPES[0]
    x = example_input(DEFAULT_SHAPES, bundle.meta.in_channels)[:1, :, :height, :width]
    with torch.inference_mode():
        scale = float(bundle.model(x).abs().max())
    return base * max(1.0, scale) if np.isfinite(scale) else base


def export_after_training(bundle_path: str | os.PathLike[str]) -> ExportInfo | None:
    """``segflow train``'s last step: export the best bundle to ONNX, never failing the run.

    A trained bundle is then fast out of the box (``--backend auto`` can pick onnxruntime or
    OpenVINO, bf16 where the export check found it safe on the run's validation images). The
    logit tolerance is relative (:func:`relative_tolerance`). A failure is a warning naming the
    reason; the bundle stays as it was.
    """
    path = Path(bundle_path)
    if not (path / "bundle.yaml").is_file():
        return None
    try:
        info = export_onnx(path, tolerance=relative_tolerance(path))
    except Exception as exc:  # any failure (exporter, parity, disk) must not fail the run
        log.warning("%s: no ONNX export (%s); predict runs on torch", path, first_line(exc))
        return None
    bf16 = info.bf16
    log.info(
        "exported %s/model.onnx (bf16 %s)",
        path,
        f"keeps {bf16.agreement:.2%} of decisions" if bf16 else "not checked",
    )
    return info


def _bf16_runners(model: torch.nn.Module, staged: Path) -> dict[str, LogitsFn]:
    """bf16 runs to check: torch autocast always, OpenVINO bf16 where it runs natively here."""
    from segflow._hw import cpu_supports_bf16

    runners = {"torch-bf16": torch_runner(model, bf16=True)}
    if not cpu_supports_bf16():
        return runners
    try:
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(
            core.read_model(str(staged)), "CPU", {"INFERENCE_PRECISION_HINT": "bf16"}
        )
    except Exception as exc:  # not installed, or cannot compile: torch's bf16 run still counts
        log.info("bf16 check without OpenVINO (%s)", first_line(exc))
        return runners

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(compiled(batch)[0], dtype=np.float32)

    runners["openvino-bf16"] = run
    return runners


def export_onnx(
    bundle_path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    exporter: Literal["auto", "legacy", "dynamo"] | str = "auto",
    tolerance: float = 1e-4,
    agreement: float = 0.9999,
    shapes: Sequence[tuple[int, int, int]] = DEFAULT_SHAPES,
    seed: int = 0,
    bf16_images: Sequence[np.ndarray] | None = None,
) -> ExportInfo:
    """Write the bundle's network as ``model.onnx`` inside the bundle, after a parity check.

    Args:
        bundle_path: the ``NAME.segflow`` folder.
        opset: ONNX opset; ``None`` takes the exporter's default (20 with torch 2.14).
        exporter: ``auto`` (legacy, then dynamo if that fails), ``legacy`` or ``dynamo``.
        tolerance: largest |logit difference| allowed against eager PyTorch.
        agreement: smallest share of pixels whose class decision must agree.
        shapes: ``(batch, height, width)`` checked; the first (with batch 2) is also the
            example the exporter traces.
        seed: seed of the random inputs.
        bf16_images: normalised ``N x C x H x W`` batches the bf16 check runs on; default:
            crops of the validation images of the dataset in the bundle's config when it can
            be read, else the random parity inputs (``()``: always those).

    Returns:
        What ``bundle.yaml`` now lists under ``exports.onnx`` (with ``bf16``: whether bf16
        inference keeps >= 99.5% of the class decisions; never a reason to fail).

    Raises:
        UsageError: an unknown exporter, or ``dynamo`` without onnxscript installed.
        DataError: the export fails or misses parity (no file is written then).
    """
    if exporter not in EXPORTERS:
        raise UsageError(f"unknown ONNX exporter {exporter!r}; valid: {', '.join(EXPORTERS)}")
    if exporter == "dynamo" and not _has_onnxscript():
        raise UsageError(
            "the dynamo ONNX exporter needs onnxscript: pip install onnxscript "
            "(or use the legacy exporter)"
        )
    if opset is not None and opset < 7:
        raise UsageError(f"opset {opset} is too old: ONNX export needs opset 7 or later")
    import torch

    from segflow.models.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    folder, meta = bundle.path, bundle.meta
    eager = torch_runner(bundle.model)
    example = example_input(shapes, meta.in_channels, seed)
    order = ["legacy", "dynamo"] if exporter == "auto" else [exporter]

    def attempt(name: str) -> Callable[[Path], ExportInfo]:
        def run(staged: Path) -> ExportInfo:
            if name == "dynamo" and not _has_onnxscript():
                raise DataError(folder, "needs onnxscript (pip install onnxscript)")
            try:
                _EXPORT[name](bundle.model, example, staged, opset)
            except Exception as exc:  # torch.onnx raises many types; each is "cannot export"
                reason = first_line(exc).split(". Please feel free to request support")[0]
                raise DataError(folder, f"cannot export: {reason}") from exc
            file_opset = _check_file(staged, folder)
            parity = check_parity(
                eager,
                onnx_runner(staged),
                shapes,
                meta.in_channels,
                seed,
                tolerance=tolerance,
                agreement=agreement,
                label="ONNX export",
                path=folder,
            )
            bf16 = check_bf16(
                eager,
                _bf16_runners(bundle.model, staged),
                shapes,
                meta.in_channels,
                seed,
                images=validation_images(meta) if bf16_images is None else bf16_images,
            )
            return ExportInfo(
                file=ONNX_FILE,
                format="onnx",
                opset=file_opset,
                exporter=EXPORTER_NAMES[name],
                torch_version=str(torch.__version__),
                sha256=file_sha256(staged),
                dynamic_axes=DYNAMIC_AXES,
                parity=parity,
                bf16=bf16,
            )

        return run

    info, used, failures = stage_verify_publish(
        folder,
        ONNX_FILE,
        [(f"{name} exporter", attempt(name)) for name in order],
        failed=lambda failures: (
            f"ONNX export failed with every exporter: {'; '.join(failures)}; no file written"
        ),
        catch=SegflowError,
        reraise_single=True,
    )
    if failures:
        log.warning("%s; used the %s", "; ".join(failures), used)
    return info
