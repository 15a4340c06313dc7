"""COCO importer on real files (instances, RLE, panoptic) and on generated edge cases."""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segflow.data.dataset import CanonicalDataset
from segflow.data.formats.base import ImportOptions, run_import
from segflow.data.image_io import read_mask
from segflow.errors import DataError


def _masks(out: Path) -> dict[str, np.ndarray]:
    return {p.stem: read_mask(p) for p in sorted((out / "masks").glob("*.png"))}


def _coco_api(path: Path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress lines
        return COCO(str(path))


def _reference_instances(path: Path, crowd: str = "class") -> dict[str, np.ndarray]:
    """Masks by image stem from pycocotools' annToMask, painted in file order (COCO's rule)."""
    api = _coco_api(path)
    dense = {cid: i + 1 for i, cid in enumerate(sorted(api.cats))}  # 0 = background
    stems = {img["id"]: Path(img["file_name"]).stem for img in api.dataset["images"]}
    out = {
        Path(img["file_name"]).stem: np.zeros((img["height"], img["width"]), np.uint8)
        for img in api.dataset["images"]
    }
    for ann in api.dataset["annotations"]:
        if not ann["segmentation"]:
            continue
        value = 255 if ann["iscrowd"] and crowd == "ignore" else dense[ann["category_id"]]
        out[stems[ann["image_id"]]][api.annToMask(ann) == 1] = value
    return out


def _blank_images(json_path: Path, folder: Path) -> Path:
    """The fixture ships no images: blank ones of the declared sizes stand in."""
    folder.mkdir(exist_ok=True)
    for img in json.loads(json_path.read_text())["images"]:
        Image.new("RGB", (img["width"], img["height"]), (90, 90, 90)).save(
            folder / img["file_name"]
        )
    return folder


def _counts(mask: np.ndarray) -> Counter[int]:
    values, counts = np.unique(mask, return_counts=True)
    return Counter(dict(zip(values.tolist(), counts.tolist(), strict=True)))


# ------------------------------------------------------------------------------------------------
# Real files


@pytest.mark.parametrize("crowd", ["class", "ignore"])
def test_rle_instances_equal_pycocotools_in_file_order(
    real: Path, tmp_path: Path, crowd: str
) -> None:
    src = real / "coco" / "rle_instances" / "panoptic_coco_detection_format.json"
    doc = json.loads(src.read_text())
    assert len(doc["annotations"]) == 50 and sum(a["iscrowd"] for a in doc["annotations"]) == 3
    assert all(isinstance(a["segmentation"]["counts"], str) for a in doc["annotations"])
    images = _blank_images(src, tmp_path / "imgs")
    report = run_import("coco", src, tmp_path / "ds", ImportOptions(images=images, crowd=crowd))
    names = report.meta.class_names
    # All 133 declared categories become classes, sorted by id, after background.
    assert len(names) == 134
    assert names[:3] == ["background", "person", "bicycle"]
    expected = _reference_instances(src, crowd)
    masks = _masks(tmp_path / "ds")
    assert sorted(masks) == ["000000142238", "000000439180"]
    for stem, mask in masks.items():
        np.testing.assert_array_equal(mask, expected[stem], err_msg=stem)
    total = sum((_counts(m) for m in expected.values()), start=Counter())
    assert report.class_pixels["person"] == total[names.index("person")]
    assert report.class_pixels["ignore"] == total.get(255, 0)
    if crowd == "ignore":
        assert report.class_pixels["ignore"] > 0
    assert report.warnings == []


def _panoptic_reference(real: Path, crowd: str) -> tuple[dict[str, np.ndarray], dict, list[str]]:
    """Decode the panoptic PNGs with numpy: id = R + 256 G + 256^2 B, 0 = VOID -> 255."""
    src = real / "coco" / "panoptic"
    doc = json.loads((src / "panoptic_examples.json").read_text())
    cats = sorted(c["id"] for c in doc["categories"])
    names = ["background"] + [{c["id"]: c["name"] for c in doc["categories"]}[cid] for cid in cats]
    out = {}
    for ann in doc["annotations"]:
        rgb = np.asarray(Image.open(src / "panoptic_examples" / ann["file_name"]).convert("RGB"))
        r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
        ids = r + 256 * g + 65536 * b
        mask = np.full(ids.shape, 255, np.uint8)
        for seg in ann["segments_info"]:
            crowd_ignored = seg["iscrowd"] and crowd == "ignore"
            mask[ids == seg["id"]] = 255 if crowd_ignored else cats.index(seg["category_id"]) + 1
        out[Path(ann["file_name"]).stem] = mask
    return out, doc, names


@pytest.mark.parametrize("crowd", ["class", "ignore"])
def test_panoptic_png_segments_and_void(real: Path, tmp_path: Path, crowd: str) -> None:
    src = real / "coco" / "panoptic"
    images = _blank_images(src / "panoptic_examples.json", tmp_path / "imgs")
    report = run_import("coco", src, tmp_path / "ds", ImportOptions(images=images, crowd=crowd))
    expected, doc, names = _panoptic_reference(real, crowd)
    assert report.meta.class_names == names
    masks = _masks(tmp_path / "ds")
    for stem, mask in masks.items():
        np.testing.assert_array_equal(mask, expected[stem], err_msg=stem)
    # Facts from SOURCES.md: segment counts and the classes present per image.
    segs = {Path(a["file_name"]).stem: a["segments_info"] for a in doc["annotations"]}
    assert {s: len(v) for s, v in segs.items()} == {"000000142238": 18, "000000439180": 32}
    present = {
        s: {names[v] for v in np.unique(m) if v != 255} for s, m in _masks(tmp_path / "ds").items()
    }
    if crowd == "class":
        assert present == {
            "000000142238": {
                "person",
                "sports ball",
                "tree-merged",
                "sky-other-merged",
                "grass-merged",
            },
            "000000439180": {
                "person",
                "truck",
                "horse",
                "gravel",
                "tree-merged",
                "sky-other-merged",
                "grass-merged",
            },
        }
    for stem, ann_segments in segs.items():
        png = np.asarray(Image.open(src / "panoptic_examples" / f"{stem}.png").convert("RGB"))
        void = int((png.reshape(-1, 3) == 0).all(axis=1).sum())
        crowd_area = sum(s["area"] for s in ann_segments if s["iscrowd"])
        assert void > 0
        ignored = void + (crowd_area if crowd == "ignore" else 0)
        assert int((masks[stem] == 255).sum()) == ignored
    total_void = sum(int((m == 255).sum()) for m in expected.values())
    assert report.class_pixels["ignore"] == total_void


def test_rle_instances_and_panoptic_agree(real: Path, tmp_path: Path) -> None:
    # SOURCES.md: each category's RLE union equals the panoptic PNG's pixels of that category.
    rle = real / "coco" / "rle_instances" / "panoptic_coco_detection_format.json"
    images = _blank_images(rle, tmp_path / "imgs")
    a = run_import("coco", rle, tmp_path / "a", ImportOptions(images=images)).class_pixels
    b = run_import(
        "coco", real / "coco" / "panoptic", tmp_path / "b", ImportOptions(images=images)
    ).class_pixels
    assert a["background"] == b["ignore"] > 0  # VOID: not covered by any RLE
    assert {k: v for k, v in a.items() if k not in ("background", "ignore")} == {
        k: v for k, v in b.items() if k not in ("background", "ignore")
    }


def test_datumaro_folder_splits_crowd_and_empty_segmentation(real: Path, tmp_path: Path) -> None:
    src = real / "coco" / "datumaro_instances"
    report = run_import("coco", src, tmp_path / "ds")
    # Non-contiguous category ids 1, 2, 4 -> dense classes; 'c' is unused but declared.
    assert report.meta.class_names == ["background", "a", "b", "c"]
    ds = CanonicalDataset(tmp_path / "ds")
    assert {s: r.split for s, r in ds.splits().items()} == {"a": "train", "b": "val"}
    assert {(r.stem, r.height, r.width) for r in report.samples} == {("a", 5, 10), ("b", 10, 5)}
    # instances_train.json: annotation 1 has `segmentation: []` (bbox only): skipped with a warning.
    assert any("instances_train.json" in w and "id 1" in w for w in report.warnings)
    masks = _masks(tmp_path / "ds")
    assert not masks["a"].any()
    for name in ("train", "val"):
        expected = _reference_instances(src / "annotations" / f"instances_{name}.json")
        for stem, ref in expected.items():
            np.testing.assert_array_equal(masks[stem], ref)
    # instances_val.json lists the polygon of `a` (ann 1) *before* the crowd RLE of `b` (ann 2),
    # which covers the two left columns; painted in file order, the RLE hides the polygon.
    assert _counts(masks["b"]) == {0: 30, 2: 20}
    assert report.class_pixels == {"background": 80, "a": 0, "b": 20, "c": 0, "ignore": 0}
    ignored = run_import("coco", src, tmp_path / "ign", ImportOptions(crowd="ignore"))
    assert _counts(_masks(tmp_path / "ign")["b"]) == {0: 30, 255: 20}
    assert ignored.class_pixels["ignore"] == 20
    # Images are copied byte for byte.
    assert (tmp_path / "ds" / "images" / "b.jpg").read_bytes() == (
        src / "images" / "val" / "b.jpg"
    ).read_bytes()


def test_single_json_in_annotations_folder_finds_images(real: Path, tmp_path: Path) -> None:
    src = real / "coco" / "datumaro_instances" / "annotations" / "instances_val.json"
    report = run_import("coco", src, tmp_path / "ds")
    assert [s.stem for s in report.samples] == ["b"]
    assert CanonicalDataset(tmp_path / "ds").splits()["b"].split == "val"


# ------------------------------------------------------------------------------------------------
# Generated edge cases


def _write_coco(
    folder: Path,
    annotations: list[dict],
    categories: list[dict] | None = None,
    size: tuple[int, int] = (8, 12),
    name: str = "instances.json",
    file_name: str = "img.png",
) -> Path:
    """A COCO file with one ``size`` = (h, w) image ``file_name`` next to it."""
    folder.mkdir(parents=True, exist_ok=True)
    h, w = size
    if "/" not in file_name and ".." not in file_name:
        Image.new("RGB", (w, h), (1, 2, 3)).save(folder / file_name)
    doc = {
        "images": [{"id": 1, "file_name": file_name, "width": w, "height": h}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "iscrowd": 0, **a} for i, a in enumerate(annotations)
        ],
        "categories": categories or [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    }
    path = folder / name
    path.write_text(json.dumps(doc))
    return path


def _rect(x0: int, y0: int, x1: int, y1: int) -> list[list[int]]:
    """A polygon through pixel corners: covers pixels x0..x1-1, y0..y1-1 exactly."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _column_major_rle(mask: np.ndarray) -> dict:
    flat = mask.T.ravel().astype(np.int64)
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat[0]:
        runs = [0, *runs]
    return {"size": list(mask.shape), "counts": runs}


def test_later_annotations_paint_over_earlier_and_crowd_in_order(tmp_path: Path) -> None:
    crowd = np.zeros((8, 12), bool)
    crowd[1:7, 1:11] = True
    src = _write_coco(
        tmp_path / "src",
        [
            {"category_id": 7, "segmentation": _rect(0, 0, 4, 4)},
            {"category_id": 3, "segmentation": _column_major_rle(crowd), "iscrowd": 1},
            {"category_id": 7, "segmentation": _rect(5, 2, 8, 5)},
        ],
    )
    run_import("coco", src, tmp_path / "ds")
    expected = np.zeros((8, 12), np.uint8)
    expected[0:4, 0:4] = 2
    expected[crowd] = 1
    expected[2:5, 5:8] = 2
    np.testing.assert_array_equal(_masks(tmp_path / "ds")["img"], expected)
    run_import("coco", src, tmp_path / "ign", ImportOptions(crowd="ignore"))
    expected[crowd] = 255
    expected[2:5, 5:8] = 2
    np.testing.assert_array_equal(_masks(tmp_path / "ign")["img"], expected)


def test_duplicate_category_names_are_keyed_by_id(tmp_path: Path) -> None:
    cats = [
        {"id": 9, "name": "vein"},
        {"id": 2, "name": "vein"},
        {"id": 4, "name": "leaf"},
        {"id": 6, "name": "leaf"},
        {"id": 5, "name": "stem"},
    ]
    src = _write_coco(
        tmp_path / "src",
        [
            {"category_id": 9, "segmentation": _rect(0, 0, 2, 2)},
            {"category_id": 2, "segmentation": _rect(4, 0, 7, 2)},
            {"category_id": 6, "segmentation": _rect(0, 4, 1, 5)},
        ],
        cats,
    )
    report = run_import("coco", src, tmp_path / "ds")
    # Two used 'vein' categories stay apart; of the two 'leaf', the used one (id 6) is kept, in
    # its place in category-id order.
    assert report.meta.class_names == ["background", "vein (id 2)", "stem", "leaf", "vein (id 9)"]
    assert any("'vein'" in w and "vein (id 9)" in w for w in report.warnings)
    assert report.class_pixels == {
        "background": 96 - 4 - 6 - 1,
        "vein (id 2)": 6,
        "leaf": 1,
        "stem": 0,
        "vein (id 9)": 4,
        "ignore": 0,
    }


def _panoptic_source(tmp_path: Path, segment_ids: list[int]) -> Path:
    src = tmp_path / "src"
    (src / "pan").mkdir(parents=True)
    Image.new("RGB", (4, 3)).save(src / "p.jpg")
    ids = np.zeros((3, 4), np.int64)
    ids[0, :] = 44 + 256 * 1 + 65536 * 2  # R=44, G=1, B=2
    ids[2, 1:3] = 5
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(src / "pan" / "p.png")
    doc = {
        "images": [{"id": 1, "file_name": "p.jpg", "width": 4, "height": 3}],
        "annotations": [
            {
                "image_id": 1,
                "file_name": "p.png",
                "segments_info": [{"id": i, "category_id": 10, "iscrowd": 0} for i in segment_ids],
            }
        ],
        "categories": [{"id": 10, "name": "road", "isthing": 0}],
    }
    (src / "pan.json").write_text(json.dumps(doc))
    return src


def test_generated_panoptic_segment_ids_use_all_three_channels(tmp_path: Path) -> None:
    run_import("coco", _panoptic_source(tmp_path, [44 + 256 + 131072, 5]), tmp_path / "ds")
    assert _masks(tmp_path / "ds")["p"].tolist() == [[1, 1, 1, 1], [255] * 4, [255, 1, 1, 255]]


def _bad_sources(tmp_path: Path) -> dict[str, tuple[Path, str, ImportOptions]]:
    labelme = tmp_path / "labelme" / "a.json"
    labelme.parent.mkdir()
    labelme.write_text(json.dumps({"shapes": [], "imagePath": "a.jpg"}))
    as_list = tmp_path / "list" / "a.json"
    as_list.parent.mkdir()
    as_list.write_text("[1, 2]")
    rle = {"size": [9, 12], "counts": [0, 108]}
    return {
        "labelme": (
            labelme,
            r"a\.json: not a COCO file \(no 'images', 'annotations', 'categories' list\)",
            ImportOptions(),
        ),
        "list": (as_list, r"a\.json: not a COCO file \(the top level is a list", ImportOptions()),
        "category": (
            _write_coco(
                tmp_path / "cat",
                [
                    {"category_id": 3, "segmentation": _rect(0, 0, 1, 1)},
                    {"category_id": 99, "segmentation": _rect(0, 0, 1, 1)},
                ],
            ),
            r"instances\.json: annotation 2 has category_id 99, not declared",
            ImportOptions(),
        ),
        "missing": (
            _write_coco(tmp_path / "miss", [], file_name="sub/nope.jpg"),
            r"instances\.json: image 'sub/nope\.jpg' not found .*--images",
            ImportOptions(),
        ),
        "escape": (
            _write_coco(tmp_path / "esc" / "inner", [], file_name="../img.png"),
            r"instances\.json: image path '\.\./img\.png' escapes",
            ImportOptions(),
        ),
        "rle_size": (
            _write_coco(tmp_path / "rle", [{"category_id": 3, "segmentation": rle}]),
            r"instances\.json: annotation 1 \('cat'\): RLE size 12x9 differs from the image 12x8",
            ImportOptions(),
        ),
        "size": (
            _write_coco(tmp_path / "size", [], size=(8, 12), file_name="small.png"),
            r"instances\.json: annotation declares a 12x8 image but small\.png is 6x4",
            ImportOptions(),
        ),
        "panoptic": (
            _panoptic_source(tmp_path / "pan", [44 + 256 + 131072]),
            r"pan/p\.png: segment id\(s\) 5 are not listed",
            ImportOptions(),
        ),
    }


@pytest.mark.parametrize(
    "case", ["labelme", "list", "category", "missing", "escape", "rle_size", "size", "panoptic"]
)
def test_bad_input_names_the_file_and_writes_nothing(tmp_path: Path, case: str) -> None:
    (tmp_path / "esc").mkdir()
    Image.new("RGB", (12, 8)).save(tmp_path / "esc" / "img.png")  # exists, but outside SRC
    src, message, options = _bad_sources(tmp_path)[case]
    Image.new("RGB", (6, 4)).save(tmp_path / "size" / "small.png")  # declared 12x8
    if case == "escape":
        src = src.parent
    with pytest.raises(DataError, match=message):
        run_import("coco", src, tmp_path / "out", options)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_cli_import_and_data_error(real: Path, tmp_path: Path, cli) -> None:
    ok = cli("import", "coco", real / "coco" / "datumaro_instances", tmp_path / "ds")
    assert ok.exit_code == 0, ok.stderr
    assert CanonicalDataset(tmp_path / "ds").meta.class_names == ["background", "a", "b", "c"]
    assert "instances_train.json: 1 annotation(s) without a segmentation" in ok.stderr
    bad = _write_coco(tmp_path / "bad", [{"category_id": 42, "segmentation": _rect(0, 0, 1, 1)}])
    res = cli("import", "coco", bad, tmp_path / "out")
    assert res.exit_code == 1
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1
    assert f"{bad}: annotation 1 has category_id 42" in res.stderr
    assert not (tmp_path / "out").exists()


def test_other_json_in_a_folder_is_ignored_with_a_warning(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _write_coco(src, [{"category_id": 3, "segmentation": _rect(1, 1, 3, 3)}])
    (src / "meta.json").write_text(json.dumps({"shapes": []}))
    report = run_import("coco", src, tmp_path / "ds")
    assert report.class_pixels["cat"] == 4
    assert any("meta.json: not a COCO file" in w and "ignored" in w for w in report.warnings)
