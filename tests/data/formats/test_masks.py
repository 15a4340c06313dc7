"""Mask-folder importer: every mask kind, suffix matching, shared masks, real CHASE_DB1 files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segflow.data.dataset import CanonicalDataset
from segflow.data.formats.base import ImportOptions, run_import
from segflow.data.image_io import read_mask
from segflow.errors import DataError, UsageError

CHASE = Path("/work/shared/datasets/chase_db1")
H, W = 8, 12


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _dataset(root: Path, masks: dict[str, np.ndarray], images: list[str] | None = None) -> Path:
    """``images/<stem>.jpg`` for every stem (default: the mask names) + ``masks/<name>.png``."""
    for stem in images if images is not None else list(masks):
        _save(root / "images" / f"{stem}.jpg", np.full((H, W, 3), 100, np.uint8))
    for name, arr in masks.items():
        _save(root / "masks" / f"{name}.png", arr)
    return root


def _index_mask(seed: int) -> np.ndarray:
    mask = np.random.default_rng(seed).integers(0, 4, (H, W)).astype(np.uint8)
    mask[0, 0] = 255
    return mask


def test_index_masks_keep_ids_and_ignore(tmp_path: Path) -> None:
    masks = {"a": _index_mask(0), "b": _index_mask(1)}
    report = run_import("masks", _dataset(tmp_path / "src", masks), tmp_path / "ds")
    assert report.meta.class_names == ["background", "class_1", "class_2", "class_3"]
    for stem, arr in masks.items():
        np.testing.assert_array_equal(read_mask(tmp_path / "ds" / "masks" / f"{stem}.png"), arr)
    both = np.concatenate([m.ravel() for m in masks.values()])
    counts = report.class_pixels
    assert [counts[n] for n in report.meta.class_names] == np.bincount(both, minlength=4)[
        :4
    ].tolist()
    assert counts["ignore"] == 2


def test_binary_0_255_and_16_bit(tmp_path: Path) -> None:
    binary = np.zeros((H, W), np.uint8)
    binary[2:5, 3:9] = 255
    report = run_import("masks", _dataset(tmp_path / "bin", {"a": binary}), tmp_path / "ds")
    assert report.meta.class_names == ["background", "foreground"]
    assert report.class_pixels == {"background": H * W - 18, "foreground": 18, "ignore": 0}
    src = _dataset(tmp_path / "u16", {})
    _save(src / "images" / "a.jpg", np.zeros((H, W, 3), np.uint8))
    _save(src / "masks" / "a.png", (binary > 0).astype(np.uint16) * 2)
    with Image.open(src / "masks" / "a.png") as img:
        assert img.mode.startswith("I")
    report = run_import("masks", src, tmp_path / "ds16")
    assert report.meta.class_names == ["background", "class_1", "class_2"]
    assert report.class_pixels["class_2"] == 18


def _rgb(colors: list[tuple[int, int, int]]) -> np.ndarray:
    """Vertical bands, one per colour."""
    out = np.zeros((H, W, 3), np.uint8)
    for i, c in enumerate(colors):
        out[:, i * W // len(colors) : (i + 1) * W // len(colors)] = c
    return out


def test_rgb_with_palette_file(tmp_path: Path) -> None:
    src = _dataset(tmp_path / "src", {"a": _rgb([(0, 0, 0), (0, 255, 0), (255, 0, 0), (9, 9, 9)])})
    palette = tmp_path / "palette.yaml"
    palette.write_text(
        "classes:\n  - {name: soil, color: [0, 0, 0]}\n  - {name: weed, color: [255, 0, 0]}\n"
        "  - {name: crop, color: [0, 255, 0]}\n  - {name: __ignore__, color: [9, 9, 9]}\n"
    )
    report = run_import("masks", src, tmp_path / "ds", ImportOptions(palette=palette))
    assert report.meta.class_names == ["soil", "weed", "crop"]
    assert report.class_pixels == {"soil": 24, "weed": 24, "crop": 24, "ignore": 24}
    assert (
        read_mask(tmp_path / "ds" / "masks" / "a.png")[0].tolist()
        == [0] * 3 + [2] * 3 + [1] * 3 + [255] * 3
    )
    palette.write_text(
        "classes:\n  - {name: soil, color: [0, 0, 0]}\n  - {name: crop, color: [0, 255, 0]}\n"
    )
    with pytest.raises(
        DataError, match=r"masks/a\.png: colours \(9, 9, 9\), \(255, 0, 0\) not in the colour table"
    ):
        run_import("masks", src, tmp_path / "o1", ImportOptions(palette=palette))
    with pytest.raises(UsageError, match="--palette and --classes"):
        run_import("masks", src, tmp_path / "o2", ImportOptions(palette=palette, classes=palette))
    assert not (tmp_path / "o1").exists()


def test_rgb_without_palette_numbers_colours_black_first(tmp_path: Path) -> None:
    masks = {"a": _rgb([(255, 0, 0), (0, 0, 0)]), "b": _rgb([(0, 0, 255), (0, 0, 0)])}
    report = run_import("masks", _dataset(tmp_path / "src", masks), tmp_path / "ds")
    assert report.meta.class_names == ["background", "class_1", "class_2"]
    assert [c.color for c in report.meta.classes] == [(0, 0, 0), (0, 0, 255), (255, 0, 0)]
    assert report.class_pixels == {"background": 96, "class_1": 48, "class_2": 48, "ignore": 0}
    assert any("(0, 0, 255) -> 1 class_1" in w for w in report.warnings)


def test_rgb_noise_and_too_many_colours_are_errors(tmp_path: Path) -> None:
    big = np.zeros((100, 100, 3), np.uint8)
    big[:, 50:] = (200, 0, 0)
    big[40, 49] = (190, 4, 2)  # a JPEG-like in-between colour at the edge
    src = tmp_path / "noise"
    _save(src / "images" / "a.png", np.zeros((100, 100, 3), np.uint8))
    _save(src / "masks" / "a.png", big)
    with pytest.raises(
        DataError, match=r"a\.png: colour \(190, 4, 2\) \(1 px\) sits next to \(200, 0, 0\)"
    ):
        run_import("masks", src, tmp_path / "o1")
    many = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    with pytest.raises(DataError, match=r"masks: RGB masks hold 96 distinct colours, more than 64"):
        run_import("masks", _dataset(tmp_path / "many", {"a": many}), tmp_path / "o2")


def test_shared_masks_make_groups(tmp_path: Path) -> None:
    masks = {"scene1": _index_mask(0), "scene2": _index_mask(1)}
    src = _dataset(
        tmp_path / "src", masks, images=["scene1_2019", "scene1_2020", "scene2_2019", "other"]
    )
    report = run_import("masks", src, tmp_path / "ds")
    assert [s.stem for s in report.samples] == ["scene1_2019", "scene1_2020", "scene2_2019"]
    rows = CanonicalDataset(tmp_path / "ds").splits()
    assert {s: r.group for s, r in rows.items()} == {
        "scene1_2019": "scene1",
        "scene1_2020": "scene1",
    }
    np.testing.assert_array_equal(
        read_mask(tmp_path / "ds" / "masks" / "scene1_2020.png"), masks["scene1"]
    )
    assert any("1 image(s) without a mask skipped: other" in w for w in report.warnings)


def test_mask_suffix_and_split_folders(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for split, stem in (("train", "a"), ("train", "b"), ("val", "c")):
        _save(src / "images" / split / f"{stem}.png", np.zeros((H, W, 3), np.uint8))
        _save(src / "labels" / split / f"{stem}_mask.png", np.ones((H, W), np.uint8))
    _save(src / "labels" / "val" / "d_mask.png", np.ones((H, W), np.uint8))
    report = run_import("masks", src, tmp_path / "ds")
    assert [s.stem for s in report.samples] == ["a", "b", "c"]
    rows = CanonicalDataset(tmp_path / "ds").splits()
    assert {s: r.split for s, r in rows.items()} == {"a": "train", "b": "train", "c": "val"}
    assert any("1 mask(s) without an image skipped: val/d_mask" in w for w in report.warnings)


def test_chase_db1_two_images(tmp_path: Path) -> None:
    src = tmp_path / "chase"
    for stem in ("Image_01L", "Image_01R"):
        for sub, ext in (("images", "jpg"), ("masks", "png")):
            (src / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(CHASE / sub / f"{stem}.{ext}", src / sub / f"{stem}.{ext}")
    classes = tmp_path / "classes.txt"
    classes.write_text("background\nvessel\n")
    report = run_import("masks", src, tmp_path / "ds", ImportOptions(classes=classes))
    assert report.meta.class_names == ["background", "vessel"]
    assert [(s.stem, s.height, s.width) for s in report.samples] == [
        ("Image_01L", 960, 999),
        ("Image_01R", 960, 999),
    ]
    vessel = 0
    for stem in ("Image_01L", "Image_01R"):
        with Image.open(src / "masks" / f"{stem}.png") as img:
            original = np.array(img)
        np.testing.assert_array_equal(
            read_mask(tmp_path / "ds" / "masks" / f"{stem}.png"), original
        )
        vessel += int(original.sum())
    assert report.class_pixels["vessel"] == vessel
    assert report.class_pixels["background"] == 2 * 960 * 999 - vessel


def test_bad_inputs(real: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no image folder \(images/, imgs/, img/, image/\)"):
        run_import("masks", real / "voc" / "datumaro_voc_dataset1", tmp_path / "o1")
    src = _dataset(tmp_path / "size", {"a": np.zeros((H + 1, W), np.uint8)})
    with pytest.raises(
        DataError, match=rf"masks/a\.png: mask is {W}x{H + 1} but the image a\.jpg is {W}x{H}"
    ):
        run_import("masks", src, tmp_path / "o2")
    src = _dataset(tmp_path / "mixed", {"a": np.zeros((H, W), np.uint8), "b": _rgb([(1, 2, 3)])})
    with pytest.raises(
        DataError, match=r"b\.png: is an RGB colour mask but a\.png is single-channel"
    ):
        run_import("masks", src, tmp_path / "o3")
    classes = tmp_path / "c.txt"
    classes.write_text("background\nvessel\n")
    src = _dataset(tmp_path / "ids", {"a": _index_mask(0)})
    with pytest.raises(
        DataError, match=r"a\.png: pixel value 3 is not a class id: --classes .* lists 2"
    ):
        run_import("masks", src, tmp_path / "o4", ImportOptions(classes=classes))
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


def test_cli_import_and_error(tmp_path: Path, cli) -> None:
    result = cli(
        "import", "masks", _dataset(tmp_path / "ok", {"a": _index_mask(0)}), tmp_path / "ds"
    )
    assert result.exit_code == 0, result.stderr
    src = _dataset(tmp_path / "src", {"a": np.zeros((H + 1, W), np.uint8)})
    result = cli("import", "masks", src, tmp_path / "bad")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "a.png" in lines[0]
    assert not (tmp_path / "bad").exists()
