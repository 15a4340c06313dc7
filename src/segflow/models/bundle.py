"""The model bundle: a folder ``NAME.segflow/`` that reproduces predictions on its own.

Layout (see ARCHITECTURE.md)::

    NAME.segflow/
      bundle.yaml          # BundleMeta below: classes, network, normalisation, tiling, metrics...
      weights.safetensors  # the state dict; its sha256 is in bundle.yaml
      model.onnx, model.ts # optional exports (segflow.export), each listed under ``exports``

Nothing is ever unpickled: weights are safetensors only, metadata is YAML read with
``yaml.safe_load``. Saving is atomic: the new bundle is written into a temporary sibling folder and
renamed into place; an existing bundle is replaced only once the new one is complete.
An export adds its file next to the weights and its :class:`ExportInfo` to ``bundle.yaml``
(:func:`record_export`, atomic); saving a bundle again drops every export, since the new weights
no longer match them.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segflow._io import FlowList, atomic_write_text, dump_yaml, file_sha256, now_iso
from segflow._version import __version__
from segflow.classes import ClassInfo
from segflow.config import PreprocessConfig
from segflow.data.preprocess import Normalization
from segflow.errors import ConfigError, DataError, UsageError, validation_message
from segflow.models.factory import canonical_arch, create_model

if TYPE_CHECKING:
    import torch

BUNDLE_SUFFIX = ".segflow"
META_FILE = "bundle.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InferenceSettings(_Strict):
    """How the bundle predicts large images: tiling, blending, test-time augmentation."""

    tile_size: int = Field(ge=8, description="tile side in pixels")
    overlap: float = Field(
        0.25, ge=0, le=0.9, description="share of a tile overlapping its neighbour"
    )
    blend: Literal["gaussian", "constant"] = Field(
        "gaussian", description="weights of overlapping tiles"
    )
    tta: list[Literal["h", "v", "hv"]] = Field(
        default_factory=list, description="flips averaged in"
    )
    batch_size: int = Field(4, ge=1, description="tiles per forward pass")


class Parity(_Strict):
    """How closely an export reproduced eager PyTorch on seeded random inputs."""

    max_abs_diff: float = Field(ge=0, description="largest |logit difference| over every input")
    argmax_agreement: float = Field(
        ge=0, le=1, description="share of the tested pixels with the same class decision"
    )
    tolerance: float = Field(gt=0, description="the max_abs_diff the export had to stay within")
    min_agreement: float = Field(
        ge=0, le=1, description="the argmax_agreement the export had to reach"
    )
    inputs: list[list[int]] = Field(description="input shapes tested, N x C x H x W")


class Bf16Check(_Strict):
    """Whether bf16 inference keeps the masks: its agreement with fp32 eager on the parity inputs."""

    agreement: float = Field(
        ge=0, le=1, description="share of the parity pixels whose class decision bf16 keeps"
    )
    min_agreement: float = Field(ge=0, le=1, description="the agreement bf16 had to reach")
    safe: bool = Field(description="agreement >= min_agreement: backend auto may choose bf16")
    runtimes: list[str] = Field(description="the bf16 runs compared (the worst counts)")
    inputs: str = Field(
        "parity inputs", description="what was compared: the random parity inputs or N images"
    )


class ExportInfo(_Strict):
    """One exported model file inside the bundle, as ``bundle.yaml`` lists it under ``exports``."""

    file: str = Field(
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$",
        description="plain file name inside the bundle folder (no path separators)",
    )
    format: Literal["onnx", "torchscript"] = Field(description="the file's format")
    opset: int | None = Field(None, ge=1, description="ONNX opset (None for TorchScript)")
    exporter: str = Field(description="the tool that wrote the file, e.g. torch.jit.trace")
    torch_version: str = Field(description="torch version that exported")
    created_at: str = Field(default_factory=now_iso, description="UTC time of export, ISO 8601")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the file")
    dynamic_axes: list[str] = Field(description="input axes that may vary: batch, height, width")
    parity: Parity = Field(description="agreement with eager PyTorch, checked before writing")
    bf16: Bf16Check | None = Field(
        None, description="bf16 inference against fp32 eager (ONNX exports; None: not checked)"
    )

    @field_validator("file")
    @classmethod
    def _not_ours(cls, value: str) -> str:
        if value == META_FILE or value.endswith(".safetensors"):
            raise ValueError(f"{value!r} is reserved for the bundle's metadata and weights")
        return value


class BundleMeta(_Strict):
    """Everything ``bundle.yaml`` holds: what the network is and how to feed it."""

    segflow_version: str = Field(__version__, pattern=r"^\d+\.\d+", description="writer's version")
    name: str = Field(min_length=1, description="bundle name")
    created_at: str = Field(default_factory=now_iso, description="UTC time of saving, ISO 8601")
    task: Literal["binary", "multiclass"] = Field(description="binary: one sigmoid output channel")
    classes: list[ClassInfo] = Field(min_length=2, description="class ids 0..N-1, 0 = background")
    ignore_index: int = Field(255, ge=0, le=255, description="mask value of unlabelled pixels")
    arch: str = Field(description="SMP architecture")
    encoder: str = Field(description="SMP encoder name or tu-<timm name>")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="architecture arguments")
    in_channels: int = Field(ge=1, description="input image channels")
    out_channels: int = Field(ge=1, description="1 for binary, else the number of classes")
    preprocess: dict[str, Any] = Field(
        default_factory=lambda: PreprocessConfig().model_dump(mode="json"),
        description="the PreprocessConfig applied before normalisation",
    )
    normalization: Normalization
    input_dtype: str = Field(
        description="dtype of the images trained on (uint8, uint16, float32...)"
    )
    tile_size: int = Field(ge=8, description="training crop size")
    inference: InferenceSettings
    threshold: float = Field(0.5, ge=0, le=1, description="binary: foreground probability cut")
    postprocess: dict[str, Any] = Field(default_factory=dict, description="post-processing steps")
    weight_averaging: Literal["none", "ema", "swa"] = Field(
        "none",
        description="the weights ARE this average of the training run (ema, swa) or the raw "
        "weights (none); either way inference needs nothing else",
    )
    metrics: dict[str, float] = Field(default_factory=dict, description="metrics at save time")
    config: dict[str, Any] = Field(default_factory=dict, description="resolved training config")
    dataset: dict[str, Any] = Field(default_factory=dict, description="name, fingerprint hash")
    weights_file: str = Field(
        "weights.safetensors",
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]*\.safetensors$",
        description="weights file inside the bundle folder",
    )
    weights_sha256: str = Field("", pattern=r"^([0-9a-f]{64})?$", description="set by save_bundle")
    exports: dict[str, ExportInfo] = Field(
        default_factory=dict, description="exported model files by format (onnx, torchscript)"
    )
    tuning: dict[str, Any] = Field(
        default_factory=dict,
        description="how segflow tune chose threshold, TTA and post-processing on a validation "
        "split: the score before and after each step (empty: never tuned)",
    )

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        try:
            return canonical_arch(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("input_dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        try:
            return np.dtype(value).name
        except TypeError:
            raise ValueError(f"{value!r} is not a numpy dtype name") from None

    @field_validator("preprocess")
    @classmethod
    def _preprocess(cls, value: dict[str, Any]) -> dict[str, Any]:
        return PreprocessConfig.model_validate(value).model_dump(mode="json")

    @model_validator(mode="after")
    def _consistent(self) -> BundleMeta:
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))):
            raise ValueError(f"class ids must be 0..{len(ids) - 1} in order, got {ids}")
        expected = 1 if self.task == "binary" else len(self.classes)
        if self.task == "binary" and len(self.classes) != 2:
            raise ValueError(
                f"a binary bundle has 2 classes (background, foreground), got {len(ids)}"
            )
        if self.out_channels != expected:
            raise ValueError(
                f"out_channels is {self.out_channels}; a {self.task} task needs {expected}"
            )
        norm = self.normalization
        if len(norm.mean) != self.in_channels or len(norm.std) != self.in_channels:
            raise ValueError(
                f"normalization mean/std need {self.in_channels} values (in_channels), "
                f"got {len(norm.mean)} and {len(norm.std)}"
            )
        for key, info in self.exports.items():
            if key != info.format:
                raise ValueError(f"exports.{key} holds a {info.format} export")
        return self


@dataclass(frozen=True)
class LoadedBundle:
    """A bundle in memory: the network in eval mode, its metadata and where it came from."""

    model: torch.nn.Module
    meta: BundleMeta
    path: Path


def _dump_meta(meta: BundleMeta) -> str:
    data = meta.model_dump(mode="json")
    for c in data["classes"]:
        c["color"] = FlowList(c["color"])
    for key in ("mean", "std"):
        data["normalization"][key] = FlowList(data["normalization"][key])
    data["inference"]["tta"] = FlowList(data["inference"]["tta"])
    for info in data["exports"].values():
        info["dynamic_axes"] = FlowList(info["dynamic_axes"])
        info["parity"]["inputs"] = [FlowList(shape) for shape in info["parity"]["inputs"]]
    return "# segflow model bundle: load with segflow.models.bundle.load_bundle\n" + dump_yaml(data)


def _tensors_for_save(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict on the CPU, contiguous, each tensor owning its memory (safetensors' rule)."""
    import torch

    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in model.state_dict().items():
        tensor = value.detach().to("cpu")
        storage = tensor.untyped_storage()
        whole = storage.nbytes() == tensor.numel() * tensor.element_size()
        if storage.data_ptr() in seen or not whole or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        else:
            seen.add(storage.data_ptr())
        out[key] = tensor
    return out


def _check_model_matches(path: Path, model: torch.nn.Module, meta: BundleMeta) -> None:
    """Refuse to write a bundle whose metadata describes another network (SMP records its args)."""
    config = getattr(model, "_hub_mixin_config", None)
    if not isinstance(config, dict):
        return
    pairs = [
        ("arch", type(model).__name__, meta.arch),
        ("encoder", config.get("encoder_name"), meta.encoder),
        ("in_channels", config.get("in_channels"), meta.in_channels),
        ("out_channels", config.get("classes"), meta.out_channels),
    ]
    for field, actual, declared in pairs:
        if isinstance(actual, str) and isinstance(declared, str):
            actual, declared = actual.lower(), declared.lower()  # names are case-insensitive
        if actual is not None and actual != declared:
            raise UsageError(f"{path}: meta.{field} is {declared!r} but the model has {actual!r}")


def save_bundle(path: str | os.PathLike[str], model: torch.nn.Module, meta: BundleMeta) -> Path:
    """Write ``model`` and ``meta`` as the bundle folder ``path`` (must end with ``.segflow``).

    The folder is written next to ``path`` under a temporary name and renamed into place; an
    existing bundle is replaced only after the new one is complete. ``meta.weights_sha256`` is
    computed here; ``meta.exports`` is emptied (exports are made from a saved bundle).

    Returns:
        The bundle folder.
    """
    path = Path(path)
    if path.suffix != BUNDLE_SUFFIX or path.name == BUNDLE_SUFFIX:
        raise UsageError(
            f"{path}: a bundle folder name must end with {BUNDLE_SUFFIX} (NAME.segflow)"
        )
    if path.exists() and not (path.is_dir() and (path / META_FILE).is_file()):
        raise UsageError(f"{path}: exists and is not a segflow bundle; refusing to replace it")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise UsageError(f"{path}: parent folder {parent} does not exist")
    _check_model_matches(path, model, meta)
    from safetensors.torch import save_file

    tmp = parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        weights = tmp / meta.weights_file
        save_file(_tensors_for_save(model), weights, metadata={"format": "pt"})
        # Exports belong to the weights they were made from: a new save starts without any.
        data = {
            **meta.model_dump(mode="json"),
            "weights_sha256": file_sha256(weights),
            "exports": {},
        }
        try:
            final = BundleMeta.model_validate(data)
        except ValidationError as exc:
            raise UsageError(
                f"{path}: invalid bundle metadata: {validation_message(exc)}"
            ) from None
        (tmp / META_FILE).write_text(_dump_meta(final), encoding="utf-8")
        if path.exists():
            old = parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            path.rename(old)
            try:
                tmp.rename(path)
            except BaseException:
                old.rename(path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def _bundle_folder(path: str | os.PathLike[str]) -> Path:
    folder = Path(path)
    if folder.name == META_FILE and folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise DataError(
            folder, "no such bundle folder (expected NAME.segflow/ holding bundle.yaml)"
        )
    return folder


def read_bundle_meta(path: str | os.PathLike[str]) -> BundleMeta:
    """Read and validate ``bundle.yaml`` without touching the weights.

    An ensemble folder (``ensemble.yaml``, see :mod:`segflow.models.ensemble`) gives its
    effective metadata: the first member's network, the ensemble's inference settings.

    Raises:
        DataError: naming ``bundle.yaml``: missing, not YAML, a schema problem (with the field),
            or written by another major version of segflow.
    """
    folder = _bundle_folder(path)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        from segflow.models.ensemble import ENSEMBLE_FILE, ensemble_meta

        if (folder / ENSEMBLE_FILE).is_file():  # an ensemble: its effective metadata
            return ensemble_meta(folder)
        raise DataError(meta_path, "missing: is this a segflow bundle?")
    from segflow._textio import load_yaml, read_text

    raw = load_yaml(read_text(meta_path, "bundle.yaml"), meta_path)
    if not isinstance(raw, dict):
        raise DataError(meta_path, "expected a mapping (segflow_version, classes, arch, ...)")
    version = str(raw.get("segflow_version", ""))
    match = re.match(r"^(\d+)\.", version)
    ours = __version__.split(".")[0]
    if match is not None and match.group(1) != ours:
        raise DataError(
            meta_path,
            f"written by segflow {version}; this segflow {__version__} reads major version {ours} "
            "bundles: use a matching segflow",
        )
    try:
        return BundleMeta.model_validate(raw)
    except ValidationError as exc:
        raise DataError(meta_path, validation_message(exc)) from None


def read_bundle_weights(path: str | os.PathLike[str], meta: BundleMeta) -> dict[str, torch.Tensor]:
    """The bundle's state dict (CPU), after checking it against ``meta.weights_sha256``."""
    folder = _bundle_folder(path)
    weights = folder / meta.weights_file
    if not meta.weights_sha256:
        raise DataError(
            folder / META_FILE, "weights_sha256 is empty: save bundles with save_bundle"
        )
    if not weights.is_file():
        raise DataError(weights, "missing: the bundle is incomplete")
    if file_sha256(weights) != meta.weights_sha256:
        raise DataError(
            weights, f"{meta.weights_file} does not match bundle.yaml (corrupted or edited)"
        )
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(weights, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(
            weights, f"not a valid safetensors file ({str(exc).splitlines()[0]})"
        ) from None


def load_bundle(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> LoadedBundle:
    """Load a bundle: validated metadata, verified weights, the network in eval mode on ``device``.

    Raises:
        DataError: naming the broken file (bundle.yaml or the weights).
    """
    folder = _bundle_folder(path)
    if not (folder / META_FILE).is_file() and (folder / "ensemble.yaml").is_file():
        raise DataError(
            folder, "an ensemble of several networks: load its members (see ensemble.yaml)"
        )
    meta = read_bundle_meta(folder)
    state = read_bundle_weights(folder, meta)
    try:
        model = create_model(
            meta.arch,
            meta.encoder,
            in_channels=meta.in_channels,
            classes=meta.out_channels,
            encoder_weights=None,
            **meta.model_kwargs,
        )
    except ConfigError as exc:
        raise DataError(folder / META_FILE, f"cannot build the network: {exc}") from None
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError:
        own = model.state_dict()
        problems = [f"missing {k!r}" for k in own if k not in state]
        problems += [f"unexpected {k!r}" for k in state if k not in own]
        problems += [
            f"{k!r} has another shape" for k in state if k in own and own[k].shape != state[k].shape
        ]
        detail = problems[0] if problems else "see load_state_dict"
        raise DataError(
            folder / meta.weights_file, f"weights do not fit {meta.arch}/{meta.encoder} ({detail})"
        ) from None
    model.to(device).eval()
    return LoadedBundle(model=model, meta=meta, path=folder)


def record_export(path: str | os.PathLike[str], info: ExportInfo) -> BundleMeta:
    """List ``info`` under ``exports`` in the bundle's ``bundle.yaml`` (replacing that format's entry).

    ``bundle.yaml`` is rewritten through a temporary file and ``os.replace``; the weights are not
    touched. The export file must already be in the bundle with the recorded sha256.

    Returns:
        The updated metadata.
    """
    folder = _bundle_folder(path)
    meta = read_bundle_meta(folder)
    file = folder / info.file
    if not file.is_file() or file_sha256(file) != info.sha256:
        raise DataError(file, "missing or not the file just exported; export again")
    exports = {**meta.exports, info.format: info}
    updated = BundleMeta.model_validate({**meta.model_dump(), "exports": exports})
    atomic_write_text(folder / META_FILE, _dump_meta(updated))
    return updated


def write_updated_bundle(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], meta: BundleMeta
) -> Path:
    """Copy bundle ``src`` to ``dst`` with ``meta`` as its ``bundle.yaml``, atomically.

    The weights and export files are copied unchanged (``meta`` must keep their sha256s); the
    copy is written into a temporary sibling folder and renamed into place, so ``dst`` is either
    the old bundle or the complete new one. ``dst == src`` updates the bundle in place.
    """
    folder, target = _bundle_folder(src), Path(dst)
    if meta.weights_sha256 != read_bundle_meta(folder).weights_sha256:
        raise UsageError(f"{target}: the new bundle.yaml describes other weights")
    parent = target.absolute().parent
    tmp = parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(folder, tmp)
        atomic_write_text(tmp / META_FILE, _dump_meta(BundleMeta.model_validate(meta.model_dump())))
        if target.exists():
            old = parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            target.rename(old)
            try:
                tmp.rename(target)
            except BaseException:
                old.rename(target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def export_file(path: str | os.PathLike[str], meta: BundleMeta, format: str) -> Path:
    """The bundle's ``format`` export file, after checking it against ``bundle.yaml``'s sha256.

    Raises:
        DataError: no such export in ``bundle.yaml``, the file is missing, or it was changed.
    """
    folder = _bundle_folder(path)
    info = meta.exports.get(format)
    if info is None:
        raise DataError(
            folder / META_FILE,
            f"no {format} export listed; run `segflow export {folder} --format {format}` first",
        )
    file = folder / info.file
    if not file.is_file():
        raise DataError(file, "missing: export the bundle again")
    if file_sha256(file) != info.sha256:
        raise DataError(
            file, f"{info.file} does not match bundle.yaml (corrupted or edited): export again"
        )
    return file
