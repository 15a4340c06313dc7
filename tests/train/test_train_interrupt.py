"""SIGTERM (a scheduler's stop) or Ctrl-C during training: one line, exit 143 / 130, resumable."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from segflow.data.splits import make_splits
from tests.fixtures.synthetic import make_dataset
from tests.train.test_train_e2e import _default_tracking_config, _wait_for

SEGFLOW = Path(sys.executable).parent / "segflow"


@pytest.mark.slow
def test_sigterm_mid_training_says_so_in_one_line_and_the_run_resumes(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", n=12, size=(64, 64), num_classes=3)
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
        "train.epochs=4",
        "--set",
        "data.batch_size=2",
        "--set",
        "train.checkpoint_every_steps=2",
    ]  # fmt: skip  (MLflow tracking on, as by default)
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        _wait_for(lambda: (run / "history.csv").is_file(), 120, proc)  # an epoch is done
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith(("error:", "warning:"))]
    assert lines[-2:] == [
        f"warning: training stopped; continue it with: segflow train --resume {run}",
        "error: terminated",
    ], stderr
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    resumed = subprocess.run(
        [str(SEGFLOW), "train", "--resume", str(run)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
