"""The contrast rule: colour statistics in the fingerprint, the planner's decision, the plan CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from segflow.data.fingerprint import colour_stats, fingerprint_dataset
from segflow.train import plan_contrast as PC
from segflow.train import plan_cost as C
from segflow.train import plan_rules as R
from segflow.train import planner as P
from tests.fixtures.synthetic import make_dataset

CPU = C.DeviceInfo("cpu", "CPU (2 cores)", 16.0, 2)


def _fundus(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A dim reddish disc on black with slightly darker lines (vessels): low-contrast colour."""
    mask = np.zeros((size, size), np.uint8)
    for _ in range(4):
        p0, p1 = (
            tuple(int(v) for v in rng.integers(0, size, 2)),
            tuple(int(v) for v in rng.integers(0, size, 2)),
        )
        cv2.line(mask, p0, p1, 1, 2)
    disc = np.zeros((size, size), np.uint8)
    cv2.circle(disc, (size // 2, size // 2), size // 2 - 2, 1, -1)
    base = np.array([20.0, 60.0, 120.0]) - mask[:, :, None] * np.array([4.0, 12.0, 10.0])
    image = base + rng.normal(0, 6, (size, size, 3))
    image = np.clip(image * disc[:, :, None], 0, 255).astype(np.uint8)
    return image, mask * disc


def _brighten_left(image: np.ndarray) -> np.ndarray:
    out = image.astype(np.float64)
    out[:, : image.shape[1] // 2] *= 4.0
    return np.clip(out, 0, 255).astype(np.uint8)


def _grey(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[:, :, 1:2], 3, axis=2)


def _fundus_dataset(root: Path, n: int = 8, change: Any = None) -> Path:
    root = make_dataset(root, n=n, size=(64, 64), num_classes=2)  # classes, layout
    rng = np.random.default_rng(0)
    for path in sorted((root / "images").iterdir()):
        image, mask = _fundus(rng)
        image = change(image) if change is not None else image
        cv2.imwrite(str(path), image)  # BGR on disk, as cv2 reads it back
        cv2.imwrite(str(root / "masks" / f"{path.stem}.png"), mask)
    return root


def test_colour_stats_measure_contrast_and_channel_redundancy() -> None:
    rng = np.random.default_rng(1)
    image, _ = _fundus(rng)
    cv, corr = colour_stats(image) or (None, None)
    fov = image.astype(float)[::2, ::2].mean(axis=2)
    fov = fov[fov > 10]
    assert cv == pytest.approx(fov.std() / fov.mean(), rel=1e-9)  # the black surround is left out
    assert cv < PC.LOW_CONTRAST_CV and corr < PC.COLOUR_CORRELATION
    grey = np.repeat(image[:, :, 1:2], 3, axis=2)
    assert colour_stats(grey)[1] == pytest.approx(1.0)  # type: ignore[index]
    assert colour_stats(image.astype(np.uint16)) is None
    assert colour_stats(image[:, :, :1]) is None


def _ctx(root: Path) -> R.PlanContext:
    return R.PlanContext(
        fingerprint=fingerprint_dataset(root, workers=1),
        device=CPU,
        budget_s=120.0,
        train_images=6,
        val_images=2,
        timer=C.TableTimer(CPU),
        has_weights=lambda encoder: False,
    )


def test_rule_fires_on_low_contrast_colour_only(tmp_path: Path) -> None:
    fundus = _ctx(_fundus_dataset(tmp_path / "fundus"))
    fp = fundus.fingerprint
    assert fp.colour_contrast is not None and fp.colour_contrast < PC.LOW_CONTRAST_CV
    assert fp.channel_correlation is not None and fp.channel_correlation < PC.COLOUR_CORRELATION
    assert "contrast" in R.RULES and PC.ADOPTED is False
    plan = P.Planner().plan(fundus)  # the default planner measures and reports, CLAHE stays off
    assert plan.settings["data.preprocess.clahe"] is False
    reason = plan.decisions["contrast"].reason
    assert "low-contrast colour" in reason and f"{fp.colour_contrast:.2f}" in reason
    adopted = P.Planner(rules={"contrast": PC.contrast_rule(adopt=True)}).plan(fundus)
    assert adopted.settings["data.preprocess.clahe"] is True
    # the same images with the disc's left half bright (high contrast), or stored as grey
    for name, change in (("contrast", _brighten_left), ("grey", _grey)):
        other = _ctx(_fundus_dataset(tmp_path / name, change=change))
        fp = other.fingerprint
        assert not PC.low_contrast_colour(fp.colour_contrast, fp.channel_correlation), name
        kept = P.Planner(rules={"contrast": PC.contrast_rule(adopt=True)}).plan(other)
        assert kept.settings["data.preprocess.clahe"] is False, name
    assert (fp.channel_correlation or 0) > 0.999  # grey stored as colour
    assert not PC.low_contrast_colour(None, None)


def test_plan_cli_records_the_measured_contrast(cli, tmp_path: Path) -> None:
    root = _fundus_dataset(tmp_path / "fundus")
    out = tmp_path / "plan.yaml"
    res = cli("plan", root, "--budget", "1m", "--timing", "table", "--out", out)
    assert res.exit_code == 0, res.stderr
    text = out.read_text()
    assert "channel correlation" in text and "ablation" in text
    assert yaml.safe_load(text)["data"]["preprocess"]["clahe"] is False
    fixed = tmp_path / "fixed.yaml"
    res = cli(
        "plan", root, "--timing", "table", "--out", fixed, "--set", "data.preprocess.clahe=true"
    )
    assert res.exit_code == 0, res.stderr
    assert yaml.safe_load(fixed.read_text())["data"]["preprocess"]["clahe"] is True
