"""Smoke test of benchmarks/quality.py: the whole script path on tiny generated datasets.

Quality is not asserted (a few seconds of training on 8 tiny images): only that both contenders
train, predict and are scored, that the table is printed and that every score is in [0, 1].
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"


def _vessels(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    for _ in range(6):
        p0 = (int(rng.integers(w)), int(rng.integers(h)))
        p1 = (int(rng.integers(w)), int(rng.integers(h)))
        cv2.line(mask, p0, p1, 1, int(rng.integers(1, 4)))
    return mask


def _image(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    base = np.array([[150, 60, 20], [60, 20, 10]], np.float32)[mask]
    return np.asarray(np.clip(base + rng.normal(0, 10, base.shape), 0, 255), np.uint8)


def _chase_like(root: Path, rng: np.random.Generator) -> Path:
    """Images/masks/masks_2ndHO named like CHASE_DB1 (two eyes per child), JPEG images."""
    for folder in ("images", "masks", "masks_2ndHO"):
        (root / folder).mkdir(parents=True)
    for child in range(1, 5):
        for eye in "LR":
            stem = f"Image_{child:02d}{eye}"
            mask = _vessels(rng, 72, 80)
            cv2.imwrite(str(root / "images" / f"{stem}.jpg"), _image(rng, mask)[:, :, ::-1])
            cv2.imwrite(str(root / "masks" / f"{stem}.png"), mask)
            other = cv2.dilate(mask, np.ones((2, 2), np.uint8))
            cv2.imwrite(str(root / "masks_2ndHO" / f"{stem}.png"), other)
    return root


def _dsb_like(root: Path, rng: np.random.Generator) -> Path:
    """Images of different sizes with bright discs on dark ground (nuclei), PNG."""
    for folder in ("images", "masks"):
        (root / folder).mkdir(parents=True)
    for i, (h, w) in enumerate([(64, 64), (64, 80), (72, 72)] * 3):
        mask = np.zeros((h, w), np.uint8)
        for _ in range(5):
            cv2.circle(mask, (int(rng.integers(w)), int(rng.integers(h))), 5, 1, -1)
        image = np.clip(mask[:, :, None] * 180.0 + rng.normal(20, 8, (h, w, 3)), 0, 255)
        cv2.imwrite(str(root / "images" / f"{i:04x}.png"), image.astype(np.uint8))
        cv2.imwrite(str(root / "masks" / f"{i:04x}.png"), mask)
    return root


@pytest.mark.slow
def test_quality_benchmark_runs_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    chase = _chase_like(tmp_path / "chase_src", rng)
    dsb = _dsb_like(tmp_path / "dsb_src", rng)
    spec = importlib.util.spec_from_file_location("quality_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality_bench"] = module
    sys.path.insert(0, str(BENCH.parent))  # as `python benchmarks/quality.py` does (for _seeds)
    try:
        spec.loader.exec_module(module)
        sources = ["--chase-src", str(chase), "--dsb-src", str(dsb)]
        rows = module.main(["--tiny", "--budget", "3s", "--work", str(tmp_path / "work"), *sources])
    finally:
        sys.path.remove(str(BENCH.parent))
        sys.modules.pop("quality_bench", None)
        sys.modules.pop("_seeds", None)
    out = capsys.readouterr().out
    assert "segflow / baseline per-image mean Dice" in out
    assert "machine:" in out and "torch" in out
    contenders = [(r["dataset"], r["contender"]) for r in rows]
    assert contenders == [
        ("chase", "segflow"),
        ("chase", "baseline"),
        ("chase", "2nd annotator"),
        ("dsb", "segflow"),
        ("dsb", "baseline"),
    ]
    for r in rows:
        for key in ("dice_mean", "dice_pooled", "iou_mean", "iou_pooled"):
            assert 0.0 <= r[key] <= 1.0, (r["contender"], key, r[key])
        if r["contender"] != "2nd annotator":
            assert r["steps"] >= 1 and r["seconds"] > 0
    assert (next((tmp_path / "work").glob("quality-*")) / "results.json").is_file()
    # the shared sources are never written to
    assert sorted(p.name for p in chase.iterdir()) == ["images", "masks", "masks_2ndHO"]
