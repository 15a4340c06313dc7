"""segflow plan: each rule on crafted fingerprints, the commented YAML, the CLI, planned training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from segflow.config import load_config
from segflow.data.fingerprint import (
    ClassStats,
    Fingerprint,
    fingerprint_dataset,
    object_stats,
    structure_widths,
)
from segflow.errors import UnknownNameError, UsageError
from segflow.train import plan_cost as C
from segflow.train import plan_rules as R
from segflow.train import planner as P
from tests.fixtures.synthetic import make_dataset

CPU = C.DeviceInfo("cpu", "CPU (2 cores)", 16.0, 2)
GPU = C.DeviceInfo("cuda", "test GPU", 40.0, 8, present=False)


def _fp(
    *,
    size: tuple[int, int] = (512, 512),
    n: int = 40,
    dtype: str = "uint8",
    channels: int = 3,
    fg_frequency: float = 0.2,
    width: float = 20.0,
    extent: float = 40.0,
    empty: float = 0.0,
) -> Fingerprint:
    """A fingerprint of a binary dataset with the given properties."""
    h, w = size
    pixels = n * h * w
    fg = int(pixels * fg_frequency)
    top = 65535.0 if dtype == "uint16" else 255.0
    return Fingerprint(
        num_images=n,
        num_labelled=n,
        height={"min": h, "median": h, "max": h},
        width={"min": w, "median": w, "max": w},
        channels={str(channels): n},
        dtypes={dtype: n},
        channel_mean=[top * 0.3] * channels,
        channel_std=[top * 0.1] * channels,
        value_range=[0.0, top],
        classes=[
            ClassStats(id=0, name="background", pixels=pixels - fg, frequency=1 - fg_frequency,
                       images=n, objects=0, median_object_area=0.0),
            ClassStats(id=1, name="thing", pixels=fg, frequency=fg_frequency, images=n,
                       objects=5 * n, median_object_area=width * extent,
                       p90_object_extent=extent, median_width=width),
        ],
        ignore_pixels=0,
        empty_mask_share=empty,
        mean_pixels=float(h * w),
    )  # fmt: skip


def _ctx(fp: Fingerprint | None = None, **kw: Any) -> R.PlanContext:
    device = kw.pop("device", CPU)
    args: dict[str, Any] = {
        "fingerprint": fp or _fp(),
        "device": device,
        "budget_s": 600.0,
        "train_images": 32,
        "val_images": 8,
        "timer": C.TableTimer(device),
        "has_weights": lambda encoder: False,
    }
    args.update(kw)
    return R.PlanContext(**args)


def _plan(ctx: R.PlanContext) -> P.Plan:
    return P.Planner().plan(ctx)


# ------------------------------------------------------------------------------------------------
# Budgets and devices


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("1h", 3600), ("1h30m", 5400), ("1.5h", 5400), (" 2M ", 120)],
)
def test_budgets_parse(text: str, seconds: float) -> None:
    assert C.parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["10", "10x", "", "m", "0m", "1m1h", "ten minutes"])
def test_bad_budgets_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="budget"):
        C.parse_budget(text)


def test_cuda_requested_without_one_plans_for_a_nominal_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    dev = C.detect_device("cuda")
    assert dev.kind == "cuda" and not dev.present and dev.memory_gb == 16
    assert C.detect_device("auto").kind == "cpu"
    with pytest.raises(UsageError, match="--device"):
        C.detect_device("tpu")


# ------------------------------------------------------------------------------------------------
# Rules, one at a time


def test_thin_structures_get_more_dice() -> None:
    thin = R.choose_loss(_ctx(_fp(width=3.0, fg_frequency=0.1)), {})
    blobs = R.choose_loss(_ctx(_fp(width=20.0, fg_frequency=0.2)), {})
    assert thin.value["dice"] > thin.value["ce"] and "thin" in thin.reason
    assert blobs.value == {"ce": 0.5, "dice": 0.5}


def test_rare_structures_get_more_dice() -> None:
    rare = R.choose_loss(_ctx(_fp(width=20.0, fg_frequency=0.01)), {})
    assert rare.value["dice"] > rare.value["ce"] and "rare" in rare.reason


def test_sixteen_bit_images_are_normalised_by_their_statistics() -> None:
    d = R.choose_normalization(_ctx(_fp(dtype="uint16")), {"model.encoder_weights": "imagenet"})
    assert d.value == "dataset" and "not by /255" in d.reason and "uint16" in d.reason


def test_imagenet_statistics_only_with_pretrained_rgb() -> None:
    fp = _fp()
    assert R.choose_normalization(_ctx(fp), {"model.encoder_weights": "imagenet"}).value == (
        "imagenet"
    )
    assert R.choose_normalization(_ctx(fp), {"model.encoder_weights": None}).value == "dataset"
    grey = _fp(channels=1)
    assert R.choose_normalization(_ctx(grey), {"model.encoder_weights": "imagenet"}).value == (
        "dataset"
    )


def test_weights_only_when_cached() -> None:
    cached = _ctx(has_weights=lambda enc: enc == "resnet18")
    assert R.choose_encoder_weights(cached, {"model.encoder": "resnet18"}).value == "imagenet"
    assert R.choose_encoder_weights(cached, {"model.encoder": "resnet34"}).value is None
    assert (
        R.choose_optimizer(cached, {"model.encoder_weights": "imagenet"}).settings["optimizer.lr"]
        < R.choose_optimizer(cached, {"model.encoder_weights": None}).settings["optimizer.lr"]
    )


def test_big_images_are_tiled_small_ones_are_not() -> None:
    big = _ctx(_fp(size=(3000, 4000)))
    tile = R.choose_tile_size(big, {}).value
    assert tile == R.BASE_TILE["cpu"] < 3000
    inference = R.choose_inference(big, {"data.tile_size": tile})
    assert "tiles" in inference.reason
    small = _ctx(_fp(size=(96, 120), extent=20.0))
    assert R.choose_tile_size(small, {}).value == 128  # 120 px rounded up to a multiple of 32
    one = R.choose_inference(small, {"data.tile_size": 128})
    assert "fit in one" in one.reason


def test_large_objects_grow_the_tile_thin_ones_do_not() -> None:
    organs = R.choose_tile_size(_ctx(_fp(size=(1024, 1024), extent=300.0)), {})
    assert organs.value == 480 and "context" in organs.reason  # 1.5 x 300 px, multiple of 32
    vessels = R.choose_tile_size(_ctx(_fp(size=(1024, 1024), width=3.0, extent=1000.0)), {})
    assert vessels.value == R.BASE_TILE["cpu"] and "full resolution" in vessels.reason


def test_tiny_dataset_gets_heavier_augmentation() -> None:
    long = {"train.epochs": 100}
    assert R.choose_augment(_ctx(train_images=20), long).value == "heavy"
    assert R.choose_augment(_ctx(train_images=400), long).value == "medium"
    assert R.choose_augment(_ctx(train_images=5000), long).value == "light"
    short = R.choose_augment(_ctx(train_images=20), {"train.epochs": 3})
    assert short.value == "medium" and "too few passes" in short.reason


def test_strong_imbalance_gets_class_weights() -> None:
    strong = R.choose_class_weights(_ctx(_fp(fg_frequency=0.005)), {})
    assert strong.value == "auto" and "strong imbalance" in strong.reason
    assert R.choose_class_weights(_ctx(_fp(fg_frequency=0.1)), {}).value is None


def test_larger_budget_more_epochs() -> None:
    epochs = [_plan(_ctx(budget_s=budget)).settings["train.epochs"] for budget in (300, 1800, 7200)]
    assert epochs[0] < epochs[1] < epochs[2]


def test_cuda_gets_a_bigger_model_tile_and_batch() -> None:
    cpu = _plan(_ctx(budget_s=3600))
    gpu = _plan(_ctx(budget_s=3600, device=GPU))
    sizes = {"resnet18": 18, "resnet34": 34, "resnet50": 50}
    assert sizes[gpu.settings["model.encoder"]] > sizes[cpu.settings["model.encoder"]]
    assert gpu.settings["data.tile_size"] > cpu.settings["data.tile_size"]
    assert gpu.settings["data.batch_size"] > cpu.settings["data.batch_size"]
    assert gpu.settings["train.accelerator"] == "gpu" and cpu.settings["train.accelerator"] == "cpu"


def test_batch_follows_memory() -> None:
    small = C.DeviceInfo("cuda", "small GPU", 4.0, 8, present=False)
    d = R.choose_batch_size(_ctx(device=small), {"data.tile_size": 512})
    big = R.choose_batch_size(_ctx(device=GPU), {"data.tile_size": 512})
    assert R.MIN_BATCH <= d.value < big.value
    assert "GiB" in d.reason


class _FixedTimer:
    """A step takes ``step`` seconds; inference ``px`` seconds per pixel."""

    source = "test timer"

    def __init__(self, step: float, px: float = 1e-7) -> None:
        self.step, self.px = step, px

    def train_step(self, model: Any, tile: int, batch: int, channels: int, classes: int,
                   precision: str = "32") -> float:  # fmt: skip
        return self.step

    def infer_pixel(self, model: Any, channels: int, classes: int, precision: str = "32") -> float:
        return self.px

    def compare_precision(self, *args: Any) -> None:
        return None


@pytest.mark.parametrize("budget", [120.0, 300.0, 1200.0, 7200.0])
@pytest.mark.parametrize("step", [0.05, 1.0, 3.0])
def test_planned_epochs_fit_the_budget(budget: float, step: float) -> None:
    ctx = _ctx(_fp(size=(960, 1000)), budget_s=budget, timer=_FixedTimer(step), train_images=22)
    plan = _plan(ctx)
    s = plan.settings
    steps = R.steps_per_epoch(ctx, s)
    val = 8 * 960 * 1000 * (1e-7 + R.VALIDATION_EXTRA["cpu"]) * R.SAFETY["cpu"]
    validations = s["train.epochs"] // s["train.val_every"]
    planned = s["train.epochs"] * steps * step * R.SAFETY["cpu"] + validations * val
    assert planned <= budget - R.SETUP_SECONDS["cpu"] + 1e-6 or s["train.epochs"] == 1
    tune = C.tune_seconds(val, 8 * 960 * 1000, s["data.tile_size"], (960 * 1000) ** 0.5, 2)
    fit = max(budget - 31.0 - tune, 0.5 * budget)  # train.tune (on by default) has its share
    assert planned >= 0.6 * C.BUDGET_FILL * fit or s["train.epochs"] == 1
    assert s["train.max_minutes"] * 60 <= budget
    assert s["train.epochs"] % s["train.val_every"] == 0  # the last epoch is validated


@pytest.mark.parametrize("budget", [300.0, 600.0, 1200.0])
@pytest.mark.parametrize("step", [0.3, 0.45, 1.0])  # 300 s / 0.45 s rounded 11.9 epochs to 10
def test_planned_epochs_fill_the_budget_not_only_fit_it(budget: float, step: float) -> None:
    """Rounding to whole (validated) epochs must not leave more than ~3% of the budget unused."""
    ctx = _ctx(_fp(size=(960, 1000)), budget_s=budget, timer=_FixedTimer(step), train_images=22)
    s = _plan(ctx).settings
    steps = R.steps_per_epoch(ctx, s)
    val = 8 * 960 * 1000 * (1e-7 + R.VALIDATION_EXTRA["cpu"]) * R.SAFETY["cpu"]
    epochs, every = s["train.epochs"], s["train.val_every"]
    planned = epochs * (steps * step * R.SAFETY["cpu"] + 1.0) + epochs // every * val
    setup = R.SETUP_SECONDS["cpu"] + 0.05 * 22 * 0.96
    tune = C.tune_seconds(val, 8 * 960 * 1000, s["data.tile_size"], (960 * 1000) ** 0.5, 2)
    usable = C.BUDGET_FILL * (budget - setup - tune)  # train.tune is on by default
    assert tune > 0
    assert planned <= usable + 1e-6
    assert planned >= usable / 1.03 - epochs * step, (planned, usable, s)


def test_validation_is_spaced_when_it_is_expensive() -> None:
    ctx = _ctx(_fp(size=(4000, 4000)), budget_s=7200, timer=_FixedTimer(0.05, px=1e-6))
    s = _plan(ctx).settings
    assert s["train.val_every"] > 1 and s["train.epochs"] % s["train.val_every"] == 0


# ------------------------------------------------------------------------------------------------
# The planner: replacing rules, fixed settings


def test_rules_can_be_replaced_and_later_rules_follow() -> None:
    def tile(ctx: R.PlanContext, chosen: Any) -> R.Decision:
        return R.Decision({"data.tile_size": 128}, "my tile")

    plan = P.Planner({"tile": tile}).plan(_ctx())
    assert plan.settings["data.tile_size"] == 128
    assert plan.decisions["tile"].reason == "my tile"
    assert "128-px" in plan.decisions["batch"].reason
    with pytest.raises(UnknownNameError, match=r"valid: model, .*hardware"):
        P.Planner({"tiles": tile})


def test_fixed_settings_win_and_the_plan_works_around_them() -> None:
    ctx = _ctx(fixed={"model.encoder": "resnet34", "train.epochs": 1, "train.output": "x"})
    plan = _plan(ctx)
    s = plan.settings
    assert s["model.encoder"] == "resnet34" and s["train.epochs"] == 1 and s["train.output"] == "x"
    assert "resnet34" in plan.decisions["batch"].reason
    assert "set by you (the plan had model.encoder=resnet18)" in plan.decisions["model"].reason
    assert s["schedule.warmup_epochs"] < 1  # a warm-up shorter than the single epoch
    plan.config()  # valid: the schedule and the epochs agree


def test_plan_for_a_tiny_dataset_trains_one_epoch_without_a_warmup_error() -> None:
    ctx = _ctx(_fp(size=(48, 64), n=8), train_images=6, val_images=2, fixed={"train.epochs": 1})
    s = _plan(ctx).settings
    assert s["schedule.warmup_epochs"] == 0.0 and s["data.tile_size"] == 64


# ------------------------------------------------------------------------------------------------
# The written config


def test_yaml_comments_every_decision_and_round_trips(tmp_path: Path) -> None:
    ctx = _ctx(_fp(width=3.0, fg_frequency=0.07), dataset=tmp_path / "ds")
    plan = _plan(ctx)
    path = plan.write(tmp_path / "config.yaml")
    text = path.read_text()
    comments = " ".join(
        line.strip().lstrip("#").strip() for line in text.splitlines() if line.strip()[:1] == "#"
    )
    for name, decision in plan.decisions.items():
        assert " ".join(decision.reason.split()) in " ".join(comments.split()), name
    for line in text.splitlines():
        if ":" in line and not line.strip().startswith("#") and not line.rstrip().endswith(":"):
            key = line.split(":")[0].strip()
            idx = text.splitlines().index(line)
            assert text.splitlines()[idx - 1].strip().startswith("#") or key in (
                "encoder", "kwargs", "lr", "weight_decay", "min_lr", "foreground_crops",
                "val_every", "max_minutes", "precision", "limit_train_batches", "warmup_epochs",
                "crops_per_image",
            ), line  # fmt: skip
    assert "# class 1 thing: 7.00% of pixels" in text and "median width 3 px" in text
    cfg = load_config(path)
    assert cfg.model_dump(mode="json") == plan.config().model_dump(mode="json")
    for key, value in plan.settings.items():
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part)
        expected = value
        assert (node.as_posix() if isinstance(node, Path) else node) == expected, key
    assert yaml.safe_load(text)["loss"]["terms"] == {"ce": 0.3, "dice": 0.7}


# ------------------------------------------------------------------------------------------------
# Fingerprint additions


def test_structure_width_and_object_extent() -> None:
    mask = np.zeros((200, 200), np.uint8)
    mask[19:22, 10:191] = 1  # a 3-px wide, 181-px long line
    cv2.circle(mask, (100, 120), 30, 2, -1)
    widths = structure_widths(mask, [1, 2])
    line = int(np.argmax(widths[1])) + 1
    disc = int(np.flatnonzero(widths[2])[-1]) + 1
    assert line == 3 and 55 <= disc <= 63  # the disc's widest point is its diameter
    areas, extents = object_stats(mask, [1, 2])
    assert extents[1] == [181] and 59 <= extents[2][0] <= 61 and len(areas[2]) == 1


def test_fingerprint_dataset_measures_widths(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", n=5, size=(48, 64), num_classes=3)
    fp = fingerprint_dataset(root)
    assert fp.num_images == 5 and fp.scanned_images == 5 and fp.mean_pixels == 48 * 64
    assert all(c.median_width > 0 and c.p90_object_extent > 0 for c in fp.classes[1:])


def test_fingerprint_needs_masks(tmp_path: Path) -> None:
    from segflow.errors import DataError

    root = make_dataset(tmp_path / "ds", n=2)
    for mask in (root / "masks").iterdir():
        mask.unlink()
    with pytest.raises(DataError, match="no masks"):
        fingerprint_dataset(root)


# ------------------------------------------------------------------------------------------------
# CLI and API


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "tiny", n=8, size=(48, 64), num_classes=2)


def test_plan_cli_writes_a_config_that_loads(cli, tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.yaml"
    res = cli("plan", tiny, "--budget", "2m", "--timing", "table", "--out", out)
    assert res.exit_code == 0, res.stderr
    for word in ("decision", "tile", "epochs", "loss", "wrote", "segflow train"):
        assert word in res.stdout
    cfg = load_config(out)
    assert cfg.data.dataset == tiny.resolve() and cfg.train.max_minutes is not None
    assert cfg.data.tile_size == 64  # 48 x 64 images fit one 64-px tile
    again = cli("plan", tiny, "--timing", "table", "--out", out)
    assert again.exit_code == 2 and "--overwrite" in again.stderr


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["{missing}"], 1, "dataset folder not found"),
        (["{ds}", "--budget", "10x"], 2, "budget '10x'"),
        (["{ds}", "--budget", "0s"], 2, "longer than 0"),
        (["{ds}", "--device", "tpu"], 2, "--device 'tpu'"),
        (["{ds}", "--set", "model.encodr=resnet34"], 2, "did you mean model.encoder"),
        (["{ds}", "--timing", "guess"], 2, "--timing"),
    ],
)
def test_plan_cli_errors_are_one_line(
    cli, tiny: Path, tmp_path: Path, args: list[str], code: int, needle: str
) -> None:
    filled = [a.format(ds=tiny, missing=tmp_path / "nowhere") for a in args]
    res = cli("plan", *filled, "--out", tmp_path / "x.yaml")
    assert res.exit_code == code, (res.exit_code, res.stderr)
    assert res.stderr.startswith("error: ") and needle in res.stderr
    assert res.stderr.count("\n") == 1 and not (tmp_path / "x.yaml").exists()


def test_api_plan(tiny: Path, tmp_path: Path) -> None:
    from segflow.api import plan

    result = plan(
        tiny, budget=90, timing="table", out=tmp_path / "c.yaml", overrides=["data.batch_size=2"]
    )
    assert result.settings["data.batch_size"] == 2 and (tmp_path / "c.yaml").is_file()
    assert load_config(tmp_path / "c.yaml").data.batch_size == 2


def test_measured_timer_times_a_real_step() -> None:
    timer = C.MeasuredTimer(CPU)
    model = {"model.arch": "Unet", "model.encoder": "resnet18", "model.kwargs": {}}
    first = timer.train_step(model, 32, 4, 3, 2)
    assert 0 < first < 30 and timer.train_step(model, 32, 4, 3, 2) == first  # cached
    assert 0 < timer.infer_pixel(model, 3, 2) < 1e-3


def test_train_without_config_plans_then_trains(cli, tiny: Path, tmp_path: Path) -> None:
    from segflow.data.splits import make_splits

    make_splits(tiny, val=0.25, test=0.0, seed=0)
    runs = tmp_path / "runs"
    res = cli(
        "train", "--data", tiny, "--name", "auto", "--budget", "2m",
        "--set", "train.epochs=1", "--set", f"train.output={runs}",
        "--set", "tracking.enabled=false", "--set", "data.num_workers=0",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert "no config given: planned one for 2m" in res.stdout
    plan_file = runs / "auto" / "plan.yaml"
    assert str(plan_file) in res.stdout and plan_file.is_file()
    state = json.loads((runs / "auto" / "run.json").read_text())
    assert state["status"] == "finished" and state["epochs"] == 1
    resolved = yaml.safe_load((runs / "auto" / "config.yaml").read_text())
    planned = load_config(plan_file)
    assert resolved["model"]["encoder"] == planned.model.encoder
    assert resolved["train"]["epochs"] == 1 and resolved["train"]["max_minutes"] is not None
    assert resolved["loss"]["terms"] == planned.loss.terms


def test_budget_with_a_config_is_a_usage_error(cli, tiny: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("train: {epochs: 1}\n")
    res = cli("train", config, "--data", tiny, "--budget", "5m")
    assert res.exit_code == 2 and "--budget plans a config" in res.stderr


def test_a_busy_machine_cannot_shrink_the_plan_beyond_the_trust_factor() -> None:
    timer = C.MeasuredTimer(CPU)
    model = {"model.arch": "Unet", "model.encoder": "resnet18", "model.kwargs": {}}
    table = C.TableTimer(CPU).train_step(model, 256, 4, 3, 2)
    stalled = timer._trusted(40 * table, model, 256 * 256 * 4, 0)
    assert stalled == pytest.approx(C.CPU_TRUST * table) and "busy" in timer.source
    assert timer._trusted(table, model, 256 * 256 * 4, 0) == table


def test_budget_schedule_keeps_the_learning_rate_on_time() -> None:
    from types import SimpleNamespace

    import torch
    from lightning.pytorch.callbacks import Timer

    from segflow.config import ScheduleConfig
    from segflow.train.optim import build_scheduler

    def setup(elapsed: float) -> tuple[Any, Any]:
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        sched = build_scheduler(
            opt, ScheduleConfig(name="cosine"), steps_per_epoch=100, epochs=1, peak_lr=1e-3
        )["scheduler"]
        timer = Timer(duration={"seconds": 100}, verbose=False)
        timer._offset = elapsed  # as if this much training time had passed
        trainer = SimpleNamespace(
            callbacks=[timer],
            lr_scheduler_configs=[SimpleNamespace(scheduler=sched, interval="step")],
        )
        return trainer, opt

    callback = C.budget_schedule_callback()
    slow, opt = setup(C.BUDGET_FILL * 100)  # the planned time is used up after 0 steps
    callback.on_train_batch_start(slow, None, None, 0)
    assert opt.param_groups[0]["lr"] < 2e-6  # annealed to the floor
    early, opt = setup(1.0)  # on schedule: 1% of the time, step 0
    callback.on_train_batch_start(early, None, None, 0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3, rel=1e-3)
    half, opt = setup(0.5 * C.BUDGET_FILL * 100)
    callback.on_train_batch_start(half, None, None, 0)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4, rel=0.05)  # cosine midpoint
