"""Optimisers (weight-decay groups) and the lr trajectory of every schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from segflow.config import OptimizerConfig, ScheduleConfig
from segflow.errors import ConfigError
from segflow.train.optim import WARMUP_START, build_optimizer, build_scheduler

SPE, EPOCHS, PEAK, MIN = 10, 5, 0.1, 1e-4
TOTAL = SPE * EPOCHS


def small_model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def trajectory(name, steps=TOTAL, **cfg):
    """The lr of each of ``steps`` optimizer steps (stepping optimizer, then scheduler)."""
    model = small_model()
    optimizer = build_optimizer(model.parameters(), OptimizerConfig(name="sgd", lr=PEAK))
    sched = build_scheduler(
        optimizer,
        ScheduleConfig(name=name, min_lr=MIN, **cfg),
        steps_per_epoch=SPE,
        epochs=EPOCHS,
        peak_lr=PEAK,
    )
    assert sched["interval"] == "step"
    assert sched["frequency"] == 1
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        assert all(g["lr"] == lrs[-1] for g in optimizer.param_groups)
        optimizer.step()
        sched["scheduler"].step()
    return lrs


# -- optimizers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_biases_and_norm_weights_are_not_decayed(name):
    model = small_model()
    cfg = OptimizerConfig(name=name, lr=0.01, weight_decay=0.05)
    optimizer = build_optimizer(model.parameters(), cfg)
    expected = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    assert type(optimizer) is expected[name]
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05
    assert no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert len(no_decay["params"]) == 4  # two conv biases, BatchNorm weight and bias
    assert all(p.ndim <= 1 for p in no_decay["params"])
    assert all(g["lr"] == 0.01 for g in optimizer.param_groups)
    # With zero gradients only decay moves weights: the exempt tensors stay put.
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    after = list(model.parameters())
    assert not torch.equal(before[0], after[0].detach())  # conv weight decayed
    for i in (1, 2, 3, 5):  # conv bias, bn weight, bn bias, second conv bias
        assert torch.equal(before[i], after[i].detach())


def test_sgd_uses_nesterov_momentum():
    model = small_model()
    group = build_optimizer(
        model.parameters(), OptimizerConfig(name="sgd", momentum=0.8)
    ).param_groups[0]
    assert group["momentum"] == 0.8
    assert group["nesterov"] is True
    plain = build_optimizer(
        model.parameters(), OptimizerConfig(name="sgd", momentum=0.0)
    ).param_groups[0]
    assert plain["nesterov"] is False


def test_no_parameters_is_an_error():
    with pytest.raises(ConfigError, match="no parameters"):
        build_optimizer([], OptimizerConfig())


# -- schedules ----------------------------------------------------------------------------------


def test_warmup_goes_from_a_hundredth_to_peak():
    lrs = trajectory("cosine", warmup_epochs=1)
    assert lrs[0] == pytest.approx(PEAK * WARMUP_START)
    assert WARMUP_START == 0.01
    assert all(a < b for a, b in itertools.pairwise(lrs[: SPE + 1]))
    assert lrs[SPE // 2] == pytest.approx(PEAK * (0.01 + 0.99 * 0.5))
    assert lrs[SPE] == pytest.approx(PEAK)  # end of warm-up
    assert max(lrs) == pytest.approx(PEAK)
    assert lrs[-1] == pytest.approx(MIN)


def test_cosine_decays_to_min_lr():
    lrs = trajectory("cosine")
    assert lrs[0] == pytest.approx(PEAK)
    assert lrs[-1] == pytest.approx(MIN)
    assert all(a > b for a, b in itertools.pairwise(lrs))
    mid = (TOTAL - 1) / 2  # half-way down the cosine: the mean of peak and floor
    assert lrs[int(mid)] > (PEAK + MIN) / 2 > lrs[int(mid) + 1]
    t = 10 / (TOTAL - 1)
    assert lrs[10] == pytest.approx(MIN + (PEAK - MIN) * 0.5 * (1 + math.cos(math.pi * t)))


def test_cosine_holds_min_lr_past_the_end():
    lrs = trajectory("cosine", steps=TOTAL + 5)
    assert lrs[TOTAL - 1 :] == pytest.approx([MIN] * 6)


def test_poly_is_monotonic_and_ends_at_min_lr():
    lrs = trajectory("poly", poly_power=0.9, warmup_epochs=0.5)
    after = lrs[5:]
    assert after[0] == pytest.approx(PEAK)
    assert all(a > b for a, b in itertools.pairwise(after))
    assert lrs[-1] == pytest.approx(MIN)
    t = 10 / (TOTAL - 1 - 5)
    assert lrs[15] == pytest.approx(MIN + (PEAK - MIN) * (1 - t) ** 0.9)


def test_constant_stays():
    assert trajectory("constant") == pytest.approx([PEAK] * TOTAL)
    lrs = trajectory("constant", warmup_epochs=2)
    assert lrs[0] == pytest.approx(PEAK * 0.01)
    assert lrs[2 * SPE :] == pytest.approx([PEAK] * (TOTAL - 2 * SPE))


def test_onecycle_peaks_at_peak_lr():
    lrs = trajectory("onecycle")
    assert max(lrs) == pytest.approx(PEAK)
    assert lrs[0] == pytest.approx(PEAK / 25)  # torch's default div_factor
    assert lrs[-1] < lrs[0]
    top = lrs.index(max(lrs))
    assert 0 < top < TOTAL - 1


def test_plateau_cuts_after_patience_bad_epochs():
    model = small_model()
    optimizer = build_optimizer(model.parameters(), OptimizerConfig(name="adamw", lr=0.5))
    cfg = ScheduleConfig(name="plateau", plateau_patience=2, plateau_factor=0.5, min_lr=0.01)
    sched = build_scheduler(
        optimizer,
        cfg,
        steps_per_epoch=SPE,
        epochs=EPOCHS,
        peak_lr=PEAK,
        monitor="val/loss",
        monitor_mode="min",
    )
    assert sched["interval"] == "epoch"
    assert sched["monitor"] == "val/loss"
    plateau = sched["scheduler"]
    assert optimizer.param_groups[0]["lr"] == PEAK  # peak_lr wins over the optimizer's lr

    def epoch(metric):
        optimizer.step()
        plateau.step(metric)
        return optimizer.param_groups[0]["lr"]

    assert epoch(1.0) == PEAK  # the first value is the best so far
    assert epoch(0.5) == PEAK  # improvement (mode "min")
    assert epoch(0.6) == PEAK  # bad epoch 1
    assert epoch(0.7) == PEAK  # bad epoch 2 = patience
    assert epoch(0.7) == pytest.approx(PEAK * 0.5)  # one more: cut
    for _ in range(20):
        lr = epoch(0.9)
    assert lr == pytest.approx(0.01)  # never below min_lr


def test_plateau_mode_max():
    optimizer = build_optimizer(small_model().parameters(), OptimizerConfig())
    cfg = ScheduleConfig(name="plateau", plateau_patience=1, plateau_factor=0.1, min_lr=0.0)
    plateau = build_scheduler(optimizer, cfg, steps_per_epoch=1, epochs=10, peak_lr=1.0)[
        "scheduler"
    ]
    for metric in (0.5, 0.6, 0.7, 0.8):  # improving mIoU: no cut
        plateau.step(metric)
    assert optimizer.param_groups[0]["lr"] == 1.0
    plateau.step(0.1)
    plateau.step(0.1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["onecycle", "plateau"])
def test_warmup_is_rejected_where_the_schedule_cannot_take_it(name):
    optimizer = build_optimizer(small_model().parameters(), OptimizerConfig())
    with pytest.raises(ConfigError, match="warmup_epochs must be 0"):
        build_scheduler(
            optimizer,
            ScheduleConfig(name=name, warmup_epochs=1),
            steps_per_epoch=SPE,
            epochs=EPOCHS,
            peak_lr=PEAK,
        )


@pytest.mark.parametrize(
    ("cfg", "kwargs", "match"),
    [
        ({"warmup_epochs": 5}, {}, "covers the whole run"),
        ({"min_lr": 1.0}, {}, "above the peak"),
        ({}, {"steps_per_epoch": 0}, ">= 1 step"),
        ({}, {"peak_lr": 0.0}, "> 0"),
    ],
)
def test_bad_schedules_are_config_errors(cfg, kwargs, match):
    optimizer = build_optimizer(small_model().parameters(), OptimizerConfig())
    args = {"steps_per_epoch": SPE, "epochs": EPOCHS, "peak_lr": PEAK} | kwargs
    with pytest.raises(ConfigError, match=match):
        build_scheduler(optimizer, ScheduleConfig(name="cosine", **cfg), **args)


def test_schedule_state_survives_a_checkpoint():
    model = small_model()
    optimizer = build_optimizer(model.parameters(), OptimizerConfig(lr=PEAK))
    cfg = ScheduleConfig(name="cosine", warmup_epochs=1, min_lr=MIN)
    sched = build_scheduler(optimizer, cfg, steps_per_epoch=SPE, epochs=EPOCHS, peak_lr=PEAK)[
        "scheduler"
    ]
    for _ in range(17):
        optimizer.step()
        sched.step()
    state = sched.state_dict()
    fresh_opt = build_optimizer(small_model().parameters(), OptimizerConfig(lr=PEAK))
    fresh = build_scheduler(fresh_opt, cfg, steps_per_epoch=SPE, epochs=EPOCHS, peak_lr=PEAK)[
        "scheduler"
    ]
    fresh.load_state_dict(state)
    fresh_opt.load_state_dict(optimizer.state_dict())
    optimizer.step()
    sched.step()
    fresh_opt.step()
    fresh.step()
    assert fresh_opt.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])
