"""Post-processing of predicted label maps, per class: small components, holes, largest component.

Applied in this order to each listed class ``c`` (8-connectivity throughout):

1. ``min_size``: components of ``c`` smaller than N pixels become background (0);
2. ``fill_holes``: background regions completely enclosed by ``c`` become ``c``;
3. ``keep_largest``: only the largest component of ``c`` is kept, the rest becomes background.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from segflow.errors import UsageError


class PostProcess(BaseModel):
    """Per-class post-processing settings (stored in the bundle, overridable by flags)."""

    model_config = ConfigDict(extra="forbid")

    min_size: dict[int, int] = Field(
        default_factory=dict, description="class id -> smallest component kept (pixels)"
    )
    fill_holes: list[int] = Field(
        default_factory=list, description="class ids whose holes are filled"
    )
    keep_largest: list[int] = Field(
        default_factory=list, description="class ids keeping only their largest component"
    )

    @property
    def active(self) -> bool:
        """Whether any step is configured."""
        return bool(self.min_size or self.fill_holes or self.keep_largest)


def parse_class_list(values: Sequence[str], names: Sequence[str], what: str) -> list[int]:
    """``["vessel", "2"]`` or ``["all"]`` -> class ids (``all`` = every foreground class)."""
    ids: list[int] = []
    for raw in values:
        for item in (v.strip() for v in raw.split(",") if v.strip()):
            if item == "all":
                ids.extend(range(1, len(names)))
            elif item.isdigit() and int(item) < len(names):
                ids.append(int(item))
            elif item in names:
                ids.append(names.index(item))
            else:
                raise UsageError(f"{what}: unknown class {item!r}; classes: {', '.join(names)}")
    return sorted(set(ids))


def parse_min_size(values: Sequence[str], names: Sequence[str]) -> dict[int, int]:
    """``["50"]`` (every foreground class) or ``["vessel=50", "2=10"]`` -> {class id: pixels}."""
    out: dict[int, int] = {}
    for raw in values:
        for item in (v.strip() for v in raw.split(",") if v.strip()):
            key, sep, num = item.rpartition("=")
            if not num.isdigit():
                raise UsageError(f"--min-size {item!r}: expected PIXELS or CLASS=PIXELS")
            targets = (
                parse_class_list([key], names, "--min-size") if sep else list(range(1, len(names)))
            )
            out.update(dict.fromkeys(targets, int(num)))
    return out


def postprocess(labels: np.ndarray, settings: PostProcess | Mapping[str, Any] | None) -> np.ndarray:
    """Apply ``settings`` to a ``H x W`` uint8 label map (returns a new array)."""
    import cv2

    cfg = (
        settings
        if isinstance(settings, PostProcess)
        else PostProcess.model_validate(settings or {})
    )
    if not cfg.active:
        return labels
    out = labels.copy()
    classes = sorted(set(cfg.min_size) | set(cfg.fill_holes) | set(cfg.keep_largest))
    for c in classes:
        binary = (out == c).astype(np.uint8)
        if not binary.any():
            continue
        if c in cfg.min_size:
            n, comp, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
            small = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < cfg.min_size[c]) + 1
            if small.size:
                drop = np.isin(comp, small)
                out[drop] = 0
                binary[drop] = 0
        if c in cfg.fill_holes:
            from scipy.ndimage import binary_fill_holes

            filled = binary_fill_holes(binary.astype(bool))
            holes = filled & (out == 0)
            out[holes] = c
            binary[holes] = 1
        if c in cfg.keep_largest and binary.any():
            n, comp, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
            if n > 2:
                largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
                out[(comp != largest) & (binary == 1)] = 0
    return out
