"""Training's tiled validation, `segflow eval` and `segflow predict` run one inference path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from segflow.data.splits import make_splits
from segflow.evaluate.evaluator import evaluate
from segflow.evaluate.metrics import summary
from segflow.infer.predictor import Predictor
from segflow.models.bundle import load_bundle
from tests.fixtures.bundles import make_bundle
from tests.fixtures.synthetic import make_dataset

TINY = Path(__file__).parents[1] / "fixtures" / "configs" / "tiny.yaml"


def _last_val(run: Path) -> dict[str, str]:
    with (run / "history.csv").open() as fh:
        return list(csv.DictReader(fh))[-1]


@pytest.mark.slow
def test_tiled_validation_scores_exactly_what_eval_scores(cli, tmp_path: Path) -> None:
    """Images above data.val_tile_threshold: history's val scores == eval's on the val split."""
    ds = make_dataset(tmp_path / "ds", n=6, size=(150, 200), num_classes=3, seed=0)
    make_splits(ds, val=0.34, test=0.0, seed=0)
    res = cli(
        "train", TINY, "--data", ds, "--name", "r", "--set", f"train.output={tmp_path / 'runs'}",
        "--set", "data.val_tile_threshold=64", "--set", "train.tune=false",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    run = tmp_path / "runs" / "r"
    history = _last_val(run)
    res = cli(
        "eval", run / "best.segflow", ds, "--split", "val", "--backend", "torch",
        "--precision", "f32", "--out", tmp_path / "ev",
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    per_class = json.loads((tmp_path / "ev" / "metrics.json").read_text())["per_class"]
    scored = evaluate(run / "best.segflow", ds, split="val", out=tmp_path / "ev2",
                      backend="torch", precision="f32")  # fmt: skip
    shipped = summary(scored.confusion, list(per_class), prefix="val/")
    for name in ("val/mIoU", "val/IoU/class1", "val/Dice/class2"):
        assert shipped[name] == pytest.approx(float(history[name]), abs=1e-6), name
    assert per_class["class1"]["iou"] == pytest.approx(shipped["val/IoU/class1"], abs=1e-6)


def test_network_probabilities_are_predicts_on_the_normalised_input(tmp_path: Path) -> None:
    """Predictor.for_network over the live network gives predict_array's labels and probs."""
    bundle = make_bundle(tmp_path / "m.segflow", classes=2, tile=64)
    loaded = load_bundle(bundle)
    image = np.random.default_rng(0).integers(0, 256, (150, 97, 3), dtype=np.uint8)
    shipped = Predictor.from_bundles(bundle, backend="torch", precision="f32")
    expected = shipped.predict_array(image, probs=True)

    network = loaded.model.eval()

    def live(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return network(torch.from_numpy(batch)).numpy()

    live.name = "torch"  # type: ignore[attr-defined]
    val = Predictor.for_network(live, loaded.meta)  # type: ignore[arg-type]
    x, _ = shipped.members[0].preprocessor.network_input(image)
    probs = val.network_probabilities(x.rows(0, image.shape[0]))
    assert probs.shape == (1, 150, 97)
    assert expected.probs is not None
    np.testing.assert_allclose(probs[0], expected.probs[1], atol=1e-6)
    np.testing.assert_array_equal(val.labels_from_probs(probs), expected.labels)
    with pytest.raises(Exception, match="expected a 3 x H x W input"):
        val.network_probabilities(np.zeros((1, 8, 8), np.float32))
