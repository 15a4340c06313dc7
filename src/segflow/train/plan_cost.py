"""What a plan's time goes to: the budget, the device, and a training step's cost on it.

:func:`parse_budget` reads ``--budget``; :func:`detect_device` finds the device a plan is for;
a :class:`StepTimer` estimates the seconds of one training step and of inference per pixel,
either measured on this machine (:class:`MeasuredTimer`: a few real forward/backward passes of
the chosen network) or read from :data:`CPU_TABLE` / :data:`GPU_TABLE` (:class:`TableTimer`).
:func:`budget_schedule_callback` keeps the learning-rate schedule on the clock during training.
The rules that turn these estimates into settings are in :mod:`segflow.train.plan_rules`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml

from segflow.errors import UsageError

DeviceKind = Literal["cpu", "cuda"]

#: Epochs are planned to fill this share of the training time; train.max_minutes is the hard stop.
BUDGET_FILL = 0.95
#: Calibrated table: microseconds per input pixel for one training step (forward, backward,
#: AdamW) and for inference of a Unet with the default decoder, on the 2-core x86 CPU segflow is
#: developed on (torch 2.14, fp32, 2 threads; resnet18 and resnet34 measured, resnet50 estimated).
CPU_TABLE = {"resnet18": (3.1, 1.1), "resnet34": (3.9, 1.35), "resnet50": (8.0, 3.0)}
#: Unet decoder with half the default channels: as fast as this share of the default, measured
#: on the same CPU with resnet18 (training 2.17 vs 2.81 us/px, inference 0.84 vs 1.06).
SLIM_DECODER = [128, 64, 32, 16, 16]
SLIM_DECODER_COST = (0.78, 0.8)
#: Rough table for a recent data-centre GPU in bf16 (not measured here: conservative guesses).
GPU_TABLE = {"resnet18": (0.03, 0.01), "resnet34": (0.04, 0.013), "resnet50": (0.08, 0.025)}
DEFAULT_TABLE = {"cpu": (8.0, 3.0), "cuda": (0.1, 0.03)}
#: A CPU measurement is kept within this factor of the table (either way).
CPU_TRUST = 3.0
#: bf16-mixed cost as a share of fp32 (training step, inference) on a CPU that computes bf16
#: natively, for the table: measured on the AMX Xeon segflow is developed on (Unet-resnet18,
#: half-width decoder, 4 x 256 px, AdamW: 0.30 vs 0.62 s a step).
CPU_BF16_COST = (0.5, 0.5)


#: Inference passes of ``segflow tune`` over the validation split, in plain-pass units: the
#: plain pass, then flip TTA ``h,v`` (3 forward passes per tile).
TUNE_PASSES = 4
#: Post-processing candidates tuned per foreground class (min sizes, fill holes, keep largest),
#: each a connected-components pass over the split: ~20 ns per pixel on the 2-core dev CPU.
TUNE_CANDIDATES, TUNE_POST_S_PER_PX = 12, 2e-8


def tune_seconds(val_s: float, val_px: float, tile: int, side: float, classes: int) -> float:
    """Seconds ``train.tune`` needs after training: its passes over the validation split.

    ``val_s`` is one validation pass over whole images; images larger than ``tile`` are
    predicted in tiles overlapping by 0.25, which covers each pixel ~1.8x; ``side`` is the
    median image side. Plus the post-processing grid, per foreground class.
    """
    tiling = (1 / 0.75) ** 2 if side > tile else 1.0
    post = TUNE_CANDIDATES * max(classes - 1, 1) * val_px * TUNE_POST_S_PER_PX
    return TUNE_PASSES * tiling * val_s + post


def parse_budget(text: str) -> float:
    """``"90s"``, ``"10m"``, ``"1h"``, ``"1h30m"``, ``"1.5h"``, ``"2d"`` -> seconds.

    Raises:
        UsageError: no unit, an unknown unit, or a budget of zero.
    """
    spec = str(text).strip().lower().replace(" ", "")
    match = re.fullmatch(
        r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s)?",
        spec,
    )
    if not spec or match is None:
        raise UsageError(f"budget {text!r}: use a duration such as 90s, 10m, 1h or 1h30m")
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    total = days * 86400 + hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise UsageError(f"budget {text!r}: must be longer than 0 seconds")
    return total


def format_seconds(seconds: float) -> str:
    """``330`` -> ``"5m30s"``."""
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    parts = [f"{h}h" if h else "", f"{m}m" if m else "", f"{sec}s" if sec or not (h or m) else ""]
    return "".join(parts)


@dataclass(frozen=True)
class DeviceInfo:
    """The device a plan is for.

    Attributes:
        kind: ``cpu`` or ``cuda``.
        name: human-readable name.
        memory_gb: GPU memory (cuda) or available RAM (cpu), GiB.
        cpus: CPU cores this process may use.
        present: whether the device is on this machine (step times can then be measured).
    """

    kind: DeviceKind
    name: str
    memory_gb: float
    cpus: int
    present: bool = True


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _available_ram_gb() -> float:
    try:
        with Path("/proc/meminfo").open(encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 8.0


def detect_device(requested: str = "auto") -> DeviceInfo:
    """``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``.

    Planning for ``cuda`` on a machine without one is allowed (to train elsewhere): the plan then
    assumes a 16 GiB GPU and takes step times from :data:`GPU_TABLE`.
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device {requested!r}: use cpu, cuda or auto")
    cpus = _cpus()
    if requested != "cpu":
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return DeviceInfo("cuda", str(props.name), props.total_memory / 2**30, cpus)
        if requested == "cuda":
            return DeviceInfo("cuda", "a CUDA GPU (none here: assumed 16 GiB)", 16.0, cpus, False)
    return DeviceInfo("cpu", f"CPU ({cpus} cores)", _available_ram_gb(), cpus)


@dataclass(frozen=True)
class PrecisionTiming:
    """A training step measured in fp32 and in another precision, interleaved.

    Attributes:
        precision: the other precision (a ``train.precision`` value, e.g. ``bf16-mixed``).
        fp32_s: seconds of an fp32 step.
        other_s: seconds of a step in ``precision``.
        finite: whether every loss computed in ``precision`` was finite.
    """

    precision: str
    fp32_s: float
    other_s: float
    finite: bool

    @property
    def speedup(self) -> float:
        """How many times faster a step in ``precision`` is than in fp32."""
        return self.fp32_s / self.other_s if self.other_s > 0 else 0.0


class StepTimer(Protocol):
    """Estimates how long the network takes on the device.

    ``precision`` is a ``train.precision`` value: ``32``, ``bf16-mixed``, ``16-mixed`` or ``auto``.
    """

    source: str

    def train_step(
        self,
        model: Mapping[str, Any],
        tile: int,
        batch: int,
        channels: int,
        classes: int,
        precision: str = "32",
    ) -> float:
        """Seconds for one training step (forward, backward, optimiser) on ``batch`` tiles."""
        ...

    def infer_pixel(
        self, model: Mapping[str, Any], channels: int, classes: int, precision: str = "32"
    ) -> float:
        """Seconds per input pixel for inference on whole images."""
        ...

    def compare_precision(
        self,
        model: Mapping[str, Any],
        tile: int,
        batch: int,
        channels: int,
        classes: int,
        precision: str,
    ) -> PrecisionTiming | None:
        """fp32 and ``precision`` timed on this machine; None when this timer does not measure."""
        ...


def autocast_dtype(kind: DeviceKind, precision: str) -> Any:
    """The ``torch.autocast`` dtype of ``precision`` on ``kind``, or None for fp32.

    ``auto`` is bf16 on a GPU (fp16 where it lacks bf16) and fp32 on a CPU, as in
    :func:`segflow.train.runner.resolve_precision`.
    """
    import torch

    if precision == "bf16-mixed":
        return torch.bfloat16
    if precision == "16-mixed":
        return torch.float16
    if precision == "auto" and kind == "cuda":
        bf16 = not torch.cuda.is_available() or torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float16
    return None


def _table_entry(
    device: DeviceInfo, model: Mapping[str, Any], precision: str = "32"
) -> tuple[float, float]:
    """Seconds per pixel (training step, inference) from the tables.

    bf16-mixed on a CPU that computes bf16 natively costs :data:`CPU_BF16_COST` of fp32; other
    reduced precisions on a CPU are not tabled and count as fp32 (the GPU table is for bf16).
    """
    from segflow._hw import cpu_supports_bf16

    table = CPU_TABLE if device.kind == "cpu" else GPU_TABLE
    train_us, infer_us = table.get(str(model["model.encoder"]), DEFAULT_TABLE[device.kind])
    kwargs = model.get("model.kwargs") or {}
    if list(kwargs.get("decoder_channels", [])) == SLIM_DECODER:
        train_us, infer_us = train_us * SLIM_DECODER_COST[0], infer_us * SLIM_DECODER_COST[1]
    factor = 1.0
    if device.kind == "cpu":  # the table is for 2 cores; more cores help less than linearly
        factor = (2 / max(1, device.cpus)) ** 0.7
        if precision == "bf16-mixed" and cpu_supports_bf16():
            train_us, infer_us = train_us * CPU_BF16_COST[0], infer_us * CPU_BF16_COST[1]
    return train_us * factor * 1e-6, infer_us * factor * 1e-6


@dataclass
class TableTimer:
    """Step times from the calibrated tables (no computation; used when the device is absent)."""

    device: DeviceInfo
    source: str = "calibrated table"

    def train_step(
        self,
        model: Mapping[str, Any],
        tile: int,
        batch: int,
        channels: int,
        classes: int,
        precision: str = "32",
    ) -> float:
        """Seconds for one training step, from the table's per-pixel time."""
        per_px = _table_entry(self.device, model, precision)[0]
        return float(per_px * tile * tile * batch * max(1.0, channels / 3) ** 0.3)

    def infer_pixel(
        self, model: Mapping[str, Any], channels: int, classes: int, precision: str = "32"
    ) -> float:
        """Seconds per pixel of inference, from the table."""
        return _table_entry(self.device, model, precision)[1]

    def compare_precision(
        self,
        model: Mapping[str, Any],
        tile: int,
        batch: int,
        channels: int,
        classes: int,
        precision: str,
    ) -> PrecisionTiming | None:
        """Nothing is measured: None."""
        return None


@dataclass
class MeasuredTimer:
    """Step times measured by running the network on this machine's device (a few seconds).

    The fastest of a few steps of the real batch after a warm-up counts. On a CPU the result is
    kept within :data:`CPU_TRUST` of the calibrated table: on a shared machine torch's
    threads can stall for seconds while other processes run (measured here: 40x slower under a
    load of 4 on 2 cores), and such a moment must not shrink the whole plan.
    :meth:`compare_precision` alternates fp32 and the other precision step by
    step on one network, so that load from other processes slows both alike; it reports the
    raw times (the decision is their ratio) and caches the kept ones for the plan. Timing
    stops after the first timed step once a measurement has taken ``max_seconds``.
    """

    device: DeviceInfo
    source: str = "measured here"
    max_seconds: float = 12.0
    _cache: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    def _model(self, model: Mapping[str, Any], channels: int, classes: int) -> Any:
        from segflow.models.factory import create_model

        net = create_model(
            str(model["model.arch"]),
            str(model["model.encoder"]),
            in_channels=channels,
            classes=1 if classes == 2 else classes,
            encoder_weights=None,
            **dict(model.get("model.kwargs") or {}),
        )
        return net.to("cuda" if self.device.kind == "cuda" else "cpu")

    def _key(
        self, what: str, model: Mapping[str, Any], *rest: Any, precision: str
    ) -> tuple[Any, ...]:
        dtype = autocast_dtype(self.device.kind, precision)
        return (what, _model_key(model), *rest, str(dtype))

    def _steps(
        self,
        model: Mapping[str, Any],
        shape: tuple[int, int, int, int],
        precisions: Sequence[str],
    ) -> tuple[dict[str, float], dict[str, bool]]:
        """Per precision: the fastest step's seconds and whether every loss was finite.

        ``shape`` is (batch, channels, tile, classes); the precisions alternate step by step.
        """
        import torch

        batch, channels, tile, classes = shape
        cuda = self.device.kind == "cuda"
        net = self._model(model, channels, classes).train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        dev = next(net.parameters()).device
        # The real batch, on a CPU too: a CPU step of 8 tiles costs less than twice one of 4
        # (under bf16 on AMX, 4 tiles scaled to 8 overstated the in-loop step by 20-30%, and the
        # plan then ended runs at three quarters of their budget). max_seconds bounds the probe.
        x = torch.randn(batch, channels, tile, tile, device=dev)
        times: dict[str, list[float]] = {p: [] for p in precisions}
        finite = dict.fromkeys(precisions, True)
        warmup = 3 if cuda else 1
        began = time.perf_counter()
        for i in range(8 if cuda else 5):
            if i > warmup and time.perf_counter() - began > self.max_seconds:
                break  # a busy machine: the fastest of the steps so far counts
            for precision in precisions:
                dtype = autocast_dtype(self.device.kind, precision)
                start = time.perf_counter()
                with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                    loss = net(x).float().square().mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if cuda:
                    torch.cuda.synchronize()
                if i >= warmup:
                    times[precision].append(time.perf_counter() - start)
                finite[precision] = finite[precision] and bool(torch.isfinite(loss))
        return {p: min(t) for p, t in times.items()}, finite

    def train_step(
        self,
        model: Mapping[str, Any],
        tile: int,
        batch: int,
        channels: int,
        classes: int,
        precision: str = "32",
    ) -> float:
        """The fastest of a few timed training steps (after warm-up)."""
        key = self._key("train", model, tile, batch, channels, classes, precision=precision)
        if key not in self._cache:
            raw, _ = self._steps(model, (batch, channels, tile, classes), [precision])
            self._cache[key] = self._trusted(
                raw[precision], model, tile * tile * batch, 0, precision
            )
        return float(self._cache[key])

    def compare_precision(
        self,
        model: Mapping[str, Any],
        tile: int,
        batch: int,
        channels: int,
        classes: int,
        precision: str,
    ) -> PrecisionTiming | None:
        """fp32 and ``precision`` timed alternately on one network (raw times, not kept)."""
        key = self._key("compare", model, tile, batch, channels, classes, precision=precision)
        if key not in self._cache:
            raw, finite = self._steps(model, (batch, channels, tile, classes), ["32", precision])
            for p in ("32", precision):
                trusted = self._trusted(raw[p], model, tile * tile * batch, 0, p)
                self._cache[
                    self._key("train", model, tile, batch, channels, classes, precision=p)
                ] = trusted
            self._cache[key] = PrecisionTiming(
                precision, raw["32"], raw[precision], finite[precision]
            )
        timing: PrecisionTiming = self._cache[key]
        return timing

    def _trusted(
        self,
        seconds: float,
        model: Mapping[str, Any],
        pixels: int,
        which: int,
        precision: str = "32",
    ) -> float:
        """A CPU measurement bounded by the table (see the class docstring); notes clamping."""
        if self.device.kind != "cpu":
            return seconds
        table = _table_entry(self.device, model, precision)[which] * pixels
        low, high = table / CPU_TRUST, table * CPU_TRUST
        if not low <= seconds <= high:
            self.source = (
                f"measured here, kept within {CPU_TRUST:g}x of the calibrated table: the machine "
                "looked busy or unusual"
            )
        return min(max(seconds, low), high)

    def infer_pixel(
        self, model: Mapping[str, Any], channels: int, classes: int, precision: str = "32"
    ) -> float:
        """Seconds per pixel of one forward pass on a 512 x 512 image."""
        import torch

        key = self._key("infer", model, channels, classes, precision=precision)
        if key in self._cache:
            return float(self._cache[key])
        net = self._model(model, channels, classes).eval()
        dev = next(net.parameters()).device
        dtype = autocast_dtype(self.device.kind, precision)
        x = torch.randn(1, channels, 512, 512, device=dev)
        times = []
        with torch.no_grad(), torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            for i in range(3):
                start = time.perf_counter()
                net(x)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                if i:
                    times.append(time.perf_counter() - start)
        seconds = self._trusted(min(times), model, 512 * 512, 1, precision) / (512 * 512)
        self._cache[key] = seconds
        return seconds


def _model_key(model: Mapping[str, Any]) -> tuple[str, str, str]:
    return (
        str(model["model.arch"]),
        str(model["model.encoder"]),
        yaml.safe_dump(model.get("model.kwargs") or {}, sort_keys=True),
    )


# ------------------------------------------------------------------------------------------------
# Following the budget during training


def budget_schedule_callback() -> Any:
    """A Lightning callback that keeps a per-step schedule on time when steps run slow.

    The plan sizes the schedule in steps from an estimated step time; on a machine that turns
    out slower (other processes, thermal limits) ``train.max_minutes`` would stop training with
    the learning rate still high. Before each step this callback advances the schedule to
    ``max(step, elapsed / (BUDGET_FILL * max_time) * total)``: the rate reaches its floor when
    the planned share of the time limit is used, however few steps that took. When steps are as
    fast as planned, elapsed time lags the step count and nothing changes. It needs the
    Trainer's ``max_time`` (its Timer) and a per-step LambdaLR schedule (cosine, poly...);
    otherwise it does nothing.
    """
    import lightning as L
    from lightning.pytorch.callbacks import Timer
    from torch.optim.lr_scheduler import LambdaLR

    class BudgetSchedule(L.Callback):
        def on_train_batch_start(
            self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
        ) -> None:
            timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)  # type: ignore[attr-defined]
            limit = getattr(timer, "_duration", None)
            configs = trainer.lr_scheduler_configs
            if timer is None or not limit or not configs:
                return
            scheduler = configs[0].scheduler
            if not isinstance(scheduler, LambdaLR) or configs[0].interval != "step":
                return
            share = timer.time_elapsed("train") / (BUDGET_FILL * float(limit))
            for group, fn in zip(
                scheduler.optimizer.param_groups, scheduler.lr_lambdas, strict=False
            ):
                total, lr_at = getattr(fn, "total", None), getattr(fn, "lr", None)
                if not isinstance(total, int) or not callable(lr_at):
                    continue
                step = max(scheduler.last_epoch, min(round(share * total), total - 1))
                if step > scheduler.last_epoch:
                    group["lr"] = float(lr_at(step))

    return BudgetSchedule()
