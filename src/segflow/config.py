"""The training configuration: one pydantic model, the one source of defaults and their meaning.

Precedence is explicit: defaults < YAML file < ``--set a.b=c`` overrides (applied in order, the
rightmost wins). Values given with ``--set`` are parsed as YAML scalars/lists (``yaml.safe_load``;
nothing is ever evaluated). Unknown keys are errors that suggest the closest valid key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segflow.errors import ConfigError
from segflow.registry import did_you_mean

LOSS_NAMES = ("ce", "bce", "dice", "focal", "lovasz", "tversky", "jaccard", "cldice")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PreprocessConfig(_Section):
    """Deterministic steps applied identically at training and inference (stored in the bundle)."""

    roi: list[int] | Literal["auto"] | None = Field(
        None,
        description="crop to a region first: [x0, y0, x1, y1] in pixels, 'auto' (bounding box of "
        "non-dark pixels, e.g. a retina's field of view) or null",
    )
    roi_threshold: float = Field(
        10.0, description="'auto' ROI: pixels brighter than this (0-255 scale) belong to the region"
    )
    resize: list[int] | None = Field(
        None, description="resize to [height, width] after the ROI crop (null keeps the size)"
    )
    clahe: bool = Field(False, description="contrast-limited adaptive histogram equalisation")
    clahe_clip: float = Field(2.0, gt=0, description="CLAHE clip limit")
    clahe_grid: int = Field(8, ge=1, description="CLAHE tile grid size (grid x grid)")
    diffusion_iterations: int = Field(
        0, ge=0, description="anisotropic (Perona-Malik) diffusion iterations; 0 = off"
    )
    diffusion_kappa: float = Field(30.0, gt=0, description="diffusion edge threshold (0-255 scale)")
    diffusion_gamma: float = Field(0.1, gt=0, le=0.25, description="diffusion step size (<= 0.25)")
    normalize: Literal["auto", "dataset", "imagenet", "image", "none"] = Field(
        "auto",
        description="per-channel normalisation: 'dataset' mean/std from the training images, "
        "'imagenet' statistics, 'image' (each image by its own mean/std), 'none', or 'auto' "
        "(imagenet for 8-bit RGB with pretrained weights, else dataset)",
    )

    @field_validator("roi")
    @classmethod
    def _check_roi(cls, value: Any) -> Any:
        if isinstance(value, list) and (
            len(value) != 4 or value[2] <= value[0] or value[3] <= value[1]
        ):
            raise ValueError("roi must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0")
        return value

    @field_validator("resize")
    @classmethod
    def _check_resize(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(value) != 2 or min(value) < 8):
            raise ValueError("resize must be [height, width], each >= 8")
        return value


class DataConfig(_Section):
    """Which data, and how it is fed."""

    dataset: Path | None = Field(None, description="canonical dataset folder (or --data DATASET)")
    tile_size: int = Field(
        512, ge=32, description="training crop size in pixels; large images are never resized down"
    )
    foreground_crops: float = Field(
        0.33, ge=0, le=1, description="share of training crops that contain a foreground pixel"
    )
    batch_size: int = Field(8, ge=1, description="training batch size")
    val_batch_size: int = Field(1, ge=1, description="validation batch size (whole images)")
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="data loader processes ('auto': CPUs - 1, at most 8)"
    )
    crops_per_image: int = Field(
        1, ge=1, description="training crops drawn from each image per epoch (large images: more)"
    )
    fold: int | None = Field(
        None, ge=0, description="k-fold: validate on this fold of splits.csv, train on the others"
    )
    cache_mb: int = Field(
        1024,
        ge=0,
        description="keep preprocessed images in memory up to this size per process (0: off)",
    )
    val_tile_threshold: int = Field(
        1536, ge=64, description="validation images with a side above this are predicted in tiles"
    )
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)


class ModelConfig(_Section):
    """The network: an architecture and an encoder from segmentation_models_pytorch."""

    arch: str = Field(
        "Unet", description="SMP architecture (Unet, FPN, DeepLabV3Plus, Segformer...)"
    )
    encoder: str = Field("resnet34", description="SMP encoder name, or 'tu-<timm name>'")
    encoder_weights: str | None = Field(
        "imagenet",
        description="'imagenet' (downloaded once, cached), a local .safetensors/.pth file, or null",
    )
    init_from: Path | None = Field(
        None,
        description="start from an earlier bundle (PATH.segflow); a new class count resets the head",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="extra arguments for the architecture (decoder channels...)",
    )


class LossConfig(_Section):
    """A weighted sum of losses, e.g. ``{ce: 0.7, dice: 0.3}``."""

    terms: dict[str, float] = Field(
        default_factory=lambda: {"ce": 0.5, "dice": 0.5},
        description=f"loss name -> weight; names: {', '.join(LOSS_NAMES)} (ce/bce follow the task)",
    )
    class_weights: Literal["auto"] | list[float] | None = Field(
        None,
        description="'auto' (inverse class frequency, mean 1), a list (one per class), or null",
    )
    focal_gamma: float = Field(2.0, ge=0, description="focal loss focusing parameter")
    tversky_alpha: float = Field(0.3, ge=0, le=1, description="Tversky weight of false positives")
    tversky_beta: float = Field(0.7, ge=0, le=1, description="Tversky weight of false negatives")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    cldice_iterations: int = Field(
        5,
        ge=1,
        le=50,
        description="clDice soft-skeleton iterations (at least the largest structure radius, px)",
    )

    @model_validator(mode="before")
    @classmethod
    def _flat_terms(cls, data: Any) -> Any:
        # ``loss: {ce: 0.7, dice: 0.3, class_weights: auto}``: loss names at the top level are terms.
        if isinstance(data, Mapping):
            data = dict(data)
            flat = {k: data.pop(k) for k in list(data) if k in LOSS_NAMES}
            if flat:
                terms = dict(data.get("terms") or {}) if "terms" in data else {}
                terms.update(flat)
                data["terms"] = terms
        return data

    @field_validator("terms")
    @classmethod
    def _check_terms(cls, value: dict[str, float]) -> dict[str, float]:
        for name, weight in value.items():
            if name not in LOSS_NAMES:
                hint = did_you_mean(name, LOSS_NAMES)
                raise ValueError(f"unknown loss {name!r}{hint}; valid: {', '.join(LOSS_NAMES)}")
            if weight < 0:
                raise ValueError(f"loss weight for {name} must be >= 0")
        if not value or sum(value.values()) <= 0:
            raise ValueError("at least one loss needs a positive weight")
        return value


class OptimizerConfig(_Section):
    """The optimiser."""

    name: Literal["adam", "adamw", "sgd"] = Field("adamw", description="adam, adamw or sgd")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="weight decay")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (Nesterov)")


class ScheduleConfig(_Section):
    """The learning-rate schedule (stepped every batch, except plateau: every epoch)."""

    name: Literal["cosine", "poly", "plateau", "onecycle", "constant"] = Field(
        "cosine", description="cosine, poly, plateau, onecycle or constant"
    )
    warmup_epochs: float = Field(
        0.0,
        ge=0,
        description="linear warm-up from lr/100 over this many epochs (not with onecycle or plateau)",
    )
    min_lr: float = Field(1e-6, ge=0, description="floor of cosine / poly / plateau")
    poly_power: float = Field(0.9, gt=0, description="poly schedule exponent")
    plateau_patience: int = Field(
        5, ge=1, description="plateau: epochs without improvement before a cut"
    )
    plateau_factor: float = Field(0.5, gt=0, lt=1, description="plateau: lr multiplier at each cut")


class AugmentConfig(_Section):
    """Training-time augmentation (albumentations)."""

    preset: Literal["none", "light", "medium", "heavy"] = Field(
        "medium", description="none, light, medium or heavy"
    )
    transforms: list[dict[str, Any]] = Field(
        default_factory=list,
        description="extra albumentations transforms by name, e.g. [{name: CLAHE, p: 0.3}]",
    )
    mosaic: float = Field(0.0, ge=0, le=1, description="probability of a 4-image mosaic per crop")

    @field_validator("transforms")
    @classmethod
    def _check_transforms(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for item in value:
            if not isinstance(item.get("name"), str):
                raise ValueError(f"transform {item!r} needs a 'name'")
        return value


class TrainConfig(_Section):
    """The training loop (Lightning Trainer)."""

    name: str | None = Field(None, description="run name (default: dataset-arch-encoder-time)")
    output: Path = Field(Path("runs"), description="folder holding the runs")
    epochs: int = Field(50, ge=1, description="maximum epochs")
    max_steps: int = Field(
        -1, ge=-1, description="stop after this many optimizer steps (-1: no limit)"
    )
    max_minutes: float | None = Field(
        None,
        gt=0,
        description="stop training after this many wall-clock minutes (null: no limit; "
        "segflow plan sets it from the time budget)",
    )
    seed: int = Field(
        0, ge=0, le=2**32 - 1, description="random seed (data order, crops, augmentation, init)"
    )
    monitor: str = Field("val/mIoU", description="metric choosing the best model")
    monitor_mode: Literal["max", "min"] = Field(
        "max", description="whether the monitored metric should go up"
    )
    early_stopping: int = Field(
        0, ge=0, description="stop after this many epochs without improvement (0: off)"
    )
    accelerator: Literal["auto", "cpu", "gpu", "mps"] = Field("auto", description="device type")
    devices: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="number of devices"
    )
    num_nodes: int = Field(1, ge=1, description="machines for multi-node training")
    strategy: Literal["auto", "ddp", "ddp_spawn"] = Field(
        "auto", description="distribution strategy"
    )
    precision: Literal["auto", "32", "16-mixed", "bf16-mixed"] = Field(
        "auto",
        description="'auto': bf16/16-mixed on a GPU, 32 on a CPU (segflow plan writes bf16-mixed "
        "where it measured bf16 clearly faster on this CPU)",
    )
    channels_last: bool = Field(
        False,
        description="channels-last memory format on GPU (measured slower for Unet-resnet34 on H100)",
    )
    grad_accumulation: int = Field(1, ge=1, description="batches per optimizer step")
    grad_clip: float = Field(0.0, ge=0, description="gradient norm clip (0: off)")
    checkpoint_minutes: float = Field(
        2.0, gt=0, description="save a resumable checkpoint this often (wall-clock minutes)"
    )
    checkpoint_every_steps: int = Field(
        0, ge=0, description="also save one every N optimizer steps (0: off)"
    )
    val_every: int = Field(1, ge=1, description="validate every N epochs")
    log_every_steps: int = Field(
        50,
        ge=1,
        description="send the step loss to the loggers every N steps (each costs a GPU sync)",
    )
    limit_train_batches: float | int = Field(
        1.0, description="share (float) or number (int) of batches per epoch"
    )
    limit_val_batches: float | int = Field(
        1.0, description="share (float) or number (int) of validation batches"
    )
    weight_averaging: Literal["none", "ema", "swa"] = Field(
        "none",
        description="validate and save an average of the weights: 'ema' (exponential moving "
        "average every step), 'swa' (equal average over the last part of the run) or 'none'",
    )
    ema_decay: float = Field(
        0.999,
        gt=0,
        lt=1,
        description="EMA decay per step (warmed up as min(decay, (1+n)/(10+n)) over the first n "
        "updates, so short runs are not dominated by the initial weights)",
    )
    swa_start: float = Field(
        0.75,
        ge=0,
        lt=1,
        description="SWA: share of the run (steps or, with max_minutes, time) before averaging starts",
    )
    tune: bool = Field(
        True,
        description="after training, choose the bundle's threshold, flip TTA and post-processing "
        "on the validation split (segflow tune --in-place; each step kept only when it raises "
        "the monitor by > 0.002); the planner leaves time for it. A failed tune only warns",
    )
    deep_supervision: int = Field(
        0,
        ge=0,
        le=4,
        description="Unet: auxiliary 1x1 heads on this many decoder stages before the last, "
        "trained with halving loss weights (training only; the bundle has no extra heads)",
    )

    @field_validator("limit_train_batches", "limit_val_batches")
    @classmethod
    def _check_limit(cls, value: float | int) -> float | int:
        # 0 batches trains (or validates) nothing: the "best" bundle would be an untrained network.
        if isinstance(value, float) and not 0 < value <= 1:
            raise ValueError("a share of batches must be in (0, 1]; use an int for a count")
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1 batch (or a share in (0, 1])")
        return value

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_number(cls, value: Any) -> Any:
        """``precision: 32`` in YAML (or ``--set train.precision=32``) is the number 32."""
        return "32" if value == 32 and not isinstance(value, bool) else value


class TrackingConfig(_Section):
    """Experiment tracking with MLflow."""

    enabled: bool = Field(True, description="log to MLflow")
    uri: str | None = Field(
        None,
        description="tracking URI (http://host:port...); null: sqlite store in the output folder",
    )
    experiment: str = Field("segflow", description="MLflow experiment name")
    images_every: int = Field(5, ge=1, description="log prediction overlays every N epochs")
    num_images: int = Field(4, ge=0, description="validation images in each overlay sheet")


class SegflowConfig(_Section):
    """Everything ``segflow train`` needs."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


# ------------------------------------------------------------------------------------------------
# Loading, overriding, explaining


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (["a", "b"], parsed value). Values are YAML scalars or lists, never code."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optimizer.lr=0.001")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_path(data: dict[str, Any], path: Sequence[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {} if child is None else child
            if not isinstance(child, dict):
                raise ConfigError(f"--set {'.'.join(path)}: {part!r} is a value, not a section")
            node[part] = child
        node = child
    node[path[-1]] = value


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = [f"{prefix}{name}" for name in LOSS_NAMES] if model is LossConfig else []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _known_keys(ann, dotted + ".")
    return keys


def _loc(parts: Sequence[Any]) -> str:
    """``data.num_workers`` from pydantic's location, without union-member tags."""
    loc = ".".join(str(p) for p in parts if re.fullmatch(r"\w+", str(p)))
    return re.sub(r"\.(int|float|str|bool)$", "", loc)


def _explain(exc: ValidationError, source: str) -> ConfigError:
    errors = exc.errors()
    # A union (``int | "auto"``) reports one error per member: the non-literal one says more.
    first = next((e for e in errors if e["type"] != "literal_error"), errors[0])
    loc = _loc(first["loc"])
    if first["type"] == "extra_forbidden":
        hint = did_you_mean(loc, _known_keys(SegflowConfig))
        return ConfigError(
            f"{source}: unknown key {loc!r}{hint}; see `segflow config show --defaults`"
        )
    others = len({_loc(e["loc"]) for e in errors}) - 1
    more = f" (and {others} more)" if others else ""
    return ConfigError(f"{source}: {loc}: {first['msg']}{more}")


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()
) -> SegflowConfig:
    """Defaults < YAML file < ``KEY=VALUE`` overrides, validated."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        from segflow._textio import load_yaml, read_text
        from segflow.errors import DataError

        try:
            raw = load_yaml(read_text(p, "config file"), p) or {}
        except DataError as exc:
            raise ConfigError(str(exc)) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: expected a mapping of sections (data, model, loss...)")
        data = raw
    for item in overrides:
        keys, value = parse_override(item)
        _set_path(data, keys, value)
        source = f"{source} + --set" if "--set" not in source else source
    try:
        return SegflowConfig.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, source) from None


def config_to_dict(config: SegflowConfig) -> dict[str, Any]:
    """The config as plain YAML-able data."""
    return config.model_dump(mode="json")


def describe(config: SegflowConfig) -> Iterator[tuple[str, Any, str]]:
    """Every leaf key as ``(dotted key, value, meaning)``, in definition order."""

    def walk(model: BaseModel, prefix: str) -> Iterator[tuple[str, Any, str]]:
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                yield from walk(value, f"{prefix}{name}.")
            else:
                plain = value.as_posix() if isinstance(value, Path) else value
                yield f"{prefix}{name}", plain, field.description or ""

    yield from walk(config, "")
