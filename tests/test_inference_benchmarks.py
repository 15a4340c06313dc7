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


def test_tiled_inference_trains_a_bundle_and_runs_every_backend(tmp_path: Path) -> None:
    """Tiny mode: 1 epoch on synthetic shapes (CHASE_DB1 in the real run), a 256^2 mosaic."""
    from tests.fixtures.synthetic import make_dataset

    data = make_dataset(tmp_path / "ds", n=12, size=(96, 128), num_classes=3, seed=0)
    text = _run(
        "tiled_inference.py",
        *("--data", str(data), "--train-minutes", "0.5", "--epochs", "1"),
        *("--encoder", "resnet18", "--train-tile", "64", "--size", "256", "--tile", "128"),
        *("--repeat", "1", "--threads", "1"),
    )
    assert "trained here" in text and "export bf16 check: " in text
    assert _number(r"segflow-auto / monai-bf16 throughput: ([\d.]+)", text) > 0
    assert _number(r"segflow-auto / monai-f32 throughput: ([\d.]+)", text) > 0
    assert re.search(
        r"segflow-auto chose: backend: (onnx|openvino|torch) (f32|bf16) \(cached", text
    )
    assert "auto's one-time measurement (then cached): " in text
    assert "foreground share of the fp32 eager mask: " in text
    table = r"^(\S+) +([\d.]+) +([\d.]+) +(\d+) MB +([\d.]+|-) +([\d.]+|-)$"
    rows = {m[0]: m for m in re.findall(table, text, flags=re.MULTILINE)}
    for kind in (
        "monai-f32",
        "monai-bf16",
        "segflow-torch-f32",
        "segflow-torch-bf16",
        "segflow-onnx-f32",
        "segflow-openvino-f32",
        "segflow-openvino-bf16",
        "segflow-auto",
    ):
        assert kind in rows, (kind, text)  # a row of figures, not "failed: ..."
        assert float(rows[kind][4]) >= 0.99, (kind, text)  # agreement with fp32 eager
        assert float(rows[kind][3]) > 0  # peak RSS in MB, its own process's
    assert float(rows["segflow-torch-f32"][4]) == 1.0  # the reference itself


@pytest.mark.parametrize(
    ("script", "args", "ratios"),
    [
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
    backend = re.search(r"served backend (\w+),", text)
    assert backend and f"in-process backend: {backend.group(1)} " in text  # auto on both sides
    assert "served mask identical to the in-process one: True" in text


def test_windowed_raster_benchmark_runs_both_paths_and_they_agree(tmp_path: Path) -> None:
    text = _run("windowed_raster.py", "--size", "600", "--tile", "128", "--backend", "onnx",
                "--work", str(tmp_path))  # fmt: skip
    assert _number(r"windowed / whole: time ([\d.]+)", text) > 0
    assert re.search(r"^windowed .* peak RSS +\d+ MiB$", text, flags=re.MULTILINE), text
    assert re.search(r"^whole .* peak RSS +\d+ MiB$", text, flags=re.MULTILINE), text
    assert _number(r"label agreement windowed vs whole: ([\d.]+)", text) == 1.0
