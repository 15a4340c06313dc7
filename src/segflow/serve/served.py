"""What the app needs from the predictor it serves: a Protocol, and the facts ``/info`` shows.

``create_app`` takes anything that satisfies :class:`ServedPredictor` (a
:class:`segflow.infer.predictor.Predictor`, or a test's fake). A Predictor has more, and
:func:`model_facts` is the one place that looks those optional attributes up (bundle metadata,
tiling, TTA, threshold, post-processing, backend): a fake without them serves with ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from segflow.classes import ClassInfo


class PredictionLike(Protocol):
    """The part of a prediction the server encodes."""

    @property
    def labels(self) -> np.ndarray:
        """Class ids, ``H x W``."""


class ServedPredictor(Protocol):
    """The predictor interface ``create_app`` relies on."""

    @property
    def classes(self) -> Sequence[ClassInfo]:
        """The model's classes (ids, names, colours)."""

    @property
    def task(self) -> str:
        """``binary`` or ``multiclass``."""

    def predict_array(self, image: np.ndarray, *, stem: str = ...) -> PredictionLike:
        """Labels for one image array."""


@dataclass(frozen=True)
class ModelFacts:
    """The served model as ``/info`` and the docs' title describe it (``None``: not known)."""

    name: str | None = None
    in_channels: int | None = None
    input_dtype: str | None = None
    arch: str | None = None
    encoder: str | None = None
    created_at: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    bundles: int = 1
    tile: int | None = None
    overlap: float | None = None
    tta: list[str] | None = None
    threshold: float | None = None
    postprocess: dict[str, Any] | None = None
    backend: str = "custom"


def model_facts(predictor: ServedPredictor) -> ModelFacts:
    """What ``predictor`` tells about itself beyond the Protocol (its bundles, tiling, backend)."""
    members = getattr(predictor, "members", None) or []
    first = members[0] if members else None
    meta = getattr(first, "meta", None)
    post = getattr(predictor, "post", None)
    dump = getattr(post, "model_dump", None)
    return ModelFacts(
        name=getattr(meta, "name", None),
        in_channels=getattr(meta, "in_channels", None),
        input_dtype=getattr(meta, "input_dtype", None),
        arch=getattr(meta, "arch", None),
        encoder=getattr(meta, "encoder", None),
        created_at=getattr(meta, "created_at", None),
        metrics=dict(getattr(meta, "metrics", None) or {}),
        bundles=max(1, len(members)),
        tile=getattr(first, "tile", None),
        overlap=getattr(first, "overlap", None),
        tta=list(first.tta) if first is not None and hasattr(first, "tta") else None,
        threshold=getattr(predictor, "threshold", None) if predictor.task == "binary" else None,
        postprocess=dump(mode="json") if callable(dump) else None,
        backend=str(getattr(predictor, "backend_name", "custom")),
    )
