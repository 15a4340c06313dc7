"""Training precision: the planner's bf16 probe on CPUs, and bf16-mixed CPU training end to end."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from segflow import _hw
from segflow.data.splits import make_splits
from segflow.errors import ConfigError
from segflow.train import plan_cost as C
from segflow.train import plan_rules as R
from segflow.train import planner as P
from segflow.train.runner import resolve_precision
from tests.fixtures.synthetic import make_dataset
from tests.train.test_planner import CPU, _ctx, _fp

AMX_CPUINFO = "model name\t: Xeon\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_bf16 amx_tile\n"
AVX2_CPUINFO = "model name\t: EPYC\nflags\t\t: fpu avx2 fma\n"
TINY = Path(__file__).parents[1] / "fixtures" / "configs" / "tiny.yaml"


@pytest.fixture
def cpu_flags(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Pretend this machine's /proc/cpuinfo says ``text`` (the environment override unset)."""

    def use(text: str) -> None:
        monkeypatch.delenv(_hw.ENV_BF16, raising=False)
        monkeypatch.setattr(_hw, "_read_cpu", lambda: _hw.parse_cpuinfo(text))

    return use


class ProbeTimer:
    """Steps take ``fp32`` or ``bf16`` seconds; records what was asked."""

    source = "injected probe"

    def __init__(self, fp32: float, bf16: float, *, finite: bool = True) -> None:
        self.fp32, self.bf16, self.finite = fp32, bf16, finite
        self.compared: list[str] = []
        self.stepped: list[str] = []

    def _seconds(self, precision: str) -> float:
        return self.bf16 if precision == "bf16-mixed" else self.fp32

    def train_step(self, model: Any, tile: int, batch: int, channels: int, classes: int,
                   precision: str = "32") -> float:  # fmt: skip
        self.stepped.append(precision)
        return self._seconds(precision)

    def infer_pixel(self, model: Any, channels: int, classes: int, precision: str = "32") -> float:
        return 1e-7 * self._seconds(precision) / self.fp32

    def compare_precision(self, model: Any, tile: int, batch: int, channels: int, classes: int,
                          precision: str) -> C.PrecisionTiming:  # fmt: skip
        self.compared.append(precision)
        return C.PrecisionTiming(precision, self.fp32, self.bf16, self.finite)


def _planned(timer: Any, **kw: Any) -> P.Plan:
    return P.Planner().plan(_ctx(_fp(size=(960, 1000)), timer=timer, train_images=22, **kw))


# ------------------------------------------------------------------------------------------------
# The planner's rule


def test_bf16_is_planned_when_measured_clearly_faster(cpu_flags: Any) -> None:
    cpu_flags(AMX_CPUINFO)
    timer = ProbeTimer(fp32=1.17, bf16=0.50)
    plan = _planned(timer)
    assert plan.settings["train.precision"] == "bf16-mixed"
    assert timer.compared == ["bf16-mixed"]
    reason = plan.decisions["hardware"].reason
    assert "1.17 s in fp32" in reason and "0.50 s in bf16-mixed" in reason and "2.34x" in reason
    assert plan.config().train.precision == "bf16-mixed"


@pytest.mark.parametrize(("bf16", "finite", "why"), [(1.0, True, "less than 1.2x"),
                                                     (0.4, False, "not finite")])  # fmt: skip
def test_fp32_stays_when_bf16_is_not_clearly_faster_or_not_finite(
    cpu_flags: Any, bf16: float, finite: bool, why: str
) -> None:
    cpu_flags(AMX_CPUINFO)
    timer = ProbeTimer(fp32=1.1, bf16=bf16, finite=finite)
    plan = _planned(timer)
    reason = plan.decisions["hardware"].reason
    assert plan.settings["train.precision"] == "32" and why in reason
    assert "1.10 s in fp32" in reason and f"{bf16:.2f} s in bf16-mixed" in reason
    assert set(timer.stepped) == {"32"}  # the epochs are sized on fp32 steps


def test_the_speedup_threshold_is_inclusive(cpu_flags: Any) -> None:
    cpu_flags(AMX_CPUINFO)
    at = _planned(ProbeTimer(fp32=1.2, bf16=1.0)).settings["train.precision"]
    below = _planned(ProbeTimer(fp32=1.19, bf16=1.0)).settings["train.precision"]
    assert (at, below) == ("bf16-mixed", "32") and R.BF16_MIN_SPEEDUP == 1.2


def test_without_bf16_flags_nothing_is_probed(cpu_flags: Any) -> None:
    cpu_flags(AVX2_CPUINFO)
    timer = ProbeTimer(fp32=1.0, bf16=0.1)
    plan = _planned(timer)
    assert timer.compared == [] and set(timer.stepped) == {"32"}
    assert plan.settings["train.precision"] == "32"
    assert "no native bf16" in plan.decisions["hardware"].reason


def test_table_timing_keeps_fp32_and_says_it_did_not_measure(cpu_flags: Any) -> None:
    cpu_flags(AMX_CPUINFO)
    plan = _planned(C.TableTimer(CPU))
    reason = plan.decisions["hardware"].reason
    assert plan.settings["train.precision"] == "32"
    assert "nothing was measured" in reason and "timing=measure" in reason


@pytest.mark.parametrize("flags", [AMX_CPUINFO, AVX2_CPUINFO])
@pytest.mark.parametrize("mine", ["32", "bf16-mixed"])
def test_the_users_precision_wins_and_is_not_probed(cpu_flags: Any, flags: str, mine: str) -> None:
    cpu_flags(flags)
    timer = ProbeTimer(fp32=1.0, bf16=0.3 if mine == "32" else 3.0)  # the probe disagrees
    plan = _planned(timer, fixed={"train.precision": mine})
    assert plan.settings["train.precision"] == mine and timer.compared == []
    assert "train.precision set by you" in plan.decisions["hardware"].reason
    assert set(timer.stepped) == {mine}  # epochs sized on the user's precision


def test_epochs_are_sized_on_the_chosen_precisions_step(cpu_flags: Any) -> None:
    cpu_flags(AMX_CPUINFO)
    budget = {"budget_s": 1800.0}
    fast = _planned(ProbeTimer(fp32=1.0, bf16=0.5), **budget)
    slow = _planned(ProbeTimer(fp32=1.0, bf16=0.9), **budget)
    assert fast.settings["train.precision"] == "bf16-mixed"
    assert slow.settings["train.precision"] == "32"
    ctx = _ctx(_fp(size=(960, 1000)), train_images=22)

    def total(plan: P.Plan) -> int:
        return int(plan.settings["train.epochs"]) * R.steps_per_epoch(ctx, plan.settings)

    assert 1.8 <= total(fast) / total(slow) <= 2.1  # twice the steps in the same budget
    assert "bf16-mixed step of" in fast.decisions["epochs"].reason
    assert "~0.50 s" in fast.decisions["epochs"].reason


def test_cuda_keeps_mixed_precision_without_a_probe(cpu_flags: Any) -> None:
    cpu_flags(AVX2_CPUINFO)
    gpu = C.DeviceInfo("cuda", "test GPU", 40.0, 8, present=False)
    timer = ProbeTimer(fp32=0.1, bf16=0.1)
    plan = P.Planner().plan(_ctx(device=gpu, timer=timer))
    assert plan.settings["train.precision"] == "auto" and timer.compared == []


# ------------------------------------------------------------------------------------------------
# The timers


def test_measured_probe_times_both_precisions_once() -> None:
    timer = C.MeasuredTimer(CPU)
    model = {"model.arch": "Unet", "model.encoder": "resnet18", "model.kwargs": {}}
    timing = timer.compare_precision(model, 32, 4, 3, 2, "bf16-mixed")
    assert timing is not None and timing.finite and timing.precision == "bf16-mixed"
    assert 0 < timing.fp32_s < 30 and 0 < timing.other_s < 30
    assert timing.speedup == pytest.approx(timing.fp32_s / timing.other_s)
    assert timer.compare_precision(model, 32, 4, 3, 2, "bf16-mixed") is timing  # cached
    fp32 = timer.train_step(model, 32, 4, 3, 2)
    bf16 = timer.train_step(model, 32, 4, 3, 2, precision="bf16-mixed")
    table = C.TableTimer(CPU)
    for seconds, precision in ((fp32, "32"), (bf16, "bf16-mixed")):  # kept within the trust
        expected = min(max(timing.fp32_s if precision == "32" else timing.other_s,
                           table.train_step(model, 32, 4, 3, 2, precision) / C.CPU_TRUST),
                       table.train_step(model, 32, 4, 3, 2, precision) * C.CPU_TRUST)  # fmt: skip
        assert seconds == pytest.approx(expected)


def test_table_bf16_cost_only_on_cpus_with_native_bf16(cpu_flags: Any) -> None:
    model = {"model.arch": "Unet", "model.encoder": "resnet18", "model.kwargs": {}}
    table = C.TableTimer(CPU)
    cpu_flags(AMX_CPUINFO)
    fp32 = table.train_step(model, 256, 8, 3, 2)
    assert table.train_step(model, 256, 8, 3, 2, "bf16-mixed") == pytest.approx(
        C.CPU_BF16_COST[0] * fp32
    )
    assert table.compare_precision(model, 256, 8, 3, 2, "bf16-mixed") is None
    cpu_flags(AVX2_CPUINFO)
    assert table.train_step(model, 256, 8, 3, 2, "bf16-mixed") == pytest.approx(fp32)


def test_auto_is_fp32_on_a_cpu_and_emulated_bf16_warns(
    cpu_flags: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_precision("auto") == "32-true" and resolve_precision("32") == "32-true"
    cpu_flags(AMX_CPUINFO)
    with caplog.at_level(logging.WARNING, logger="segflow.train"):
        assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert not caplog.records
    cpu_flags(AVX2_CPUINFO)
    with caplog.at_level(logging.WARNING, logger="segflow.train"):
        assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert "emulated" in caplog.text


# ------------------------------------------------------------------------------------------------
# bf16-mixed training on a CPU


def test_bf16_cpu_training_with_tracking_resumes_and_saves_fp32_weights(
    cli: Any, tmp_path: Path
) -> None:
    import torch
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    ds = make_dataset(tmp_path / "ds", n=12, size=(64, 80), num_classes=3)
    make_splits(ds, val=0.25, test=0.0, seed=0)
    runs = tmp_path / "runs"
    common = ["--set", f"train.output={runs}", "--set", "train.precision=bf16-mixed"]
    res = cli("train", TINY, "--data", ds, "--name", "b", *common, "--set", "tracking.enabled=true")
    assert res.exit_code == 0, res.stderr
    run = runs / "b"
    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "finished" and state["precision"] == "bf16-mixed"
    weights = load_file(run / "best.segflow" / "weights.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}
    ckpt = torch.load(run / "checkpoints" / "final.ckpt", map_location="cpu", weights_only=True)
    assert {v.dtype for v in ckpt["state_dict"].values() if v.is_floating_point()} == {
        torch.float32
    }
    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    mrun = client.get_run(state["mlflow_run_id"])
    assert mrun.info.status == "FINISHED" and mrun.data.params["train.precision"] == "bf16-mixed"
    history = client.get_metric_history(state["mlflow_run_id"], "val/mIoU")
    assert len(history) == 1 and 0 <= history[0].value <= 1
    # resume the bf16 checkpoint into the same MLflow run (tracking stays on), with more epochs
    resumed = cli("train", "--resume", run, "--set", "train.epochs=2")
    assert resumed.exit_code == 0, resumed.stderr
    assert client.get_run(state["mlflow_run_id"]).info.status == "FINISHED"
    assert len(client.get_metric_history(state["mlflow_run_id"], "val/mIoU")) == 2
    after = json.loads((run / "run.json").read_text())
    assert after["status"] == "finished" and after["epochs"] == 2
    assert after["precision"] == "bf16-mixed"
    assert (run / "logs" / "attempt1").is_dir()  # a second attempt of the same run
    epochs = [int(float(r["epoch"])) for r in _rows(run / "history.csv")]
    assert epochs == [0, 1]
    weights = load_file(run / "best.segflow" / "weights.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}


def _rows(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_precision_32_may_be_written_as_a_number(tmp_path: Path) -> None:
    from segflow.config import load_config

    assert load_config(None, ["train.precision=32"]).train.precision == "32"
    config = tmp_path / "c.yaml"
    config.write_text("train: {precision: 32}\n")
    assert load_config(config).train.precision == "32"
    with pytest.raises(ConfigError, match=r"train\.precision"):
        load_config(None, ["train.precision=16"])
