"""What ``segflow train --resume RUN`` checks before it continues a run.

A resumed run must be the run it was: the same network (``model.*`` may not change), the same
kinds of optimiser and schedule (their saved states fit no other), no fewer epochs than it has
trained, and a checkpoint that is a Lightning checkpoint of that network. A
damaged or tampered checkpoint (truncated by a kill mid-write, random bytes, a pickle that asks
for code) is refused with one line naming the file, before any file of the run is touched.
Checkpoints are read with ``torch.load(weights_only=True)``: no code from the file runs.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from segflow.errors import ConfigError, DataError

#: Keys every Lightning training checkpoint has.
CHECKPOINT_KEYS = ("state_dict", "epoch", "global_step", "loops", "callbacks", "optimizer_states")


def read_state(run_dir: Path) -> dict[str, Any]:
    """``run.json`` as a dict, or a DataError naming it."""
    path = run_dir / "run.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"cannot read the run state ({_reason(exc)})") from None
    if not isinstance(state, dict):
        raise DataError(path, "the run state is not a JSON object; the run folder is damaged")
    return state


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _refused(path: Path, why: str) -> DataError:
    others = sorted(p.name for p in path.parent.glob("*.ckpt") if p != path)
    hint = (
        f"delete it to resume from {', '.join(others)}"
        if others
        else "delete it to start the run again from the beginning"
    )
    return DataError(path, f"not a usable checkpoint of this run ({why}); {hint}")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's contents, read memory-mapped with ``weights_only=True``.

    Raises:
        DataError: unreadable, truncated, not a Lightning checkpoint, or asking to run code.
    """
    import pickle
    import zipfile

    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a global: tampered
        raise _refused(path, f"refused to load it: {_reason(exc)}") from None
    except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise _refused(path, f"damaged or truncated: {_reason(exc)}") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        raise _refused(path, f"no {', '.join(missing)}")
    if not isinstance(ckpt["state_dict"], dict) or not all(
        isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values()
    ):
        raise _refused(path, "its state_dict is not a mapping of tensors")
    return ckpt


def check_weights(path: Path, ckpt: dict[str, Any], expected: dict[str, Any]) -> None:
    """The checkpoint's tensors are the network's: same names, same shapes, finite.

    Raises:
        DataError: a missing, extra or reshaped tensor, or NaN/inf weights.
    """
    import torch

    weights: dict[str, torch.Tensor] = ckpt["state_dict"]
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        count = len(missing) + len(extra)
        raise _refused(path, f"{what}{f' and {count - 1} more' if count > 1 else ''}")
    for key, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            shape = "x".join(map(str, tensor.shape))
            want = "x".join(map(str, expected[key].shape))
            raise _refused(path, f"{key} is {shape}, the network's is {want}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise _refused(path, f"{key} holds NaN or infinite values")


def check_changes(saved: dict[str, Any], new: dict[str, Any], trained_epochs: int) -> None:
    """Overrides a resume may not make: another network, optimiser or schedule, fewer epochs.

    Args:
        saved: the run's ``config.yaml`` as saved.
        new: the config with this resume's ``--set`` values.
        trained_epochs: epochs the checkpoint has completed.

    Raises:
        ConfigError: ``model.*``, ``optimizer.name`` or ``schedule.name`` changed, or
            ``train.epochs`` below ``trained_epochs``.
    """
    fixed = [("model", k) for k in sorted(set(saved.get("model", {})) | set(new.get("model", {})))]
    fixed += [("optimizer", "name"), ("schedule", "name")]  # their saved states fit no other
    for section, key in fixed:
        before, after = saved.get(section, {}).get(key), new.get(section, {}).get(key)
        if before != after:
            raise ConfigError(
                f"{section}.{key}: {before!r} -> {after!r} cannot change on --resume (the "
                f"checkpoint holds the state of the other {section}); start a new run, e.g. "
                "with --set model.init_from=RUN/best.segflow"
            )
    epochs = int(new.get("train", {}).get("epochs", 0))
    if epochs < trained_epochs:
        raise ConfigError(
            f"train.epochs={epochs} is below the {trained_epochs} epoch(s) this run has already "
            f"trained; use --set train.epochs={trained_epochs + 1} or more to continue it"
        )


def schedule_length_callback() -> Any:
    """A callback that keeps the learning-rate schedule to the config's length on resume.

    A checkpoint restores the schedule's state, its length included (the per-step trajectory is
    plain data saved with it; OneCycle keeps ``total_steps``). Resumed with another
    ``train.epochs``, the old length would hold the rate at its floor for the added epochs
    (or make OneCycle raise): after the restore, this puts back the length the current config
    gives, so the rate continues from the restored step along the new schedule.
    """
    import lightning as L
    from torch.optim.lr_scheduler import LambdaLR, OneCycleLR

    def lengths(trainer: L.Trainer) -> list[list[dict[str, Any]]]:
        out: list[list[dict[str, Any]]] = []
        for config in trainer.lr_scheduler_configs:
            sched = config.scheduler
            if isinstance(sched, LambdaLR):
                out.append([dict(vars(fn)) for fn in sched.lr_lambdas if hasattr(fn, "total")])
            elif isinstance(sched, OneCycleLR):
                keys = ("total_steps", "_schedule_phases")
                out.append([{k: getattr(sched, k) for k in keys}])
            else:
                out.append([])
        return out

    class ScheduleLength(L.Callback):
        def __init__(self) -> None:
            self.fresh: list[list[dict[str, Any]]] = []

        def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.fresh = lengths(trainer)  # built from the config, before the restore

        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            for config, fresh in zip(trainer.lr_scheduler_configs, self.fresh, strict=False):
                sched = config.scheduler
                if isinstance(sched, LambdaLR):
                    parts = [fn for fn in sched.lr_lambdas if hasattr(fn, "total")]
                    for fn, values in zip(parts, fresh, strict=False):
                        vars(fn).update(values)
                elif isinstance(sched, OneCycleLR) and fresh:
                    for key, value in fresh[0].items():
                        setattr(sched, key, value)
                else:
                    continue
                with warnings.catch_warnings():  # get_lr outside step() warns; intended here
                    warnings.simplefilter("ignore", UserWarning)
                    rates = sched.get_lr()
                for group, rate in zip(sched.optimizer.param_groups, rates, strict=False):
                    group["lr"] = float(rate)  # the next step's rate, not the restored one
                sched._last_lr = [float(group["lr"]) for group in sched.optimizer.param_groups]

    return ScheduleLength()
