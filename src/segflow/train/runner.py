"""``segflow train``: from a config and a dataset to a run folder with the best model bundle.

Run folder (``runs/NAME/``)::

    config.yaml        the resolved config (defaults < file < --set)
    run.json           state: dataset, fold, MLflow run id, status, best metric
    data_stats.json    channel statistics and class pixels of the training images
    logs/attemptN/     every logged value per (re)start (Lightning CSV logger: metrics.csv)
    history.csv        one row per epoch;  curves.png  the same as plots
    images/            validation overlays every few epochs
    checkpoints/       resumable checkpoints (every few minutes, every N steps if asked, final)
    best.segflow/      the best model bundle (bundle.yaml + weights.safetensors)
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from segflow._io import atomic_write_text, dump_yaml, now_iso
from segflow._version import __version__
from segflow.config import SegflowConfig, config_to_dict, load_config
from segflow.data.dataset import CanonicalDataset
from segflow.errors import ConfigError, UsageError
from segflow.train.data_stats import resolve_stems
from segflow.train.ensemble import EnsembleResult, parse_folds, write_fold_summary
from segflow.train.launch import check_world, external_launch, is_global_rank_zero, shared_run_name

log = logging.getLogger("segflow.train")

#: Environment variable carrying the run name to the processes a DDP launch starts.
RUN_NAME_ENV = "SEGFLOW_RUN_NAME"


@dataclass
class TrainResult:
    """What a training run produced."""

    run_dir: Path
    bundle: Path
    monitor: str
    best: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    epochs: int = 0


@dataclass
class FoldsResult:
    """Every fold of a k-fold run and the mean +- sd of the monitored metric."""

    run_dir: Path
    folds: list[TrainResult]
    monitor: str
    mean: float
    sd: float


# ------------------------------------------------------------------------------------------------
# Run folders


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"


def find_run(resume: str | os.PathLike[str], output: Path) -> Path:
    """A run folder given as a path or as a name under ``output``."""
    for candidate in (Path(resume), output / str(resume)):
        if (candidate / "config.yaml").is_file() and (candidate / "run.json").is_file():
            return candidate
    raise UsageError(
        f"{resume}: not a segflow run folder (no config.yaml/run.json), looked in {output}"
    )


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The most recent resumable checkpoint of a run."""
    # lstat: a dangling link or a folder named *.ckpt is still a candidate, refused when loaded
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt"), key=lambda p: p.lstat().st_mtime)
    return ckpts[-1] if ckpts else None


def resolve_precision(setting: str, accelerator: str = "auto") -> str:
    """Lightning's precision for ``train.precision``.

    ``auto`` is bf16-mixed (16-mixed without bf16) on a GPU and fp32 on a CPU: whether bf16
    pays off on a CPU is measured by ``segflow plan``, which then writes ``bf16-mixed``. A
    reduced precision on a CPU without native bf16 works but is emulated: a warning says so.
    """
    import torch

    gpu = accelerator in ("gpu", "auto") and torch.cuda.is_available()
    if setting == "auto":
        if gpu:
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return "32-true"
    if setting.endswith("-mixed") and not gpu and accelerator != "mps":
        from segflow._hw import cpu_supports_bf16

        if not cpu_supports_bf16():
            log.warning(
                "train.precision=%s on a CPU without native bf16 (no AMX or AVX-512 BF16): it "
                "is emulated and usually slower than train.precision=32",
                setting,
            )
    return setting if setting != "32" else "32-true"


def check_devices(accelerator: str, devices: int | str) -> None:
    """Refuse, before any run folder, the devices Lightning would reject once training starts."""
    import torch

    available = {
        "gpu": torch.cuda.device_count(),
        "mps": int(torch.backends.mps.is_available()),
        "cpu": os.cpu_count() or 1,
    }
    kind = accelerator if accelerator != "auto" else "gpu" if available["gpu"] else "cpu"
    if accelerator in ("gpu", "mps") and available[kind] == 0:
        raise ConfigError(f"train.accelerator={accelerator}: no {kind} device on this machine")
    if isinstance(devices, int) and kind != "cpu" and devices > available[kind]:
        raise ConfigError(
            f"train.devices={devices}: this machine has {available[kind]} {kind} device(s)"
        )


# ------------------------------------------------------------------------------------------------
# Training


def train(
    config: str | os.PathLike[str] | None = None,
    *,
    data: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    resume: str | os.PathLike[str] | None = None,
    fold: int | None = None,
    folds: str | int | None = None,
    tracking_uri: str | None = None,
    name: str | None = None,
    progress: bool = False,
    callbacks: Sequence[Any] = (),
) -> TrainResult | FoldsResult | EnsembleResult:
    """Train a model; see the module docstring for what the run folder holds.

    Args:
        config: a YAML config file (defaults when None).
        data: the dataset folder (overrides ``data.dataset``).
        overrides: ``KEY=VALUE`` strings, applied last.
        resume: a run folder (or name) to continue from its latest checkpoint.
        fold: train with this fold of ``splits.csv`` as validation.
        folds: ``"all"`` trains every fold of ``splits.csv`` in turn and reports mean +- sd;
            a number K >= 2 makes K folds of the non-test images, trains them and writes the
            ensemble bundle ``ensemble.segflow`` (see :mod:`segflow.train.ensemble`).
        tracking_uri: MLflow tracking URI (overrides ``tracking.uri``).
        name: run name (overrides ``train.name``).
        progress: show progress bars.
        callbacks: extra Lightning callbacks (Python API only).
    """
    if resume is not None:
        return _resume(
            resume,
            overrides=overrides,
            tracking_uri=tracking_uri,
            progress=progress,
            callbacks=callbacks,
        )
    k = parse_folds(folds) if folds is not None else None  # before anything else
    cfg = load_config(config, overrides)
    updates: dict[str, Any] = {}
    if data is not None:
        updates["dataset"] = Path(data)
    if fold is not None:
        updates["fold"] = fold
    if updates:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=updates)})
    if cfg.data.dataset is None:
        raise UsageError("no dataset: pass --data DATASET or set data.dataset in the config")
    from segflow.train.optim import check_schedule

    check_schedule(cfg.schedule, cfg.train.epochs, cfg.optimizer.lr)  # before any run folder
    check_devices(cfg.train.accelerator, cfg.train.devices)
    if tracking_uri is not None:
        cfg.tracking.uri = tracking_uri
    launch = external_launch()  # torchrun / srun on one or several machines
    if launch is not None:
        check_world(launch, cfg.train.num_nodes, cfg.train.devices)
        run_name = shared_run_name(launch, name or cfg.train.name, _run_prefix(cfg))
    else:
        run_name = name or cfg.train.name or os.environ.get(RUN_NAME_ENV) or default_run_name(cfg)
    if k is not None:
        from segflow.train.ensemble import train_fold_ensemble

        return train_fold_ensemble(cfg, run_name, k, fit_run=fit_run, progress=progress,
                                   callbacks=callbacks)  # fmt: skip
    if folds is not None:
        return _train_folds(cfg, run_name, progress=progress, callbacks=callbacks)
    run_dir = cfg.train.output / run_name
    joining = os.environ.get(RUN_NAME_ENV) == run_name or (launch is not None and launch.rank > 0)
    if (run_dir / "run.json").exists() and not joining:
        raise UsageError(f"{run_dir}: run already exists; choose another --name or --resume it")
    return fit_run(cfg, run_dir, run_name, progress=progress, extra_callbacks=callbacks)


def default_run_name(cfg: SegflowConfig) -> str:
    """``DATASET-ARCH-ENCODER-YYYYmmdd-HHMMSS``: the run folder's name when none is given."""
    return f"{_run_prefix(cfg)}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _run_prefix(cfg: SegflowConfig) -> str:
    dataset = cfg.data.dataset.resolve().name if cfg.data.dataset else "data"
    return _slug(f"{dataset}-{cfg.model.arch}-{cfg.model.encoder}")


def _train_folds(
    cfg: SegflowConfig, run_name: str, *, progress: bool, callbacks: Sequence[Any]
) -> FoldsResult:
    dataset = CanonicalDataset(cfg.data.dataset or ".")
    found = sorted({r.fold for r in dataset.splits().values() if r.fold is not None})
    if not found:
        raise UsageError(
            f"{dataset.root / 'splits.csv'}: no folds; run `segflow split --folds K` first"
        )
    root = cfg.train.output / run_name
    results = []
    for k in found:
        fold_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"fold": k})})
        results.append(
            fit_run(
                fold_cfg,
                root / f"fold{k}",
                f"{run_name}-fold{k}",
                progress=progress,
                extra_callbacks=callbacks,
            )
        )
    bests = {k: r.best for k, r in zip(found, results, strict=True)}
    mean, sd = write_fold_summary(root, cfg.train.monitor, bests)
    return FoldsResult(root, results, cfg.train.monitor, mean, sd)


def _resume(
    resume: str | os.PathLike[str],
    *,
    overrides: Sequence[str],
    tracking_uri: str | None,
    progress: bool,
    callbacks: Sequence[Any],
) -> TrainResult:
    from segflow.train.ensemble import FOLDS_FILE, fold_stems, read_fold_rows
    from segflow.train.optim import check_schedule
    from segflow.train.resume import check_changes, load_checkpoint, read_state

    run_dir = find_run(resume, Path("runs"))
    state = read_state(run_dir)
    saved = config_to_dict(load_config(run_dir / "config.yaml"))
    cfg = load_config(run_dir / "config.yaml", overrides)
    if tracking_uri is not None:
        cfg.tracking.uri = tracking_uri
    ckpt = latest_checkpoint(run_dir)
    checkpoint = load_checkpoint(ckpt) if ckpt is not None else None
    check_changes(saved, config_to_dict(cfg), int(checkpoint["epoch"]) if checkpoint else 0)
    check_schedule(cfg.schedule, cfg.train.epochs, cfg.optimizer.lr)
    if ckpt is None:
        log.warning("%s has no checkpoint yet: starting it again from the beginning", run_dir)
    stems = None
    if cfg.data.fold is not None and (run_dir.parent / FOLDS_FILE).is_file():  # --folds K
        stems = fold_stems(read_fold_rows(run_dir.parent / FOLDS_FILE), cfg.data.fold)
    return fit_run(
        cfg,
        run_dir,
        str(state.get("name", run_dir.name)),
        progress=progress,
        ckpt=ckpt,
        state=state,
        extra_callbacks=callbacks,
        checkpoint=checkpoint,
        stems=stems,
    )


def fit_run(
    cfg: SegflowConfig,
    run_dir: Path,
    run_name: str,
    *,
    progress: bool,
    ckpt: Path | None = None,
    state: dict[str, Any] | None = None,
    extra_callbacks: Sequence[Any] = (),
    checkpoint: dict[str, Any] | None = None,
    stems: dict[str, Sequence[str]] | None = None,
    tune: bool = True,
) -> TrainResult:
    """Train one run into ``run_dir``; ``stems`` (train/val/test) replace splits.csv's."""
    from segflow.train import fit_setup as setup
    from segflow.train.data import SegmentationData
    from segflow.train.losses import check_class_weights

    dataset = CanonicalDataset(cfg.data.dataset or ".")
    meta = dataset.meta
    task_kind: Literal["binary", "multiclass"] = "binary" if meta.num_classes == 2 else "multiclass"
    weights = cfg.loss.class_weights
    if isinstance(weights, list):  # before any run folder
        check_class_weights(weights, meta.num_classes)
    if stems is None:
        stems = resolve_stems(dataset, cfg.data.fold, cfg.train.seed)
    if not stems["val"]:
        log.warning("no validation images: the last epoch's weights become the bundle")
    rank_zero = is_global_rank_zero()
    stats = setup.measure_training_data(
        dataset, stems["train"], run_dir, cfg, progress=progress and rank_zero, rank_zero=rank_zero
    )
    normalization, preprocessor = setup.configure_preprocessing(cfg, stats)
    resolved = config_to_dict(cfg)
    resolved["data"]["dataset"] = str(Path(cfg.data.dataset or ".").resolve())
    task = setup.configure_task(cfg, resolved, meta, task_kind, stats, pretrained=ckpt is None)
    if ckpt is not None and checkpoint is not None:  # before the run's files change
        from segflow.train.resume import check_weights

        check_weights(ckpt, checkpoint, task.state_dict())
    if rank_zero:
        atomic_write_text(run_dir / "config.yaml", dump_yaml(resolved))
    for message in task.init_messages:
        log.warning(message)
    datamodule = SegmentationData(dataset, stems, preprocessor, cfg)
    tracking = setup.configure_tracking(
        cfg, run_name, resolved, meta, stats, task_kind, state
    ) if rank_zero else None  # fmt: skip
    sink = tracking.log_artifact if tracking else None
    make_meta = setup.bundle_meta_factory(
        cfg, run_name, resolved, meta, stats, task, normalization, task_kind
    )
    task.inference_meta = lambda: make_meta({})  # tiled validation predicts as the bundle will
    has_val = bool(stems["val"])
    callbacks = setup.configure_callbacks(
        cfg, run_dir, meta, normalization, make_meta, sink, has_val=has_val,
        resumed=ckpt is not None, extra_callbacks=extra_callbacks, progress=progress,
    )  # fmt: skip
    t = cfg.train
    trainer = setup.configure_trainer(
        cfg, run_dir, callbacks, tracking, has_val=has_val, progress=progress,
        precision=resolve_precision(t.precision, t.accelerator),
    )  # fmt: skip
    if rank_zero:
        os.environ[RUN_NAME_ENV] = run_name  # processes started by a DDP launch join this run
        _write_state(run_dir, run_name, cfg, tracking, status="running")
    _run_fit(trainer, task, datamodule, ckpt, run_dir, run_name, cfg, tracking, rank_zero)
    return _finish(trainer, callbacks, dataset, stems["val"], run_dir, run_name, cfg, tracking,
                   rank_zero, progress, tune=tune)  # fmt: skip


def _run_fit(
    trainer: Any,
    task: Any,
    datamodule: Any,
    ckpt: Path | None,
    run_dir: Path,
    run_name: str,
    cfg: SegflowConfig,
    tracking: Any,
    rank_zero: bool,
) -> None:
    """``trainer.fit`` with Lightning's expected warnings silenced; a failure marks the run."""
    with warnings.catch_warnings():
        # Lightning's hint that few loader workers may bottleneck: deliberate on small machines
        # (and num_workers=0 in tests); the train_overhead benchmark measures the real cost.
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings(
            "ignore",
            message=r".*number of training batches .* is smaller than the logging interval.*",
        )
        if ckpt is not None:  # a resumed run's own checkpoints are expected there
            warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* is not empty.*")
            warnings.filterwarnings("ignore", message=r".*The dirpath has changed from.*")  # moved
        # Lightning 2.6 calls a torch.utils._pytree API that torch 2.14 deprecates; not ours.
        warnings.filterwarnings(
            "ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*"
        )
        # A resumed run writes into its own checkpoint folder again: expected, not a hazard.
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* is not empty")
        try:
            trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        except BaseException as exc:
            if tracking is not None:
                tracking.finish("FAILED")
            if rank_zero:
                _write_state(run_dir, run_name, cfg, tracking, status="failed")
            _reraise_interrupt(exc, run_dir)
            raise


def _finish(
    trainer: Any,
    callbacks: list[Any],
    dataset: CanonicalDataset,
    val: Sequence[str],
    run_dir: Path,
    run_name: str,
    cfg: SegflowConfig,
    tracking: Any,
    rank_zero: bool,
    progress: bool,
    *,
    tune: bool = True,
) -> TrainResult:
    """Final checkpoint; on rank zero tune, export, record the state and publish to MLflow."""
    from segflow.train.callbacks import BestBundle

    t = cfg.train
    # One final checkpoint so a finished run can be continued (--resume RUN --set train.epochs=N):
    # the full state (optimiser, loops, callbacks), said explicitly (Lightning logs the default).
    trainer.save_checkpoint(run_dir / "checkpoints" / "final.ckpt", weights_only=False)
    best_cb = next(c for c in callbacks if isinstance(c, BestBundle))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if rank_zero:
        from segflow.export.onnx import export_after_training

        if tune and t.tune and val and (run_dir / "best.segflow").is_dir():
            tune_after_training(run_dir / "best.segflow", dataset, val, progress)
        export_after_training(run_dir / "best.segflow")  # fast backends out of the box
        _write_state(run_dir, run_name, cfg, tracking, status="finished", best=best_cb.best,
                     epochs=trainer.current_epoch, world_size=trainer.world_size,
                     precision=str(trainer.precision))  # fmt: skip
        if tracking is not None:
            tracking.log_artifact(run_dir / "config.yaml", None)
            tracking.log_artifact(run_dir / "best.segflow", "model")
            tracking.finish()
    return TrainResult(
        run_dir,
        run_dir / "best.segflow",
        best_cb.monitor,
        best_cb.best,
        metrics,
        trainer.current_epoch,
    )


def tune_after_training(
    bundle: Path, dataset: CanonicalDataset, val: Sequence[str], progress: bool
) -> None:
    """``segflow tune --in-place`` on the run's bundle and validation images; failure only warns.

    Threshold, TTA and post-processing are ``bundle.yaml`` fields, not part of the network, so
    the ONNX export made after this is the same either way.
    """
    from segflow.evaluate.tuning import tune

    try:
        result = tune(bundle, dataset, in_place=True, backend="torch", stems=val, progress=progress)
    except Exception as exc:  # a failed tune must not fail a finished training run
        log.warning(
            "tuning the bundle on the validation images failed (%s): %s keeps its threshold "
            "and post-processing; retry with `segflow tune %s DATASET --in-place`",
            " ".join(str(exc).split()) or type(exc).__name__, bundle, bundle,
        )  # fmt: skip
        return
    kept = [f"{s.step}={s.value}" for s in result.steps if s.kept] or ["nothing"]
    log.info("tuned %s on %d validation images: %s %.4f -> %.4f (kept %s)", bundle,
             result.images, result.metric, result.before, result.after, ", ".join(kept))  # fmt: skip


def _write_state(
    run_dir: Path,
    run_name: str,
    cfg: SegflowConfig,
    tracking: Any,
    *,
    status: str,
    best: float | None = None,
    epochs: int | None = None,
    world_size: int | None = None,
    precision: str | None = None,
) -> None:
    path = run_dir / "run.json"
    state = json.loads(path.read_text()) if path.is_file() else {}
    state.update(
        {
            "name": run_name,
            "status": status,
            "updated_at": now_iso(),
            "dataset": str(Path(cfg.data.dataset or ".").resolve()),
            "fold": cfg.data.fold,
            "monitor": cfg.train.monitor,
            "segflow_version": __version__,
        }
    )
    if tracking is not None:
        state["mlflow_run_id"] = tracking.run_id
        state["mlflow_uri"] = tracking.uri
    if best is not None:
        state["best"] = best
    if epochs is not None:
        state["epochs"] = epochs
    if world_size is not None:
        state["world_size"] = world_size
    if precision is not None:
        state["precision"] = precision
    atomic_write_text(path, json.dumps(state, indent=2))


def _reraise_interrupt(exc: BaseException, run_dir: Path) -> None:
    """Ctrl-C / SIGTERM in ``trainer.fit``: raise the interrupt itself, not Lightning's exit(1).

    Lightning answers a KeyboardInterrupt (SIGTERM arrives as one, see cli/_common.py) with its
    graceful shutdown, ignores SIGINT from then on and calls ``sys.exit(1)``: the CLI would exit
    1 without saying why. The interrupt goes on to the caller instead (exit 130 / 143 and one
    line) and SIGINT gets its handler back.
    """
    cause = exc.__context__ if isinstance(exc, SystemExit) else None
    if not isinstance(cause, KeyboardInterrupt):
        return
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    log.warning("training stopped; continue it with: segflow train --resume %s", run_dir)
    raise cause from None
