"""Smoke test of benchmarks/train_overhead.py: both loops run, at the same precision.

Speed is not asserted (three 64-px steps say nothing about it): only that the report lines are
printed and that segflow trained at the precision the bare loop used (the one segflow plans).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_overhead.py"
LIGHTNING = {"32": "32-true", "bf16-mixed": "bf16-mixed", "16-mixed": "16-mixed"}


def test_train_overhead_smoke_runs_both_loops_at_one_precision() -> None:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke"],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    both = re.search(r"precision \(both\): (\S+): (.+)", text)
    ours = re.search(r"segflow precision: (\S+)", text)
    assert both and ours, text
    import torch

    if torch.cuda.is_available():
        assert both.group(1) == "auto"
    else:
        assert both.group(1) in ("32", "bf16-mixed") and "fp32" in both.group(2)
        assert ours.group(1) == LIGHTNING[both.group(1)]
    for pattern in (r"bare PyTorch .*: ([\d.]+) steps/s", r"segflow train: +([\d.]+) steps/s",
                    r"ratio segflow / bare: ([\d.]+)"):  # fmt: skip
        found = re.search(pattern, text)
        assert found and float(found.group(1)) > 0, pattern
