"""Training under an external launcher: torchrun on two "machines" (two launches on localhost).

The unit tests fake the launchers' environments; the end-to-end test starts two torchrun
launches with ``--nnodes 2`` (node ranks 0 and 1, gloo on 127.0.0.1), as a user does on two
machines sharing the output folder, with MLflow tracking on as by default.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from segflow.errors import ConfigError, UsageError
from segflow.train.launch import (
    Launch,
    check_world,
    external_launch,
    is_global_rank_zero,
    shared_run_name,
)
from tests.conftest import run_cli
from tests.fixtures.synthetic import make_dataset

TINY = Path(__file__).parents[1] / "fixtures" / "configs" / "tiny.yaml"
BIN = Path(sys.executable).parent
LAUNCH_VARS = ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK",
               "SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_ID")  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_launchers_are_detected_from_their_environment(clean_env) -> None:
    assert external_launch() is None and is_global_rank_zero()
    clean_env.setenv("TORCHELASTIC_RUN_ID", "job7")
    clean_env.setenv("RANK", "1")
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("LOCAL_RANK", "0")  # rank 0 of its machine, not of the job
    assert external_launch() == Launch("torchrun", 1, 2, "job7")
    assert not is_global_rank_zero()
    clean_env.setenv("WORLD_SIZE", "1")  # one process: nothing to coordinate
    assert external_launch() is None
    for name in ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE"):
        clean_env.delenv(name)
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("SLURM_NTASKS", "4")
    clean_env.setenv("SLURM_JOB_ID", "991")
    assert external_launch() == Launch("slurm", 0, 4, "991") and is_global_rank_zero()


def test_run_name_world_size_and_planning_rules(clean_env, tmp_path: Path) -> None:
    torchrun = Launch("torchrun", 0, 2, None)
    assert shared_run_name(torchrun, "mine", "ds-Unet") == "mine"
    assert shared_run_name(Launch("slurm", 3, 4, "991"), None, "ds-Unet") == "ds-Unet-job991"
    with pytest.raises(UsageError, match="pass --name NAME"):
        shared_run_name(torchrun, None, "ds-Unet")
    check_world(torchrun, 2, 1)
    with pytest.raises(ConfigError, match=r"started 2 processes but train\.num_nodes x"):
        check_world(torchrun, 1, 1)
    with pytest.raises(ConfigError, match=r"train\.devices=auto under torchrun"):
        check_world(torchrun, 2, "auto")

    ds = make_dataset(tmp_path / "ds", n=4, size=(32, 32))
    clean_env.setenv("TORCHELASTIC_RUN_ID", "job7")
    clean_env.setenv("RANK", "0")
    clean_env.setenv("WORLD_SIZE", "2")
    res = run_cli("train", "--data", ds, "--set", f"train.output={tmp_path / 'runs'}")
    assert res.exit_code == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "each would plan its own config; run `segflow plan DATASET" in res.stderr
    res = run_cli("train", TINY, "--data", ds, "--set", f"train.output={tmp_path / 'runs'}")
    assert res.exit_code == 2 and "train.devices=auto under torchrun" in res.stderr
    assert not (tmp_path / "runs").exists()  # refused before any run folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_machines_with_torchrun_train_one_run(tmp_path: Path) -> None:
    from segflow.data.splits import make_splits

    ds = make_dataset(tmp_path / "ds", n=12, size=(64, 64), num_classes=3)
    make_splits(ds, val=0.25, test=0.0, seed=0)
    runs, port = tmp_path / "runs", _free_port()
    command = [
        *("--nnodes", "2", "--nproc-per-node", "1", "--master-addr", "127.0.0.1"),
        *("--master-port", str(port), "--rdzv-id", "mn42", "--no-python", str(BIN / "segflow")),
        *("train", str(TINY), "--data", str(ds), "--set", f"train.output={runs}"),
        *("--set", "train.num_nodes=2", "--set", "train.devices=1", "--set", "train.strategy=ddp"),
        *("--set", "train.accelerator=cpu", "--set", "tracking.enabled=true"),
    ]
    nodes = [
        subprocess.Popen(
            [str(BIN / "torchrun"), "--node-rank", str(rank), *command],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outs, strict=True):
        assert node.returncode == 0, err[-3000:]
    (run,) = [p for p in runs.iterdir() if p.is_dir() and p.name != "mlartifacts"]
    assert run.name == "ds-Unet-resnet18-jobmn42"  # the same name on both machines, no timestamp
    state = json.loads((run / "run.json").read_text())
    assert state["status"] == "finished" and state["world_size"] == 2
    assert (run / "best.segflow" / "bundle.yaml").is_file()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    found = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(found) == 1  # rank 0 alone tracked the run
