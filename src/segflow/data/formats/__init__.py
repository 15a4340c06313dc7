"""Annotation formats: one registered importer (and exporter where asked) per module.

Format modules are imported on first use, so ``import segflow`` and ``segflow --help`` stay fast
and a format's heavy dependencies (rasterio, pycocotools...) load only when that format runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, TypeVar

from segflow.registry import Registry

if TYPE_CHECKING:
    from segflow.data.formats.base import DatasetExporter, Importer

T = TypeVar("T")

#: Modules that register importers (and exporters); the names users type are the registry keys.
FORMAT_MODULES = (
    "labelme",
    "coco",
    "coco_export",
    "cvat",
    "geojson",
    "voc",
    "mmseg",
    "roboflow",
    "labelstudio",
    "masks",
)


class _LazyRegistry(Registry[T]):
    """A registry that imports every format module the first time it is read."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for name in FORMAT_MODULES:
                importlib.import_module(f"segflow.data.formats.{name}")

    def get(self, name: str) -> T:
        self._load()
        return super().get(name)

    def names(self) -> list[str]:
        self._load()
        return super().names()

    def __contains__(self, name: object) -> bool:
        self._load()
        return super().__contains__(name)


IMPORTERS: Registry[type[Importer]] = _LazyRegistry("annotation format")
EXPORTERS: Registry[DatasetExporter] = _LazyRegistry("dataset export format")


def __getattr__(name: str) -> Any:
    # ``from segflow.data.formats import run_import`` without importing numpy at package import.
    if name in ("run_import", "ImportOptions", "ImportReport"):
        from segflow.data.formats import base

        return getattr(base, name)
    raise AttributeError(name)
