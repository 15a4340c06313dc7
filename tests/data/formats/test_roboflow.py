"""Roboflow importer: the semantic-mask export and the COCO segmentation export."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segflow.data.dataset import CanonicalDataset
from segflow.data.formats.base import run_import
from segflow.data.image_io import read_mask
from segflow.errors import DataError

DHCN_CLASSES = [
    "background",
    "cabinet",
    "ceiling",
    "chair",
    "door",
    "elevator",
    "railing",
    "road",
    "stair",
    "tree",
    "wall",
]
# SOURCES.md: class ids present per frame.
DHCN_FRAMES = {
    "0029": {0, 2, 3, 4, 6, 7, 8, 9, 10},
    "0207": {0, 4, 5, 6, 7, 9, 10},
    "0408": {0, 1, 2, 3, 4, 7, 9, 10},
}


def _masks(out: Path) -> dict[str, np.ndarray]:
    return {p.stem: read_mask(p) for p in sorted((out / "masks").glob("*.png"))}


def test_semantic_masks_pixel_values_are_class_ids(real: Path, tmp_path: Path) -> None:
    src = real / "roboflow" / "semantic_masks"
    report = run_import("roboflow", src, tmp_path / "ds")
    assert report.meta.class_names == DHCN_CLASSES
    masks = _masks(tmp_path / "ds")
    assert len(masks) == 3
    total = np.zeros(256, np.int64)
    for stem, mask in masks.items():
        source = np.asarray(Image.open(src / "test" / f"{stem}_mask.png"))
        np.testing.assert_array_equal(mask, source)
        total += np.bincount(source.ravel(), minlength=256)
        assert set(np.unique(mask).tolist()) == DHCN_FRAMES[stem[len("frame_") : len("frame_0000")]]
        image = tmp_path / "ds" / "images" / f"{stem}.jpg"
        assert image.read_bytes() == (src / "test" / f"{stem}.jpg").read_bytes()
    assert report.class_pixels == {
        **{name: int(total[i]) for i, name in enumerate(DHCN_CLASSES)},
        "ignore": 0,
    }
    assert sum(report.class_pixels.values()) == 3 * 640 * 640
    ds = CanonicalDataset(tmp_path / "ds")
    assert {r.split for r in ds.splits().values()} == {"test"}
    assert "License: CC BY 4.0" in ds.meta.notes
    assert "https://universe.roboflow.com/tqbdataset/dhcn_dataset" in ds.meta.notes
    assert "exported via roboflow.com on September 1, 2024" in ds.meta.notes
    assert len(ds.meta.notes.splitlines()) <= 5
    assert report.warnings == []


def test_coco_segmentation_drops_placeholder_and_keys_by_id(real: Path, tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    src = real / "roboflow" / "coco_segmentation"
    json_path = src / "train" / "_annotations.coco.json"
    report = run_import("roboflow", src, tmp_path / "ds")
    # Category 0 'vein' (supercategory none, unused) is Roboflow's placeholder; id 2 is 'vein'.
    assert report.meta.class_names == ["background", "midrib", "vein"]
    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO(str(json_path))
    doc = api.dataset
    assert [(a["category_id"], a["iscrowd"]) for a in doc["annotations"]].count((2, 0)) == 18
    # Annotation 10 (midrib, image 1) reaches y = 256, the image height: clipped, not an error.
    ann10 = api.anns[10]
    assert (ann10["category_id"], ann10["image_id"]) == (1, 1)
    assert max(ann10["segmentation"][0][1::2]) == 256
    masks = _masks(tmp_path / "ds")
    total = np.zeros(3, np.int64)
    for img in doc["images"]:
        expected = np.zeros((img["height"], img["width"]), np.uint8)
        for ann in doc["annotations"]:  # file order; midrib (1) and vein (2) overlap slightly
            if ann["image_id"] == img["id"]:
                expected[api.annToMask(ann) == 1] = ann["category_id"]
        stem = Path(img["file_name"]).stem
        np.testing.assert_array_equal(masks[stem], expected)
        total += np.bincount(expected.ravel(), minlength=3)
    assert report.class_pixels == {
        "background": total[0],
        "midrib": total[1],
        "vein": total[2],
        "ignore": 0,
    }
    assert total[1] > 0 and total[2] > 0
    ds = CanonicalDataset(tmp_path / "ds")
    assert {r.split for r in ds.splits().values()} == {"train"}
    assert ds.meta.notes == "License: CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"


# ------------------------------------------------------------------------------------------------
# Generated exports


def _coco_export(root: Path, categories: list[dict], used: list[int]) -> Path:
    folder = root / "valid"
    folder.mkdir(parents=True)
    Image.new("RGB", (6, 4)).save(folder / "a_jpg.rf.1.jpg")
    doc = {
        "licenses": [{"id": 1, "name": "CC BY 4.0", "url": ""}],
        "images": [{"id": 0, "file_name": "a_jpg.rf.1.jpg", "width": 6, "height": 4}],
        "annotations": [
            {"id": i, "image_id": 0, "category_id": c, "iscrowd": 0,
             "segmentation": [[i, 0, i + 1, 0, i + 1, 4, i, 4]]}
            for i, c in enumerate(used)
        ],
        "categories": categories,
    }  # fmt: skip
    (folder / "_annotations.coco.json").write_text(json.dumps(doc))
    return root


@pytest.mark.parametrize(
    ("used", "names"),
    [
        ([1, 2], ["background", "midrib", "vein"]),  # placeholder 0 'leaves' unused: dropped
        ([0, 2], ["background", "leaves", "midrib", "vein"]),  # used: a class like any other
    ],
)
def test_coco_placeholder_category_zero(tmp_path: Path, used: list[int], names: list[str]) -> None:
    cats = [
        {"id": 0, "name": "leaves", "supercategory": "none"},
        {"id": 1, "name": "midrib", "supercategory": "leaves"},
        {"id": 2, "name": "vein", "supercategory": "leaves"},
    ]
    report = run_import("roboflow", _coco_export(tmp_path / "src", cats, used), tmp_path / "ds")
    assert report.meta.class_names == names
    # Class 0 is always background, whatever Roboflow's category 0 is.
    expected = [0] * 6
    for i, c in enumerate(used):
        expected[i] = names.index(cats[c]["name"])
    assert _masks(tmp_path / "ds")["a_jpg.rf.1"].tolist() == [expected] * 4
    ds = CanonicalDataset(tmp_path / "ds")
    assert ds.splits()["a_jpg.rf.1"].split == "val"
    assert ds.meta.notes == "License: CC BY 4.0"


def _export(root: Path, split: str, csv_text: str, frames: dict[str, np.ndarray]) -> Path:
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "_classes.csv").write_text(csv_text)
    for stem, mask in frames.items():
        Image.new("RGB", (mask.shape[1], mask.shape[0]), (5, 5, 5)).save(folder / f"{stem}.jpg")
        Image.fromarray(mask.astype(np.uint8), mode="L").save(folder / f"{stem}_mask.png")
    return folder


def test_valid_folder_non_dense_values_and_missing_mask(tmp_path: Path) -> None:
    mask = np.zeros((4, 6), np.uint8)
    mask[1, :] = 3
    mask[2, 2:4] = 1
    csv_text = "Pixel Value, Class\r\n0, background\r\n1, small part\r\n3, big part\r\n"
    src = tmp_path / "src"
    _export(src, "valid", csv_text, {"x_jpg.rf.1": mask})
    _export(src, "train", csv_text, {"y_jpg.rf.2": mask[::-1]})
    Image.new("RGB", (6, 4)).save(src / "train" / "lonely.jpg")  # no lonely_mask.png
    report = run_import("roboflow", src, tmp_path / "ds")
    assert report.meta.class_names == ["background", "small part", "big part"]
    assert any("not dense" in w and "[0, 1, 3]" in w for w in report.warnings)
    assert any("lonely.jpg: no lonely_mask.png" in w for w in report.warnings)
    masks = _masks(tmp_path / "ds")
    np.testing.assert_array_equal(masks["x_jpg.rf.1"], np.where(mask == 3, 2, mask))
    assert {s: r.split for s, r in CanonicalDataset(tmp_path / "ds").splits().items()} == {
        "x_jpg.rf.1": "val",
        "y_jpg.rf.2": "train",
    }


def test_mask_value_outside_classes_csv_fails(tmp_path: Path) -> None:
    mask = np.zeros((4, 6), np.uint8)
    mask[0, 0] = 7
    _export(tmp_path / "src", "test", "Pixel Value, Class\n0, background\n1, wall", {"f": mask})
    with pytest.raises(
        DataError,
        match=r"test/f_mask\.png: pixel value\(s\) \[7\] are not listed in .*_classes\.csv",
    ):
        run_import("roboflow", tmp_path / "src", tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_split_folders_must_share_classes(tmp_path: Path) -> None:
    mask = np.zeros((4, 6), np.uint8)
    _export(tmp_path / "src", "train", "Pixel Value, Class\n0, background\n1, wall", {"a": mask})
    _export(tmp_path / "src", "valid", "Pixel Value, Class\n0, background\n1, door", {"b": mask})
    with pytest.raises(DataError, match=r"_classes\.csv: lists other classes than .*_classes\.csv"):
        run_import("roboflow", tmp_path / "src", tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("Value,Name\n0,background", "expected the header 'Pixel Value, Class'"),
        ("Pixel Value, Class\n0, background\nx, wall", "is not 'pixel value"),
        ("Pixel Value, Class\n0, background\n0, wall", "repeats a pixel value"),
    ],
)
def test_bad_classes_csv(tmp_path: Path, csv_text: str, message: str) -> None:
    _export(tmp_path / "src", "train", csv_text, {"a": np.zeros((2, 2), np.uint8)})
    with pytest.raises(DataError, match=rf"_classes\.csv: .*{message}"):
        run_import("roboflow", tmp_path / "src", tmp_path / "ds")


def test_not_a_roboflow_export(real: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not a Roboflow export \(no _classes\.csv"):
        run_import("roboflow", real / "coco" / "datumaro_instances", tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_cli_import_and_data_error(real: Path, tmp_path: Path, cli) -> None:
    ok = cli("import", "roboflow", real / "roboflow" / "coco_segmentation", tmp_path / "ds")
    assert ok.exit_code == 0, ok.stderr
    assert CanonicalDataset(tmp_path / "ds").meta.class_names == ["background", "midrib", "vein"]
    mask = np.full((4, 6), 9, np.uint8)
    folder = _export(tmp_path / "src", "train", "Pixel Value, Class\n0, background", {"m": mask})
    res = cli("import", "roboflow", tmp_path / "src", tmp_path / "out")
    assert res.exit_code == 1
    # The error comes from a worker, after the progress bar started: that bar leaves a blank
    # line on a non-terminal stderr (segflow._progress), so blank lines are not counted here.
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert f"{folder / 'm_mask.png'}: pixel value(s) [9]" in res.stderr
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["_classes.csv", "m.jpg", "m_mask.png"]
