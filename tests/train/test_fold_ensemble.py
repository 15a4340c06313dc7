"""`segflow train --folds K` through the real CLI: K members, out-of-fold maps, one ensemble."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segflow.data.dataset import CanonicalDataset
from segflow.data.image_io import read_image, read_mask
from segflow.data.splits import make_splits
from segflow.infer.predictor import Predictor
from segflow.models.bundle import read_bundle_meta
from segflow.models.ensemble import read_ensemble
from segflow.train.ensemble import fold_rows, quantise
from tests.fixtures.synthetic import make_dataset

TINY = Path(__file__).parents[1] / "fixtures" / "configs" / "tiny.yaml"
SEGFLOW = Path(sys.executable).parent / "segflow"


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _segflow(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SEGFLOW), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`segflow train --folds 2` as a user runs it (MLflow on): 10 images, 2 of them test."""
    tmp = tmp_path_factory.mktemp("folds")
    ds = make_dataset(tmp / "ds", n=10, size=(64, 64), num_classes=2, seed=0)
    make_splits(ds, val=0.2, test=0.2, seed=0)
    before = _digest(ds)
    res = _segflow("train", TINY, "--data", ds, "--folds", "2", "--name", "ens",
                   "--set", f"train.output={tmp / 'runs'}", "--set", "tracking.enabled=true",
                   cwd=tmp)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert _digest(ds) == before  # the dataset folder is never written
    run = tmp / "runs" / "ens"
    assert f"ensemble: {run / 'ensemble.segflow'}" in res.stdout
    return {"tmp": tmp, "ds": ds, "run": run, "ens": run / "ensemble.segflow"}


def test_writes_the_ensemble_with_out_of_fold_maps(trained: dict[str, Path]) -> None:
    ens, run, ds = trained["ens"], trained["run"], trained["ds"]
    loaded = read_ensemble(ens)
    assert loaded.manifest.members == ["fold0.segflow", "fold1.segflow"]
    with (ds / "splits.csv").open() as fh:
        split = {r["stem"]: r["split"] for r in csv.DictReader(fh)}
    non_test = sorted(s for s, part in split.items() if part != "test")
    with (run / "folds.csv").open() as fh:
        fold_of = {r["stem"]: r["fold"] for r in csv.DictReader(fh)}
    assert sorted(s for s, f in fold_of.items() if f != "") == non_test
    # every non-test image exactly once, from the member validating on (not trained on) it
    with (ens / "oof" / "oof.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["stem"] for r in rows) == non_test
    for r in rows:
        assert r["member"] == f"fold{r['fold']}.segflow" and fold_of[r["stem"]] == r["fold"]
        assert r["stem"] in loaded.manifest.folds[r["member"]]
        assert float(r["loss"]) > 0 and 0 <= float(r["dice"]) <= 1
    assert sorted(p.stem for p in (ens / "oof").glob("*.npy")) == non_test
    first = rows[0]
    member = ens / first["member"]
    image = read_image(ds / "images" / f"{first['stem']}.png")
    own = Predictor.from_bundles(member, backend="torch", tta=[], postprocess={})
    saved = np.load(ens / "oof" / f"{first['stem']}.npy")
    assert saved.dtype == np.uint8 and saved.shape == (1, 64, 64)
    assert np.abs(saved.astype(int) - quantise(own.probabilities(image)).astype(int)).max() <= 1
    # each member's training run: its fold validated, MLflow on, not tuned on its own fold
    for k in (0, 1):
        state = json.loads((run / f"fold{k}" / "run.json").read_text())
        assert state["status"] == "finished" and state["fold"] == k and state["mlflow_run_id"]
    tuning = loaded.manifest.tuning
    assert tuning["split"] == "out-of-fold" and tuning["images"] == len(non_test)
    assert read_bundle_meta(ens).threshold == loaded.manifest.threshold
    assert not list(run.glob(".*"))  # no staging folder left


def test_predict_eval_export_work_on_the_ensemble(cli, trained: dict[str, Path]) -> None:
    ens, ds, tmp = trained["ens"], trained["ds"], trained["tmp"]
    res = cli("predict", ens, ds / "images", "--out", tmp / "pred", "--backend", "torch")
    assert res.exit_code == 0, res.stderr
    masks = sorted((tmp / "pred").glob("*_mask.png")) or sorted((tmp / "pred").glob("*.png"))
    assert masks
    res = cli("eval", ens, ds, "--split", "test", "--out", tmp / "ev", "--backend", "torch")
    assert res.exit_code == 0, res.stderr
    metrics = json.loads((tmp / "ev" / "metrics.json").read_text())
    assert metrics["n_images"] == 2 and metrics["settings"]["combine"] == "mean"
    res = cli("export", ens, "--format", "onnx")
    assert res.exit_code == 0, res.stderr
    for member in ("fold0.segflow", "fold1.segflow"):
        assert "onnx" in read_bundle_meta(ens / member).exports
        assert str(ens / member / "model.onnx") in res.stdout
    read_ensemble(ens)  # still a valid ensemble
    image = read_image(ds / "images" / "s000.png")
    torch_labels = Predictor.from_bundles(ens, backend="torch").predict_array(image).labels
    onnx_labels = Predictor.from_bundles(ens, backend="onnx").predict_array(image).labels
    assert (torch_labels == onnx_labels).mean() > 0.99
    assert read_mask(masks[0]).shape == (64, 64)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1", "--folds 1: an ensemble needs at least 2 folds"),
        ("0", "--folds 0: an ensemble needs at least 2 folds"),
        ("abc", "--folds 'abc': give a number of folds"),
        ("5", "--folds 5: the 8 non-test images of"),  # in pairs: 4 groups
    ],
)
def test_bad_folds_exit_2_with_one_line_and_no_run(
    cli, tmp_path: Path, value: str, message: str
) -> None:
    ds = make_dataset(tmp_path / "ds", n=10, size=(64, 64), num_classes=2, seed=0)
    make_splits(ds, val=0.2, test=0.2, seed=0)
    rows = (ds / "splits.csv").read_text().splitlines()
    out, pairs = [rows[0]], 0
    for line in rows[1:]:
        stem, split, *_ = line.split(",")
        group = "" if split == "test" else f"g{pairs // 2}"
        pairs += split != "test"
        out.append(f"{stem},{split},{group},")
    (ds / "splits.csv").write_text("\n".join(out) + "\n")
    res = cli("train", TINY, "--data", ds, "--folds", value, "--name", "bad",
              "--set", f"train.output={tmp_path / 'runs'}")  # fmt: skip
    assert res.exit_code == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    if value == "5":
        assert "form 4 group(s)" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_folds_keep_groups_together_and_leave_the_test_images_out(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", n=12, size=(32, 32), num_classes=2, seed=1)
    make_splits(ds, val=0.2, test=0.2, seed=0)
    lines = (ds / "splits.csv").read_text().splitlines()
    test = {line.split(",")[0] for line in lines[1:] if line.split(",")[1] == "test"}
    group = {s: f"g{i // 3}" for i, s in enumerate(sorted(
        line.split(",")[0] for line in lines[1:] if line.split(",")[0] not in test))}  # fmt: skip
    rows = [lines[0]] + [f"{s},{'test' if s in test else 'train'},{group.get(s, '')}," for s in
                         sorted(group.keys() | test)]  # fmt: skip
    (ds / "splits.csv").write_text("\n".join(rows) + "\n")
    before = (ds / "splits.csv").read_text()
    folds = fold_rows(CanonicalDataset(ds), 3, seed=0)
    assert (ds / "splits.csv").read_text() == before
    fold_of = {r.stem: r.fold for r in folds}
    assert {s for s, f in fold_of.items() if f is None} == test
    assert sorted({f for f in fold_of.values() if f is not None}) == [0, 1, 2]
    for g in set(group.values()):
        assert len({fold_of[s] for s, gg in group.items() if gg == g}) == 1, g


def test_a_member_resumes_on_its_own_fold(cli, trained: dict[str, Path]) -> None:
    """The dataset's splits.csv has no folds: only the run's folds.csv can give fold 1's images."""
    member = trained["run"] / "fold1"
    res = cli("train", "--resume", member, "--set", "train.epochs=2")
    assert res.exit_code == 0, res.stderr
    state = json.loads((member / "run.json").read_text())
    assert state["status"] == "finished" and state["epochs"] == 2 and state["fold"] == 1
    read_ensemble(trained["ens"])  # the ensemble keeps its own copy of the member


def test_review_from_the_run_scores_every_image_with_its_out_of_fold_map(
    cli, trained: dict[str, Path]
) -> None:
    """`segflow review --from-run RUN`: out-of-fold maps, so the train split is scored too."""
    from segflow.review.scoring import class_probabilities, score_image
    from segflow.train.ensemble import dequantise

    ds, run, tmp = trained["ds"], trained["run"], trained["tmp"]
    res = cli("review", ds, "--from-run", run, "--out", tmp / "rev", "--top", "3")
    assert res.exit_code == 0, res.stderr
    assert "in-sample" not in res.stderr  # no warning: these maps are out of sample
    with (tmp / "rev" / "review.csv").open() as fh:
        rows = {r["stem"]: r for r in csv.DictReader(fh)}
    with (run / "ensemble.segflow" / "oof" / "oof.csv").open() as fh:
        assert set(rows) == {r["stem"] for r in csv.DictReader(fh)}  # every non-test image
    assert {"train", "val"} <= {r["split"] for r in rows.values()}
    stem = next(iter(rows))
    q = np.load(run / "ensemble.segflow" / "oof" / f"{stem}.npy")
    mask = read_mask(ds / "masks" / f"{stem}.png")
    expected = score_image(class_probabilities(dequantise(q), True), mask)
    assert float(rows[stem]["score"]) == pytest.approx(expected.score, abs=1e-4)
    assert len((tmp / "rev" / "stems.txt").read_text().split()) == 3
    res = cli("review", ds, "--from-run", ds, "--out", tmp / "rev2")  # not a folds run
    assert res.exit_code == 1 and "no out-of-fold predictions" in res.stderr
    res = cli(
        "review", ds, "--from-run", run, "--bundle", run / "fold0.segflow", "--out", tmp / "r3"
    )
    assert res.exit_code == 2 and "leave --bundle out" in res.stderr
    assert not (tmp / "rev2").exists() and not (tmp / "r3").exists()
