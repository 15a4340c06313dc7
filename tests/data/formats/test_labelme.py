"""LabelMe importer on real files from other projects and on generated edge cases."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from segflow.data.dataset import CanonicalDataset
from segflow.data.formats.base import ImportOptions, run_import
from segflow.data.image_io import read_mask
from segflow.errors import DataError


def _labelme_reference(
    doc: dict, names: list[str], line_width: int = 10, radius: int = 5
) -> np.ndarray:
    """Expected mask from labelme's documented rules: Pillow, outline included, list order."""
    h, w = doc["imageHeight"], doc["imageWidth"]
    out = np.zeros((h, w), np.uint8)
    for shape in doc["shapes"]:
        layer = Image.new("1", (w, h), 0)
        draw = ImageDraw.Draw(layer)
        xy = [tuple(p) for p in shape["points"]]
        kind = shape.get("shape_type", "polygon")
        if kind == "circle":
            (cx, cy), (px, py) = xy
            d = math.dist((cx, cy), (px, py))
            draw.ellipse([cx - d, cy - d, cx + d, cy + d], outline=1, fill=1)
        elif kind == "rectangle":
            draw.rectangle(xy, outline=1, fill=1)
        elif kind in ("line", "linestrip"):
            draw.line(xy=xy, fill=1, width=line_width)
        elif kind == "point":
            cx, cy = xy[0]
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=1, fill=1)
        else:
            draw.polygon(xy=xy, outline=1, fill=1)
        out[np.asarray(layer, dtype=bool)] = names.index(shape["label"])
    return out


def test_mandrill_every_shape_type_in_list_order(real: Path, tmp_path: Path) -> None:
    src = real / "labelme" / "mandrill"
    report = run_import("labelme", src, tmp_path / "ds")
    ds = CanonicalDataset(tmp_path / "ds")
    names = [c.name for c in ds.meta.classes]
    assert names == [
        "background",
        "Eye",
        "EyeBrow",
        "Glabella",
        "Groove",
        "Iris",
        "Nose",
        "Nostril",
    ]
    doc = json.loads((src / "Mandrill.json").read_text())
    expected = _labelme_reference(doc, names)
    mask = read_mask(tmp_path / "ds" / "masks" / "Mandrill.png")
    np.testing.assert_array_equal(mask, expected)
    counts = report.class_pixels
    for i, name in enumerate(names):
        assert counts[name] == int((expected == i).sum()), name
    # Later shapes paint over earlier ones: both nostril points sit inside the nose rectangle.
    assert counts["Nostril"] > 0 and mask[191, 101] == names.index("Nostril")
    # The image was copied byte for byte, not re-encoded.
    assert (tmp_path / "ds" / "images" / "Mandrill.jpg").read_bytes() == (
        src / "Mandrill.jpg"
    ).read_bytes()


def test_v3_file_embedded_image_non_ascii_labels(real: Path, tmp_path: Path) -> None:
    report = run_import("labelme", real / "labelme" / "v3_embedded_imagedata", tmp_path / "ds")
    counts = report.class_pixels
    # Two full-width rectangles drawn as polygons; x = 2560 (one past the last column) is clipped.
    assert counts["不导电"] == 2558 * (1446 - 1178 + 1)
    assert counts["角位漏底"] == 2560 * (1172 - 1017 + 1)
    assert counts["background"] == 2560 * 1920 - counts["不导电"] - counts["角位漏底"]
    assert report.samples[0].height == 1920 and report.samples[0].width == 2560


def test_windows_path_missing_image_names_file(real: Path, tmp_path: Path) -> None:
    src = real / "labelme" / "windows_backslash_path"
    with pytest.raises(DataError, match=r"backslash\.json: image 'parent\\stem\.jpg' not found"):
        run_import("labelme", src, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_windows_path_resolves_by_file_name(real: Path, tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (512, 512)).save(images / "stem.jpg")
    report = run_import(
        "labelme",
        real / "labelme" / "windows_backslash_path",
        tmp_path / "ds",
        ImportOptions(images=images),
    )
    # One point of radius 5 at (0, 1): a clipped disk.
    assert report.class_pixels["TL"] > 0
    assert report.meta.class_names == ["background", "TL"]


def _write_labelme(
    folder: Path, stem: str, shapes: list[dict], size: tuple[int, int] = (40, 60), **extra
) -> Path:
    h, w = size
    img = folder / f"{stem}.png"
    Image.new("RGB", (w, h), (10, 20, 30)).save(img)
    doc = {
        "version": "5.0.1",
        "shapes": shapes,
        "imagePath": img.name,
        "imageData": None,
        "imageHeight": h,
        "imageWidth": w,
        **extra,
    }
    path = folder / f"{stem}.json"
    path.write_text(json.dumps(doc))
    return path


def _shape(label: str, points: list, kind: str = "polygon", **extra) -> dict:
    return {
        "label": label,
        "points": points,
        "shape_type": kind,
        "group_id": None,
        "flags": {},
        **extra,
    }


def test_mask_shape_and_classes_file_with_ignore(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    bits = np.zeros((5, 4), np.uint8)
    bits[1:4, 1:3] = 255
    buf = io.BytesIO()
    Image.fromarray(bits).save(buf, format="PNG")
    _write_labelme(
        src,
        "a",
        [
            _shape("vein", [[2, 2], [20, 2], [20, 20], [2, 20]]),
            _shape(
                "blur", [[30, 30], [33, 34]], "mask", mask=base64.b64encode(buf.getvalue()).decode()
            ),
        ],
    )
    classes = tmp_path / "labels.txt"
    classes.write_text("__ignore__\n_background_\nvein\n")
    report = run_import("labelme", src, tmp_path / "ds", ImportOptions(classes=classes))
    mask = read_mask(tmp_path / "ds" / "masks" / "a.png")
    assert report.meta.class_names == ["_background_", "vein"]
    assert int((mask == 1).sum()) == 19 * 19
    # 'blur' is not listed: skipped with a warning (not --strict), so nothing painted at the mask.
    assert int((mask == 255).sum()) == 0
    assert any("'blur'" in w for w in report.warnings)
    classes.write_text("__ignore__\n_background_\nvein\n")
    yaml_classes = tmp_path / "classes.yaml"
    yaml_classes.write_text("classes: [background, vein]\nignore: [blur]\n")
    run_import("labelme", src, tmp_path / "ds2", ImportOptions(classes=yaml_classes))
    mask2 = read_mask(tmp_path / "ds2" / "masks" / "a.png")
    assert int((mask2 == 255).sum()) == 6  # the 3x2 block of the embedded mask
    assert mask2[31:34, 31:33].tolist() == [[255, 255]] * 3


def test_strict_unknown_label_fails_and_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _write_labelme(src, "a", [_shape("cat", [[2, 2], [20, 2], [20, 20]])])
    classes = tmp_path / "c.txt"
    classes.write_text("background\ndog\n")
    with pytest.raises(DataError, match="'cat' not in classes file"):
        run_import("labelme", src, tmp_path / "ds", ImportOptions(classes=classes, strict=True))
    assert not (tmp_path / "ds").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "src"]


def test_v3_without_shape_type_is_polygon_and_later_paints_over(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _write_labelme(
        src,
        "a",
        [
            {
                "label": "b",
                "points": [[0, 0], [30, 0], [30, 30], [0, 30]],
                "line_color": None,
                "fill_color": None,
            },
            {
                "label": "a",
                "points": [[10, 10], [20, 10], [20, 20], [10, 20]],
                "line_color": None,
                "fill_color": None,
            },
        ],
    )
    run_import("labelme", src, tmp_path / "ds")
    mask = read_mask(tmp_path / "ds" / "masks" / "a.png")
    assert int((mask == 1).sum()) == 11 * 11  # 'a' (id 1) drawn last, outline included
    assert int((mask == 2).sum()) == 31 * 31 - 11 * 11


def test_source_is_never_modified(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _write_labelme(src, "a", [_shape("x", [[1, 1], [9, 1], [9, 9]])])
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    run_import("labelme", src, tmp_path / "ds")
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
