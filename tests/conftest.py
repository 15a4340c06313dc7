"""Shared test helpers: paths to fixtures and a runner for the real CLI."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

# albumentations pings PyPI on import unless told not to; tests run offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Each xdist worker gets one math thread: two workers x N torch threads on 2 cores thrash
# (measured: the model contract tests take 81 s instead of 20 s). Set before torch is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

FIXTURES = Path(__file__).parent / "fixtures"
REAL = FIXTURES / "real"


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(*args: str | Path) -> CliResult:
    """Run ``segflow ARGS`` in-process through typer's runner (stdout and stderr separate)."""
    from typer.testing import CliRunner

    from segflow.cli.main import app

    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    """The CLI runner (see run_cli)."""
    return run_cli


@pytest.fixture
def real() -> Path:
    """Folder of real annotation files from other projects (see fixtures/real/SOURCES.md)."""
    return REAL


@pytest.fixture(autouse=True)
def _restore_segflow_logging():
    """CLI runs install a stderr handler and a level on the "segflow" logger; undo after each test."""
    import logging

    names = ("segflow", "lightning", "lightning.pytorch", "lightning.fabric", "mlflow", "alembic")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level) for n in names}
    yield
    for n, (handlers, level) in saved.items():
        logger = logging.getLogger(n)
        logger.handlers[:] = handlers
        logger.setLevel(level)
