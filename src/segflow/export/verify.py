"""Parity between an exported model and eager PyTorch: the check every export must pass.

Both sides are plain callables on numpy (``N x C x H x W`` float32 -> ``N x K x H x W`` logits), so
this module imports neither torch nor onnxruntime. The inputs are seeded standard-normal tensors
(what a normalised image looks like) at several sizes: a traced export that baked one input size
into its graph fails at the others.

Two figures decide:

* ``max_abs_diff``: the largest |logit difference| at any tested shape must be <= ``tolerance``;
* ``argmax_agreement``: the share of all tested pixels with the same class decision (argmax over
  classes, or ``logit > 0`` for a one-channel binary network) must be >= ``agreement``. Within a
  tight tolerance only pixels at a near-tie can flip, so the default 0.9999 allows a few of them
  (3 in the 30,720 pixels of the tests' shapes, 16 at the default shapes) and no more; with a
  looser tolerance (say for a float16 export) it is the figure that still guards the masks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segflow.errors import DataError, SegflowError
from segflow.models.bundle import Bf16Check, ExportInfo, Parity, record_export

if TYPE_CHECKING:
    import torch

__all__ = [
    "BF16_AGREEMENT",
    "DEFAULT_SHAPES",
    "LogitsFn",
    "Parity",
    "check_bf16",
    "check_parity",
    "describe_parity",
    "example_input",
    "first_line",
    "publish",
    "stage_verify_publish",
    "torch_runner",
]

LogitsFn = Callable[[np.ndarray], np.ndarray]

#: Share of pixel decisions a bf16 run must keep for ``auto`` to choose bf16 for a bundle.
BF16_AGREEMENT = 0.995

#: (batch, height, width) tested by default: non-square, sides multiples of 32 but 160 and 224 not
#: of 64, a batch other than the one exported with, and every side >= 128 (PAN's pyramid needs it).
DEFAULT_SHAPES: tuple[tuple[int, int, int], ...] = ((2, 128, 160), (1, 160, 224), (3, 224, 128))


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def _sci(value: float, digits: int = 1) -> str:
    """``3.2e-3`` rather than Python's ``3.2e-03``."""
    if not np.isfinite(value):
        return str(value)
    mantissa, _, exponent = f"{value:.{digits}e}".partition("e")
    return f"{mantissa}e{int(exponent)}"


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (torch's can run to pages)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _decisions(logits: np.ndarray) -> np.ndarray:
    """Class per pixel: argmax over classes, or ``logit > 0`` for one binary channel."""
    return logits[:, 0] > 0 if logits.shape[1] == 1 else logits.argmax(axis=1)


def check_parity(
    eager_fn: LogitsFn,
    exported_fn: LogitsFn,
    shapes: Sequence[tuple[int, int, int]],
    in_channels: int,
    seed: int = 0,
    *,
    tolerance: float = 1e-4,
    agreement: float = 0.9999,
    label: str = "export",
    path: str | os.PathLike[str] | None = None,
) -> Parity:
    """Compare ``exported_fn`` with ``eager_fn`` on seeded random batches of each shape.

    Args:
        eager_fn: the reference (the bundle's PyTorch network, float32).
        exported_fn: the exported model's runner.
        shapes: ``(batch, height, width)`` per tested input.
        in_channels: input channels of the network.
        seed: seed of the random inputs.
        tolerance: largest |logit difference| allowed.
        agreement: smallest share of pixels whose class decision must agree.
        label: what is checked, for the error message ("ONNX export").
        path: the bundle, named by the error.

    Returns:
        The largest difference, the share of agreeing pixels over every shape, the thresholds
        and the shapes tested.

    Raises:
        DataError: a threshold is missed, the export fails or gives another shape at some input,
            or PyTorch itself cannot run a shape (then pass sizes the network accepts).
    """
    if not shapes:
        raise ValueError("check_parity needs at least one shape")
    rng = np.random.default_rng(seed)
    worst_diff, pixels = 0.0, 0
    tested: list[list[int]] = []
    differing: list[tuple[int, str]] = []  # (pixels whose class changed, shape)
    for batch, height, width in shapes:
        full = (batch, in_channels, height, width)
        where = _shape_text(full)
        x = rng.standard_normal(full, dtype=np.float32)
        try:
            expected = np.asarray(eager_fn(x), dtype=np.float32)
        except Exception as exc:  # the network's own limits (minimum sizes, divisibility)
            raise DataError(
                path,
                f"PyTorch cannot run the network at {where} ({first_line(exc)}): "
                "check parity at sizes it accepts",
            ) from exc
        try:
            actual = np.asarray(exported_fn(x), dtype=np.float32)
        except Exception as exc:  # any runtime failure of the exported file is a parity failure
            raise DataError(
                path, f"{label} fails at {where} ({first_line(exc)}); file not written"
            ) from exc
        if actual.shape != expected.shape:
            raise DataError(
                path,
                f"{label} gives logits of shape {_shape_text(actual.shape)}, PyTorch "
                f"{_shape_text(expected.shape)} at {where}; file not written",
            )
        diff = float(np.max(np.abs(actual - expected)))
        if not np.isfinite(diff) or diff > tolerance:
            # float32 rounding grows with the logits' size: an untrained network's logits reach
            # the tens and differ by a few 1e-4 between runtimes with no error at all.
            scale = float(np.max(np.abs(expected)))
            raise DataError(
                path,
                f"{label} does not match PyTorch: max |logit diff| {_sci(diff)} > {_sci(tolerance, 0)} "
                f"at {where} (logits up to {scale:.3g}; if that is large, a relative error of "
                f"{_sci(diff / max(scale, 1e-12))} may be acceptable: raise --tolerance); "
                "file not written",
            )
        changed = int(np.count_nonzero(_decisions(expected) != _decisions(actual)))
        differing.append((changed, where))
        pixels += batch * height * width
        worst_diff = max(worst_diff, diff)
        tested.append(list(full))
    share = 1.0 - sum(changed for changed, _ in differing) / pixels
    if share < agreement:
        most = max(differing)[1]
        raise DataError(
            path,
            f"{label} does not match PyTorch: the class decision agrees on {share:.4%} of "
            f"pixels < {agreement:.4%} (most differ at {most}); file not written",
        )
    return Parity(
        max_abs_diff=worst_diff,
        argmax_agreement=share,
        tolerance=tolerance,
        min_agreement=agreement,
        inputs=tested,
    )


def check_bf16(
    eager_fn: LogitsFn,
    bf16_fns: dict[str, LogitsFn],
    shapes: Sequence[tuple[int, int, int]],
    in_channels: int,
    seed: int = 0,
    *,
    agreement: float = BF16_AGREEMENT,
    images: Sequence[np.ndarray] = (),
) -> Bf16Check:
    """How many class decisions bf16 runs keep against fp32 eager, on the parity inputs.

    Never raises for a low agreement: the result says whether bf16 is safe (the worst of the
    ``bf16_fns`` counts), and ``auto`` then never chooses bf16 for the bundle. A bf16 run that
    fails counts as agreement 0. ``images`` (normalised ``N x C x H x W`` batches, e.g. the
    training run's validation images) replace the random inputs when given: on white noise a
    trained network sits near decision ties far more often than on the images it was made for.
    """
    rng = np.random.default_rng(seed)
    batches = list(images) or [
        rng.standard_normal((b, in_channels, h, w), dtype=np.float32) for b, h, w in shapes
    ]
    same = dict.fromkeys(bf16_fns, 0)
    failed: set[str] = set()
    pixels = 0
    for x in batches:
        expected = _decisions(np.asarray(eager_fn(x), dtype=np.float32))
        pixels += expected.size
        for name, fn in bf16_fns.items():
            try:
                got = _decisions(np.asarray(fn(x), dtype=np.float32))
            except Exception:  # a runtime that cannot run bf16 here is not safe
                failed.add(name)
                continue
            if got.shape != expected.shape:
                failed.add(name)
                continue
            same[name] += int(np.count_nonzero(got == expected))
    shares = [0.0 if n in failed else same[n] / max(pixels, 1) for n in bf16_fns]
    worst = min(shares) if shares else 0.0
    return Bf16Check(
        agreement=worst,
        min_agreement=agreement,
        safe=bool(same) and worst >= agreement,
        runtimes=sorted(bf16_fns),
        inputs=f"{len(batches)} dataset images" if images else "parity inputs",
    )


def describe_parity(parity: Parity) -> str:
    """One line for people: ``max |logit diff| 1.6e-5 (<= 1e-4), decisions agree on 100.00% ...``."""
    shapes = ", ".join(_shape_text(s) for s in parity.inputs)
    return (
        f"max |logit diff| {_sci(parity.max_abs_diff)} (<= {_sci(parity.tolerance, 0)}), decisions agree "
        f"on {parity.argmax_agreement:.2%} of pixels (>= {parity.min_agreement:.2%}) at {shapes}"
    )


def torch_runner(model: torch.nn.Module, *, bf16: bool = False) -> LogitsFn:
    """The eager side of the check: the network in float32 on its device, no autograd.

    With ``bf16`` it runs under ``torch.autocast(device, dtype=torch.bfloat16)`` instead.
    """
    import torch

    device = next(model.parameters()).device

    def run(batch: np.ndarray) -> np.ndarray:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
        ):
            out = model(torch.from_numpy(batch).to(device))
        result: np.ndarray = out.float().cpu().numpy()
        return result

    return run


def example_input(
    shapes: Sequence[tuple[int, int, int]], in_channels: int, seed: int = 0
) -> torch.Tensor:
    """The tensor exporters trace with: the first shape's size, batch 2.

    A batch of 1 would let ``torch.export`` specialise the batch axis to 1 (measured: the dynamo
    export of a Segformer then refused any other batch).
    """
    import torch

    if not shapes:
        raise ValueError("need at least one shape")
    _, height, width = shapes[0]
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, in_channels, height, width, generator=generator)


def publish(folder: Path, staged: Path, info: ExportInfo) -> ExportInfo:
    """Rename the verified ``staged`` file to ``info.file`` in the bundle and list it there.

    The rename (``os.replace``) is atomic, and so is the rewrite of ``bundle.yaml``; if the latter
    fails the new file is removed again, so the bundle never lists a file it lacks.
    """
    final = folder / info.file
    staged.replace(final)  # os.replace: atomic on one file system
    try:
        record_export(folder, info)
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    return info


#: One way to make the export: it writes the staged path, verifies it, and returns its entry.
Attempt = tuple[str, Callable[[Path], ExportInfo]]


def stage_verify_publish(
    folder: Path,
    file: str,
    attempts: Sequence[Attempt],
    *,
    failed: Callable[[list[str]], str],
    catch: type[SegflowError] = DataError,
    reraise_single: bool = False,
) -> tuple[ExportInfo, str, list[str]]:
    """The one export loop: try each attempt on a staged file, publish the first that passes.

    Staged files a killed export left in ``folder`` are swept first. An attempt that raises
    ``catch`` is recorded as ``"NAME: problem"`` and the next one is tried (with
    ``reraise_single`` a lone attempt's error propagates as it is); when none passes a DataError
    says ``failed(failures)``. The staged file never outlives the call.

    Returns:
        The published entry, the name of the attempt that made it, the earlier failures.
    """
    from segflow._tempfiles import sweep_stale, tag

    sweep_stale(folder, f".{file}.", ".tmp")  # left by a killed export
    staged = folder / f".{file}.{tag()}.tmp"
    failures: list[str] = []
    try:
        for name, attempt in attempts:
            try:
                info = attempt(staged)
            except catch as exc:
                if reraise_single and len(attempts) == 1:
                    raise
                problem = str(getattr(exc, "problem", exc)).removesuffix("; file not written")
                failures.append(f"{name}: {problem}")
                staged.unlink(missing_ok=True)
                continue
            return publish(folder, staged, info), name, failures
        raise DataError(folder, failed(failures))
    finally:
        staged.unlink(missing_ok=True)
