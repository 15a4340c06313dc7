"""`train.tune`: the trained bundle is tuned on the validation split, in time the plan left."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from segflow.data.splits import make_splits
from segflow.train import plan_cost as C
from segflow.train import plan_rules as R
from segflow.train import planner as P
from tests.fixtures.synthetic import make_dataset
from tests.train.test_planner import _ctx, _FixedTimer, _fp

TINY = Path(__file__).parents[1] / "fixtures" / "configs" / "tiny.yaml"


def test_the_plan_leaves_time_for_tune() -> None:
    fp = _fp(size=(960, 1000))
    timer = _FixedTimer(0.5, px=1e-6)
    on = P.Planner().plan(_ctx(fp, budget_s=1200.0, timer=timer))
    off = P.Planner().plan(_ctx(fp, budget_s=1200.0, timer=timer, fixed={"train.tune": False}))
    val_s = 8 * 960 * 1000 * (1e-6 + R.VALIDATION_EXTRA["cpu"]) * R.SAFETY["cpu"]
    tune_s = C.tune_seconds(val_s, 8 * 960 * 1000, int(on.settings["data.tile_size"]),
                            math.sqrt(960 * 1000), 2)  # fmt: skip
    assert tune_s > C.TUNE_PASSES * val_s  # 960 px images in smaller tiles: tiling counted
    minutes_on, minutes_off = on.settings["train.max_minutes"], off.settings["train.max_minutes"]
    assert minutes_off * 60 - minutes_on * 60 == pytest.approx(tune_s, abs=1.0)
    assert on.settings["train.epochs"] <= off.settings["train.epochs"]
    assert f"~{tune_s:.0f} s for train.tune" in on.decisions["epochs"].reason
    assert "train.tune" not in off.decisions["epochs"].reason


def _dataset(tmp: Path) -> Path:
    root = make_dataset(tmp / "ds", n=10, size=(64, 64), num_classes=2, seed=1)
    make_splits(root, val=0.3, test=0.0, seed=0)
    return root


def test_trained_bundle_carries_a_tuning_record(cli, tmp_path: Path) -> None:
    """Default settings (MLflow tracking on, train.tune on): the logged bundle is the tuned one."""
    from mlflow.tracking import MlflowClient

    ds = _dataset(tmp_path)
    runs = tmp_path / "runs"
    res = cli("train", TINY, "--data", ds, "--name", "r", "--set", f"train.output={runs}",
              "--set", "tracking.enabled=true")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    bundle = runs / "r" / "best.segflow"
    meta = yaml.safe_load((bundle / "bundle.yaml").read_text())
    tuning = meta["tuning"]
    val = [line.split(",")[0] for line in (ds / "splits.csv").read_text().splitlines()[1:]
           if line.split(",")[1] == "val"]  # fmt: skip
    assert tuning["images"] == len(val) and tuning["metric"] == "val/mIoU"
    assert [s["step"] for s in tuning["steps"]][:2] == ["threshold", "tta"]
    for step in tuning["steps"]:  # kept exactly when past the margin (TTA: margin x time)
        gain = step["after"] - step["before"]
        if step["step"] != "tta":
            assert step["kept"] == (gain > tuning["margin"]), step
        elif step["kept"]:
            assert gain > tuning["margin"], step
    assert tuning["after"] >= tuning["before"]
    # the ONNX export made after tuning belongs to the same weights
    assert meta["exports"]["onnx"]["file"] == "model.onnx" and (bundle / "model.onnx").is_file()
    state = json.loads((runs / "r" / "run.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    local = client.download_artifacts(state["mlflow_run_id"], "model/bundle.yaml", str(tmp_path))
    assert yaml.safe_load(Path(local).read_text())["tuning"] == tuning


def test_a_failed_tune_warns_and_the_run_finishes(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segflow.evaluate import tuning

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(tuning, "tune", broken)
    ds = _dataset(tmp_path)
    runs = tmp_path / "runs"
    res = cli("train", TINY, "--data", ds, "--name", "r", "--set", f"train.output={runs}")
    assert res.exit_code == 0, res.stderr
    assert "tuning the bundle on the validation images failed (out of memory)" in res.stderr
    meta = yaml.safe_load((runs / "r" / "best.segflow" / "bundle.yaml").read_text())
    assert meta["tuning"] == {} and meta["threshold"] == 0.5
    assert json.loads((runs / "r" / "run.json").read_text())["status"] == "finished"
