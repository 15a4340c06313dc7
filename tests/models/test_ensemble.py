"""Ensemble bundles: the manifest, strict validation, and predictions equal to their members'."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from segflow.api import evaluate, tune
from segflow.errors import DataError, UsageError
from segflow.evaluate.tuning import MIN_THRESHOLD_IMAGES
from segflow.infer.postprocess import PostProcess
from segflow.infer.predictor import Predictor
from segflow.models.bundle import read_bundle_meta
from segflow.models.ensemble import EnsembleManifest, read_ensemble, save_ensemble
from segflow.train.ensemble import dequantise, quantise, tune_out_of_fold, write_oof
from tests.fixtures.bundles import dataset_labelled_by, make_bundle, shifted_bundle

SHIFT = 2.0
BEST = 1 / (1 + math.exp(-SHIFT))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ens")
    random = make_bundle(tmp / "random.segflow", classes=2, tile=64)
    base = shifted_bundle(random, tmp / "base.segflow", 0.0, scale=8.0)
    a = shifted_bundle(random, tmp / "a.segflow", SHIFT, scale=8.0)
    b = shifted_bundle(make_bundle(tmp / "r2.segflow", classes=2, seed=1), tmp / "b.segflow", 0.5)
    ds = dataset_labelled_by(base, tmp / "ds", n=2 + MIN_THRESHOLD_IMAGES)
    return {"base": base, "a": a, "b": b, "ds": ds, "tmp": tmp}


def _manifest(**updates) -> EnsembleManifest:
    fields = {
        "name": "ens",
        "task": "binary",
        "classes": [{"id": 0, "name": "background", "color": [0, 0, 0]},
                    {"id": 1, "name": "foreground", "color": [255, 0, 0]}],
        "members": ["m0.segflow", "m1.segflow"],
        "threshold": 0.3,
    }  # fmt: skip
    return EnsembleManifest.model_validate({**fields, **updates})


def _ensemble(setup: dict[str, Path], out: Path, **updates) -> Path:
    members = [("m0.segflow", setup["a"]), ("m1.segflow", setup["b"])]
    return save_ensemble(out, members, _manifest(**updates))


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)


def test_manifest_round_trip_and_effective_meta(setup: dict[str, Path], tmp_path: Path) -> None:
    ens = _ensemble(setup, tmp_path / "e.segflow", postprocess={"min_size": {1: 4}}, tta=["h"])
    loaded = read_ensemble(ens)
    assert loaded.members == [ens / "m0.segflow", ens / "m1.segflow"]
    written = _manifest(postprocess={"min_size": {1: 4}}, tta=["h"], created_at="t")
    assert loaded.manifest.model_dump(mode="json", exclude={"created_at"}) == written.model_dump(
        mode="json", exclude={"created_at"}
    )  # YAML keeps the JSON form: class ids as keys are strings, read back by PostProcess
    meta = read_bundle_meta(ens)
    assert meta.name == "ens" and meta.threshold == 0.3 and meta.inference.tta == ["h"]
    assert PostProcess.model_validate(meta.postprocess).min_size == {1: 4}
    assert meta.weights_sha256 == "" and meta.arch == read_bundle_meta(setup["a"]).arch
    predictor = Predictor.from_bundles(ens, backend="torch")
    assert len(predictor.members) == 2 and predictor.threshold == 0.3
    assert all(m.tta == ("h",) for m in predictor.members)
    assert predictor.post.min_size == {1: 4}
    mixed = Predictor.from_bundles([ens, setup["base"]], backend="torch")  # --with another model
    assert [m.meta.name for m in mixed.members] == ["a", "b", "base"] and mixed.threshold == 0.3


@pytest.mark.parametrize("combine", ["mean", "vote"])
def test_prediction_is_the_members_combined(
    setup: dict[str, Path], tmp_path: Path, combine: str
) -> None:
    ens = _ensemble(setup, tmp_path / "e.segflow", combine=combine)
    image = _image()
    got = Predictor.from_bundles(ens, backend="torch").predict_array(image, probs=True)
    # by hand: each member's probabilities, their mean, the ensemble's threshold
    probs = [
        Predictor.from_bundles(m, backend="torch", tta=[]).probabilities(image)[0]
        for m in (setup["a"], setup["b"])
    ]
    if combine == "mean":
        expected = (np.mean(probs, axis=0) > 0.3).astype(np.uint8)
    else:  # two voters: foreground needs both (ties go to the lower class id)
        expected = ((probs[0] > 0.3) & (probs[1] > 0.3)).astype(np.uint8)
    np.testing.assert_array_equal(got.labels, expected)
    np.testing.assert_allclose(got.probs[1], np.mean(probs, axis=0), atol=1e-6)
    assert 0 < expected.mean() < 1  # not a trivial all-background / all-foreground mask
    direct = Predictor.from_bundles([setup["a"], setup["b"]], backend="torch", threshold=0.3,
                                    combine=combine).predict_array(image)  # fmt: skip
    np.testing.assert_array_equal(got.labels, direct.labels)


def test_eval_of_an_ensemble_equals_eval_of_its_members(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    ens = _ensemble(setup, tmp_path / "e.segflow")
    one = evaluate(ens, setup["ds"], split="val", out=tmp_path / "e1", backend="torch", worst_k=0)
    two = evaluate([setup["a"], setup["b"]], setup["ds"], split="val", out=tmp_path / "e2",
                   backend="torch", threshold=0.3, worst_k=0)  # fmt: skip
    np.testing.assert_array_equal(one.confusion, two.confusion)
    assert one.metrics["macro"]["iou"] == pytest.approx(two.metrics["macro"]["iou"], abs=1e-12)
    assert one.metrics["settings"]["threshold"] == 0.3
    assert one.metrics["settings"]["combine"] == "mean"


def _tamper(ens: Path, **changes) -> None:
    path = ens / "ensemble.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing member", "member 'm1.segflow' is missing"),
        ("escaping path", "member '../a.segflow' must be a folder inside the ensemble"),
        ("absolute path", "must be a folder inside the ensemble"),
        ("link out", "member 'link.segflow' leads out of the ensemble folder"),
        ("class mismatch", "member 'm1.segflow' has classes"),
        ("bad combine", "combine"),
        ("no members", "members"),
        ("nested", "member 'm1.segflow' is an ensemble itself"),
    ],
)
def test_tampered_ensembles_get_one_line_errors(
    setup: dict[str, Path], tmp_path: Path, cli, case: str, message: str
) -> None:
    ens = _ensemble(setup, tmp_path / "e.segflow")
    if case == "missing member":
        shutil.rmtree(ens / "m1.segflow")
    elif case == "escaping path":
        shutil.copytree(setup["a"], tmp_path / "a.segflow")
        _tamper(ens, members=["m0.segflow", "../a.segflow"])
    elif case == "absolute path":
        _tamper(ens, members=["m0.segflow", str(setup["b"].absolute())])
    elif case == "link out":
        os.symlink(setup["b"].absolute(), ens / "link.segflow")
        _tamper(ens, members=["m0.segflow", "link.segflow"])
    elif case == "class mismatch":
        shutil.rmtree(ens / "m1.segflow")
        make_bundle(ens / "m1.segflow", classes=3)
    elif case == "nested":
        inner = _ensemble(setup, tmp_path / "inner.segflow")
        shutil.rmtree(ens / "m1.segflow")
        shutil.move(inner, ens / "m1.segflow")
    elif case == "bad combine":
        _tamper(ens, combine="max")
    else:
        _tamper(ens, members=[])
    with pytest.raises(DataError, match=r"ensemble\.yaml") as info:
        read_bundle_meta(ens)
    assert message in str(info.value)
    images = tmp_path / "in"
    images.mkdir()
    from segflow.data import image_io

    image_io.write_png(images / "x.png", _image())
    res = cli("predict", ens, images, "--out", tmp_path / "out", "--backend", "torch")
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert not (tmp_path / "out").exists()


def test_save_refuses_a_broken_ensemble_and_leaves_nothing(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    other = make_bundle(tmp_path / "three.segflow", classes=3)
    with pytest.raises(DataError, match="has classes"):
        save_ensemble(tmp_path / "e.segflow", [("m0.segflow", setup["a"]),
                                               ("m1.segflow", other)], _manifest())  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["three.segflow"]
    _ensemble(setup, tmp_path / "e.segflow")
    with pytest.raises(UsageError, match="already exists"):
        _ensemble(setup, tmp_path / "e.segflow")


def test_tune_on_an_ensemble_updates_its_manifest(setup: dict[str, Path], tmp_path: Path) -> None:
    """Both members shifted by +2 logits: the tuned threshold is sigmoid(2), as for one bundle."""
    members = [("m0.segflow", setup["a"]), ("m1.segflow", setup["a"])]
    ens = save_ensemble(tmp_path / "e.segflow", members, _manifest(threshold=0.5))
    result = tune(ens, setup["ds"], in_place=True, backend="torch", try_tta=False)
    assert abs(result.threshold - BEST) < 0.01, result.threshold
    manifest = read_ensemble(ens).manifest
    assert manifest.threshold == result.threshold and manifest.tuning["images"] == 12
    assert not (ens / "bundle.yaml").exists()


def test_out_of_fold_tuning_uses_each_images_own_member(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    """OOF maps of every image from the member named for it; the threshold chosen on them is
    sigmoid(2) (both members shifted by +2 logits), read from the maps without re-inference."""
    from segflow.data.dataset import CanonicalDataset

    ds = CanonicalDataset(setup["ds"])
    val = sorted(s.stem for s in ds.labelled_samples("val"))
    members = [("m0.segflow", setup["a"]), ("m1.segflow", setup["a"])]
    parts = {"m0.segflow": val[:6], "m1.segflow": val[6:]}
    oof = tmp_path / "oof"
    write_oof(ds, members, parts, oof, progress=False)
    rows = (oof / "oof.csv").read_text().splitlines()
    assert rows[0] == "stem,fold,member,loss,dice" and len(rows) == 1 + len(val)
    assert sorted(r.split(",")[0] for r in rows[1:]) == val
    owner = {r.split(",")[0]: r.split(",")[2] for r in rows[1:]}
    assert all(owner[s] == m for m, stems in parts.items() for s in stems)
    q = np.load(oof / f"{val[0]}.npy")
    assert q.dtype == np.uint8 and q.shape[0] == 1
    settings, scores = tune_out_of_fold(ds, members, parts, oof, progress=False)
    assert abs(settings["threshold"] - BEST) < 0.01
    assert settings["tuning"]["split"] == "out-of-fold" and scores["mIoU"] > scores["mIoU_untuned"]


def test_quantised_maps_threshold_exactly() -> None:
    p = np.random.default_rng(0).random((1, 50, 50)).astype(np.float32)
    q = quantise(p)
    np.testing.assert_array_equal(quantise(dequantise(q)), q)
    for j in (13, 128, 200):
        np.testing.assert_array_equal(q >= j, p > j / 256)


def test_served_ensemble_predicts_as_its_members_combined(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from segflow.serve.server import build_app
    from tests.serve import decode_mask, encode

    ens = _ensemble(setup, tmp_path / "e.segflow")
    image = _image(1)
    expected = Predictor.from_bundles([setup["a"], setup["b"]], backend="torch", threshold=0.3)
    with TestClient(build_app(ens, backend="torch")) as client:
        info = client.get("/info").json()
        assert info["model"]["bundles"] == 2 and info["input"]["threshold"] == 0.3
        resp = client.post("/predict", files={"image": ("x.png", encode(image), "image/png")})
        assert resp.status_code == 200, resp.text
    np.testing.assert_array_equal(decode_mask(resp.content), expected.predict_array(image).labels)


def test_eval_on_other_classes_names_the_manifest(
    setup: dict[str, Path], tmp_path: Path, cli
) -> None:
    from tests.fixtures.synthetic import make_dataset

    ens = _ensemble(setup, tmp_path / "e.segflow")
    other = make_dataset(tmp_path / "three", n=2, size=(32, 32), num_classes=3)
    res = cli("eval", ens, other, "--split", "all", "--out", tmp_path / "ev")
    assert res.exit_code == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(ens / "ensemble.yaml") in lines[0], res.stderr
    assert not (tmp_path / "ev").exists()
