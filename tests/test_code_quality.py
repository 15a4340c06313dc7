"""The house rules hold on every change: ruff (lint + format) and strict mypy are clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_ruff_lint_is_clean() -> None:
    res = _run("ruff", "check", "src", "tests", "benchmarks", "scripts")
    assert res.returncode == 0, res.stdout[-4000:]


def test_ruff_format_is_clean() -> None:
    res = _run("ruff", "format", "--check", "src", "tests", "benchmarks", "scripts")
    assert res.returncode == 0, res.stdout[-4000:]


@pytest.mark.slow
def test_mypy_strict_is_clean() -> None:
    res = _run("mypy")
    assert res.returncode == 0, res.stdout[-4000:]
