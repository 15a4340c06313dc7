"""Training callbacks: the best bundle, metric history and curves, prediction overlays.

Everything that writes files runs on global rank 0 only.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch

from segflow._io import atomic_write_text

if TYPE_CHECKING:
    from segflow.models.bundle import BundleMeta
    from segflow.train.task import SegmentationTask

log = logging.getLogger("segflow.train")

#: Curves are redrawn at most this often during training (and always at the end): matplotlib
#: takes ~0.2 s, which is many GPU steps on a small dataset whose epochs are a few steps long.
PLOT_EVERY_SECONDS = 30.0

ArtifactSink = Callable[[Path, str | None], None]  # (local path, artifact folder) -> None


def _metrics(trainer: L.Trainer) -> dict[str, float]:
    out = {}
    for key, value in trainer.callback_metrics.items():
        v = float(value.item() if isinstance(value, torch.Tensor) else value)
        out[key] = v
    return out


class BestBundle(L.Callback):
    """Writes ``best.segflow`` whenever the monitored metric improves (atomically).

    The best model thus survives a killed run. When nothing was validated, the bundle holds the
    last weights.

    Args:
        path: the bundle folder (``.../best.segflow``).
        make_meta: builds the BundleMeta from the current metrics.
        monitor: metric key, e.g. ``val/mIoU``.
        mode: ``max`` or ``min``.
    """

    def __init__(
        self,
        path: Path,
        make_meta: Callable[[dict[str, float]], BundleMeta],
        monitor: str,
        mode: str,
    ) -> None:
        self.path = path
        self.make_meta = make_meta
        self.monitor = monitor
        self.mode = mode
        self.best: float | None = None
        self.best_epoch = -1

    def _better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def _save(
        self, trainer: L.Trainer, pl_module: L.LightningModule, metrics: dict[str, float]
    ) -> None:
        from segflow.models.bundle import save_bundle
        from segflow.train.averaging import find_averaging

        task: SegmentationTask = pl_module  # type: ignore[assignment]
        network = task.model
        averaging = find_averaging(trainer)
        if averaging is not None:  # the averaged weights were validated: they are the bundle
            network = averaging.averaged_network() or network
        save_bundle(self.path, network, self.make_meta(metrics))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save the bundle when the monitored metric improved."""
        if trainer.sanity_checking:
            return
        metrics = _metrics(trainer)
        if self.monitor not in metrics:
            raise KeyError(
                f"train.monitor {self.monitor!r} is not a logged metric; logged: {', '.join(sorted(metrics))}"
            )
        value = metrics[self.monitor]
        if self._better(value):
            self.best, self.best_epoch = value, trainer.current_epoch
            if trainer.is_global_zero:
                self._save(trainer, pl_module, metrics)
                log.info(
                    "epoch %d: %s = %.4f, saved %s",
                    trainer.current_epoch,
                    self.monitor,
                    value,
                    self.path,
                )

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Without any validation, the bundle holds the final weights."""
        if trainer.is_global_zero and not (self.path / "bundle.yaml").is_file():
            self._save(trainer, pl_module, _metrics(trainer))

    def state_dict(self) -> dict[str, Any]:
        """Best score so far (restored on resume)."""
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the best score after a resume."""
        self.best = state_dict.get("best")
        self.best_epoch = int(state_dict.get("best_epoch", -1))


class History(L.Callback):
    """Per-epoch metrics in ``history.csv`` and loss/metric curves in ``curves.png``.

    Args:
        run_dir: the run folder.
        sink: optional function publishing a file as an artefact (MLflow).
    """

    def __init__(self, run_dir: Path, sink: ArtifactSink | None = None) -> None:
        self.run_dir = run_dir
        self.sink = sink
        self.rows: list[dict[str, float]] = []
        self._plotted = -math.inf

    # An epoch is recorded when the next one starts (or training ends): callbacks' epoch-end hooks
    # run before the module's, which logs the epoch means of the training loss terms.
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Record the epoch that just finished."""
        if trainer.current_epoch > 0:
            self._record(trainer, trainer.current_epoch - 1)

    def _record(self, trainer: L.Trainer, epoch: int) -> None:
        if not trainer.is_global_zero or any(r["epoch"] == epoch for r in self.rows):
            return
        row = {"epoch": float(epoch), "step": float(trainer.global_step)}
        row.update({k: v for k, v in _metrics(trainer).items() if not k.endswith("_step")})
        lrs = [g["lr"] for opt in trainer.optimizers for g in opt.param_groups]
        if lrs:
            row["lr"] = float(lrs[0])
        self.rows.append(row)
        self._write(plot=time.monotonic() - self._plotted > PLOT_EVERY_SECONDS)

    def _write(self, plot: bool) -> None:
        keys = sorted(
            {k for r in self.rows for k in r}, key=lambda k: (k not in ("epoch", "step"), k)
        )
        lines = [",".join(keys)] + [
            ",".join("" if k not in r else f"{r[k]:.6g}" for k in keys) for r in self.rows
        ]
        atomic_write_text(self.run_dir / "history.csv", "\n".join(lines) + "\n")
        if plot:
            from segflow.report.curves import plot_curves

            plot_curves(self.rows, self.run_dir / "curves.png")
            self._plotted = time.monotonic()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Record the last epoch, draw the final curves and publish them with the history."""
        if trainer.current_epoch > 0:
            self._record(trainer, trainer.current_epoch - 1)
        if not trainer.is_global_zero or not self.rows:
            return
        self._write(plot=True)
        if self.sink is not None:
            self.sink(self.run_dir / "curves.png", None)
            self.sink(self.run_dir / "history.csv", None)

    def state_dict(self) -> dict[str, Any]:
        """The rows so far (a resumed run keeps its curves)."""
        return {"rows": json.dumps(self.rows)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the rows."""
        self.rows = json.loads(state_dict.get("rows", "[]"))


class Overlays(L.Callback):
    """Every ``every`` epochs, a sheet of validation images: image | truth | prediction overlays.

    Args:
        run_dir: the run folder (sheets go to ``images/``).
        classes: the dataset's classes (colours).
        mean: normalisation mean (to show the image as it was).
        std: normalisation std.
        every: epochs between sheets.
        sink: optional artefact publisher.
        stretch: show each image on its own min..max (images standardised per image, whose
            values are not on the 0..1 scale).
    """

    def __init__(
        self,
        run_dir: Path,
        classes: list[Any],
        mean: list[float],
        std: list[float],
        every: int,
        sink: ArtifactSink | None = None,
        stretch: bool = False,
    ) -> None:
        self.stretch = stretch
        self.dir = run_dir / "images"
        self.classes = classes
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.every = every
        self.sink = sink

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Draw the sheet for this epoch when due."""
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if (
            trainer.sanity_checking
            or not trainer.is_global_zero
            or not (epoch % self.every == 0 or last)
        ):
            return
        captured = getattr(pl_module, "captured", [])
        if not captured:
            return
        from segflow.data.visual import encode_jpeg, overlay

        rows = []
        for item in captured:
            image = item["image"].numpy().transpose(1, 2, 0) * self.std + self.mean
            if self.stretch:
                image = (image - image.min()) / max(float(image.max() - image.min()), 1e-6)
            image = np.clip(image * 255.0, 0, 255).astype(np.uint8)
            if image.shape[2] not in (1, 3):
                image = image[:, :, :3] if image.shape[2] > 3 else image[:, :, :1]
            truth = item["mask"].numpy().astype(np.uint8)
            pred = item["pred"].numpy().astype(np.uint8)
            h = min(image.shape[0], 256)
            scale = h / image.shape[0]
            panels = [overlay(image, truth, self.classes), overlay(image, pred, self.classes)]
            import cv2

            size = (max(1, round(image.shape[1] * scale)), h)
            row = [
                cv2.resize(
                    overlay(image, np.zeros_like(truth), self.classes),
                    size,
                    interpolation=cv2.INTER_AREA,
                )
            ]
            row += [cv2.resize(p, size, interpolation=cv2.INTER_NEAREST) for p in panels]
            rows.append(np.concatenate(row, axis=1))
        width = max(r.shape[1] for r in rows)
        sheet = np.concatenate(
            [
                np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255)
                for r in rows
            ]
        )
        self.dir.mkdir(exist_ok=True)
        out = self.dir / f"epoch_{epoch:03d}.jpg"
        out.write_bytes(encode_jpeg(sheet))
        if self.sink is not None:
            self.sink(out, "images")


def epoch_progress_bar(monitor: str) -> L.Callback:
    """A rich progress bar that shows epoch-level metrics only.

    Lightning's bar reads every logged value each step with ``.item()``, a host-device sync per
    step that cost ~17% of GPU throughput in benchmarks/train_overhead.py; this one refreshes its
    numbers once per epoch, when they are final anyway.
    """
    from lightning.pytorch.callbacks import RichProgressBar

    class EpochMetricsBar(RichProgressBar):
        def __init__(self) -> None:
            super().__init__(leave=True)
            self._shown: dict[str, float] = {}

        def _refresh(self, trainer: L.Trainer) -> None:
            keep = ("train/loss_epoch", "val/loss", "val/mIoU", "val/mDice", monitor)
            metrics = _metrics(trainer)
            self._shown = {
                k.replace("_epoch", ""): round(v, 4) for k, v in metrics.items() if k in keep
            }

        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self._refresh(trainer)
            super().on_train_epoch_start(trainer, pl_module)

        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self._refresh(trainer)
            super().on_validation_end(trainer, pl_module)

        def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
            return dict(self._shown)

    return EpochMetricsBar()


def write_rows_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write dict rows as CSV (header = union of keys, first-seen order)."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
