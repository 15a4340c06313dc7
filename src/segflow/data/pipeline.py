"""Training and evaluation datasets over a canonical dataset, yielding the sample contract.

Every item is ``{"image": float32 C x H x W tensor, "mask": int64 H x W tensor, "meta": dict}``.

Reproducibility: all randomness of :class:`TrainDataset` (crops, augmentation, mosaic) comes
from one numpy Generator and one ``random.Random`` owned by the dataset, shared by every
albumentations transform (see :func:`~segflow.data.transforms.seed_augment`). In the main
process they derive from ``seed`` and the distributed rank; in a DataLoader worker also from
the worker's torch seed (``base_seed + worker_id``, drawn from the main process's torch
generator whenever workers start). So two runs with the same ``seed``, the same torch seed
(``lightning.seed_everything``, or a seeded ``DataLoader(generator=...)``) and the same
``num_workers`` give the same batches, each worker gets its own stream, and non-persistent
workers still see new augmentations every epoch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch.utils.data import get_worker_info

from segflow.data.dataset import CanonicalDataset, Sample
from segflow.data.preprocess import Geometry, Preprocessor
from segflow.data.transforms import apply_augment, build_eval_pad, mosaic, seed_augment, stretch
from segflow.errors import ConfigError, DataError


def _samples(dataset: CanonicalDataset, stems: Sequence[str]) -> list[Sample]:
    by_stem = {s.stem: s for s in dataset.labelled_samples()}
    missing = [s for s in stems if s not in by_stem]
    if missing:
        raise DataError(dataset.root, f"no labelled image for stems {missing[:5]}")
    return [by_stem[s] for s in stems]


def _load(
    dataset: CanonicalDataset, sample: Sample, preprocessor: Preprocessor
) -> tuple[np.ndarray, np.ndarray, Geometry]:
    image = dataset.read_image(sample)
    mask = dataset.read_mask(sample)
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(
            sample.mask,
            f"mask is {mask.shape[1]}x{mask.shape[0]} but image {sample.image.name} is "
            f"{image.shape[1]}x{image.shape[0]}",
        )
    _check_classes(sample, mask, dataset.meta.num_classes, dataset.meta.ignore_index)
    x, geom = preprocessor.image(image)
    return x, preprocessor.mask(mask, geom), geom


def _check_classes(sample: Sample, mask: np.ndarray, num_classes: int, ignore_index: int) -> None:
    """Mask values must be class ids or ``ignore_index`` (losses and metrics trust them)."""
    if int(mask.max(initial=0)) < num_classes:
        return
    values = np.unique(mask[(mask >= num_classes) & (mask != ignore_index)])
    if values.size:
        raise DataError(
            sample.mask or sample.image,
            f"mask values {values[:10].tolist()} are not class ids 0..{num_classes - 1} or the "
            f"ignore index {ignore_index} (run `segflow check` on the dataset)",
        )


def _rank() -> int:
    """This process's distributed rank (0 outside DDP), so ranks draw different crops."""
    dist = torch.distributed
    return int(dist.get_rank()) if dist.is_available() and dist.is_initialized() else 0


def _sample(image: np.ndarray, mask: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
    chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    return {
        "image": torch.from_numpy(chw),
        "mask": torch.from_numpy(mask.astype(np.int64)),
        "meta": meta,
    }


class _LRU:
    """Least-recently-used cache bounded by the bytes of the numpy arrays it holds."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()

    def get(self, key: str) -> Any | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: str, value: Any, size: int) -> None:
        if size > self.max_bytes or key in self._items:
            return
        while self.bytes + size > self.max_bytes:
            _, (_, freed) = self._items.popitem(last=False)
            self.bytes -= freed
        self._items[key] = (value, size)
        self.bytes += size


class TrainDataset:
    """Random training tiles: preprocessed (cached), augmented, optionally mosaicked, normalised.

    Item ``i`` is a random ``tile_size`` crop of image ``i // crops_per_image``. Preprocessed
    images (float32) and masks are cached per process in an LRU bounded by ``cache_mb``.

    Mosaic: with probability ``mosaic`` an item is built from this image and 3 others (distinct
    when the list allows), each run through the full ``augment`` (pad, foreground-aware crop
    of ``tile_size``, preset), then one quadrant around a random centre is taken from each
    (:func:`~segflow.data.transforms.mosaic`). Parts are not resized, so object scale matches
    plain tiles; the cost is 4 augmentations per mosaic item.

    Args:
        dataset: the canonical dataset.
        stems: training stems (each must have a mask).
        preprocessor: the fitted Preprocessor.
        augment: from :func:`~segflow.data.transforms.build_train_augment`; this dataset takes
            over its random state.
        tile_size: side of the returned tiles (``augment`` must produce it).
        crops_per_image: items per image per epoch.
        mosaic: probability of a 4-image mosaic per item.
        cache_mb: cache size in MiB per process (0: off).
        ignore_index: mask value of unlabelled pixels.
        seed: random seed.
    """

    def __init__(
        self,
        dataset: CanonicalDataset,
        stems: Sequence[str],
        preprocessor: Preprocessor,
        augment: A.Compose,
        *,
        tile_size: int,
        crops_per_image: int = 1,
        mosaic: float = 0.0,
        cache_mb: int = 1024,
        ignore_index: int = 255,
        seed: int = 0,
    ) -> None:
        if crops_per_image < 1:
            raise ConfigError(f"crops_per_image must be >= 1, got {crops_per_image}")
        if not 0.0 <= mosaic <= 1.0:
            raise ConfigError(f"mosaic must be a probability in 0..1, got {mosaic}")
        self.dataset = dataset
        self.samples = _samples(dataset, stems)
        self.preprocessor = preprocessor
        self.augment = augment
        self.tile_size = tile_size
        self.crops_per_image = crops_per_image
        self.mosaic = mosaic
        self.ignore_index = ignore_index
        self.seed = seed
        self._cache = _LRU(cache_mb * 2**20)
        self._rng: np.random.Generator | None = None
        self._rng_owner: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.samples) * self.crops_per_image

    def _generator(self) -> np.random.Generator:
        """The dataset's Generator, (re)seeded on first use in each process / worker."""
        info = get_worker_info()
        owner = None if info is None else (info.id, info.seed)
        if self._rng is None or owner != self._rng_owner:
            entropy = [self.seed, _rank()] + ([] if info is None else [info.seed])
            self._rng = np.random.default_rng(np.random.SeedSequence(entropy))
            seed_augment(self.augment, self._rng)
            self._rng_owner = owner
        return self._rng

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
        """Image ``index`` preprocessed and stretched to 0..1, its mask and ``(lo, span)``.

        Cached per process, so augmentation never re-reads or re-stretches an image; the
        arrays are read-only (the crop copies its tile, and the foreground crop keeps the
        foreground of a read-only mask instead of searching it again).
        """
        sample = self.samples[index]
        hit = self._cache.get(sample.stem)
        if hit is not None:
            stretched, mask, value_range = hit
            return stretched, mask, value_range
        image, mask, _ = _load(self.dataset, sample, self.preprocessor)
        stretched, lo, span = stretch(image)
        for array in (stretched, mask):  # shared by every crop: nothing may write into it
            array.setflags(write=False)
        self._cache.put(sample.stem, (stretched, mask, (lo, span)), image.nbytes + mask.nbytes)
        return stretched, mask, (lo, span)

    def _tile(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        stretched, mask, value_range = self.load(index)
        image, mask = apply_augment(self.augment, stretched, mask, value_range)
        if image.shape[:2] != (self.tile_size, self.tile_size) or mask.shape != image.shape[:2]:
            raise ConfigError(
                f"augmentation produced a {image.shape[1]}x{image.shape[0]} tile instead of "
                f"{self.tile_size}x{self.tile_size}: extra transforms must keep the tile size"
            )
        return image, mask

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        rng = self._generator()
        index = i // self.crops_per_image
        if self.mosaic > 0 and rng.random() < self.mosaic:
            others = [j for j in range(len(self.samples)) if j != index] or [index]
            picks = rng.choice(others, size=3, replace=len(others) < 3)
            parts = [self._tile(int(j)) for j in (index, *picks)]
            image, mask = mosaic(parts, self.tile_size, rng, ignore_index=self.ignore_index)
        else:
            image, mask = self._tile(index)
        image = self.preprocessor.normalize(image)
        return _sample(image, mask, {"stem": self.samples[index].stem})


class EvalDataset:
    """Whole images, preprocessed, normalised and padded bottom/right to a multiple of ``divisor``.

    ``meta``: ``stem``; ``height``/``width`` after preprocessing, before padding; ``pad`` =
    ``(bottom, right)``; ``original`` = raw ``(height, width)`` and ``roi`` = ``(x0, y0, x1, y1)``,
    which with ``height``/``width`` rebuild the :class:`~segflow.data.preprocess.Geometry` that
    :meth:`Preprocessor.restore` needs. The mask is the preprocessed mask, padding =
    ``ignore_index``.

    Args:
        dataset: the canonical dataset.
        stems: stems to evaluate (each must have a mask).
        preprocessor: the fitted Preprocessor.
        divisor: pad to a multiple of this (the network's output stride).
        ignore_index: mask value of padding.
    """

    def __init__(
        self,
        dataset: CanonicalDataset,
        stems: Sequence[str],
        preprocessor: Preprocessor,
        *,
        divisor: int = 32,
        ignore_index: int = 255,
    ) -> None:
        self.dataset = dataset
        self.samples = _samples(dataset, stems)
        self.preprocessor = preprocessor
        self.divisor = divisor
        self.ignore_index = ignore_index
        self.pad = build_eval_pad(divisor, ignore_index)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.samples[i]
        image, mask, geom = _load(self.dataset, sample, self.preprocessor)
        h, w = image.shape[:2]
        out = self.pad(image=self.preprocessor.normalize(image), mask=mask)
        ph, pw = out["image"].shape[:2]
        meta = {
            "stem": sample.stem,
            "height": h,
            "width": w,
            "pad": (ph - h, pw - w),
            "original": geom.original,
            "roi": geom.roi,
        }
        return _sample(out["image"], out["mask"], meta)


def pad_collate(batch: Sequence[dict[str, Any]], *, ignore_index: int = 255) -> dict[str, Any]:
    """Collate samples of different sizes: pad to the largest height and width in the batch.

    Images are padded with 0, masks with ``ignore_index`` (use ``functools.partial`` for another
    value), at the bottom/right; each ``meta["pad"]`` is updated to the total padding. Items from
    :class:`EvalDataset` are multiples of its divisor, so the batch size is too. ``meta`` stays a
    list of dicts.
    """
    height = max(int(s["image"].shape[1]) for s in batch)
    width = max(int(s["image"].shape[2]) for s in batch)
    first = batch[0]["image"]
    images = first.new_zeros((len(batch), first.shape[0], height, width))
    masks = torch.full((len(batch), height, width), ignore_index, dtype=torch.int64)
    metas = []
    for k, s in enumerate(batch):
        _, h, w = s["image"].shape
        images[k, :, :h, :w] = s["image"]
        masks[k, :h, :w] = s["mask"]
        meta = dict(s["meta"])
        if "height" in meta and "width" in meta:
            meta["pad"] = (height - int(meta["height"]), width - int(meta["width"]))
        metas.append(meta)
    return {"image": images, "mask": masks, "meta": metas}
