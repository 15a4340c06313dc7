"""The steps of one training run, in the order ``runner._fit`` takes them (``configure_*``).

Each function is one named step of the run (measure the training images, normalisation, the
task, MLflow, the bundle metadata, the callbacks, the Trainer), moved here from ``_fit``
unchanged so that function reads as the sequence of steps.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from segflow._io import atomic_write_text, now_iso
from segflow._version import __version__
from segflow.config import SegflowConfig
from segflow.data.dataset import CanonicalDataset, DatasetMeta
from segflow.errors import DataError
from segflow.train.data_stats import DataStats, data_stats

if TYPE_CHECKING:
    import lightning as L

    from segflow.data.transforms import Normalization, Preprocessor
    from segflow.tracking import Tracking
    from segflow.train.task import SegmentationTask


def measure_training_data(
    dataset: CanonicalDataset,
    train_stems: Sequence[str],
    run_dir: Path,
    cfg: SegflowConfig,
    *,
    progress: bool,
    rank_zero: bool,
) -> DataStats:
    """The training images' statistics: ``data_stats.json`` of the run, else measured now."""
    stats_file = run_dir / "data_stats.json"
    if stats_file.is_file():
        try:
            stats = DataStats(**json.loads(stats_file.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeError, wrong keys
            raise DataError(
                stats_file, f"damaged ({exc}); delete it to measure the training images again"
            ) from None
    else:  # before the run folder: unusable images (NaN pixels) are refused here
        stats = data_stats(dataset, list(train_stems), cfg, progress=progress)
        run_dir.mkdir(parents=True, exist_ok=True)
        if rank_zero:
            atomic_write_text(stats_file, json.dumps(stats.__dict__, indent=2))
    return stats


def configure_preprocessing(
    cfg: SegflowConfig, stats: DataStats
) -> tuple[Normalization, Preprocessor]:
    """The normalisation (from the statistics and the weights' origin) and the preprocessor."""
    from segflow.data.transforms import Preprocessor, resolve_normalization

    pretrained = cfg.model.encoder_weights is not None or cfg.model.init_from is not None
    normalization = resolve_normalization(
        cfg.data.preprocess,
        dtype=stats.dtype,
        channels=stats.channels,
        raw_mean=stats.raw_mean,
        raw_std=stats.raw_std,
        pretrained=pretrained,
    )
    preprocessor = Preprocessor(cfg.data.preprocess, stats.channels, normalization)
    return normalization, preprocessor


def configure_task(
    cfg: SegflowConfig,
    resolved: dict[str, Any],
    meta: DatasetMeta,
    task_kind: Literal["binary", "multiclass"],
    stats: DataStats,
    *,
    pretrained: bool,
) -> SegmentationTask:
    """The class weights (``auto``: from the pixel counts), the seed, and the LightningModule."""
    import lightning as L

    from segflow.train.losses import auto_class_weights, check_class_weights
    from segflow.train.task import SegmentationTask

    weights = cfg.loss.class_weights
    class_weights: list[float] | None
    if weights == "auto":
        class_weights = auto_class_weights(stats.class_pixels)
    elif isinstance(weights, list):
        class_weights = check_class_weights(weights, meta.num_classes)
    else:
        class_weights = None

    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    return SegmentationTask(
        resolved,
        meta.class_names,
        task_kind,
        stats.channels,
        class_weights=class_weights,
        ignore_index=meta.ignore_index,
        pretrained=pretrained,
    )


def configure_tracking(
    cfg: SegflowConfig,
    run_name: str,
    resolved: dict[str, Any],
    meta: DatasetMeta,
    stats: DataStats,
    task_kind: str,
    state: dict[str, Any] | None,
) -> Tracking | None:
    """The MLflow run (tags: version, dataset, fingerprint, task, git sha, fold); None if off."""
    from segflow.tracking import git_sha, start_tracking

    tags = {"segflow.version": __version__, "dataset": meta.name, "dataset.fingerprint": stats.digest(),
            "task": task_kind}  # fmt: skip
    sha = git_sha()
    if sha:
        tags["git.sha"] = sha
    if cfg.data.fold is not None:
        tags["fold"] = str(cfg.data.fold)
    return start_tracking(
        cfg.tracking,
        output=cfg.train.output,
        run_name=run_name,
        params=resolved,
        tags=tags,
        run_id=(state or {}).get("mlflow_run_id"),
    )


def bundle_meta_factory(
    cfg: SegflowConfig,
    run_name: str,
    resolved: dict[str, Any],
    meta: DatasetMeta,
    stats: DataStats,
    task: SegmentationTask,
    normalization: Normalization,
    task_kind: Literal["binary", "multiclass"],
) -> Callable[[dict[str, float]], Any]:
    """``make_meta(metrics) -> BundleMeta``: what every bundle of this run says about itself."""

    def make_meta(metrics: dict[str, float]) -> Any:
        from segflow.models.bundle import BundleMeta, InferenceSettings

        return BundleMeta(
            segflow_version=__version__,
            name=run_name,
            created_at=now_iso(),
            task=task_kind,
            classes=meta.classes,
            ignore_index=meta.ignore_index,
            arch=cfg.model.arch,
            encoder=cfg.model.encoder,
            model_kwargs=cfg.model.kwargs,
            in_channels=stats.channels,
            out_channels=task.out_channels,
            preprocess=cfg.data.preprocess.model_dump(mode="json"),
            normalization=normalization.model_dump(),
            input_dtype=stats.dtype,
            tile_size=cfg.data.tile_size,
            inference=InferenceSettings(tile_size=cfg.data.tile_size),
            threshold=task.threshold,
            weight_averaging=cfg.train.weight_averaging,
            metrics={
                k: v for k, v in metrics.items() if not (isinstance(v, float) and np.isnan(v))
            },
            config=resolved,
            dataset={
                "name": meta.name,
                "path": resolved["data"]["dataset"],
                "fingerprint": stats.digest(),
            },
        )

    return make_meta


def configure_callbacks(
    cfg: SegflowConfig,
    run_dir: Path,
    meta: DatasetMeta,
    normalization: Normalization,
    make_meta: Callable[[dict[str, float]], Any],
    sink: Callable[[Path, str | None], None] | None,
    *,
    has_val: bool,
    resumed: bool,
    extra_callbacks: Sequence[Any],
    progress: bool,
) -> list[Any]:
    """Checkpoints, the best bundle, history, overlays, LR monitor and the optional ones."""
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

    from segflow.train.callbacks import BestBundle, History, Overlays, epoch_progress_bar

    t = cfg.train
    callbacks: list[Any] = [
        # Resumable checkpoints by wall-clock time, not every epoch: on small datasets an epoch is
        # a handful of steps and saving model + optimiser state each time cost 75% of GPU
        # throughput (benchmarks/train_overhead.py, H100).
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="timed", save_top_k=1,
                        train_time_interval=_dt.timedelta(minutes=t.checkpoint_minutes),
                        enable_version_counter=False),
        BestBundle(run_dir / "best.segflow", make_meta, t.monitor if has_val else "train/loss_epoch",
                   t.monitor_mode if has_val else "min"),
        History(run_dir, sink),
        Overlays(run_dir, meta.classes, normalization.mean, normalization.std,
                 cfg.tracking.images_every, sink, cfg.data.preprocess.normalize == "image"),
        LearningRateMonitor(logging_interval="epoch"),
    ]  # fmt: skip
    from segflow.train.averaging import weight_averaging_callback

    averaging = weight_averaging_callback(t)
    if averaging is not None:  # validated, checkpointed and saved as the bundle
        callbacks.append(averaging)
    if t.early_stopping and has_val:
        callbacks.append(
            EarlyStopping(monitor=t.monitor, mode=t.monitor_mode, patience=t.early_stopping)
        )
    if t.checkpoint_every_steps:
        callbacks.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step", save_top_k=1,
                                         every_n_train_steps=t.checkpoint_every_steps,
                                         enable_version_counter=False))  # fmt: skip
    if t.max_minutes:  # a per-step schedule that keeps to the time limit on a slow machine
        from segflow.train.plan_cost import budget_schedule_callback

        callbacks.append(budget_schedule_callback())
    if resumed:  # the schedule follows this config's length, not the checkpoint's
        from segflow.train.resume import schedule_length_callback

        callbacks.append(schedule_length_callback())
    callbacks.extend(extra_callbacks)
    if progress:
        callbacks.append(epoch_progress_bar(t.monitor))
    return callbacks


def configure_trainer(
    cfg: SegflowConfig,
    run_dir: Path,
    callbacks: list[Any],
    tracking: Tracking | None,
    *,
    precision: str,
    has_val: bool,
    progress: bool,
) -> L.Trainer:
    """The Lightning Trainer: schedule, devices, precision, loggers (CSV per attempt, MLflow)."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    t = cfg.train
    attempt = len(list((run_dir / "logs").glob("attempt*"))) if (run_dir / "logs").is_dir() else 0
    loggers: list[Any] = [CSVLogger(run_dir, name="logs", version=f"attempt{attempt}")]
    if tracking is not None:
        loggers.append(tracking.logger)

    return L.Trainer(
        default_root_dir=run_dir,
        max_epochs=t.epochs,
        max_steps=t.max_steps,
        max_time=_dt.timedelta(minutes=t.max_minutes) if t.max_minutes else None,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=precision,  # type: ignore[arg-type]
        accumulate_grad_batches=t.grad_accumulation,
        gradient_clip_val=t.grad_clip or None,
        check_val_every_n_epoch=t.val_every,
        log_every_n_steps=t.log_every_steps,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches if has_val else 0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=loggers,
        enable_progress_bar=progress,
        enable_model_summary=False,
    )
