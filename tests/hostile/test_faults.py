"""Faults around the real ``segflow`` process: read-only mounts, a file-size limit, unreadable
files, SIGTERM / SIGKILL mid-write, and the error boundary's debug switch and bug path.

Subprocesses only where the fault needs one; each group has a control that must succeed.
Read-only folders are a private mount namespace (``unshare --mount`` + a read-only bind mount) and
unreadable files are read by a root process without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (what
any other user sees; ``nobody`` cannot reach this machine's Python under /root): both skip with
the reason where they are not permitted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segflow.errors import DataError
from tests.conftest import run_cli
from tests.fixtures.synthetic import make_dataset
from tests.hostile._corpus import error_line, masks_src, snapshot

SEGFLOW = Path(sys.executable).parent / "segflow"
NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def _segflow(
    args: Sequence[str | Path],
    *,
    wrap: Sequence[str] = (),
    preexec: Callable[[], None] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    cmd = [*wrap, str(SEGFLOW), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, preexec_fn=preexec, timeout=timeout)


def _refused(res: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    assert res.returncode == code, (res.returncode, res.stderr)
    line = error_line(res.stderr)
    for needle in needles:
        assert needle in line, (needle, line)


def _can(cmd: list[str]) -> str | None:
    """None when ``cmd`` works here, else why it does not."""
    if shutil.which(cmd[0]) is None:
        return f"{cmd[0]} not installed"
    res = subprocess.run(cmd, capture_output=True, text=True)
    return None if res.returncode == 0 else f"{' '.join(cmd[:2])}: {res.stderr.strip()[:80]}"


def _readonly(folder: Path) -> list[str]:
    """Wrap a command so that ``folder`` is read-only for it alone (private mount namespace)."""
    why = _can(["unshare", "--mount", "--propagation", "private", "true"])
    if why is not None:
        pytest.skip(f"no private mount namespace here ({why})")
    script = f'mount --bind -o ro "{folder}" "{folder}" && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


def _no_dac() -> list[str]:
    if os.geteuid() != 0:
        return []  # an ordinary user already cannot read a mode-000 file
    why = _can([*NO_DAC, "true"])
    if why is not None:
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE here ({why})")
    return NO_DAC


def _ds(tmp: Path, n: int = 3) -> Path:
    return make_dataset(tmp / "ds", n=n, size=(24, 32))


# ------------------------------------------------------------------------------------------------
# Read-only output folders


READONLY_CASES: dict[str, Callable[[Path, Path], list[str | Path]]] = {
    "import": lambda t, ro: ["import", "masks", masks_src(t), ro / "ds"],
    "export_coco": lambda t, ro: ["export", "coco", _ds(t), ro / "x.json"],
    "plan_out": lambda t, ro: ["plan", _ds(t), "--out", ro / "c.yaml", "--timing", "table"],
    "check_report": lambda t, ro: ["check", _ds(t), "--report", ro / "r.html"],
}


@pytest.mark.parametrize("name", sorted(READONLY_CASES))
def test_readonly_output_folder(name: str, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    args = READONLY_CASES[name](tmp_path, ro)
    before = snapshot(tmp_path)
    res = _segflow(args, wrap=_readonly(ro))
    _refused(res, 1, str(ro), "read-only file system")
    after = snapshot(tmp_path)
    assert after == before or name == "check_report", set(after) ^ set(before)
    assert not list(ro.iterdir())


def test_readonly_control_writes_elsewhere(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    res = _segflow(["import", "masks", masks_src(tmp_path), tmp_path / "ds"], wrap=_readonly(ro))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "ds" / "dataset.yaml").is_file()


# ------------------------------------------------------------------------------------------------
# A file-size limit (RLIMIT_FSIZE): writes past it fail with EFBIG (Python ignores SIGXFSZ)


def _limit(nbytes: int) -> Callable[[], None]:
    def preexec() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return preexec


def _noisy_src(tmp: Path, n: int = 3, side: int = 160) -> Path:
    src = masks_src(tmp, n)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(
            src / "images" / f"a{i}.png"
        )
        Image.fromarray(np.zeros((side, side), np.uint8)).save(src / "masks" / f"a{i}.png")
    return src


def test_file_size_limit_import(tmp_path: Path) -> None:
    src = _noisy_src(tmp_path)
    before = snapshot(tmp_path)
    res = _segflow(
        ["import", "masks", src, tmp_path / "ds", "--workers", "1"], preexec=_limit(20_000)
    )
    _refused(res, 1, "a0.png", "file too large")
    assert snapshot(tmp_path) == before


def test_file_size_limit_check_report(tmp_path: Path) -> None:
    root = _ds(tmp_path)
    res = _segflow(["check", root, "--report", tmp_path / "r.html"], preexec=_limit(4_000))
    _refused(res, 1, "file too large")
    assert not (tmp_path / "r.html").exists()
    assert not list(tmp_path.rglob(".*tmp"))


def test_file_size_limit_control(tmp_path: Path) -> None:
    res = _segflow(
        ["import", "masks", _noisy_src(tmp_path), tmp_path / "ds"], preexec=_limit(10**7)
    )
    assert res.returncode == 0, res.stderr


# ------------------------------------------------------------------------------------------------
# Unreadable files (what another user sees)


def test_unreadable_dataset_yaml(tmp_path: Path) -> None:
    root = _ds(tmp_path)
    (root / "dataset.yaml").chmod(0)
    before = snapshot(tmp_path)
    res = _segflow(["check", root], wrap=_no_dac())
    _refused(res, 1, "dataset.yaml", "permission denied")
    assert snapshot(tmp_path) == before


def test_unreadable_image_in_import(tmp_path: Path) -> None:
    src = masks_src(tmp_path)
    (src / "images" / "a1.png").chmod(0)
    res = _segflow(["import", "masks", src, tmp_path / "ds"], wrap=_no_dac())
    _refused(res, 1, "a1.png", "permission denied")
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds.tmp-*"))


def test_unreadable_bundle_yaml(tmp_path: Path) -> None:
    bundle = tmp_path / "m.segflow"
    bundle.mkdir()
    (bundle / "bundle.yaml").write_text("name: m\n")
    (bundle / "bundle.yaml").chmod(0)
    img = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(img)
    res = _segflow(["predict", bundle, img, "--out", tmp_path / "out"], wrap=_no_dac())
    _refused(res, 1, "bundle.yaml", "permission denied")
    assert not (tmp_path / "out").exists()


def test_unwritable_dataset_folder_for_check(tmp_path: Path) -> None:
    root = _ds(tmp_path)
    root.chmod(0o555)
    try:
        res = _segflow(["check", root], wrap=_no_dac())
    finally:
        root.chmod(0o755)
    _refused(res, 1, "permission denied")


def test_unreadable_control(tmp_path: Path) -> None:
    res = _segflow(["check", _ds(tmp_path)], wrap=_no_dac())
    assert res.returncode == 0, res.stderr


# ------------------------------------------------------------------------------------------------
# Kills mid-write


def _slow_import(tmp: Path) -> tuple[subprocess.Popen[str], Path]:
    src = _noisy_src(tmp, n=150, side=96)
    out = tmp / "ds"
    proc = subprocess.Popen(
        [str(SEGFLOW), "import", "masks", str(src), str(out), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not list(tmp.glob(".ds.tmp-*")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.05)  # some samples written
    return proc, out


def test_sigterm_mid_import_leaves_nothing(tmp_path: Path) -> None:
    proc, out = _slow_import(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and error_line(stderr) == "error: terminated"
    assert not out.exists() and not list(tmp_path.glob(".ds.tmp-*"))


def test_sigkill_mid_import_is_swept_by_the_next_run(tmp_path: Path) -> None:
    proc, out = _slow_import(tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    [stale] = list(tmp_path.glob(".ds.tmp-*"))  # kill -9 cannot clean up
    src = tmp_path / "src"
    small = tmp_path / "small"
    for sub in ("images", "masks"):
        (small / sub).mkdir(parents=True)
        shutil.copy(src / sub / "a0.png", small / sub / "a0.png")
    res = run_cli("import", "masks", small, out)
    assert res.exit_code == 0, res.stderr
    assert f"removed {stale}, left by an interrupted segflow run" in res.stderr
    assert not stale.exists() and (out / "dataset.yaml").is_file()


def test_sweep_keeps_live_and_foreign_temp_files(tmp_path: Path) -> None:
    """Only ``<prefix><pid>-<hex><suffix>`` names of dead processes go (export's names here)."""
    from segflow._tempfiles import sweep_stale
    from segflow.export.onnx import ONNX_FILE

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".{ONNX_FILE}.{dead.pid}-0123abcd.tmp"
    live = tmp_path / f".{ONNX_FILE}.{os.getpid()}-0123abcd.tmp"
    foreign = tmp_path / f".{ONNX_FILE}.notours.tmp"
    for p in (stale, live, foreign):
        p.write_bytes(b"x" * 100)
    assert sweep_stale(tmp_path, f".{ONNX_FILE}.", ".tmp") == [stale]
    assert not stale.exists() and live.exists() and foreign.exists()


# ------------------------------------------------------------------------------------------------
# The error boundary itself


def test_debug_flag_and_env_show_the_traceback(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SEGFLOW_DEBUG", "0")  # records the outer value: restored afterwards
    (tmp_path / "ds" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"dataset\.yaml"):
        run_cli("--debug", "check", tmp_path / "ds")
    monkeypatch.setenv("SEGFLOW_DEBUG", "1")
    with pytest.raises(DataError):
        run_cli("check", tmp_path / "ds")
    monkeypatch.setenv("SEGFLOW_DEBUG", "0")
    assert run_cli("check", tmp_path / "ds").exit_code == 1


def test_a_real_bug_keeps_its_traceback(tmp_path: Path, monkeypatch) -> None:
    import segflow.data.splits as splits

    def broken(*args: object, **kwargs: object) -> None:
        raise AttributeError("'NoneType' object has no attribute 'stem'")

    monkeypatch.setattr(splits, "make_splits", broken)
    with pytest.raises(AttributeError):
        run_cli("split", _ds(tmp_path))
    res = _segflow(["config", "show", "--set", "train.epochs=0"])  # and a user error does not
    _refused(res, 2, "train.epochs")


def test_lightning_configuration_error_is_one_line() -> None:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from segflow.errors import ConfigError, user_error

    error = user_error(
        MisconfigurationException("`devices` selected with `CPUAccelerator` should be an int > 0.")
    )
    assert isinstance(error, ConfigError) and error.exit_code == 2
    assert "Lightning rejected the training settings: `devices`" in str(error)
    assert user_error(AttributeError("x")) is None and user_error(KeyError("k")) is None
