"""Broken inputs across import / check / split / export, through the real CLI.

Each case must give: the documented exit code (1 data error, 2 usage error), exactly one line on
stderr starting with ``error:`` that names the file and the problem, no traceback, and no output
folder (nor a leftover temporary folder) when the command writes one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.data.test_image_io import png_declaring
from tests.fixtures.synthetic import make_dataset

REAL = Path(__file__).parent / "fixtures" / "real"


@dataclass
class Case:
    build: Callable[[Path], list[str]]  # makes the input under tmp, returns the CLI args
    code: int
    needles: tuple[str, ...]  # substrings of the error line (file name and problem)


def _img(
    path: Path, size: tuple[int, int] = (32, 24), color: tuple[int, int, int] = (90, 60, 30)
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _labelme(
    folder: Path, stem: str, shapes: list[dict], image: str | None = None, size=(24, 32)
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if image is None:
        image = f"{stem}.png"
        _img(folder / image, (size[1], size[0]))
    doc = {"version": "5.0.1", "shapes": shapes, "imagePath": image, "imageData": None,
           "imageHeight": size[0], "imageWidth": size[1]}  # fmt: skip
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(doc))
    return path


def _poly(label: str = "vein", pts: list | None = None, kind: str = "polygon") -> dict:
    return {"label": label, "points": pts or [[2, 2], [20, 2], [20, 15]], "shape_type": kind}


def _masks_src(tmp: Path, n: int = 2) -> Path:
    src = tmp / "src"
    for i in range(n):
        _img(src / "images" / f"a{i}.png")
        mask = np.zeros((24, 32), np.uint8)
        mask[5:10, 5:10] = 1
        (src / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(src / "masks" / f"a{i}.png")
    return src


def truncated_jpeg(tmp: Path) -> list[str]:
    src = tmp / "src"
    _labelme(src, "a", [_poly()], image="a.jpg")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(
        src / "a.jpg"
    )
    data = (src / "a.jpg").read_bytes()
    (src / "a.jpg").write_bytes(data[: len(data) // 2])
    return ["import", "labelme", str(src), str(tmp / "out")]


def zero_byte_image(tmp: Path) -> list[str]:
    src = _masks_src(tmp)
    (src / "images" / "a1.png").write_bytes(b"")
    return ["import", "masks", str(src), str(tmp / "out")]


def zero_byte_json(tmp: Path) -> list[str]:
    (tmp / "src").mkdir()
    (tmp / "src" / "a.json").write_bytes(b"")
    return ["import", "labelme", str(tmp / "src" / "a.json"), str(tmp / "out")]


def two_point_polygon(tmp: Path) -> list[str]:
    _labelme(tmp / "src", "a", [_poly(pts=[[1, 1], [5, 5]])])
    return ["import", "labelme", str(tmp / "src"), str(tmp / "out")]


def far_out_of_bounds(tmp: Path) -> list[str]:
    _labelme(tmp / "src", "a", [_poly(pts=[[1, 1], [90000, 5], [5, 9]])])
    return ["import", "labelme", str(tmp / "src"), str(tmp / "out")]


def unknown_label_strict(tmp: Path) -> list[str]:
    _labelme(tmp / "src", "a", [_poly("cat")])
    (tmp / "classes.txt").write_text("background\nvein\n")
    return [
        "import",
        "labelme",
        str(tmp / "src"),
        str(tmp / "out"),
        "--classes",
        str(tmp / "classes.txt"),
        "--strict",
    ]


def image_path_escapes(tmp: Path) -> list[str]:
    _labelme(tmp / "deep" / "er" / "src", "a", [_poly()], image="../../etc/passwd")
    (tmp / "deep" / "etc").mkdir()
    (tmp / "deep" / "etc" / "passwd").write_text("root:x:0:0")
    return ["import", "labelme", str(tmp / "deep" / "er" / "src"), str(tmp / "out")]


def absolute_image_path_outside(tmp: Path) -> list[str]:
    outside = _img(tmp / "elsewhere" / "x.png")
    _labelme(tmp / "src", "a", [_poly()], image=str(outside.resolve()))
    return ["import", "labelme", str(tmp / "src"), str(tmp / "out")]


def symlink_escapes(tmp: Path) -> list[str]:
    outside = _img(tmp / "elsewhere" / "secret.png")
    _labelme(tmp / "src", "a", [_poly()], image="link.png")
    (tmp / "src" / "link.png").symlink_to(outside.resolve())
    return ["import", "labelme", str(tmp / "src"), str(tmp / "out")]


def labelme_given_to_coco(tmp: Path) -> list[str]:
    path = _labelme(tmp / "src", "a", [_poly()])
    return ["import", "coco", str(path), str(tmp / "out")]


def coco_given_to_labelme(tmp: Path) -> list[str]:
    (tmp / "src").mkdir()
    (tmp / "src" / "ann.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": []})
    )
    return ["import", "labelme", str(tmp / "src" / "ann.json"), str(tmp / "out")]


def xml_entity_bomb(tmp: Path) -> list[str]:
    (tmp / "src").mkdir()
    lol = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + "".join(
            f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
            for i in range(1, 10)
        )
        + "]><annotations><version>1.1</version><meta>&lol9;</meta></annotations>"
    )
    (tmp / "src" / "annotations.xml").write_text(lol)
    return ["import", "cvat", str(tmp / "src" / "annotations.xml"), str(tmp / "out")]


def malformed_xml(tmp: Path) -> list[str]:
    (tmp / "src").mkdir()
    (tmp / "src" / "annotations.xml").write_text("<annotations><image name='a.png'></annotations>")
    return ["import", "cvat", str(tmp / "src" / "annotations.xml"), str(tmp / "out")]


def png_bomb_image(tmp: Path) -> list[str]:
    src = _masks_src(tmp)
    png_declaring(src / "images" / "a1.png", 100_000, 100_000)
    return ["import", "masks", str(src), str(tmp / "out")]


def image_mask_size_mismatch(tmp: Path) -> list[str]:
    src = _masks_src(tmp)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(src / "masks" / "a1.png")
    return ["import", "masks", str(src), str(tmp / "out")]


def duplicate_stems(tmp: Path) -> list[str]:
    _labelme(tmp / "src" / "day1", "scan", [_poly()])
    _labelme(tmp / "src" / "day2", "scan", [_poly()])
    return ["import", "labelme", str(tmp / "src"), str(tmp / "out")]


def empty_folder(tmp: Path) -> list[str]:
    (tmp / "src").mkdir()
    return ["import", "labelme", str(tmp / "src"), str(tmp / "out")]


def out_exists(tmp: Path) -> list[str]:
    _labelme(tmp / "src", "a", [_poly()])
    (tmp / "out").mkdir()
    (tmp / "out" / "keep.txt").write_text("mine")
    return ["import", "labelme", str(tmp / "src"), str(tmp / "out")]


def src_missing(tmp: Path) -> list[str]:
    return ["import", "labelme", str(tmp / "nowhere"), str(tmp / "out")]


def unknown_format(tmp: Path) -> list[str]:
    (tmp / "src").mkdir()
    return ["import", "labelmee", str(tmp / "src"), str(tmp / "out")]


def coco_unknown_category(tmp: Path) -> list[str]:
    _img(tmp / "src" / "a.png")
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 24}],
           "categories": [{"id": 1, "name": "vein"}],
           "annotations": [{"id": 7, "image_id": 1, "category_id": 5, "iscrowd": 0,
                            "segmentation": [[1, 1, 9, 1, 9, 9]]}]}  # fmt: skip
    (tmp / "src" / "ann.json").write_text(json.dumps(doc))
    return ["import", "coco", str(tmp / "src" / "ann.json"), str(tmp / "out")]


def coco_rle_size_mismatch(tmp: Path) -> list[str]:
    _img(tmp / "src" / "a.png")
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 24}],
           "categories": [{"id": 1, "name": "vein"}],
           "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "iscrowd": 1,
                            "segmentation": {"size": [10, 10], "counts": [100]}}]}  # fmt: skip
    (tmp / "src" / "ann.json").write_text(json.dumps(doc))
    return ["import", "coco", str(tmp / "src" / "ann.json"), str(tmp / "out")]


def labelme_bad_image_data(tmp: Path) -> list[str]:
    (tmp / "src").mkdir()
    doc = {"shapes": [_poly()], "imagePath": "a.jpg", "imageData": "bm90IGFuIGltYWdl"}
    (tmp / "src" / "a.json").write_text(json.dumps(doc))
    return ["import", "labelme", str(tmp / "src"), str(tmp / "out")]


def mask_value_outside_classes(tmp: Path) -> list[str]:
    src = _masks_src(tmp)
    mask = np.zeros((24, 32), np.uint8)
    mask[0, 0] = 7
    Image.fromarray(mask).save(src / "masks" / "a1.png")
    (tmp / "classes.txt").write_text("background\nnucleus\n")
    return ["import", "masks", str(src), str(tmp / "out"), "--classes", str(tmp / "classes.txt")]


def roboflow_value_not_in_csv(tmp: Path) -> list[str]:
    src = tmp / "src" / "train"
    _img(src / "f1.jpg")
    mask = np.zeros((24, 32), np.uint8)
    mask[3, 3] = 9
    Image.fromarray(mask).save(src / "f1_mask.png")
    (src / "_classes.csv").write_text("Pixel Value, Class\n0, background\n1, door")
    return ["import", "roboflow", str(tmp / "src"), str(tmp / "out")]


def geojson_without_image(tmp: Path) -> list[str]:
    (tmp / "src").mkdir()
    fc = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
          "geometry": {"type": "Polygon", "coordinates": [[[1, 1], [9, 1], [9, 9], [1, 1]]]}}]}  # fmt: skip
    (tmp / "src" / "scene.geojson").write_text(json.dumps(fc))
    return ["import", "geojson", str(tmp / "src"), str(tmp / "out")]


def not_labelstudio(tmp: Path) -> list[str]:
    (tmp / "src").mkdir()
    (tmp / "src" / "export.json").write_text(json.dumps({"hello": "world"}))
    return ["import", "labelstudio", str(tmp / "src" / "export.json"), str(tmp / "out")]


def voc_on_mmseg_folder(tmp: Path) -> list[str]:
    src = tmp / "src"
    shutil.copytree(REAL / "mmseg" / "pseudo_dataset", src)
    return ["import", "voc", str(src), str(tmp / "out")]


def bad_crowd_option(tmp: Path) -> list[str]:
    (tmp / "src").mkdir()
    return ["import", "coco", str(tmp / "src"), str(tmp / "out"), "--crowd", "maybe"]


def classes_file_missing(tmp: Path) -> list[str]:
    _labelme(tmp / "src", "a", [_poly()])
    return [
        "import",
        "labelme",
        str(tmp / "src"),
        str(tmp / "out"),
        "--classes",
        str(tmp / "nope.txt"),
    ]


def check_not_a_dataset(tmp: Path) -> list[str]:
    (tmp / "ds" / "images").mkdir(parents=True)
    return ["check", str(tmp / "ds")]


def check_bad_dataset_yaml(tmp: Path) -> list[str]:
    root = make_dataset(tmp / "ds", n=2)
    (root / "dataset.yaml").write_text("name: x\nclasses: [{id: 3, name: a, color: [0, 0, 0]}]\n")
    return ["check", str(root)]


def check_unknown_excluded_stem(tmp: Path) -> list[str]:
    root = make_dataset(tmp / "ds", n=2)
    (tmp / "exclude.txt").write_text("s000\nmissing_one\n")
    return ["check", str(root), "--exclude", str(tmp / "exclude.txt")]


def split_bad_fractions(tmp: Path) -> list[str]:
    return ["split", str(make_dataset(tmp / "ds", n=3)), "--val", "0.7", "--test", "0.4"]


def split_bad_regex(tmp: Path) -> list[str]:
    return ["split", str(make_dataset(tmp / "ds", n=3)), "--group-by", "Image_(\\d+"]


def split_no_masks(tmp: Path) -> list[str]:
    root = make_dataset(tmp / "ds", n=3)
    shutil.rmtree(root / "masks")
    return ["split", str(root)]


def split_broken_splits_csv(tmp: Path) -> list[str]:
    root = make_dataset(tmp / "ds", n=3)
    (root / "splits.csv").write_text("stem,split,group,fold\ns000,train,,x\n")
    return ["split", str(root)]


def export_unknown_target(tmp: Path) -> list[str]:
    return ["export", "yolo", str(make_dataset(tmp / "ds", n=2)), str(tmp / "out.json")]


def export_out_exists(tmp: Path) -> list[str]:
    (tmp / "out.json").write_text("{}")
    return ["export", "coco", str(make_dataset(tmp / "ds", n=2)), str(tmp / "out.json")]


CASES: dict[str, Case] = {
    "truncated_jpeg": Case(truncated_jpeg, 1, ("a.jpg", "truncated")),
    "zero_byte_image": Case(zero_byte_image, 1, ("a1.png", "empty")),
    "zero_byte_json": Case(zero_byte_json, 1, ("a.json", "not valid JSON")),
    "two_point_polygon": Case(two_point_polygon, 1, ("a.json", "at least 3")),
    "far_out_of_bounds": Case(far_out_of_bounds, 1, ("a.json", "far outside")),
    "unknown_label_strict": Case(unknown_label_strict, 1, ("'cat'", "not in classes file")),
    "image_path_escapes": Case(image_path_escapes, 1, ("a.json", "escapes the source folder")),
    "absolute_image_path_outside": Case(absolute_image_path_outside, 1, ("a.json", "not found")),
    "symlink_escapes": Case(symlink_escapes, 1, ("a.json", "escapes the source folder")),
    "labelme_given_to_coco": Case(labelme_given_to_coco, 1, ("a.json", "not a COCO file")),
    "coco_given_to_labelme": Case(coco_given_to_labelme, 1, ("ann.json", "not a LabelMe file")),
    "xml_entity_bomb": Case(xml_entity_bomb, 1, ("annotations.xml", "unsafe XML")),
    "malformed_xml": Case(malformed_xml, 1, ("annotations.xml", "not valid XML")),
    "png_bomb_image": Case(png_bomb_image, 1, ("a1.png", "large")),
    "image_mask_size_mismatch": Case(image_mask_size_mismatch, 1, ("a1.png", "10x10")),
    "duplicate_stems": Case(duplicate_stems, 1, ("scan.json", "duplicate stem")),
    "empty_folder": Case(empty_folder, 1, ("src", "no labelme samples")),
    "out_exists": Case(out_exists, 2, ("out", "already exists")),
    "src_missing": Case(src_missing, 2, ("nowhere", "not found")),
    "unknown_format": Case(unknown_format, 2, ("labelmee", "did you mean labelme")),
    "coco_unknown_category": Case(
        coco_unknown_category, 1, ("ann.json", "annotation 7", "category_id 5")
    ),
    "coco_rle_size_mismatch": Case(coco_rle_size_mismatch, 1, ("ann.json", "RLE size")),
    "labelme_bad_image_data": Case(labelme_bad_image_data, 1, ("a.json", "not an image")),
    "mask_value_outside_classes": Case(mask_value_outside_classes, 1, ("a1.png", "7")),
    "roboflow_value_not_in_csv": Case(roboflow_value_not_in_csv, 1, ("f1_mask.png", "9")),
    "geojson_without_image": Case(geojson_without_image, 1, ("scene.geojson", "--images")),
    "not_labelstudio": Case(not_labelstudio, 1, ("export.json", "Label Studio")),
    "voc_on_mmseg_folder": Case(voc_on_mmseg_folder, 1, ("src", "SegmentationClass")),
    "bad_crowd_option": Case(bad_crowd_option, 2, ("--crowd", "'class' or 'ignore'")),
    "classes_file_missing": Case(classes_file_missing, 2, ("nope.txt", "not found")),
    "check_not_a_dataset": Case(check_not_a_dataset, 1, ("dataset.yaml", "not found")),
    "check_bad_dataset_yaml": Case(check_bad_dataset_yaml, 1, ("dataset.yaml", "dense")),
    "check_unknown_excluded_stem": Case(
        check_unknown_excluded_stem, 1, ("exclude.txt", "missing_one")
    ),
    "split_bad_fractions": Case(split_bad_fractions, 2, ("--val", "sum to less than 1")),
    "split_bad_regex": Case(split_bad_regex, 2, ("--group-by", "regular expression")),
    "split_no_masks": Case(split_no_masks, 1, ("ds", "no labelled images")),
    "split_broken_splits_csv": Case(split_broken_splits_csv, 1, ("splits.csv", "line 2", "'x'")),
    "export_unknown_target": Case(export_unknown_target, 2, ("'yolo'", "coco")),
    "export_out_exists": Case(export_out_exists, 2, ("out.json", "exists")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_line_and_leaves_nothing(name: str, tmp_path: Path, cli) -> None:
    case = CASES[name]
    args = case.build(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    res = cli(*args)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == case.code, (res.exit_code, res.stderr, res.stdout)
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, res.stderr
    for needle in case.needles:
        assert needle in errors[0], (needle, errors[0])
    assert "Traceback" not in res.stderr + res.stdout
    after = sorted(p.name for p in tmp_path.iterdir())
    if args[0] in ("import", "export"):
        assert after == before, f"output left behind: {set(after) - set(before)}"
    assert not list(tmp_path.rglob(".*tmp*")), "temporary files left behind"


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 25


def test_real_process_prints_no_traceback(tmp_path: Path) -> None:
    """The console script itself (not the in-process runner): one line, exit 1."""
    args = two_point_polygon(tmp_path)
    exe = Path(sys.executable).parent / "segflow"
    res = subprocess.run([exe, *args], capture_output=True, text=True)
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ")
    assert not (tmp_path / "out").exists()


def test_outputs_into_new_folders_are_created(cli, tmp_path: Path) -> None:
    """`import SRC data/new/ds`, `check --report new/dir/r.html` and `export coco new/x.json`
    create the missing folders instead of failing; a parent that is a file is a one-line error."""
    from tests.fixtures.synthetic import make_dataset

    src = make_dataset(tmp_path / "src", n=3)
    ds = tmp_path / "data" / "nested" / "ds"
    assert cli("import", "masks", src, ds).exit_code == 0
    report = tmp_path / "reports" / "deep" / "qa.html"
    res = cli("check", ds, "--report", report)
    assert res.exit_code in (0, 1) and report.is_file(), res.stderr
    out = tmp_path / "coco" / "sub" / "x.json"
    assert cli("export", "coco", ds, out).exit_code == 0 and out.is_file()
    (tmp_path / "afile").write_text("x")
    bad = cli("import", "masks", src, tmp_path / "afile" / "ds")
    assert bad.exit_code == 2 and "is a file, not a folder" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
