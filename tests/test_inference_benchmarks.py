"""Smoke tests of the inference benchmarks: each script runs end to end on a tiny image.

Speed and memory are not asserted (a 512-pixel image says nothing about them): only that every
contender runs in its own process, that the report lines with their ratios are printed, and that
the contenders predict the same classes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in:\n{text}"
    return float(found.group(1))


@pytest.mark.parametrize(
    ("script", "args", "ratios"),
    [
        (
            "tiled_inference.py",
            ("--size", "512", "--tile", "256", "--repeat", "1", "--threads", "1"),
            [r"segflow / MONAI throughput: ([\d.]+)", r"segflow / raw onnxruntime:\s+([\d.]+)"],
        ),
        (
            "tiled_memory.py",
            ("--size", "512", "--threads", "1"),
            [r"MONAI / segflow added memory: ([\d.]+)"],
        ),
    ],
)
def test_tiled_benchmarks_run_and_agree(script: str, args: tuple[str, ...], ratios) -> None:
    text = _run(script, *args)
    for pattern in ratios:
        assert _number(pattern, text) >= 0
    assert _number(r"class-count agreement segflow vs MONAI: ([\d.]+)", text) >= 0.99


def test_serve_latency_benchmark_runs_and_serves_the_same_mask() -> None:
    text = _run("serve_latency.py", "--size", "256", "--runs", "2")
    assert _number(r"HTTP / in-process: ([\d.]+)", text) > 0
    assert "served mask identical to the in-process one: True" in text
