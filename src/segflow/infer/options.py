"""Inference options: the flags of ``predict``, ``eval`` and ``tune`` parsed and merged in one place.

A flag left at None keeps the bundle's own setting (its tiling, TTA, threshold); post-processing
flags ADD to the bundle's ``postprocess``. :meth:`InferenceOptions.from_flags` validates every
flag before any work (one-line :class:`~segflow.errors.UsageError` naming the flag);
:meth:`InferenceOptions.predictor` builds the :class:`~segflow.infer.predictor.Predictor`;
:meth:`InferenceOptions.applied` says what a predictor really runs (``metrics.json``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from segflow.errors import UsageError
from segflow.infer.postprocess import PostProcess, parse_class_list, parse_min_size

if TYPE_CHECKING:
    from segflow.infer.predictor import Predictor
    from segflow.models.bundle import BundleMeta

TTA_FLIPS = ("h", "v", "hv")
Flip = Literal["h", "v", "hv"]


def parse_tta(value: str | Sequence[str] | None) -> list[Flip] | None:
    """``"h,v"`` -> ``["h", "v"]``; ``"none"``/``"off"``/``""`` -> ``[]``; None keeps the bundle's.

    Raises:
        UsageError: an unknown flip (the valid ones listed).
    """
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    flips = [t.strip().lower() for t in items if t.strip()]
    if flips in ([], ["none"], ["off"]):
        return []
    bad = [t for t in flips if t not in TTA_FLIPS]
    if bad:
        raise UsageError(
            f"--tta: unknown TTA flip(s) {bad}; valid: {', '.join(TTA_FLIPS)} (comma-separated) "
            "or none"
        )
    return list(dict.fromkeys(flips))  # type: ignore[arg-type]


class InferenceOptions(BaseModel):
    """How to predict: backend and tiling, TTA, threshold, post-processing, ensemble combine.

    None means "the bundle's setting". ``postprocess`` is already merged with the bundle's.
    """

    model_config = ConfigDict(extra="forbid")

    backend: str = Field("auto", description="auto, torch, onnx or openvino")
    precision: str = Field("auto", description="auto, f32 or bf16")
    device: str = Field("auto", description="torch device: auto, cpu, cuda...")
    threads: int | None = Field(None, ge=1, description="CPU threads of the ONNX runtimes")
    tile: int | None = Field(None, description="tile side (None: the bundle's)")
    overlap: float | None = Field(None, description="tile overlap share (None: the bundle's)")
    batch: int | None = Field(None, description="tiles per forward pass (None: the bundle's)")
    tta: list[Flip] | None = Field(None, description="flips averaged in (None: the bundle's)")
    threshold: float | None = Field(None, description="binary threshold (None: the bundle's)")
    postprocess: PostProcess = Field(
        default_factory=PostProcess, description="the bundle's steps plus the flags' steps"
    )
    combine: Literal["mean", "vote"] | None = Field(
        None, description="ensemble: mean or vote (None: an ensemble bundle's rule, else mean)"
    )
    flags: list[str] = Field(
        default_factory=list, description="the settings given as flags (the rest: the bundle's)"
    )

    @classmethod
    def from_flags(
        cls,
        meta: BundleMeta,
        *,
        backend: str = "auto",
        precision: str = "auto",
        device: str = "auto",
        threads: int | None = None,
        tile: int | None = None,
        overlap: float | None = None,
        batch: int | None = None,
        tta: str | Sequence[str] | None = None,
        threshold: float | None = None,
        min_size: Sequence[str] = (),
        fill_holes: Sequence[str] = (),
        keep_largest: Sequence[str] = (),
        combine: str | None = None,
    ) -> InferenceOptions:
        """Validate the flags against ``meta`` (the first bundle) and merge its post-processing.

        Raises:
            UsageError: a value out of range, an unknown class or flip, a threshold on a
                multiclass model, an unknown combine rule.
        """
        from segflow.infer.predictor import check_settings

        check_settings(tile, overlap, batch, threshold, threads)
        if threshold is not None and meta.task != "binary":
            raise UsageError(
                f"--threshold {threshold}: {meta.name} is a {meta.task} model (each pixel takes "
                "its most probable class); a threshold applies to binary models only"
            )
        if combine not in (None, "mean", "vote"):
            raise UsageError(f"--combine {combine!r}: use mean or vote")
        names = [c.name for c in meta.classes]
        base = PostProcess.model_validate(meta.postprocess or {})
        post = PostProcess(
            min_size={**base.min_size, **parse_min_size(list(min_size), names)},
            fill_holes=sorted(
                set(base.fill_holes)
                | set(parse_class_list(list(fill_holes), names, "--fill-holes"))
            ),
            keep_largest=sorted(
                set(base.keep_largest)
                | set(parse_class_list(list(keep_largest), names, "--keep-largest"))
            ),
        )
        given = {
            "tile": tile,
            "overlap": overlap,
            "batch": batch,
            "tta": tta,
            "threshold": threshold,
            "min_size": list(min_size) or None,
            "fill_holes": list(fill_holes) or None,
            "keep_largest": list(keep_largest) or None,
        }
        return cls(
            backend=backend,
            precision=precision,
            device=device,
            threads=threads,
            tile=tile,
            overlap=overlap,
            batch=batch,
            tta=parse_tta(tta),
            threshold=threshold,
            postprocess=post,
            combine=combine,
            flags=[k for k, v in given.items() if v is not None],
        )

    def predictor(self, bundles: Sequence[str | os.PathLike[str]]) -> Predictor:
        """The Predictor over ``bundles`` with these options."""
        from segflow.infer.predictor import Predictor

        return Predictor.from_bundles(
            [Path(b) for b in bundles],
            backend=self.backend,
            device=self.device,
            tta=self.tta,
            tile_size=self.tile,
            overlap=self.overlap,
            batch_size=self.batch,
            threshold=self.threshold,
            postprocess=self.postprocess,
            combine=self.combine,
            precision=self.precision,
            threads=self.threads,
        )

    def applied(self, predictor: Any, meta: BundleMeta) -> dict[str, Any]:
        """What ``predictor`` runs (for ``metrics.json``): the bundle's settings where no flag."""
        names = [c.name for c in meta.classes]
        members = getattr(predictor, "members", None) or []
        first = members[0] if members else None
        post = getattr(predictor, "post", self.postprocess)
        return {
            "backend": str(getattr(predictor, "backend_name", self.backend)),
            "precision": str(getattr(predictor, "precision", self.precision)),
            "device": self.device,
            "tile": first.tile if first is not None else self.tile or meta.inference.tile_size,
            "overlap": first.overlap if first is not None else self.overlap,
            "batch": first.batch if first is not None else self.batch,
            "tta": list(first.tta) if first is not None else self.tta,
            "threshold": getattr(predictor, "threshold", self.threshold)
            if meta.task == "binary"
            else None,
            "postprocess": describe_postprocess(post, names),
            "combine": str(getattr(predictor, "combine", self.combine or "mean")),
            "from_flags": list(self.flags),
        }


def describe_postprocess(post: PostProcess, names: Sequence[str]) -> dict[str, Any]:
    """Post-processing with class names: ``{"min_size": {"vessel": 50}, "fill_holes": [...]}``."""
    return {
        "min_size": {names[c]: n for c, n in sorted(post.min_size.items())},
        "fill_holes": [names[c] for c in post.fill_holes],
        "keep_largest": [names[c] for c in post.keep_largest],
    }
