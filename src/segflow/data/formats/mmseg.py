"""MMSegmentation datasets: an image folder and an annotation folder of index PNGs.

Layouts (the first existing image and annotation folder names are used):

* ``img_dir/{train,val,test}/`` + ``ann_dir/{train,val,test}/``: the split is the subfolder
  (ADE20K's ``images/{training,validation}`` + ``annotations/...`` too);
* flat folders such as ``images/`` + ``annotations/``, ``img/`` + ``labels/`` or
  ``imgs/`` + ``gts/``, with optional split lists ``splits/{train,val,test}.txt`` of bare stems
  (MMSeg's ``ann_file``).

Image and annotation names pair by suffix (``00000_img.jpg`` / ``00000_gt.png``): ``--img-suffix``
and ``--seg-suffix``, else the suffix pair matching the most files. The canonical stem is the bare
stem (``00000``; ``a.png`` beside ``a.png`` is ``a``, as split lists name it).
Annotations are index PNGs: a palette PNG gives its indices, never its colours.
``--reduce-zero-label`` applies MMSeg's rule (0 -> 255 ignore, k -> k-1; 255 stays ignore).

MMSeg annotations carry no class names: ``--classes`` gives them (every pixel id must be below
their number), else id 0 is ``background`` and ids 1..K (the largest id found) are
``class_1``..``class_K``; with ``--reduce-zero-label`` they are ``class_0``..``class_K`` by the
reduced id.
"""

from __future__ import annotations

from pathlib import Path

from segflow.data.dataset import IGNORE_INDEX
from segflow.data.formats import IMPORTERS
from segflow.data.formats._index_masks import (
    MaskDecoding,
    MaskFileImporter,
    MaskPayload,
    default_names,
    fixed_mapping,
    scan_masks,
)
from segflow.data.formats._pairing import (
    image_keys,
    pair_by_suffix,
    read_split_lists,
    split_and_stem,
    summarise,
)
from segflow.data.formats.base import ImportOptions, ImportPlan, SampleSpec
from segflow.data.formats.classes import load_classes_file
from segflow.errors import DataError

_IMAGE_DIRS = ("img_dir", "images", "imgs", "img")
_ANN_DIRS = ("ann_dir", "annotations", "labels", "gts", "gt", "ann")


def _first_dir(src: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (src / name).is_dir():
            return src / name
    listed = ", ".join(f"{n}/" for n in names)
    raise DataError(src, f"no {what} folder ({listed}): not an MMSegmentation dataset folder")


def _without_extension(base: str) -> str:
    """``a.png`` -> ``a`` when the paired name still ends with an image extension."""
    from segflow.data import image_io

    suffix = Path(base).suffix
    return base[: -len(suffix)] if suffix and image_io.is_image_file(Path(base)) else base


@IMPORTERS.register("mmseg")
class MmsegImporter(MaskFileImporter):
    """MMSegmentation image + index-PNG annotation folders."""

    name = "mmseg"
    summary = "MMSegmentation: img_dir/ann_dir (or custom-suffix) folders of index PNGs"

    def plan(self, src: Path, options: ImportOptions) -> ImportPlan:
        """Pair images with annotations by suffix, read splits, fix the classes."""
        if src.is_file():
            raise DataError(
                src, "the mmseg importer reads a folder (holding e.g. img_dir/ and ann_dir/)"
            )
        img_root = options.images or _first_dir(src, _IMAGE_DIRS, "image")
        ann_root = _first_dir(src, _ANN_DIRS, "annotation")
        images, anns = image_keys(img_root), image_keys(ann_root)
        if not images:
            raise DataError(img_root, "no image files found")
        if not anns:
            raise DataError(ann_root, "no annotation files found")
        pairing = pair_by_suffix(images, anns, options.img_suffix, options.seg_suffix)
        if not pairing.pairs:
            raise DataError(
                src,
                f"no image name matches an annotation name (e.g. {next(iter(images))} vs "
                f"{next(iter(anns))}); pass --img-suffix and --seg-suffix",
            )
        warnings = []
        if pairing.lonely_images:
            warnings.append(
                f"{img_root}: {len(pairing.lonely_images)} image(s) without an annotation "
                f"(suffixes {pairing.img_suffix!r}/{pairing.seg_suffix!r}) skipped: "
                f"{summarise(pairing.lonely_images)}"
            )
        if pairing.lonely_annotations:
            warnings.append(
                f"{ann_root}: {len(pairing.lonely_annotations)} annotation(s) without an image "
                f"skipped: {summarise(pairing.lonely_annotations)}"
            )
        listed, list_warnings = read_split_lists(src / "splits")
        warnings += list_warnings
        known = {*pairing.pairs, *map(_without_extension, pairing.pairs)}
        unknown = sorted(name for name in listed if name not in known)
        if unknown:
            warnings.append(
                f"{src / 'splits'}: {len(unknown)} listed name(s) have no image: "
                f"{summarise(unknown)}"
            )

        mask_paths = [anns[a] for _, a in pairing.pairs.values()]
        names, origin = self._classes(mask_paths, options)
        decoding = MaskDecoding(
            "index", len(names), origin, reduce_zero_label=options.reduce_zero_label
        )
        samples = []
        for key, (img_key, ann_key) in pairing.pairs.items():
            base = _without_extension(key)  # a.png + a.png pair as "a.png": the stem is "a"
            folder_split, stem = split_and_stem(base)
            split = folder_split or listed.get(base, listed.get(key, ""))
            mask = anns[ann_key]
            samples.append(
                SampleSpec(stem, mask, images[img_key], MaskPayload(mask, decoding), split=split)
            )
        notes = f"MMSeg suffixes: images {pairing.img_suffix!r}, annotations {pairing.seg_suffix!r}"
        return ImportPlan(
            samples, names, mapping=fixed_mapping(names), warnings=warnings, notes=notes
        )

    @staticmethod
    def _classes(mask_paths: list[Path], options: ImportOptions) -> tuple[list[str], str]:
        """Class names from --classes, or from the largest id in the annotations."""
        if options.classes is not None:
            return load_classes_file(options.classes).names, f"--classes {options.classes}"
        scan = scan_masks(mask_paths)
        if scan.color_file is not None:
            raise DataError(
                scan.color_file,
                "is an RGB colour image; MMSeg annotations are single-channel index PNGs "
                "(import colour masks with the 'masks' format and --palette)",
            )
        ids = {v for v in scan.values if v != IGNORE_INDEX}
        if options.reduce_zero_label:
            ids = {v - 1 for v in ids if v != 0}
        top = max(ids, default=0)
        if top >= IGNORE_INDEX:
            value = top + 1 if options.reduce_zero_label else top
            raise DataError(
                scan.where[("value", value)],
                f"pixel value {value} does not fit a uint8 mask of at most {IGNORE_INDEX} classes",
            )
        if options.reduce_zero_label:  # the old 0 is ignore now: no background class
            return [f"class_{i}" for i in range(top + 1)], "the ids found in the annotations"
        return default_names(top + 1), "the ids found in the annotations"
