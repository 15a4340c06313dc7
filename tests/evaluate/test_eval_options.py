"""`segflow eval` with predict's inference flags: the bundle's settings by default, the flags'
steps scored exactly as they change the masks, and the same masks as `segflow predict`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segflow.api import evaluate, predict
from segflow.data.dataset import CanonicalDataset
from segflow.data.image_io import read_mask
from segflow.evaluate.confusion import confusion
from segflow.infer.postprocess import postprocess
from segflow.infer.predictor import Predictor
from segflow.models.bundle import read_bundle_meta, write_updated_bundle
from tests.fixtures.bundles import dataset_labelled_by, make_bundle, shifted_bundle


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("evalopts")
    random = make_bundle(tmp / "random.segflow", classes=2, tile=64)
    base = shifted_bundle(random, tmp / "base.segflow", 0.0, scale=8.0)
    # the truth: the network's masks without their components under 16 px
    ds = dataset_labelled_by(base, tmp / "ds", post={"min_size": {1: 16}})
    return {"base": base, "ds": ds, "tmp": tmp}


def _val(ds: Path) -> list:
    return CanonicalDataset(ds).labelled_samples("val")


def _expected(bundle: Path, ds: Path, post: dict, threshold: float | None = None) -> np.ndarray:
    """The confusion of the plain masks post-processed here, independently of eval's options."""
    data = CanonicalDataset(ds)
    predictor = Predictor.from_bundles(bundle, backend="torch", tta=[], postprocess={},
                                       threshold=threshold)  # fmt: skip
    total = np.zeros((2, 2), np.int64)
    for s in _val(ds):
        labels = predictor.predict_array(data.read_image(s)).labels
        total += confusion(data.read_mask(s), postprocess(labels, post), 2)
    return total


@pytest.mark.parametrize(
    ("flags", "post", "threshold"),
    [
        ({"min_size": ["16"]}, {"min_size": {1: 16}}, None),
        ({"fill_holes": ["all"]}, {"fill_holes": [1]}, None),
        ({"keep_largest": ["foreground"]}, {"keep_largest": [1]}, None),
        ({"threshold": 0.52}, {}, 0.52),
    ],
)
def test_each_flag_changes_the_score_as_it_changes_the_masks(
    setup: dict[str, Path], tmp_path: Path, flags: dict, post: dict, threshold: float | None
) -> None:
    base, ds = setup["base"], setup["ds"]
    plain = evaluate(base, ds, split="val", backend="torch", out=tmp_path / "plain")
    with_flag = evaluate(base, ds, split="val", backend="torch", out=tmp_path / "f", **flags)
    np.testing.assert_array_equal(with_flag.confusion, _expected(base, ds, post, threshold))
    assert not np.array_equal(with_flag.confusion, plain.confusion), "the step changed nothing"
    settings = with_flag.metrics["settings"]
    assert settings["from_flags"] == list(flags)
    if "min_size" in flags:  # the truth has no components under 16 px: the score goes up to 1
        assert with_flag.metrics["macro"]["iou"] == 1.0 > plain.metrics["macro"]["iou"]
        assert settings["postprocess"]["min_size"] == {"foreground": 16}


def test_eval_scores_the_masks_predict_writes(setup: dict[str, Path], tmp_path: Path) -> None:
    base, ds = setup["base"], setup["ds"]
    flags = {"threshold": 0.55, "min_size": ["8"], "fill_holes": ["all"], "tta": "h"}
    images = [s.image for s in _val(ds)]
    predict(base, images, out=tmp_path / "pred", backend="torch", color=False, overlay=False,
            **flags)  # fmt: skip
    data = CanonicalDataset(ds)
    total = np.zeros((2, 2), np.int64)
    for s in _val(ds):
        total += confusion(data.read_mask(s), read_mask(tmp_path / "pred" / f"{s.stem}.png"), 2)
    ev = evaluate(base, ds, split="val", backend="torch", out=tmp_path / "ev", **flags)
    np.testing.assert_array_equal(ev.confusion, total)
    assert ev.metrics["settings"]["tta"] == ["h"] and ev.metrics["settings"]["threshold"] == 0.55


def test_by_default_eval_applies_what_the_bundle_ships(
    setup: dict[str, Path], tmp_path: Path, cli
) -> None:
    base, ds = setup["base"], setup["ds"]
    meta = read_bundle_meta(base)
    shipped = write_updated_bundle(
        base,
        tmp_path / "shipped.segflow",
        meta.model_copy(update={"threshold": 0.55, "postprocess": {"min_size": {1: 16}}}),
    )
    default = evaluate(shipped, ds, split="val", backend="torch", out=tmp_path / "a")
    np.testing.assert_array_equal(
        default.confusion, _expected(base, ds, {"min_size": {1: 16}}, 0.55)
    )
    settings = default.metrics["settings"]
    assert settings["threshold"] == 0.55 and settings["from_flags"] == []
    assert settings["postprocess"]["min_size"] == {"foreground": 16}
    html = default.report.read_text()
    assert "threshold 0.55" in html and "foreground=16" in html and "all from the bundle" in html
    # flags add steps to the bundle's own
    res = cli("eval", shipped, ds, "--split", "val", "--backend", "torch", "--fill-holes", "all",
              "--out", tmp_path / "b")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert "applied: threshold 0.55" in res.stdout and "fill-holes foreground" in res.stdout
    assert "min-size foreground=16" in res.stdout and "from flags: fill_holes" in res.stdout


def _one_line(res, code: int, *needles: str) -> None:
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    for needle in needles:
        assert needle in res.stderr, (needle, res.stderr)


def test_bad_inference_flags_get_one_line_errors(
    setup: dict[str, Path], tmp_path: Path, cli
) -> None:
    base, ds = setup["base"], setup["ds"]
    out = tmp_path / "ev"
    for args, needle in (
        (["--threshold", "1.5"], "--threshold 1.5: must be a probability in (0, 1)"),
        (["--threshold", "0"], "--threshold 0"),
        (["--combine", "max"], "mean or vote"),
        (["--min-size", "big"], "--min-size 'big'"),
        (["--keep-largest", "cat"], "unknown class 'cat'"),
        (["--tta", "d"], "unknown TTA"),
        (["--overlap", "1"], "--overlap 1"),
    ):
        _one_line(cli("eval", base, ds, "--split", "val", "--out", out, *args), 2, needle)
    multi = make_bundle(tmp_path / "multi.segflow", classes=3, tile=64)
    _one_line(
        cli("eval", multi, ds, "--split", "val", "--threshold", "0.5", "--out", out),
        2,
        "multiclass model",
        "binary models only",
    )
    assert not out.exists()
