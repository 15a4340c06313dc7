"""Evaluation tests; helpers: a bundle folder holding only bundle.yaml, a fake Predictor."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from segflow.data.dataset import ClassInfo, make_classes
from segflow.data.image_io import read_mask
from segflow.models.bundle import BundleMeta, InferenceSettings, Normalization


def write_bundle(path: Path, names: list[str], name: str = "model") -> Path:
    """A bundle folder with a valid bundle.yaml and no weights (enough for fakes and errors)."""
    k = len(names)
    meta = BundleMeta(
        name=name,
        task="binary" if k == 2 else "multiclass",
        classes=make_classes(names),
        arch="Unet",
        encoder="resnet18",
        in_channels=3,
        out_channels=1 if k == 2 else k,
        normalization=Normalization(scale=255.0, mean=[0.5] * 3, std=[0.25] * 3),
        input_dtype="uint8",
        tile_size=64,
        inference=InferenceSettings(tile_size=64),
        weights_sha256="ab" * 32,
    )
    path.mkdir(parents=True, exist_ok=True)
    (path / "bundle.yaml").write_text(yaml.safe_dump(meta.model_dump(mode="json")))
    return path


@dataclass
class FakePrediction:
    labels: np.ndarray


class FakePredictor:
    """Returns each image's truth with a known corruption, chosen per stem.

    ``plan[stem]``: ``perfect`` (default), ``blank`` (all background), ``shift`` (rolled 5 px
    right), ``swap`` (classes 1 and 2 exchanged). Ignored truth pixels are predicted as class 1,
    so a test sees whether they are (wrongly) counted. Every (truth, prediction) pair is kept.
    """

    def __init__(self, root: Path, classes: list[ClassInfo], plan: dict[str, str] | None = None):
        self.root = root
        self.classes = classes
        self.plan = plan or {}
        self.seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def predict_array(
        self, image: np.ndarray, *, probs: bool = False, stem: str = ""
    ) -> FakePrediction:
        truth = read_mask(self.root / "masks" / f"{stem}.png")
        assert truth.shape == image.shape[:2]
        pred = truth.copy()
        pred[truth == 255] = 1
        kind = self.plan.get(stem, "perfect")
        if kind == "blank":
            pred[:] = 0
        elif kind == "shift":
            pred = np.roll(pred, 5, axis=1)
        elif kind == "swap":
            pred = np.where(pred == 1, 2, np.where(pred == 2, 1, pred)).astype(np.uint8)
        self.seen[stem] = (truth, pred)
        return FakePrediction(pred)
