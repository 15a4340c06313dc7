"""CVAT for images 1.1 importer on real exports and generated edge cases."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from segflow.data.dataset import read_splits
from segflow.data.formats.base import ImportOptions, run_import
from segflow.data.image_io import read_mask
from segflow.errors import DataError

# ------------------------------------------------------------------------------------------------
# Reference rasterisation written from CVAT's documented rules, straight from the XML.


def _coco(flat: list[float], h: int, w: int) -> np.ndarray:
    return mask_utils.decode(mask_utils.frPyObjects([flat], h, w))[:, :, 0].astype(bool)


def _cvat_mask_bits(el: ET.Element) -> np.ndarray:
    """CVAT mask RLE: runs alternate off/on starting with off, row-major inside the box."""
    flat: list[int] = []
    value = 0
    for count in (int(c) for c in el.get("rle").split(",")):
        flat += [value] * count
        value ^= 1
    return np.array(flat, dtype=bool).reshape(int(el.get("height")), int(el.get("width")))


def _shape_region(el: ET.Element, h: int, w: int) -> np.ndarray:
    if el.tag == "polygon":
        return _coco([float(v) for p in el.get("points").split(";") for v in p.split(",")], h, w)
    if el.tag == "box":
        x0, y0, x1, y1 = (float(el.get(k)) for k in ("xtl", "ytl", "xbr", "ybr"))
        return _coco([x0, y0, x1, y0, x1, y1, x0, y1], h, w)
    out = np.zeros((h, w), dtype=bool)
    left, top = int(el.get("left")), int(el.get("top"))
    bits = _cvat_mask_bits(el)
    out[top : top + bits.shape[0], left : left + bits.shape[1]] = bits
    return out


def _cvat_reference(image: ET.Element, names: list[str]) -> np.ndarray:
    h, w = int(image.get("height")), int(image.get("width"))
    shapes = [
        (int(el.get("z_order", 0)), i, el)
        for i, el in enumerate(image)
        if el.tag in ("polygon", "box", "mask") and el.get("label")
    ]
    out = np.zeros((h, w), np.uint8)
    for _, _, el in sorted(shapes, key=lambda t: (t[0], t[1])):
        out[_shape_region(el, h, w)] = names.index(el.get("label"))
    return out


def _blank(folder: Path, name: str, w: int, h: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (40, 50, 60)).save(folder / name)
    return folder


# ------------------------------------------------------------------------------------------------
# Real files


def test_docs_example_z_order_mask_and_skipped_shapes(real: Path, tmp_path: Path) -> None:
    xml = real / "cvat" / "docs_example" / "annotations.xml"
    images = _blank(tmp_path / "imgs", "filename000.jpg", 1600, 1200)
    report = run_import("cvat", xml.parent, tmp_path / "ds", ImportOptions(images=images))
    names = report.meta.class_names
    # Declared order; skeleton s1, its points 1/2/3 and the undeclared tag good_frame: no classes.
    assert names == ["background", "car", "traffic_line", "wheel", "plate"]
    image = ET.parse(xml).getroot().find("image")
    expected = _cvat_reference(image, names)
    mask = read_mask(tmp_path / "ds" / "masks" / "filename000.png")
    np.testing.assert_array_equal(mask, expected)
    counts = report.class_pixels
    for i, name in enumerate(names):
        assert counts[name] == int((expected == i).sum()), name

    box = _shape_region(image.find("box"), 1200, 1600)
    poly = _shape_region(image.find("polygon"), 1200, 1600)
    car_mask = _shape_region(image.find("mask"), 1200, 1600)
    # The plate box (z=4) lies inside the car polygon (z=1) and wins everywhere it covers.
    assert not (box & ~poly).any() and counts["plate"] == int(box.sum()) > 0
    # The car mask (z=0): 149 of its 13x15 pixels are on, all inside the car polygon.
    assert int(car_mask.sum()) == 149 and not (car_mask & ~poly).any()
    assert counts["car"] == int(poly.sum()) - counts["plate"]
    # Polylines and points have no area: skipped with one warning per kind.
    assert counts["traffic_line"] == 0 and counts["wheel"] == 0
    assert [w for w in report.warnings if "polyline" in w] == [
        f"{xml}: skipped 2 polyline shape(s): no area"
    ]
    assert [w for w in report.warnings if "points" in w] == [
        f"{xml}: skipped 1 points shape(s): no area"
    ]


def test_datumaro_export_empty_labels_never_become_a_class(real: Path, tmp_path: Path) -> None:
    src = real / "cvat" / "datumaro_export_task"
    report = run_import("cvat", src, tmp_path / "ds")
    assert report.meta.class_names == ["background", "label1", "label2"]  # label2: points only
    counts = report.class_pixels
    mask0 = read_mask(tmp_path / "ds" / "masks" / "img0.png")
    expected = np.zeros((8, 8), np.uint8)
    expected[2:4, 0:4] = 1  # box (0,2)-(4,4): pixels whose centres are inside
    np.testing.assert_array_equal(mask0, expected)
    assert counts == {"background": 64 - 8 + 100, "label1": 8, "label2": 0, "ignore": 0}
    assert not read_mask(tmp_path / "ds" / "masks" / "img1.png").any()
    empty = "skipped 2 shape(s) with an empty label (1 polyline, 1 polygon)"
    assert any(w.endswith(empty) for w in report.warnings)
    # train.xml -> every image in the train split.
    assert {s.stem: s.split for s in read_splits(tmp_path / "ds" / "splits.csv").values()} == {
        "img0": "train",
        "img1": "train",
    }
    with pytest.raises(DataError, match="empty label"):
        run_import("cvat", src, tmp_path / "strict", ImportOptions(strict=True))
    assert not (tmp_path / "strict").exists()


# ------------------------------------------------------------------------------------------------
# Generated files

_META = """<meta><task><labels>
  <label><name>b</name><color>#ff0000</color></label>
  <label><name>a</name></label>
  <label><name>tagonly</name><type>tag</type></label>
</labels></task></meta>"""


def _write_xml(folder: Path, body: str, name: str = "annotations.xml", meta: str = _META) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    head = '<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>1.1</version>'
    path.write_text(f"{head}{meta}{body}</annotations>")
    return path


def _image(name: str, w: int, h: int, shapes: str, image_id: int = 0) -> str:
    return f'<image id="{image_id}" name="{name}" width="{w}" height="{h}">{shapes}</image>'


def test_z_order_then_document_order_undeclared_label_and_colours(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _blank(src, "x.png", 40, 30)
    _write_xml(
        src,
        _image(
            "x.png",
            40,
            30,
            """
        <polygon label="a" points="0,0;20,0;20,20;0,20" z_order="2"/>
        <polygon label="b" points="10,10;30,10;30,30;10,30" z_order="1"/>
        <box label="c" xtl="15" ytl="0" xbr="25" ybr="5" z_order="2"/>
        <tag label="tagonly"/>""",
        ),
    )
    report = run_import("cvat", src, tmp_path / "ds")
    # Declared labels first (tag-type excluded), then undeclared 'c' as first seen.
    assert report.meta.class_names == ["background", "b", "a", "c"]
    assert report.meta.classes[1].color == (255, 0, 0)
    mask = read_mask(tmp_path / "ds" / "masks" / "x.png")
    # b (z=1) first; a (z=2) over it; c (z=2, later in the document) over a.
    assert mask[15, 15] == 2 and mask[25, 25] == 1 and mask[2, 17] == 3
    assert report.class_pixels == {
        "background": 1200 - 375 - 300 - 50,
        "b": 300,
        "a": 375,
        "c": 50,
        "ignore": 0,
    }


def _cvat_rotate(x0: float, y0: float, x1: float, y1: float, degrees: float) -> list[float]:
    """CVAT's RotatedBoxesToPolygons: corners turned about the box centre."""
    a = math.radians(degrees)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    out: list[float] = []
    for x, y in [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]:
        out += [
            cx + math.cos(a) * (x - cx) - math.sin(a) * (y - cy),
            cy + math.sin(a) * (x - cx) + math.cos(a) * (y - cy),
        ]
    return out


def test_rotated_boxes_turn_about_their_centre(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _blank(src, "r.png", 40, 40)
    _write_xml(
        src,
        _image(
            "r.png",
            40,
            40,
            """
        <box label="a" xtl="10" ytl="20" xbr="30" ybr="24" rotation="90"/>
        <box label="b" xtl="5.5" ytl="3" xbr="25" ybr="12.5" rotation="30.5" z_order="1"/>""",
        ),
    )
    run_import("cvat", src, tmp_path / "ds")
    mask = read_mask(tmp_path / "ds" / "masks" / "r.png")
    b = _coco(_cvat_rotate(5.5, 3, 25, 12.5, 30.5), 40, 40)
    a = np.zeros((40, 40), bool)
    a[12:32, 18:22] = True  # 20x4 box about (20, 22) turned upright: 4 wide, 20 tall
    expected = np.zeros((40, 40), np.uint8)
    expected[a] = 2
    expected[b] = 1
    np.testing.assert_array_equal(mask, expected)


def test_ellipse_and_mask_clipped_at_the_border(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _blank(src, "e.png", 40, 30)
    _write_xml(
        src,
        _image(
            "e.png",
            40,
            30,
            """
        <ellipse label="a" cx="20.4" cy="15" rx="8.6" ry="5" rotation="30"/>
        <mask label="b" rle="0, 3, 1, 4" left="37" top="28" width="4" height="2" z_order="1"/>""",
        ),
    )
    run_import("cvat", src, tmp_path / "ds")
    mask = read_mask(tmp_path / "ds" / "masks" / "e.png")
    ellipse = np.zeros((30, 40), np.uint8)
    cv2.ellipse(ellipse, (20, 15), (9, 5), 30.0, 0, 360, 2, thickness=-1)  # CVAT rounds, then fills
    ellipse[28:30, 37:40] = [[1, 1, 1], [1, 1, 1]]  # bits [[1,1,1,0],[1,1,1,1]] cut at x = 40
    np.testing.assert_array_equal(mask, ellipse)


def test_tracks_give_their_shape_at_the_image_frame(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _blank(src, "f0.png", 20, 20)
    _blank(src, "f1.png", 20, 20)
    body = (
        _image("f0.png", 20, 20, "", 0)
        + _image("f1.png", 20, 20, "", 1)
        + """
        <track id="0" label="a">
          <box frame="0" outside="0" keyframe="1" xtl="0" ytl="0" xbr="10" ybr="10"/>
          <box frame="1" outside="1" keyframe="1" xtl="0" ytl="0" xbr="10" ybr="10"/>
        </track>"""
    )
    _write_xml(src, body)
    run_import("cvat", src, tmp_path / "ds")
    assert int((read_mask(tmp_path / "ds" / "masks" / "f0.png") == 2).sum()) == 100
    assert not read_mask(tmp_path / "ds" / "masks" / "f1.png").any()
    track = '<box frame="0" outside="0" xtl="0" ytl="0" xbr="1" ybr="1"/>'
    video = _write_xml(tmp_path / "video", f'<track id="0" label="a">{track}</track>')
    with pytest.raises(DataError, match="CVAT for video"):
        run_import("cvat", video, tmp_path / "ds2")


def test_per_subset_files_give_splits(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _blank(src / "images", "t.png", 8, 8)
    _blank(src / "images", "v.png", 8, 8)
    box = '<box label="a" xtl="0" ytl="0" xbr="2" ybr="2"/>'
    _write_xml(src, _image("t.png", 8, 8, box), "train.xml")
    _write_xml(src, _image("v.png", 8, 8, ""), "valid.xml")
    run_import("cvat", src, tmp_path / "ds")
    splits = read_splits(tmp_path / "ds" / "splits.csv").values()
    assert {r.stem: r.split for r in splits} == {"t": "train", "v": "val"}


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<annotations><version>&lol3;</version></annotations>"""

XXE = """<?xml version="1.0"?>
<!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<annotations><version>&xxe;</version></annotations>"""


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (BILLION_LAUGHS, "unsafe XML"),
        (XXE, "unsafe XML"),
        (
            "<annotations>\n<image name='a.png'>\n</annotations>",
            r"not valid XML \(mismatched tag at line 3",
        ),
        ("<annotation><filename>a.png</filename></annotation>", "not CVAT XML"),
    ],
)
def test_bad_xml_names_the_file_and_writes_nothing(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(DataError, match=f"bad.xml: {match}"):
        run_import("cvat", path, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        (
            '<mask label="a" rle="3, 5, 7" left="0" top="0" width="4" height="4"/>',
            "rle counts sum to 15, not 4x4 = 16",
        ),
        ('<polygon label="a" points="0,0;5,x;5,5"/>', "malformed points"),
        ('<polygon label="a" points="0,0;5,5"/>', "polygon needs at least 3"),
        ('<box label="a" xtl="0" ytl="0" xbr="500" ybr="5"/>', "far outside"),
    ],
)
def test_broken_shapes_are_data_errors(tmp_path: Path, shape: str, match: str) -> None:
    src = tmp_path / "src"
    _blank(src, "a.png", 10, 10)
    _write_xml(src, _image("a.png", 10, 10, shape))
    with pytest.raises(DataError, match=match) as err:
        run_import("cvat", src, tmp_path / "ds")
    assert "annotations.xml" in str(err.value)
    assert not (tmp_path / "ds").exists()


def test_image_outside_the_source_is_refused(tmp_path: Path) -> None:
    _blank(tmp_path, "secret.png", 10, 10)
    src = tmp_path / "src"
    _write_xml(src, _image("../secret.png", 10, 10, ""))
    with pytest.raises(DataError, match="escapes the source folder"):
        run_import("cvat", src, tmp_path / "ds")


def test_source_is_never_modified(real: Path, tmp_path: Path) -> None:
    src = real / "cvat" / "datumaro_export_task"
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    run_import("cvat", src, tmp_path / "ds")
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before


def test_cli(cli, real: Path, tmp_path: Path) -> None:
    images = _blank(tmp_path / "imgs", "filename000.jpg", 1600, 1200)
    ok = cli("import", "cvat", real / "cvat" / "docs_example", tmp_path / "ds", "--images", images)
    assert ok.exit_code == 0, ok.stderr
    assert (tmp_path / "ds" / "masks" / "filename000.png").is_file()
    src = tmp_path / "src"
    _blank(src, "a.png", 10, 10)
    short_rle = '<mask label="a" rle="1, 2" left="0" top="0" width="2" height="2"/>'
    _write_xml(src, _image("a.png", 10, 10, short_rle))
    bad = cli("import", "cvat", src, tmp_path / "ds2")
    assert bad.exit_code == 1
    assert bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
    assert "annotations.xml" in bad.stderr and "rle counts sum to 3" in bad.stderr
    assert not (tmp_path / "ds2").exists()
