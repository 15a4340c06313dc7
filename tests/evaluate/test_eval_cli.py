"""`segflow eval` through the real CLI: bad input, options reaching the Predictor, a real model."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from segflow.data.dataset import CanonicalDataset
from segflow.data.splits import make_splits
from segflow.infer.predictor import Predictor
from segflow.models.bundle import read_bundle_meta
from tests.evaluate import FakePredictor, write_bundle
from tests.fixtures.synthetic import make_dataset

TINY = Path(__file__).parents[1] / "fixtures" / "configs" / "tiny.yaml"
NAMES = ["background", "class1", "class2"]


def _dataset(tmp: Path, splits: bool = True, size=(48, 64)) -> Path:
    root = make_dataset(tmp / "ds", n=12, size=size, num_classes=3, seed=2)
    if splits:
        make_splits(root, val=0.25, test=0.25, seed=0)
    return root


def _one_line_error(res, code: int, *needles: str) -> None:
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    for needle in needles:
        assert needle in res.stderr, (needle, res.stderr)


def test_class_mismatch(cli, tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    bundle = write_bundle(tmp_path / "m.segflow", ["background", "road", "car"])
    res = cli("eval", bundle, ds)
    _one_line_error(res, 1, "['background', 'road', 'car']", "['background', 'class1', 'class2']")


def test_missing_split(cli, tmp_path: Path) -> None:
    ds = _dataset(tmp_path, splits=False)
    bundle = write_bundle(tmp_path / "m.segflow", NAMES)
    _one_line_error(cli("eval", bundle, ds), 2, "segflow split", "'test'")
    _one_line_error(cli("eval", bundle, ds, "--split", "tst"), 2, "unknown split 'tst'")


def test_missing_roi_mask(cli, tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    bundle = write_bundle(tmp_path / "m.segflow", NAMES)
    roi = tmp_path / "roi"
    roi.mkdir()
    test = [s for s, r in CanonicalDataset(ds).splits().items() if r.split == "test"]
    cv2.imwrite(str(roi / f"{test[0]}.png"), np.ones((48, 64), np.uint8))
    _one_line_error(
        cli("eval", bundle, ds, "--roi", roi), 1, f"{test[1]}.png", "region-of-interest"
    )
    _one_line_error(cli("eval", bundle, ds, "--roi", tmp_path / "nowhere"), 1, "nowhere")


def test_missing_bundle(cli, tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    _one_line_error(cli("eval", tmp_path / "none.segflow", ds), 1, "none.segflow")


def test_options_reach_the_predictor_and_a_table_is_printed(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = _dataset(tmp_path)
    a = write_bundle(tmp_path / "a.segflow", NAMES, name="a")
    b = write_bundle(tmp_path / "b.segflow", NAMES, name="b")
    calls: list[tuple[Any, dict[str, Any]]] = []

    def fake_from_bundles(cls, bundles, **kw):
        calls.append((bundles, kw))
        return FakePredictor(ds, CanonicalDataset(ds).meta.classes, {})

    monkeypatch.setattr(Predictor, "from_bundles", classmethod(fake_from_bundles))
    out = tmp_path / "ev"
    res = cli("eval", a, ds, "--with", b, "--tta", "h,hv", "--backend", "torch", "--out", out)
    assert res.exit_code == 0, res.stderr
    bundles, kw = calls[0]
    assert [Path(p) for p in bundles] == [a, b]
    assert kw["tta"] == ["h", "hv"] and kw["backend"] == "torch"
    for needle in ("class1", "IoU", "Dice", "precision", "recall", "mIoU 1.0000", "pixel accuracy"):
        assert needle in res.stdout, needle
    assert f"report: {out / 'report.html'}\n" in res.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["name"] for e in metrics["ensemble"]] == ["a", "b"] and metrics["split"] == "test"
    res = cli("eval", a, ds, "--tta", "none", "--split", "all", "--out", out)
    assert res.exit_code == 0 and calls[1][1]["tta"] == []
    assert json.loads((out / "metrics.json").read_text())["n_images"] == 12


@pytest.mark.slow
def test_real_model_end_to_end(cli, tmp_path: Path) -> None:
    """Train a tiny model, then `segflow eval` it with the real Predictor."""
    ds = _dataset(tmp_path, size=(64, 64))
    runs = tmp_path / "runs"
    res = cli("train", TINY, "--data", ds, "--name", "r", "--set", f"train.output={runs}")
    assert res.exit_code == 0, res.stderr
    bundle = runs / "r" / "best.segflow"
    res = cli("eval", bundle, ds)
    assert res.exit_code == 0, res.stderr
    out = runs / "r" / "eval_test"
    metrics = json.loads((out / "metrics.json").read_text())
    tests = [s for s, r in CanonicalDataset(ds).splits().items() if r.split == "test"]
    assert metrics["n_images"] == len(tests) and metrics["bundle"]["name"]
    # train exported the bundle to ONNX, so auto runs an ONNX runtime (measured) out of the box
    assert 0 <= metrics["macro"]["iou"] <= 1
    assert metrics["settings"]["backend"] in ("onnx", "openvino")
    assert "info: backend: " in res.stderr
    with (out / "per_image.csv").open() as fh:
        assert sorted(r["stem"] for r in csv.DictReader(fh)) == sorted(tests)
    for name in ("confusion.png", "report.html", "curves.png"):
        assert (out / name).is_file(), name
    assert any((out / "cases").iterdir())
    assert f"{metrics['macro']['iou']:.4f}" in res.stdout
    # Whole 64 px images in one 64 px tile: eval on the validation split reproduces the
    # validation mIoU that training stored in the bundle (at f32: bf16 may move it a little).
    res = cli(
        "eval", bundle, ds, "--split", "val", "--precision", "f32", "--out", tmp_path / "ev_val"
    )
    assert res.exit_code == 0, res.stderr
    val = json.loads((tmp_path / "ev_val" / "metrics.json").read_text())
    stored = yaml_metrics(bundle)
    # train.tune (on by default) scored the plain masks first: training's own validation figure
    # (one code path); eval applies what it chose and gets the score it recorded.
    tuning = read_bundle_meta(bundle).tuning
    assert tuning["before"] == pytest.approx(stored["val/mIoU"], abs=1e-4)
    assert val["macro"]["iou"] == pytest.approx(tuning["after"], abs=1e-4)


def yaml_metrics(bundle: Path) -> dict[str, float]:
    return read_bundle_meta(bundle).metrics
