"""MMSeg importer on mmsegmentation's pseudo dataset and on generated img_dir/ann_dir layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segflow.data.dataset import CanonicalDataset
from segflow.data.formats.base import ImportOptions, run_import
from segflow.data.image_io import read_mask
from segflow.errors import DataError

PSEUDO = "mmseg/pseudo_dataset"
INDEX_SETS = {"00000": {0, 2}, "00001": {0, 1}, "00002": {0, 2}, "00003": {0, 3}, "00004": {0, 3}}


def _indices(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "P"
        return np.array(img)


def test_pseudo_dataset_indices_not_colours(real: Path, tmp_path: Path) -> None:
    report = run_import("mmseg", real / PSEUDO, tmp_path / "ds")
    assert report.meta.class_names == ["background", "class_1", "class_2", "class_3"]
    assert [(s.stem, s.width, s.height) for s in report.samples] == [
        (s, 256, 128) for s in INDEX_SETS
    ]
    expected = np.zeros(4, np.int64)
    for stem, index_set in INDEX_SETS.items():
        original = _indices(real / PSEUDO / "gts" / f"{stem}_gt.png")
        mask = read_mask(tmp_path / "ds" / "masks" / f"{stem}.png")
        np.testing.assert_array_equal(mask, original)
        assert set(np.unique(mask).tolist()) == index_set
        expected += np.bincount(original.ravel(), minlength=4)
    counts = report.class_pixels
    assert [counts[n] for n in report.meta.class_names] == expected.tolist()
    assert counts["ignore"] == 0 and report.warnings == []
    splits = CanonicalDataset(tmp_path / "ds").splits()
    assert {s: r.split for s, r in splits.items()} == {
        "00000": "train", "00001": "train", "00002": "train", "00003": "train", "00004": "val",
    }  # fmt: skip


def test_reduce_zero_label_and_classes_file(real: Path, tmp_path: Path) -> None:
    report = run_import(
        "mmseg", real / PSEUDO, tmp_path / "r", ImportOptions(reduce_zero_label=True)
    )
    assert report.meta.class_names == ["class_0", "class_1", "class_2"]
    original = _indices(real / PSEUDO / "gts" / "00003_gt.png")
    mask = read_mask(tmp_path / "r" / "masks" / "00003.png")
    np.testing.assert_array_equal(mask, np.where(original == 0, 255, original - 1))
    classes = tmp_path / "c.txt"
    classes.write_text("bg\nroad\n")
    with pytest.raises(
        DataError, match=r"0000[0234]_gt\.png: pixel value [23] is not a class id \(0\.\.1\)"
    ):
        run_import("mmseg", real / PSEUDO, tmp_path / "c", ImportOptions(classes=classes))
    assert not (tmp_path / "c").exists()


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_img_dir_ann_dir_split_folders(tmp_path: Path) -> None:
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for split, stems in (("train", ["a", "b"]), ("val", ["c"])):
        for stem in stems:
            _save(
                src / "img_dir" / split / f"{stem}.jpg",
                rng.integers(0, 255, (8, 12, 3), dtype=np.uint8),
            )
            ann = np.zeros((8, 12), np.uint8)
            ann[:2] = 5
            ann[-1] = 255
            _save(src / "ann_dir" / split / f"{stem}.png", ann)
    _save(src / "img_dir" / "train" / "lonely.jpg", np.zeros((8, 12, 3), np.uint8))
    report = run_import("mmseg", src, tmp_path / "ds")
    assert report.meta.class_names == ["background", *(f"class_{i}" for i in range(1, 6))]
    assert report.class_pixels["class_5"] == 3 * 24 and report.class_pixels["ignore"] == 3 * 12
    rows = CanonicalDataset(tmp_path / "ds").splits()
    assert {s: r.split for s, r in rows.items()} == {"a": "train", "b": "train", "c": "val"}
    assert any("lonely.jpg" in w for w in report.warnings)


def test_bad_inputs(real: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no image folder \(img_dir/, images/, imgs/, img/\)"):
        run_import("mmseg", real / "voc" / "datumaro_voc_dataset1", tmp_path / "o1")
    src = tmp_path / "size"
    _save(src / "images" / "a.png", np.zeros((8, 12, 3), np.uint8))
    _save(src / "annotations" / "a.png", np.zeros((9, 12), np.uint8))
    with pytest.raises(
        DataError, match=r"annotations/a\.png: mask is 12x9 but the image a\.png is 12x8"
    ):
        run_import("mmseg", src, tmp_path / "o2")
    src = tmp_path / "rgb"
    _save(src / "images" / "a.png", np.zeros((8, 12, 3), np.uint8))
    _save(src / "annotations" / "a.png", np.full((8, 12, 3), (1, 2, 3), np.uint8))
    with pytest.raises(DataError, match=r"annotations/a\.png: is an RGB colour image"):
        run_import("mmseg", src, tmp_path / "o3")
    src = tmp_path / "names"
    _save(src / "images" / "a.png", np.zeros((8, 12, 3), np.uint8))
    _save(src / "annotations" / "b.png", np.zeros((8, 12), np.uint8))
    with pytest.raises(DataError, match=r"no image name matches an annotation name .*--img-suffix"):
        run_import("mmseg", src, tmp_path / "o4")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


def test_explicit_suffixes(real: Path, tmp_path: Path) -> None:
    options = ImportOptions(img_suffix="_img.jpg", seg_suffix="_gt.png")
    report = run_import("mmseg", real / PSEUDO, tmp_path / "ds", options)
    assert [s.stem for s in report.samples] == list(INDEX_SETS)


def test_cli_import_and_error(real: Path, tmp_path: Path, cli) -> None:
    result = cli("import", "mmseg", real / PSEUDO, tmp_path / "ok")
    assert result.exit_code == 0, result.stderr
    src = tmp_path / "src"
    _save(src / "imgs" / "x_img.png", np.zeros((8, 12, 3), np.uint8))
    _save(src / "gts" / "x_gt.png", np.zeros((9, 12), np.uint8))
    result = cli("import", "mmseg", src, tmp_path / "bad")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "x_gt.png" in lines[0]
    assert not (tmp_path / "bad").exists()
