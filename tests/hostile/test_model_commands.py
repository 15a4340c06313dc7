"""Hostile inputs for ``train``, ``eval``, ``predict`` and ``export BUNDLE``, and their controls."""
# ruff: noqa: E501 -- the case tables keep one case per line, however long

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.fixtures.synthetic import make_dataset
from tests.hostile._corpus import Case, img, nan_dataset, run_case, snapshot, yaml_bomb


@dataclass(frozen=True)
class Shared:
    """Bundles every case may read (and must leave untouched)."""

    root: Path
    multi: Path  # 3 classes
    binary: Path  # 2 classes: one sigmoid channel


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Shared:
    from tests.fixtures.bundles import make_bundle

    root = tmp_path_factory.mktemp("bundles")
    return Shared(
        root,
        make_bundle(root / "multi.segflow", classes=3, tile=64),
        make_bundle(root / "binary.segflow", classes=2, tile=64),
    )


def _x(tmp: Path, folder: str = "a", name: str = "x.png") -> Path:
    return img(tmp / folder / name)


def _fake_bundle(tmp: Path, text: str | bytes) -> Path:
    """A bundle folder holding only a hostile ``bundle.yaml`` (read before any weights)."""
    folder = tmp / "bad.segflow"
    folder.mkdir()
    path = folder / "bundle.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return folder


def _truncated(tmp: Path) -> Path:
    path = _x(tmp)
    path.write_bytes(path.read_bytes()[:40])
    return path


def _pred(s: Shared, tmp: Path, *extra: str | Path, bundle: Path | None = None) -> list[str | Path]:
    return ["predict", bundle or s.multi, _x(tmp), "--out", tmp / "out", *extra]


def _ds(tmp: Path) -> Path:
    """A dataset labelled with the test bundles' classes (c0, c1, c2)."""
    import yaml

    root = make_dataset(tmp / "ds", n=4, size=(24, 32))
    meta = yaml.safe_load((root / "dataset.yaml").read_text())
    for c in meta["classes"]:
        c["name"] = f"c{c['id']}"
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta))
    return root


PREDICT: dict[str, Case] = {
    "predict_batch_negative": Case(lambda t, s: _pred(s, t, "--batch", "-1"), 2, ("--batch -1", "at least 1")),
    "predict_batch_zero": Case(lambda t, s: _pred(s, t, "--batch", "0"), 2, ("--batch 0",)),
    "predict_tile_below_stride": Case(lambda t, s: _pred(s, t, "--tile", "8"), 2, ("--tile 8", "32")),
    "predict_tile_zero": Case(lambda t, s: _pred(s, t, "--tile", "0"), 2, ("--tile 0",)),
    "predict_overlap_one": Case(lambda t, s: _pred(s, t, "--overlap", "1"), 2, ("--overlap",)),
    "predict_overlap_negative": Case(lambda t, s: _pred(s, t, "--overlap", "-0.5"), 2, ("--overlap",)),
    "predict_threshold_5": Case(lambda t, s: _pred(s, t, "--threshold", "5", bundle=s.binary), 2, ("--threshold 5", "(0, 1)")),
    "predict_threshold_0": Case(lambda t, s: _pred(s, t, "--threshold", "0", bundle=s.binary), 2, ("--threshold 0",)),
    "predict_threshold_1": Case(lambda t, s: _pred(s, t, "--threshold", "1", bundle=s.binary), 2, ("--threshold 1",)),
    "predict_threshold_on_multiclass": Case(lambda t, s: _pred(s, t, "--threshold", "0.5"), 2, ("--threshold", "multiclass", "binary models only")),
    "predict_threshold_5_on_multiclass": Case(lambda t, s: _pred(s, t, "--threshold", "5"), 2, ("--threshold",)),
    "predict_same_name_two_folders": Case(lambda t, s: ["predict", s.multi, _x(t, "a"), _x(t, "b"), "--out", t / "out"], 2, ("x.png", "overwrite")),
    "predict_same_stem_two_formats": Case(lambda t, s: ["predict", s.multi, _x(t, "a"), _x(t, "a", "x.jpg"), "--out", t / "out"], 2, ("x.jpg", "overwrite")),
    "predict_out_is_a_file": Case(lambda t, s: ["predict", s.multi, _x(t), "--out", img(t / "o.png")], 2, ("o.png", "not a folder")),
    "predict_input_missing": Case(lambda t, s: ["predict", s.multi, t / "nope.png", "--out", t / "out"], 1, ("nope.png", "not found")),
    "predict_empty_folder": Case(lambda t, s: ["predict", s.multi, (t / "e").mkdir() or t / "e", "--out", t / "out"], 1, ("e", "no images")),
    "predict_glob_matches_nothing": Case(lambda t, s: ["predict", s.multi, str(t / "*.tif"), "--out", t / "out"], 1, ("*.tif", "no image")),
    "predict_bundle_missing": Case(lambda t, s: ["predict", t / "none.segflow", _x(t), "--out", t / "out"], 1, ("bundle.yaml",)),
    "predict_bundle_yaml_not_utf8": Case(lambda t, s: ["predict", _fake_bundle(t, b"name: caf\xe9\n"), _x(t), "--out", t / "out"], 1, ("bundle.yaml", "UTF-8")),
    "predict_bundle_yaml_alias_bomb": Case(lambda t, s: ["predict", _fake_bundle(t, yaml_bomb()), _x(t), "--out", t / "out"], 1, ("bundle.yaml", "alias")),
    "predict_bundle_yaml_python_tag": Case(lambda t, s: ["predict", _fake_bundle(t, "arch: !!python/name:os.system\n"), _x(t), "--out", t / "out"], 1, ("bundle.yaml", "YAML")),
    "predict_bundle_yaml_a_list": Case(lambda t, s: ["predict", _fake_bundle(t, "- 1\n"), _x(t), "--out", t / "out"], 1, ("bundle.yaml", "mapping")),
    "predict_tta_unknown": Case(lambda t, s: _pred(s, t, "--tta", "d"), 2, ("TTA",)),
    "predict_combine_unknown": Case(lambda t, s: _pred(s, t, "--combine", "max"), 2, ("--combine",)),
    "predict_polygons_unknown": Case(lambda t, s: _pred(s, t, "--polygons", "shp"), 2, ("--polygons",)),
    "predict_min_size_not_a_number": Case(lambda t, s: _pred(s, t, "--min-size", "class1=abc"), 2, ("--min-size",)),
    "predict_fill_holes_unknown_class": Case(lambda t, s: _pred(s, t, "--fill-holes", "dragon"), 2, ("dragon",)),
    "predict_truncated_image": Case(lambda t, s: ["predict", s.multi, _truncated(t), "--out", t / "out"], 1, ("x.png",)),
}  # fmt: skip

EVAL: dict[str, Case] = {
    "eval_bundle_missing": Case(lambda t, s: ["eval", t / "none.segflow", _ds(t), "--out", t / "ev"], 1, ("bundle.yaml",)),
    "eval_bundle_yaml_not_utf8": Case(lambda t, s: ["eval", _fake_bundle(t, b"\xff\xfe"), _ds(t), "--out", t / "ev"], 1, ("bundle.yaml", "UTF-8")),
    "eval_dataset_missing": Case(lambda t, s: ["eval", s.multi, t / "nods", "--out", t / "ev"], 1, ("nods",)),
    "eval_unknown_split": Case(lambda t, s: ["eval", s.multi, _ds(t), "--split", "dev", "--out", t / "ev"], 2, ("dev",)),
    "eval_tta_unknown": Case(lambda t, s: ["eval", s.multi, _ds(t), "--split", "all", "--tta", "x", "--out", t / "ev"], 2, ("TTA",)),
    "eval_out_is_a_file": Case(lambda t, s: ["eval", s.multi, _ds(t), "--split", "all", "--out", img(t / "f.png")], 2, ("f.png", "already exists")),
    "eval_worst_k_negative": Case(lambda t, s: ["eval", s.multi, _ds(t), "--split", "all", "--worst-k", "-1", "--out", t / "ev"], 2, ("worst_k",)),
    "eval_dataset_yaml_alias_bomb": Case(lambda t, s: ["eval", s.multi, _bomb_ds(t), "--split", "all", "--out", t / "ev"], 1, ("dataset.yaml", "alias")),
}  # fmt: skip


def _bomb_ds(tmp: Path) -> Path:
    root = _ds(tmp)
    (root / "dataset.yaml").write_text(yaml_bomb())
    return root


EXPORT: dict[str, Case] = {
    "export_bundle_without_format": Case(lambda t, s: ["export", s.multi], 2, ("--format",)),
    "export_bundle_unknown_format": Case(lambda t, s: ["export", s.multi, "--format", "tflite"], 2, ("tflite",)),
    "export_bundle_opset_3": Case(lambda t, s: ["export", s.multi, "--format", "onnx", "--opset", "3"], 2, ("opset 3",)),
    "export_bundle_with_paths": Case(lambda t, s: ["export", s.multi, t / "x.onnx", "--format", "onnx"], 2, ("no further paths",)),
    "export_bundle_yaml_bomb": Case(lambda t, s: ["export", _fake_bundle(t, yaml_bomb()), "--format", "onnx"], 1, ("bundle.yaml", "alias")),
    "export_bundle_negative_tolerance": Case(lambda t, s: ["export", s.multi, "--format", "onnx", "--tolerance", "-1"], 2, ("--tolerance",)),
    "export_torchscript_with_opset": Case(lambda t, s: ["export", s.multi, "--format", "torchscript", "--opset", "17"], 2, ("--opset",)),
}  # fmt: skip


def _train(tmp: Path, *sets: str, data: bool = True) -> list[str | Path]:
    args: list[str | Path] = ["train", *(["--data", _ds(tmp)] if data else [])]
    args += ["--set", f"train.output={tmp / 'runs'}", "--set", "model.encoder_weights=null"]
    for item in sets:
        args += ["--set", item]
    return args


def _config(tmp: Path, text: str) -> Path:
    path = tmp / "c.yaml"
    path.write_text(text)
    return path


TRAIN: dict[str, Case] = {
    "train_num_workers_negative": Case(lambda t, s: _train(t, "data.num_workers=-1"), 2, ("data.num_workers",)),
    "train_devices_zero": Case(lambda t, s: _train(t, "train.devices=0"), 2, ("train.devices",)),
    "train_limit_train_batches_zero": Case(lambda t, s: _train(t, "train.limit_train_batches=0"), 2, ("train.limit_train_batches",)),
    "train_limit_train_batches_zero_share": Case(lambda t, s: _train(t, "train.limit_train_batches=0.0"), 2, ("train.limit_train_batches",)),
    "train_accelerator_mps": Case(lambda t, s: _train(t, "train.accelerator=mps"), 2, ("train.accelerator=mps",)),
    "train_class_weights_wrong_length": Case(lambda t, s: ["train", _config(t, "train: {epochs: 1}\n"), *_train(t, "loss.class_weights=[1, 2]")[1:]], 2, ("loss.class_weights", "3 classes")),
    "train_no_dataset": Case(lambda t, s: _train(t, data=False), 2, ("--data",)),
    "train_dataset_missing": Case(lambda t, s: ["train", "--data", t / "nods", "--set", f"train.output={t / 'runs'}", "--budget", "1m"], 1, ("nods",)),
    "train_config_alias_bomb": Case(lambda t, s: ["train", _config(t, "model:\n  kwargs:\n" + "".join(f"    {x}\n" for x in yaml_bomb().splitlines())), "--data", _ds(t)], 2, ("c.yaml", "alias")),
    "train_config_not_utf8": Case(lambda t, s: ["train", _config(t, "a") and (t / "c.yaml").write_bytes(b"\xe9: 1\n") and t / "c.yaml", "--data", _ds(t)], 2, ("c.yaml", "UTF-8")),
    "train_budget_with_config": Case(lambda t, s: ["train", _config(t, "train: {epochs: 1}\n"), "--data", _ds(t), "--budget", "1m"], 2, ("--budget",)),
    "train_unknown_key": Case(lambda t, s: _train(t, "train.epoch=1"), 2, ("train.epoch", "did you mean")),
    "train_fold_negative": Case(lambda t, s: _train(t, "data.fold=-2"), 2, ("data.fold",)),
    "train_nan_pixels_with_a_config": Case(lambda t, s: ["train", _config(t, "train: {epochs: 1}\n"), "--data", nan_dataset(t), "--set", f"train.output={t / 'runs'}", "--set", "model.encoder_weights=null"], 1, ("s001.tif", "NaN")),
    "train_seed_out_of_range": Case(lambda t, s: _train(t, "train.seed=-5"), 2, ("train.seed",)),
}  # fmt: skip


def _no_gpu() -> bool:
    import torch

    return not torch.cuda.is_available()


if _no_gpu():  # on a GPU machine this is a valid setting
    TRAIN["train_accelerator_gpu_without_one"] = Case(
        lambda t, s: _train(t, "train.accelerator=gpu"), 2, ("train.accelerator=gpu", "no gpu")
    )

CASES: dict[str, Case] = {**PREDICT, **EVAL, **EXPORT, **TRAIN}


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_command_refuses(name: str, tmp_path: Path, shared: Shared) -> None:
    run_case(CASES[name], tmp_path, shared, shared.root)


# ------------------------------------------------------------------------------------------------
# Controls


def test_control_predict_writes_every_input_once(tmp_path: Path, shared: Shared) -> None:
    """Two inputs with different stems, one given twice: every mask once, batch 1 and a small tile."""
    a, b = _x(tmp_path, "a", "p.png"), _x(tmp_path, "b", "q.png")
    before = snapshot(shared.root)
    res = run_cli("predict", shared.binary, a, b, a, "--out", tmp_path / "out",
                  "--batch", "1", "--tile", "32", "--threshold", "0.3")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    assert "2 image(s) predicted" in res.stdout
    from PIL import Image

    for stem in ("p", "q"):
        labels = np.asarray(Image.open(tmp_path / "out" / f"{stem}.png"))
        assert labels.shape == (24, 32) and set(np.unique(labels)) <= {0, 1}
    assert snapshot(shared.root) == before


def test_batch_one_and_default_batch_agree(tmp_path: Path, shared: Shared) -> None:
    """``--batch 1`` runs every tile (the mask equals the default batch's), never uninitialised."""
    from PIL import Image

    image = img(tmp_path / "big.png", (150, 110))
    outs = []
    for i, extra in enumerate((["--batch", "1"], [])):
        out = tmp_path / f"o{i}"
        res = run_cli("predict", shared.multi, image, "--out", out, "--tile", "64", *extra)
        assert res.exit_code == 0, res.stderr
        outs.append(np.asarray(Image.open(out / "big.png")))
    assert np.array_equal(outs[0], outs[1])


def test_control_eval_scores_every_image(tmp_path: Path, shared: Shared) -> None:
    import json

    res = run_cli("eval", shared.multi, _ds(tmp_path), "--split", "all", "--out", tmp_path / "ev")
    assert res.exit_code == 0, res.stderr
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n_images"] == 4 and 0 <= metrics["macro"]["iou"] <= 1


def test_corpus_size() -> None:
    assert len(CASES) >= 50
