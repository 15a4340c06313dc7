"""Label-quality scores and error kinds on hand-made probability maps (no model)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from segflow.review import scoring
from segflow.review.scoring import (
    BOUNDARY,
    EXTRA,
    MISSING,
    WRONG,
    class_probabilities,
    label_quality,
    score_image,
    softmin,
    uncertainty,
)

SIZE = 64


def _truth() -> np.ndarray:
    """Background, a disc of class 1 (r 9) and a square of class 2 (14 px)."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cv2.circle(mask, (18, 20), 9, 1, -1)
    mask[36:50, 38:52] = 2
    return mask


def _confident(mask: np.ndarray, k: int = 3, p: float = 0.96) -> np.ndarray:
    """Probabilities a model sure of ``mask`` gives: p for its class, the rest shared."""
    probs = np.full((k, *mask.shape), (1 - p) / (k - 1), np.float32)
    np.put_along_axis(probs, mask[None].astype(np.intp), p, axis=0)
    return probs


def test_softmin_matches_the_formula_by_hand() -> None:
    # (0.2 e^-2 + 0.9 e^-9) / (e^-2 + e^-9) = 0.200638... with T = 0.1
    by_hand = (0.2 * math.exp(-2) + 0.9 * math.exp(-9)) / (math.exp(-2) + math.exp(-9))
    assert softmin(np.array([0.2, 0.9]), 0.1) == pytest.approx(by_hand, abs=1e-12)
    assert by_hand == pytest.approx(0.200638, abs=1e-6)
    # A high temperature tends to the mean, a low one to the minimum.
    values = np.array([0.1, 0.5, 0.9])
    assert softmin(values, 1e3) == pytest.approx(0.5, abs=1e-3)
    assert softmin(values, 1e-3) == pytest.approx(0.1, abs=1e-6)
    assert math.isnan(softmin(np.array([]), 0.1))


def test_perfect_labels_score_near_one_and_a_corrupted_copy_lower() -> None:
    truth = _truth()
    probs = _confident(truth)
    perfect = score_image(probs, truth)
    assert perfect.score == pytest.approx(0.96, abs=1e-6)
    assert perfect.kind == "none" and perfect.pixels == 0 and not perfect.kinds.any()
    corrupted = truth.copy()
    corrupted[36:50, 38:52] = 0  # the square left unlabelled
    assert label_quality(probs, corrupted) < 0.1 < perfect.score


def test_ignored_pixels_are_left_out() -> None:
    truth = _truth()
    given = truth.copy()
    given[truth == 2] = 0  # wrong there ...
    given[truth == 2] = 255  # ... unless those pixels are ignored
    assert label_quality(_confident(truth), given) == pytest.approx(0.96, abs=1e-6)
    assert score_image(_confident(truth), given).pixels == 0


def _only_kind(given: np.ndarray, truth: np.ndarray, kind: str, pixels: int) -> None:
    result = score_image(_confident(truth), given)
    assert [c.kind for c in result.components] == [kind], result.components
    assert result.kind == kind
    assert result.pixels == pixels
    assert (result.kinds == scoring.KINDS.index(kind) + 1).sum() == pixels
    assert result.score < 0.1


def test_an_object_missing_from_the_labels() -> None:
    truth = _truth()
    given = truth.copy()
    given[truth == 2] = 0
    _only_kind(given, truth, MISSING, int((truth == 2).sum()))


def test_an_extra_object_in_the_labels() -> None:
    truth = _truth()
    given = truth.copy()
    cv2.circle(given, (48, 12), 6, 1, -1)
    _only_kind(given, truth, EXTRA, int((given != truth).sum()))


def test_a_wrong_class() -> None:
    truth = _truth()
    given = truth.copy()
    given[truth == 2] = 1
    _only_kind(given, truth, WRONG, int((truth == 2).sum()))


@pytest.mark.parametrize("grow", [True, False])
def test_a_boundary_off_by_two_pixels(grow: bool) -> None:
    truth = _truth()
    disc = (truth == 1).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    moved = cv2.dilate(disc, kernel) if grow else cv2.erode(disc, kernel)
    given = truth.copy()
    given[(disc == 1) & (moved == 0)] = 0
    given[(moved == 1) & (truth == 0)] = 1
    _only_kind(given, truth, BOUNDARY, int((given != truth).sum()))


def test_an_object_missing_beside_a_labelled_one_is_not_a_boundary() -> None:
    truth = _truth()
    cv2.circle(truth, (30, 20), 8, 1, -1)  # a second disc touching the first
    given = _truth()  # ... that the labels lack
    result = score_image(_confident(truth), given)
    assert [c.kind for c in result.components] == [MISSING]
    assert result.pixels == int((given != truth).sum())


def test_the_image_kind_is_the_one_with_most_pixels() -> None:
    truth = _truth()
    given = truth.copy()
    given[truth == 2] = 0  # 196 px missing
    cv2.circle(given, (48, 12), 3, 1, -1)  # 29 px extra
    result = score_image(_confident(truth), given)
    assert sorted(c.kind for c in result.components) == [EXTRA, MISSING]
    assert result.kind == MISSING
    assert result.by_kind == {MISSING: 196, EXTRA: int((given != truth).sum()) - 196}


def test_unsure_disagreement_is_not_suspicious() -> None:
    truth = _truth()
    given = truth.copy()
    given[truth == 2] = 0
    soft = _confident(truth, p=0.45)  # the model prefers class 2 but not above CONFIDENT
    result = score_image(soft, given)
    assert result.pixels == 0 and result.kind == "none"


def test_binary_probabilities_become_two_classes() -> None:
    fg = np.array([[[0.9, 0.2]]], np.float32)
    both = class_probabilities(fg, binary=True)
    assert both.shape == (2, 1, 2)
    np.testing.assert_allclose(both[:, 0, 0], [0.1, 0.9], atol=1e-6)
    with pytest.raises(ValueError, match="1 x H x W"):
        class_probabilities(np.zeros((2, 1, 1), np.float32), binary=True)


def test_mask_values_outside_the_classes_are_refused() -> None:
    truth = _truth()
    truth[0, 0] = 7
    with pytest.raises(ValueError, match=r"mask values \[7\]"):
        score_image(_confident(_truth()), truth)


def test_uncertainty_entropy_and_member_disagreement() -> None:
    truth = _truth()
    sure = _confident(truth, p=0.999)
    flat = np.full_like(sure, 1 / 3)
    assert uncertainty([sure])[0] < 0.02
    assert uncertainty([flat])[0] == pytest.approx(1.0, abs=1e-5)
    other = _confident(np.where(truth == 2, 1, truth).astype(np.uint8), p=0.999)
    agree, _ = uncertainty([sure, sure])
    disagree, heat = uncertainty([sure, other])
    assert agree < 0.01
    assert heat[truth == 2].min() > 0.5 and heat[truth != 2].max() < 0.01
    assert disagree == pytest.approx(heat.mean())
