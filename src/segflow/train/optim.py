"""Optimisers and learning-rate schedules built from the config.

Schedules are Lightning ``lr_scheduler`` dicts. Every parameter group follows the same absolute
trajectory: an optional linear warm-up from ``peak_lr / 100`` to ``peak_lr`` over
``warmup_epochs * steps_per_epoch`` optimizer steps, then the schedule:

- ``cosine``: half a cosine from ``peak_lr`` down to ``min_lr``;
- ``poly``: ``min_lr + (peak_lr - min_lr) * (1 - t / T) ** poly_power``;
- ``constant``: ``peak_lr``;
- ``onecycle``: torch's ``OneCycleLR(max_lr=peak_lr)`` (its own warm-up; ``warmup_epochs`` must be
  0);
- ``plateau``: torch's ``ReduceLROnPlateau`` on a monitored metric, stepped per epoch
  (``warmup_epochs`` must be 0: a per-step warm-up cannot share one Lightning scheduler entry with
  an epoch-level, metric-driven scheduler).

Step ``k`` of the schedule is the learning rate of the ``k + 1``-th optimizer step; cosine and poly
reach ``min_lr`` on the last step (``steps_per_epoch * epochs - 1``) and stay there should training
run longer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, ReduceLROnPlateau

from segflow.config import OptimizerConfig, ScheduleConfig
from segflow.errors import ConfigError
from segflow.registry import Registry

if TYPE_CHECKING:
    from lightning.pytorch.utilities.types import LRSchedulerConfigType

__all__ = ["OPTIMIZERS", "WARMUP_START", "build_optimizer", "build_scheduler"]

#: Warm-up starts at this share of the peak learning rate.
WARMUP_START = 0.01

ParamGroups = list[dict[str, Any]]

#: ``(param_groups, cfg) -> optimizer``; groups carry their own ``weight_decay``.
OPTIMIZERS: Registry[Callable[[ParamGroups, OptimizerConfig], torch.optim.Optimizer]] = Registry(
    "optimizer"
)


@OPTIMIZERS.register("adam")
def _adam(groups: ParamGroups, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Adam; its weight decay is the classic L2 penalty added to the gradient."""
    return torch.optim.Adam(groups, lr=cfg.lr)


@OPTIMIZERS.register("adamw")
def _adamw(groups: ParamGroups, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW: decoupled weight decay."""
    return torch.optim.AdamW(groups, lr=cfg.lr)


@OPTIMIZERS.register("sgd")
def _sgd(groups: ParamGroups, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (plain SGD when momentum is 0: torch requires momentum for it)."""
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def build_optimizer(params: Iterable[torch.Tensor], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """The optimiser of ``cfg``, with biases and norm weights exempt from weight decay.

    Tensors with ``ndim <= 1`` (biases, BatchNorm/LayerNorm scales and shifts) go to a group with
    ``weight_decay = 0``: decaying them only pulls normalisation towards zero, it does not
    regularise. Every tensor is kept, frozen ones too, so that unfreezing later trains them.

    Args:
        params: the model's parameters (``module.parameters()``).
        cfg: the optimizer section of the config.

    Raises:
        ConfigError: no parameters.
    """
    decay: list[torch.Tensor] = []
    no_decay: list[torch.Tensor] = []
    for p in params:
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups: ParamGroups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ConfigError("the model has no parameters to optimise")
    return OPTIMIZERS.get(cfg.name)(groups, cfg)


@dataclass
class _Trajectory:
    """The lr at step ``k`` divided by a group's base lr (LambdaLR multiplies it back).

    A plain-data callable, so LambdaLR saves and restores it with the checkpoint.
    """

    kind: str
    peak: float
    floor: float
    warmup: int
    total: int
    power: float
    base: float

    def lr(self, step: int) -> float:
        """The absolute learning rate at scheduler step ``step``."""
        if step < self.warmup:
            start = self.peak * WARMUP_START
            return start + (self.peak - start) * step / self.warmup
        if self.kind == "constant":
            return self.peak
        span = self.total - 1 - self.warmup
        t = min(step - self.warmup, span) / span if span > 0 else 1.0
        if self.kind == "cosine":
            return self.floor + (self.peak - self.floor) * 0.5 * (1.0 + math.cos(math.pi * t))
        return self.floor + (self.peak - self.floor) * float((1.0 - t) ** self.power)

    def __call__(self, step: int) -> float:
        return self.lr(step) / self.base


def check_schedule(cfg: ScheduleConfig, epochs: int, peak_lr: float) -> None:
    """The schedule checks that need only the config: run before any run folder is made.

    Raises:
        ConfigError: a warm-up with onecycle or plateau, a warm-up as long as the run, or
            ``min_lr`` above the peak learning rate.
    """
    if cfg.warmup_epochs > 0 and cfg.name in ("onecycle", "plateau"):
        own = "has its own warm-up" if cfg.name == "onecycle" else "is stepped per epoch"
        raise ConfigError(
            f"schedule.warmup_epochs must be 0 with {cfg.name} (it {own}); "
            "set schedule.warmup_epochs=0 or use cosine / poly / constant"
        )
    if cfg.warmup_epochs > 0 and cfg.warmup_epochs >= epochs:
        raise ConfigError(
            f"schedule.warmup_epochs={cfg.warmup_epochs:g} covers the whole run ({epochs} epochs); "
            "make it shorter than train.epochs"
        )
    if cfg.name in ("cosine", "poly", "plateau") and cfg.min_lr > peak_lr:
        raise ConfigError(
            f"schedule.min_lr={cfg.min_lr:g} is above the peak learning rate {peak_lr:g}"
        )


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: ScheduleConfig,
    *,
    steps_per_epoch: int,
    epochs: int,
    peak_lr: float,
    monitor: str = "val/mIoU",
    monitor_mode: Literal["max", "min"] = "max",
) -> LRSchedulerConfigType:
    """A Lightning ``lr_scheduler`` config dict for ``cfg`` (see the module docstring).

    Args:
        optimizer: the optimiser whose learning rate is driven.
        cfg: the schedule section of the config.
        steps_per_epoch: optimizer steps per epoch (after gradient accumulation).
        epochs: number of epochs; ``steps_per_epoch * epochs`` is the schedule's length
            (``onecycle`` raises past it, the others hold their last value).
        peak_lr: the learning rate at the end of warm-up (usually ``optimizer.lr``).
        monitor: plateau: the logged metric that decides the cuts.
        monitor_mode: plateau: ``max`` if the metric should go up, ``min`` if down.

    Returns:
        ``{"scheduler", "interval": "step"|"epoch", "frequency": 1}`` and, for plateau,
        ``"monitor"``.

    Raises:
        ConfigError: non-positive lengths or lr, ``min_lr > peak_lr``, a warm-up with onecycle or
            plateau, or a warm-up as long as the whole schedule.
    """
    if steps_per_epoch < 1 or epochs < 1:
        raise ConfigError(f"a schedule needs >= 1 step and epoch, got {steps_per_epoch}, {epochs}")
    if not peak_lr > 0:
        raise ConfigError(f"the peak learning rate must be > 0, got {peak_lr}")
    check_schedule(cfg, epochs, peak_lr)
    total = steps_per_epoch * epochs
    warmup = max(1, round(cfg.warmup_epochs * steps_per_epoch)) if cfg.warmup_epochs > 0 else 0
    if warmup >= total:  # rounding to whole steps can still fill a short run
        raise ConfigError(
            f"schedule.warmup_epochs={cfg.warmup_epochs:g} covers the whole run ({epochs} epochs); "
            "make it shorter than train.epochs"
        )

    if cfg.name == "plateau":
        for group in optimizer.param_groups:
            group["lr"] = peak_lr
        plateau = ReduceLROnPlateau(
            optimizer,
            mode=monitor_mode,
            factor=cfg.plateau_factor,
            patience=cfg.plateau_patience,
            min_lr=cfg.min_lr,
        )
        return {"scheduler": plateau, "interval": "epoch", "frequency": 1, "monitor": monitor}
    if cfg.name == "onecycle":
        has_momentum = "betas" in optimizer.defaults or optimizer.defaults.get("momentum", 0) > 0
        onecycle = OneCycleLR(
            optimizer, max_lr=peak_lr, total_steps=total, cycle_momentum=has_momentum
        )
        return {"scheduler": onecycle, "interval": "step", "frequency": 1}
    if any(not group.get("initial_lr", group["lr"]) > 0 for group in optimizer.param_groups):
        raise ConfigError("every parameter group needs a learning rate > 0 to follow a schedule")
    lambdas: list[Callable[[int], float]] = [
        _Trajectory(
            kind=cfg.name,
            peak=peak_lr,
            floor=cfg.min_lr,
            warmup=warmup,
            total=total,
            power=cfg.poly_power,
            base=float(group.get("initial_lr", group["lr"])),
        )
        for group in optimizer.param_groups
    ]
    return {"scheduler": LambdaLR(optimizer, lambdas), "interval": "step", "frequency": 1}
