"""Roboflow exports, two layouts (auto-detected), each in split folders ``train/valid/test``.

* **Semantic Segmentation Masks** ("PNG Masks For Semantic Segmentation"): each split folder has
  ``_classes.csv`` (header ``Pixel Value, Class``) and pairs ``<stem>.jpg`` + ``<stem>_mask.png``
  whose pixels are class ids. The csv's pixel values are the class ids (class 0 is usually an
  explicit ``background``); values that are not dense from 0 are renumbered with a warning. A
  mask pixel value missing from the csv is an error, as are different csvs in two split folders.
  A class the ``--classes`` file drops leaves background.
* **COCO Segmentation**: ``_annotations.coco.json`` per split folder, read by the COCO importer
  with Roboflow's rule: category 0 with supercategory ``none`` is the project's superclass
  placeholder and is dropped when no annotation uses it (its name often repeats a real class).

The split comes from the folder name (``valid`` -> ``val``). The licence and source lines of
``README.dataset.txt`` / ``README.roboflow.txt`` (or the COCO ``licenses`` block) go to the
dataset's notes.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segflow.data import image_io
from segflow.data.formats import IMPORTERS
from segflow.data.formats.base import (
    Importer,
    ImportOptions,
    ImportPlan,
    RenderResult,
    SampleSpec,
    find_files,
    safe_stem,
)
from segflow.data.formats.coco import SPLITS, plan_coco, render_coco
from segflow.errors import DataError

CLASSES_CSV = "_classes.csv"
COCO_JSON = "_annotations.coco.json"
MASK_SUFFIX = "_mask.png"
_README_LINE = re.compile(r"^(#\s|https?://|licen[cs]e:|this dataset was exported via)", re.I)


@dataclass
class MaskPayload:
    """A Roboflow mask and the csv that names its pixel values."""

    mask: Path
    csv: Path
    classes: dict[int, str]  # pixel value -> class name


def read_classes_csv(path: Path) -> dict[int, str]:
    """Parse ``_classes.csv`` (``Pixel Value, Class``; spaces after commas; any line ending)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read: {exc}") from None
    rows = [
        r for r in csv.reader(io.StringIO(text), skipinitialspace=True) if any(c.strip() for c in r)
    ]
    if not rows or [c.strip().lower() for c in rows[0]] != ["pixel value", "class"]:
        raise DataError(path, "expected the header 'Pixel Value, Class'")
    classes: dict[int, str] = {}
    for row in rows[1:]:
        value = row[0].strip()
        name = row[1].strip() if len(row) == 2 else ""
        if not value.isdigit() or int(value) > 255 or not name:
            raise DataError(path, f"row {','.join(row)!r} is not 'pixel value (0-255), class name'")
        if int(value) in classes or name in classes.values():
            raise DataError(path, f"row {','.join(row)!r} repeats a pixel value or a class name")
        classes[int(value)] = name
    if not classes:
        raise DataError(path, "lists no classes")
    return dict(sorted(classes.items()))


def _split_of(folder: Path) -> str:
    return SPLITS.get(folder.name.lower(), "")


def _readme_notes(root: Path) -> list[str]:
    lines = []
    for name in ("README.dataset.txt", "README.roboflow.txt"):
        path = root / name
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            lines += [
                ln.strip().lstrip("# ")
                for ln in text.splitlines()
                if _README_LINE.match(ln.strip())
            ]
    return lines


@IMPORTERS.register("roboflow")
class RoboflowImporter(Importer):
    """A Roboflow export folder: semantic PNG masks or COCO segmentation."""

    name = "roboflow"
    summary = "Roboflow exports: PNG semantic masks (_classes.csv) or COCO segmentation"

    def plan(self, src: Path, options: ImportOptions) -> ImportPlan:
        """Detect the layout, then plan the masks or hand the JSONs to the COCO importer."""
        root = src if src.is_dir() else src.parent
        csvs = (
            find_files(root, [CLASSES_CSV]) if src.is_dir() else [src] * (src.name == CLASSES_CSV)
        )
        jsons = find_files(root, [COCO_JSON]) if src.is_dir() else [src] * (src.name == COCO_JSON)
        if csvs and jsons:
            raise DataError(
                src,
                f"holds both {CLASSES_CSV} and {COCO_JSON} exports; import one folder at a time",
            )
        if jsons:
            plan = plan_coco(src, jsons, options, drop_placeholder=True)
        elif csvs:
            plan = self._plan_masks(csvs)
        else:
            raise DataError(
                src,
                f"not a Roboflow export (no {CLASSES_CSV} for semantic masks nor {COCO_JSON} "
                "for COCO segmentation)",
            )
        notes = _readme_notes(root) + ([plan.notes] if plan.notes else [])
        plan.notes = "\n".join(dict.fromkeys(notes))
        return plan

    @staticmethod
    def _plan_masks(csvs: list[Path]) -> ImportPlan:
        classes = read_classes_csv(csvs[0])
        for other in csvs[1:]:
            if read_classes_csv(other) != classes:
                raise DataError(
                    other, f"lists other classes than {csvs[0]}; every split must share them"
                )
        warnings = []
        if list(classes) != list(range(len(classes))):
            warnings.append(
                f"{csvs[0]}: pixel values {list(classes)} are not dense from 0; classes are "
                f"renumbered 0..{len(classes) - 1} in that order"
            )
        samples: list[SampleSpec] = []
        for path in csvs:
            folder = path.parent
            files = {p.name: p for p in folder.iterdir() if p.is_file()}
            images = [
                p
                for n, p in sorted(files.items())
                if image_io.is_image_file(p) and not n.endswith(MASK_SUFFIX)
            ]
            paired = set()
            for image in images:
                mask = files.get(f"{image.stem}{MASK_SUFFIX}")
                if mask is None:
                    warnings.append(f"{image}: no {image.stem}{MASK_SUFFIX} beside it, skipped")
                    continue
                paired.add(mask.name)
                payload = MaskPayload(mask, path, classes)
                samples.append(
                    SampleSpec(safe_stem(image.stem), mask, image, payload, split=_split_of(folder))
                )
            orphans = [n for n in sorted(files) if n.endswith(MASK_SUFFIX) and n not in paired]
            if orphans:
                warnings.append(
                    f"{folder}: {len(orphans)} mask(s) without an image skipped: {orphans[0]}"
                )
        return ImportPlan(
            samples, list(classes.values()), has_background=0 in classes, warnings=warnings
        )

    def render(
        self,
        spec: SampleSpec,
        height: int,
        width: int,
        label_ids: Mapping[str, int],
        options: ImportOptions,
    ) -> RenderResult:
        """Map the mask's pixel values to class ids, or paint the COCO annotations."""
        if not isinstance(spec.payload, MaskPayload):
            return render_coco(spec, height, width, label_ids, options)
        payload = spec.payload
        mask = image_io.read_mask(payload.mask)
        if mask.shape != (height, width):
            raise DataError(
                payload.mask,
                f"is {mask.shape[1]}x{mask.shape[0]} but the image is {width}x{height}",
            )
        present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
        unknown = [int(v) for v in present if int(v) not in payload.classes]
        if unknown:
            raise DataError(
                payload.mask,
                f"pixel value(s) {unknown} are not listed in {payload.csv} "
                f"(values {list(payload.classes)})",
            )
        lut = np.zeros(256, dtype=np.uint8)
        for value, name in payload.classes.items():
            lut[value] = label_ids.get(name, 0)  # a dropped class leaves background
        return RenderResult(lut[mask])
