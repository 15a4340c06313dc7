"""Confusion matrices and the aggregated metrics: hand-made cases, then torchmetrics and SMP.

Where the libraries differ from segflow, the difference is asserted (so it stays documented):
both give a class absent from truth and prediction a number (torchmetrics 0 per class; SMP its
``zero_division``, counted in its macro means), segflow gives NaN and leaves it out.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from segmentation_models_pytorch import metrics as smp_metrics
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_jaccard_index,
    multiclass_precision,
    multiclass_recall,
)

from segflow.evaluate.confusion import ConfusionAccumulator, confusion
from segflow.evaluate.metrics import (
    evaluation_metrics,
    json_ready,
    micro_scores,
    scores_from_confusion,
)

NAMES = ["bg", "a", "b", "c"]


def _hand_case() -> tuple[np.ndarray, np.ndarray]:
    truth = np.array([[0, 0, 1], [1, 2, 255]], np.uint8)
    pred = np.array([[0, 1, 1], [0, 2, 2]], np.uint8)
    return truth, pred


# -- confusion -------------------------------------------------------------------------------------
def test_confusion_counts_valid_pixels_only() -> None:
    truth, pred = _hand_case()
    cm = confusion(truth, pred, 4)
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0] = expected[0, 1] = expected[1, 1] = expected[1, 0] = expected[2, 2] = 1
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64


def test_roi_leaves_pixels_out() -> None:
    truth, pred = _hand_case()
    roi = np.array([[1, 0, 1], [1, 1, 1]], bool)  # drops the (0 -> 1) false positive
    cm = confusion(truth, pred, 4, roi=roi)
    assert cm.sum() == 4 and cm[0, 1] == 0 and cm[1, 0] == 1
    acc = ConfusionAccumulator(4)
    acc.update(truth, pred, roi, stem="x")
    assert acc.outside_roi_pixels == 1 and acc.ignored_pixels == 1 and acc.stems == ["x"]


def test_ignore_index_is_configurable_and_pred_there_is_not_checked() -> None:
    truth = np.array([[0, 1], [9, 9]], np.uint8)
    pred = np.array([[0, 1], [200, 7]], np.uint8)  # values under ignored pixels never count
    cm = confusion(truth, pred, 2, ignore_index=9)
    np.testing.assert_array_equal(cm, [[1, 0], [0, 1]])


@pytest.mark.parametrize(
    ("truth", "pred", "needle"),
    [
        ([[0, 1]], [[0, 3]], "prediction holds value 3"),
        ([[0, 5]], [[0, 1]], "truth holds value 5"),
        ([[0, 1]], [[0, 1, 1]], "one shape"),
    ],
)
def test_bad_values_raise(truth: list, pred: list, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        confusion(np.array(truth, np.uint8), np.array(pred, np.uint8), 3)


def test_accumulator_sums_and_keeps_each_image() -> None:
    rng = np.random.default_rng(0)
    acc = ConfusionAccumulator(3)
    mats = []
    for i in range(4):
        t = rng.integers(0, 3, (8, 9)).astype(np.uint8)
        t[0] = 255
        p = rng.integers(0, 3, (8, 9)).astype(np.uint8)
        mats.append(acc.update(t, p, stem=f"s{i}"))
    np.testing.assert_array_equal(acc.total, np.sum(mats, axis=0))
    assert acc.stack.shape == (4, 3, 3) and acc.ignored_pixels == 4 * 9
    assert ConfusionAccumulator(3).stack.shape == (0, 3, 3)


# -- metrics on hand-made cases --------------------------------------------------------------------
def test_hand_case_scores_and_aggregates() -> None:
    truth, pred = _hand_case()
    cm = confusion(truth, pred, 4)
    s = scores_from_confusion(cm)
    np.testing.assert_allclose(s["iou"][:3], [1 / 3, 1 / 3, 1.0])
    np.testing.assert_allclose(s["dice"][:3], [0.5, 0.5, 1.0])
    assert all(math.isnan(s[k][3]) for k in s)  # class c: absent from truth and prediction
    m = evaluation_metrics(cm, cm[None], NAMES)
    assert m["macro"]["iou"] == pytest.approx(5 / 9)  # (1/3 + 1/3 + 1) / 3: c left out, not 0
    assert m["macro_fg"]["iou"] == pytest.approx(2 / 3)
    assert m["macro"]["dice"] == pytest.approx(2 / 3)
    assert m["micro"]["accuracy"] == pytest.approx(3 / 5)
    assert m["micro"]["iou"] == pytest.approx(3 / 7)  # sum TP / sum (TP + FP + FN) = 3 / (3 + 4)
    assert m["micro"]["dice"] == pytest.approx(3 / 5)  # = accuracy for single-label pixels
    assert (
        math.isnan(m["per_class"]["c"]["iou"]) and m["per_image"]["per_class"]["c"]["images"] == 0
    )


def test_absent_class_is_null_in_json_never_one_or_zero() -> None:
    # image 1: class a predicted perfectly; image 2: no class a anywhere (its a-score is undefined)
    t1 = np.array([[0, 1], [1, 0]], np.uint8)
    t2 = np.array([[0, 0], [2, 2]], np.uint8)
    p2 = np.array([[0, 0], [2, 0]], np.uint8)
    acc = ConfusionAccumulator(4)
    acc.update(t1, t1)
    acc.update(t2, p2)
    m = evaluation_metrics(acc.total, acc.stack, NAMES)
    a = m["per_image"]["per_class"]["a"]
    assert a["iou"] == 1.0 and a["images"] == 1  # the mean over image 1 only: not (1 + 0) / 2
    assert m["per_image"]["per_class"]["b"]["iou"] == 0.5 and m["per_class"]["b"]["iou"] == 0.5
    # per-image macro: image 1 = mean(bg 1, a 1) = 1; image 2 = mean(bg 2/3, b 1/2)
    assert m["per_image"]["iou"] == pytest.approx((1 + (2 / 3 + 1 / 2) / 2) / 2)
    text = json.dumps(json_ready(m), allow_nan=False)
    back = json.loads(text)
    assert back["per_class"]["c"] == {"iou": None, "dice": None, "precision": None, "recall": None}
    assert back["per_image"]["per_class"]["c"]["iou"] is None


def test_no_valid_pixel_gives_nan_not_an_error() -> None:
    truth = np.full((2, 2), 255, np.uint8)
    cm = confusion(truth, np.zeros((2, 2), np.uint8), 3)
    m = evaluation_metrics(cm, cm[None], NAMES[:3])
    assert math.isnan(m["micro"]["accuracy"]) and math.isnan(m["macro"]["iou"])
    assert math.isnan(m["per_image"]["iou"])


# -- cross-checks ----------------------------------------------------------------------------------
def _random(seed: int, k: int = 4, n: int = 3, absent: int | None = None):
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, (n, 24, 28), generator=gen)
    preds = torch.randint(0, k, (n, 24, 28), generator=gen)
    if absent is not None:  # make one class absent from both truth and prediction
        target[target == absent] = 0
        preds[preds == absent] = 1
    target[:, :2] = 255  # ignored rows
    acc = ConfusionAccumulator(k)
    for t, p in zip(target.numpy().astype(np.uint8), preds.numpy().astype(np.uint8), strict=True):
        acc.update(t, p)
    return preds, target, acc


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_torchmetrics(seed: int) -> None:
    k = 4
    preds, target, acc = _random(seed, k)
    kw = {"num_classes": k, "ignore_index": 255}
    tm_cm = multiclass_confusion_matrix(preds, target, **kw).numpy()
    np.testing.assert_array_equal(acc.total, tm_cm)
    m = evaluation_metrics(acc.total, acc.stack, NAMES)
    per = scores_from_confusion(acc.total)
    for avg in ("none", "macro", "micro"):
        iou = multiclass_jaccard_index(preds, target, average=avg, **kw).numpy()
        f1 = multiclass_f1_score(preds, target, average=avg, **kw).numpy()
        if avg == "none":
            np.testing.assert_allclose(per["iou"], iou, rtol=1e-5)
            np.testing.assert_allclose(per["dice"], f1, rtol=1e-5)
        else:
            agg = m[avg]
            np.testing.assert_allclose(agg["iou"], iou, rtol=1e-5)
            np.testing.assert_allclose(agg["dice"], f1, rtol=1e-5)
    for fn, key in ((multiclass_precision, "precision"), (multiclass_recall, "recall")):
        np.testing.assert_allclose(
            m["macro"][key], fn(preds, target, average="macro", **kw), rtol=1e-5
        )
    acc_micro = multiclass_accuracy(preds, target, average="micro", **kw)
    np.testing.assert_allclose(m["micro"]["accuracy"], acc_micro, rtol=1e-5)


def test_torchmetrics_scores_an_absent_class_zero_but_leaves_it_out_of_macro() -> None:
    k = 4
    preds, target, acc = _random(7, k, absent=3)
    kw = {"num_classes": k, "ignore_index": 255}
    m = evaluation_metrics(acc.total, acc.stack, NAMES)
    per_class = multiclass_jaccard_index(preds, target, average="none", **kw)
    assert per_class[3] == 0.0 and m["per_class"]["c"]["iou"] != m["per_class"]["c"]["iou"]  # NaN
    macro = multiclass_jaccard_index(preds, target, average="macro", **kw)
    np.testing.assert_allclose(m["macro"]["iou"], macro, rtol=1e-5)  # the means agree
    assert m["macro"]["iou"] != pytest.approx(float(per_class.mean()))  # a zero would pull it down


def _smp(preds: torch.Tensor, target: torch.Tensor, k: int):
    return smp_metrics.get_stats(preds, target, mode="multiclass", num_classes=k, ignore_index=255)


@pytest.mark.parametrize("seed", [0, 5, 9])
def test_matches_segmentation_models_pytorch(seed: int) -> None:
    k = 4
    preds, target, acc = _random(seed, k)
    tp, fp, fn, tn = _smp(preds, target, k)
    np.testing.assert_array_equal(tp.sum(0).numpy(), np.diag(acc.total))
    m = evaluation_metrics(acc.total, acc.stack, NAMES)

    def smp(metric, reduction: str) -> float:
        return float(metric(tp, fp, fn, tn, reduction=reduction, zero_division=1.0))

    # every class is in every image here, so the definitions coincide
    assert m["micro"]["iou"] == pytest.approx(smp(smp_metrics.iou_score, "micro"))
    assert m["micro"]["dice"] == pytest.approx(smp(smp_metrics.f1_score, "micro"))
    assert m["macro"]["iou"] == pytest.approx(smp(smp_metrics.iou_score, "macro"))
    assert m["macro"]["dice"] == pytest.approx(smp(smp_metrics.f1_score, "macro"))
    assert m["macro"]["recall"] == pytest.approx(smp(smp_metrics.recall, "macro"))
    assert m["per_image"]["iou"] == pytest.approx(smp(smp_metrics.iou_score, "macro-imagewise"))
    mean_class = np.mean([m["per_image"]["per_class"][n]["iou"] for n in NAMES])
    assert mean_class == pytest.approx(smp(smp_metrics.iou_score, "macro-imagewise"))
    imagewise_micro = np.mean([micro_scores(cm)["iou"] for cm in acc.stack])
    assert imagewise_micro == pytest.approx(smp(smp_metrics.iou_score, "micro-imagewise"))


def test_smp_counts_an_absent_class_as_its_zero_division() -> None:
    k = 4
    preds, target, acc = _random(11, k, absent=3)
    tp, fp, fn, tn = _smp(preds, target, k)
    m = evaluation_metrics(acc.total, acc.stack, NAMES)
    ones = float(smp_metrics.iou_score(tp, fp, fn, tn, reduction="macro", zero_division=1.0))
    zeros = float(smp_metrics.iou_score(tp, fp, fn, tn, reduction="macro", zero_division=0.0))
    defined = [m["per_class"][n]["iou"] for n in NAMES[:3]]
    assert ones == pytest.approx((sum(defined) + 1) / 4)  # the absent class counted as 1
    assert zeros == pytest.approx(sum(defined) / 4)  # ... or as 0
    assert m["macro"]["iou"] == pytest.approx(sum(defined) / 3)  # segflow: left out
    assert m["micro"]["iou"] == pytest.approx(  # micro pools counts: absent classes add nothing
        float(smp_metrics.iou_score(tp, fp, fn, tn, reduction="micro"))
    )


@pytest.mark.parametrize("seed", [1, 4])
def test_micro_imagewise_matches_segmentation_models_pytorch(seed: int) -> None:
    k = 4
    preds, target, acc = _random(seed, k)
    tp, fp, fn, tn = _smp(preds, target, k)
    m = evaluation_metrics(acc.total, acc.stack, NAMES)
    for key, fn_ in (("iou", smp_metrics.iou_score), ("dice", smp_metrics.f1_score)):
        expected = float(fn_(tp, fp, fn, tn, reduction="micro-imagewise"))
        assert m["micro_imagewise"][key] == pytest.approx(expected)
    # foreground only = SMP's multilabel stats over the foreground channels, summed per image
    fg_tp, fg_fp, fg_fn, fg_tn = (t[:, 1:] for t in (tp, fp, fn, tn))
    for key, fn_ in (("iou", smp_metrics.iou_score), ("dice", smp_metrics.f1_score)):
        expected = float(fn_(fg_tp, fg_fp, fg_fn, fg_tn, reduction="micro-imagewise"))
        assert m["micro_imagewise_fg"][key] == pytest.approx(expected)
    # and it is a different number from the macro per-image mean (so the column means something)
    assert m["micro_imagewise_fg"]["iou"] != pytest.approx(m["per_image"]["iou_fg"])


def test_micro_imagewise_fg_matches_smp_binary_mode_and_skips_empty_images() -> None:
    rng = np.random.default_rng(3)
    truth = (rng.random((3, 16, 16)) > 0.6).astype(np.uint8)
    pred = (rng.random((3, 16, 16)) > 0.5).astype(np.uint8)
    truth[2] = 0
    pred[2] = 0  # nothing to find and nothing found: undefined, not a perfect 1
    acc = ConfusionAccumulator(2)
    for i in range(3):
        acc.update(truth[i], pred[i], stem=str(i))
    m = evaluation_metrics(acc.total, acc.stack, ["bg", "fg"])
    tp, fp, fn, tn = smp_metrics.get_stats(
        torch.from_numpy(pred[:2, None]).long(),
        torch.from_numpy(truth[:2, None]).long(),
        mode="binary",
    )
    expected = float(smp_metrics.iou_score(tp, fp, fn, tn, reduction="micro-imagewise"))
    assert m["micro_imagewise_fg"]["iou"] == pytest.approx(expected)
    rows = json.loads(json.dumps(json_ready(m)))
    assert rows["micro_imagewise_fg"]["dice"] is not None
