"""On resume with more epochs, the restored schedule takes the new config's length.

A checkpoint restores a schedule's length with its state (the cosine/poly trajectory is plain
data; OneCycle keeps ``total_steps``). The callback puts back the length the new config gives,
so the rate continues from the restored step along the new schedule instead of sitting at the
floor (cosine) or raising past the old end (OneCycle).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from segflow.config import ScheduleConfig
from segflow.train.optim import build_scheduler
from segflow.train.resume import schedule_length_callback

STEPS = 10  # per epoch


def _schedule(name: str, epochs: int) -> tuple[torch.optim.Optimizer, object]:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cfg = ScheduleConfig(name=name, min_lr=1e-6)
    sched = build_scheduler(optimizer, cfg, steps_per_epoch=STEPS, epochs=epochs, peak_lr=1e-3)
    return optimizer, sched["scheduler"]


def _run(optimizer: torch.optim.Optimizer, sched: object, steps: int) -> None:
    for _ in range(steps):
        optimizer.step()
        sched.step()  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["cosine", "poly", "onecycle"])
def test_resume_with_more_epochs_follows_the_new_length(name: str) -> None:
    old_opt, old = _schedule(name, epochs=3)
    _run(old_opt, old, 3 * STEPS - 1)  # the 3-epoch run, to its last step
    state = old.state_dict()  # type: ignore[attr-defined]

    new_opt, new = _schedule(name, epochs=5)  # the resumed run's configure_optimizers
    reference_opt, reference = _schedule(name, epochs=5)  # what a 5-epoch run does
    _run(reference_opt, reference, 3 * STEPS - 1)
    trainer = SimpleNamespace(lr_scheduler_configs=[SimpleNamespace(scheduler=new)])
    callback = schedule_length_callback()
    callback.on_fit_start(trainer, None)  # fresh lengths, before Lightning restores
    new_opt.load_state_dict(old_opt.state_dict())
    new.load_state_dict(state)  # type: ignore[attr-defined]  (the restore)
    restored_lr = new_opt.param_groups[0]["lr"]
    callback.on_train_start(trainer, None)

    for _ in range(2 * STEPS):  # the two added epochs: no OneCycle "stepped too many times"
        assert math.isclose(
            new_opt.param_groups[0]["lr"], reference_opt.param_groups[0]["lr"], rel_tol=1e-9
        )
        _run(new_opt, new, 1)
        _run(reference_opt, reference, 1)
    if name != "onecycle":  # without the callback the rate would have stayed at the floor
        assert restored_lr == pytest.approx(1e-6, rel=1e-3)
        assert new_opt.param_groups[0]["lr"] == pytest.approx(1e-6, rel=1e-3)  # new end


def test_unchanged_length_is_left_as_restored() -> None:
    opt, sched = _schedule("cosine", epochs=3)
    _run(opt, sched, 12)
    lr = opt.param_groups[0]["lr"]
    trainer = SimpleNamespace(lr_scheduler_configs=[SimpleNamespace(scheduler=sched)])
    callback = schedule_length_callback()
    callback.on_fit_start(trainer, None)
    callback.on_train_start(trainer, None)
    assert opt.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-12)
