"""Hostile ``segflow train --resume``: damaged or tampered run folders and forbidden overrides.

One real 2-epoch run (MLflow tracking on, the default) is trained once; every case resumes a copy
of it after breaking one thing, and must exit 1 (data) or 2 (usage) with one line naming the
problem, no traceback, the run's files untouched and no training started. A control resume of an
intact copy must succeed and keep the earlier history rows.
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from segflow.data.splits import make_splits
from tests.conftest import run_cli
from tests.fixtures.synthetic import make_dataset

TINY = Path(__file__).parents[1] / "fixtures" / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-epoch run with MLflow on; cases copy it."""
    tmp = tmp_path_factory.mktemp("resume-base")
    root = make_dataset(tmp / "ds", n=8, size=(64, 64), num_classes=3)
    make_splits(root, val=0.25, test=0.0, seed=0)
    cfg = yaml.safe_load(TINY.read_text())
    cfg.pop("tracking")  # tracking on, as a user gets it
    config = tmp / "tracked.yaml"
    config.write_text(yaml.safe_dump(cfg))
    res = run_cli("train", config, "--data", root, "--name", "base",
                  "--set", f"train.output={tmp / 'runs'}", "--set", "train.epochs=2")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    run = tmp / "runs" / "base"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["final.ckpt"]
    return run


def _digest(run: Path) -> dict[str, str]:
    """Every file of the run (links as their target), to prove a refusal changed nothing."""
    out = {}
    for p in sorted(run.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(run))] = f"-> {p.readlink()}"
        elif p.is_file():
            out[str(p.relative_to(run))] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p.relative_to(run))] = "dir"
    return out


def _copy(base_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "case"
    shutil.copytree(base_run, run, symlinks=True)
    return run


def _state_dict(run: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run / "checkpoints" / "final.ckpt", weights_only=True)
    return dict(ckpt["state_dict"])


def _rewrite(run: Path, change: Callable[[dict], None]) -> None:
    path = run / "checkpoints" / "final.ckpt"
    ckpt = torch.load(path, weights_only=True)
    change(ckpt)
    torch.save(ckpt, path)


def _first_weight(ckpt: dict) -> str:
    return next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and v.ndim == 4)


class _Boom:
    """Unpickling this runs a shell command: a tampered checkpoint must never do so."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, (f"touch {self.marker}",))


def _ckpt(run: Path) -> Path:
    return run / "checkpoints" / "final.ckpt"


def _truncate(run: Path) -> None:
    data = _ckpt(run).read_bytes()
    _ckpt(run).write_bytes(data[: len(data) // 2])


def _zip_of_junk(run: Path) -> None:
    _ckpt(run).unlink()
    with zipfile.ZipFile(_ckpt(run), "w") as zf:
        zf.writestr("archive/data.pkl", b"not a pickle")


def _pickle_bomb(run: Path) -> None:
    torch.save({"state_dict": _Boom(run.parent / "PWNED")}, _ckpt(run))


def _wrong_shape(run: Path) -> None:
    def change(ckpt: dict) -> None:
        key = _first_weight(ckpt)
        ckpt["state_dict"][key] = torch.zeros(1, 1, 1, 1)

    _rewrite(run, change)


def _missing_tensor(run: Path) -> None:
    _rewrite(run, lambda c: c["state_dict"].pop(_first_weight(c)))


def _extra_tensor(run: Path) -> None:
    _rewrite(run, lambda c: c["state_dict"].update({"model.backdoor": torch.zeros(2)}))


def _nan_weights(run: Path) -> None:
    _rewrite(run, lambda c: c["state_dict"][_first_weight(c)].fill_(float("nan")))


def _not_tensors(run: Path) -> None:
    _rewrite(run, lambda c: c.update({"state_dict": {"model.x": [1, 2, 3]}}))


def _no_state(run: Path) -> None:
    _rewrite(run, lambda c: c.pop("state_dict"))


def _folder_ckpt(run: Path) -> None:
    _ckpt(run).unlink()
    _ckpt(run).mkdir()


def _dangling(run: Path) -> None:
    _ckpt(run).unlink()
    _ckpt(run).symlink_to(run / "nowhere.ckpt")


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    def apply(run: Path) -> None:
        (run / name).write_bytes(data)

    return apply


def _remove_dataset(run: Path) -> None:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["dataset"] = str(run.parent / "gone")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))


RANDOM = bytes(range(256)) * 64

FAULTS: list[tuple[str, Callable[[Path], None], int, str]] = [
    ("checkpoint truncated", _truncate, 1, "final.ckpt: not a usable checkpoint"),
    ("checkpoint empty", _write("checkpoints/final.ckpt", b""), 1, "final.ckpt"),
    (
        "checkpoint random bytes",
        _write("checkpoints/final.ckpt", RANDOM),
        1,
        "damaged or truncated",
    ),
    ("checkpoint zip of junk", _zip_of_junk, 1, "final.ckpt"),
    ("checkpoint pickle runs code", _pickle_bomb, 1, "refused to load it"),
    ("checkpoint plain tensor", lambda r: torch.save(torch.zeros(3), _ckpt(r)), 1, "no state_dict"),
    ("checkpoint without state_dict", _no_state, 1, "no state_dict"),
    ("checkpoint reshaped tensor", _wrong_shape, 1, "the network's is"),
    ("checkpoint missing tensor", _missing_tensor, 1, "missing model."),
    ("checkpoint extra tensor", _extra_tensor, 1, "unexpected model.backdoor"),
    ("checkpoint NaN weights", _nan_weights, 1, "NaN or infinite"),
    ("checkpoint values not tensors", _not_tensors, 1, "not a mapping of tensors"),
    ("checkpoint is a folder", _folder_ckpt, 1, "final.ckpt"),
    ("checkpoint dangling link", _dangling, 1, "final.ckpt"),
    ("run.json not JSON", _write("run.json", b"{not json"), 1, "run.json: cannot read"),
    ("run.json a list", _write("run.json", b"[1, 2]"), 1, "run.json: the run state is not"),
    ("run.json not UTF-8", _write("run.json", b'{"name": "\xff\xfe"}'), 1, "run.json"),
    ("config.yaml not YAML", _write("config.yaml", b"model: [unclosed"), 2, "config.yaml"),
    ("config.yaml a list", _write("config.yaml", b"- 1\n- 2\n"), 2, "config.yaml"),
    ("data_stats.json not JSON", _write("data_stats.json", b"\x00\x01"), 1, "data_stats.json"),
    (
        "data_stats.json wrong keys",
        _write("data_stats.json", b'{"evil": 1}'),
        1,
        "data_stats.json: damaged",
    ),
    ("dataset gone", _remove_dataset, 1, "dataset folder not found"),
]


@pytest.mark.parametrize(("fault", "code", "needle"), [f[1:] for f in FAULTS],
                         ids=[f[0] for f in FAULTS])  # fmt: skip
def test_damaged_run_is_refused_untouched(
    base_run: Path, tmp_path: Path, fault: Callable[[Path], None], code: int, needle: str
) -> None:
    run = _copy(base_run, tmp_path)
    fault(run)
    before = _digest(run)
    res = run_cli("train", "--resume", run)
    assert res.exit_code == code, (res.exit_code, res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    assert needle in lines[0] and "Traceback" not in res.stderr
    assert _digest(run) == before  # nothing rewritten, no attempt started
    assert not (run.parent / "PWNED").exists()


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["model.arch=FPN"], "model.arch: 'Unet' -> 'FPN' cannot change on --resume"),
        (["model.encoder=resnet34"], "model.encoder"),
        (["model.kwargs={decoder_channels: [8, 8, 8, 8, 8]}"], "model.kwargs"),
        (["train.epochs=1"], "below the 2 epoch(s) this run has already trained"),
        (["train.epochs=0"], "train.epochs"),
        (["schedule.warmup_epochs=5", "train.epochs=3"], "covers the whole run"),
        (["trian.epochs=3"], "did you mean train"),
        (["optimizer.name=sgd"], "optimizer.name: 'adamw' -> 'sgd' cannot change"),
        (["schedule.name=onecycle"], "schedule.name"),
    ],
    ids=[
        "arch",
        "encoder",
        "kwargs",
        "fewer-epochs",
        "zero-epochs",
        "warmup",
        "typo",
        "optimizer",
        "schedule",
    ],
)
def test_forbidden_resume_overrides(
    base_run: Path, tmp_path: Path, overrides: list[str], needle: str
) -> None:
    run = _copy(base_run, tmp_path)
    before = _digest(run)
    sets = [a for o in overrides for a in ("--set", o)]
    res = run_cli("train", "--resume", run, *sets)
    assert res.exit_code == 2, (res.exit_code, res.stderr[-2000:])
    assert res.stderr.startswith("error: ") and needle in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert _digest(run) == before


def test_not_a_run_folder(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("train: {epochs: 1}\n")
    res = run_cli("train", "--resume", tmp_path / "half")
    assert res.exit_code == 2 and "not a segflow run folder" in res.stderr


def test_control_intact_copy_resumes_with_more_epochs(base_run: Path, tmp_path: Path) -> None:
    run = _copy(base_run, tmp_path)
    rows = (run / "history.csv").read_text().splitlines()
    res = run_cli("train", "--resume", run, "--set", "train.epochs=3")
    assert res.exit_code == 0, res.stderr[-3000:]
    after = (run / "history.csv").read_text().splitlines()
    assert len(after) == len(rows) + 1 and after[1:3] == rows[1:3]  # epochs 0, 1 kept
    assert "resumed with train.epochs: 2 -> 3" in res.stderr
