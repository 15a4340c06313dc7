"""Measure a dataset once: sizes, dtypes, channel statistics, class frequencies, object sizes.

``segflow check`` computes the per-sample statistics while it looks for problems and writes the
aggregate to ``DATASET/fingerprint.json``. ``segflow plan`` scans with :func:`fingerprint_dataset`,
which adds what planning needs beyond the QA scan: object extents and the width of thin
structures (vessels, cracks, membranes), measured at full resolution because downscaling would
erase them.

Structure width: for every foreground pixel the distance transform gives the distance to the
nearest pixel of another class; on the medial ridge of a structure (pixels whose distance is a
local 3x3 maximum) ``2 * distance - 1`` is the structure's local width in pixels (1 for a
one-pixel line, 3 for a three-pixel vessel, about the diameter for a disc). The median over
ridge pixels is the class's typical width.
"""

from __future__ import annotations

import os
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from segflow.data.dataset import CanonicalDataset, DatasetMeta

#: Statistics of object sizes are computed on masks downscaled to at most this side (speed).
OBJECT_STATS_MAX_SIDE = 1024
#: Structure widths are histogrammed in 1-pixel bins up to this width (wider lands in the last).
WIDTH_BINS = 128
#: Masks above this many pixels measure widths on :data:`WIDTH_WINDOWS` full-resolution windows.
WIDTH_MAX_PIXELS = 16_000_000
#: Side of those windows, and how many per side of a 3 x 3 grid are used (all 9).
WIDTH_WINDOW = 2048
#: ``fingerprint_dataset`` scans at most this many images (spread evenly over the sorted stems).
MAX_SCAN_IMAGES = 2000
#: Colour statistics count only pixels whose grey value is above this (0-255): a fundus camera's
#: black surround (or a slide's black border) would otherwise pass for contrast.
COLOUR_FLOOR = 10.0


@dataclass
class SampleStats:
    """Statistics of one image and its mask."""

    stem: str
    height: int
    width: int
    channels: int
    dtype: str
    channel_sum: list[float]
    channel_sqsum: list[float]
    channel_min: list[float]
    channel_max: list[float]
    class_pixels: list[int] = field(default_factory=list)  # 256 bins; empty when no mask
    object_areas: dict[int, list[int]] = field(default_factory=dict)  # class id -> component areas
    # class id -> longer bounding-box side of each component (original pixels)
    object_extents: dict[int, list[int]] = field(default_factory=dict)
    # class id -> histogram of structure widths on the medial ridge (WIDTH_BINS bins, 1..128 px)
    width_hist: dict[int, list[int]] = field(default_factory=dict)
    # 8-bit images with >= 3 channels: (grey std / grey mean, mean pairwise channel correlation)
    # over the pixels above COLOUR_FLOOR; None otherwise
    colour: tuple[float, float] | None = None


def image_channel_stats(
    image: np.ndarray,
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per-channel sum, sum of squares, min and max (float64)."""
    flat = image.reshape(-1, image.shape[2]).astype(np.float64)
    return (
        flat.sum(axis=0).tolist(),
        np.square(flat).sum(axis=0).tolist(),
        flat.min(axis=0).tolist(),
        flat.max(axis=0).tolist(),
    )


def colour_stats(image: np.ndarray) -> tuple[float, float] | None:
    """Contrast and channel redundancy of an 8-bit colour image (None for other images).

    Returns ``(cv, correlation)``: the coefficient of variation (std / mean) of the grey value
    (mean of the first three channels) and the mean pairwise Pearson correlation of those
    channels, both over the pixels brighter than :data:`COLOUR_FLOOR` (every 2nd row and column).
    Grey stored as RGB has correlation 1; a low cv means a dim, flat image.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] < 3:
        return None
    rgb = image[::2, ::2, :3].reshape(-1, 3).astype(np.float64)
    grey = rgb.mean(axis=1)
    keep = grey > COLOUR_FLOOR
    if keep.sum() < 16:
        return None
    rgb, grey = rgb[keep], grey[keep]
    cv = float(grey.std() / max(grey.mean(), 1e-9))
    std = rgb.std(axis=0)
    if np.any(std < 1e-9):  # a constant channel carries no information: as redundant as a copy
        return cv, 1.0
    corr = np.corrcoef(rgb.T)
    return cv, float(np.mean(corr[np.triu_indices(3, 1)]))


def object_stats(
    mask: np.ndarray, class_ids: Sequence[int]
) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """Areas and extents (longer bounding-box side) of each class's 8-connected components.

    In original pixels, measured on ``mask`` downscaled to :data:`OBJECT_STATS_MAX_SIDE`.
    """
    import cv2

    h, w = mask.shape
    scale = max(h, w) / OBJECT_STATS_MAX_SIDE
    small = mask
    if scale > 1:
        small = cv2.resize(
            mask,
            (max(1, round(w / scale)), max(1, round(h / scale))),  # a 100000 x 1 image: 1 row
            interpolation=cv2.INTER_NEAREST,
        )
    linear = max(scale, 1.0)
    areas: dict[int, list[int]] = {}
    extents: dict[int, list[int]] = {}
    for cid in class_ids:
        binary = (small == cid).astype(np.uint8)
        if not binary.any():
            continue
        n, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        areas[cid] = [int(a * linear**2) for a in stats[1:n, cv2.CC_STAT_AREA]]
        sides = np.maximum(stats[1:n, cv2.CC_STAT_WIDTH], stats[1:n, cv2.CC_STAT_HEIGHT])
        extents[cid] = [round(float(s) * linear) for s in sides]
    return areas, extents


def _width_windows(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """``(y0, y1, x0, x1)`` windows on which widths are measured (the whole mask if small)."""
    if height * width <= WIDTH_MAX_PIXELS:
        return [(0, height, 0, width)]
    side = WIDTH_WINDOW
    ys = sorted({max(0, round(f * (height - side))) for f in (0.0, 0.5, 1.0)})
    xs = sorted({max(0, round(f * (width - side))) for f in (0.0, 0.5, 1.0)})
    return [(y, min(y + side, height), x, min(x + side, width)) for y in ys for x in xs]


def structure_widths(mask: np.ndarray, class_ids: Sequence[int]) -> dict[int, list[int]]:
    """Per class, a histogram of local structure widths on the medial ridge (see module doc).

    Bin ``i`` counts ridge pixels of width ``i + 1`` pixels; the last bin holds wider ones.
    Measured at full resolution (on a few windows for very large masks).
    """
    import cv2

    kernel = np.ones((3, 3), np.uint8)
    out: dict[int, list[int]] = {}
    for cid in class_ids:
        hist = np.zeros(WIDTH_BINS, dtype=np.int64)
        for y0, y1, x0, x1 in _width_windows(*mask.shape):
            binary = (mask[y0:y1, x0:x1] == cid).astype(np.uint8)
            if not binary.any():
                continue
            dist = cv2.distanceTransform(binary, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
            ridge = (dist >= cv2.dilate(dist, kernel)) & (binary > 0)
            widths = np.rint(2.0 * dist[ridge] - 1.0).astype(np.int64)
            hist += np.bincount(np.clip(widths, 1, WIDTH_BINS) - 1, minlength=WIDTH_BINS)
        if hist.any():
            out[cid] = hist.tolist()
    return out


def nonfinite_problem(path: Path | str, image: np.ndarray) -> str | None:
    """Why a float image's NaN/infinite pixels make it unusable (None when every pixel is finite).

    Normalisation statistics, losses and predictions would all turn NaN.
    """
    if not np.issubdtype(image.dtype, np.floating):
        return None
    bad = int(image.size - np.count_nonzero(np.isfinite(image)))
    if not bad:
        return None
    return (
        f"{path}: {bad} pixel value(s) are NaN or infinite; replace them (e.g. with 0 or the "
        "nodata value) or exclude the image"
    )


def sample_stats(
    stem: str, image: np.ndarray, mask: np.ndarray | None, class_ids: Sequence[int]
) -> SampleStats:
    """Every statistic of one ``H x W x C`` image and its mask (``None``: unlabelled).

    ``class_ids`` are the foreground classes whose objects and widths are measured.
    """
    sums, sqsums, mins, maxs = image_channel_stats(image)
    stats = SampleStats(
        stem, image.shape[0], image.shape[1], image.shape[2], str(image.dtype),
        sums, sqsums, mins, maxs,
    )  # fmt: skip
    stats.colour = colour_stats(image)
    if mask is not None and mask.shape == image.shape[:2]:
        counts = np.bincount(mask.ravel(), minlength=256)
        stats.class_pixels = counts.tolist()
        present = [c for c in class_ids if counts[c] > 0]
        stats.object_areas, stats.object_extents = object_stats(mask, present)
        stats.width_hist = structure_widths(mask, present)
    return stats


class ClassStats(BaseModel):
    """Per-class statistics."""

    id: int
    name: str
    pixels: int = Field(description="labelled pixels of this class")
    frequency: float = Field(description="share of all labelled (non-ignore) pixels")
    images: int = Field(description="images in which the class appears")
    objects: int = Field(description="8-connected components over the dataset")
    median_object_area: float = Field(description="median component area in pixels (0 if none)")
    p90_object_extent: float = Field(
        0.0, description="90th percentile of the components' longer bounding-box side (0: unknown)"
    )
    median_width: float = Field(
        0.0, description="median structure width in pixels on the medial ridge (0: unknown)"
    )


class Fingerprint(BaseModel):
    """What planning needs to know about a dataset (``fingerprint.json``)."""

    num_images: int
    num_labelled: int
    height: dict[str, float] = Field(description="min / median / max image height")
    width: dict[str, float] = Field(description="min / median / max image width")
    channels: dict[str, int] = Field(description="images per channel count")
    dtypes: dict[str, int] = Field(description="images per pixel dtype")
    channel_mean: list[float] = Field(
        description="per-channel mean (images with the majority channel count)"
    )
    channel_std: list[float] = Field(description="per-channel standard deviation, same images")
    value_range: list[float] = Field(description="[min, max] pixel value over all images")
    classes: list[ClassStats]
    ignore_pixels: int
    empty_mask_share: float = Field(description="share of masks with no foreground class")
    mean_pixels: float = Field(0.0, description="mean pixels per image (0: unknown)")
    scanned_images: int = Field(
        0, description="readable images the statistics come from (0: written by segflow check)"
    )
    colour_contrast: float | None = Field(
        None,
        description="8-bit colour images: median over images of the grey value's std / mean "
        "(pixels above COLOUR_FLOOR); None for other images",
    )
    channel_correlation: float | None = Field(
        None,
        description="8-bit colour images: median over images of the mean pairwise correlation "
        "of the R, G, B channels (1: grey stored as colour)",
    )

    @classmethod
    def from_stats(cls, meta: DatasetMeta, stats: Sequence[SampleStats]) -> Fingerprint:
        """Aggregate per-sample statistics."""
        if not stats:
            raise ValueError("no readable samples to fingerprint")
        heights = [s.height for s in stats]
        widths = [s.width for s in stats]
        channel_counts = Counter(s.channels for s in stats)
        majority = channel_counts.most_common(1)[0][0]
        same = [s for s in stats if s.channels == majority]
        n_pix = float(sum(s.height * s.width for s in same))
        csum = np.sum([s.channel_sum for s in same], axis=0)
        csq = np.sum([s.channel_sqsum for s in same], axis=0)
        mean = csum / n_pix
        std = np.sqrt(np.maximum(csq / n_pix - mean**2, 0.0))
        labelled = [s for s in stats if s.class_pixels]
        total = np.zeros(256, dtype=np.int64)
        presence = np.zeros(256, dtype=np.int64)
        areas: dict[int, list[int]] = {}
        extents: dict[int, list[int]] = {}
        ridge_widths: dict[int, np.ndarray] = {}
        empty = 0
        for s in labelled:
            counts = np.asarray(s.class_pixels, dtype=np.int64)
            total += counts
            presence += counts > 0
            fg = [c.id for c in meta.classes if c.id != 0 and counts[c.id] > 0]
            empty += not fg
            for cid, a in s.object_areas.items():
                areas.setdefault(int(cid), []).extend(a)
            for cid, e in s.object_extents.items():
                extents.setdefault(int(cid), []).extend(e)
            for cid, hist in s.width_hist.items():
                so_far = ridge_widths.get(int(cid), np.zeros(WIDTH_BINS, dtype=np.int64))
                ridge_widths[int(cid)] = so_far + np.asarray(hist, dtype=np.int64)
        labelled_pixels = int(sum(total[c.id] for c in meta.classes)) or 1
        classes = [
            ClassStats(
                id=c.id,
                name=c.name,
                pixels=int(total[c.id]),
                frequency=float(total[c.id]) / labelled_pixels,
                images=int(presence[c.id]),
                objects=len(areas.get(c.id, [])),
                median_object_area=float(statistics.median(areas[c.id]))
                if areas.get(c.id)
                else 0.0,
                p90_object_extent=float(np.percentile(extents[c.id], 90))
                if extents.get(c.id)
                else 0.0,
                median_width=_histogram_median(ridge_widths.get(c.id)),
            )
            for c in meta.classes
        ]
        return cls(
            num_images=len(stats),
            num_labelled=len(labelled),
            height=_summary(heights),
            width=_summary(widths),
            channels={str(k): v for k, v in sorted(channel_counts.items())},
            dtypes=dict(Counter(s.dtype for s in stats)),
            channel_mean=[float(x) for x in mean],
            channel_std=[float(x) for x in std],
            value_range=[
                min(min(s.channel_min) for s in stats),
                max(max(s.channel_max) for s in stats),
            ],
            classes=classes,
            ignore_pixels=int(total[meta.ignore_index]),
            empty_mask_share=empty / len(labelled) if labelled else 0.0,
            mean_pixels=float(np.mean([s.height * s.width for s in stats])),
            **_colour_summary(stats),
        )


def _colour_summary(stats: Sequence[SampleStats]) -> dict[str, float]:
    """Medians of the per-image colour statistics (nothing when no image had them)."""
    found = [s.colour for s in stats if s.colour is not None]
    if not found:
        return {}
    return {
        "colour_contrast": float(np.median([c[0] for c in found])),
        "channel_correlation": float(np.median([c[1] for c in found])),
    }


def _histogram_median(hist: np.ndarray | None) -> float:
    """Median of a width histogram (bin ``i`` = width ``i + 1``); 0 when empty."""
    if hist is None or not hist.any():
        return 0.0
    cumulative = np.cumsum(hist)
    return float(np.searchsorted(cumulative, cumulative[-1] / 2.0) + 1)


@dataclass
class _ScanJob:
    stem: str
    image: Path
    mask: Path | None
    class_ids: list[int]


def _scan(job: _ScanJob) -> SampleStats | str:
    """Statistics of one sample, or the reason it could not be read."""
    from segflow.data import image_io
    from segflow.errors import DataError, SegflowError

    try:
        image = image_io.read_image(job.image)
        mask = image_io.read_mask(job.mask) if job.mask is not None else None
    except SegflowError as exc:
        return str(exc)
    if mask is not None and mask.shape != image.shape[:2]:
        return f"{job.mask}: mask size {mask.shape} differs from image size {image.shape[:2]}"
    problem = nonfinite_problem(job.image, image)
    if problem is not None:  # a plan must not normalise by NaN: refuse, naming the image
        raise DataError(None, problem)
    return sample_stats(job.stem, image, mask, job.class_ids)


def fingerprint_dataset(
    dataset: str | os.PathLike[str] | CanonicalDataset,
    *,
    max_images: int = MAX_SCAN_IMAGES,
    workers: int | None = None,
    progress: bool = False,
) -> Fingerprint:
    """Scan a canonical dataset (at most ``max_images``, evenly spread) into a Fingerprint.

    Unreadable samples are skipped (``segflow check`` reports them); the dataset must have at
    least one readable labelled sample.

    Raises:
        DataError: no images, or no readable labelled sample.
    """
    from segflow._parallel import parallel_map
    from segflow.errors import DataError

    ds = dataset if isinstance(dataset, CanonicalDataset) else CanonicalDataset(dataset)
    samples = ds.samples()
    if not samples:
        raise DataError(ds.images_dir, "no images found")
    labelled = sum(1 for s in samples if s.mask is not None)
    if not labelled:
        raise DataError(ds.masks_dir, "no masks found: planning needs labelled images")
    picks = samples
    if len(samples) > max_images:
        step = len(samples) / max_images
        picks = [samples[int(i * step)] for i in range(max_images)]
    fg = [c.id for c in ds.meta.classes if c.id != 0]
    jobs = [_ScanJob(s.stem, s.image, s.mask, fg) for s in picks]
    results = list(
        parallel_map(_scan, jobs, workers=workers, progress=progress, label="fingerprint")
    )
    stats = sorted((r for r in results if isinstance(r, SampleStats)), key=lambda r: r.stem)
    if not any(s.class_pixels for s in stats):
        raise DataError(ds.root, "no readable labelled image; run `segflow check` to see why")
    fp = Fingerprint.from_stats(ds.meta, stats)
    return fp.model_copy(
        update={"num_images": len(samples), "num_labelled": labelled, "scanned_images": len(stats)}
    )


def _summary(values: Sequence[int]) -> dict[str, float]:
    return {
        "min": float(min(values)),
        "median": float(statistics.median(values)),
        "max": float(max(values)),
    }
