"""Helpers of the hostile-input corpus: cases, tiny inputs, and the checks every case makes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.conftest import CliResult, run_cli


@dataclass(frozen=True)
class Case:
    """One hostile input: ``build(tmp, shared)`` makes it and returns the CLI arguments."""

    build: Callable[[Path, Any], Sequence[str | Path]]
    code: int  # 1: data error, 2: usage error
    needles: tuple[str, ...]  # substrings the error line must contain (file/key, problem)


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file (sha256) and folder under ``roots``: equal before and after = untouched."""
    out: dict[str, str] = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_symlink():
                out[str(p)] = f"link:{p.readlink()}"
            elif p.is_dir():
                out[str(p)] = "dir"
            else:
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def error_line(stderr: str) -> str:
    """The one ``error:`` line of stderr; ``info:`` lines said before it are allowed.

    (predict/eval say which backend they chose before reading the first image.)
    """
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("info: ")]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def assert_refused(res: CliResult, case: Case, before: dict[str, str], *roots: Path) -> None:
    """The promises of every hostile case (see the package docstring)."""
    assert "Traceback" not in res.stderr + res.stdout, res.stderr
    assert res.exit_code == case.code, (res.exit_code, res.stderr, res.stdout)
    line = error_line(res.stderr)
    for needle in case.needles:
        assert needle in line, (needle, line)
    after = snapshot(*roots)
    assert set(after) - set(before) == set(), f"left behind: {sorted(set(after) - set(before))}"
    assert set(before) - set(after) == set(), f"removed: {sorted(set(before) - set(after))}"
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, f"modified: {changed}"


def run_case(case: Case, tmp: Path, shared: Any, *extra_roots: Path) -> None:
    """Build the case under ``tmp``, run it, and check every promise."""
    args = list(case.build(tmp, shared))
    roots = (tmp, *extra_roots)
    before = snapshot(*roots)
    res = run_cli(*args)
    assert_refused(res, case, before, *roots)


# ------------------------------------------------------------------------------------------------
# Tiny inputs


def img(path: Path, size: tuple[int, int] = (32, 24), mode: str = "RGB") -> Path:
    """A ``size`` = (width, height) image file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 90 if mode == "L" else (90, 60, 30)).save(path)
    return path


def mask(path: Path, values: np.ndarray | None = None) -> Path:
    """A 24 x 32 index PNG (a 5 x 5 square of class 1 unless ``values``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if values is None:
        values = np.zeros((24, 32), np.uint8)
        values[5:10, 5:10] = 1
    Image.fromarray(values).save(path)
    return path


def write_json(path: Path, doc: Any) -> Path:
    """``doc`` as JSON at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def labelme(folder: Path, points: Any = None, **fields: Any) -> Path:
    """``folder/a.json`` (LabelMe) over ``folder/a.png``; ``fields`` replace document keys."""
    img(folder / "a.png")
    shape = {"label": "vein", "points": points or [[2, 2], [20, 2], [20, 15]],
             "shape_type": "polygon"}  # fmt: skip
    doc = {"version": "5.0.1", "shapes": [shape], "imagePath": "a.png", "imageData": None,
           "imageHeight": 24, "imageWidth": 32, **fields}  # fmt: skip
    return write_json(folder / "a.json", doc)


def masks_src(tmp: Path, n: int = 2) -> Path:
    """A ``masks`` source: ``images/aI.png`` + ``masks/aI.png``."""
    src = tmp / "src"
    for i in range(n):
        img(src / "images" / f"a{i}.png")
        mask(src / "masks" / f"a{i}.png")
    return src


def coco(tmp: Path, annotation: dict[str, Any], **image: Any) -> Path:
    """``src/ann.json`` (COCO) with one image ``a.png`` and one annotation."""
    img(tmp / "src" / "a.png")
    entry = {"id": 1, "file_name": "a.png", "width": 32, "height": 24, **image}
    ann = {"id": 7, "image_id": 1, "category_id": 1, "iscrowd": 0, **annotation}
    doc = {"images": [entry], "categories": [{"id": 1, "name": "vein"}], "annotations": [ann]}
    return write_json(tmp / "src" / "ann.json", doc)


def cvat(tmp: Path, shape: str, width: int = 32, height: int = 24) -> Path:
    """``src/annotations.xml`` (CVAT for images 1.1) with one shape over ``a.png``."""
    img(tmp / "src" / "a.png")
    path = tmp / "src" / "annotations.xml"
    path.write_text(
        f'<annotations><version>1.1</version><image id="0" name="a.png" width="{width}" '
        f'height="{height}">{shape}</image></annotations>'
    )
    return path


def geojson(tmp: Path, ring: list[Any], **doc: Any) -> Path:
    """``src/scene.geojson`` with one polygon over ``src/scene.png``."""
    img(tmp / "src" / "scene.png")
    feature = {"type": "Feature", "properties": {},
               "geometry": {"type": "Polygon", "coordinates": [ring]}}  # fmt: skip
    return write_json(
        tmp / "src" / "scene.geojson", {"type": "FeatureCollection", "features": [feature], **doc}
    )


def labelstudio(tmp: Path, value: dict[str, Any], kind: str = "polygonlabels") -> Path:
    """``src/export.json`` (Label Studio JSON) with one region over ``a.png``."""
    img(tmp / "src" / "a.png")
    result = {"id": "r1", "type": kind, "from_name": "label", "to_name": "image",
              "original_width": 32, "original_height": 24,
              "value": {**value, kind: ["vein"]}}  # fmt: skip
    task = {"id": 1, "data": {"image": "/data/upload/1/a.png"},
            "annotations": [{"id": 1, "result": [result]}]}  # fmt: skip
    return write_json(tmp / "src" / "export.json", [task])


def yaml_bomb(levels: int = 7) -> str:
    """A few hundred bytes of YAML whose aliases expand to 9 ** levels values."""
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


def nan_dataset(tmp: Path) -> Path:
    """``tmp/ds``: three float32 TIFF images; ``s001``, in the train split, has a NaN pixel."""
    import tifffile

    from tests.fixtures.synthetic import make_dataset

    root = make_dataset(tmp / "ds", n=3, size=(24, 32), ext=".tif")
    rng = np.random.default_rng(0)
    for i in range(3):
        image = rng.random((24, 32, 3)).astype(np.float32)
        if i == 1:
            image[3, 4, 0] = np.nan
        tifffile.imwrite(root / "images" / f"s00{i}.tif", image, photometric="rgb")
    (root / "splits.csv").write_text("stem,split\ns000,train\ns001,train\ns002,val\n")
    return root
