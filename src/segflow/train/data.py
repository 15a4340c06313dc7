"""The LightningDataModule: training crops and whole-image validation from a canonical dataset."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from segflow.config import SegflowConfig
from segflow.data.dataset import CanonicalDataset
from segflow.data.pipeline import EvalDataset, TrainDataset, pad_collate
from segflow.data.transforms import Preprocessor, build_train_augment

#: Stride the networks need: evaluation images are padded to a multiple of it.
DIVISOR = 32


def resolve_workers(setting: int | str) -> int:
    """``auto`` -> CPUs usable by this process minus one, at most 8."""
    if isinstance(setting, int):
        return setting
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(cpus - 1, 8))


class SegmentationData(L.LightningDataModule):
    """Train / val / test loaders over stems of one canonical dataset.

    Args:
        dataset: the canonical dataset.
        stems: ``{"train": [...], "val": [...], "test": [...]}``.
        preprocessor: the fitted preprocessing (also stored in the bundle).
        cfg: the resolved config.
    """

    def __init__(
        self,
        dataset: CanonicalDataset,
        stems: dict[str, Sequence[str]],
        preprocessor: Preprocessor,
        cfg: SegflowConfig,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.stems = stems
        self.preprocessor = preprocessor
        self.cfg = cfg
        self.ignore_index = dataset.meta.ignore_index
        self.workers = resolve_workers(cfg.data.num_workers)

    def _loader(self, ds: Any, *, train: bool, batch_size: int) -> DataLoader[Any]:
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train and len(ds) > batch_size,
            num_workers=self.workers,
            persistent_workers=self.workers > 0,
            pin_memory=self.cfg.train.accelerator in ("gpu", "auto") and _cuda(),
            collate_fn=None
            if train
            else functools.partial(pad_collate, ignore_index=self.ignore_index),
        )

    def train_dataloader(self) -> DataLoader[Any]:
        """Random tiles with foreground oversampling and augmentation."""
        d = self.cfg.data
        augment = build_train_augment(
            self.cfg.augment,
            tile_size=d.tile_size,
            foreground_crops=d.foreground_crops,
            ignore_index=self.ignore_index,
        )
        ds = TrainDataset(
            self.dataset,
            self.stems["train"],
            self.preprocessor,
            augment,
            tile_size=d.tile_size,
            crops_per_image=d.crops_per_image,
            mosaic=self.cfg.augment.mosaic,
            cache_mb=d.cache_mb,
            ignore_index=self.ignore_index,
            seed=self.cfg.train.seed,
        )
        return self._loader(ds, train=True, batch_size=d.batch_size)

    def _eval(self, split: str) -> DataLoader[Any]:
        ds = EvalDataset(
            self.dataset,
            self.stems[split],
            self.preprocessor,
            divisor=DIVISOR,
            ignore_index=self.ignore_index,
        )
        return self._loader(ds, train=False, batch_size=self.cfg.data.val_batch_size)

    def val_dataloader(self) -> DataLoader[Any]:
        """Whole validation images (tiled inside the task when very large)."""
        return self._eval("val")

    def test_dataloader(self) -> DataLoader[Any]:
        """Whole test images."""
        return self._eval("test")


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())
