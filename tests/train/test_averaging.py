"""Weight averaging (EMA / SWA): the update rule, when SWA starts, and whole runs with MLflow on.

The runs check what the averaging promises: validation sees the averaged weights, the best
bundle IS the averaged network (and says so in bundle.yaml), every checkpoint carries both the
averaged and the raw weights, and a resumed run continues the same average.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch

from segflow.data.splits import make_splits
from segflow.models.bundle import load_bundle, read_bundle_meta
from segflow.train.averaging import (
    SegflowAveraging,
    ema_multi_avg_fn,
    find_averaging,
    warmed_decay,
)
from segflow.train.runner import TrainResult, train
from tests.fixtures.synthetic import make_dataset

TINY = Path(__file__).parents[1] / "fixtures" / "configs" / "tiny.yaml"


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k].to(a[k].dtype)) for k in a)


# -- the update rule ----------------------------------------------------------------------------


def test_ema_decay_is_warmed_up_then_capped() -> None:
    avg_fn = ema_multi_avg_fn(0.9)
    # after n updates the decay is min(0.9, (1 + n) / (10 + n)); integer buffers take the value
    for n, decay in ((1, 2 / 11), (5, 6 / 15), (80, 0.9), (1000, 0.9)):
        assert warmed_decay(0.9, n) == pytest.approx(decay)
        floats = [torch.tensor([1.0]), torch.tensor([2.0, 4.0])]
        avg_fn(floats, [torch.tensor([3.0]), torch.tensor([0.0, 4.0])], torch.tensor(n))
        assert floats[0].item() == pytest.approx(decay * 1.0 + (1 - decay) * 3.0, rel=1e-6)
        assert floats[1].tolist() == pytest.approx([decay * 2.0, 4.0], rel=1e-6)
        counters = [torch.tensor(7)]
        avg_fn(counters, [torch.tensor(9)], torch.tensor(n))
        assert counters[0].item() == 9


def test_swa_updates_only_in_the_last_part_of_the_run() -> None:
    cb = SegflowAveraging("swa", swa_start=0.75)
    cb._trainer = SimpleNamespace(estimated_stepping_batches=100, callbacks=[])  # type: ignore[assignment]
    assert not cb.should_update(step_idx=73)  # 74 of 100 steps done
    assert cb.should_update(step_idx=74)  # 75 done
    assert not cb.should_update(epoch_idx=3)  # per step only
    ema = SegflowAveraging("ema")
    ema._trainer = cb._trainer
    assert ema.should_update(step_idx=0)
    with pytest.raises(ValueError, match="ema or swa"):
        SegflowAveraging("polyak")


# -- whole runs (MLflow tracking on, as by default) -----------------------------------------------


class Probe(L.Callback):
    """Records, per validation, the weights validated, the averaged and the raw network."""

    def __init__(self) -> None:
        self.validated: dict[int, dict[str, torch.Tensor]] = {}
        self.averaged: dict[int, dict[str, torch.Tensor]] = {}
        self.raw: dict[int, dict[str, torch.Tensor]] = {}
        self.at_start: dict[str, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        averaging = find_averaging(trainer)
        assert averaging is not None and averaging.averaged_network() is not None
        self.at_start = {
            "averaged": _state(averaging.averaged_network()),  # type: ignore[arg-type]
            "raw": _state(pl_module.model),  # type: ignore[arg-type]
            "updates": averaging.updates(),
        }

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        self.validated.setdefault(trainer.current_epoch, _state(pl_module.model))

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        averaging = find_averaging(trainer)
        assert averaging is not None
        self.averaged[trainer.current_epoch] = _state(averaging.averaged_network())  # type: ignore[arg-type]
        self.raw[trainer.current_epoch] = _state(pl_module.model)


def _ckpt(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _network(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}


# Lightning warns that a resumed run's checkpoint folder is not empty: it is the run's own.
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_ema_run_validates_saves_and_resumes_the_averaged_weights(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", n=12, size=(64, 64), num_classes=3, seed=0)
    make_splits(ds, val=0.25, test=0.0, seed=0)
    common = [f"train.output={tmp_path / 'runs'}", "tracking.enabled=true", "data.batch_size=2"]
    probe = Probe()
    result = train(
        TINY,
        data=ds,
        name="ema",
        overrides=[*common, "train.epochs=2", "train.weight_averaging=ema", "train.ema_decay=0.9"],
        callbacks=[probe],
    )
    assert isinstance(result, TrainResult)
    assert read_bundle_meta(result.bundle).weight_averaging == "ema"
    for epoch in (0, 1):  # validation ran on the averaged weights, which differ from the raw ones
        assert _same(probe.validated[epoch], probe.averaged[epoch])
        assert not _same(probe.averaged[epoch], probe.raw[epoch])
    bundle = _state(load_bundle(result.bundle).model)  # the best epoch's average
    assert any(_same(bundle, probe.averaged[e]) for e in probe.averaged)
    assert not any(_same(bundle, probe.raw[e]) for e in probe.raw)
    # the checkpoint holds the average (state_dict) and the raw weights (current_model_state)
    ckpt = _ckpt(result.run_dir / "checkpoints" / "final.ckpt")
    assert {"current_model_state", "averaging_state"} <= ckpt.keys()
    assert _same(_network(ckpt["state_dict"]), probe.averaged[1])
    updates = int(ckpt["averaging_state"]["n_averaged"])
    assert updates == ckpt["global_step"] > 0
    # resume (tracking still on, as in the first attempt): the average and its update count come
    # back as they were saved.
    resumed_probe = Probe()
    more = ["train.epochs=3"]
    resumed = train(resume=result.run_dir, overrides=more, callbacks=[resumed_probe])
    assert isinstance(resumed, TrainResult)
    assert _same(resumed_probe.at_start["averaged"], _network(ckpt["state_dict"]))
    assert resumed_probe.at_start["updates"] == updates
    final = _ckpt(resumed.run_dir / "checkpoints" / "final.ckpt")
    assert int(final["averaging_state"]["n_averaged"]) == final["global_step"] > updates


def test_swa_run_averages_the_last_steps_only(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", n=12, size=(64, 64), num_classes=2, seed=1)
    make_splits(ds, val=0.25, test=0.0, seed=0)
    result = train(
        TINY,
        data=ds,
        name="swa",
        overrides=[
            f"train.output={tmp_path / 'runs'}",
            "tracking.enabled=true",
            "data.batch_size=2",
            "train.epochs=4",
            "train.weight_averaging=swa",
            "train.swa_start=0.5",
            "train.deep_supervision=1",  # the averaged copy of the task keeps its hooks apart
        ],
    )
    assert isinstance(result, TrainResult)
    ckpt = _ckpt(result.run_dir / "checkpoints" / "final.ckpt")
    steps = int(ckpt["global_step"])
    updates = int(ckpt["averaging_state"]["n_averaged"])
    # every step from the one that completes half the run on (the first one included)
    assert updates == steps - math.ceil(steps * 0.5) + 1 and 0 < updates < steps
    assert read_bundle_meta(result.bundle).weight_averaging == "swa"
    assert any(k.startswith("aux_heads.") for k in ckpt["state_dict"])  # averaged with the rest
    assert not any("aux" in k for k in load_bundle(result.bundle).model.state_dict())
