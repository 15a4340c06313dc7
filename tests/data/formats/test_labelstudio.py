"""Label Studio importer on real exports, its brush RLE decoder, and generated edge cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segflow.data.formats.base import ImportOptions, run_import
from segflow.data.formats.labelstudio import decode_brush_rle
from segflow.data.image_io import read_mask
from segflow.errors import DataError

# ------------------------------------------------------------------------------------------------
# Reference rules, written from Label Studio's documentation and its COCO converter.


def _coco(points: list[tuple[float, float]], h: int, w: int) -> np.ndarray:
    flat = [v for p in points for v in p]
    return mask_utils.decode(mask_utils.frPyObjects([flat], h, w))[:, :, 0].astype(bool)


def _px(x: float, y: float, w: int, h: int) -> tuple[float, float]:
    return x / 100 * w, y / 100 * h


def _ls_region(result: dict, w: int, h: int) -> np.ndarray:
    v = result["value"]
    if result["type"] == "polygonlabels":
        return _coco([_px(x, y, w, h) for x, y in v["points"]], h, w)
    x, y = _px(v["x"], v["y"], w, h)
    bw, bh = v["width"] / 100 * w, v["height"] / 100 * h
    a = math.radians(v.get("rotation", 0))  # clockwise on screen, about the top-left corner
    corners = [(0, 0), (bw, 0), (bw, bh), (0, bh)]
    return _coco(
        [
            (x + cx * math.cos(a) - cy * math.sin(a), y + cx * math.sin(a) + cy * math.cos(a))
            for cx, cy in corners
        ],
        h,
        w,
    )


def _ls_reference(task: dict, names: list[str]) -> np.ndarray:
    results = task["annotations"][0]["result"]
    w, h = results[0]["original_width"], results[0]["original_height"]
    out = np.zeros((h, w), np.uint8)
    for r in results:
        if r["type"] in ("polygonlabels", "rectanglelabels"):
            out[_ls_region(r, w, h)] = names.index(r["value"][r["type"]][0])
    return out


def _blank(folder: Path, name: str, w: int, h: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (90, 80, 70)).save(folder / name)
    return folder


# ------------------------------------------------------------------------------------------------
# Real exports (the images are not shipped: blank ones of the declared size stand in)


def test_rectangle_polygon_and_skipped_keypoints(real: Path, tmp_path: Path) -> None:
    src = real / "labelstudio" / "rect_polygon_keypoints"
    images = _blank(tmp_path / "imgs", "test_image1.jpg", 500, 320)
    report = run_import("labelstudio", src, tmp_path / "ds", ImportOptions(images=images))
    names = report.meta.class_names
    # label_config.xml order; keypoint labels are declared there, so they are (empty) classes.
    assert names == [
        "background",
        "rectangle_label",
        "polygon_label",
        "keypoint_label1",
        "keypoint_label2",
    ]
    task = json.loads((src / "data.json").read_text())[0]
    expected = _ls_reference(task, names)
    mask = read_mask(tmp_path / "ds" / "masks" / "test_image1.png")
    np.testing.assert_array_equal(mask, expected)
    counts = report.class_pixels
    for i, name in enumerate(names):
        assert counts[name] == int((expected == i).sum()), name
    assert counts["rectangle_label"] > 0 and counts["polygon_label"] > 0
    assert counts["keypoint_label1"] == counts["keypoint_label2"] == 0
    assert report.warnings == [f"{src / 'data.json'}: skipped 2 keypoint result(s): no area"]


@pytest.mark.parametrize(
    "image_name", ["000000000025.jpg", "e97d4735-000000000025.jpg", "image2.png"]
)
def test_airplane_polygon_found_by_upload_name(real: Path, tmp_path: Path, image_name: str) -> None:
    src = real / "labelstudio" / "polygons"
    images = _blank(tmp_path / "imgs", image_name, 640, 426)
    report = run_import("labelstudio", src, tmp_path / "ds", ImportOptions(images=images))
    assert report.meta.class_names == ["background", "Airplane", "Car"]
    assert [c.color for c in report.meta.classes[1:]] == [(255, 0, 0), (0, 0, 255)]  # red, blue
    task = json.loads((src / "data_polygons.json").read_text())[0]
    assert len(task["annotations"][0]["result"][0]["value"]["points"]) == 37
    expected = _ls_reference(task, report.meta.class_names)
    stem = Path(image_name).stem
    np.testing.assert_array_equal(read_mask(tmp_path / "ds" / "masks" / f"{stem}.png"), expected)
    assert report.class_pixels["Airplane"] == int((expected == 1).sum()) > 0
    assert report.class_pixels["Car"] == 0


def test_missing_image_names_json_task_and_names_tried(real: Path, tmp_path: Path) -> None:
    src = real / "labelstudio" / "polygons"
    with pytest.raises(DataError) as err:
        run_import("labelstudio", src, tmp_path / "ds")
    msg = str(err.value)
    assert "data_polygons.json: task 68501: image not found" in msg
    assert "image2.jpg" in msg and "e97d4735-000000000025.jpg, 000000000025.jpg" in msg
    assert "--images" in msg
    assert not (tmp_path / "ds").exists()


# ------------------------------------------------------------------------------------------------
# Brush RLE (thi-ng rle-pack)


def _encode_rle(values: list[int], word: int = 8, sizes: tuple[int, ...] = (3, 4, 8, 16)) -> list:
    """A straightforward rle-pack encoder: repeats for runs >= 2, literal groups otherwise."""
    bits = f"{len(values):032b}{word - 1:05b}" + "".join(f"{s - 1:04b}" for s in sizes)
    i, n, longest = 0, len(values), 2 ** max(sizes)
    while i < n:
        j = i
        while j < n and values[j] == values[i] and j - i < longest:
            j += 1
        if j - i >= 2:
            repeat, words = True, [values[i]]
        else:  # literal words until two equal neighbours start a repeat
            j = i + 1
            while j < n and j - i < longest and not (j + 1 < n and values[j] == values[j + 1]):
                j += 1
            repeat, words = False, values[i:j]
        run = j - i
        idx = next(k for k, s in enumerate(sizes) if run - 1 < 2**s)
        bits += ("1" if repeat else "0") + f"{idx:02b}" + f"{run - 1:0{sizes[idx]}b}"
        bits += "".join(f"{v:0{word}b}" for v in words)
        i = j
    bits += "0" * (-len(bits) % 8)
    return [int(bits[k : k + 8], 2) for k in range(0, len(bits), 8)]


def test_brush_decoder_hand_made_bitstream() -> None:
    bits = (
        "00000000000000000000000000000100"  # 4 values
        "00111"  # word size 8
        "0000"
        "0001"
        "0010"
        "0011"  # run sizes 1, 2, 3, 4 bits
        "1"
        "01"
        "10"
        "00000000"  # repeat, size #1 (2 bits): run 2 + 1 = 3 of 0x00
        "0"
        "00"
        "0"
        "11111111"  # literal, size #0 (1 bit): run 0 + 1 = 1 word 0xff
        "00"  # padding
    )
    data = [int(bits[k : k + 8], 2) for k in range(0, len(bits), 8)]
    assert decode_brush_rle(data).tolist() == [0, 0, 0, 255]  # one RGBA pixel, alpha on
    with pytest.raises(ValueError, match="truncated"):
        decode_brush_rle(data[:-3])


def test_brush_decoder_round_trip() -> None:
    rng = np.random.default_rng(7)
    mask = np.zeros((37, 53), bool)
    mask[5:30, 10:40] = rng.random((25, 30)) > 0.3
    rgba = np.zeros((37, 53, 4), np.uint8)
    rgba[mask] = (255, 0, 0, 255)
    values = rgba.reshape(-1).tolist() + [0] * 70000  # a run longer than a 16-bit field
    decoded = decode_brush_rle(_encode_rle(values))
    np.testing.assert_array_equal(decoded, np.array(values, np.uint8))
    noisy = rng.integers(0, 2**12, 500).tolist()
    np.testing.assert_array_equal(decode_brush_rle(_encode_rle(noisy, word=12)), noisy)


# ------------------------------------------------------------------------------------------------
# Generated exports


def _result(kind: str, label: str | None, w: int, h: int, **value) -> dict:
    if label is not None:
        value[kind] = [label]
    return {
        "type": kind,
        "value": value,
        "original_width": w,
        "original_height": h,
        "from_name": "tag",
        "to_name": "image",
    }


def _export(folder: Path, tasks: list[dict], name: str = "export.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(tasks))
    return folder / name


def test_brush_rotation_paint_order_and_undeclared_labels(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _blank(src, "a.png", 100, 50)
    brush = np.zeros((50, 100, 4), np.uint8)
    brush[40:50, 90:100, 3] = 255
    rle = _encode_rle(brush.ravel().tolist())
    results = [
        _result("brushlabels", "leaf", 100, 50, format="rle", rle=rle),
        # 20x10 % of 100x50 = a 20x5 px box at (10, 5), turned 90 degrees about (10, 5).
        _result("rectanglelabels", "box", 100, 50, x=10, y=10, width=20, height=10, rotation=90),
        _result("polygonlabels", "leaf", 100, 50, points=[[50, 0], [70, 0], [70, 40], [50, 40]]),
        _result("polygonlabels", "box", 100, 50, points=[[60, 0], [80, 0], [80, 40], [60, 40]]),
        {"type": "choices", "value": {"choices": ["day"]}},
    ]
    task = {
        "id": 7,
        "data": {"image": "/data/upload/3/0badf00d-a.png"},
        "annotations": [{"was_cancelled": True, "result": []}, {"result": results}],
    }
    report = run_import("labelstudio", _export(src, [task]), tmp_path / "ds")
    assert report.meta.class_names == ["background", "leaf", "box"]  # first seen, no config
    mask = read_mask(tmp_path / "ds" / "masks" / "a.png")
    expected = np.zeros((50, 100), np.uint8)
    expected[40:50, 90:100] = 1
    expected[5:25, 5:10] = 2  # the box turned about (10, 5): x 5..10, y 5..25
    expected[0:20, 50:60] = 1
    expected[0:20, 60:80] = 2  # the later polygon paints over the earlier one
    np.testing.assert_array_equal(mask, expected)
    assert report.warnings == []


def test_completions_single_task_object_and_config_aliases(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _blank(src / "images", "pic.jpg", 20, 10)
    (src / "label_config.xml").write_text(
        '<View><Image name="img" value="$photo"/><PolygonLabels name="p" toName="img">'
        '<Label value="Road" alias="road" background="#00ff00"/><Label value="Sky"/>'
        "</PolygonLabels></View>"
    )
    task = {
        "id": 1,
        "data": {"photo": "s3://bucket/dir/pic.jpg"},
        "completions": [
            {
                "result": [
                    _result(
                        "polygonlabels",
                        "road",
                        20,
                        10,
                        points=[[0, 0], [50, 0], [50, 100], [0, 100]],
                    )
                ]
            }
        ],
    }
    (src / "old.json").write_text(json.dumps(task))
    report = run_import("labelstudio", src, tmp_path / "ds")
    assert report.meta.class_names == ["background", "road", "Sky"]
    assert report.meta.classes[1].color == (0, 255, 0)
    assert report.class_pixels["road"] == 10 * 10


def test_unannotated_tasks_are_skipped_with_a_warning(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _blank(src, "a.png", 10, 10)
    tasks = [
        {"id": 1, "data": {"image": "a.png"}, "annotations": [{"result": []}]},
        {"id": 2, "data": {"image": "never-labelled.png"}, "annotations": []},
    ]
    report = run_import("labelstudio", _export(src, tasks), tmp_path / "ds")
    assert [s.stem for s in report.samples] == ["a"]
    assert report.class_pixels["background"] == 100
    assert any("skipped 1 task(s) without a submitted annotation" in w for w in report.warnings)


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"images": [], "annotations": [], "categories": []}, "not a Label Studio JSON export"),
        ([{"image": "a.png", "label": []}], "not a Label Studio JSON export"),
        (
            [
                {
                    "id": 3,
                    "data": {"image": "a.png"},
                    "annotations": [
                        {
                            "result": [
                                _result(
                                    "brushlabels",
                                    "x",
                                    10,
                                    10,
                                    format="rle",
                                    rle=_encode_rle([0] * 399),
                                )
                            ]
                        }
                    ],
                }
            ],
            "task 3 result 0 .*brush RLE declares 399 values, not the 400 of the image",
        ),
        (
            [
                {
                    "id": 4,
                    "data": {"image": "a.png"},
                    "annotations": [
                        {
                            "result": [
                                _result(
                                    "polygonlabels", "x", 12, 10, points=[[0, 0], [1, 1], [2, 0]]
                                )
                            ]
                        }
                    ],
                }
            ],
            "declares a 12x10 image but a.png is 10x10",
        ),
    ],
)
def test_bad_exports_name_the_file_and_write_nothing(tmp_path: Path, doc: object, match: str):
    src = tmp_path / "src"
    _blank(src, "a.png", 10, 10)
    path = src / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=match) as err:
        run_import("labelstudio", path, tmp_path / "ds")
    assert "bad.json" in str(err.value)
    assert not (tmp_path / "ds").exists()


def test_unsafe_label_config_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _blank(src, "a.png", 10, 10)
    _export(src, [{"data": {"image": "a.png"}, "annotations": [{"result": []}]}])
    (src / "label_config.xml").write_text(
        '<!DOCTYPE v [<!ENTITY e "x">]><View><Label value="&e;"/></View>'
    )
    with pytest.raises(DataError, match=r"label_config\.xml: unsafe XML"):
        run_import("labelstudio", src, tmp_path / "ds")


def test_cli(cli, real: Path, tmp_path: Path) -> None:
    images = _blank(tmp_path / "imgs", "000000000025.jpg", 640, 426)
    src = real / "labelstudio" / "polygons"
    ok = cli("import", "labelstudio", src, tmp_path / "ds", "--images", images)
    assert ok.exit_code == 0, ok.stderr
    assert (tmp_path / "ds" / "masks" / "000000000025.png").is_file()
    bad = cli("import", "labelstudio", src, tmp_path / "ds2")
    assert bad.exit_code == 1
    assert bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
    assert "task 68501: image not found" in bad.stderr
    assert not (tmp_path / "ds2").exists()
