"""Training augmentation (albumentations 2), evaluation padding and mosaic.

Preprocessing (identical at training and inference) lives in :mod:`segflow.data.preprocess`
and is re-exported here.

Augmentation sees float32 images scaled by ``1 / Normalization.scale`` and *not yet*
mean/std normalised. :func:`apply_augment` additionally stretches each image to 0..1 on its
own min..max range and back: albumentations clips float images to 0..1 in many transforms
(brightness, blur, noise, JPEG...), and a 16-bit raster scaled by 1/65535 may span only
0.001..0.1, where a brightness shift of 0.1 would wipe it out. Photometric transforms therefore
act relative to each image's value range, and padding (fill 0) takes the image's minimum.

Presets (probabilities per crop):

=========  =====================================================================================
preset     transforms
=========  =====================================================================================
none       (crop only)
light      HorizontalFlip 0.5, RandomBrightnessContrast(0.1, 0.1) 0.5
medium     light + VerticalFlip 0.5, RandomRotate90 0.5, Affine(scale 0.85-1.15, rotate +-15,
           translate +-5%) 0.5, RandomGamma(80-120) 0.3, GaussianBlur(sigma 0.5-1.5) 0.1
heavy      medium + OneOf(ElasticTransform, GridDistortion, OpticalDistortion) 0.25,
           ImageCompression(q 60-100) 0.2 [1/3 channels], ColorJitter 0.3 [3 channels],
           GaussNoise(std 1-5% of the range) 0.2
=========  =====================================================================================

Orientation: a horizontal flip is label-safe for nearly all 2D data, so it is in every preset.
Vertical flips and 90-degree rotations assume there is no canonical "up": right for
microscopy, histology, aerial and satellite images, wrong for photos of pets, street scenes or
anatomy with a fixed orientation. They sit in ``medium`` (the default) because segflow's
primary users image rotation-invariant specimens; for gravity-oriented photos choose ``light``
and add e.g. ``{name: Affine, rotate: [-10, 10]}`` by name.

Geometric transforms fill the mask with ``ignore_index`` where they move pixels in from
outside, so invented borders never count as a class. Colour transforms that need 1 or 3
channels are wrapped in :class:`ChannelsOnly` and skipped (debug log) for other channel counts.
"""

from __future__ import annotations

import functools
import inspect
import logging
import random
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np

from segflow.config import AugmentConfig
from segflow.data.preprocess import (
    Geometry,
    Normalization,
    Preprocessor,
    anisotropic_diffusion,
    resolve_normalization,
)
from segflow.errors import ConfigError
from segflow.registry import did_you_mean

__all__ = [
    "ChannelsOnly",
    "Geometry",
    "Normalization",
    "Preprocessor",
    "anisotropic_diffusion",
    "apply_augment",
    "build_eval_pad",
    "build_train_augment",
    "mosaic",
    "named_transform",
    "resolve_normalization",
    "seed_augment",
    "stretch",
]

log = logging.getLogger("segflow.data")

#: Bytes of foreground-pixel indices a foreground crop keeps per process (cached masks only).
FOREGROUND_CACHE_BYTES = 256 * 2**20

#: Channel counts a colour transform works with (measured on albumentations 2.0.8: the others
#: raise or warn); used to skip them on other inputs.
CHANNEL_NEEDS: dict[str, tuple[int, ...]] = {
    **dict.fromkeys(("CLAHE", "ColorJitter", "Equalize", "ImageCompression", "RGBShift"), (1, 3)),
    **dict.fromkeys(("ToSepia",), (1, 3)),
    **dict.fromkeys(
        (
            "HueSaturationValue",
            "ChromaticAberration",
            "HEStain",
            "ISONoise",
            "PlanckianJitter",
            "RandomFog",
            "RandomGravel",
            "RandomRain",
            "RandomSnow",
            "RandomSunFlare",
            "Spatter",
            "ToGray",
        ),
        (3,),
    ),
}
#: Transforms that cannot work inside segflow's pipeline, and why.
REFUSED: dict[str, str] = {
    "Normalize": "segflow normalises after augmentation (data.preprocess.normalize)",
    "ToTensorV2": "segflow converts samples to tensors itself",
    "FromFloat": "augmentation works on float32 images",
    "ToFloat": "images are already float32",
    "Lambda": "arbitrary functions cannot come from a config file",
    "Mosaic": "use augment.mosaic",
    "OverlayElements": "it needs per-sample metadata",
    "TextImage": "it needs per-sample metadata",
    "FDA": "it needs reference images",
    "HistogramMatching": "it needs reference images",
    "PixelDistributionAdaptation": "it needs reference images",
}
#: Transforms users of this field ask for most (shown when a name is unknown).
COMMON_TRANSFORMS = (
    "CLAHE",
    "RandomBrightnessContrast",
    "RandomGamma",
    "Affine",
    "ShiftScaleRotate",
    "HorizontalFlip",
    "VerticalFlip",
    "RandomRotate90",
    "Rotate",
    "OpticalDistortion",
    "GridDistortion",
    "ElasticTransform",
    "GaussianBlur",
    "ImageCompression",
    "ColorJitter",
    "HueSaturationValue",
    "GaussNoise",
)


class ChannelsOnly(A.Sequential):  # type: ignore[misc]
    """Applies ``transform`` only to images with one of ``channels`` channels, else passes.

    Args:
        transform: the wrapped transform.
        channels: channel counts it supports.
    """

    def __init__(self, transform: A.BasicTransform, channels: Sequence[int]) -> None:
        super().__init__([transform], p=1.0)
        self.channels = tuple(channels)
        self._logged: set[int] = set()

    def __call__(self, *args: Any, force_apply: bool = False, **data: Any) -> dict[str, Any]:
        """Apply the wrapped transform if the image's channel count is supported."""
        image = data["image"]
        count = image.shape[2] if image.ndim == 3 else 1
        if count not in self.channels:
            if count not in self._logged:
                self._logged.add(count)
                name = type(self.transforms[0]).__name__
                log.debug(
                    "skipping %s: %d-channel images (it needs %s)", name, count, self.channels
                )
            return data
        result: dict[str, Any] = self.transforms[0](force_apply=force_apply, **data)
        return result


class _PadIfNeeded(A.PadIfNeeded):  # type: ignore[misc]
    """PadIfNeeded that passes an image needing no padding through (albumentations copies it).

    The crop that follows copies its tile, so the (cached, read-only) image is never modified.
    """

    def apply(self, img: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        """The image itself when every pad is zero, else padded."""
        if _no_padding(params):
            return img
        out: np.ndarray = super().apply(img, *args, **params)
        return out

    def apply_to_mask(self, mask: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        """The mask itself when every pad is zero, else padded."""
        if _no_padding(params):
            return mask
        out: np.ndarray = super().apply_to_mask(mask, *args, **params)
        return out


def _no_padding(params: dict[str, Any]) -> bool:
    sides = ("pad_top", "pad_bottom", "pad_left", "pad_right")
    return all(side in params and params[side] == 0 for side in sides)


class _RandomCrop(A.RandomCrop):  # type: ignore[misc]
    """RandomCrop returning a copy: later transforms never see a view of a cached image."""

    def apply(self, img: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        """The crop, copied."""
        return np.array(super().apply(img, *args, **params))


class _ForegroundCrop(A.CropNonEmptyMaskIfExists):  # type: ignore[misc]
    """CropNonEmptyMaskIfExists that finds a read-only (cached) mask's foreground once.

    albumentations scans the whole mask (``isin`` + ``argwhere``) for every crop: ~10 ms for a
    1-Mpx mask. A read-only mask (:class:`~segflow.data.pipeline.TrainDataset` caches its masks
    read-only) cannot change, so the flat indices of its foreground pixels are kept, bounded by
    :data:`FOREGROUND_CACHE_BYTES`; the random draws are albumentations' own, in the same order,
    so the crops are the same. Other masks take albumentations' path. Crops are copies.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._found: OrderedDict[int, tuple[Any, np.ndarray]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to loader workers) without the weakly referenced cache."""
        state = dict(self.__dict__)
        state["_found"] = OrderedDict()
        return state

    def apply(self, img: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        """The crop, copied."""
        return np.array(super().apply(img, *args, **params))

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        """Crop coordinates around a random foreground pixel (random when there is none)."""
        mask = data.get("mask")
        if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.flags.writeable:
            found: dict[str, Any] = super().get_params_dependent_on_data(params, data)
            return found
        h, w = mask.shape
        if self.height > h or self.width > w:
            raise ValueError(
                f"Crop size ({self.height},{self.width}) is larger than image ({h},{w})"
            )
        flat = self._foreground(mask)
        if flat.size:
            y, x = divmod(int(self.py_random.choice(flat)), w)
            x_min = int(np.clip(x - self.py_random.randint(0, self.width - 1), 0, w - self.width))
            y_min = int(np.clip(y - self.py_random.randint(0, self.height - 1), 0, h - self.height))
        else:
            x_min = self.py_random.randint(0, w - self.width)
            y_min = self.py_random.randint(0, h - self.height)
        return {"crop_coords": (x_min, y_min, x_min + self.width, y_min + self.height)}

    def _foreground(self, mask: np.ndarray) -> np.ndarray:
        key = id(mask)
        hit = self._found.get(key)
        if hit is not None and hit[0]() is mask:
            self._found.move_to_end(key)
            return hit[1]
        keep = mask if self.ignore_values is None else ~np.isin(mask, self.ignore_values)
        flat = np.flatnonzero(keep & (mask != 0))
        flat = flat.astype(np.int32) if mask.size < 2**31 else flat
        self._found[key] = (weakref.ref(mask), flat)
        total = sum(v[1].nbytes for v in self._found.values())
        while total > FOREGROUND_CACHE_BYTES and len(self._found) > 1:
            total -= self._found.popitem(last=False)[1][1].nbytes
        return flat


def _guard(transform: A.BasicTransform) -> A.BasicTransform | ChannelsOnly:
    needs = CHANNEL_NEEDS.get(type(transform).__name__)
    return transform if needs is None else ChannelsOnly(transform, needs)


def _preset(name: str, ignore_index: int) -> list[Any]:
    border = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": ignore_index}
    light = [
        A.HorizontalFlip(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
    ]
    medium = [
        *light,
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.Affine(
            scale=(0.85, 1.15), rotate=(-15, 15), translate_percent=(-0.05, 0.05), p=0.5, **border
        ),
        A.RandomGamma(gamma_limit=(80, 120), p=0.3),
        A.GaussianBlur(sigma_limit=(0.5, 1.5), p=0.1),
    ]
    heavy = [
        *medium,
        A.OneOf(
            [
                A.ElasticTransform(alpha=300, sigma=10, **border),
                A.GridDistortion(num_steps=5, distort_limit=0.2, **border),
                A.OpticalDistortion(distort_limit=0.2, **border),
            ],
            p=0.25,
        ),
        _guard(A.ImageCompression(quality_range=(60, 100), p=0.2)),
        ChannelsOnly(A.ColorJitter(0.2, 0.2, 0.2, 0.05, p=0.3), (3,)),
        A.GaussNoise(std_range=(0.01, 0.05), p=0.2),
    ]
    presets: dict[str, list[Any]] = {"none": [], "light": light, "medium": medium, "heavy": heavy}
    return presets[name]


def build_train_augment(
    aug: AugmentConfig, *, tile_size: int, foreground_crops: float, ignore_index: int = 255
) -> A.Compose:
    """The training pipeline: pad, crop (with foreground oversampling), preset, extra transforms.

    A share ``foreground_crops`` of crops comes from ``CropNonEmptyMaskIfExists``: it picks a
    labelled foreground pixel uniformly (class 0 and ``ignore_index`` excluded) and places the
    crop so that the pixel lies at a uniformly random position *inside* it (not at its centre).
    The rest are uniform random crops. Images without foreground get a random crop either way.

    Args:
        aug: the AugmentConfig (preset, transforms).
        tile_size: crop side in pixels; smaller images are padded at a random position (image
            0, which :func:`apply_augment` turns into the image's minimum; mask ``ignore_index``).
        foreground_crops: share of crops that contain foreground (0..1).
        ignore_index: mask value of unlabelled pixels.

    Returns:
        An albumentations Compose taking ``image`` (float32 0..1) and ``mask`` (uint8).
    """
    if not 0.0 <= foreground_crops <= 1.0:
        raise ConfigError(f"foreground_crops must be in 0..1, got {foreground_crops}")
    crop = A.OneOf(
        [
            _ForegroundCrop(
                tile_size, tile_size, ignore_values=[0, ignore_index], p=foreground_crops
            ),
            _RandomCrop(tile_size, tile_size, p=1.0 - foreground_crops),
        ],
        p=1.0,
    )
    pad = _PadIfNeeded(
        tile_size,
        tile_size,
        position="random",
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        fill_mask=ignore_index,
    )
    extra = [named_transform(spec, ignore_index=ignore_index) for spec in aug.transforms]
    return A.Compose([pad, crop, *_preset(aug.preset, ignore_index), *extra])


@functools.cache
def _transform_classes() -> dict[str, type]:
    """Public albumentations classes that are transforms, by name."""
    return {
        name: obj
        for name in dir(A)
        if not name.startswith("_")
        and isinstance(obj := getattr(A, name), type)
        and issubclass(obj, A.BasicTransform)
        and obj not in (A.BasicTransform, A.DualTransform, A.ImageOnlyTransform)
        and not name.endswith("3D")
        and "BBox" not in name
    }


def named_transform(spec: dict[str, Any], *, ignore_index: int = 255) -> Any:
    """Build one albumentations transform from ``{"name": ..., **parameters}``.

    Only albumentations transform classes can be named. Geometric transforms fill new mask
    borders with ``ignore_index`` unless ``fill_mask`` is given; colour transforms that need
    1 or 3 channels are wrapped in :class:`ChannelsOnly`. Warnings albumentations raises while
    building (e.g. "ShiftScaleRotate is a special case of Affine") are logged, not raised.

    Args:
        spec: e.g. ``{"name": "CLAHE", "p": 0.3, "clip_limit": 2.0}``.
        ignore_index: mask value of unlabelled pixels.

    Returns:
        The transform (possibly wrapped in ChannelsOnly).

    Raises:
        ConfigError: unknown name (with a suggestion), unknown or invalid parameters.
    """
    params = dict(spec)
    name = params.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError(f"augment.transforms: {spec!r} needs a 'name'")
    classes = _transform_classes()
    if name in REFUSED:
        raise ConfigError(f"transform {name!r} cannot be used here: {REFUSED[name]}")
    if name not in classes:
        hint = did_you_mean(name, classes)
        raise ConfigError(
            f"unknown transform {name!r}{hint}; use an albumentations transform class name, "
            f"e.g. {', '.join(COMMON_TRANSFORMS[:8])}"
        )
    cls = classes[name]
    accepted = list(inspect.signature(cls).parameters)
    for key in params:
        if key not in accepted:
            hint = did_you_mean(key, accepted)
            raise ConfigError(
                f"transform {name} has no parameter {key!r}{hint}; parameters: "
                f"{', '.join(a for a in accepted if a not in ('args', 'kwargs'))}"
            )
    if "fill_mask" in accepted and "fill_mask" not in params:
        params["fill_mask"] = ignore_index
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            transform = cls(**params)
    except (ValueError, TypeError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "errors.pydantic.dev" not in ln]
        raise ConfigError(f"transform {name}: {'; '.join(ln for ln in lines if ln)}") from None
    for w in caught:
        log.warning("albumentations, building %s: %s", name, w.message)
    return _guard(transform)


def build_eval_pad(divisor: int = 32, ignore_index: int = 255) -> A.Compose:
    """Pad bottom/right to a multiple of ``divisor`` (image 0, mask ``ignore_index``).

    The image stays at the top-left, so the pad amounts are ``(ceil(h / d) * d - h, ...)`` and
    predictions are un-padded by slicing ``[:h, :w]``.
    """
    return A.Compose(
        [
            A.PadIfNeeded(
                min_height=None,
                min_width=None,
                pad_height_divisor=divisor,
                pad_width_divisor=divisor,
                position="top_left",
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=ignore_index,
            )
        ]
    )


def seed_augment(augment: A.BaseCompose, rng: np.random.Generator) -> None:
    """Make ``augment`` draw from one numpy and one Python stream derived from ``rng``.

    ``A.Compose(seed=s)`` gives every child transform its *own* generator seeded with the same
    ``s``, so in albumentations 2.0.8 two transforms with equal ``p`` (HorizontalFlip and
    VerticalFlip) always fire together. Sharing one stream keeps runs reproducible without
    that correlation.
    """
    state = rng.integers(0, 2**63, size=2)
    augment.set_random_state(np.random.default_rng(int(state[0])), random.Random(int(state[1])))


def stretch(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``image`` mapped to 0..1 on its own min..max, with ``(lo, span)`` to map it back."""
    lo = float(image.min())
    span = float(image.max()) - lo
    span = span if span > 0 else 1.0
    return (image - np.float32(lo)) * np.float32(1.0 / span), lo, span


def apply_augment(
    augment: A.BaseCompose,
    image: np.ndarray,
    mask: np.ndarray,
    value_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``augment`` on a scaled float32 image with the 0..1 stretch described above.

    Args:
        augment: the albumentations pipeline.
        image: scaled float32 ``H x W x C``; already stretched when ``value_range`` is given.
        mask: uint8 ``H x W``.
        value_range: ``(lo, span)`` from :func:`stretch` when the caller stretched (and cached)
            the image itself.

    Returns:
        The augmented image (back on the scaled range) and mask.
    """
    if value_range is None:
        image, lo, span = stretch(image)
    else:
        lo, span = value_range
    out = augment(image=image, mask=mask)
    return (out["image"] * np.float32(span) + np.float32(lo)).astype(np.float32), out["mask"]


def mosaic(
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
    tile_size: int,
    rng: np.random.Generator,
    *,
    ignore_index: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """Four ``(image H x W x C, mask H x W)`` parts -> one ``tile_size`` tile (YOLO-style mosaic).

    A centre is drawn uniformly in the middle half of the tile; the four quadrants around it
    (top-left, top-right, bottom-left, bottom-right) are each cut, at a random position and
    without resizing (object scale is kept), from one part. Parts smaller than their quadrant are
    padded (image 0, mask ``ignore_index``).
    """
    if len(parts) != 4:
        raise ValueError(f"mosaic needs 4 parts, got {len(parts)}")
    channels = {p[0].shape[2] for p in parts}
    if len(channels) != 1:
        raise ValueError(f"mosaic parts have different channel counts {sorted(channels)}")
    cy, cx = (int(v) for v in rng.integers(tile_size // 4, 3 * tile_size // 4 + 1, size=2))
    image = np.zeros((tile_size, tile_size, channels.pop()), dtype=np.float32)
    mask = np.full((tile_size, tile_size), ignore_index, dtype=np.uint8)
    boxes = [(0, cy, 0, cx), (0, cy, cx, tile_size), (cy, tile_size, 0, cx)]
    boxes.append((cy, tile_size, cx, tile_size))
    for (img, msk), (y0, y1, x0, x1) in zip(parts, boxes, strict=True):
        h, w = y1 - y0, x1 - x0
        ph, pw = max(h - img.shape[0], 0), max(w - img.shape[1], 0)
        if ph or pw:
            img = np.pad(img, ((0, ph), (0, pw), (0, 0)))
            msk = np.pad(msk, ((0, ph), (0, pw)), constant_values=ignore_index)
        oy = int(rng.integers(0, img.shape[0] - h + 1))
        ox = int(rng.integers(0, img.shape[1] - w + 1))
        image[y0:y1, x0:x1] = img[oy : oy + h, ox : ox + w]
        mask[y0:y1, x0:x1] = msk[oy : oy + h, ox : ox + w]
    return image, mask
