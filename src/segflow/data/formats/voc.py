"""PASCAL VOC segmentation: ``JPEGImages/`` + ``SegmentationClass/`` PNGs (+ split lists).

``SegmentationClass/<stem>.png`` is a palette (``P``) PNG whose indices are the class ids (255 is
the void border -> ignore), or an RGB PNG whose colours are looked up in the VOC colour map
(void colour (224, 224, 192) -> ignore); both kinds may be mixed. ``SegmentationClassAug/``
(the SBD-augmented index PNGs) is read when ``SegmentationClass/`` is absent.

Classes, ids kept as in the masks: ``--classes`` if given, else ``labelmap.txt`` (the
datumaro/CVAT ``name:r,g,b:parts:actions`` lines), else the 21 standard VOC classes with the
standard colour map. ``ImageSets/Segmentation/{train,val,test}.txt`` give the splits
(``trainval.txt`` counts as train when there is no ``train.txt``/``val.txt``). Images listed there
without a mask are unlabelled and skipped with one warning. ``Annotations/*.xml`` (boxes) and
``SegmentationObject/`` (instances) are not semantic segmentation and are ignored.
"""

from __future__ import annotations

from pathlib import Path

from segflow.classes import default_color
from segflow.data.dataset import IGNORE_INDEX
from segflow.data.formats import IMPORTERS
from segflow.data.formats._index_masks import (
    Color,
    MaskDecoding,
    MaskFileImporter,
    MaskPayload,
    fixed_mapping,
    pack_color,
)
from segflow.data.formats._pairing import read_split_lists, summarise
from segflow.data.formats.base import (
    ImportOptions,
    ImportPlan,
    SampleSpec,
    images_by_stem,
    safe_stem,
)
from segflow.data.formats.classes import load_classes_file
from segflow.errors import DataError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
#: Colour of the void border in RGB VOC masks (index 255 in palette masks).
VOID_COLOR = (224, 224, 192)
_MASK_DIRS = ("SegmentationClass", "SegmentationClassAug")


def _voc_root(src: Path) -> Path:
    """``src`` itself, or the one ``VOC*`` dataset folder inside it (``VOCdevkit/VOC2012``)."""
    if any((src / d).is_dir() for d in _MASK_DIRS):
        return src
    found = sorted(
        {p.parent for d in _MASK_DIRS for p in [*src.glob(f"*/{d}"), *src.glob(f"*/*/{d}")]}
    )
    if len(found) == 1:
        return found[0]
    missing = [f"{d}/" for d in ("JPEGImages", "SegmentationClass") if not (src / d).is_dir()]
    raise DataError(
        src,
        f"not a PASCAL VOC segmentation folder: {' and '.join(missing)} missing (expected "
        "JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/)",
    )


def parse_labelmap(path: Path) -> tuple[list[str], list[Color | None]]:
    """Names and colours of a datumaro/CVAT ``labelmap.txt`` (``name:r,g,b:parts:actions``)."""
    names: list[str] = []
    colors: list[Color | None] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, rest = line.partition(":")
        name = name.strip()
        if not name:
            raise DataError(path, f"line {lineno}: no label name before ':'")
        text = rest.partition(":")[0].strip()
        color: Color | None = None
        if text:
            parts = text.split(",")
            if len(parts) != 3 or not all(p.strip().isdigit() and int(p) < 256 for p in parts):
                raise DataError(path, f"line {lineno}: colour {text!r} is not r,g,b (0..255)")
            color = (int(parts[0]), int(parts[1]), int(parts[2]))
        names.append(name)
        colors.append(color)
    if not names:
        raise DataError(path, "labelmap lists no labels")
    return names, colors


@IMPORTERS.register("voc")
class VocImporter(MaskFileImporter):
    """PASCAL VOC segmentation folders (the one holding JPEGImages/ and SegmentationClass/)."""

    name = "voc"
    summary = "PASCAL VOC: JPEGImages + SegmentationClass PNGs (palette or RGB), ImageSets splits"

    def plan(self, src: Path, options: ImportOptions) -> ImportPlan:
        """Pair every mask with its image; classes from --classes, labelmap.txt or VOC's 21."""
        if src.is_file():
            raise DataError(
                src, "the voc importer reads a folder (the one holding SegmentationClass/)"
            )
        root = _voc_root(src)
        masks_dir = next(root / d for d in _MASK_DIRS if (root / d).is_dir())
        images_dir = options.images or root / "JPEGImages"
        if not images_dir.is_dir():
            raise DataError(
                root, "JPEGImages/ missing (pass --images DIR if the images are elsewhere)"
            )
        names, colors, origin = self._classes(root, options)
        table = {pack_color(c): i for i, c in enumerate(colors)}
        table.setdefault(pack_color(VOID_COLOR), IGNORE_INDEX)
        decoding = MaskDecoding("auto", len(names), origin, table)

        masks = {
            p.stem: p
            for p in sorted(masks_dir.iterdir())
            if p.is_file() and p.suffix.lower() == ".png"
        }
        images = images_by_stem(images_dir)
        splits, warnings = read_split_lists(root / "ImageSets" / "Segmentation")
        samples: list[SampleSpec] = []
        no_image: list[str] = []
        for stem, mask in masks.items():
            image = images.get(stem)
            if image is None:
                no_image.append(stem)
                continue
            payload = MaskPayload(mask, decoding)
            samples.append(
                SampleSpec(safe_stem(stem), mask, image, payload, split=splits.get(stem, ""))
            )
        unlabelled = sorted(s for s in splits if s not in masks)
        if unlabelled:
            warnings.append(
                f"{root}: {len(unlabelled)} image(s) listed in ImageSets/Segmentation have no "
                f"mask in {masks_dir.name}/ and were skipped (unlabelled): {summarise(unlabelled)}"
            )
        if no_image:
            warnings.append(
                f"{masks_dir}: {len(no_image)} mask(s) have no image in {images_dir} and were "
                f"skipped: {summarise(no_image)}"
            )
        return ImportPlan(samples, names, mapping=fixed_mapping(names, colors), warnings=warnings)

    @staticmethod
    def _classes(root: Path, options: ImportOptions) -> tuple[list[str], list[Color], str]:
        """Class names, colours (pixel id = position) and where they come from."""
        if options.classes is not None:
            spec = load_classes_file(options.classes)
            names, declared, origin = spec.names, spec.colors, f"--classes {options.classes}"
        elif (root / "labelmap.txt").is_file():
            names, declared = parse_labelmap(root / "labelmap.txt")
            origin = str(root / "labelmap.txt")
        else:
            names, declared, origin = list(VOC_CLASSES), [], "the 21 standard VOC classes"
        colors: list[Color] = []
        for i in range(len(names)):
            color = declared[i] if i < len(declared) else None
            colors.append(color if color is not None else default_color(i))
        return names, colors, origin
