"""Measure a dataset once: sizes, dtypes, channel statistics, class frequencies, object sizes.

``segflow check`` computes the per-sample statistics while it looks for problems and writes the
aggregate to ``DATASET/fingerprint.json``; planning (tile size, normalisation, class weights)
reads it instead of scanning the images again.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, Field

from segflow.data.dataset import DatasetMeta

#: Statistics of object sizes are computed on masks downscaled to at most this side (speed).
OBJECT_STATS_MAX_SIDE = 1024


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


def object_areas(mask: np.ndarray, class_ids: Sequence[int]) -> dict[int, list[int]]:
    """Areas (in original pixels) of the 8-connected components of each class in ``mask``."""
    import cv2

    h, w = mask.shape
    scale = max(h, w) / OBJECT_STATS_MAX_SIDE
    small = mask
    if scale > 1:
        small = cv2.resize(
            mask, (round(w / scale), round(h / scale)), interpolation=cv2.INTER_NEAREST
        )
    factor = max(scale, 1.0) ** 2
    out: dict[int, list[int]] = {}
    for cid in class_ids:
        binary = (small == cid).astype(np.uint8)
        if not binary.any():
            continue
        n, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        out[cid] = [int(a * factor) for a in stats[1:n, cv2.CC_STAT_AREA]]
    return out


class ClassStats(BaseModel):
    """Per-class statistics."""

    id: int
    name: str
    pixels: int = Field(description="labelled pixels of this class")
    frequency: float = Field(description="share of all labelled (non-ignore) pixels")
    images: int = Field(description="images in which the class appears")
    objects: int = Field(description="8-connected components over the dataset")
    median_object_area: float = Field(description="median component area in pixels (0 if none)")


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
        empty = 0
        for s in labelled:
            counts = np.asarray(s.class_pixels, dtype=np.int64)
            total += counts
            presence += counts > 0
            fg = [c.id for c in meta.classes if c.id != 0 and counts[c.id] > 0]
            empty += not fg
            for cid, a in s.object_areas.items():
                areas.setdefault(int(cid), []).extend(a)
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
        )


def _summary(values: Sequence[int]) -> dict[str, float]:
    return {
        "min": float(min(values)),
        "median": float(statistics.median(values)),
        "max": float(max(values)),
    }
