"""Losses: known values, ignore_index, empty batches, the weighted sum, class weights, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from segflow.config import LOSS_NAMES, LossConfig
from segflow.errors import ConfigError
from segflow.train.losses import (
    LOSSES,
    MAX_WEIGHT_RATIO,
    CombinedLoss,
    auto_class_weights,
    build_loss,
)

IGNORE = 255
TASKS = [("binary", 2), ("multiclass", 4)]
WEIGHTS = {2: [0.5, 2.0], 4: [0.5, 1.0, 2.0, 3.0]}


def single(name, task, num_classes, class_weights=None, **cfg):
    """A CombinedLoss holding one term, and a function returning that term's value."""
    loss = build_loss(
        LossConfig(terms={name: 1.0}, **cfg),
        task=task,
        num_classes=num_classes,
        ignore_index=IGNORE,
        class_weights=class_weights,
    )
    return lambda logits, target: loss(logits, target)[1][name]


def channels(task, num_classes):
    return 1 if task == "binary" else num_classes


def sample(task, num_classes, seed=0, ignored=True):
    """Random logits and a target with every class present and (optionally) ignored pixels."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, channels(task, num_classes), 6, 6, generator=gen)
    target = torch.randint(0, num_classes, (2, 6, 6), generator=gen)
    target[0, 0, :num_classes] = torch.arange(num_classes)
    if ignored:
        target[:, 3:5, 2:5] = IGNORE
    return logits, target


def perfect_logits(task, num_classes, target, scale=30.0):
    """Very large logits for the right class (ignored pixels get anything)."""
    safe = target.clamp(max=num_classes - 1)
    if task == "binary":
        return (safe.float() * 2 - 1).unsqueeze(1) * scale
    return nn.functional.one_hot(safe, num_classes).permute(0, 3, 1, 2).float() * 2 * scale - scale


def test_registry_covers_every_config_name():
    assert set(LOSSES.names()) == set(LOSS_NAMES)


# -- known values -------------------------------------------------------------------------------


def test_ce_matches_hand_computation_with_class_weights_and_ignore():
    # 3 pixels, 3 classes; the third pixel is ignored and has absurd logits.
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0], [100.0, -100.0, 7.0]])
    logits = logits.T.reshape(1, 3, 1, 3)
    target = torch.tensor([[[2, 0, IGNORE]]])
    w = [1.0, 2.0, 3.0]

    def nll(row, k):
        return -(row[k] - math.log(sum(math.exp(v) for v in row)))

    first = nll([1.0, 2.0, 3.0], 2)
    second = nll([0.5, 0.0, -1.0], 0)
    expected = (w[2] * first + w[0] * second) / (w[2] + w[0])
    value = single("ce", "multiclass", 3, class_weights=w)(logits, target)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    unweighted = single("ce", "multiclass", 3)(logits, target)
    assert unweighted.item() == pytest.approx((first + second) / 2, rel=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_ce_matches_torch_mean_with_label_smoothing(smoothing):
    logits, target = sample("multiclass", 4)
    weight = torch.tensor(WEIGHTS[4])
    expected = nn.functional.cross_entropy(
        logits, target, weight=weight, ignore_index=IGNORE, label_smoothing=smoothing
    )
    value = single("ce", "multiclass", 4, WEIGHTS[4], label_smoothing=smoothing)(logits, target)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


def test_bce_binary_matches_hand_computation():
    # logits for 4 pixels: fg, bg, fg, ignored; weights (bg 0.5, fg 2).
    x = [2.0, -1.0, -0.5, 40.0]
    logits = torch.tensor(x).reshape(1, 1, 1, 4)
    target = torch.tensor([[[1, 0, 1, IGNORE]]])
    s = 0.1

    def bce(z, t):
        p = 1 / (1 + math.exp(-z))
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))

    terms = [(2.0, bce(x[0], 1 - s / 2)), (0.5, bce(x[1], s / 2)), (2.0, bce(x[2], 1 - s / 2))]
    expected = sum(w * v for w, v in terms) / sum(w for w, _ in terms)
    value = single("bce", "binary", 2, [0.5, 2.0], label_smoothing=s)(logits, target)
    assert value.item() == pytest.approx(expected, rel=1e-6)


def test_ce_on_a_binary_task_is_bce():
    logits, target = sample("binary", 2)
    ce = single("ce", "binary", 2, WEIGHTS[2], label_smoothing=0.05)(logits, target)
    bce = single("bce", "binary", 2, WEIGHTS[2], label_smoothing=0.05)(logits, target)
    assert ce.item() == bce.item()


def test_bce_multiclass_is_one_vs_rest():
    logits, target = sample("multiclass", 4)
    valid = target != IGNORE
    onehot = nn.functional.one_hot(target.clamp(max=3), 4).permute(0, 3, 1, 2).float()
    per_pixel = nn.functional.binary_cross_entropy_with_logits(
        logits, onehot, reduction="none"
    ).mean(1)
    w = torch.tensor(WEIGHTS[4])[target.clamp(max=3)] * valid
    expected = (per_pixel * w).sum() / w.sum()
    value = single("bce", "multiclass", 4, WEIGHTS[4])(logits, target)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("weights", [False, True])
def test_focal_with_gamma_zero_is_cross_entropy(weights):
    for task, n in TASKS:
        logits, target = sample(task, n)
        cw = WEIGHTS[n] if weights else None
        reference = "ce" if task == "multiclass" else "bce"
        focal = single("focal", task, n, cw, focal_gamma=0.0)(logits, target)
        ce = single(reference, task, n, cw)(logits, target)
        assert focal.item() == pytest.approx(ce.item(), rel=1e-6), task


def test_focal_uses_gamma():
    # One binary foreground pixel with p = sigmoid(0.5): loss = -(1 - p)^gamma log p.
    p = 1 / (1 + math.exp(-0.5))
    logits = torch.full((1, 1, 1, 1), 0.5)
    target = torch.ones((1, 1, 1), dtype=torch.long)
    value = single("focal", "binary", 2, focal_gamma=2.0)(logits, target)
    assert value.item() == pytest.approx(-((1 - p) ** 2) * math.log(p), rel=1e-6)
    # Multiclass: softmax focal on one pixel.
    logits = torch.tensor([1.0, 0.0, -1.0]).reshape(1, 3, 1, 1)
    target = torch.zeros((1, 1, 1), dtype=torch.long)
    pt = math.exp(1.0) / (math.exp(1.0) + 1 + math.exp(-1.0))
    value = single("focal", "multiclass", 3, focal_gamma=3.0)(logits, target)
    assert value.item() == pytest.approx(-((1 - pt) ** 3) * math.log(pt), rel=1e-6)


@pytest.mark.parametrize(("task", "n"), TASKS)
@pytest.mark.parametrize("name", ["dice", "jaccard", "tversky", "lovasz"])
def test_perfect_prediction_gives_zero(task, n, name):
    _, target = sample(task, n)
    logits = perfect_logits(task, n, target)
    assert single(name, task, n)(logits, target).item() == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize(("task", "n"), TASKS)
@pytest.mark.parametrize("name", ["dice", "jaccard"])
def test_completely_wrong_prediction_gives_one(task, n, name):
    _, target = sample(task, n)
    wrong = torch.where(target == IGNORE, target, (target + 1) % n)
    logits = perfect_logits(task, n, wrong)
    assert single(name, task, n)(logits, target).item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(("task", "n"), TASKS)
def test_tversky_reads_alpha_and_beta(task, n):
    logits, target = sample(task, n)
    dice = single("dice", task, n)(logits, target)
    jaccard = single("jaccard", task, n)(logits, target)
    half = single("tversky", task, n, tversky_alpha=0.5, tversky_beta=0.5)(logits, target)
    one = single("tversky", task, n, tversky_alpha=1.0, tversky_beta=1.0)(logits, target)
    assert half.item() == pytest.approx(dice.item(), rel=1e-6)
    assert one.item() == pytest.approx(jaccard.item(), rel=1e-6)


@pytest.mark.parametrize(("alpha", "beta"), [(0.1, 0.9), (0.7, 0.3)])
def test_tversky_weighs_false_positives_by_alpha(alpha, beta):
    # Binary: foreground predicted everywhere, 1 true pixel of 4: TP 1, FP 3, FN 0.
    target = torch.tensor([[[1, 0, 0, 0]]])
    logits = torch.full((1, 1, 1, 4), 30.0)
    value = single("tversky", "binary", 2, tversky_alpha=alpha, tversky_beta=beta)(logits, target)
    assert value.item() == pytest.approx(1 - 1 / (1 + 3 * alpha), abs=1e-5)
    # Multiclass: class 0 predicted everywhere, target [0, 0, 1, 2]: class 0 has TP 2, FP 2;
    # classes 1 and 2 have one false negative each (loss 1).
    target = torch.tensor([[[0, 0, 1, 2]]])
    logits = torch.tensor([30.0, -30.0, -30.0]).reshape(1, 3, 1, 1).expand(1, 3, 1, 4)
    value = single("tversky", "multiclass", 3, tversky_alpha=alpha, tversky_beta=beta)(
        logits, target
    )
    assert value.item() == pytest.approx((alpha / (1 + alpha) + 2) / 3, abs=1e-5)


def test_region_losses_weight_classes_in_multiclass():
    logits, target = sample("multiclass", 4)
    plain = single("dice", "multiclass", 4)(logits, target)
    uniform = single("dice", "multiclass", 4, [2.0] * 4)(logits, target)
    skewed = single("dice", "multiclass", 4, WEIGHTS[4])(logits, target)
    assert uniform.item() == pytest.approx(plain.item(), rel=1e-6)
    assert abs(skewed.item() - plain.item()) > 1e-4


# -- ignore_index -------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize(("task", "n"), TASKS)
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_ignored_pixels_change_nothing_and_get_no_gradient(name, task, n, weights):
    loss = single(name, task, n, WEIGHTS[n] if weights else None, label_smoothing=0.1)
    logits, target = sample(task, n, seed=1)
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    noisy = (
        logits
        + ignored * torch.randn(logits.shape, generator=torch.Generator().manual_seed(9)) * 50
    )
    logits.requires_grad_(True)
    value = loss(logits, target)
    value.backward()
    assert value.item() > 0
    assert loss(noisy, target).item() == pytest.approx(value.item(), rel=1e-6, abs=1e-7)
    assert logits.grad is not None
    assert torch.all(logits.grad[ignored] == 0)
    assert logits.grad[~ignored].abs().sum() > 0


@pytest.mark.parametrize(("task", "n"), TASKS)
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_fully_ignored_batch_gives_finite_zero_with_gradient(name, task, n):
    loss = single(name, task, n, WEIGHTS[n])
    logits = torch.randn(2, channels(task, n), 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGNORE)
    value = loss(logits, target)
    assert value.ndim == 0
    assert value.item() == 0.0
    value.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad == 0)


# -- the weighted sum ---------------------------------------------------------------------------


def test_total_is_the_weighted_sum_and_zero_weights_are_not_computed():
    cfg = LossConfig(terms={"ce": 0.7, "dice": 0.3, "lovasz": 0.0})
    loss = build_loss(cfg, task="multiclass", num_classes=4)
    logits, target = sample("multiclass", 4)
    total, parts = loss(logits, target)
    assert set(parts) == {"ce", "dice"}
    assert "lovasz" not in loss.losses
    assert total.item() == pytest.approx(0.7 * parts["ce"].item() + 0.3 * parts["dice"].item())
    assert parts["ce"].item() == pytest.approx(single("ce", "multiclass", 4)(logits, target).item())


def test_combined_loss_runs_in_float32_and_checks_shapes():
    loss = build_loss(LossConfig(), task="binary", num_classes=2)
    logits, target = sample("binary", 2)
    total, _ = loss(logits.to(torch.bfloat16), target.to(torch.uint8))
    assert total.dtype == torch.float32
    assert torch.isfinite(total)
    double = build_loss(
        LossConfig(terms={"ce": 1, "focal": 1}), task="binary", num_classes=2, class_weights=[1, 2]
    )
    double.to(torch.float64)  # class weights are buffers: they follow the module
    assert double(logits.double(), target)[0].dtype == torch.float64
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        loss(torch.randn(2, 2, 6, 6), target)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        loss(logits, target.unsqueeze(1))
    with pytest.raises(ValueError, match="integer"):
        loss(logits, target.float())


def test_combined_loss_drops_zero_weight_modules():
    ce = torch.nn.Identity()
    combined = CombinedLoss({"ce": (ce, 0.0), "dice": (ce, 1.0)}, task="binary", num_classes=2)
    assert list(combined.losses) == ["dice"]
    assert "dice=1" in repr(combined)


# -- class weights ------------------------------------------------------------------------------


def test_auto_class_weights_inverse_frequency_mean_one():
    weights = auto_class_weights([600, 300, 100])
    assert sum(weights) / 3 == pytest.approx(1.0)
    assert weights[1] / weights[0] == pytest.approx(2.0)
    assert weights[2] / weights[0] == pytest.approx(6.0)


def test_auto_class_weights_absent_class_gets_one():
    weights = auto_class_weights([100, 0, 300])
    assert weights[1] == 1.0
    assert (weights[0] + weights[2]) / 2 == pytest.approx(1.0)
    assert weights[0] / weights[2] == pytest.approx(3.0)
    assert auto_class_weights([0, 0]) == [1.0, 1.0]


def test_auto_class_weights_clips_the_ratio():
    weights = auto_class_weights([1_000_000, 10, 1000])
    assert max(weights) / min(weights) == pytest.approx(MAX_WEIGHT_RATIO)
    assert sum(weights) / 3 == pytest.approx(1.0)
    assert weights[1] == max(weights)
    assert weights[2] / weights[0] == pytest.approx(50.0)  # 1000x rarer, clipped as well


@pytest.mark.parametrize("counts", [[], [10, -1], [10, float("nan")]])
def test_auto_class_weights_rejects_bad_counts(counts):
    with pytest.raises(ConfigError):
        auto_class_weights(counts)


def test_class_weights_come_from_the_config_list():
    cfg = LossConfig(terms={"ce": 1.0}, class_weights=[1.0, 2.0, 3.0])
    logits = torch.tensor([1.0, 2.0, 3.0, 0.5, 0.0, -1.0]).reshape(2, 3).T.reshape(1, 3, 1, 2)
    target = torch.tensor([[[2, 0]]])
    from_cfg = build_loss(cfg, task="multiclass", num_classes=3)(logits, target)[0]
    explicit = single("ce", "multiclass", 3, [1.0, 2.0, 3.0])(logits, target)
    assert from_cfg.item() == pytest.approx(explicit.item())


# -- errors -------------------------------------------------------------------------------------


def test_unknown_loss_name_is_a_config_error_with_a_suggestion():
    cfg = LossConfig(terms={"ce": 1.0})
    cfg.terms["dcie"] = 1.0  # bypasses LossConfig's own validation
    with pytest.raises(ConfigError, match="did you mean dice"):
        build_loss(cfg, task="multiclass", num_classes=3)


@pytest.mark.parametrize(
    ("task", "n", "weights"), [("multiclass", 3, [1.0, 2.0]), ("binary", 2, [1.0])]
)
def test_wrong_number_of_class_weights(task, n, weights):
    with pytest.raises(ConfigError, match=f"{len(weights)} values for {n} classes"):
        build_loss(LossConfig(), task=task, num_classes=n, class_weights=weights)


@pytest.mark.parametrize("weights", [[1.0, -1.0, 1.0], [0.0, 0.0, 0.0], [1.0, float("inf"), 1.0]])
def test_bad_class_weights(weights):
    with pytest.raises(ConfigError, match="finite"):
        build_loss(LossConfig(), task="multiclass", num_classes=3, class_weights=weights)


def test_auto_class_weights_must_be_resolved_by_the_caller():
    with pytest.raises(ConfigError, match="auto_class_weights"):
        build_loss(LossConfig(class_weights="auto"), task="multiclass", num_classes=3)


@pytest.mark.parametrize(("task", "n"), [("binary", 3), ("multiclass", 1)])
def test_class_count_must_fit_the_task(task, n):
    with pytest.raises(ConfigError, match="class"):
        build_loss(LossConfig(), task=task, num_classes=n)


def test_all_zero_weights_are_rejected():
    cfg = LossConfig(terms={"ce": 1.0})
    cfg.terms["ce"] = 0.0
    with pytest.raises(ConfigError, match="positive weight"):
        build_loss(cfg, task="multiclass", num_classes=3)
