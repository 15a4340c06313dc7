"""Preprocessing steps on known cases; augmentation presets, named transforms, eval pad, mosaic."""

from __future__ import annotations

import inspect
import logging

import albumentations as A
import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from segflow.config import AugmentConfig, PreprocessConfig
from segflow.data.transforms import (
    COMMON_TRANSFORMS,
    ChannelsOnly,
    Geometry,
    Normalization,
    Preprocessor,
    apply_augment,
    build_eval_pad,
    build_train_augment,
    mosaic,
    named_transform,
    resolve_normalization,
    seed_augment,
)
from segflow.errors import ConfigError, DataError

IGNORE = 255


def plain(channels: int, scale: float = 255.0) -> Normalization:
    return Normalization(scale=scale, mean=[0.0] * channels, std=[1.0] * channels)


def pre(channels: int = 3, scale: float = 255.0, **cfg: object) -> Preprocessor:
    return Preprocessor(PreprocessConfig(**cfg), channels, plain(channels, scale))


def disc_image(dtype: type = np.uint8, value: int = 200) -> np.ndarray:
    img = np.zeros((100, 120, 3), dtype)
    cv2.circle(img, (70, 40), 20, (value, value, value), -1)
    return img


# -- normalisation ---------------------------------------------------------------------------


def test_uint16_partial_range_normalises_to_zero_mean_unit_std():
    rng = np.random.default_rng(0)
    raw = rng.integers(54, 6616, size=(64, 80, 1)).astype(np.uint16)  # like a 16-bit GeoTIFF
    norm = resolve_normalization(
        PreprocessConfig(normalize="auto"),
        dtype="uint16",
        channels=1,
        raw_mean=[float(raw.mean())],
        raw_std=[float(raw.std())],
        pretrained=True,
    )
    assert norm.scale == 65535.0
    x, _ = Preprocessor(PreprocessConfig(), 1, norm).image(raw)
    z = Preprocessor(PreprocessConfig(), 1, norm).normalize(x)
    assert abs(float(z.mean())) < 1e-3
    assert float(z.std()) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    ("mode", "dtype", "channels", "pretrained", "expect"),
    [
        ("auto", "uint8", 3, True, "imagenet"),
        ("auto", "uint8", 3, False, "dataset"),
        ("auto", "uint16", 3, True, "dataset"),
        ("auto", "uint8", 1, True, "dataset"),
        ("imagenet", "uint8", 3, False, "imagenet"),
        ("dataset", "uint8", 3, True, "dataset"),
        ("none", "uint8", 3, True, "none"),
    ],
)
def test_resolve_normalization_modes(mode, dtype, channels, pretrained, expect):
    raw_mean, raw_std = [51.0] * channels, [25.5] * channels
    norm = resolve_normalization(
        PreprocessConfig(normalize=mode),
        dtype=dtype,
        channels=channels,
        raw_mean=raw_mean,
        raw_std=raw_std,
        pretrained=pretrained,
    )
    scale = 255.0 if dtype == "uint8" else 65535.0
    assert norm.scale == scale
    if expect == "imagenet":
        assert norm.mean == [0.485, 0.456, 0.406]
        assert norm.std == [0.229, 0.224, 0.225]
    elif expect == "dataset":
        assert norm.mean == pytest.approx([51.0 / scale] * channels)
        assert norm.std == pytest.approx([25.5 / scale] * channels)
    else:
        assert norm.mean == [0.0] * channels
        assert norm.std == [1.0] * channels


def test_imagenet_grey_averages_and_other_counts_fail():
    kw = {"dtype": "uint8", "raw_mean": [0.0], "raw_std": [1.0], "pretrained": True}
    grey = resolve_normalization(PreprocessConfig(normalize="imagenet"), channels=1, **kw)
    assert grey.mean == pytest.approx([(0.485 + 0.456 + 0.406) / 3])
    assert grey.std == pytest.approx([(0.229 + 0.224 + 0.225) / 3])
    with pytest.raises(ConfigError, match=r"imagenet needs 1 or 3 channels.*5"):
        resolve_normalization(PreprocessConfig(normalize="imagenet"), channels=5, **kw)


def test_dataset_normalisation_guards():
    cfg = PreprocessConfig(normalize="dataset")
    # a constant channel is not divided by zero
    norm = resolve_normalization(
        cfg, dtype="uint8", channels=2, raw_mean=[10, 20], raw_std=[0, 51], pretrained=False
    )
    assert norm.std == pytest.approx([1.0, 0.2])
    with pytest.raises(ConfigError, match="2 channels but the model takes 5"):
        resolve_normalization(
            cfg, dtype="uint8", channels=5, raw_mean=[1, 2], raw_std=[1, 1], pretrained=False
        )
    with pytest.raises(ValidationError, match="> 0"):
        Normalization(scale=1, mean=[0.0], std=[0.0])
    with pytest.raises(ConfigError, match="normalisation has 3 channels"):
        Preprocessor(PreprocessConfig(), 1, plain(3))


# -- preprocessing steps ---------------------------------------------------------------------


def test_channel_conversion():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (16, 20, 3)).astype(np.uint8)
    grey, _ = pre(1).image(rgb)
    expected = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255
    np.testing.assert_allclose(grey[:, :, 0], expected, atol=1e-6)
    one = rgb[:, :, :1]
    three, _ = pre(3).image(one)
    assert three.shape == (16, 20, 3)
    np.testing.assert_array_equal(three[:, :, 0], three[:, :, 2])
    four = rng.integers(0, 256, (16, 20, 4)).astype(np.uint8)
    with pytest.raises(ConfigError, match="image has 4 channels but the model takes 3"):
        pre(3).image(four)


def test_auto_roi_finds_the_bright_disc():
    x, geom = pre(3, roi="auto").image(disc_image())
    assert geom.roi == (50, 20, 91, 61)
    assert geom.original == (100, 120)
    assert x.shape == (41, 41, 3) and geom.processed == (41, 41)
    # 16-bit, narrow range: the threshold is read on the image's own range
    img16 = disc_image(np.uint16, 3000) + np.uint16(54)
    _, geom16 = pre(3, 65535.0, roi="auto").image(img16)
    assert geom16.roi == (50, 20, 91, 61)
    # nothing bright: the whole image
    _, dark = pre(3, roi="auto").image(np.zeros((30, 40, 3), np.uint8))
    assert dark.roi == (0, 0, 40, 30)


def test_fixed_roi_is_clipped_and_must_overlap():
    _, geom = pre(3, roi=[100, 10, 500, 90]).image(disc_image())
    assert geom.roi == (100, 10, 120, 90)
    with pytest.raises(ConfigError, match="outside the 120x100 image"):
        pre(3, roi=[200, 0, 300, 50]).image(disc_image())


def test_resize_shape_and_interpolation():
    stripes = np.zeros((32, 64, 1), np.uint8)
    stripes[:, ::4] = 255  # 1, 0, 0, 0: INTER_AREA averages to 0.25, INTER_LINEAR samples 0
    small, geom = pre(1, resize=[8, 16]).image(stripes)
    assert small.shape == (8, 16, 1) and geom.processed == (8, 16)
    np.testing.assert_allclose(small, 0.25, atol=1e-6)
    step = np.zeros((8, 8, 1), np.uint8)
    step[:, 4:] = 255
    big, _ = pre(1, resize=[32, 32]).image(step)
    assert big.shape == (32, 32, 1)
    assert np.any((big > 0.1) & (big < 0.9))  # linear, not nearest
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:] = 2
    mask[0, 0] = IGNORE
    _, g = pre(1, resize=[32, 32]).image(step)
    resized = pre(1, resize=[32, 32]).mask(mask, g)
    assert resized.shape == (32, 32)
    assert set(np.unique(resized)) == {0, 2, IGNORE}


def test_mask_must_match_its_image():
    _, geom = pre(3).image(disc_image())
    with pytest.raises(DataError, match="mask is 10x10 but its image is 120x100"):
        pre(3).mask(np.zeros((10, 10), np.uint8), geom)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    ("dtype", "scale", "gain"), [(np.uint8, 255.0, 1), (np.uint16, 65535.0, 20)]
)
def test_clahe_raises_contrast(channels, dtype, scale, gain):
    rng = np.random.default_rng(2)
    low = rng.normal(120, 5, (128, 128, 1)).clip(0, 255)
    raw = np.repeat((low * gain).astype(dtype), channels, axis=2)
    before, _ = pre(channels, scale).image(raw)
    after, _ = pre(channels, scale, clahe=True, clahe_clip=2.0, clahe_grid=8).image(raw)
    assert after.dtype == np.float32
    assert float(after.std()) > 2 * float(before.std())


def test_diffusion_smooths_noise_and_keeps_the_edge():
    rng = np.random.default_rng(3)
    clean = np.zeros((64, 64, 1), np.float32)
    clean[:, 32:] = 200
    noisy = (clean + rng.normal(0, 10, clean.shape)).clip(0, 255).astype(np.uint8)
    out, _ = pre(1, diffusion_iterations=10, diffusion_kappa=30, diffusion_gamma=0.2).image(noisy)
    out = out[:, :, 0] * 255
    flat_before = noisy[:, :28, 0].astype(np.float32).std()
    assert out[:, :28].std() < 0.5 * flat_before
    edge_before = float(noisy[:, 32, 0].mean()) - float(noisy[:, 31, 0].mean())
    edge_after = float(out[:, 32].mean() - out[:, 31].mean())
    assert edge_after > 0.8 * edge_before


def test_sixteen_bit_input_keeps_precision():
    rng = np.random.default_rng(4)
    raw = rng.integers(54, 6616, size=(40, 50, 1)).astype(np.uint16)
    x, _ = pre(1, 65535.0).image(raw)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(np.rint(x * 65535).astype(np.uint16), raw)


@pytest.mark.parametrize(
    ("dtype", "channels", "cfg", "table"),
    [
        (np.uint8, 3, {}, True),
        (np.uint8, 3, {"roi": "auto"}, True),  # on the crop
        (np.uint8, 1, {"roi": [5, 7, 90, 60]}, True),  # RGB -> grey, then the table
        (np.uint8, 3, {"resize": [48, 64]}, False),
        (np.uint8, 3, {"clahe": True}, False),
        (np.uint16, 3, {}, True),  # 65,536 levels
        (np.uint16, 3, {"roi": "auto"}, True),  # ROI on the image's own range
        (np.uint16, 3, {"resize": [48, 64]}, False),
        (np.float32, 3, {}, False),
    ],
)
def test_network_input_equals_image_normalize_transpose(dtype, channels, cfg, table, monkeypatch):
    raw = disc_image(dtype, 200 if dtype == np.uint8 else 50000)
    raw[::7, ::5] = np.array([13, 250, 97], dtype)[None] * (1 if dtype == np.uint8 else 250)
    norm = Normalization(
        scale=255.0 if dtype == np.uint8 else 65535.0,
        mean=[0.485, 0.456, 0.406][:channels] if channels == 3 else [0.45],
        std=[0.229, 0.224, 0.225][:channels] if channels == 3 else [0.226],
    )
    p = Preprocessor(PreprocessConfig(**cfg), channels, norm)
    x, geom = p.image(raw)
    expected = p.normalize(x).transpose(2, 0, 1)
    if table:  # the table path must not fall back to the arithmetic one

        def no_arithmetic(raw):
            raise AssertionError("image() called")

        monkeypatch.setattr(p, "image", no_arithmetic)
    source, got_geom = p.network_input(raw)
    got = source.array()
    assert got.dtype == np.float32 and got.flags.c_contiguous
    assert got_geom == geom and source.shape == expected.shape
    np.testing.assert_array_equal(got, expected)  # bit for bit, whichever path ran
    # Bands of rows, written into a wider zeroed buffer as the tiler does, match too.
    c, h, w = expected.shape
    for y0, y1 in ((0, 1), (3, 17), (h - 5, h)):
        buf = np.zeros((c, y1 - y0, w + 7), np.float32)
        source.rows(y0, y1, out=buf[:, :, :w])
        np.testing.assert_array_equal(buf[:, :, :w], expected[:, y0:y1])
        assert not buf[:, :, w:].any()


@pytest.mark.parametrize("classes", [1, 2])
def test_restore_round_trip_gives_the_original_frame(classes):
    raw = disc_image()
    p = pre(3, roi="auto", resize=[64, 64])
    x, geom = p.image(raw)
    fg = (x[:, :, 0] > 0.5).astype(np.float32)  # identity "model": bright = foreground
    probs = fg[None] if classes == 1 else np.stack([1 - fg, fg])
    back = p.restore(probs, geom)
    assert back.shape == (classes, 100, 120)
    truth = raw[:, :, 0] > 0
    pred = back[-1] > 0.5
    assert (pred & truth).sum() / (pred | truth).sum() > 0.95
    x0, y0, x1, y1 = geom.roi
    outside = np.ones((100, 120), bool)
    outside[y0:y1, x0:x1] = False
    assert np.all(back[-1][outside] == 0)
    if classes == 2:
        assert np.all(back[0][outside] == 1)
        np.testing.assert_allclose(back.sum(axis=0), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="do not match the processed size"):
        p.restore(np.zeros((2, 10, 10), np.float32), geom)


def test_geometry_is_frozen():
    geom = Geometry(original=(4, 4), roi=(0, 0, 4, 4), processed=(4, 4))
    with pytest.raises(AttributeError):
        geom.roi = (1, 1, 2, 2)  # type: ignore[misc]


# -- augmentation ----------------------------------------------------------------------------


def leaves(compose: A.BaseCompose) -> list[object]:
    """Top-level transforms after pad and crop, with OneOf children flattened."""
    out: list[object] = []
    for t in list(compose.transforms)[2:]:
        out.extend(t.transforms if isinstance(t, A.OneOf) else [t])
    return out


def test_presets_nest():
    names = {}
    for preset in ("none", "light", "medium", "heavy"):
        aug = build_train_augment(AugmentConfig(preset=preset), tile_size=32, foreground_crops=0.5)
        names[preset] = [
            type(t.transforms[0] if isinstance(t, ChannelsOnly) else t).__name__
            for t in leaves(aug)
        ]
    assert names["none"] == []
    assert names["light"] == ["HorizontalFlip", "RandomBrightnessContrast"]
    assert names["medium"][:2] == names["light"]
    assert {"VerticalFlip", "RandomRotate90", "Affine", "RandomGamma", "GaussianBlur"} <= set(
        names["medium"]
    )
    assert names["heavy"][: len(names["medium"])] == names["medium"]
    assert {"ElasticTransform", "GridDistortion", "OpticalDistortion", "ImageCompression"} <= set(
        names["heavy"]
    )
    assert {"ColorJitter", "GaussNoise"} <= set(names["heavy"])


@pytest.mark.parametrize("channels", [1, 3, 5])
@pytest.mark.parametrize("preset", ["light", "medium", "heavy"])
def test_every_preset_transform_runs_on_float32(preset, channels, caplog):
    aug = build_train_augment(AugmentConfig(preset=preset), tile_size=32, foreground_crops=0.5)
    seed_augment(aug, np.random.default_rng(0))
    rng = np.random.default_rng(5)
    image = rng.random((32, 32, channels)).astype(np.float32)
    mask = rng.integers(0, 3, (32, 32)).astype(np.uint8)
    caplog.set_level(logging.DEBUG, logger="segflow.data")
    for t in leaves(aug):
        out = t(image=image.copy(), mask=mask.copy(), force_apply=True)
        assert out["image"].dtype == np.float32, t
        assert out["image"].shape == image.shape, t
        assert out["mask"].shape == mask.shape, t
        assert np.isfinite(out["image"]).all(), t
        if isinstance(t, ChannelsOnly) and channels not in t.channels:
            np.testing.assert_array_equal(out["image"], image)  # skipped
    if preset == "heavy" and channels != 3:
        assert "skipping ColorJitter" in caplog.text
    if preset == "heavy" and channels == 5:
        assert "skipping ImageCompression" in caplog.text


def test_small_images_are_padded_with_ignore():
    aug = build_train_augment(AugmentConfig(preset="none"), tile_size=32, foreground_crops=0.5)
    image = np.full((20, 24, 3), 0.5, np.float32)
    mask = np.ones((20, 24), np.uint8)
    out = aug(image=image, mask=mask)
    assert out["image"].shape == (32, 32, 3)
    assert int((out["mask"] == IGNORE).sum()) == 32 * 32 - 20 * 24
    assert int((out["image"][:, :, 0] == 0).sum()) == 32 * 32 - 20 * 24


def test_seed_augment_is_reproducible_and_uncorrelated():
    image = np.arange(16, dtype=np.float32).reshape(4, 4, 1) / 16

    def outcomes(seed: int) -> list[tuple[bool, bool]]:
        aug = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
        seed_augment(aug, np.random.default_rng(seed))
        res = []
        for _ in range(200):
            corner = aug(image=image)["image"][0, 0, 0] * 16
            res.append((corner in (3, 15), corner in (12, 15)))
        return res

    first = outcomes(7)
    assert first == outcomes(7)
    assert first != outcomes(8)
    # A.Compose(seed=...) gives both flips the same stream; a shared stream gives all 4 cases
    assert all(first.count(case) > 20 for case in [(0, 0), (0, 1), (1, 0), (1, 1)])


def test_apply_augment_works_on_the_image_range():
    rng = np.random.default_rng(6)
    narrow = (rng.integers(54, 6616, (32, 32, 1)) / 65535).astype(np.float32)  # 0.001..0.1
    aug = A.Compose([A.RandomBrightnessContrast(0.1, 0.1, p=1)])
    seed_augment(aug, rng)
    lo, hi = float(narrow.min()), float(narrow.max())
    for _ in range(20):
        out, _ = apply_augment(aug, narrow, np.zeros((32, 32), np.uint8))
        assert float(out.min()) > lo - 0.25 * (hi - lo)
        assert float(out.max()) < hi + 0.25 * (hi - lo)
    wide = rng.random((32, 32, 3)).astype(np.float32) * 5  # float data beyond 0..1
    blur = A.Compose([A.GaussianBlur(sigma_limit=(0.5, 0.5), p=1)])
    out, _ = apply_augment(blur, wide, np.zeros((32, 32), np.uint8))
    assert float(out.max()) > 3.0  # not clipped to 1


# -- named transforms ------------------------------------------------------------------------

GEOMETRIC_SPECS = {
    "Affine": {"rotate": (20, 20), "scale": (0.9, 0.9)},
    "ShiftScaleRotate": {"rotate_limit": (20, 20)},
    "Rotate": {"limit": (30, 30)},
    "ElasticTransform": {"alpha": 300, "sigma": 10},
    "GridDistortion": {"distort_limit": 0.3},
    "OpticalDistortion": {"distort_limit": 0.3},
}


@pytest.mark.parametrize("name", COMMON_TRANSFORMS)
def test_named_transforms_build_and_run_aligned(name):
    cls = getattr(A, name)
    spec = {"name": name, "p": 1.0, **GEOMETRIC_SPECS.get(name, {})}
    if "interpolation" in inspect.signature(cls).parameters:
        spec["interpolation"] = cv2.INTER_NEAREST  # so the image can be compared with the mask
    transform = named_transform(spec)
    aug = A.Compose([transform])
    seed_augment(aug, np.random.default_rng(0))
    yy, xx = np.mgrid[0:64, 0:64]
    mask = ((yy // 8 + 2 * (xx // 8)) % 5).astype(np.uint8)
    image = np.repeat(mask[:, :, None].astype(np.float32) / 4, 3, axis=2)
    for _ in range(3):
        out = aug(image=image, mask=mask)
        assert out["image"].dtype == np.float32 and out["image"].shape == (64, 64, 3)
        if issubclass(cls, A.DualTransform):
            valid = out["mask"] != IGNORE
            assert valid.mean() > 0.5
            np.testing.assert_array_equal(
                np.rint(out["image"][:, :, 0] * 4)[valid], out["mask"][valid]
            )


def test_named_geometric_fills_mask_with_ignore(caplog):
    rot = A.Compose([named_transform({"name": "Rotate", "limit": (45, 45), "p": 1.0})])
    out = rot(image=np.ones((32, 32, 3), np.float32), mask=np.ones((32, 32), np.uint8))
    assert out["mask"][0, 0] == IGNORE
    explicit = named_transform({"name": "Rotate", "fill_mask": 0}, ignore_index=7)
    assert explicit.fill_mask == 0
    caplog.set_level(logging.WARNING, logger="segflow.data")
    named_transform({"name": "ShiftScaleRotate"})  # albumentations warns; we log it
    assert "special case of Affine" in caplog.text


def test_named_transform_errors():
    with pytest.raises(ConfigError, match=r"unknown transform 'Clahe' \(did you mean CLAHE\?\)"):
        named_transform({"name": "Clahe"})
    for not_a_transform in ("Compose", "check_version", "__class__", "BasicTransform"):
        with pytest.raises(ConfigError, match="unknown transform"):
            named_transform({"name": not_a_transform})
    with pytest.raises(
        ConfigError, match=r"no parameter 'clip_limt' \(did you mean clip_limit\?\)"
    ):
        named_transform({"name": "CLAHE", "clip_limt": 2.0})
    with pytest.raises(ConfigError, match=r"transform CLAHE: .*clip_limit.*must be >= 1"):
        named_transform({"name": "CLAHE", "clip_limit": -1})
    with pytest.raises(ConfigError, match=r"transform GaussNoise: .*less than or equal to 1"):
        named_transform({"name": "GaussNoise", "p": 2})
    with pytest.raises(ConfigError, match="cannot be used here: segflow normalises"):
        named_transform({"name": "Normalize"})
    with pytest.raises(ConfigError, match="needs a 'name'"):
        named_transform({"p": 0.5})


def test_named_transform_from_yaml_values_and_channel_guard():
    clahe = named_transform(
        {"name": "CLAHE", "p": 0.3, "clip_limit": 2.0, "tile_grid_size": [4, 4]}
    )
    assert isinstance(clahe, ChannelsOnly) and clahe.channels == (1, 3)
    inner = clahe.transforms[0]
    assert isinstance(inner, A.CLAHE) and inner.p == 0.3
    five = np.random.default_rng(0).random((16, 16, 5)).astype(np.float32)
    out = clahe(image=five, mask=np.zeros((16, 16), np.uint8), force_apply=True)
    np.testing.assert_array_equal(out["image"], five)
    aug = build_train_augment(
        AugmentConfig(preset="none", transforms=[{"name": "HorizontalFlip", "p": 1.0}]),
        tile_size=16,
        foreground_crops=0.0,
    )
    assert isinstance(aug.transforms[-1], A.HorizontalFlip)


# -- evaluation pad and mosaic ---------------------------------------------------------------


def test_eval_pad_to_divisor_top_left():
    pad = build_eval_pad(32, ignore_index=IGNORE)
    image = np.ones((50, 70, 3), np.float32)
    out = pad(image=image, mask=np.ones((50, 70), np.uint8))
    assert out["image"].shape == (64, 96, 3)
    np.testing.assert_array_equal(out["image"][:50, :70], image)
    assert np.all(out["image"][50:] == 0) and np.all(out["image"][:, 70:] == 0)
    assert np.all(out["mask"][50:] == IGNORE) and np.all(out["mask"][:, 70:] == IGNORE)
    assert np.all(out["mask"][:50, :70] == 1)
    same = pad(image=np.ones((64, 32, 1), np.float32), mask=np.ones((64, 32), np.uint8))
    assert same["image"].shape == (64, 32, 1)


def test_mosaic_uses_all_four_parts_aligned():
    rng = np.random.default_rng(0)
    parts = [
        (np.full((40, 40, 2), k, np.float32), np.full((40, 40), k, np.uint8)) for k in range(1, 5)
    ]
    for _ in range(20):
        image, mask = mosaic(parts, 32, rng)
        assert image.shape == (32, 32, 2) and mask.shape == (32, 32)
        assert set(np.unique(mask)) == {1, 2, 3, 4}
        np.testing.assert_array_equal(image[:, :, 0], mask)
    small = [(np.ones((4, 4, 1), np.float32), np.ones((4, 4), np.uint8))] * 4
    _, mask = mosaic(small, 32, rng)
    assert set(np.unique(mask)) == {1, IGNORE}
    with pytest.raises(ValueError, match="4 parts"):
        mosaic(parts[:3], 32, rng)
    with pytest.raises(ValueError, match="channel counts"):
        mosaic([*parts[:3], (np.ones((40, 40, 3), np.float32), parts[3][1])], 32, rng)
