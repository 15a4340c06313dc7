"""Segmentation losses: a registry of builders and their weighted sum.

Vocabulary (shared with the heads and the metrics):

- ``binary``: logits ``(N, 1, H, W)`` (one channel, sigmoid); target ``(N, H, W)`` int64 in
  ``{0, 1, ignore_index}``. Class weights are ``(w_background, w_foreground)``.
- ``multiclass``: logits ``(N, C, H, W)`` (softmax); target ``(N, H, W)`` in
  ``{0..C-1, ignore_index}``.

Every loss excludes ``ignore_index`` pixels (their logits change neither the value nor receive a
gradient) and returns a finite 0, with a gradient, for a batch without one labelled pixel. Losses
are computed in float32 when the logits are float16/bfloat16 (safe under mixed precision).

How class weights apply:

- ``ce``, ``bce``, ``focal``: per pixel, by the pixel's target class; the weighted sum is divided by
  the sum of the labelled pixels' weights (``torch.nn.CrossEntropyLoss``'s weighted mean).
- ``dice``, ``jaccard``, ``tversky``: multiclass: SMP's weighted mean of the per-class losses;
  binary: unused (there is one term, the foreground's).
- ``lovasz``: unused (SMP's Lovász-softmax averages the classes present in the batch).
- ``cldice``: unused (the mean of the foreground classes' clDice).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from segflow.config import LossConfig
from segflow.errors import ConfigError, UnknownNameError
from segflow.registry import Registry

__all__ = [
    "LOSSES",
    "MAX_WEIGHT_RATIO",
    "ClDiceLoss",
    "CombinedLoss",
    "LossBuilder",
    "Task",
    "auto_class_weights",
    "build_loss",
    "soft_skeleton",
]

Task = Literal["binary", "multiclass"]

#: ``(task, num_classes, ignore_index, class_weights, cfg) -> module(logits, target) -> scalar``.
LossBuilder = Callable[[Task, int, int, "torch.Tensor | None", LossConfig], nn.Module]

LOSSES: Registry[LossBuilder] = Registry("loss")

#: ``auto_class_weights`` never gives a class more than this many times the smallest weight: a
#: class with a handful of pixels would otherwise get a weight in the thousands, and its few pixels
#: would dominate the gradient (exploding steps, a model that paints that class everywhere).
MAX_WEIGHT_RATIO = 50.0

_TINY = 1e-12  # keeps denominators (sums of pixel weights) and focal's (1 - p) off zero


def _valid_and_safe(target: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labelled-pixel mask, and the target with ignored pixels set to class 0 (safe to index)."""
    valid = target != ignore_index
    return valid, torch.where(valid, target, torch.zeros_like(target))


def _pixel_weights(
    safe: torch.Tensor, valid: torch.Tensor, class_weights: torch.Tensor | None
) -> torch.Tensor:
    """Per-pixel weights: the target class's weight (1 without weights), 0 where ignored."""
    if class_weights is None:
        return valid.to(torch.float32)
    return valid * class_weights[safe]


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(w * v) / sum(w)``; 0 (with a zero gradient) when every weight is 0."""
    return (values * weights).sum() / weights.sum().clamp_min(_TINY)


class _PixelLoss(nn.Module):
    """Base of the per-pixel losses: ignore index and class weights (a non-persistent buffer)."""

    class_weights: torch.Tensor | None

    def __init__(self, ignore_index: int, class_weights: torch.Tensor | None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("class_weights", class_weights, persistent=False)


class CrossEntropy(_PixelLoss):
    """Multiclass cross-entropy (torch's), averaged over labelled pixels only.

    torch's ``reduction="mean"`` divides 0 by 0 when every pixel is ignored (NaN); this sums
    torch's per-pixel values and divides by the labelled pixels' weight, which is the same mean
    otherwise.

    Args:
        ignore_index: target value excluded from the loss.
        class_weights: one weight per class, or None.
        label_smoothing: torch's label smoothing (0: off).
    """

    def __init__(
        self, ignore_index: int, class_weights: torch.Tensor | None, label_smoothing: float = 0.0
    ) -> None:
        super().__init__(ignore_index, class_weights)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of ``(N, C, H, W)`` logits against an ``(N, H, W)`` target."""
        per_pixel = nn.functional.cross_entropy(
            logits,
            target,
            weight=self.class_weights,
            ignore_index=self.ignore_index,
            reduction="none",
            label_smoothing=self.label_smoothing,
        )
        valid, safe = _valid_and_safe(target, self.ignore_index)
        weight_sum = _pixel_weights(safe, valid, self.class_weights).sum()
        return per_pixel.sum() / weight_sum.clamp_min(_TINY)


class BinaryCrossEntropy(_PixelLoss):
    """Sigmoid cross-entropy over labelled pixels.

    Binary: one logit channel against the 0/1 target. Multiclass: one-vs-rest, every channel
    against its one-hot target, averaged over channels (a proper loss for each class indicator;
    the argmax of the logits still gives the prediction, but trained probabilities are sigmoids).
    Label smoothing moves the 0/1 targets towards 0.5: ``t * (1 - s) + s / 2``.

    Args:
        ignore_index: target value excluded from the loss.
        class_weights: one weight per class (binary: background, foreground), or None.
        label_smoothing: amount ``s`` of smoothing (0: off).
        one_vs_rest: multiclass logits (``C`` channels) instead of one binary channel.
    """

    def __init__(
        self,
        ignore_index: int,
        class_weights: torch.Tensor | None,
        label_smoothing: float = 0.0,
        *,
        one_vs_rest: bool = False,
    ) -> None:
        super().__init__(ignore_index, class_weights)
        self.label_smoothing = label_smoothing
        self.one_vs_rest = one_vs_rest

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of ``(N, 1 or C, H, W)`` logits against an ``(N, H, W)`` target."""
        valid, safe = _valid_and_safe(target, self.ignore_index)
        if self.one_vs_rest:
            truth = (
                nn.functional.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
            )
        else:
            truth = safe.unsqueeze(1).to(logits.dtype)
        if self.label_smoothing:
            truth = truth * (1.0 - self.label_smoothing) + self.label_smoothing / 2
        per_pixel = nn.functional.binary_cross_entropy_with_logits(
            logits, truth, reduction="none"
        ).mean(dim=1)
        return _weighted_mean(per_pixel, _pixel_weights(safe, valid, self.class_weights))


class FocalLoss(_PixelLoss):
    """Focal loss ``-(1 - p_t)^gamma * log(p_t)``: sigmoid (binary) or softmax (multiclass).

    With ``gamma = 0`` it is exactly the cross-entropy (multiclass) or BCE (binary), class weights
    included. Written here rather than taken from SMP because SMP's multiclass focal is a
    one-vs-rest *sigmoid* focal averaged over classes (not a softmax focal, so gamma = 0 is not
    CE), its binary mode takes no class weights, and with every pixel ignored it averages an empty
    tensor (NaN).

    Args:
        task: ``binary`` or ``multiclass``.
        ignore_index: target value excluded from the loss.
        class_weights: one weight per class, or None (they play the role of focal's ``alpha``).
        gamma: focusing parameter (0: plain cross-entropy).
    """

    def __init__(
        self, task: Task, ignore_index: int, class_weights: torch.Tensor | None, gamma: float
    ) -> None:
        super().__init__(ignore_index, class_weights)
        self.task = task
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of ``(N, 1 or C, H, W)`` logits against an ``(N, H, W)`` target."""
        valid, safe = _valid_and_safe(target, self.ignore_index)
        if self.task == "binary":
            truth = safe.to(logits.dtype)
            log_pt = -nn.functional.binary_cross_entropy_with_logits(
                logits[:, 0], truth, reduction="none"
            )
        else:
            log_pt = logits.log_softmax(dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
        loss = -log_pt
        if self.gamma:
            # 1 - p_t via expm1 (exact near p_t = 1); the floor keeps the gradient of x**gamma
            # finite at x = 0 when gamma < 1.
            loss = loss * (-torch.expm1(log_pt)).clamp_min(_TINY).pow(self.gamma)
        return _weighted_mean(loss, _pixel_weights(safe, valid, self.class_weights))


class LovaszLoss(nn.Module):
    """SMP's Lovász hinge (binary) / Lovász-softmax (multiclass), safe on fully ignored batches.

    SMP drops ignored pixels itself in both modes, but with none left its multiclass path returns
    an empty ``(0, C)`` tensor instead of a scalar; this returns ``0`` (with a zero gradient).

    Args:
        task: ``binary`` or ``multiclass``.
        ignore_index: target value excluded from the loss.
    """

    def __init__(self, task: Task, ignore_index: int) -> None:
        super().__init__()
        from segmentation_models_pytorch.losses import LovaszLoss as SmpLovasz

        self.ignore_index = ignore_index
        self.inner: nn.Module = SmpLovasz(task, per_image=False, ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of ``(N, 1 or C, H, W)`` logits against an ``(N, H, W)`` target."""
        # A host sync, but Lovász sorts and boolean-indexes (syncs) anyway.
        if not bool((target != self.ignore_index).any()):
            return logits.sum() * 0.0
        loss: torch.Tensor = self.inner(logits, target)
        return loss


def soft_skeleton(x: torch.Tensor, iterations: int) -> torch.Tensor:
    """Soft morphological skeleton of probabilities ``x`` ``(N, C, H, W)`` in ``[0, 1]``.

    Shit et al., "clDice - a Novel Topology-Preserving Loss Function for Tubular Structure
    Segmentation", CVPR 2021, section 3.2: erosion is a min-pool, dilation a max-pool, an opening
    is a dilation of an erosion; the skeleton collects, over ``iterations`` erosions, what each
    opening removes (``relu(x - open(x))``), the soft counterpart of Lantuejoul's formula.
    """

    def erode(t: torch.Tensor) -> torch.Tensor:  # cross-shaped min-pool (4-neighbourhood)
        pool = nn.functional.max_pool2d
        across = -pool(-t, (3, 1), stride=1, padding=(1, 0))
        along = -pool(-t, (1, 3), stride=1, padding=(0, 1))
        return torch.minimum(across, along)

    def dilate(t: torch.Tensor) -> torch.Tensor:
        return nn.functional.max_pool2d(t, 3, stride=1, padding=1)

    skeleton = torch.relu(x - dilate(erode(x)))
    for _ in range(iterations):
        x = erode(x)
        delta = torch.relu(x - dilate(erode(x)))
        skeleton = skeleton + torch.relu(delta - skeleton * delta)
    return skeleton


class ClDiceLoss(nn.Module):
    """Soft clDice: ``1 - 2 Tprec Tsens / (Tprec + Tsens)`` over the foreground class(es).

    ``Tprec`` is the share of the predicted soft skeleton inside the true mask, ``Tsens`` the
    share of the true skeleton inside the prediction (Shit et al., CVPR 2021, eq. 1-3). Written
    from the paper's description. Binary: sigmoid of the one logit; multiclass: softmax, the mean
    over classes 1..C-1 (class 0 is background). Ignored pixels are zeroed in both the
    prediction and the truth before the skeletons are taken. A fully ignored batch gives 0.

    Args:
        task: ``binary`` or ``multiclass``.
        ignore_index: target value excluded from the loss.
        iterations: soft-skeleton iterations (at least the largest structure radius in pixels).
        smooth: added to the sums so that empty skeletons give finite ratios.
    """

    def __init__(self, task: Task, ignore_index: int, iterations: int, smooth: float = 1.0) -> None:
        super().__init__()
        self.task = task
        self.ignore_index = ignore_index
        self.iterations = iterations
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of ``(N, 1 or C, H, W)`` logits against an ``(N, H, W)`` target."""
        valid, safe = _valid_and_safe(target, self.ignore_index)
        if self.task == "binary":
            prob = torch.sigmoid(logits)
            truth = safe.unsqueeze(1).to(prob.dtype)
        else:
            prob = logits.softmax(dim=1)[:, 1:]
            hot = nn.functional.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2)
            truth = hot[:, 1:].to(prob.dtype)
        # Ignored pixels count as background before skeletonising: their logits then change
        # nothing (not even the skeleton of their labelled neighbours) and get no gradient.
        keep = valid.unsqueeze(1).to(prob.dtype)
        prob, truth = prob * keep, truth * keep
        skel_pred = soft_skeleton(prob, self.iterations) * keep
        skel_true = soft_skeleton(truth, self.iterations) * keep
        dims = (0, 2, 3)
        tprec = ((skel_pred * truth).sum(dims) + self.smooth) / (skel_pred.sum(dims) + self.smooth)
        tsens = ((skel_true * prob).sum(dims) + self.smooth) / (skel_true.sum(dims) + self.smooth)
        cl_dice = 2.0 * tprec * tsens / (tprec + tsens)
        return (1.0 - cl_dice).mean()


# ------------------------------------------------------------------------------------------------
# Builders: LossBuilder's signature, (task, num_classes, ignore_index, class_weights, cfg)


@LOSSES.register("bce")
def _bce(task: Task, n: int, ignore: int, w: torch.Tensor | None, cfg: LossConfig) -> nn.Module:
    """Binary cross-entropy; for a multiclass task, one-vs-rest BCE over one-hot targets."""
    return BinaryCrossEntropy(ignore, w, cfg.label_smoothing, one_vs_rest=task == "multiclass")


@LOSSES.register("ce")
def _ce(task: Task, n: int, ignore: int, w: torch.Tensor | None, cfg: LossConfig) -> nn.Module:
    """Softmax cross-entropy; for a binary task (one logit channel) ``ce`` means BCE."""
    if task == "binary":
        return _bce(task, n, ignore, w, cfg)
    return CrossEntropy(ignore, w, cfg.label_smoothing)


@LOSSES.register("focal")
def _focal(task: Task, n: int, ignore: int, w: torch.Tensor | None, cfg: LossConfig) -> nn.Module:
    """Focal loss with ``cfg.focal_gamma``."""
    return FocalLoss(task, ignore, w, cfg.focal_gamma)


@LOSSES.register("lovasz")
def _lovasz(task: Task, n: int, ignore: int, w: torch.Tensor | None, cfg: LossConfig) -> nn.Module:
    """Lovász hinge / softmax (class weights unused)."""
    return LovaszLoss(task, ignore)


@LOSSES.register("cldice")
def _cldice(task: Task, n: int, ignore: int, w: torch.Tensor | None, cfg: LossConfig) -> nn.Module:
    """Soft clDice for thin tubular structures (class weights unused)."""
    return ClDiceLoss(task, ignore, cfg.cldice_iterations)


# SMP's Dice, Jaccard and Tversky fit our contract as they are (read in SMP 0.6.0 source): both
# modes take our (N, H, W) target (binary reshapes it to (N, 1, H*W)); ignore_index multiplies
# predictions and targets by the labelled-pixel mask before the sums, so ignored pixels add
# nothing and get no gradient; the score is computed over the whole batch per class, classes
# without a true pixel in the batch contribute 0 (also in binary: a batch without foreground
# gives 0), and a fully ignored batch gives 0. class_weights: multiclass weighted mean of the
# per-class losses; binary refuses them (ValueError), and with one foreground term they would not
# change anything, so they are not passed.


def _smp_region(kind: Literal["dice", "jaccard", "tversky"]) -> LossBuilder:
    """The builder of SMP's soft Dice, Jaccard (IoU) or Tversky loss."""

    def build(
        task: Task, n: int, ignore: int, w: torch.Tensor | None, cfg: LossConfig
    ) -> nn.Module:
        from segmentation_models_pytorch import losses as smp_losses

        weights = None if task == "binary" or w is None else w.tolist()
        if kind == "tversky":  # alpha weighs false positives, beta false negatives
            extra = {"alpha": cfg.tversky_alpha, "beta": cfg.tversky_beta}
            loss: nn.Module = smp_losses.TverskyLoss(
                task, ignore_index=ignore, class_weights=weights, **extra
            )
        else:
            cls = smp_losses.DiceLoss if kind == "dice" else smp_losses.JaccardLoss
            loss = cls(task, ignore_index=ignore, class_weights=weights)
        return loss

    return build


for _kind in ("dice", "jaccard", "tversky"):
    LOSSES.add(_kind, _smp_region(_kind))


# ------------------------------------------------------------------------------------------------
# The weighted sum


class CombinedLoss(nn.Module):
    """A weighted sum of losses; ``forward`` returns the total and each unweighted component.

    Args:
        terms: name -> (loss module, weight); terms weighing 0 are dropped (never computed).
        task: ``binary`` or ``multiclass`` (fixes the expected number of logit channels).
        num_classes: number of classes (2 for binary).
    """

    def __init__(
        self, terms: Mapping[str, tuple[nn.Module, float]], *, task: Task, num_classes: int
    ) -> None:
        super().__init__()
        kept = {name: (module, float(w)) for name, (module, w) in terms.items() if w != 0}
        self.losses = nn.ModuleDict({name: module for name, (module, _) in kept.items()})
        self.weights = {name: w for name, (_, w) in kept.items()}
        self.task = task
        self.num_classes = num_classes

    def extra_repr(self) -> str:
        """The weights, shown by ``print(module)``."""
        return ", ".join(f"{name}={w:g}" for name, w in self.weights.items())

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total, {name: unweighted component})`` of logits against an ``(N, H, W)`` target."""
        channels = 1 if self.task == "binary" else self.num_classes
        if logits.ndim != 4 or logits.shape[1] != channels:
            raise ValueError(
                f"{self.task} loss expects logits (N, {channels}, H, W), got {tuple(logits.shape)}"
            )
        if target.ndim != 3 or target.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(
                f"target must be (N, H, W) matching logits {tuple(logits.shape)}, "
                f"got {tuple(target.shape)}"
            )
        if target.is_floating_point():
            raise ValueError(f"target must hold integer class ids, got {target.dtype}")
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        target = target.long()
        parts = {name: module(logits, target) for name, module in self.losses.items()}
        total = logits.new_zeros(())
        for name, value in parts.items():
            total = total + self.weights[name] * value
        return total, parts


def _resolve_class_weights(
    cfg: LossConfig, class_weights: Sequence[float] | None, num_classes: int
) -> torch.Tensor | None:
    if class_weights is None:
        if cfg.class_weights == "auto":
            raise ConfigError(
                "loss.class_weights is 'auto': pass the resolved weights, "
                "build_loss(..., class_weights=auto_class_weights(pixel_counts))"
            )
        class_weights = cfg.class_weights
    if class_weights is None:
        return None
    return torch.tensor(check_class_weights(class_weights, num_classes), dtype=torch.float32)


def check_class_weights(class_weights: Sequence[float], num_classes: int) -> list[float]:
    """The weights as floats; a ConfigError unless one finite, >= 0 weight per class, not all 0.

    The one home of this check: training calls it before it creates the run folder, and
    :func:`build_loss` again for weights given directly.
    """
    values = [float(w) for w in class_weights]
    if len(values) != num_classes:
        raise ConfigError(
            f"loss.class_weights has {len(values)} values for {num_classes} classes; "
            "give one weight per class (binary: background, foreground)"
        )
    if any(not math.isfinite(w) or w < 0 for w in values) or sum(values) <= 0:
        raise ConfigError(f"loss.class_weights must be finite, >= 0 and not all 0; got {values}")
    return values


def build_loss(
    cfg: LossConfig,
    *,
    task: Task,
    num_classes: int,
    ignore_index: int = 255,
    class_weights: Sequence[float] | None = None,
) -> CombinedLoss:
    """The weighted sum of ``cfg.terms`` for a task.

    Args:
        cfg: the loss section of the config.
        task: ``binary`` (one logit channel) or ``multiclass``.
        num_classes: number of classes; 2 for binary (background, foreground).
        ignore_index: target value excluded from every loss.
        class_weights: one weight per class; None uses ``cfg.class_weights`` when it is a list
            ('auto' must be resolved by the caller with :func:`auto_class_weights`).

    Raises:
        ConfigError: unknown loss name, bad weights, or a class count that does not fit the task.
    """
    if task not in ("binary", "multiclass"):
        raise ConfigError(f"unknown task {task!r}; valid: binary, multiclass")
    if task == "binary" and num_classes != 2:
        raise ConfigError(
            f"a binary task has 2 classes (background, foreground), got {num_classes}"
        )
    if task == "multiclass" and num_classes < 2:
        raise ConfigError(f"a multiclass task needs at least 2 classes, got {num_classes}")
    weights = _resolve_class_weights(cfg, class_weights, num_classes)
    terms: dict[str, tuple[nn.Module, float]] = {}
    for name, weight in cfg.terms.items():
        if not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"loss weight for {name} must be a number >= 0, got {weight}")
        try:
            builder = LOSSES.get(name)
        except UnknownNameError as exc:
            raise ConfigError(f"loss.terms: {exc}") from None
        if weight > 0:
            terms[name] = (builder(task, num_classes, ignore_index, weights, cfg), weight)
    if not terms:
        raise ConfigError("loss.terms: at least one loss needs a positive weight, e.g. {ce: 1}")
    return CombinedLoss(terms, task=task, num_classes=num_classes)


def auto_class_weights(pixel_counts: Sequence[float]) -> list[float]:
    """Inverse-frequency class weights with mean 1 over the classes that have pixels.

    A class's weight is proportional to ``1 / count``, capped at :data:`MAX_WEIGHT_RATIO` times the
    smallest weight, then all are scaled so that the classes with pixels average 1. A class with no
    pixel gets 1.0 (neutral: it adds nothing to training, and should it appear it weighs like an
    average class).

    Args:
        pixel_counts: labelled pixels per class, in class-id order (shares work too: only the
            ratios matter).

    Raises:
        ConfigError: an empty list, or a negative or non-finite count.
    """
    counts = [float(c) for c in pixel_counts]
    if not counts:
        raise ConfigError("auto class weights need one pixel count per class, got none")
    if any(not math.isfinite(c) or c < 0 for c in counts):
        raise ConfigError(f"pixel counts must be finite and >= 0, got {counts}")
    inverse = {i: 1.0 / c for i, c in enumerate(counts) if c > 0}
    if not inverse:
        return [1.0] * len(counts)
    cap = MAX_WEIGHT_RATIO * min(inverse.values())
    clipped = {i: min(w, cap) for i, w in inverse.items()}
    mean = sum(clipped.values()) / len(clipped)
    return [clipped[i] / mean if i in clipped else 1.0 for i in range(len(counts))]
