"""segflow: annotated images to a trained, evaluated, exported and served segmentation model.

The public API is re-exported here lazily: ``import segflow`` imports nothing heavy and does no
I/O; each name loads its module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from segflow._version import __version__

if TYPE_CHECKING:
    from segflow.api import (
        check,
        evaluate,
        export_dataset,
        export_model,
        import_dataset,
        plan,
        predict,
        serve,
        split,
        tune,
    )
    from segflow.config import SegflowConfig, load_config
    from segflow.data.dataset import CanonicalDataset, DatasetMeta, SegmentationDataset
    from segflow.errors import DataError, SegflowError, UsageError
    from segflow.infer.predictor import Predictor
    from segflow.models.bundle import load_bundle
    from segflow.serve import create_app
    from segflow.train.runner import train

_EXPORTS = {
    "import_dataset": "segflow.api",
    "check": "segflow.api",
    "evaluate": "segflow.api",
    "export_dataset": "segflow.api",
    "export_model": "segflow.api",
    "split": "segflow.api",
    "plan": "segflow.api",
    "predict": "segflow.api",
    "serve": "segflow.api",
    "tune": "segflow.api",
    "create_app": "segflow.serve",
    "Predictor": "segflow.infer.predictor",
    "train": "segflow.train.runner",
    "load_bundle": "segflow.models.bundle",
    "load_config": "segflow.config",
    "SegflowConfig": "segflow.config",
    "CanonicalDataset": "segflow.data.dataset",
    "DatasetMeta": "segflow.data.dataset",
    "SegmentationDataset": "segflow.data.dataset",
    "SegflowError": "segflow.errors",
    "DataError": "segflow.errors",
    "UsageError": "segflow.errors",
}

__all__ = [
    "CanonicalDataset",
    "DataError",
    "DatasetMeta",
    "Predictor",
    "SegflowConfig",
    "SegflowError",
    "SegmentationDataset",
    "UsageError",
    "__version__",
    "check",
    "create_app",
    "evaluate",
    "export_dataset",
    "export_model",
    "import_dataset",
    "load_bundle",
    "load_config",
    "plan",
    "predict",
    "serve",
    "split",
    "train",
    "tune",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'segflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
