"""Hostile inputs for ``segflow import``, per format, and the controls that must succeed."""
# ruff: noqa: E501 -- the case tables keep one case per line, however long

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.data.test_image_io import png_declaring
from tests.hostile._corpus import (
    Case,
    coco,
    cvat,
    geojson,
    img,
    labelme,
    labelstudio,
    mask,
    masks_src,
    run_case,
    write_json,
    yaml_bomb,
)

BIG = "9" * 400  # a 400-digit number: overflows float64 and int64


def _imp(fmt: str, src: Path, tmp: Path, *extra: str | Path) -> list[str | Path]:
    return ["import", fmt, src, tmp / "out", *extra]


def _brush_header(count: int) -> list[int]:
    """The first bytes of a Label Studio brush RLE declaring ``count`` values (then one run)."""
    bits = f"{count:032b}{7:05b}" + "".join(f"{s - 1:04b}" for s in (3, 4, 8, 16))
    bits += "1" + "11" + f"{65535:016b}" + f"{255:08b}"
    bits += "0" * (-len(bits) % 8)
    return [int(bits[k : k + 8], 2) for k in range(0, len(bits), 8)]


def _nested_json(depth: int) -> str:
    return "[" * depth + "]" * depth


LABELME: dict[str, Case] = {
    "labelme_400_digit_coordinate": Case(
        lambda t, s: _imp("labelme", labelme(t / "src", [[1, 1], [BIG, 2], [5, 9]]).parent, t),
        1, ("a.json", "coordinates")),
    "labelme_nan_coordinate": Case(
        lambda t, s: _imp("labelme", labelme(t / "src", [[1, 1], [float("nan"), 2], [5, 9]]).parent, t),
        1, ("a.json",)),
    "labelme_points_not_numbers": Case(
        lambda t, s: _imp("labelme", labelme(t / "src", [["a", "b"], [1, 2], [5, 9]]).parent, t),
        1, ("a.json",)),
    "labelme_far_outside": Case(
        lambda t, s: _imp("labelme", labelme(t / "src", [[1, 1], [90000, 5], [5, 9]]).parent, t),
        1, ("a.json", "far outside")),
    "labelme_declared_size_mismatch": Case(
        lambda t, s: _imp("labelme", labelme(t / "src", imageHeight=10**6, imageWidth=10**6).parent, t),
        1, ("a.json", "1000000x1000000")),
    "labelme_not_utf8": Case(
        lambda t, s: _imp("labelme", _latin1(labelme(t / "src")).parent, t),
        1, ("a.json", "UTF-8")),
    "labelme_nested_too_deeply": Case(
        lambda t, s: _imp("labelme", _write(t / "src" / "a.json", _nested_json(100_000)).parent, t),
        1, ("a.json",)),
    "labelme_shapes_not_a_list": Case(
        lambda t, s: _imp("labelme", labelme(t / "src", shapes="polygon").parent, t),
        1, ("src", "'shapes' list")),
}  # fmt: skip


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _latin1(path: Path) -> Path:
    """Rewrite a JSON file with a Latin-1 label (not UTF-8)."""
    text = path.read_text().replace('"vein"', '"v\u00e9in"')
    path.write_bytes(text.encode("latin-1"))
    return path


COCO: dict[str, Case] = {
    "coco_400_digit_polygon": Case(
        lambda t, s: _imp("coco", coco(t, {"segmentation": [[1, 1, int(BIG), 1, 9, 9]]}), t),
        1, ("ann.json",)),
    "coco_rle_size_mismatch": Case(
        lambda t, s: _imp("coco", coco(t, {"iscrowd": 1, "segmentation": {"size": [10, 10], "counts": [100]}}), t),
        1, ("ann.json", "RLE size")),
    "coco_rle_declares_huge": Case(
        lambda t, s: _imp("coco", coco(t, {"iscrowd": 1, "segmentation": {"size": [10**6, 10**6], "counts": [10**12]}}), t),
        1, ("ann.json",)),
    "coco_unknown_category": Case(
        lambda t, s: _imp("coco", coco(t, {"category_id": 5, "segmentation": [[1, 1, 9, 1, 9, 9]]}), t),
        1, ("ann.json", "category_id 5")),
    "coco_declared_size_wrong": Case(
        lambda t, s: _imp("coco", coco(t, {"segmentation": [[1, 1, 9, 1, 9, 9]]}, width=10**6), t),
        1, ("ann.json",)),
    "coco_not_utf8": Case(
        lambda t, s: _imp("coco", _write(t / "src" / "ann.json", b'{"images": "\xe9"}'), t),
        1, ("ann.json", "UTF-8")),
    "coco_images_not_a_list": Case(
        lambda t, s: _imp("coco", write_json(t / "src" / "ann.json", {"images": 3, "annotations": [], "categories": []}), t),
        1, ("ann.json",)),
}  # fmt: skip

_MASK = '<mask label="car" source="manual" occluded="0" rle="{rle}" left="{l}" top="0" width="{w}" height="{h}" z_order="0"></mask>'

CVAT: dict[str, Case] = {
    "cvat_mask_declares_10e6_squared": Case(
        lambda t, s: _imp("cvat", cvat(t, _MASK.format(rle=10**12, l=0, w=10**6, h=10**6)), t),
        1, ("annotations.xml", "far outside")),
    "cvat_mask_400_digit_rle": Case(
        lambda t, s: _imp("cvat", cvat(t, _MASK.format(rle=f"1, {BIG}", l=0, w=4, h=4)), t),
        1, ("annotations.xml", "rle")),
    "cvat_mask_rle_sum_wrong": Case(
        lambda t, s: _imp("cvat", cvat(t, _MASK.format(rle="3, 5", l=0, w=4, h=4)), t),
        1, ("annotations.xml", "rle counts sum to 8")),
    "cvat_mask_empty_box": Case(
        lambda t, s: _imp("cvat", cvat(t, _MASK.format(rle="0", l=0, w=0, h=4)), t),
        1, ("annotations.xml", "empty")),
    "cvat_polygon_400_digits": Case(
        lambda t, s: _imp("cvat", cvat(t, f'<polygon label="car" points="1,1;{BIG},2;5,9" z_order="0"/>'), t),
        1, ("annotations.xml",)),
    "cvat_box_not_a_number": Case(
        lambda t, s: _imp("cvat", cvat(t, '<box label="car" xtl="a" ytl="0" xbr="4" ybr="4" z_order="0"/>'), t),
        1, ("annotations.xml", "not a finite number")),
    "cvat_image_size_400_digits": Case(
        lambda t, s: _imp("cvat", cvat(t, "", width=BIG), t),  # type: ignore[arg-type]
        1, ("annotations.xml",)),
    "cvat_entity_bomb": Case(
        lambda t, s: _imp("cvat", _write(t / "src" / "annotations.xml", _entity_bomb()), t),
        1, ("annotations.xml", "unsafe XML")),
}  # fmt: skip


def _entity_bomb() -> str:
    entities = "".join(f'<!ENTITY l{i} "{("&l" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
    return (
        f'<?xml version="1.0"?><!DOCTYPE b [<!ENTITY l0 "lol">{entities}]>'
        "<annotations><meta>&l9;</meta></annotations>"
    )


GEOJSON: dict[str, Case] = {
    "geojson_far_outside_plain_image": Case(
        lambda t, s: _imp("geojson", geojson(t, [[5000, 5000], [5090, 5000], [5090, 5090], [5000, 5000]]), t),
        1, ("scene.geojson", "far outside")),
    "geojson_400_digit_coordinate": Case(
        lambda t, s: _imp("geojson", geojson(t, [[1, 1], [int(BIG), 1], [9, 9], [1, 1]]), t),
        1, ("scene.geojson",)),
    "geojson_two_point_ring": Case(
        lambda t, s: _imp("geojson", geojson(t, [[1, 1], [9, 1]]), t),
        1, ("scene.geojson", "at least 3")),
    "geojson_crs_without_georeferencing": Case(
        lambda t, s: _imp("geojson", geojson(t, [[1, 1], [9, 1], [9, 9], [1, 1]]), t, "--coords", "crs"),
        1, ("scene.geojson", "georeferenced")),
    "geojson_bad_coords_option": Case(
        lambda t, s: _imp("geojson", geojson(t, [[1, 1], [9, 1], [9, 9], [1, 1]]), t, "--coords", "lonlat"),
        2, ("--coords",)),
}  # fmt: skip

LABELSTUDIO: dict[str, Case] = {
    "labelstudio_brush_declares_1e9": Case(
        lambda t, s: _imp("labelstudio", labelstudio(t, {"format": "rle", "rle": _brush_header(10**9)}, "brushlabels"), t),
        1, ("export.json", "declares 1000000000 values")),
    "labelstudio_brush_truncated": Case(
        lambda t, s: _imp("labelstudio", labelstudio(t, {"format": "rle", "rle": [0, 0]}, "brushlabels"), t),
        1, ("export.json", "truncated")),
    "labelstudio_polygon_400_digits": Case(
        lambda t, s: _imp("labelstudio", labelstudio(t, {"points": [[1, 1], [int(BIG), 1], [9, 9]]}), t),
        1, ("export.json",)),
    "labelstudio_not_an_export": Case(
        lambda t, s: _imp("labelstudio", write_json(t / "src" / "export.json", {"hello": "world"}), t),
        1, ("export.json", "Label Studio")),
}  # fmt: skip


def _mmseg(tmp: Path, ann: str = "annotations") -> Path:
    src = tmp / "src"
    for stem in ("a", "b"):
        img(src / "images" / f"{stem}.png")
        mask(src / ann / f"{stem}.png")
    return src


def _rgb_mmseg(tmp: Path) -> Path:
    src = _mmseg(tmp)
    img(src / "annotations" / "b.png")  # RGB, not an index PNG
    return src


MASKS_AND_FOLDERS: dict[str, Case] = {
    "masks_png_bomb": Case(
        lambda t, s: _imp("masks", _bomb(masks_src(t)), t), 1, ("a1.png", "large")),
    "masks_zero_byte_image": Case(
        lambda t, s: _imp("masks", _empty(masks_src(t)), t), 1, ("a1.png", "empty")),
    "masks_value_outside_classes": Case(
        lambda t, s: _imp("masks", _bad_value(masks_src(t)), t, "--classes", _txt(t, "background\nx\n")),
        1, ("a1.png", "7")),
    "masks_size_mismatch": Case(
        lambda t, s: _imp("masks", _small_mask(masks_src(t)), t), 1, ("a1.png", "10x10")),
    "classes_not_utf8": Case(
        lambda t, s: _imp("masks", masks_src(t), t, "--classes", _write(t / "c.txt", b"background\ncaf\xe9\n")),
        1, ("c.txt", "UTF-8")),
    "classes_yaml_alias_bomb": Case(
        lambda t, s: _imp("masks", masks_src(t), t, "--classes", _write(t / "c.yaml", yaml_bomb() + "classes: [a, b]\n")),
        1, ("c.yaml", "alias")),
    "classes_yaml_python_tag": Case(
        lambda t, s: _imp("masks", masks_src(t), t, "--classes", _write(t / "c.yaml", "classes: !!python/object/apply:os.system [id]\n")),
        1, ("c.yaml", "YAML")),
    "classes_listed_twice": Case(
        lambda t, s: _imp("masks", masks_src(t), t, "--classes", _txt(t, "background\nnucleus\nnucleus\n")),
        1, ("classes.txt", "listed twice")),
    "classes_300_names": Case(
        lambda t, s: _imp("masks", masks_src(t), t, "--classes", _txt(t, "\n".join(f"c{i}" for i in range(300)))),
        1, ("classes.txt", "255 classes")),
    "classes_empty_file": Case(
        lambda t, s: _imp("masks", masks_src(t), t, "--classes", _txt(t, "")), 1, ("classes.txt", "no classes")),
    "classes_missing": Case(
        lambda t, s: _imp("masks", masks_src(t), t, "--classes", t / "nope.txt"), 2, ("nope.txt", "not found")),
    "mmseg_rgb_annotation": Case(
        lambda t, s: _imp("mmseg", _rgb_mmseg(t), t), 1, ("b.png", "RGB")),
    "mmseg_no_annotation_folder": Case(
        lambda t, s: _imp("mmseg", _mmseg(t, ann="elsewhere"), t), 1, ("src", "no annotation folder")),
    "voc_on_mmseg_folder": Case(
        lambda t, s: _imp("voc", _mmseg(t), t), 1, ("src", "SegmentationClass")),
    "roboflow_value_not_in_csv": Case(
        lambda t, s: _imp("roboflow", _roboflow(t), t), 1, ("f1_mask.png", "9")),
}  # fmt: skip


def _txt(tmp: Path, text: str) -> Path:
    return _write(tmp / "classes.txt", text)


def _bomb(src: Path) -> Path:
    png_declaring(src / "images" / "a1.png", 100_000, 100_000)
    return src


def _empty(src: Path) -> Path:
    (src / "images" / "a1.png").write_bytes(b"")
    return src


def _bad_value(src: Path) -> Path:
    values = np.zeros((24, 32), np.uint8)
    values[0, 0] = 7
    mask(src / "masks" / "a1.png", values)
    return src


def _small_mask(src: Path) -> Path:
    mask(src / "masks" / "a1.png", np.zeros((10, 10), np.uint8))
    return src


def _roboflow(tmp: Path) -> Path:
    folder = tmp / "src" / "train"
    img(folder / "f1.jpg")
    values = np.zeros((24, 32), np.uint8)
    values[3, 3] = 9
    mask(folder / "f1_mask.png", values)
    _write(folder / "_classes.csv", "Pixel Value, Class\n0, background\n1, door")
    return tmp / "src"


def _file_parent(tmp: Path, shared: Any) -> list[str | Path]:
    _write(tmp / "afile", "x")
    return _imp("masks", masks_src(tmp), tmp / "afile")


OPTIONS_AND_PATHS: dict[str, Case] = {
    "out_exists": Case(
        lambda t, s: [*_imp("masks", masks_src(t), t)[:3], _write(t / "out" / "keep.txt", "mine").parent],
        2, ("out", "already exists")),
    "out_inside_src": Case(
        lambda t, s: ["import", "masks", masks_src(t), t / "src" / "ds"], 2, ("inside the source",)),
    "out_parent_is_a_file": Case(_file_parent, 2, ("afile", "is a file")),
    "out_name_too_long": Case(
        lambda t, s: ["import", "masks", masks_src(t), t / ("d" * 300)], 2, ("file name too long",)),
    "src_missing": Case(
        lambda t, s: _imp("masks", t / "nowhere", t), 2, ("nowhere", "not found")),
    "unknown_format": Case(
        lambda t, s: _imp("labelmee", masks_src(t), t), 2, ("labelmee", "did you mean labelme")),
    "line_width_zero": Case(
        lambda t, s: _imp("labelme", labelme(t / "src").parent, t, "--line-width", "0"),
        2, ("--line-width", "greater than or equal to 1")),
    "workers_zero": Case(
        lambda t, s: _imp("masks", masks_src(t), t, "--workers", "0"), 2, ("--workers",)),
    "crowd_bad": Case(
        lambda t, s: _imp("coco", coco(t, {"segmentation": [[1, 1, 9, 1, 9, 9]]}), t, "--crowd", "maybe"),
        2, ("--crowd",)),
    "images_folder_missing": Case(
        lambda t, s: _imp("labelme", labelme(t / "src").parent, t, "--images", t / "imgs"),
        2, ("imgs", "not found")),
}  # fmt: skip

CASES: dict[str, Case] = {
    **LABELME, **COCO, **CVAT, **GEOJSON, **LABELSTUDIO, **MASKS_AND_FOLDERS, **OPTIONS_AND_PATHS
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_import_refuses(name: str, tmp_path: Path) -> None:
    run_case(CASES[name], tmp_path, None)


# ------------------------------------------------------------------------------------------------
# Controls: the nearest valid input of each group imports.


def _ok(args: list[Any]) -> Any:
    res = run_cli(*args)
    assert res.exit_code == 0, res.stderr
    assert "Traceback" not in res.stderr
    return res


def test_control_labelme_cvat_coco_geojson(tmp_path: Path) -> None:
    _ok(_imp("labelme", labelme(tmp_path / "lm").parent, tmp_path / "lm_"))
    box = '<box label="car" xtl="1" ytl="1" xbr="9" ybr="9" z_order="0"/>'
    _ok(_imp("cvat", cvat(tmp_path / "cv", box), tmp_path / "cv"))
    mask_ok = _MASK.format(rle="3, 5, 8", l=2, w=4, h=4)
    _ok(_imp("cvat", cvat(tmp_path / "cm", mask_ok), tmp_path / "cm"))
    _ok(
        _imp("coco", coco(tmp_path / "co", {"segmentation": [[1, 1, 9, 1, 9, 9]]}), tmp_path / "co")
    )
    ring = [[1, 1], [9, 1], [9, 9], [1, 1]]
    _ok(_imp("geojson", geojson(tmp_path / "gj", ring), tmp_path / "gj"))
    for name in ("lm_", "cv", "cm", "co", "gj"):
        ds = tmp_path / name / "out"
        assert (ds / "dataset.yaml").is_file() and len(list((ds / "masks").iterdir())) == 1


def test_control_mmseg_png_png_keeps_stems_and_split_lists(tmp_path: Path) -> None:
    """Images and annotations both ``.png``: stems ``a``/``b`` (not ``a.png``), lists kept."""
    src = _mmseg(tmp_path)
    _write(src / "splits" / "train.txt", "a\n")
    _write(src / "splits" / "val.txt", "b\n")
    res = _ok(["import", "mmseg", src, tmp_path / "ds"])
    assert "warning" not in res.stderr
    assert sorted(p.name for p in (tmp_path / "ds" / "images").iterdir()) == ["a.png", "b.png"]
    rows = (tmp_path / "ds" / "splits.csv").read_text().splitlines()[1:]
    assert sorted(r.split(",")[:2] for r in rows) == [["a", "train"], ["b", "val"]]


def test_control_brush_of_the_right_length(tmp_path: Path) -> None:
    from tests.data.formats.test_labelstudio import _encode_rle

    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[2:8, 2:8, 3] = 255
    value = {"format": "rle", "rle": _encode_rle(rgba.ravel().tolist())}
    _ok(_imp("labelstudio", labelstudio(tmp_path, value, "brushlabels"), tmp_path))
    from PIL import Image

    out = np.asarray(Image.open(tmp_path / "out" / "masks" / "a.png"))
    assert out[2:8, 2:8].min() == 1 and out.sum() == 36


def test_corpus_size() -> None:
    assert len(CASES) >= 50
    assert json.dumps(sorted(CASES))  # names are plain strings
