"""``data.preprocess.normalize: image``: every image standardised by its own statistics.

The point of the mode is invariance to an image's brightness and contrast, so the tests check
that an affine change of the intensities leaves the network input (and a trained bundle's
prediction) unchanged, at training and at inference.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from segflow.config import PreprocessConfig
from segflow.data.preprocess import Preprocessor, resolve_normalization, standardise
from segflow.data.splits import make_splits
from segflow.infer.predictor import Predictor
from segflow.models.bundle import read_bundle_meta
from segflow.train.runner import TrainResult, train
from tests.fixtures.synthetic import make_dataset

TINY = Path(__file__).parents[1] / "fixtures" / "configs" / "tiny.yaml"


def _pre() -> Preprocessor:
    cfg = PreprocessConfig(normalize="image")
    norm = resolve_normalization(
        cfg, dtype="uint8", channels=3, raw_mean=[90.0] * 3, raw_std=[20.0] * 3, pretrained=False
    )
    assert norm.mean == [0.0] * 3 and norm.std == [1.0] * 3  # the identity: done per image
    return Preprocessor(cfg, 3, norm)


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(40, 120, (32, 40, 3)).astype(np.uint8)


def test_network_input_has_zero_mean_unit_std_per_channel() -> None:
    pre = _pre()
    net, _ = pre.network_input(_image())
    chw = net.array()
    assert chw.shape == (3, 32, 40) and chw.dtype == np.float32
    np.testing.assert_allclose(chw.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(chw.std(axis=(1, 2)), 1.0, atol=1e-4)
    image, _ = pre.image(_image())  # the training path gives the same values
    np.testing.assert_allclose(pre.normalize(image).transpose(2, 0, 1), chw, atol=1e-6)
    constant = standardise(np.full((4, 4, 1), 0.5, np.float32))
    assert np.all(constant == 0)


def test_brightness_and_contrast_do_not_change_the_input() -> None:
    pre = _pre()
    raw = _image()
    brighter = np.clip(raw.astype(np.float64) * 2.0 + 10, 0, 255).astype(np.uint8)  # no clipping
    a, _ = pre.network_input(raw)
    b, _ = pre.network_input(brighter)
    np.testing.assert_allclose(a.array(), b.array(), atol=1e-4)
    dataset_mode = Preprocessor(PreprocessConfig(normalize="none"), 3, pre.normalization)
    c, _ = dataset_mode.network_input(brighter)
    assert not np.allclose(a.array(), c.array(), atol=0.1)


@pytest.mark.parametrize("stretch", [True, False])
def test_overlays_show_standardised_images_stretched(tmp_path: Path, stretch: bool) -> None:
    import torch

    from segflow.data.dataset import ClassInfo
    from segflow.train.callbacks import Overlays

    grey = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (32, 1))
    image = standardise(np.repeat(grey[:, :, None], 3, axis=2))  # values about -1.7..1.7
    classes = [
        ClassInfo(id=0, name="bg", color=[0, 0, 0]),
        ClassInfo(id=1, name="fg", color=[255, 0, 0]),
    ]
    sheets = Overlays(tmp_path, classes, [0.0] * 3, [1.0] * 3, every=1, stretch=stretch)
    item = {
        "image": torch.from_numpy(image.transpose(2, 0, 1).copy()),
        "mask": torch.zeros(32, 64, dtype=torch.long),
        "pred": torch.zeros(32, 64, dtype=torch.long),
    }
    trainer = SimpleNamespace(
        current_epoch=0, max_epochs=1, sanity_checking=False, is_global_zero=True
    )
    sheets.on_validation_epoch_end(trainer, SimpleNamespace(captured=[item]))  # type: ignore[arg-type]
    shown = cv2.imread(str(tmp_path / "images" / "epoch_000.jpg"), cv2.IMREAD_GRAYSCALE)[:32, :64]
    error = np.abs(shown.astype(float) - grey * 255).mean()  # the ramp as it was
    assert bool(error < 6) is stretch, error  # stretched: 0.6; clipped: 52


@pytest.mark.slow
def test_bundle_trained_per_image_predicts_the_same_on_a_brighter_image(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", n=8, size=(48, 48), num_classes=2, seed=3)
    make_splits(ds, val=0.25, test=0.0, seed=0)
    result = train(
        TINY,
        data=ds,
        name="img",
        overrides=[f"train.output={tmp_path / 'runs'}", "tracking.enabled=true",
                   "data.preprocess.normalize=image"],
    )  # fmt: skip
    assert isinstance(result, TrainResult)
    meta = read_bundle_meta(result.bundle)
    assert meta.preprocess["normalize"] == "image"
    assert meta.normalization.mean == [0.0] * 3 and meta.normalization.std == [1.0] * 3
    assert list((result.run_dir / "images").glob("epoch_*.jpg"))  # overlay sheets drawn
    predictor = Predictor.from_bundles(result.bundle, backend="torch", device="cpu")
    raw = _image(1)
    brighter = (raw.astype(np.float64) * 2.0 + 10).astype(np.uint8)  # exact: 90..250
    probs = [predictor.predict_array(x, probs=True).probs for x in (raw, brighter)]
    assert probs[0] is not None and probs[1] is not None
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-3)
