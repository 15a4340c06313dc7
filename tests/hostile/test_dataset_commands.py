"""Hostile inputs for ``check``, ``split``, ``plan``, ``config show``, ``export coco``, ``quickstart``."""
# ruff: noqa: E501 -- the case tables keep one case per line, however long

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import run_cli
from tests.fixtures.synthetic import make_dataset
from tests.hostile._corpus import Case, error_line, nan_dataset, run_case, yaml_bomb


def _ds(tmp: Path, n: int = 3) -> Path:
    return make_dataset(tmp / "ds", n=n, size=(24, 32))


def _with(tmp: Path, name: str, data: str | bytes) -> Path:
    root = _ds(tmp)
    target = root / name
    if isinstance(data, bytes):
        target.write_bytes(data)
    else:
        target.write_text(data)
    return root


def _file(tmp: Path, name: str, data: str | bytes) -> Path:
    path = tmp / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


def _no_masks(tmp: Path) -> Path:
    root = _ds(tmp)
    shutil.rmtree(root / "masks")
    return root


BAD_META = "name: x\nclasses: [{id: 3, name: a, color: [0, 0, 0]}]\n"

CHECK: dict[str, Case] = {
    "check_not_a_dataset": Case(lambda t, s: ["check", (t / "ds" / "images").mkdir(parents=True) or t / "ds"], 1, ("dataset.yaml", "not found")),
    "check_dataset_yaml_not_dense": Case(lambda t, s: ["check", _with(t, "dataset.yaml", BAD_META)], 1, ("dataset.yaml", "dense")),
    "check_dataset_yaml_not_utf8": Case(lambda t, s: ["check", _with(t, "dataset.yaml", b"name: caf\xe9\n")], 1, ("dataset.yaml", "UTF-8")),
    "check_dataset_yaml_alias_bomb": Case(lambda t, s: ["check", _with(t, "dataset.yaml", yaml_bomb())], 1, ("dataset.yaml", "alias")),
    "check_dataset_yaml_recursive_alias": Case(lambda t, s: ["check", _with(t, "dataset.yaml", "a: &a [*a]\n")], 1, ("dataset.yaml", "recursive")),
    "check_dataset_yaml_python_tag": Case(lambda t, s: ["check", _with(t, "dataset.yaml", "name: !!python/object/apply:os.system [id]\n")], 1, ("dataset.yaml", "YAML")),
    "check_dataset_yaml_a_list": Case(lambda t, s: ["check", _with(t, "dataset.yaml", "- a\n- b\n")], 1, ("dataset.yaml", "mapping")),
    "check_exclude_unknown_stem": Case(lambda t, s: ["check", _ds(t), "--exclude", _file(t, "ex.txt", "s000\nmissing_one\n")], 1, ("ex.txt", "missing_one")),
    "check_exclude_not_utf8": Case(lambda t, s: ["check", _ds(t), "--exclude", _file(t, "ex.txt", b"s\xe9\n")], 1, ("ex.txt", "UTF-8")),
    "check_splits_csv_not_utf8": Case(lambda t, s: ["check", _with(t, "splits.csv", b"stem,split\ns\xe9,train\n")], 1, ("splits.csv", "UTF-8")),
    "check_report_is_a_folder": Case(lambda t, s: ["check", _ds(t), "--report", (t / "r").mkdir() or t / "r"], 2, ("r",)),
    "check_workers_zero": Case(lambda t, s: ["check", _ds(t), "--workers", "0"], 2, ("--workers",)),
}  # fmt: skip

SPLIT: dict[str, Case] = {
    "split_fractions_sum_over_1": Case(lambda t, s: ["split", _ds(t), "--val", "0.7", "--test", "0.4"], 2, ("--val", "sum to less than 1")),
    "split_negative_val": Case(lambda t, s: ["split", _ds(t), "--val", "-0.1"], 2, ("--val",)),
    "split_bad_regex": Case(lambda t, s: ["split", _ds(t), "--group-by", "Image_(\\d+"], 2, ("--group-by", "regular expression")),
    "split_one_fold": Case(lambda t, s: ["split", _ds(t), "--folds", "1"], 2, ("--folds",)),
    "split_no_masks": Case(lambda t, s: ["split", _no_masks(t)], 1, ("ds", "no labelled images")),
    "split_splits_csv_bad_fold": Case(lambda t, s: ["split", _with(t, "splits.csv", "stem,split,group,fold\ns000,train,,x\n")], 1, ("splits.csv", "line 2", "'x'")),
    "split_splits_csv_not_utf8": Case(lambda t, s: ["split", _with(t, "splits.csv", b"stem,split\ns\xe9,train\n")], 1, ("splits.csv", "UTF-8")),
    "split_workers_negative": Case(lambda t, s: ["split", _ds(t), "--workers", "-2"], 2, ("--workers",)),
}  # fmt: skip

PLAN: dict[str, Case] = {
    "plan_nan_pixels": Case(lambda t, s: ["plan", nan_dataset(t), "--out", t / "c.yaml", "--timing", "table"], 1, ("s001.tif", "NaN")),
    "plan_bad_budget": Case(lambda t, s: ["plan", _ds(t), "--out", t / "c.yaml", "--budget", "soon"], 2, ("soon",)),
    "plan_zero_budget": Case(lambda t, s: ["plan", _ds(t), "--out", t / "c.yaml", "--budget", "0s"], 2, ("0s",)),
    "plan_unknown_set_key": Case(lambda t, s: ["plan", _ds(t), "--out", t / "c.yaml", "--set", "model.encodr=resnet18"], 2, ("model.encodr", "did you mean model.encoder")),
    "plan_out_exists": Case(lambda t, s: ["plan", _ds(t), "--out", _file(t, "c.yaml", "mine: 1\n"), "--timing", "table"], 2, ("c.yaml", "exists")),
    "plan_bad_timing": Case(lambda t, s: ["plan", _ds(t), "--out", t / "c.yaml", "--timing", "guess"], 2, ("guess",)),
    "plan_dataset_missing": Case(lambda t, s: ["plan", t / "nowhere", "--out", t / "c.yaml"], 1, ("nowhere",)),
}  # fmt: skip

CONFIG: dict[str, Case] = {
    "config_alias_bomb_in_model_kwargs": Case(lambda t, s: ["config", "show", _file(t, "c.yaml", "model:\n  kwargs:\n" + "".join(f"    {line}\n" for line in yaml_bomb().splitlines()))], 2, ("c.yaml", "alias")),
    "config_recursive_alias": Case(lambda t, s: ["config", "show", _file(t, "c.yaml", "model:\n  kwargs: &k {a: *k}\n")], 2, ("c.yaml", "recursive")),
    "config_python_tag": Case(lambda t, s: ["config", "show", _file(t, "c.yaml", "model: !!python/object/apply:os.system [id]\n")], 2, ("c.yaml", "YAML")),
    "config_not_utf8": Case(lambda t, s: ["config", "show", _file(t, "c.yaml", b"model:\n  arch: caf\xe9\n")], 2, ("c.yaml", "UTF-8")),
    "config_not_a_mapping": Case(lambda t, s: ["config", "show", _file(t, "c.yaml", "- data\n")], 2, ("c.yaml", "mapping")),
    "config_missing_file": Case(lambda t, s: ["config", "show", t / "nope.yaml"], 2, ("nope.yaml", "not found")),
    "config_unknown_key": Case(lambda t, s: ["config", "show", "--set", "train.epoch=3"], 2, ("train.epoch", "did you mean train.epochs")),
    "config_bad_set_syntax": Case(lambda t, s: ["config", "show", "--set", "train.epochs"], 2, ("KEY=VALUE",)),
    "config_num_workers_negative": Case(lambda t, s: ["config", "show", "--set", "data.num_workers=-1"], 2, ("data.num_workers", "greater than or equal to 0")),
    "config_devices_zero": Case(lambda t, s: ["config", "show", "--set", "train.devices=0"], 2, ("train.devices", "greater than or equal to 1")),
    "config_limit_train_batches_zero": Case(lambda t, s: ["config", "show", "--set", "train.limit_train_batches=0"], 2, ("train.limit_train_batches",)),
    "config_limit_train_batches_share_over_1": Case(lambda t, s: ["config", "show", "--set", "train.limit_train_batches=1.5"], 2, ("train.limit_train_batches", "(0, 1]")),
    "config_limit_val_batches_zero_share": Case(lambda t, s: ["config", "show", "--set", "train.limit_val_batches=0.0"], 2, ("train.limit_val_batches",)),
    "config_seed_negative": Case(lambda t, s: ["config", "show", "--set", "train.seed=-1"], 2, ("train.seed",)),
    "config_seed_over_uint32": Case(lambda t, s: ["config", "show", "--set", f"train.seed={2**32}"], 2, ("train.seed",)),
    "config_fold_negative": Case(lambda t, s: ["config", "show", "--set", "data.fold=-1"], 2, ("data.fold",)),
    "config_lr_zero": Case(lambda t, s: ["config", "show", "--set", "optimizer.lr=0"], 2, ("optimizer.lr",)),
    "config_tile_too_small": Case(lambda t, s: ["config", "show", "--set", "data.tile_size=8"], 2, ("data.tile_size",)),
    "config_batch_zero": Case(lambda t, s: ["config", "show", "--set", "data.batch_size=0"], 2, ("data.batch_size",)),
}  # fmt: skip

EXPORT_AND_QUICKSTART: dict[str, Case] = {
    "export_unknown_target": Case(lambda t, s: ["export", "yolo", _ds(t), t / "out.json"], 2, ("'yolo'", "coco")),
    "export_coco_out_exists": Case(lambda t, s: ["export", "coco", _ds(t), _file(t, "out.json", "{}")], 2, ("out.json", "exists")),
    "export_coco_one_path": Case(lambda t, s: ["export", "coco", _ds(t)], 2, ("DATASET OUT",)),
    "export_coco_bad_dataset_yaml": Case(lambda t, s: ["export", "coco", _with(t, "dataset.yaml", b"\xff\xfe"), t / "o.json"], 1, ("dataset.yaml", "UTF-8")),
    "export_coco_out_name_too_long": Case(lambda t, s: ["export", "coco", _ds(t), t / ("o" * 300 + ".json")], 2, ("file name too long",)),
    "quickstart_out_is_a_file": Case(lambda t, s: ["quickstart", "--out", _file(t, "qs", "x")], 2, ("qs",)),
}  # fmt: skip

CASES: dict[str, Case] = {**CHECK, **SPLIT, **PLAN, **CONFIG, **EXPORT_AND_QUICKSTART}


@pytest.mark.parametrize("name", sorted(CASES))
def test_dataset_command_refuses(name: str, tmp_path: Path) -> None:
    run_case(CASES[name], tmp_path, None)


# ------------------------------------------------------------------------------------------------
# Controls and findings


def test_check_reports_nan_pixels_as_an_error_finding(tmp_path: Path) -> None:
    root = nan_dataset(tmp_path)
    res = run_cli("check", root, "--json", tmp_path / "qa.json")
    assert res.exit_code == 1, res.stderr
    assert "Traceback" not in res.stderr
    import json

    findings = json.loads((tmp_path / "qa.json").read_text())["findings"]
    nan = [f for f in findings if "NaN" in f["message"]]
    assert nan and nan[0]["severity"] == "error" and nan[0]["stems"] == ["s001"]


def test_check_handles_a_100000_by_1_image(tmp_path: Path) -> None:
    root = _ds(tmp_path)
    cv2.imwrite(str(root / "images" / "s000.png"), np.zeros((1, 100_000, 3), np.uint8))
    cv2.imwrite(str(root / "masks" / "s000.png"), np.ones((1, 100_000), np.uint8))
    res = run_cli("check", root)
    assert res.exit_code in (0, 1) and "Traceback" not in res.stderr, res.stderr
    assert (root / "qa_report.html").is_file()


def test_controls_split_plan_config_export(tmp_path: Path) -> None:
    root = _ds(tmp_path, n=6)
    assert run_cli("check", root).exit_code == 0
    assert run_cli("split", root, "--val", "0.2", "--test", "0.2").exit_code == 0
    res = run_cli("plan", root, "--out", tmp_path / "c.yaml", "--timing", "table", "--budget", "1m")
    assert res.exit_code == 0, res.stderr
    assert "nan" not in (tmp_path / "c.yaml").read_text().lower()
    anchors = tmp_path / "anchors.yaml"
    anchors.write_text("model:\n  kwargs: {a: &x [1, 2], b: *x}\n")  # small aliases are fine
    shown = run_cli("config", "show", anchors, "--set", "train.limit_train_batches=2")
    assert shown.exit_code == 0, shown.stderr
    assert '"a": [1, 2], "b": [1, 2]' in shown.stdout
    assert run_cli("export", "coco", root, tmp_path / "c.json").exit_code == 0


def test_one_line_even_for_click_level_mistakes_we_own(tmp_path: Path) -> None:
    """Our range errors are one line, not click's three-line usage block."""
    res = run_cli("split", _ds(tmp_path), "--val", "1.5")
    assert res.exit_code == 2
    assert "--val" in error_line(res.stderr)


def test_corpus_size() -> None:
    assert len(CASES) >= 50
