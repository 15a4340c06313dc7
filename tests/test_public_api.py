"""The package surface: honest __all__, no import-time side effects, a fast CLI start."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import segflow

BIN = Path(sys.executable).parent


def test_all_is_honest() -> None:
    for name in segflow.__all__:
        assert getattr(segflow, name) is not None, name
    assert sorted(dir(segflow)) == sorted(segflow.__all__)


def test_import_has_no_heavy_dependencies_or_side_effects(tmp_path: Path) -> None:
    code = (
        "import sys, os; before = set(os.listdir('.')); import segflow, segflow.cli.main; "
        "heavy = ('torch', 'mlflow', 'fastapi', 'numpy', 'cv2', 'lightning'); "
        "heavy = [m for m in heavy if m in sys.modules]; "
        "assert not heavy, heavy; assert set(os.listdir('.')) == before"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_cli_help_starts_fast_without_torch() -> None:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        out = subprocess.run(
            [BIN / "segflow", "--help"], capture_output=True, text=True, env=env, check=True
        )
        best = min(best, time.perf_counter() - start)
    assert best < 0.5, f"segflow --help took {best:.2f}s"
    for command in ("import", "check", "split"):
        assert command in out.stdout


def test_version() -> None:
    out = subprocess.run([BIN / "segflow", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"segflow {segflow.__version__}"
