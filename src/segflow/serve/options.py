"""Per-request prediction options (query parameters) applied to a loaded predictor.

A request may change tiling, TTA, the binary threshold and post-processing. The loaded networks
are never touched or reloaded: :func:`with_options` returns a shallow copy of the predictor whose
members share their backends (ONNX sessions, torch modules) with the original, with only the
settings replaced, so concurrent requests with different options do not interfere.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from segflow.errors import UsageError
from segflow.infer.postprocess import PostProcess, parse_class_list, parse_min_size

TTA_FLIPS = ("h", "v", "hv")


class PredictOptions(BaseModel):
    """Overrides of the bundle's inference settings; None / empty keeps the bundle's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tta: str | None = None
    tile: int | None = None
    overlap: float | None = None
    threshold: float | None = None
    min_size: tuple[str, ...] = ()
    fill_holes: tuple[str, ...] = ()
    keep_largest: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """Whether every setting is the bundle's."""
        return self == PredictOptions()


def parse_tta(value: str) -> tuple[str, ...]:
    """``"h,v"`` -> ``("h", "v")``; ``"none"`` or ``""`` -> no flips."""
    if value.strip().lower() in ("", "none"):
        return ()
    flips = tuple(dict.fromkeys(t.strip() for t in value.split(",") if t.strip()))
    bad = [t for t in flips if t not in TTA_FLIPS]
    if bad:
        raise UsageError(f"tta: unknown flip(s) {', '.join(bad)}; use h, v, hv or none")
    return flips


def _merged_post(base: PostProcess, opts: PredictOptions, names: Sequence[str]) -> PostProcess:
    """The predictor's post-processing plus the request's (as ``segflow predict`` flags add)."""
    return PostProcess(
        min_size={**base.min_size, **parse_min_size(list(opts.min_size), names)},
        fill_holes=sorted(
            set(base.fill_holes) | set(parse_class_list(list(opts.fill_holes), names, "fill_holes"))
        ),
        keep_largest=sorted(
            set(base.keep_largest)
            | set(parse_class_list(list(opts.keep_largest), names, "keep_largest"))
        ),
    )


def with_options(predictor: Any, opts: PredictOptions) -> Any:
    """A predictor giving ``opts``' settings, sharing ``predictor``'s loaded networks.

    Works on :class:`segflow.infer.predictor.Predictor` and on any object with the same
    attributes (``members`` with ``tile``/``overlap``/``tta`` fields, ``threshold``, ``post``,
    ``classes``); an attribute the object lacks is left alone.

    Raises:
        UsageError: an unknown TTA flip or class name.
    """
    if opts.empty:
        return predictor
    names = [c.name for c in predictor.classes]
    flips = parse_tta(opts.tta) if opts.tta is not None else None
    post_changed = bool(opts.min_size or opts.fill_holes or opts.keep_largest)
    base_post = getattr(predictor, "post", None)
    post = (
        _merged_post(base_post if base_post is not None else PostProcess(), opts, names)
        if post_changed
        else None
    )
    variant = copy.copy(predictor)
    members = getattr(predictor, "members", None)
    if members is not None and (
        opts.tile is not None or opts.overlap is not None or flips is not None
    ):
        changes: dict[str, Any] = {}
        if opts.tile is not None:
            changes["tile"] = opts.tile
        if opts.overlap is not None:
            changes["overlap"] = opts.overlap
        if flips is not None:
            changes["tta"] = flips
        variant.members = [dataclasses.replace(m, **changes) for m in members]
    if opts.threshold is not None:
        variant.threshold = opts.threshold
    if post is not None:
        variant.post = post
    return variant
