"""The planning rules of ``segflow plan``: dataset facts + device + budget -> config settings.

Each rule is a pure function ``rule(ctx, chosen) -> Decision``: it reads the :class:`PlanContext`
(fingerprint, device, budget, step timings) and the settings chosen so far (dotted config keys)
and returns the entries it sets with the reason, which ends up as a comment in the planned
``config.yaml``. :data:`RULES` lists them in the order they run; :class:`segflow.train.planner.Planner`
runs them and lets any be replaced by name. The constants below are the thresholds they use,
each with where its value came from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segflow.config import SegflowConfig, describe
from segflow.data.fingerprint import Fingerprint
from segflow.train.plan_contrast import choose_contrast
from segflow.train.plan_cost import (
    BUDGET_FILL,
    SLIM_DECODER,
    DeviceInfo,
    StepTimer,
    format_seconds,
    tune_seconds,
)

#: A class whose median structure width is at most this many pixels is thin (vessels, cracks).
THIN_WIDTH = 6.0
#: A foreground class with less than this share of the labelled pixels is rare.
RARE_FREQUENCY = 0.05
#: Most / least frequent class above this ratio: imbalance strong enough for class weights.
STRONG_IMBALANCE = 50.0
#: Training crop side on each device before object sizes are considered (pixels).
BASE_TILE = {"cpu": 256, "cuda": 512}
#: Largest training crop per device (objects larger than this are seen in parts).
MAX_TILE = {"cpu": 512, "cuda": 1024}
MIN_TILE = 64
#: Share of the device's (GPU) or available (CPU) memory a training step may use.
MEMORY_SHARE = {"cpu": 0.5, "cuda": 0.8}
#: Largest batch per device. On a CPU, batch 8 with AdamW 1e-3 against batch 4 with 2e-3, same
#: 5-minute budget (benchmarks/quality.py --contenders segflow --set ...): DSB2018 test Dice
#: 0.761 vs 0.680, CHASE_DB1 0.739 vs 0.749 (within its seed spread).
MAX_BATCH = {"cpu": 8, "cuda": 32}
MIN_BATCH = 2
#: Measured or tabled step times are multiplied by this (data loading, logging, validation
#: start-up). 1.0 on a CPU because a slower machine no longer costs quality (the budget schedule
#: anneals by time) while a margin leaves the budget unused: with 1.15 and a fill of 0.9 the
#: quality benchmark's runs ended after 230 of 300 s (the steps ran 0.86x as long as measured).
SAFETY = {"cpu": 1.0, "cuda": 1.25}
#: Seconds a run spends outside the training loop: start-up, statistics, MLflow, final saves.
SETUP_SECONDS = {"cpu": 30.0, "cuda": 45.0}
#: Validation's cost per pixel besides the forward pass (loss terms, labels, confusion matrix),
#: seconds: measured on the 2-core CPU on a 1024 x 960 CHASE_DB1 image (0.23 s + 0.18 s).
VALIDATION_EXTRA = {"cpu": 0.4e-6, "cuda": 0.0}
#: Validation may take at most this share of an epoch's time (else it runs every few epochs).
VALIDATION_SHARE = 0.15
#: bf16-mixed is planned on a CPU only when a measured step is at least this many times faster
#: than fp32 (measured 2.1x on the AMX Xeon segflow is developed on; a smaller gain is within
#: what load from other processes can fake).
BF16_MIN_SPEEDUP = 1.2
#: Training activations in bytes per input pixel per sample (fp32), measured on CPU with
#: Unet at 256 px (resnet18 2.0 KB, resnet34 2.1 KB) and padded; others estimated.
ACTIVATION_BYTES = {"resnet18": 2400, "resnet34": 2600, "resnet50": 6500}
DEFAULT_ACTIVATION_BYTES = 6500


# ------------------------------------------------------------------------------------------------
# Inputs


def weights_cached(encoder: str) -> bool:
    """Whether SMP's ImageNet weights for ``encoder`` are in the local Hugging Face cache."""
    try:
        import segmentation_models_pytorch as smp
        from huggingface_hub import try_to_load_from_cache

        settings = smp.encoders.encoders[encoder]["pretrained_settings"]["imagenet"]
        found = try_to_load_from_cache(
            settings["repo_id"], "model.safetensors", revision=settings.get("revision")
        )
    except (ImportError, KeyError, TypeError, ValueError):
        return False
    return isinstance(found, str)


@dataclass(frozen=True)
class PlanContext:
    """Everything the rules may look at.

    Attributes:
        fingerprint: the dataset's measurements.
        device: the device to train on.
        budget_s: wall-clock seconds the training run may take.
        train_images: labelled images in the training split.
        val_images: labelled images in the validation split.
        timer: step-time estimates for the device.
        dataset: the dataset folder (written to ``data.dataset``), if any.
        fixed: settings given by the user (dotted keys); they win over every rule.
        has_weights: whether pretrained weights for an encoder are available offline.
    """

    fingerprint: Fingerprint
    device: DeviceInfo
    budget_s: float
    train_images: int
    val_images: int
    timer: StepTimer
    dataset: Path | None = None
    fixed: Mapping[str, Any] = field(default_factory=dict)
    has_weights: Callable[[str], bool] = weights_cached


@dataclass(frozen=True)
class Decision:
    """What one rule decided: config entries (dotted keys) and why."""

    settings: dict[str, Any]
    reason: str

    @property
    def value(self) -> Any:
        """The single value set, or the settings dict when the rule sets several keys."""
        return next(iter(self.settings.values())) if len(self.settings) == 1 else self.settings


Rule = Callable[[PlanContext, Mapping[str, Any]], Decision]


def default_settings() -> dict[str, Any]:
    """Every config key's default value (dotted keys)."""
    return {key: value for key, value, _ in describe(SegflowConfig())}


def _get(chosen: Mapping[str, Any], key: str) -> Any:
    return chosen[key] if key in chosen else default_settings()[key]


# ------------------------------------------------------------------------------------------------
# Facts derived from the fingerprint


def channels_of(fp: Fingerprint) -> int:
    """The majority channel count."""
    return int(max(fp.channels.items(), key=lambda kv: kv[1])[0])


def dtype_of(fp: Fingerprint) -> str:
    """The majority pixel dtype."""
    return max(fp.dtypes.items(), key=lambda kv: kv[1])[0]


def foreground(fp: Fingerprint) -> list[Any]:
    """Foreground classes (id != 0) that have pixels."""
    return [c for c in fp.classes if c.id != 0 and c.pixels > 0]


def thin_classes(fp: Fingerprint) -> list[str]:
    """Names of foreground classes whose median structure width is at most THIN_WIDTH."""
    return [c.name for c in foreground(fp) if 0 < c.median_width <= THIN_WIDTH]


def median_pixels(fp: Fingerprint) -> float:
    """Pixels of a median-sized image."""
    return fp.height["median"] * fp.width["median"]


def steps_per_epoch(ctx: PlanContext, chosen: Mapping[str, Any]) -> int:
    """Optimizer steps in one epoch.

    The loader drops the last partial batch; ``train.limit_train_batches`` caps the epoch.
    """
    crops = ctx.train_images * int(_get(chosen, "data.crops_per_image"))
    batch = int(_get(chosen, "data.batch_size"))
    steps = max(1, crops // batch) if crops > batch else 1
    limit = _get(chosen, "train.limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool):
        steps = min(steps, limit)
    elif isinstance(limit, float) and limit < 1.0:
        steps = max(1, int(steps * limit))
    return steps


def _round32(value: float) -> int:
    return int(math.ceil(value / 32.0) * 32)


# ------------------------------------------------------------------------------------------------
# The rules


def choose_model(ctx: PlanContext, chosen: Mapping[str, Any]) -> Decision:
    """Architecture and encoder sized to the device (and the budget on a GPU)."""
    thin = thin_classes(ctx.fingerprint)
    why_unet = (
        f"Unet keeps full-resolution skip connections, needed for thin {', '.join(thin)}"
        if thin
        else "Unet: skip connections at every scale, a strong default for 2D segmentation"
    )
    kwargs: dict[str, Any] = {}
    if ctx.device.kind == "cpu":
        encoder = "resnet18"
        kwargs = {"decoder_channels": list(SLIM_DECODER)}
        why = (
            "on a CPU the lightest ResNet with a half-width decoder trains the most steps per "
            "minute (1.7x resnet34's, measured)"
        )
    elif ctx.device.memory_gb >= 16 and ctx.budget_s >= 1800:
        encoder = "resnet50"
        why = (
            f"a {ctx.device.memory_gb:.0f} GiB GPU and {format_seconds(ctx.budget_s)} afford "
            "a deeper encoder"
        )
    else:
        encoder = "resnet34"
        why = "on a GPU resnet34 balances capacity and speed for this budget"
    return Decision(
        {"model.arch": "Unet", "model.encoder": encoder, "model.kwargs": kwargs},
        f"{why_unet}; {why}",
    )


def choose_encoder_weights(ctx: PlanContext, chosen: Mapping[str, Any]) -> Decision:
    """ImageNet weights when they are already on this machine, else random initialisation."""
    encoder = str(_get(chosen, "model.encoder"))
    if ctx.has_weights(encoder):
        return Decision(
            {"model.encoder_weights": "imagenet"},
            f"ImageNet weights for {encoder} are in the local cache: pretrained encoders learn "
            "faster",
        )
    return Decision(
        {"model.encoder_weights": None},
        f"no ImageNet weights for {encoder} cached here: training from scratch works offline "
        "(set model.encoder_weights=imagenet to download them)",
    )


def choose_normalization(ctx: PlanContext, chosen: Mapping[str, Any]) -> Decision:
    """ImageNet statistics only for 8-bit RGB with pretrained weights, else the dataset's own."""
    fp = ctx.fingerprint
    dtype, channels = dtype_of(fp), channels_of(fp)
    stats = ", ".join(
        f"{m:.4g}±{s:.3g}" for m, s in zip(fp.channel_mean, fp.channel_std, strict=False)
    )
    if dtype != "uint8":
        return Decision(
            {"data.preprocess.normalize": "dataset"},
            f"{dtype} images (values {fp.value_range[0]:g}..{fp.value_range[1]:g}): normalised by "
            f"the training images' mean/std (here {stats}), not by /255",
        )
    if channels == 3 and _get(chosen, "model.encoder_weights") == "imagenet":
        return Decision(
            {"data.preprocess.normalize": "imagenet"},
            "8-bit RGB with an ImageNet-pretrained encoder: the statistics its weights expect",
        )
    return Decision(
        {"data.preprocess.normalize": "dataset"},
        f"{channels}-channel {dtype} images, encoder trained from scratch: the training images' "
        f"own mean/std ({stats})",
    )


def choose_tile_size(ctx: PlanContext, chosen: Mapping[str, Any]) -> Decision:
    """Training crop: the device's base size, grown for large objects, shrunk for small images."""
    fp = ctx.fingerprint
    kind = ctx.device.kind
    tile = BASE_TILE[kind]
    notes = [f"{tile} px is the {kind.upper()} default"]
    compact = [c for c in foreground(fp) if c.p90_object_extent and c.name not in thin_classes(fp)]
    if compact:
        extent = max(c.p90_object_extent for c in compact)
        need = min(_round32(1.5 * extent), MAX_TILE[kind])
        if need > tile:
            tile = need
            notes.append(
                f"objects up to {extent:.0f} px (90th percentile) need context around them"
            )
        else:
            notes.append(f"objects up to {extent:.0f} px (90th percentile) fit with context")
    side = max(fp.height["median"], fp.width["median"])
    if side < tile:
        tile = max(MIN_TILE, _round32(side))
        notes.append(f"a median image ({side:.0f} px) fits in one {tile}-px tile")
    thin = thin_classes(fp)
    if thin:
        notes.append(f"thin {', '.join(thin)} need full resolution: crops, never downscaling")
    return Decision({"data.tile_size": tile}, "; ".join(notes))


def choose_inference(ctx: PlanContext, chosen: Mapping[str, Any]) -> Decision:
    """Validate whole images when they fit in memory, else in tiles; say how prediction tiles."""
    fp = ctx.fingerprint
    tile = int(_get(chosen, "data.tile_size"))
    side = int(max(fp.height["max"], fp.width["max"]))
    # Inference activations are about a fifth of training's per pixel.
    per_px = _activation_bytes(str(_get(chosen, "model.encoder"))) / 5
    budget = ctx.device.memory_gb * 2**30 * MEMORY_SHARE[ctx.device.kind]
    whole = int(math.sqrt(budget / per_px))
    limit = max(tile, min(whole, 4096))
    if side <= tile:
        reason = f"images (up to {side} px) fit in one {tile}-px tile: predicted whole"
    elif side <= limit:
        reason = (
            f"images up to {side} px are larger than the {tile}-px tile: validation sees them "
            f"whole (they fit in memory), prediction runs in {tile}-px tiles with Gaussian blending"
        )
    else:
        reason = (
            f"images up to {side} px do not fit in memory whole: validation and prediction run "
            f"in {tile}-px tiles with Gaussian blending"
        )
    return Decision({"data.val_tile_threshold": max(64, min(limit, 4096))}, reason)


def _activation_bytes(encoder: str) -> float:
    return float(ACTIVATION_BYTES.get(encoder, DEFAULT_ACTIVATION_BYTES))


def choose_batch_size(ctx: PlanContext, chosen: Mapping[str, Any]) -> Decision:
    """The most tiles that fit in the device's memory, capped per device."""
    dev = ctx.device
    tile = int(_get(chosen, "data.tile_size"))
    encoder = str(_get(chosen, "model.encoder"))
    per_px = _activation_bytes(encoder) * (1.5 * 0.6 if dev.kind == "cuda" else 1.0)
    per_sample = per_px * tile * tile
    budget = dev.memory_gb * 2**30 * MEMORY_SHARE[dev.kind] - 1.5 * 2**30  # weights, optimiser
    fits = max(1, int(budget // per_sample))
    batch = max(MIN_BATCH, min(2 ** int(math.log2(fits)), MAX_BATCH[dev.kind]))
    where = "GPU memory" if dev.kind == "cuda" else "free RAM"
    reason = (
        f"{dev.memory_gb:.0f} GiB {where} holds about {fits} {tile}-px tiles of {encoder}"
        f" (~{per_sample / 2**20:.0f} MiB each)"
    )
    if fits > MAX_BATCH[dev.kind]:
        reason += (
            f"; capped at {batch}: on a CPU, more steps of fewer tiles learn more per minute"
            if dev.kind == "cpu"
            else f"; capped at {batch}"
        )
    elif fits < MIN_BATCH:
        reason += f"; raised to {MIN_BATCH} for batch normalisation (expect memory pressure)"
    return Decision({"data.batch_size": batch}, reason)


def choose_crops(ctx: PlanContext, chosen: Mapping[str, Any]) -> Decision:
    """Crops per image so that an epoch covers each image about once; foreground share."""
    fp = ctx.fingerprint
    tile = int(_get(chosen, "data.tile_size"))
    pixels = fp.mean_pixels or median_pixels(fp)
    crops = int(min(32, max(1, round(pixels / (tile * tile)))))
    fg = foreground(fp)
    rarest = min((c.frequency for c in fg), default=1.0)
    share = 0.5 if rarest < 0.02 or fp.empty_mask_share > 0.3 else 0.33
    reason = (
        f"an average image ({pixels / 1e6:.2g} Mpx) holds about {crops} {tile}-px tile(s): "
        f"{crops} crop(s) per image make an epoch about one pass over the pixels"
    )
    reason += (
        f"; half the crops centred on foreground: it is rare ({rarest:.1%} of pixels"
        f"{f', {fp.empty_mask_share:.0%} of masks empty' if fp.empty_mask_share else ''})"
        if share == 0.5
        else "; a third of the crops forced onto foreground (nnU-Net's oversampling)"
    )
    return Decision({"data.crops_per_image": crops, "data.foreground_crops": share}, reason)


def choose_class_weights(ctx: PlanContext, chosen: Mapping[str, Any]) -> Decision:
    """Inverse-frequency weights when the class imbalance is strong."""
    present = [c for c in ctx.fingerprint.classes if c.pixels > 0]
    if len(present) < 2:
        return Decision({"loss.class_weights": None}, "one class with pixels: nothing to balance")
    most = max(present, key=lambda c: c.frequency)
    least = min(present, key=lambda c: c.frequency)
    ratio = most.frequency / least.frequency
    if ratio >= STRONG_IMBALANCE:
        return Decision(
            {"loss.class_weights": "auto"},
            f"strong imbalance: {most.name} has {ratio:.0f}x the pixels of {least.name} "
            f"(>= {STRONG_IMBALANCE:.0f}x): inverse-frequency weights, capped",
        )
    return Decision(
        {"loss.class_weights": None},
        f"imbalance {most.name}:{least.name} is {ratio:.0f}:1 (< {STRONG_IMBALANCE:.0f}:1): the "
        "Dice term already balances it; no class weights",
    )


def choose_loss(ctx: PlanContext, chosen: Mapping[str, Any]) -> Decision:
    """CE + Dice; more Dice for thin or rare structures (boundary pixels dominate their score)."""
    fp = ctx.fingerprint
    thin = thin_classes(fp)
    rare = [c.name for c in foreground(fp) if c.frequency < RARE_FREQUENCY]
    if thin or rare:
        why = []
        if thin:
            widths = ", ".join(f"{c.median_width:.0f}" for c in foreground(fp) if c.name in thin)
            why.append(f"thin {', '.join(thin)} (median width {widths} px)")
        if rare:
            why.append(f"rare {', '.join(rare)} (< {RARE_FREQUENCY:.0%} of pixels)")
        return Decision(
            {"loss.terms": {"ce": 0.3, "dice": 0.7}},
            f"{' and '.join(why)}: Dice weighs every structure by its overlap, not by its few "
            "pixels, so it gets 0.7 and cross-entropy 0.3",
        )
    return Decision(
        {"loss.terms": {"ce": 0.5, "dice": 0.5}},
        "cross-entropy for calibrated pixels + Dice for overlap, equally weighted",
    )


def choose_optimizer(ctx: PlanContext, chosen: Mapping[str, Any]) -> Decision:
    """AdamW; a higher rate from scratch, a gentler one for pretrained encoders."""
    if _get(chosen, "model.encoder_weights") is not None:
        return Decision(
            {"optimizer.name": "adamw", "optimizer.lr": 5e-4, "optimizer.weight_decay": 1e-4},
            "AdamW at 5e-4: fine-tuning a pretrained encoder without wiping its features",
        )
    return Decision(
        {"optimizer.name": "adamw", "optimizer.lr": 1e-3, "optimizer.weight_decay": 1e-4},
        "AdamW at 1e-3 for a network from scratch (2e-3 at half the batch scored lower on the "
        "quality benchmark)",
    )


#: Whole epochs leave part of the budget unused; the epoch grows when that gains more than 3%.
FILL_GROW = 1.03


def choose_epochs(ctx: PlanContext, chosen: Mapping[str, Any]) -> Decision:
    """Epochs that fill the budget, from the step time; validation cadence; a hard time limit.

    With few epochs, whole epochs would waste up to one epoch of the budget: the epoch is then
    resized (``data.crops_per_image`` + ``train.limit_train_batches``) so that they fill it; with
    more, the epoch grows when rounding to whole epochs (a multiple of the validation interval)
    would leave more than 3% of the budget unused.
    """
    fp, dev = ctx.fingerprint, ctx.device
    model = {k: _get(chosen, k) for k in ("model.arch", "model.encoder", "model.kwargs")}
    tile = int(_get(chosen, "data.tile_size"))
    batch = int(_get(chosen, "data.batch_size"))
    channels, classes = channels_of(fp), len(fp.classes)
    precision = str(_get(chosen, "train.precision"))
    step_s = ctx.timer.train_step(model, tile, batch, channels, classes, precision=precision)
    step_s *= SAFETY[dev.kind]
    steps = steps_per_epoch(ctx, chosen)
    val_px = ctx.val_images * (fp.mean_pixels or median_pixels(fp))
    val_s = val_px * ctx.timer.infer_pixel(model, channels, classes, precision=precision)
    val_s = (val_s + val_px * VALIDATION_EXTRA[dev.kind]) * SAFETY[dev.kind]
    setup_s = SETUP_SECONDS[dev.kind] + 0.05 * ctx.train_images * median_pixels(fp) / 1e6
    tune_s = (
        tune_seconds(val_s, val_px, tile, math.sqrt(median_pixels(fp)), classes)
        if _get(chosen, "train.tune") and ctx.val_images
        else 0.0
    )
    fit_s = max(ctx.budget_s - setup_s - tune_s, 0.5 * ctx.budget_s)
    usable = BUDGET_FILL * fit_s
    every = max(1, math.ceil(val_s / (VALIDATION_SHARE * (steps * step_s + 1.0))))
    settings: dict[str, Any] = {}
    fixed = ctx.fixed.get("train.epochs")
    if fixed is not None:
        epochs = int(fixed)
        every = max(d for d in range(1, min(every, epochs) + 1) if epochs % d == 0)
        fits = f"{epochs} epoch(s) set by you"
    else:
        epochs, every = _validated_epochs(usable, steps * step_s + 1.0, val_s, every)
        fits = f"{epochs} epochs of {steps} steps fit"
        if epochs < 10:  # resize the epoch so that the epochs fill the budget
            epochs = max(1, round(usable / (steps * step_s + 1.0 + val_s)))
            every = 1
            steps = max(1, int((usable / epochs - 1.0 - val_s) / step_s))
            crops = max(1, math.ceil(steps * batch / max(1, ctx.train_images)))
            settings = {"data.crops_per_image": crops, "train.limit_train_batches": steps}
            fits = (
                f"{epochs} epoch(s) of {steps} steps fill it ({crops} crop(s) per image, "
                f"train.limit_train_batches={steps})"
            )
        else:  # whole epochs (a multiple of the validation interval) round down: grow the epoch
            grown = int(((usable - epochs // every * val_s) / epochs - 1.0) / step_s)
            if grown > FILL_GROW * steps:
                crops = max(1, math.ceil(grown * batch / max(1, ctx.train_images)))
                settings = {"data.crops_per_image": crops, "train.limit_train_batches": grown}
                fits = (
                    f"{epochs} epochs of {steps} steps fit, grown to {grown} steps to fill it "
                    f"({crops} crop(s) per image, train.limit_train_batches={grown})"
                )
                steps = grown
    reason = (
        f"a {_precision_name(precision, dev)} step of {batch} x {tile}-px tiles takes "
        f"~{step_s:.2f} s ({ctx.timer.source}, "
        f"x{SAFETY[dev.kind]} margin), validation ~{val_s:.0f} s"
        f"{f' every {every} epochs' if every > 1 else ''}: in {format_seconds(fit_s)} of training "
        f"(budget {format_seconds(ctx.budget_s)} minus ~{setup_s:.0f} s start-up"
        f"{f' and ~{tune_s:.0f} s for train.tune' if tune_s else ''}; planned to "
        f"{BUDGET_FILL:.0%}) {fits}; train.max_minutes stops the run at the budget regardless"
    )
    return Decision(
        {
            "train.epochs": epochs,
            "train.val_every": every,
            "train.max_minutes": round(fit_s / 60.0, 2),
            **settings,
        },
        reason,
    )


def _validated_epochs(usable: float, epoch_s: float, val_s: float, every: int) -> tuple[int, int]:
    """The most epochs that fit, a multiple of the validation interval (the last is validated).

    Rounding down to a multiple of ``every`` can waste up to ``every - 1`` epochs, so intervals
    from ``every`` down to half of it are tried (validating a little more often).
    """
    best = (0, every)
    for interval in range(every, max(1, every // 2) - 1, -1):
        epochs = max(1, int(usable / (epoch_s + val_s / interval)))
        interval = min(interval, epochs)
        epochs = max(interval, epochs // interval * interval)
        if epochs > best[0]:
            best = (epochs, interval)
    return best


def _precision_name(precision: str, device: DeviceInfo) -> str:
    if precision == "auto":
        return "mixed-precision" if device.kind == "cuda" else "fp32"
    return "fp32" if precision == "32" else precision


def choose_schedule(ctx: PlanContext, chosen: Mapping[str, Any]) -> Decision:
    """Cosine decay to the end of the planned epochs, after a short linear warm-up."""
    epochs = int(_get(chosen, "train.epochs"))
    steps = steps_per_epoch(ctx, chosen)
    total = epochs * steps
    warm_steps = min(500, max(10, round(0.03 * total))) if total >= 50 else 0
    warmup = round(warm_steps / steps, 2) if warm_steps else 0.0
    if warmup and round(warmup * steps) >= total:
        warmup = 0.0
    reason = f"cosine decay over the {total} planned steps ends the run at a low rate"
    reason += (
        f", after {warm_steps} warm-up steps ({warmup:g} epochs) that keep the first high-rate "
        "steps stable"
        if warmup
        else " (too few steps for a warm-up)"
    )
    return Decision(
        {"schedule.name": "cosine", "schedule.warmup_epochs": warmup, "schedule.min_lr": 1e-6},
        reason,
    )


def choose_augment(ctx: PlanContext, chosen: Mapping[str, Any]) -> Decision:
    """Heavier augmentation for smaller datasets, unless the budget allows only a few passes."""
    n = ctx.train_images
    if n < 100:
        preset, why = "heavy", f"{n} training images are few"
    elif n < 1000:
        preset, why = "medium", f"{n} training images"
    else:
        preset, why = "light", f"{n} training images are plenty"
    epochs = int(_get(chosen, "train.epochs"))
    if preset == "heavy" and epochs < 20:
        preset = "medium"
        why += f", but {epochs} epoch(s) are too few passes for heavy distortions to pay off"
    return Decision({"augment.preset": preset}, f"{why}: {preset} augmentation")


def cpu_precision(
    timer: StepTimer, model: Mapping[str, Any], tile: int, batch: int, channels: int, classes: int
) -> tuple[str, str]:
    """``train.precision`` for a CPU and why: bf16-mixed only when measured clearly faster.

    A CPU with native bf16 (:func:`segflow._hw.cpu_supports_bf16`) gets one training step of
    ``model`` on ``batch`` x ``tile`` px timed in fp32 and in bf16-mixed; bf16-mixed is chosen
    when it is at least :data:`BF16_MIN_SPEEDUP` times faster and its loss stayed finite. Without
    the flags, or with a timer that does not measure (``timing=table``), nothing is timed: fp32.
    """
    from segflow._hw import cpu_supports_bf16

    if not cpu_supports_bf16():
        return "32", (
            "fp32; this CPU has no native bf16 (no AMX or AVX-512 BF16 flag), so bf16 would be "
            "emulated and slower"
        )
    timing = timer.compare_precision(model, tile, batch, channels, classes, "bf16-mixed")
    if timing is None:
        return "32", (
            f"it computes bf16 natively, but with {timer.source} step times nothing was "
            "measured: fp32 until measured (plan with timing=measure to time bf16-mixed)"
        )
    measured = (
        f"it computes bf16 natively: a step of {batch} x {tile}-px tiles measured "
        f"{timing.fp32_s:.2f} s in fp32 and {timing.other_s:.2f} s in bf16-mixed "
        f"({timing.speedup:.2f}x)"
    )
    if not timing.finite:
        return "32", f"{measured}, but the bf16-mixed loss was not finite: fp32"
    if timing.speedup < BF16_MIN_SPEEDUP:
        return "32", f"{measured}, less than {BF16_MIN_SPEEDUP:g}x faster: fp32"
    return "bf16-mixed", (
        f"{measured}, >= {BF16_MIN_SPEEDUP:g}x: bf16-mixed (weights, checkpoints and the bundle "
        "stay fp32)"
    )


def choose_hardware(ctx: PlanContext, chosen: Mapping[str, Any]) -> Decision:
    """The accelerator and precision; on a CPU by measurement (:func:`cpu_precision`).

    On a GPU: mixed precision (``auto``). ``train.precision`` set by the user is not timed.
    """
    dev = ctx.device
    if dev.kind == "cuda":
        return Decision(
            {"train.accelerator": "gpu", "train.precision": "auto"},
            f"{dev.name}: mixed precision (bf16 where supported) roughly doubles speed",
        )
    if "train.precision" in ctx.fixed:
        return Decision(
            {"train.accelerator": "cpu", "train.precision": ctx.fixed["train.precision"]},
            "not timed",
        )
    model = {k: _get(chosen, k) for k in ("model.arch", "model.encoder", "model.kwargs")}
    tile, batch = int(_get(chosen, "data.tile_size")), int(_get(chosen, "data.batch_size"))
    fp = ctx.fingerprint
    precision, why = cpu_precision(ctx.timer, model, tile, batch, channels_of(fp), len(fp.classes))
    return Decision(
        {"train.accelerator": "cpu", "train.precision": precision}, f"{dev.name}: {why}"
    )


#: The default rules, in the order they run (later rules read what earlier ones chose).
RULES: dict[str, Rule] = {
    "model": choose_model,
    "weights": choose_encoder_weights,
    "normalize": choose_normalization,
    "contrast": choose_contrast,
    "tile": choose_tile_size,
    "inference": choose_inference,
    "batch": choose_batch_size,
    "hardware": choose_hardware,  # times precisions of the model, tile and batch chosen above
    "crops": choose_crops,
    "class_weights": choose_class_weights,
    "loss": choose_loss,
    "optimizer": choose_optimizer,
    "epochs": choose_epochs,
    "schedule": choose_schedule,
    "augment": choose_augment,
}
