"""Scores from confusion matrices, cross-checked against torchmetrics on random inputs."""

from __future__ import annotations

import math

import numpy as np
import torch
from torchmetrics.functional.classification import (
    multiclass_confusion_matrix,
    multiclass_jaccard_index,
)

from segflow.evaluate.metrics import scores_from_confusion, summary


def test_known_case() -> None:
    cm = np.array([[5, 1, 0], [2, 2, 0], [0, 0, 0]])  # class 2 absent from truth and prediction
    s = scores_from_confusion(cm)
    assert s["iou"][0] == 5 / 8 and s["iou"][1] == 2 / 5 and math.isnan(s["iou"][2])
    assert s["dice"][1] == 4 / 7
    out = summary(cm, ["bg", "a", "b"])
    assert out["mIoU"] == (5 / 8 + 2 / 5) / 2  # the undefined class is left out of the mean
    assert out["mIoU_fg"] == 2 / 5 and out["acc"] == 7 / 10


def test_matches_torchmetrics_on_random_inputs() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        target = torch.randint(0, 4, (2, 32, 32), generator=gen)
        target[:, :3] = 255
        preds = torch.randint(0, 4, (2, 32, 32), generator=gen)
        cm = multiclass_confusion_matrix(preds, target, 4, ignore_index=255).numpy()
        ours = scores_from_confusion(cm)["iou"]
        theirs = multiclass_jaccard_index(
            preds, target, 4, average="none", ignore_index=255
        ).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)
