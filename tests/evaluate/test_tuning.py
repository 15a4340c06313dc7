"""`segflow tune`: the threshold, TTA and post-processing chosen on a generated validation split.

The dataset's masks are made by a seeded random network at 0.5; the bundle tuned is the same
network with its logits shifted by hand (+2), so the best threshold is sigmoid(2) = 0.881, not 0.5.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from segflow.api import evaluate, tune
from segflow.evaluate.tuning import MIN_THRESHOLD_IMAGES
from segflow.infer.postprocess import PostProcess
from segflow.models.bundle import read_bundle_meta
from tests.fixtures.bundles import dataset_labelled_by, make_bundle, shifted_bundle

SHIFT = 2.0
BEST = 1 / (1 + math.exp(-SHIFT))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("tune")
    random = make_bundle(tmp / "random.segflow", classes=2, tile=64)
    base = shifted_bundle(random, tmp / "base.segflow", 0.0, scale=8.0)
    shifted = shifted_bundle(random, tmp / "shifted.segflow", SHIFT, scale=8.0)
    # 14 images: 12 for val (MIN_THRESHOLD_IMAGES), one train, one test
    ds = dataset_labelled_by(base, tmp / "ds", n=2 + MIN_THRESHOLD_IMAGES)
    return {"base": base, "shifted": shifted, "ds": ds}


def test_a_split_too_small_keeps_the_threshold_and_says_why(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    """On 4 validation images a chosen threshold did not carry over to test (benchmarks.md)."""
    small = dataset_labelled_by(setup["base"], tmp_path / "ds", n=6)  # 4 val images
    result = tune(setup["shifted"], small, out=tmp_path / "t.segflow", backend="torch",
                  try_tta=False)  # fmt: skip
    (threshold,) = _steps(result, "threshold")
    assert not threshold.kept and threshold.value == 0.5 and result.threshold == 0.5
    assert threshold.note == f"skipped: 4 images < {MIN_THRESHOLD_IMAGES}"
    assert read_bundle_meta(tmp_path / "t.segflow").threshold == 0.5


def _steps(result, kind: str) -> list:
    return [s for s in result.steps if s.step == kind]


def test_picks_the_known_better_threshold_and_refuses_steps_that_do_not_help(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "t.segflow"
    result = tune(setup["shifted"], setup["ds"], out=out, backend="torch", try_tta=True)
    assert abs(result.threshold - BEST) < 0.01, result.threshold
    (threshold,) = _steps(result, "threshold")
    assert threshold.kept and threshold.after > threshold.before + 0.1
    # The masks are the network's own at the right threshold: no post-processing can help,
    # and TTA (which changes the probabilities) cannot either.
    refused = [s for s in result.steps if s.step != "threshold"]
    assert {s.step for s in refused} == {"tta", "min_size", "fill_holes", "keep_largest"}
    assert not any(s.kept for s in refused), refused
    assert result.tta == [] and not result.postprocess.active
    meta = read_bundle_meta(out)
    assert meta.threshold == pytest.approx(result.threshold)
    record = meta.tuning
    assert record["before"] == pytest.approx(threshold.before, abs=1e-6)
    assert record["after"] == pytest.approx(result.after, abs=1e-6)
    assert record["metric"] == "val/mIoU" and record["split"] == "val"
    assert record["images"] == MIN_THRESHOLD_IMAGES
    assert record["steps"][0]["step"] == "threshold"
    assert all({"before", "after", "kept", "value"} <= set(s) for s in record["steps"])
    assert "x the time" in _steps(result, "tta")[0].note
    # the original bundle is untouched, the weights are the same file
    assert read_bundle_meta(setup["shifted"]).threshold == 0.5
    assert meta.weights_sha256 == read_bundle_meta(setup["shifted"]).weights_sha256
    # eval of the tuned bundle scores what the tuner measured (same masks, same metric)
    ev = evaluate(out, setup["ds"], split="val", backend="torch", out=tmp_path / "ev")
    assert ev.metrics["macro"]["iou"] == pytest.approx(result.after, abs=1e-6)
    assert ev.metrics["settings"]["threshold"] == pytest.approx(result.threshold)
    before = evaluate(setup["shifted"], setup["ds"], split="val", backend="torch",
                      out=tmp_path / "ev0")  # fmt: skip
    assert before.metrics["macro"]["iou"] == pytest.approx(result.before, abs=1e-6)


def test_keeps_a_min_size_that_helps(tmp_path: Path, setup: dict[str, Path]) -> None:
    post = {"min_size": {1: 16}}
    ds = dataset_labelled_by(setup["base"], tmp_path / "ds", post=post)
    result = tune(setup["base"], ds, out=tmp_path / "t.segflow", backend="torch", try_tta=False)
    (step,) = _steps(result, "min_size")
    assert step.kept and step.value == 16 and step.after > step.before + 0.002
    assert result.postprocess.min_size == {1: 16}
    stored = read_bundle_meta(tmp_path / "t.segflow").postprocess
    assert PostProcess.model_validate(stored).min_size == {1: 16}
    assert result.after > result.before


def test_in_place_is_atomic(
    tmp_path: Path, setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from segflow.models import bundle as bundle_module

    work = tmp_path / "m.segflow"
    shutil.copytree(setup["shifted"], work)
    original = (work / "bundle.yaml").read_text()

    def broken(meta):
        raise OSError("disk full")

    monkeypatch.setattr(bundle_module, "_dump_meta", broken)
    with pytest.raises(OSError, match="disk full"):
        tune(work, setup["ds"], in_place=True, backend="torch", try_tta=False)
    assert (work / "bundle.yaml").read_text() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.segflow"]  # no temp folders left
    monkeypatch.undo()
    result = tune(work, setup["ds"], in_place=True, backend="torch", try_tta=False)
    assert result.bundle == work and read_bundle_meta(work).tuning["after"] > 0.9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.segflow"]


def _one_line(res, code: int, *needles: str) -> None:
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    for needle in needles:
        assert needle in res.stderr, (needle, res.stderr)


def test_bad_input_gets_one_line_errors_and_no_bundle(
    cli, tmp_path: Path, setup: dict[str, Path]
) -> None:
    import shutil

    from tests.fixtures.synthetic import make_dataset

    ds = tmp_path / "ds"
    shutil.copytree(setup["ds"], ds)
    bundle = setup["shifted"]
    before = sorted(p.name for p in bundle.parent.iterdir())
    exists = tmp_path / "there.segflow"
    exists.mkdir()
    _one_line(cli("tune", bundle, ds, "--out", exists), 2, "there.segflow", "already exists")
    _one_line(
        cli("tune", bundle, ds, "--out", tmp_path / "x.segflow", "--in-place"), 2, "choose one"
    )
    _one_line(cli("tune", bundle, ds, "--split", "tst"), 2, "unknown split 'tst'")
    for mask in (ds / "masks").iterdir():  # the val images lose their labels
        if mask.stem not in ("s000", "s001"):
            mask.unlink()
    _one_line(
        cli("tune", bundle, ds, "--out", tmp_path / "y.segflow"), 2, "no labelled images", "'val'"
    )
    three = make_dataset(tmp_path / "three", n=2, num_classes=3)
    _one_line(cli("tune", bundle, three, "--out", tmp_path / "z.segflow"), 1, "class1", "classes")
    assert sorted(p.name for p in bundle.parent.iterdir()) == before
    assert not any(p.name.endswith(".segflow") and p.name != "there.segflow"
                   for p in tmp_path.iterdir())  # fmt: skip


def test_cli_prints_the_table_and_writes_beside_the_bundle(
    cli, tmp_path: Path, setup: dict[str, Path]
) -> None:
    import shutil

    work = tmp_path / "m.segflow"
    shutil.copytree(setup["shifted"], work)
    res = cli("tune", work, setup["ds"], "--backend", "torch", "--no-try-tta")
    assert res.exit_code == 0, res.stderr
    tuned = tmp_path / "m.tuned.segflow"
    assert f"tuned bundle: {tuned}" in res.stdout
    for needle in ("threshold", "min_size", "fill_holes", "keep_largest", "yes", "no"):
        assert needle in res.stdout, needle
    assert read_bundle_meta(tuned).tuning["steps"][0]["kept"] is True


def test_probabilities_stream_in_bands_and_the_tuner_uses_the_bands(
    setup: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    from segflow.infer.predictor import Predictor

    predictor = Predictor.from_bundles(setup["base"], backend="torch", tta=[])
    image = np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    bands = list(predictor.probability_rows(image))
    assert len(bands) > 1 and bands[0][0] == 0 and bands[-1][1] == 150  # tile rows of 64 px
    np.testing.assert_array_equal(
        np.concatenate([b for _, _, b in bands], axis=1), predictor.probabilities(image)
    )

    def whole(self, image):
        raise AssertionError("the tuner held a whole float32 probability map")

    monkeypatch.setattr(Predictor, "probabilities", whole)
    result = tune(setup["shifted"], setup["ds"], out=tmp_path / "t.segflow", backend="torch",
                  try_tta=False)  # fmt: skip
    assert abs(result.threshold - BEST) < 0.01


def test_multiclass_has_no_threshold_and_tunes_each_class(tmp_path: Path) -> None:
    random = make_bundle(tmp_path / "random.segflow", classes=3, tile=64)
    base = shifted_bundle(random, tmp_path / "base.segflow", 0.0, scale=8.0)
    ds = dataset_labelled_by(base, tmp_path / "ds", post={"min_size": {2: 16}})
    result = tune(base, ds, out=tmp_path / "t.segflow", backend="torch", try_tta=False)
    assert result.threshold is None and not _steps(result, "threshold")
    by_class = {s.target: s for s in _steps(result, "min_size")}
    assert set(by_class) == {"c1", "c2"}
    # the smallest size that reproduces the truth wins (no c2 component has 8..15 px here)
    assert by_class["c2"].kept and by_class["c2"].after == 1.0 and by_class["c2"].value <= 16
    assert result.postprocess.min_size.get(2) == by_class["c2"].value
    assert read_bundle_meta(tmp_path / "t.segflow").tuning["after"] == pytest.approx(
        result.after, abs=1e-6
    )
