"""PASCAL VOC importer on datumaro's VOC fixture and on generated palette/RGB masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segflow.data.dataset import CanonicalDataset, default_color
from segflow.data.formats.base import ImportOptions, run_import
from segflow.data.formats.voc import VOC_CLASSES
from segflow.data.image_io import read_mask
from segflow.errors import DataError

VOC = "voc/datumaro_voc_dataset1"


def test_fixture_rgb_mask_bicycle_and_unlabelled_listed_image(real: Path, tmp_path: Path) -> None:
    report = run_import("voc", real / VOC, tmp_path / "ds")
    assert report.meta.class_names == list(VOC_CLASSES)
    assert [s.stem for s in report.samples] == ["2007_000001"]
    mask = read_mask(tmp_path / "ds" / "masks" / "2007_000001.png")
    assert mask.shape == (10, 20) and mask.tolist() == [[2] * 20] * 10
    assert report.class_pixels["bicycle"] == 200 and report.class_pixels["ignore"] == 0
    assert len(report.warnings) == 1 and "2007_000002" in report.warnings[0]
    splits = CanonicalDataset(tmp_path / "ds").splits()
    assert {s: r.split for s, r in splits.items()} == {"2007_000001": "train"}


def _palette_png(path: Path, indices: np.ndarray) -> None:
    img = Image.fromarray(indices.astype(np.uint8), mode="P")
    img.putpalette([c for i in range(256) for c in default_color(i)])
    img.save(path)


def _voc(
    root: Path, masks: dict[str, np.ndarray | Image.Image], size: tuple[int, int] = (10, 20)
) -> Path:
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    for stem, mask in masks.items():
        Image.new("RGB", (size[1], size[0]), (90, 90, 90)).save(root / "JPEGImages" / f"{stem}.jpg")
        if isinstance(mask, Image.Image):
            mask.save(root / "SegmentationClass" / f"{stem}.png")
        else:
            _palette_png(root / "SegmentationClass" / f"{stem}.png", mask)
    (root / "ImageSets/Segmentation/trainval.txt").write_text("\n".join(masks) + "\n")
    return root


def test_palette_mask_with_void_border(tmp_path: Path) -> None:
    indices = np.full((10, 20), 255, np.uint8)
    indices[1:-1, 1:-1] = 15  # person inside a 1-px void border
    indices[3:5, 3:6] = 0
    _voc(tmp_path / "VOCdevkit" / "VOC2012", {"a": indices})
    report = run_import("voc", tmp_path / "VOCdevkit", tmp_path / "ds")  # VOC2012/ is found inside
    counts = report.class_pixels
    assert counts["ignore"] == 200 - 18 * 8
    assert counts["person"] == 18 * 8 - 6 and counts["background"] == 6
    np.testing.assert_array_equal(read_mask(tmp_path / "ds" / "masks" / "a.png"), indices)
    # trainval.txt counts as train when there is no train.txt / val.txt
    assert CanonicalDataset(tmp_path / "ds").splits()["a"].split == "train"


def test_labelmap_rgb_mask_and_void_colour(tmp_path: Path) -> None:
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[:, 10:] = (10, 200, 30)  # 'dog' in labelmap.txt
    rgb[0] = (224, 224, 192)
    root = _voc(tmp_path / "voc", {"a": Image.fromarray(rgb)})
    (root / "labelmap.txt").write_text(
        "# label:color_rgb:parts:actions\nbackground:0,0,0::\ncat:128,0,0::\ndog:10,200,30:leg:\n"
    )
    report = run_import("voc", root, tmp_path / "ds")
    assert report.meta.class_names == ["background", "cat", "dog"]
    assert [c.color for c in report.meta.classes][2] == (10, 200, 30)
    assert report.class_pixels == {"background": 90, "cat": 0, "dog": 90, "ignore": 20}


def test_bad_colour_index_size_and_folder(real: Path, tmp_path: Path) -> None:
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[5, 5] = (1, 2, 3)
    root = _voc(tmp_path / "rgb", {"a": Image.fromarray(rgb)})
    with pytest.raises(
        DataError,
        match=r"SegmentationClass/a\.png: colour \(1, 2, 3\) not in the colour table of the 21",
    ):
        run_import("voc", root, tmp_path / "o1")
    idx = np.zeros((10, 20), np.uint8)
    idx[0, 0] = 30
    root = _voc(tmp_path / "idx", {"b": idx})
    with pytest.raises(DataError, match=r"b\.png: pixel value 30 is not a class id \(0\.\.20\)"):
        run_import("voc", root, tmp_path / "o2")
    root = _voc(tmp_path / "size", {"c": np.zeros((12, 20), np.uint8)})
    with pytest.raises(DataError, match=r"c\.png: mask is 20x12 but the image c\.jpg is 20x10"):
        run_import("voc", root, tmp_path / "o3")
    with pytest.raises(
        DataError, match="not a PASCAL VOC segmentation folder: JPEGImages/ and SegmentationClass/"
    ):
        run_import("voc", real / "mmseg" / "pseudo_dataset", tmp_path / "o4")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


def test_classes_file_renames_ids(real: Path, tmp_path: Path) -> None:
    classes = tmp_path / "c.txt"
    classes.write_text("bg\nplane\nbike\n")
    report = run_import("voc", real / VOC, tmp_path / "ds", ImportOptions(classes=classes))
    assert report.meta.class_names == ["bg", "plane", "bike"]
    assert report.class_pixels["bike"] == 200


def test_cli_import_and_error(real: Path, tmp_path: Path, cli) -> None:
    result = cli("import", "voc", real / VOC, tmp_path / "ok")
    assert result.exit_code == 0, result.stderr
    assert "2007_000002" in result.stderr  # the unlabelled image is reported as a warning
    root = _voc(tmp_path / "src", {"a": np.zeros((12, 20), np.uint8)})
    result = cli("import", "voc", root, tmp_path / "bad")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "a.png" in lines[0]
    assert not (tmp_path / "bad").exists()
