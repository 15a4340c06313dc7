"""TrainDataset / EvalDataset: the sample contract, oversampling, cache, seeding, padding, mosaic."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from segflow.config import AugmentConfig, PreprocessConfig
from segflow.data import image_io
from segflow.data.dataset import CanonicalDataset, default_color
from segflow.data.pipeline import _LRU, EvalDataset, TrainDataset, pad_collate
from segflow.data.transforms import Normalization, Preprocessor, build_train_augment
from segflow.errors import ConfigError, DataError
from tests.fixtures.synthetic import make_dataset

IGNORE = 255


def write_dataset(
    root: Path, items: dict[str, tuple[np.ndarray, np.ndarray]], classes: int
) -> Path:
    """A canonical dataset from explicit (RGB uint8 image, mask) pairs."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem, (image, mask) in items.items():
        cv2.imwrite(str(root / "images" / f"{stem}.png"), image[:, :, ::-1])
        cv2.imwrite(str(root / "masks" / f"{stem}.png"), mask)
    meta = {
        "name": root.name,
        "classes": [
            {"id": i, "name": f"c{i}", "color": list(default_color(i))} for i in range(classes)
        ],
        "ignore_index": IGNORE,
    }
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return root


def preprocessor(channels: int = 3) -> Preprocessor:
    norm = Normalization(scale=255.0, mean=[0.5] * channels, std=[0.25] * channels)
    return Preprocessor(PreprocessConfig(), channels, norm)


def train_ds(
    ds: CanonicalDataset,
    *,
    tile: int = 32,
    preset: str = "medium",
    fg: float = 0.5,
    stems: list[str] | None = None,
    **kw: object,
) -> TrainDataset:
    augment = build_train_augment(
        AugmentConfig(preset=preset), tile_size=tile, foreground_crops=fg, ignore_index=IGNORE
    )
    stems = stems if stems is not None else [s.stem for s in ds.labelled_samples()]
    return TrainDataset(ds, stems, preprocessor(), augment, tile_size=tile, **kw)  # type: ignore[arg-type]


@pytest.fixture
def synthetic(tmp_path: Path) -> CanonicalDataset:
    return CanonicalDataset(make_dataset(tmp_path / "ds", n=6, size=(48, 64), num_classes=3))


@pytest.fixture
def one_square(tmp_path: Path) -> CanonicalDataset:
    """One 128 x 128 image whose only foreground is a 4 x 4 square at (60, 60)."""
    image = np.full((128, 128, 3), 40, np.uint8)
    mask = np.zeros((128, 128), np.uint8)
    mask[60:64, 60:64] = 1
    image[mask == 1] = 220
    return CanonicalDataset(write_dataset(tmp_path / "sq", {"a": (image, mask)}, classes=2))


def test_sample_contract(synthetic):
    ds = train_ds(synthetic, crops_per_image=2)
    assert len(ds) == 12
    item = ds[5]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 32, 32)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (32, 32)
    assert item["meta"] == {"stem": "s002"}
    assert set(torch.unique(item["mask"]).tolist()) <= {0, 1, 2, IGNORE}
    # normalised: (x / 255 - 0.5) / 0.25 lies in [-2, 2]
    assert float(item["image"].min()) >= -2.01 and float(item["image"].max()) <= 2.01
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["mask"].shape == (4, 32, 32)
    with pytest.raises(IndexError):
        ds[12]


def test_crops_per_image_maps_items_to_images(synthetic):
    ds = train_ds(synthetic, crops_per_image=3)
    assert len(ds) == 18
    assert [ds[i]["meta"]["stem"] for i in (0, 2, 3, 17)] == ["s000", "s000", "s001", "s005"]


def test_padding_is_ignore_never_a_class(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (20, 24, 3)).astype(np.uint8)
    mask = rng.integers(0, 2, (20, 24)).astype(np.uint8)
    ds = CanonicalDataset(write_dataset(tmp_path / "small", {"a": (image, mask)}, classes=2))
    train = train_ds(ds, preset="none", crops_per_image=5)
    for i in range(5):
        m = train[i]["mask"]
        assert int((m == IGNORE).sum()) == 32 * 32 - 20 * 24
        assert int(((m == 0) | (m == 1)).sum()) == 20 * 24


def test_foreground_crops_one_always_contain_foreground(one_square):
    ds = train_ds(one_square, preset="none", fg=1.0, crops_per_image=200)
    assert all(bool((ds[i]["mask"] == 1).any()) for i in range(len(ds)))


@pytest.mark.parametrize(("fg", "expected"), [(0.0, 0.130), (0.5, 0.565)])
def test_foreground_crops_share(one_square, fg, expected):
    # A uniform 32-crop of 128 contains the 4-px square for 35 of 97 offsets per axis:
    # p = (35 / 97) ** 2 = 0.130; with fg = 0.5 half the crops always contain it.
    n = 600
    ds = train_ds(one_square, preset="none", fg=fg, crops_per_image=n)
    share = np.mean([bool((ds[i]["mask"] == 1).any()) for i in range(n)])
    bound = 4 * np.sqrt(expected * (1 - expected) / n)  # 4 sigma
    assert abs(share - expected) < bound


def test_cache_avoids_rereading(synthetic, monkeypatch):
    calls: list[str] = []
    real = image_io.read_image

    def counting(path):
        calls.append(Path(path).stem)
        return real(path)

    monkeypatch.setattr(image_io, "read_image", counting)
    ds = train_ds(synthetic, crops_per_image=2)
    for _ in range(2):  # two epochs
        for i in range(len(ds)):
            ds[i]
    assert sorted(calls) == sorted(s.stem for s in synthetic.labelled_samples())
    calls.clear()
    nocache = train_ds(synthetic, crops_per_image=2, cache_mb=0)
    for i in range(len(nocache)):
        nocache[i]
    assert len(calls) == 12


def test_lru_evicts_least_recently_used():
    lru = _LRU(100)
    lru.put("a", 1, 40)
    lru.put("b", 2, 40)
    assert lru.get("a") == 1  # a is now the most recent
    lru.put("c", 3, 40)  # evicts b
    assert lru.get("b") is None and lru.get("a") == 1 and lru.get("c") == 3
    assert lru.bytes == 80
    lru.put("huge", 4, 101)  # larger than the cache: not kept
    assert lru.get("huge") is None


def first_batch(ds: TrainDataset, workers: int, torch_seed: int = 0) -> dict:
    loader = DataLoader(
        ds,
        batch_size=4,
        shuffle=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(torch_seed),
    )
    return next(iter(loader))


@pytest.mark.parametrize("workers", [0, 2])
def test_same_seed_same_first_batch(synthetic, workers):
    a = first_batch(train_ds(synthetic, preset="heavy", seed=3), workers)
    b = first_batch(train_ds(synthetic, preset="heavy", seed=3), workers)
    c = first_batch(train_ds(synthetic, preset="heavy", seed=4), workers)
    assert a["meta"]["stem"] == b["meta"]["stem"]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["image"], c["image"])


def test_workers_have_their_own_streams_and_epochs_differ(one_square):
    ds = train_ds(one_square, preset="heavy", crops_per_image=4, fg=0.0)
    loader = DataLoader(ds, batch_size=1, num_workers=2, generator=torch.Generator().manual_seed(0))
    epoch1 = [b["image"] for b in loader]
    epoch2 = [b["image"] for b in loader]
    # items 0 and 1 are the first draws of worker 0 and worker 1 from the same image
    assert not torch.equal(epoch1[0], epoch1[1])
    # fresh workers in epoch 2 get new torch seeds, hence new crops
    assert not torch.equal(epoch1[0], epoch2[0])


def test_wrong_tile_size_from_extra_transforms(synthetic):
    augment = build_train_augment(
        AugmentConfig(preset="none", transforms=[{"name": "Resize", "height": 16, "width": 16}]),
        tile_size=32,
        foreground_crops=0.5,
    )
    ds = TrainDataset(synthetic, ["s000"], preprocessor(), augment, tile_size=32)
    with pytest.raises(ConfigError, match="16x16 tile instead of 32x32"):
        ds[0]


def test_unknown_stem_and_bad_arguments(synthetic):
    with pytest.raises(DataError, match="no labelled image for stems"):
        train_ds(synthetic, stems=["nope"])
    with pytest.raises(ConfigError, match="crops_per_image"):
        train_ds(synthetic, crops_per_image=0)
    with pytest.raises(ConfigError, match="mosaic"):
        train_ds(synthetic, mosaic=1.5)


def test_mosaic_mixes_several_stems(tmp_path):
    # each image is one flat class (its tag) with a matching grey level
    items = {}
    for k in range(1, 5):
        items[f"t{k}"] = (np.full((48, 48, 3), 50 * k, np.uint8), np.full((48, 48), k, np.uint8))
    ds = CanonicalDataset(write_dataset(tmp_path / "tags", items, classes=5))
    train = train_ds(ds, preset="none", mosaic=1.0, crops_per_image=3)
    for i in range(len(train)):
        item = train[i]
        mask = item["mask"].numpy()
        assert set(np.unique(mask)) == {1, 2, 3, 4}
        grey = item["image"][0].numpy() * 0.25 + 0.5  # undo (x - 0.5) / 0.25
        np.testing.assert_allclose(grey * 255, 50 * mask, atol=1e-3)
    plain = train_ds(ds, preset="none", mosaic=0.0)
    assert all(len(torch.unique(plain[i]["mask"])) == 1 for i in range(len(plain)))


def test_eval_dataset_pads_to_divisor(synthetic):
    ds = EvalDataset(synthetic, ["s000", "s001"], preprocessor(), divisor=32, ignore_index=IGNORE)
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (64, 64)
    meta = item["meta"]
    assert (meta["stem"], meta["height"], meta["width"], meta["pad"]) == ("s000", 48, 64, (16, 0))
    assert meta["original"] == (48, 64) and meta["roi"] == (0, 0, 64, 48)
    assert torch.all(item["mask"][48:] == IGNORE)
    assert torch.all(item["image"][:, 48:] == 0)
    raw = synthetic.read_mask(synthetic.labelled_samples()[0])
    np.testing.assert_array_equal(item["mask"][:48].numpy(), raw)


def test_pad_collate_batches_different_sizes(tmp_path):
    rng = np.random.default_rng(1)
    items = {
        "big": (rng.integers(0, 255, (70, 90, 3)).astype(np.uint8), np.ones((70, 90), np.uint8)),
        "small": (rng.integers(0, 255, (30, 40, 3)).astype(np.uint8), np.ones((30, 40), np.uint8)),
    }
    ds = EvalDataset(
        CanonicalDataset(write_dataset(tmp_path / "sizes", items, classes=2)),
        ["small", "big"],
        preprocessor(),
        divisor=32,
    )
    assert ds[0]["image"].shape == (3, 32, 64)
    batch = next(iter(DataLoader(ds, batch_size=2, collate_fn=pad_collate)))
    assert batch["image"].shape == (2, 3, 96, 96) and batch["mask"].shape == (2, 96, 96)
    small, big = batch["meta"]
    assert small["pad"] == (66, 56) and big["pad"] == (26, 6)
    assert torch.all(batch["mask"][0, 30:] == IGNORE) and torch.all(batch["mask"][0, :30, :40] == 1)
    assert torch.all(batch["image"][0, :, :, 40:] == 0)
    other = partial(pad_collate, ignore_index=7)([ds[0], ds[1]])
    assert int(other["mask"][0, -1, -1]) == 7


def test_mask_values_outside_the_classes_are_a_data_error(tmp_path: Path) -> None:
    image = np.full((40, 40, 3), 90, np.uint8)
    bad = np.zeros((40, 40), np.uint8)
    bad[5:9, 5:9] = 3  # a 2-class dataset: 3 is neither a class nor the ignore index
    ok = np.zeros((40, 40), np.uint8)
    ok[:, :4] = IGNORE
    ds = CanonicalDataset(write_dataset(tmp_path / "d", {"a": (image, bad), "b": (image, ok)}, 2))
    for dataset in (EvalDataset(ds, ["a"], preprocessor()), train_ds(ds, stems=["a"])):
        with pytest.raises(DataError, match=r"a\.png.*mask values \[3\] are not class ids 0\.\.1"):
            dataset[0]
    assert EvalDataset(ds, ["b"], preprocessor())[0]["mask"].max() == IGNORE


def test_foreground_crop_matches_albumentations_and_scans_a_cached_mask_once() -> None:
    import random

    import albumentations as A

    from segflow.data.transforms import _ForegroundCrop

    rng = np.random.default_rng(0)
    mask = np.zeros((300, 280), np.uint8)
    mask[rng.integers(0, 300, 60), rng.integers(0, 280, 60)] = 1
    mask[:5] = IGNORE
    image = rng.random((300, 280, 3), dtype=np.float32)
    cached = mask.copy()
    cached.setflags(write=False)
    ours = _ForegroundCrop(64, 64, ignore_values=[0, IGNORE])
    theirs = A.CropNonEmptyMaskIfExists(64, 64, ignore_values=[0, IGNORE])
    for t in (ours, theirs):
        t.set_random_state(np.random.default_rng(3), random.Random(3))
    for _ in range(30):
        a, b = ours(image=image, mask=cached), theirs(image=image, mask=mask)
        assert np.array_equal(a["mask"], b["mask"]) and np.array_equal(a["image"], b["image"])
        assert (a["mask"] == 1).any() and a["image"].flags.writeable
    assert len(ours._found) == 1 and ours._foreground(cached) is ours._foreground(cached)
    writable = ours(image=image, mask=mask)  # a mask that may change is searched each time
    assert writable["mask"].shape == (64, 64) and len(ours._found) == 1


def test_cached_images_stay_untouched_by_augmentation(synthetic: CanonicalDataset) -> None:
    ds = train_ds(synthetic, preset="heavy", tile=32, mosaic=0.5, crops_per_image=4)
    before = [tuple(np.array(a) for a in ds.load(i)[:2]) for i in range(len(ds.samples))]
    for i in range(len(ds)):
        ds[i]
    for i, (image, mask) in enumerate(before):
        stretched, cached_mask, _ = ds.load(i)
        assert not stretched.flags.writeable and not cached_mask.flags.writeable
        assert np.array_equal(stretched, image) and np.array_equal(cached_mask, mask)
