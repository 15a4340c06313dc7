"""Deterministic preprocessing, identical at training and inference (its settings live in the bundle).

:class:`Preprocessor` turns a raw ``H x W x C`` image of any dtype into a float32 image scaled by
``1 / Normalization.scale`` (not yet mean/std normalised, so augmentation sees plain intensities):

1. channel conversion to the model's input channels (1 -> k repeats, RGB -> 1 is luminance);
2. ROI crop: a fixed box, or ``"auto"`` = bounding box of pixels brighter than a threshold;
3. resize (INTER_AREA when shrinking, INTER_LINEAR when enlarging);
4. CLAHE (per channel; on the L channel of LAB for RGB);
5. anisotropic (Perona-Malik) diffusion;
6. scaling to float32 by ``1 / scale``;
7. with ``normalize: image`` only: each channel standardised by the image's own mean/std (the
   :class:`Normalization` is then the identity).

:meth:`Preprocessor.restore` undoes the geometry of steps 2-3 on predicted probabilities.

"0-255 scale" settings (``roi_threshold``, ``diffusion_kappa``) are raw values for uint8 images;
for uint16 and float images, whose nominal range is rarely used in full (a 16-bit GeoTIFF often
spans 54..6615), they are read on the image's own min..max range stretched to 0..255.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from segflow.config import PreprocessConfig
from segflow.errors import ConfigError, DataError

#: ImageNet statistics (RGB, on the 0..1 scale) used by pretrained encoders.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Raw value divisor per stored dtype; anything else (float, int32) is used as it is.
DTYPE_SCALE = {"uint8": 255.0, "uint16": 65535.0}
#: ITU-R BT.601 luma weights, as cv2.COLOR_RGB2GRAY uses them.
LUMA = (0.299, 0.587, 0.114)


class Normalization(BaseModel):
    """How scaled images are normalised: ``(raw / scale - mean) / std`` per channel."""

    model_config = ConfigDict(extra="forbid")

    scale: float = Field(gt=0, description="raw value divisor: 255 (uint8), 65535 (uint16), 1")
    mean: list[float] = Field(min_length=1, description="per-channel mean in the scaled space")
    std: list[float] = Field(min_length=1, description="per-channel std in the scaled space (> 0)")

    @model_validator(mode="after")
    def _check(self) -> Normalization:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be > 0, got {self.std}")
        return self


def _match_channels(values: Sequence[float], channels: int, what: str) -> list[float]:
    vals = [float(v) for v in values]
    if len(vals) == channels:
        return vals
    if len(vals) == 1:
        return vals * channels
    if len(vals) == 3 and channels == 1:
        return [sum(w * v for w, v in zip(LUMA, vals, strict=True))]
    raise ConfigError(f"dataset {what} has {len(vals)} channels but the model takes {channels}")


def resolve_normalization(
    cfg: PreprocessConfig,
    *,
    dtype: str,
    channels: int,
    raw_mean: Sequence[float],
    raw_std: Sequence[float],
    pretrained: bool,
) -> Normalization:
    """Choose the normalisation for ``cfg.normalize`` (see PreprocessConfig).

    Args:
        cfg: preprocessing settings.
        dtype: stored pixel dtype of the images (``"uint8"``, ``"uint16"``, ``"float32"``...).
        channels: input channels of the model.
        raw_mean: per-channel mean of the training images in raw units (after preprocessing).
        raw_std: per-channel standard deviation, raw units.
        pretrained: whether the encoder starts from pretrained weights.

    Returns:
        The Normalization; ``"auto"`` picks ImageNet statistics for 8-bit RGB with pretrained
        weights and the dataset's own statistics otherwise.
    """
    scale = DTYPE_SCALE.get(dtype, 1.0)
    mode = cfg.normalize
    if mode == "auto":
        mode = "imagenet" if pretrained and dtype == "uint8" and channels == 3 else "dataset"
    if mode in ("none", "image"):  # 'image': Preprocessor.image standardises each image itself
        return Normalization(scale=scale, mean=[0.0] * channels, std=[1.0] * channels)
    if mode == "imagenet":
        if channels == 3:
            return Normalization(scale=scale, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
        if channels == 1:
            grey_mean, grey_std = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3
            return Normalization(scale=scale, mean=[grey_mean], std=[grey_std])
        raise ConfigError(
            f"preprocess.normalize=imagenet needs 1 or 3 channels, the model takes {channels}; "
            "use 'dataset'"
        )
    mean = [m / scale for m in _match_channels(raw_mean, channels, "mean")]
    # A constant channel (std 0) is left unscaled rather than divided by zero.
    std = [s / scale if s > 0 else 1.0 for s in _match_channels(raw_std, channels, "std")]
    return Normalization(scale=scale, mean=mean, std=std)


@dataclass(frozen=True)
class Geometry:
    """Where a preprocessed image came from: enough to map predictions back.

    Attributes:
        original: ``(height, width)`` of the raw image.
        roi: ``(x0, y0, x1, y1)`` crop box in original pixels (the whole image without a ROI).
        processed: ``(height, width)`` after crop and resize.
    """

    original: tuple[int, int]
    roi: tuple[int, int, int, int]
    processed: tuple[int, int]


class NetworkInput:
    """A preprocessed image as the network takes it: normalised float32 ``C x H x W``, by rows.

    Made by :meth:`Preprocessor.network_input`: either a normalised ``C x H x W`` array, or an
    integer ``H x W x C`` image and one lookup table per channel (``C x levels``) that turns
    rows into normalised values only when they are asked for.
    """

    def __init__(self, data: np.ndarray, table: np.ndarray | None = None) -> None:
        self._data = data
        self._table = table
        if table is None:
            self.shape: tuple[int, int, int] = (data.shape[0], data.shape[1], data.shape[2])
        else:
            self.shape = (data.shape[2], data.shape[0], data.shape[1])

    def rows(self, y0: int, y1: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``y0:y1`` as float32 ``C x (y1 - y0) x W``, written into ``out`` when given."""
        c, _, w = self.shape
        if out is None:
            out = np.empty((c, y1 - y0, w), dtype=np.float32)
        if self._table is None:
            out[...] = self._data[:, y0:y1]
            return out
        for ch in range(c):
            # mode="clip" lets numpy write straight into `out` (with "raise" it buffers a copy);
            # every stored value is a valid index of its dtype's table, so nothing is clipped.
            np.take(self._table[ch], self._data[y0:y1, :, ch], out=out[ch], mode="clip")
        return out

    def array(self) -> np.ndarray:
        """The whole input as one float32 ``C x H x W`` array."""
        if self._table is None:
            return self._data
        return self.rows(0, self.shape[1])


class Preprocessor:
    """Applies one PreprocessConfig to images, masks and predictions.

    Args:
        cfg: preprocessing settings.
        in_channels: channels the model takes.
        normalization: scale and mean/std (see :func:`resolve_normalization`).
    """

    def __init__(
        self, cfg: PreprocessConfig, in_channels: int, normalization: Normalization
    ) -> None:
        if len(normalization.mean) != in_channels:
            raise ConfigError(
                f"normalisation has {len(normalization.mean)} channels but the model takes "
                f"{in_channels}"
            )
        self.cfg = cfg
        self.in_channels = in_channels
        self.normalization = normalization
        self._mean = np.asarray(normalization.mean, dtype=np.float32)
        self._std = np.asarray(normalization.std, dtype=np.float32)

    # -- images ------------------------------------------------------------------------------
    def image(self, raw: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """Raw ``H x W x C`` (any dtype) -> float32 ``h x w x in_channels`` scaled, and its Geometry."""
        if raw.ndim == 2:
            raw = raw[:, :, None]
        kind: Literal["uint8", "uint16", "float"] = (
            "uint8" if raw.dtype == np.uint8 else "uint16" if raw.dtype == np.uint16 else "float"
        )
        if kind == "float" and raw.dtype != np.float32:
            raw = raw.astype(np.float32)
        x = self._convert_channels(raw)
        h, w = x.shape[:2]
        roi = self._roi(x, kind)
        x0, y0, x1, y1 = roi
        out = x[y0:y1, x0:x1].astype(np.float32)
        out = _resize(out, self._target(y1 - y0, x1 - x0))
        cfg = self.cfg
        if cfg.clahe:
            out = _clahe(out, kind, cfg.clahe_clip, cfg.clahe_grid)
        if cfg.diffusion_iterations:
            kappa = cfg.diffusion_kappa * _range(out, kind) / 255.0
            out = anisotropic_diffusion(
                out, cfg.diffusion_iterations, kappa=kappa, gamma=cfg.diffusion_gamma
            )
        out *= np.float32(1.0 / self.normalization.scale)
        if cfg.normalize == "image":
            out = standardise(out)
        geom = Geometry(original=(h, w), roi=roi, processed=(out.shape[0], out.shape[1]))
        return out, geom

    def network_input(self, raw: np.ndarray) -> tuple[NetworkInput, Geometry]:
        """Raw ``H x W x C`` -> the normalised ``in_channels x h x w`` input, rows on demand.

        The same values as :meth:`image`, :meth:`normalize` and a transpose, bit for bit. For
        uint8 and uint16 images whose remaining steps are all per pixel (no resize, CLAHE or
        diffusion), nothing is computed here: :meth:`NetworkInput.rows` looks each channel up
        in a table of all 256 (65,536) levels made with those very float32 operations, straight
        into channel-first order, so a tiler holds float32 copies of one band of rows at a time
        instead of the whole image (4 bytes per pixel and channel: 4.8 GB for a 20,000^2 RGB
        slide). It is also faster: all tile rows of a 4096 x 4096 RGB uint8 image take 0.12 s,
        the arithmetic on the whole image 0.88 s.
        """
        if raw.ndim == 2:
            raw = raw[:, :, None]
        cfg = self.cfg
        kind: Literal["uint8", "uint16"] | None = (
            "uint8" if raw.dtype == np.uint8 else "uint16" if raw.dtype == np.uint16 else None
        )
        per_pixel = not cfg.clahe and not cfg.diffusion_iterations and cfg.normalize != "image"
        if kind is not None and per_pixel:
            x = self._convert_channels(raw)
            x0, y0, x1, y1 = self._roi(x, kind)
            if self._target(y1 - y0, x1 - x0) == (y1 - y0, x1 - x0):
                table = self._table(kind, x.shape[2])
                geom = Geometry((x.shape[0], x.shape[1]), (x0, y0, x1, y1), (y1 - y0, x1 - x0))
                return NetworkInput(x[y0:y1, x0:x1], table), geom
        image, geom = self.image(raw)
        chw = np.ascontiguousarray(self.normalize(image).transpose(2, 0, 1), dtype=np.float32)
        return NetworkInput(chw), geom

    def _table(self, kind: Literal["uint8", "uint16"], channels: int) -> np.ndarray:
        count = 256 if kind == "uint8" else 65536
        levels = np.repeat(np.arange(count, dtype=np.float32)[:, None], channels, axis=1)
        levels *= np.float32(1.0 / self.normalization.scale)
        return np.ascontiguousarray(self.normalize(levels).T)  # C x levels

    def lazy_input(self, rows: Any) -> NetworkInput | None:
        """The network input over a lazy ``H x W x C`` source read by rows, or None.

        The source is e.g. a raster window reader (:mod:`segflow.infer.windowed`). None where
        the preprocessing needs the whole image (ROI, resize, CLAHE, per-image normalisation, a
        channel conversion, a dtype other than uint8/uint16).
        """
        cfg = self.cfg
        kind: Literal["uint8", "uint16"] | None = (
            "uint8" if rows.dtype == np.uint8 else "uint16" if rows.dtype == np.uint16 else None
        )
        per_pixel = not cfg.clahe and not cfg.diffusion_iterations and cfg.normalize != "image"
        whole = cfg.roi is not None or cfg.resize is not None or rows.shape[2] != self.in_channels
        if kind is None or not per_pixel or whole:
            return None
        return NetworkInput(rows, self._table(kind, self.in_channels))

    def mask(self, mask: np.ndarray, geom: Geometry) -> np.ndarray:
        """Apply the same crop and resize (nearest neighbour) to a class-id mask."""
        if mask.shape[:2] != geom.original:
            raise DataError(
                None,
                f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                f"{geom.original[1]}x{geom.original[0]}",
            )
        x0, y0, x1, y1 = geom.roi
        out = np.ascontiguousarray(mask[y0:y1, x0:x1])
        if out.shape[:2] != geom.processed:
            h, w = geom.processed
            out = cv2.resize(out, (w, h), interpolation=cv2.INTER_NEAREST)
        return out

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Scaled float32 ``H x W x C`` -> ``(x - mean) / std`` per channel."""
        if x.shape[-1] != self._mean.size:
            raise ValueError(f"image has {x.shape[-1]} channels, normalisation {self._mean.size}")
        return ((x - self._mean) / self._std).astype(np.float32, copy=False)

    def restore(self, probs: np.ndarray, geom: Geometry) -> np.ndarray:
        """Map ``C x h x w`` probabilities on the processed image back to the original frame.

        Probabilities are resized (bilinear) to the ROI and pasted into the original frame;
        outside the ROI the prediction is background: probability 1 for class 0 and 0 for the
        other classes (0 everywhere for a single-channel binary map).
        """
        if probs.ndim != 3 or probs.shape[1:] != geom.processed:
            raise ValueError(
                f"probabilities of shape {probs.shape} do not match the processed size "
                f"{geom.processed} (remove any padding first)"
            )
        x0, y0, x1, y1 = geom.roi
        hwc = np.ascontiguousarray(probs.transpose(1, 2, 0), dtype=np.float32)
        inside = _resize(hwc, (y1 - y0, x1 - x0)).transpose(2, 0, 1)
        h, w = geom.original
        out = np.zeros((probs.shape[0], h, w), dtype=np.float32)
        if probs.shape[0] > 1:
            out[0] = 1.0
        out[:, y0:y1, x0:x1] = inside
        return out

    # -- steps -------------------------------------------------------------------------------
    def _convert_channels(self, x: np.ndarray) -> np.ndarray:
        have, want = x.shape[2], self.in_channels
        if have == want:
            return x
        if have == 1:
            return np.repeat(x, want, axis=2)
        if have == 3 and want == 1:
            return cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[:, :, None]
        raise ConfigError(
            f"image has {have} channels but the model takes {want}: only 1 -> {want} (repeat) "
            "and 3 -> 1 (luminance) are converted; set the model's input channels to match"
        )

    def _roi(self, x: np.ndarray, kind: str) -> tuple[int, int, int, int]:
        h, w = x.shape[:2]
        roi = self.cfg.roi
        if roi is None:
            return (0, 0, w, h)
        if roi == "auto":
            grey = x.mean(axis=2, dtype=np.float32) if x.shape[2] > 1 else x[:, :, 0]
            lo, span = (0.0, 255.0) if kind == "uint8" else (float(grey.min()), _range(grey, kind))
            bright = (grey - lo) * (255.0 / max(span, 1e-12)) > self.cfg.roi_threshold
            rows = np.flatnonzero(bright.any(axis=1))
            if rows.size == 0:
                return (0, 0, w, h)
            cols = np.flatnonzero(bright.any(axis=0))
            return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
        x0, y0 = max(0, roi[0]), max(0, roi[1])
        x1, y1 = min(w, roi[2]), min(h, roi[3])
        if x1 <= x0 or y1 <= y0:
            raise ConfigError(f"preprocess.roi {roi} lies outside the {w}x{h} image")
        return (x0, y0, x1, y1)

    def _target(self, h: int, w: int) -> tuple[int, int]:
        size = self.cfg.resize
        return (h, w) if size is None else (size[0], size[1])


def standardise(x: np.ndarray) -> np.ndarray:
    """``H x W x C`` float32 with each channel at mean 0, std 1 (a constant channel: only centred)."""
    flat = x.reshape(-1, x.shape[2]).astype(np.float64)
    mean, std = flat.mean(axis=0), flat.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    out: np.ndarray = (x - mean.astype(np.float32)) / std.astype(np.float32)
    return out.astype(np.float32, copy=False)


def _range(x: np.ndarray, kind: str) -> float:
    """The span that a "0-255 scale" setting maps to (see the module docstring)."""
    return 255.0 if kind == "uint8" else float(x.max() - x.min())


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``H x W x C`` to ``size = (h, w)``: INTER_AREA shrinking, INTER_LINEAR enlarging."""
    h, w = size
    if x.shape[:2] == (h, w):
        return x
    shrink = h * w < x.shape[0] * x.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    out = cv2.resize(x, (w, h), interpolation=interp)
    return out.reshape(h, w, x.shape[2])


def _clahe(x: np.ndarray, kind: str, clip: float, grid: int) -> np.ndarray:
    """CLAHE on float32 raw-unit values: per channel, or on the L channel of LAB for RGB.

    It always runs on 8 bits: uint16 and float images are first quantised to 256 levels over
    their own min..max. OpenCV's 16-bit CLAHE uses 65,536 histogram bins, so its clip limit
    (``clip * tile pixels / bins``) drops to its floor of 1 count per bin for tiles under
    ~32,000 pixels and the equalisation goes unlimited (noise is amplified). The result covers
    the dtype's full range (0..255, 0..65535) like OpenCV's, and min..max for float images.
    """
    if kind == "uint8":
        q = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    else:
        lo = float(x.min())
        span = max(float(x.max()) - lo, 1e-12)
        q = np.rint((x - np.float32(lo)) * np.float32(255.0 / span)).astype(np.uint8)
    clahe = cv2.createCLAHE(clipLimit=clip, tileGridSize=(grid, grid))
    if q.shape[2] == 3:
        lab = cv2.cvtColor(q, cv2.COLOR_RGB2LAB)
        lab[:, :, 0] = clahe.apply(np.ascontiguousarray(lab[:, :, 0]))
        q = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    else:
        q = np.dstack([clahe.apply(np.ascontiguousarray(q[:, :, c])) for c in range(q.shape[2])])
    out: np.ndarray = q.astype(np.float32)
    if kind == "uint16":
        out *= np.float32(65535.0 / 255.0)
    elif kind == "float":
        out = out * np.float32(span / 255.0) + np.float32(lo)
    return out


def anisotropic_diffusion(
    x: np.ndarray, iterations: int, *, kappa: float, gamma: float
) -> np.ndarray:
    """Perona-Malik diffusion of ``H x W x C`` float32 (exponential conductance, 4 neighbours).

    Written here because OpenCV's ``cv2.ximgproc.anisotropicDiffusion`` is only in
    opencv-contrib, which conflicts with the opencv-python-headless segflow depends on, and
    scikit-image has none. Explicit scheme, stable for ``gamma <= 0.25``; zero flux at the
    borders; ``kappa`` is in the units of ``x``.

    Args:
        x: image, float32 ``H x W x C``.
        iterations: diffusion steps.
        kappa: gradient magnitude at which conduction falls to 1/e (edges above it are kept).
        gamma: step size.

    Returns:
        The diffused image (a new array).
    """
    u = np.array(x, dtype=np.float32, copy=True)
    inv_k2 = np.float32(1.0 / max(kappa, 1e-12) ** 2)
    g = np.float32(gamma)
    for _ in range(iterations):
        p = np.pad(u, ((1, 1), (1, 1), (0, 0)), mode="edge")
        flux = np.zeros_like(u)
        for d in (p[:-2, 1:-1] - u, p[2:, 1:-1] - u, p[1:-1, 2:] - u, p[1:-1, :-2] - u):
            flux += np.exp(-(d * d) * inv_k2) * d
        u += g * flux
    return u
