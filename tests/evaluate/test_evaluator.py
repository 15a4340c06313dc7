"""The evaluator with an injected fake Predictor on tiny generated datasets.

Expected numbers are computed here independently (numpy counts and torchmetrics on the pairs the
fake returned), never by calling segflow's metric functions.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from torchmetrics.functional.classification import multiclass_jaccard_index

from segflow.data.dataset import CanonicalDataset
from segflow.data.splits import make_splits
from segflow.errors import DataError, UsageError
from segflow.evaluate.evaluator import evaluate
from tests.evaluate import FakePredictor, write_bundle
from tests.fixtures.synthetic import make_dataset

NAMES = ["background", "class1", "class2", "class3"]  # class3 is never painted: absent


def _dataset(tmp: Path, n: int = 8, splits: bool = False) -> Path:
    root = make_dataset(tmp / "ds", n=n, size=(48, 64), num_classes=3, seed=1)
    meta = yaml.safe_load((root / "dataset.yaml").read_text())
    meta["classes"].append({"id": 3, "name": "class3", "color": [0, 128, 128]})
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta))
    mask = cv2.imread(str(root / "masks" / "s001.png"), cv2.IMREAD_UNCHANGED)
    mask[:6] = 255  # an unlabelled band
    cv2.imwrite(str(root / "masks" / "s001.png"), mask)
    if splits:
        make_splits(root, val=0.25, test=0.25, seed=0)
    return root


def _fake(root: Path, plan: dict[str, str] | None = None) -> FakePredictor:
    return FakePredictor(root, CanonicalDataset(root).meta.classes, plan)


def _run(tmp: Path, root: Path, fake: FakePredictor, **kw):
    bundle = kw.pop("bundle", None) or write_bundle(tmp / "model.segflow", NAMES)
    kw.setdefault("split", "all")
    kw.setdefault("out", tmp / "out")
    return evaluate(bundle, root, predictor=fake, **kw)


def _image_fg_iou(truth: np.ndarray, pred: np.ndarray, k: int = 4) -> float:
    valid = truth != 255
    scores = []
    for c in range(1, k):
        union = (((truth == c) | (pred == c)) & valid).sum()
        if union:
            scores.append((((truth == c) & (pred == c)) & valid).sum() / union)
    return float(np.mean(scores)) if scores else math.nan


PLAN = {"s005": "blank", "s002": "shift", "s006": "swap"}


def test_metrics_equal_an_independent_computation(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    fake = _fake(root, PLAN)
    res = _run(tmp_path, root, fake)
    m = res.metrics
    truths = torch.from_numpy(np.stack([t for t, _ in fake.seen.values()]).astype(np.int64))
    preds = torch.from_numpy(np.stack([p for _, p in fake.seen.values()]).astype(np.int64))
    kw = {"num_classes": 4, "ignore_index": 255}
    per_class = multiclass_jaccard_index(preds, truths, average="none", **kw).numpy()
    for c in range(3):
        assert m["per_class"][NAMES[c]]["iou"] == pytest.approx(per_class[c], rel=1e-6)
    assert math.isnan(m["per_class"]["class3"]["iou"])
    macro = float(multiclass_jaccard_index(preds, truths, average="macro", **kw))
    assert m["macro"]["iou"] == pytest.approx(macro, rel=1e-6)
    assert m["macro_fg"]["iou"] == pytest.approx(np.mean(per_class[1:3]), rel=1e-6)
    valid = truths != 255
    assert m["micro"]["accuracy"] == pytest.approx(float((truths == preds)[valid].float().mean()))
    assert m["counts"]["ignored"] == 6 * 64 and m["counts"]["pixels"] == int(valid.sum())
    fg = [_image_fg_iou(t, p) for t, p in fake.seen.values()]
    assert m["per_image"]["iou_fg"] == pytest.approx(np.nanmean(fg))
    assert m["n_images"] == 8 and m["split"] == "all" and m["bundle"]["name"] == "model"
    rows = {r["stem"]: r for r in res.per_image}
    assert rows["s005"]["mIoU_fg"] == 0.0 and rows["s000"]["mIoU_fg"] == 1.0
    assert rows["s002"]["mIoU_fg"] == pytest.approx(fg[2])
    np.testing.assert_array_equal(res.confusion.sum(), valid.sum())


def test_files_written(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    res = _run(tmp_path, root, _fake(root, PLAN), worst_k=2)
    out = tmp_path / "out"
    assert res.out == out and res.report == out / "report.html"
    on_disk = json.loads((out / "metrics.json").read_text())  # strict JSON: no NaN tokens
    assert on_disk["per_class"]["class3"]["iou"] is None
    assert on_disk["per_image"]["per_class"]["class3"]["iou"] is None
    assert on_disk["macro"]["iou"] == pytest.approx(res.metrics["macro"]["iou"])
    assert on_disk["counts"]["per_class"]["class3"] == {
        "truth": 0, "predicted": 0, "tp": 0, "fp": 0, "fn": 0, "images": 0,
    }  # fmt: skip
    assert len(on_disk["confusion"]) == 4 and on_disk["classes"][3]["name"] == "class3"
    with (out / "per_image.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["stem"] for r in rows] == [f"s{i:03d}" for i in range(8)]
    assert rows[0]["IoU/class3"] == "" and float(rows[5]["mIoU_fg"]) == 0.0
    assert {"IoU/class1", "Dice/class2", "mIoU", "mDice", "acc"} <= set(rows[0])
    assert cv2.imread(str(out / "confusion.png")) is not None
    html = res.report.read_text()
    assert 'id="confusion" alt="confusion matrix" src="data:image/png;base64,' in html
    assert 'id="class-table"' in html and "class2" in html and "class3" in html
    assert 'id="worst-cases"' in html and "s005" in html
    case = cv2.imread(str(out / "cases" / "worst_00_s005.jpg"))
    assert case is not None and case.shape[1] > 4 * 200  # four panels side by side
    assert 'src="http' not in html and "<script" not in html  # self-contained


def test_worst_and_best_cases_are_ranked(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    _run(tmp_path, root, _fake(root, {"s005": "blank", "s002": "shift"}), worst_k=2)
    cases = sorted(p.name for p in (tmp_path / "out" / "cases").iterdir())
    assert cases == [
        "best_00_s000.jpg", "best_01_s001.jpg", "worst_00_s005.jpg", "worst_01_s002.jpg",
    ]  # fmt: skip
    # With room for more than half the images, the best list takes only what the worst left.
    fake = _fake(root, {"s005": "blank", "s002": "shift", "s006": "swap"})
    res = _run(tmp_path, root, fake, worst_k=5)
    fg = {s: _image_fg_iou(t, p) for s, (t, p) in fake.seen.items()}
    ranked = sorted(fg, key=lambda s: (fg[s], s))
    names = sorted(p.name for p in (res.out / "cases").iterdir())
    assert [n for n in names if n.startswith("worst")] == [
        f"worst_{i:02d}_{s}.jpg" for i, s in enumerate(ranked[:5])
    ]
    best = sorted(ranked[5:], key=lambda s: (-fg[s], s))
    assert [n for n in names if n.startswith("best")] == [
        f"best_{i:02d}_{s}.jpg" for i, s in enumerate(best)
    ]
    assert fg["s005"] == 0.0 and ranked[0] in ("s005", "s006")


def test_roi_restricts_the_scored_pixels(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    roi = tmp_path / "roi"
    roi.mkdir()
    for i in range(8):
        m = np.zeros((48, 64), np.uint8)
        m[:, :32] = 255
        cv2.imwrite(str(roi / f"s{i:03d}.png"), m)
    fake = _fake(root, {"s003": "blank"})
    res = _run(tmp_path, root, fake, roi=roi)
    counts = res.metrics["counts"]
    assert counts["outside_roi"] == 8 * 48 * 32
    left = {s: (t[:, :32], p[:, :32]) for s, (t, p) in fake.seen.items()}
    assert counts["pixels"] == sum(int((t != 255).sum()) for t, _ in left.values())
    t3, p3 = left["s003"]
    row = next(r for r in res.per_image if r["stem"] == "s003")
    assert row["acc"] == pytest.approx(float((t3 == p3)[t3 != 255].mean()))
    assert res.metrics["roi"] == str(roi.absolute())
    (roi / "s004.png").unlink()
    with pytest.raises(
        DataError, match=r"roi/s004\.png: no region-of-interest mask for image s004"
    ):
        _run(tmp_path, root, _fake(root), roi=roi)


def test_splits(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    with pytest.raises(UsageError, match="run `segflow split"):
        _run(tmp_path, root, _fake(root), split="test")
    with pytest.raises(UsageError, match="unknown split 'tset'"):
        _run(tmp_path, root, _fake(root), split="tset")
    make_splits(root, val=0.25, test=0.25, seed=0)
    fake = _fake(root)
    res = _run(tmp_path, root, fake, split="test")
    tests = {s for s, r in CanonicalDataset(root).splits().items() if r.split == "test"}
    assert set(fake.seen) == tests and res.metrics["n_images"] == len(tests) == 2
    assert res.metrics["macro"]["iou"] == 1.0  # perfect predictions


def test_class_mismatch_names_both_lists(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    bundle = write_bundle(tmp_path / "other.segflow", ["background", "road", "car", "tree"])
    with pytest.raises(DataError) as info:
        _run(tmp_path, root, _fake(root), bundle=bundle)
    msg = str(info.value)
    assert "other.segflow/bundle.yaml" in msg and "'road'" in msg and "'class1'" in msg


@pytest.mark.slow
def test_default_out_mlflow_and_curves(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    root = _dataset(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("segflow", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    client.set_terminated(run_id)
    run = tmp_path / "runs" / "r"
    bundle = write_bundle(run / "best.segflow", NAMES, name="best")
    (run / "run.json").write_text(json.dumps({"mlflow_run_id": run_id, "mlflow_uri": uri}))
    (run / "history.csv").write_text(
        "epoch,step,val/mIoU,train/loss_epoch\n0,4,0.3,1.2\n1,8,0.5,0.9\n"
    )
    res = evaluate(bundle, root, split=None, predictor=_fake(root, PLAN))
    assert res.out == run / "eval_all"
    assert (run / "eval_all" / "curves.png").is_file()
    assert 'id="curves"' in res.report.read_text()
    logged = client.get_run(run_id).data.metrics
    assert logged["eval_all/mIoU"] == pytest.approx(res.metrics["macro"]["iou"])
    assert logged["eval_all/IoU/class1"] == pytest.approx(res.metrics["per_class"]["class1"]["iou"])
    assert "eval_all/IoU/class3" not in logged  # undefined: not logged as a number
    files = {a.path for a in client.list_artifacts(run_id, "eval_all")}
    assert {"eval_all/metrics.json", "eval_all/report.html", "eval_all/confusion.png"} <= files
    make_splits(root, val=0.25, test=0.25, seed=0)
    evaluate(bundle, root, predictor=_fake(root))
    assert "test/mIoU" in client.get_run(run_id).data.metrics


def test_unreachable_mlflow_is_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _dataset(tmp_path)
    run = tmp_path / "runs" / "r"
    bundle = write_bundle(run / "best.segflow", NAMES)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (run / "run.json").write_text(
        json.dumps({"mlflow_run_id": "abc", "mlflow_uri": f"http://127.0.0.1:{port}"})
    )
    with caplog.at_level(logging.WARNING, logger="segflow"):
        res = evaluate(bundle, root, split="all", predictor=_fake(root))
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "MLflow" in warnings[0].getMessage()
    assert (res.out / "metrics.json").is_file() and res.out == run / "eval_all"


def test_ensemble_gets_its_own_default_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _dataset(tmp_path)
    a = write_bundle(tmp_path / "a.segflow", NAMES, name="a")
    b = write_bundle(tmp_path / "b.segflow", NAMES, name="b")
    monkeypatch.chdir(tmp_path)
    res = evaluate([a, b], root, split="all", predictor=_fake(root), worst_k=0)
    assert res.out == tmp_path / "eval_a_all_ensemble"
    assert [e["name"] for e in res.metrics["ensemble"]] == ["a", "b"]
    assert not list((res.out / "cases").iterdir())
