"""COCO export: import -> export coco -> import coco gives the same masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segflow.data.dataset import CanonicalDataset, DatasetMeta, dump_meta, make_classes
from segflow.data.formats import EXPORTERS
from segflow.data.formats.base import ImportOptions, run_import
from segflow.data.image_io import read_mask, write_png
from segflow.errors import UsageError


def _masks(out: Path) -> dict[str, np.ndarray]:
    return {p.stem: read_mask(p) for p in sorted((out / "masks").glob("*.png"))}


def _iou_per_class(a: np.ndarray, b: np.ndarray, num_classes: int) -> dict[int, float]:
    out = {}
    for c in range(num_classes):
        union = int(((a == c) | (b == c)).sum())
        if union:
            out[c] = int(((a == c) & (b == c)).sum()) / union
    return out


def _round_trip(dataset: Path, tmp_path: Path) -> tuple[dict, Path]:
    out = EXPORTERS.get("coco")(CanonicalDataset(dataset), tmp_path / "export" / "labels.json")
    back = tmp_path / "back"
    run_import("coco", out, back, ImportOptions(images=dataset / "images"))
    return json.loads(out.read_text()), back


@pytest.mark.parametrize(
    ("fmt", "src"),
    [
        ("coco", "coco/datumaro_instances"),
        ("roboflow", "roboflow/coco_segmentation"),
        ("roboflow", "roboflow/semantic_masks"),
        ("labelme", "labelme/mandrill"),
    ],
)
def test_real_fixture_round_trip(real: Path, tmp_path: Path, fmt: str, src: str) -> None:
    (tmp_path / "export").mkdir()
    first = tmp_path / "first"
    run_import(fmt, real / src, first)
    doc, back = _round_trip(first, tmp_path)
    names = CanonicalDataset(first).meta.class_names
    assert CanonicalDataset(back).meta.class_names == ["background", *names[1:]]
    assert [c["id"] for c in doc["categories"]] == list(range(1, len(names)))
    before, after = _masks(first), _masks(back)
    assert sorted(before) == sorted(after)
    for stem, mask in before.items():
        ious = _iou_per_class(mask, after[stem], len(names))
        assert all(iou >= 0.99 for iou in ious.values()), (stem, ious)
        # The export is exact (ignore pixels are not exported and come back as background).
        np.testing.assert_array_equal(after[stem], np.where(mask == 255, 0, mask), err_msg=stem)


def _dataset(root: Path, masks: dict[str, np.ndarray], names: list[str]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem, mask in masks.items():
        Image.new("RGB", (mask.shape[1], mask.shape[0]), (40, 40, 40)).save(
            root / "images" / f"{stem}.png"
        )
        write_png(root / "masks" / f"{stem}.png", mask.astype(np.uint8))
    meta = DatasetMeta(name="gen", classes=make_classes(names), notes="License: CC0")
    (root / "dataset.yaml").write_text(dump_meta(meta))
    return root


def _tricky_mask() -> np.ndarray:
    m = np.zeros((40, 50), np.uint8)
    m[2:20, 2:20] = 1
    m[6:12, 6:12] = 0  # a hole ...
    m[8:10, 8:10] = 2  # ... with an island of another class inside
    m[25, 0:50] = 2  # a 1-px horizontal line across the image
    m[0:40, 30] = 3  # a 1-px vertical line, crossing it
    m[22, 22] = m[23, 23] = m[24, 24] = 1  # a diagonal, 8-connected only
    m[0, 49] = m[39, 0] = m[39, 49] = 1  # single pixels in the corners
    m[30:34, 40:44] = 1
    m[31:33, 41:43] = 255  # ignore inside a class: not exported
    return m


def test_holes_thin_lines_and_corners_round_trip_exactly(tmp_path: Path) -> None:
    import cv2

    mask = _tricky_mask()
    ds = _dataset(tmp_path / "ds", {"t": mask}, ["background", "a", "b", "c"])
    (tmp_path / "export").mkdir()
    doc, back = _round_trip(ds, tmp_path)
    np.testing.assert_array_equal(_masks(back)["t"], np.where(mask == 255, 0, mask))
    assert doc["images"] == [{"id": 1, "file_name": "t.png", "width": 50, "height": 40}]
    assert doc["categories"] == [
        {"id": i, "name": n, "supercategory": ""} for i, n in [(1, "a"), (2, "b"), (3, "c")]
    ]
    assert doc["info"]["notes"] == "License: CC0"
    anns = doc["annotations"]
    assert [a["id"] for a in anns] == list(range(1, len(anns) + 1))
    for c in (1, 2, 3):
        # One annotation per 8-connected component, with its pixel area and box [x, y, w, h].
        count, labels = cv2.connectedComponents((mask == c).astype(np.uint8), connectivity=8)
        expected = []
        for k in range(1, count):
            ys, xs = np.nonzero(labels == k)
            box = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
            expected.append((len(xs), box))
        mine = [(a["area"], a["bbox"]) for a in anns if a["category_id"] == c]
        assert sorted(mine) == sorted(expected), c
    assert all(a["iscrowd"] == 0 for a in anns)
    # The square with a hole (and the ring around the ignore block) cannot be polygons: RLE.
    rles = [a for a in anns if isinstance(a["segmentation"], dict)]
    assert {(a["category_id"], tuple(a["bbox"])) for a in rles} == {
        (1, (2, 2, 18, 18)),
        (1, (40, 30, 4, 4)),
    }
    assert all(isinstance(a["segmentation"]["counts"], str) for a in rles)
    assert all(a["segmentation"]["size"] == [40, 50] for a in rles)
    # Everything else is polygons through pixel corners, e.g. the diagonal is 3 unit squares.
    diagonal = next(a for a in anns if a["bbox"] == [22, 22, 3, 3])
    assert sorted(diagonal["segmentation"]) == sorted(
        [[x, y, x, y + 1, x + 1, y + 1, x + 1, y] for x, y in [(22, 22), (23, 23), (24, 24)]]
    )


def test_random_masks_round_trip_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    masks = {}
    for i in range(6):
        h, w = rng.integers(3, 40, size=2)
        noise = rng.random((h, w))
        masks[f"r{i}"] = np.digitize(noise, [0.4, 0.7, 0.85]).astype(np.uint8)
    ds = _dataset(tmp_path / "ds", masks, ["background", "a", "b", "c"])
    (tmp_path / "export").mkdir()
    _, back = _round_trip(ds, tmp_path)
    after = _masks(back)
    for stem, mask in masks.items():
        np.testing.assert_array_equal(after[stem], mask, err_msg=stem)


def test_polygons_that_would_not_decode_exactly_become_rle(tmp_path: Path, monkeypatch) -> None:
    from pycocotools import mask as mask_utils

    mask = _tricky_mask()
    ds = _dataset(tmp_path / "ds", {"t": mask}, ["background", "a", "b", "c"])
    real_fr_py_objects = mask_utils.frPyObjects

    def shifted(polygons: list, height: int, width: int):  # pycocotools drawing 1 px off
        return real_fr_py_objects([[v + 1 for v in p] for p in polygons], height, width)

    monkeypatch.setattr(mask_utils, "frPyObjects", shifted)
    doc = json.loads(EXPORTERS.get("coco")(CanonicalDataset(ds), tmp_path / "l.json").read_text())
    monkeypatch.undo()
    assert doc["annotations"] and all(
        isinstance(a["segmentation"], dict) for a in doc["annotations"]
    )
    run_import("coco", tmp_path / "l.json", tmp_path / "back", ImportOptions(images=ds / "images"))
    np.testing.assert_array_equal(_masks(tmp_path / "back")["t"], np.where(mask == 255, 0, mask))


def test_existing_output_and_overwrite(tmp_path: Path) -> None:
    ds = CanonicalDataset(
        _dataset(tmp_path / "ds", {"t": np.ones((4, 4), np.uint8)}, ["background", "a"])
    )
    out = tmp_path / "labels.json"
    out.write_text("old")
    with pytest.raises(UsageError, match="already exists"):
        EXPORTERS.get("coco")(ds, out)
    assert out.read_text() == "old"
    EXPORTERS.get("coco")(ds, out, overwrite=True)
    assert json.loads(out.read_text())["annotations"][0]["segmentation"] == [
        [0, 0, 0, 4, 4, 4, 4, 0]
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "labels.json"]  # no temp file left


def test_cli_export(tmp_path: Path, cli) -> None:
    ds = _dataset(tmp_path / "ds", {"t": _tricky_mask()}, ["background", "a", "b", "c"])
    res = cli("export", "coco", ds, tmp_path / "out.json")
    assert res.exit_code == 0, res.stderr
    assert len(json.loads((tmp_path / "out.json").read_text())["categories"]) == 3
    again = cli("export", "coco", ds, tmp_path / "out.json")
    assert again.exit_code == 2 and "already exists" in again.stderr
    assert cli("export", "coco", ds, tmp_path / "out.json", "--overwrite").exit_code == 0
    unknown = cli("export", "onnx", ds, tmp_path / "x.json")
    assert unknown.exit_code == 2
    assert unknown.stderr == (
        "error: unknown export target 'onnx': give a bundle folder (NAME.segflow) or a dataset "
        "format (coco) (models: segflow export BUNDLE --format onnx)\n"
    )
    extra = cli("export", "coco", ds, tmp_path / "a.json", tmp_path / "b.json")
    assert extra.exit_code == 2 and "takes DATASET OUT, got 3 path(s)" in extra.stderr
    missing = cli("export", "coco", tmp_path / "nope", tmp_path / "y.json")
    assert missing.exit_code == 1
    assert missing.stderr.startswith(f"error: {tmp_path / 'nope'}: dataset folder not found")
    assert not (tmp_path / "y.json").exists()
