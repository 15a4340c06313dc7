"""End-to-end `segflow train` through the real CLI on tiny generated datasets."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from segflow.data.image_io import read_mask
from segflow.data.splits import make_splits
from segflow.models.bundle import load_bundle
from tests.fixtures.synthetic import make_dataset

TINY = Path(__file__).parents[1] / "fixtures" / "configs" / "tiny.yaml"
SEGFLOW = Path(sys.executable).parent / "segflow"


def _dataset(tmp: Path, n: int = 12, classes: int = 3, seed: int = 0, size=(64, 80)) -> Path:
    root = make_dataset(tmp / f"ds{classes}", n=n, size=size, num_classes=classes, seed=seed)
    make_splits(root, val=0.25, test=0.0, seed=0)
    return root


def _train(cli, tmp: Path, ds: Path, *extra: str, name: str = "run"):
    res = cli(
        "train", TINY, "--data", ds, "--name", name, "--set", f"train.output={tmp / 'runs'}", *extra
    )
    return res, tmp / "runs" / name


def _history(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_multiclass_one_epoch(cli, tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    res, run = _train(cli, tmp_path, ds)
    assert res.exit_code == 0, res.stderr
    assert "best val/mIoU" in res.stdout
    for name in ("config.yaml", "run.json", "history.csv", "curves.png", "data_stats.json"):
        assert (run / name).is_file(), name
    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "finished" and state["epochs"] == 1
    rows = _history(run)
    assert len(rows) == 1 and 0 <= float(rows[0]["val/mIoU"]) <= 1
    assert {"val/IoU/class1", "val/Dice/class2", "train/loss_ce", "val/loss_dice"} <= set(rows[0])
    bundle = load_bundle(run / "best.segflow")
    meta = bundle.meta
    assert meta.task == "multiclass" and meta.out_channels == 3 and meta.in_channels == 3
    assert [c.name for c in meta.classes] == ["background", "class1", "class2"]
    assert meta.config == yaml.safe_load((run / "config.yaml").read_text())
    assert meta.metrics["val/mIoU"] == pytest.approx(float(rows[0]["val/mIoU"]), rel=1e-4)
    with torch.no_grad():
        out = bundle.model(torch.zeros(1, 3, 64, 96))
    assert out.shape == (1, 3, 64, 96)
    assert (run / "checkpoints" / "final.ckpt").is_file()


def test_binary_task_uses_one_logit(cli, tmp_path: Path) -> None:
    ds = _dataset(tmp_path, classes=2)
    res, run = _train(cli, tmp_path, ds, "--set", "loss.ce=0.5", "--set", "loss.focal=0.5")
    assert res.exit_code == 0, res.stderr
    meta = load_bundle(run / "best.segflow").meta
    assert meta.task == "binary" and meta.out_channels == 1
    # training's 0.5, unless train.tune (on by default) found a better one on the val split
    kept = [s for s in meta.tuning["steps"] if s["step"] == "threshold" and s["kept"]]
    assert meta.threshold == pytest.approx(kept[0]["value"] if kept else 0.5, abs=1e-6)
    row = _history(run)[0]
    assert "val/loss_ce" in row and "val/loss_focal" in row and "val/IoU/class1" in row


def test_embedded_mlflow_store_gets_params_metrics_artifacts(cli, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    ds = _dataset(tmp_path)
    res, run = _train(
        cli,
        tmp_path,
        ds,
        "--set",
        "tracking.enabled=true",
        "--set",
        "train.epochs=2",
        "--set",
        "tracking.images_every=1",
    )
    assert res.exit_code == 0, res.stderr
    state = json.loads((run / "run.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    mrun = client.get_run(state["mlflow_run_id"])
    assert (
        mrun.data.params["model.arch"] == "Unet" and mrun.data.params["optimizer.name"] == "adamw"
    )
    assert mrun.data.tags["dataset.fingerprint"] and mrun.data.tags["task"] == "multiclass"
    history = client.get_metric_history(mrun.info.run_id, "val/mIoU")
    assert len(history) == 2
    assert client.get_metric_history(mrun.info.run_id, "val/IoU/class1")
    artifacts = {a.path for a in client.list_artifacts(mrun.info.run_id)}
    assert {"config.yaml", "curves.png", "history.csv", "model", "images"} <= artifacts
    model_files = {a.path for a in client.list_artifacts(mrun.info.run_id, "model")}
    assert {"model/bundle.yaml", "model/weights.safetensors", "model/model.onnx"} <= model_files
    assert mrun.info.status == "FINISHED"


def test_unreachable_tracking_server_warns_once_and_trains(cli, tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res, run = _train(
        cli,
        tmp_path,
        ds,
        "--set",
        "tracking.enabled=true",
        "--tracking-uri",
        f"http://127.0.0.1:{port}",
    )
    assert res.exit_code == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if "unreachable" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: MLflow server")
    assert _history(run) and (run / "best.segflow" / "bundle.yaml").is_file()
    assert "mlflow_run_id" not in json.loads((run / "run.json").read_text())


def test_kfold_all_reports_mean_and_sd(cli, tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", n=12, size=(64, 64), num_classes=3)
    make_splits(root, test=0.0, folds=2, seed=0)
    res = cli(
        "train",
        TINY,
        "--data",
        root,
        "--name",
        "kf",
        "--folds",
        "all",
        "--set",
        f"train.output={tmp_path / 'runs'}",
    )
    assert res.exit_code == 0, res.stderr
    summary = json.loads((tmp_path / "runs" / "kf" / "folds.json").read_text())
    assert set(summary["folds"]) == {"fold0", "fold1"}
    values = list(summary["folds"].values())
    assert summary["mean"] == pytest.approx(np.mean(values)) and summary["sd"] == pytest.approx(
        np.std(values, ddof=1)
    )
    assert "±" in res.stdout
    for k in (0, 1):
        assert (tmp_path / "runs" / "kf" / f"fold{k}" / "best.segflow" / "bundle.yaml").is_file()
    bad = cli(
        "train", TINY, "--data", root, "--fold", "7", "--set", f"train.output={tmp_path / 'runs'}"
    )
    assert bad.exit_code == 2 and "no fold 7" in bad.stderr


def test_fine_tune_from_bundle_with_other_classes(cli, tmp_path: Path) -> None:
    ds3 = _dataset(tmp_path, classes=3)
    res, run = _train(cli, tmp_path, ds3, name="pre")
    assert res.exit_code == 0, res.stderr
    assert load_bundle(run / "best.segflow").meta.out_channels == 3
    ds4 = _dataset(tmp_path, classes=4, seed=3)
    res, run2 = _train(
        cli, tmp_path, ds4, "--set", f"model.init_from={run / 'best.segflow'}", name="ft"
    )
    assert res.exit_code == 0, res.stderr
    assert "re-initialised the segmentation head" in res.stderr
    ft = load_bundle(run2 / "best.segflow")
    assert ft.meta.out_channels == 4


def test_sixteen_bit_multiband_images(cli, tmp_path: Path) -> None:
    import tifffile

    root = make_dataset(tmp_path / "ds", n=8, size=(64, 64), num_classes=2)
    rng = np.random.default_rng(0)
    for p in sorted((root / "images").glob("*.png")):
        mask = read_mask(root / "masks" / p.name)
        bands = rng.integers(54, 700, size=(64, 64, 4)).astype(np.uint16)
        bands[mask == 1] += 5000
        tifffile.imwrite(p.with_suffix(".tif"), bands)
        p.unlink()
    make_splits(root, val=0.25, test=0.0, seed=0)
    res, run = _train(cli, tmp_path, root)
    assert res.exit_code == 0, res.stderr
    meta = load_bundle(run / "best.segflow").meta
    assert meta.in_channels == 4 and meta.input_dtype == "uint16"
    norm = meta.normalization
    stats = json.loads((run / "data_stats.json").read_text())
    assert norm.scale == 65535.0
    np.testing.assert_allclose(norm.mean, np.array(stats["raw_mean"]) / 65535.0, rtol=1e-6)
    assert all(s > 0 for s in norm.std)


def test_preprocessing_travels_in_the_bundle(cli, tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    res, run = _train(
        cli,
        tmp_path,
        ds,
        "--set",
        "data.preprocess.clahe=true",
        "--set",
        "data.preprocess.resize=[48, 64]",
        "--set",
        "data.preprocess.diffusion_iterations=2",
        "--set",
        "augment.mosaic=1.0",
        "--set",
        "augment.preset=heavy",
    )
    assert res.exit_code == 0, res.stderr
    pre = load_bundle(run / "best.segflow").meta.preprocess
    assert pre["clahe"] is True and pre["resize"] == [48, 64] and pre["diffusion_iterations"] == 2


def test_same_seed_same_result(cli, tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    _train(cli, tmp_path, ds, name="a")
    _train(cli, tmp_path, ds, name="b")
    a, b = _history(tmp_path / "runs" / "a"), _history(tmp_path / "runs" / "b")
    assert (
        a[0]["val/loss"] == b[0]["val/loss"]
        and a[0]["train/loss_epoch"] == b[0]["train/loss_epoch"]
    )


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--set", "optimzer.lr=1"], 2, "did you mean optimizer"),
        (["--set", "model.arch=Unett"], 2, "did you mean"),
        (["--set", "model.encoder=resnet19"], 2, "resnet18"),
        (["--set", "loss.class_weights=[1, 2]"], 2, "class_weights"),
        (["--resume", "nowhere"], 2, "not a segflow run folder"),
        (["--folds", "some"], 2, "give a number of folds (>= 2) or 'all'"),
    ],
)
def test_bad_training_requests(
    cli, tmp_path: Path, args: list[str], code: int, needle: str
) -> None:
    ds = _dataset(tmp_path)
    res = cli("train", TINY, "--data", ds, "--set", f"train.output={tmp_path / 'runs'}", *args)
    assert res.exit_code == code, (res.exit_code, res.stderr)
    assert needle in res.stderr and res.stderr.startswith("error: ")


def test_schedule_errors_come_before_any_run_folder(cli, tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    runs = tmp_path / "runs"
    args = ("train", TINY, "--data", ds, "--set", f"train.output={runs}", "--name", "r")
    res = cli(*args, "--set", "train.epochs=2", "--set", "schedule.warmup_epochs=3")
    assert res.exit_code == 2 and "covers the whole run" in res.stderr, res.stderr
    assert not (runs / "r").exists()  # nothing stale: the same --name works once fixed
    res = cli(*args, "--set", "schedule.name=onecycle", "--set", "schedule.warmup_epochs=1")
    assert res.exit_code == 2 and "must be 0 with onecycle" in res.stderr
    assert not (runs / "r").exists()


def test_no_dataset_is_a_usage_error(cli) -> None:
    res = cli("train", TINY)
    assert res.exit_code == 2 and "--data DATASET" in res.stderr


def _wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.returncode}")
        time.sleep(0.05)
    raise AssertionError("timed out")


def _default_tracking_config(tmp: Path) -> Path:
    """TINY without its ``tracking`` section: MLflow on, as a user gets it out of the box."""
    cfg = yaml.safe_load(TINY.read_text())
    cfg.pop("tracking")
    path = tmp / "tracked.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _mlflow_run(runs: Path, run_id: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    return client, client.get_run(run_id)


def _train_clock(ckpt: Path) -> float:
    """Seconds of training the checkpoint's Timer (train.max_minutes) has counted."""
    state = torch.load(ckpt, weights_only=True)["callbacks"]
    timer = next(v for k, v in state.items() if k.startswith("Timer"))
    return float(timer["time_elapsed"]["train"])


def _epochs_logged(client, run_id: str) -> list[int]:
    return sorted({int(m.value) for m in client.get_metric_history(run_id, "epoch")})


@pytest.mark.slow
def test_resume_after_kill_with_default_tracking_then_more_epochs(tmp_path: Path) -> None:
    """kill -9 mid-epoch, --resume, then --resume --set train.epochs=4: one MLflow run, all rows."""
    root = make_dataset(tmp_path / "ds", n=16, size=(64, 64), num_classes=3)
    make_splits(root, val=0.25, test=0.0, seed=0)
    runs, run = tmp_path / "runs", tmp_path / "runs" / "r"
    args = [
        str(SEGFLOW),
        "train",
        str(_default_tracking_config(tmp_path)),
        "--data",
        str(root),
        "--name",
        "r",
        "--set",
        f"train.output={runs}",
        "--set",
        "train.epochs=3",
        "--set",
        "data.batch_size=2",
        "--set",
        "train.checkpoint_every_steps=2",
        "--set",
        "train.max_minutes=30",
    ]  # fmt: skip  (max_minutes: the Timer's clock)
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path
    )
    step_ckpt = run / "checkpoints" / "step.ckpt"

    def epoch_one_saved() -> bool:  # history has epoch 0 and a checkpoint was written after it
        history = run / "history.csv"
        return (
            history.is_file()
            and len(_history(run)) >= 1
            and step_ckpt.is_file()
            and step_ckpt.stat().st_mtime > history.stat().st_mtime
        )

    try:
        _wait_for(epoch_one_saved, 120, proc)
        os.kill(proc.pid, signal.SIGKILL)  # mid-epoch, no chance to clean up
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    before = _history(run)
    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "running" and state["mlflow_run_id"]  # killed, tracked
    run_id = state["mlflow_run_id"]
    resumed = subprocess.run([str(SEGFLOW), "train", "--resume", str(run)], capture_output=True,
                             text=True, cwd=tmp_path, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr and "MLflow tracking" not in resumed.stderr
    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "finished" and state["epochs"] == 3
    assert state["mlflow_run_id"] == run_id  # the same MLflow run continued
    after = _history(run)
    assert [int(float(r["epoch"])) for r in after] == [0, 1, 2]
    assert after[: len(before)] == before  # the rows of the killed attempt are kept, unchanged
    assert (run / "logs" / "attempt1").is_dir()  # a second attempt, not a fresh run
    with (run / "logs" / "attempt1" / "metrics.csv").open() as fh:
        assert min(int(r["step"]) for r in csv.DictReader(fh)) > 0
    client, mrun = _mlflow_run(runs, run_id)
    assert mrun.info.status == "FINISHED" and mrun.data.params["train.epochs"] == "3"
    assert _epochs_logged(client, run_id) == [0, 1, 2]
    clock = _train_clock(run / "checkpoints" / "final.ckpt")

    more = subprocess.run([str(SEGFLOW), "train", "--resume", str(run), "--set", "train.epochs=4"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)  # fmt: skip
    assert more.returncode == 0, more.stderr
    assert "Traceback" not in more.stderr and "MLflow tracking" not in more.stderr
    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "finished" and state["epochs"] == 4
    assert [int(float(r["epoch"])) for r in _history(run)] == [0, 1, 2, 3]
    assert _history(run)[:3] == after
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 4
    client, mrun = _mlflow_run(runs, run_id)
    params, tags = mrun.data.params, mrun.data.tags
    assert params["train.epochs"] == "3" and params["train.epochs.v2"] == "4"  # a new version
    assert tags["segflow.resumes"] == "2" and "train.epochs: 3 -> 4" in tags["segflow.resume2"]
    assert "pretrained" not in params  # not a property of the run: it differed on resume
    assert _epochs_logged(client, run_id) == [0, 1, 2, 3]
    assert mrun.info.status == "FINISHED"
    # The schedule is the new 4-epoch one: epoch 3 starts a quarter before its end, not at the
    # floor the 3-epoch schedule restored from the checkpoint had reached.
    with (run / "logs" / "attempt2" / "metrics.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("lr-AdamW/pg1")]
    assert 5e-5 < float(rows[0]["lr-AdamW/pg1"]) < 5e-4, rows[0]
    assert len(client.search_runs([mrun.info.experiment_id])) == 1
    # The time-limit clock continued from the 3 epochs before, not from 0 for the 4th alone.
    assert _train_clock(run / "checkpoints" / "final.ckpt") > clock > 0


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", n=16, size=(64, 64), num_classes=3)
    make_splits(root, val=0.25, test=0.0, seed=0)
    runs = tmp_path / "runs"
    res = subprocess.run(
        [
            str(SEGFLOW),
            "train",
            str(TINY),
            "--data",
            str(root),
            "--name",
            "ddp",
            "--set",
            f"train.output={runs}",
            "--set",
            "train.strategy=ddp",
            "--set",
            "train.devices=2",
            "--set",
            "train.accelerator=cpu",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert [p.name for p in runs.iterdir() if p.is_dir()] == ["ddp"]
    state = json.loads((runs / "ddp" / "run.json").read_text())
    assert state["status"] == "finished" and state["world_size"] == 2
    assert (runs / "ddp" / "best.segflow" / "bundle.yaml").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_real_mlflow_server(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "art"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        def up() -> bool:
            try:
                with urllib.request.urlopen(uri + "/health", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        _wait_for(up, 120, server)
        ds = _dataset(tmp_path)
        runs = tmp_path / "runs"
        res = subprocess.run(
            [
                str(SEGFLOW),
                "train",
                str(TINY),
                "--data",
                str(ds),
                "--name",
                "srv",
                "--set",
                f"train.output={runs}",
                "--set",
                "tracking.enabled=true",
                "--set",
                "train.epochs=2",
                "--tracking-uri",
                uri,
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=300,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        run_id = json.loads((runs / "srv" / "run.json").read_text())["mlflow_run_id"]
        client = MlflowClient(tracking_uri=uri)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.params["model.encoder"] == "resnet18"
        assert len(client.get_metric_history(run_id, "val/mIoU")) == 2
        assert "model" in {a.path for a in client.list_artifacts(run_id)}
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


def test_grey_images_train_with_one_channel(cli, tmp_path: Path) -> None:
    import cv2

    root = make_dataset(tmp_path / "ds", n=8, size=(64, 64), num_classes=2)
    for p in (root / "images").glob("*.png"):
        cv2.imwrite(str(p), cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2GRAY))
    make_splits(root, val=0.25, test=0.0, seed=0)
    res, run = _train(cli, tmp_path, root)
    assert res.exit_code == 0, res.stderr
    meta = load_bundle(run / "best.segflow").meta
    assert meta.in_channels == 1 and len(meta.normalization.mean) == 1


def test_large_images_train_on_crops_and_validate_in_tiles(
    cli, tmp_path: Path, monkeypatch
) -> None:
    """A 600 x 800 image is never resized: 64 px training crops, tiled whole-image validation."""
    from segflow.infer.predictor import Predictor

    calls: list[tuple[int, ...]] = []
    real = Predictor.network_probabilities

    def spy(self, x):
        calls.append(tuple(x.shape))
        return real(self, x)

    monkeypatch.setattr(Predictor, "network_probabilities", spy)
    ds = _dataset(tmp_path, n=4, size=(600, 800))
    res, run = _train(
        cli, tmp_path, ds, "--set", "data.val_tile_threshold=256", "--set", "data.crops_per_image=4"
    )
    assert res.exit_code == 0, res.stderr
    assert calls and all(
        shape[1:] == (608, 800) for shape in calls
    )  # padded to the stride, not resized
    assert float(_history(run)[0]["val/mIoU"]) >= 0
