"""Training started by an external launcher (torchrun or SLURM's ``srun``), on one or more machines.

(Kubernetes' PyTorchJob and most schedulers start torchrun; Ray Train's own environment is not
detected here.)

Lightning reads the launcher's environment itself (``TorchElasticEnvironment``,
``SLURMEnvironment``) and joins the processes into one DDP group; what segflow adds is what
must agree across machines before any of them starts work:

* one run name for every process: ``--name``, else derived from the launcher's job id
  (``torchrun --rdzv-id`` / ``SLURM_JOB_ID``), never the per-process timestamp;
* the process count the launcher started must equal ``train.num_nodes x train.devices``;
* no per-process planning (each machine would time itself and plan differently): plan once with
  ``segflow plan``, then launch with that config;
* only global rank 0 creates the run folder; the others join it (the check "run already exists"
  is rank 0's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from segflow.errors import ConfigError, UsageError


@dataclass(frozen=True)
class Launch:
    """The environment of one process of an external multi-process launch."""

    launcher: str  # "torchrun" or "slurm"
    rank: int
    world_size: int
    job_id: str | None


def _int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else None


def external_launch() -> Launch | None:
    """The launcher that started this process with more than one process in all, else None."""
    rank, world = _int("RANK"), _int("WORLD_SIZE")
    if "TORCHELASTIC_RUN_ID" in os.environ and rank is not None and world is not None:
        run_id = os.environ["TORCHELASTIC_RUN_ID"].strip()
        job = None if run_id in ("", "none") else run_id
        return Launch("torchrun", rank, world, job) if world > 1 else None
    procid, ntasks = _int("SLURM_PROCID"), _int("SLURM_NTASKS")
    if procid is not None and ntasks is not None and ntasks > 1 and "SLURM_JOB_ID" in os.environ:
        return Launch("slurm", procid, ntasks, os.environ["SLURM_JOB_ID"].strip() or None)
    return None


def shared_run_name(launch: Launch, name: str | None, prefix: str) -> str:
    """The run name every process of ``launch`` computes alike."""
    if name:
        return name
    if launch.job_id is None:
        raise UsageError(
            f"{launch.launcher} started {launch.world_size} processes without a job id: pass "
            "--name NAME (the same on every machine) or torchrun --rdzv-id ID"
        )
    return f"{prefix}-job{launch.job_id}"


def check_world(launch: Launch, num_nodes: int, devices: int | str) -> None:
    """The processes started must be ``num_nodes x devices`` (Lightning would hang or fail)."""
    if devices == "auto":
        raise ConfigError(
            f"train.devices=auto under {launch.launcher}: set train.devices to the processes per "
            f"machine (train.num_nodes x train.devices must be {launch.world_size})"
        )
    if num_nodes * int(devices) != launch.world_size:
        raise ConfigError(
            f"{launch.launcher} started {launch.world_size} processes but train.num_nodes x "
            f"train.devices = {num_nodes} x {devices}: make them agree"
        )


def refuse_planning(launch: Launch | None) -> None:
    """``segflow train --data D`` without a config under a multi-process launcher."""
    if launch is not None:
        raise UsageError(
            f"{launch.launcher} started {launch.world_size} processes: each would plan its own "
            "config; run `segflow plan DATASET --out plan.yaml` once, then launch "
            "`segflow train plan.yaml --data DATASET`"
        )


def is_global_rank_zero() -> bool:
    """This process is rank 0 of the whole job.

    ``RANK`` / ``SLURM_PROCID`` under a launcher; else the ranks of Lightning's own DDP launch
    (``NODE_RANK`` and ``LOCAL_RANK``).
    """
    launch = external_launch()
    if launch is not None:
        return launch.rank == 0
    return _int("LOCAL_RANK") in (None, 0) and _int("NODE_RANK") in (None, 0)
