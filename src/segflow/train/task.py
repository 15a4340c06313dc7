"""The LightningModule: thin, one shared step for train/val/test, plots live in callbacks."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import lightning as L
import numpy as np
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from segflow.config import SegflowConfig
from segflow.evaluate.metrics import summary

if TYPE_CHECKING:
    from segflow.infer.predictor import Predictor
    from segflow.models.bundle import BundleMeta

log = logging.getLogger("segflow.train")

Task = Literal["binary", "multiclass"]
Stage = Literal["train", "val", "test"]


class SegmentationTask(L.LightningModule):
    """A segmentation model, its losses, metrics and optimiser, built from a SegflowConfig.

    Args:
        config: the resolved config as plain data (stored in the checkpoint's hyperparameters).
        class_names: class names in id order (class 0 is background).
        task: ``binary`` (one logit, sigmoid, threshold) or ``multiclass`` (softmax).
        in_channels: image channels fed to the network.
        class_weights: per-class loss weights, or None.
        ignore_index: mask value excluded from losses and metrics.
        pretrained: build the encoder with ``model.encoder_weights`` (False when restoring weights
            from a checkpoint or bundle anyway).
    """

    def __init__(
        self,
        config: dict[str, Any],
        class_names: list[str],
        task: Task,
        in_channels: int,
        class_weights: list[float] | None = None,
        ignore_index: int = 255,
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        # pretrained is how the network is built (False on resume), not a setting of the run
        self.save_hyperparameters(ignore=["pretrained"])
        self.cfg = SegflowConfig.model_validate(config)
        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        self.task: Task = task
        self.ignore_index = ignore_index
        self.threshold = 0.5
        #: The bundle this run will save (set by the runner): tiled validation predicts with it.
        self.inference_meta: Callable[[], BundleMeta] | None = None
        self._predictor: Predictor | None = None
        self.init_messages: list[str] = []
        self.configure_models(in_channels, pretrained)
        self.configure_deep_supervision()
        self.configure_losses(class_weights)
        self.configure_metrics()
        self.captured: list[dict[str, Any]] = []  # a few validation predictions for the callbacks
        self._train_parts: dict[str, torch.Tensor] = {}
        self._train_count = 0

    # -- configure_* hooks -------------------------------------------------------------------
    def configure_models(self, in_channels: int, pretrained: bool) -> None:
        """Build the SMP network (and fine-tune from an earlier bundle when asked)."""
        from segflow.models.factory import create_model
        from segflow.models.warm_start import init_from_bundle

        m = self.cfg.model
        self.out_channels = 1 if self.task == "binary" else self.num_classes
        self.model = create_model(
            m.arch,
            m.encoder,
            in_channels=in_channels,
            classes=self.out_channels,
            encoder_weights=m.encoder_weights if pretrained and m.init_from is None else None,
            **m.kwargs,
        )
        if pretrained and m.init_from is not None:
            self.init_messages = init_from_bundle(
                self.model, m.init_from, classes=self.out_channels
            )

    def configure_deep_supervision(self) -> None:
        """Auxiliary 1x1 heads on the last Unet decoder stages before the final one (training only).

        Forward hooks collect those stages' outputs in training mode; each head's logits are
        upsampled to the mask and scored by the same loss, with weights halving per stage away
        from the output (nnU-Net's scheme), normalised with the main term's 1. The heads live in
        the task, not in ``self.model``: the bundle and every export hold the plain network.
        """
        from segflow.errors import ConfigError

        n = self.cfg.train.deep_supervision
        self.aux_heads = torch.nn.ModuleList()
        self._aux_outputs: list[torch.Tensor] = []
        if not n:
            return
        blocks = getattr(getattr(self.model, "decoder", None), "blocks", None)
        if type(self.model).__name__ != "Unet" or not isinstance(blocks, torch.nn.ModuleList):
            raise ConfigError(
                f"train.deep_supervision={n} needs model.arch Unet (decoder stages with skip "
                f"connections), got {self.cfg.model.arch}; set train.deep_supervision=0"
            )
        if n >= len(blocks):
            raise ConfigError(
                f"train.deep_supervision={n}: this Unet decoder has {len(blocks)} stages, so at "
                f"most {len(blocks) - 1} can have auxiliary heads"
            )
        for block in list(blocks)[-1 - n : -1]:  # in forward order: coarsest first
            second = getattr(block, "conv2", block)
            conv = next(m for m in second.modules() if isinstance(m, torch.nn.Conv2d))
            self.aux_heads.append(torch.nn.Conv2d(conv.out_channels, self.out_channels, 1))
            block.register_forward_hook(self._tap_decoder_stage)

    def _tap_decoder_stage(self, module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
        if module.training:
            self._aux_outputs.append(output)

    def _deep_supervision(self, main: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``(main + sum_k 0.5^k aux_k) / (1 + sum_k 0.5^k)``, k = 1 for the finest aux stage."""
        outputs, self._aux_outputs = self._aux_outputs, []
        if len(outputs) != len(self.aux_heads):
            raise RuntimeError(
                f"deep supervision: {len(outputs)} decoder outputs for {len(self.aux_heads)} heads"
            )
        total, norm = main, 1.0
        pairs = list(zip(self.aux_heads, outputs, strict=True))[::-1]  # finest first
        for k, (head, features) in enumerate(pairs, start=1):
            logits = torch.nn.functional.interpolate(
                head(features), size=target.shape[-2:], mode="bilinear", align_corners=False
            )
            aux, _ = self.criterion(logits, target)
            total, norm = total + 0.5**k * aux, norm + 0.5**k
        return total / norm

    def configure_losses(self, class_weights: list[float] | None) -> None:
        """The weighted sum of losses from ``config.loss``."""
        from segflow.train.losses import build_loss

        self.criterion = build_loss(
            self.cfg.loss,
            task=self.task,
            num_classes=self.num_classes,
            ignore_index=self.ignore_index,
            class_weights=class_weights,
        )

    def configure_metrics(self) -> None:
        """One confusion matrix per evaluation stage (built once, cloned; synced across processes)."""
        # validate_args=False: its checks cost 0.8 s per Mpx on a CPU, more than a bf16 forward;
        # the data pipeline checks mask values once per image and predictions are class ids.
        base = MulticlassConfusionMatrix(
            self.num_classes, ignore_index=self.ignore_index, validate_args=False
        )
        self.confusion = torch.nn.ModuleDict({"val": base.clone(), "test": base.clone()})

    def configure_optimizers(self) -> Any:
        """Optimiser + schedule (stepped per batch, or per epoch for plateau)."""
        from segflow.train.optim import build_optimizer, build_scheduler

        optimizer = build_optimizer(self.parameters(), self.cfg.optimizer)
        epochs = max(self.trainer.max_epochs or self.cfg.train.epochs, 1)
        total = int(self.trainer.estimated_stepping_batches)
        # Round up: a schedule at least as long as the real step count (OneCycle refuses extra steps).
        steps_per_epoch = max(1, math.ceil(total / epochs))
        scheduler = build_scheduler(
            optimizer,
            self.cfg.schedule,
            steps_per_epoch=steps_per_epoch,
            epochs=epochs,
            peak_lr=self.cfg.optimizer.lr,
            monitor=self.cfg.train.monitor,
            monitor_mode=self.cfg.train.monitor_mode,
        )
        if scheduler.get("interval") == "epoch":
            scheduler["frequency"] = self.cfg.train.val_every  # plateau waits for a validated epoch
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    # -- forward and predictions ---------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``N x K x H x W`` (K = 1 for binary)."""
        if x.is_cuda and self.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out: torch.Tensor = self.model(x)
        return out

    def labels(self, logits: torch.Tensor) -> torch.Tensor:
        """Class ids from logits (threshold for binary, argmax for multiclass)."""
        if self.task == "binary":
            return (torch.sigmoid(logits[:, 0]) > self.threshold).long()
        return logits.argmax(dim=1)

    def _evaluate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Validation/test logits and class ids of a batch.

        Images no larger than ``data.val_tile_threshold`` go through the network whole, a batch
        at a time (the planner's speed setting). Larger ones are tiled, blended and thresholded
        by the Predictor, the code ``segflow predict`` and ``segflow eval`` run with the bundle
        this run saves; their loss is taken on the blended probabilities (as logits: logit or
        log of them), since blended logits are not what prediction thresholds.
        """
        if max(x.shape[-2:]) <= self.cfg.data.val_tile_threshold:
            whole: torch.Tensor = self(x)
            return whole, self.labels(whole)
        predictor = self.predictor()
        probs = np.stack([predictor.network_probabilities(img) for img in x.float().cpu().numpy()])
        labels = np.stack([predictor.labels_from_probs(p) for p in probs])
        p = torch.from_numpy(probs).to(x.device)
        logits = torch.logit(p, eps=1e-6) if self.task == "binary" else p.clamp_min(1e-12).log()
        return logits, torch.from_numpy(labels).to(x.device).long()

    def predictor(self) -> Predictor:
        """The Predictor over this network with the settings of the bundle the run will save."""
        if self._predictor is None:
            from segflow.infer.predictor import Predictor

            if self.inference_meta is None:
                raise RuntimeError(
                    "SegmentationTask.inference_meta is not set (the runner sets it)"
                )
            self._predictor = Predictor.for_network(_LiveNetwork(self), self.inference_meta())
        return self._predictor

    # -- steps ---------------------------------------------------------------------------------
    def _shared_step(self, batch: dict[str, Any], stage: Stage) -> torch.Tensor:
        x, y = batch["image"], batch["mask"]
        self._aux_outputs = []
        preds: torch.Tensor | None = None
        if stage == "train":
            logits = self(x)
        else:
            logits, preds = self._evaluate(x)
        loss: torch.Tensor
        loss, parts = self.criterion(logits, y)
        if stage == "train" and len(self.aux_heads):
            loss = self._deep_supervision(loss, y)
        on_step = stage == "train"
        n = x.shape[0]
        self.log(
            f"{stage}/loss",
            loss,
            on_step=on_step,
            on_epoch=True,
            batch_size=n,
            sync_dist=not on_step,
        )
        if stage == "train":
            # Component losses are summed locally and logged once per epoch: one self.log per
            # step instead of one per term (each costs ~0.5 ms of Python on a GPU step).
            for name, value in parts.items():
                total = self._train_parts.get(name)
                self._train_parts[name] = (
                    value.detach() * n if total is None else total + value.detach() * n
                )
            self._train_count += n
        else:
            for name, value in parts.items():
                self.log(f"{stage}/loss_{name}", value, on_epoch=True, batch_size=n, sync_dist=True)
        if preds is not None:
            self._confusion(stage).update(preds, y)
            if stage == "val" and len(self.captured) < self.cfg.tracking.num_images:
                for i in range(min(n, self.cfg.tracking.num_images - len(self.captured))):
                    self.captured.append(
                        {
                            "image": x[i].detach().cpu(),
                            "mask": y[i].detach().cpu(),
                            "pred": preds[i].detach().cpu(),
                        }
                    )
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """One optimisation step."""
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Loss and confusion matrix on validation images."""
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Loss and confusion matrix on test images."""
        self._shared_step(batch, "test")

    def on_train_epoch_start(self) -> None:
        """Reset the running sums of the training loss terms."""
        self._train_parts = {}
        self._train_count = 0

    def on_train_epoch_end(self) -> None:
        """Log the epoch means of the training loss terms."""
        for name, total in self._train_parts.items():
            self.log(f"train/loss_{name}", total / max(self._train_count, 1), sync_dist=True)

    def on_fit_start(self) -> None:
        """Channels-last weights on GPU (the inputs follow in ``forward``)."""
        if self.device.type == "cuda" and self.cfg.train.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def on_validation_epoch_start(self) -> None:
        """Start a fresh capture of validation predictions."""
        self.captured = []

    def on_validation_epoch_end(self) -> None:
        """Log mIoU, mDice, per-class IoU/Dice from the epoch's confusion matrix."""
        self._log_confusion("val")

    def on_test_epoch_end(self) -> None:
        """Same as validation, on the test split."""
        self._log_confusion("test")

    def _confusion(self, stage: Stage) -> MulticlassConfusionMatrix:
        metric = self.confusion[stage]
        if not isinstance(metric, MulticlassConfusionMatrix):  # pragma: no cover - built above
            raise TypeError(f"no confusion matrix for {stage}")
        return metric

    def _log_confusion(self, stage: Stage) -> None:
        metric = self._confusion(stage)
        cm = metric.compute().detach().cpu().numpy().astype(np.int64)
        metric.reset()
        values = summary(cm, self.class_names, prefix=f"{stage}/")
        # NaN (class absent from truth and prediction) is logged as such; the monitor uses the mean.
        self.log_dict({k: float(v) for k, v in values.items()}, sync_dist=False)


class _LiveNetwork:
    """The network being trained as a Predictor backend: numpy tiles in, float32 logits out."""

    name = "torch"

    def __init__(self, task: SegmentationTask) -> None:
        self.task = task

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Logits for the batch, under whatever autocast the caller (Lightning) runs."""
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.task.device)
        with torch.no_grad():
            out: np.ndarray = self.task(x).float().cpu().numpy()
        return out
