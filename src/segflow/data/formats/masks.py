"""Mask folders: ``images/`` + ``masks/`` (or ``labels/``, ``annotations/``, ``gt/``), by stem.

Masks pair with images by stem; a suffix common to the mask names (``_mask``, ``_gt``,
``_label``, ``-mask``...) is stripped when that makes more stems match. Subfolders are walked;
a leading ``train/``, ``val/`` or ``test/`` folder becomes the split.

The kind of mask is detected once for the whole dataset:

* **index** (mode ``L``/``P``, or 16-bit with values below 256): values are class ids, 255 is
  ignore; names from ``--classes`` (every id must be below their number), else ``background`` and
  ``class_1``..``class_K``;
* **binary** (values 0 and 255 only): 255 becomes 1; ``background``/``foreground`` unless
  ``--classes`` names them (masks holding only 0 and 1 are named the same way);
* **RGB colour masks**: decoded with ``--palette FILE`` (a YAML/JSON classes file with a colour for
  every class; an ``__ignore__`` entry's colour maps to 255) or with the colours of ``--classes``.
  Without either, the distinct colours of all masks (at most 64, and not JPEG noise) are numbered
  black first, then in colour order, and a warning shows the colour -> class table.

Several images may share one mask (multi-temporal scenes): an image without a mask of its own uses
the one mask whose stem is a prefix of the image's followed by a separator (``scene1_2019`` ->
``scene1``); every image sharing a mask gets the mask's stem as its ``group`` in ``splits.csv``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from segflow.data.dataset import IGNORE_INDEX
from segflow.data.formats import IMPORTERS
from segflow.data.formats._index_masks import (
    Color,
    LabelScan,
    MaskDecoding,
    MaskFileImporter,
    MaskPayload,
    default_names,
    fixed_mapping,
    scan_masks,
    spec_colors,
    unpack_color,
)
from segflow.data.formats._pairing import (
    image_keys,
    pair_by_suffix,
    shared_prefix,
    split_and_stem,
    strip_suffix,
    summarise,
)
from segflow.data.formats.base import ImportOptions, ImportPlan, SampleSpec
from segflow.data.formats.classes import ClassesSpec, load_classes_file
from segflow.errors import DataError, UsageError

_IMAGE_DIRS = ("images", "imgs", "img", "image")
_MASK_DIRS = ("masks", "mask", "labels", "annotations", "gt", "gts")
#: More distinct colours than this are not a colour-coded class mask.
MAX_AUTO_COLORS = 64
#: A colour covering less than this share of all pixels, within _NOISE_DISTANCE (per channel) of a
#: colour ten times as frequent, is compression or resampling noise rather than a class.
_NOISE_SHARE = 0.001
_NOISE_DISTANCE = 24


def _first_dir(src: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (src / name).is_dir():
            return src / name
    listed = ", ".join(f"{n}/" for n in names)
    raise DataError(src, f"no {what} folder ({listed}): expected SRC/images/ and SRC/masks/")


def _stems(files: dict[str, Path], root: Path) -> dict[str, str]:
    """``{relative path without extension: relative path}``; one stem with two files is an error."""
    out: dict[str, str] = {}
    for key in files:
        stem = key.rsplit(".", 1)[0]
        if stem in out:
            raise DataError(
                root / key, f"two files share the stem {stem!r}: {out[stem]} and {key}; keep one"
            )
        out[stem] = key
    return out


@IMPORTERS.register("masks")
class MasksImporter(MaskFileImporter):
    """Folders of images and mask images (index, binary 0/255 or RGB colour masks)."""

    name = "masks"
    summary = "mask folders: images/ + masks/ by stem; index, 0/255 or RGB colour masks"

    def plan(self, src: Path, options: ImportOptions) -> ImportPlan:
        """Pair images with masks, detect the mask kind, fix the classes."""
        if src.is_file():
            raise DataError(src, "the masks importer reads a folder holding images/ and masks/")
        if options.palette is not None and options.classes is not None:
            raise UsageError("--palette and --classes both name the classes; pass one of them")
        img_root = options.images or _first_dir(src, _IMAGE_DIRS, "image")
        mask_root = _first_dir(src, _MASK_DIRS, "mask")
        images, masks = image_keys(img_root), image_keys(mask_root)
        if not images:
            raise DataError(img_root, "no image files found")
        if not masks:
            raise DataError(mask_root, "no mask files found")
        img_stems, mask_stems = _stems(images, img_root), _stems(masks, mask_root)
        pairing = pair_by_suffix(img_stems, mask_stems, img_suffix="")
        mask_bases = strip_suffix(mask_stems, pairing.seg_suffix)
        assigned = {base: base for base in pairing.pairs}  # image stem -> mask base
        ambiguous: list[str] = []
        unlabelled: list[str] = []
        for img in pairing.lonely_images:
            found = shared_prefix(img, mask_bases)
            if len(found) == 1:
                assigned[img] = found[0]
            else:
                (ambiguous if found else unlabelled).append(img)
        if not assigned:
            raise DataError(
                src,
                f"no mask matches an image by stem (e.g. {next(iter(img_stems))} vs "
                f"{next(iter(mask_stems))})",
            )
        used_masks = {mask_bases[b] for b in assigned.values()}
        warnings = self._pairing_warnings(
            img_root, mask_root, unlabelled, ambiguous, set(mask_stems) - used_masks
        )
        decoding, names, colors = self._decoding(
            [masks[mask_stems[m]] for m in sorted(used_masks)], mask_root, options, warnings
        )
        sharing = Counter(assigned.values())
        samples = []
        for img, base in sorted(assigned.items()):
            split, stem = split_and_stem(img)
            group = split_and_stem(base)[1] if sharing[base] > 1 else ""
            mask = masks[mask_stems[mask_bases[base]]]
            payload = MaskPayload(mask, decoding)
            samples.append(
                SampleSpec(stem, mask, images[img_stems[img]], payload, split=split, group=group)
            )
        return ImportPlan(samples, names, mapping=fixed_mapping(names, colors), warnings=warnings)

    @staticmethod
    def _pairing_warnings(
        img_root: Path,
        mask_root: Path,
        unlabelled: list[str],
        ambiguous: list[str],
        lonely_masks: set[str],
    ) -> list[str]:
        warnings = []
        if unlabelled:
            warnings.append(
                f"{img_root}: {len(unlabelled)} image(s) without a mask skipped: "
                f"{summarise(unlabelled)}"
            )
        if ambiguous:
            warnings.append(
                f"{img_root}: {len(ambiguous)} image(s) skipped: more than one mask stem is a "
                f"prefix of their stem: {summarise(ambiguous)}"
            )
        if lonely_masks:
            warnings.append(
                f"{mask_root}: {len(lonely_masks)} mask(s) without an image skipped: "
                f"{summarise(sorted(lonely_masks))}"
            )
        return warnings

    def _decoding(
        self, paths: list[Path], mask_root: Path, options: ImportOptions, warnings: list[str]
    ) -> tuple[MaskDecoding, list[str], list[Color | None]]:
        """Detect the mask kind over every mask and fix the classes."""
        scan = scan_masks(paths)
        spec_path = options.palette or options.classes
        spec = load_classes_file(spec_path) if spec_path is not None else None
        origin = f"--{'palette' if options.palette else 'classes'} {spec_path}"
        jpegs = [p.name for p in paths if p.suffix.lower() in (".jpg", ".jpeg")]
        if jpegs:
            warnings.append(
                f"{mask_root}: {len(jpegs)} mask(s) are JPEG files; JPEG is lossy, so ids near "
                f"edges may be wrong: {summarise(jpegs)}"
            )
        if scan.color_file is not None and scan.index_file is not None:
            raise DataError(
                scan.color_file,
                f"is an RGB colour mask but {scan.index_file.name} is single-channel; "
                "the masks of a dataset must be one kind",
            )
        if scan.color_file is not None:
            if spec is not None:
                names, rgb, table = spec_colors(spec, spec.path or mask_root)
            else:
                names, rgb, table = self._auto_palette(scan, mask_root, warnings)
                origin = "the colours found in the masks"
            return MaskDecoding("rgb", len(names), origin, table), names, list(rgb)
        return self._index_decoding(scan, spec, origin)

    @staticmethod
    def _index_decoding(
        scan: LabelScan, spec: ClassesSpec | None, origin: str
    ) -> tuple[MaskDecoding, list[str], list[Color | None]]:
        values = set(scan.values)
        binary = IGNORE_INDEX in values and values <= {0, IGNORE_INDEX}
        raw_top = max((v for v in values if v != IGNORE_INDEX), default=0)
        top = 1 if binary else raw_top
        if spec is not None:
            names, colors = spec.names, spec.colors
            if top >= len(names):
                raise DataError(
                    scan.where[("value", raw_top)],
                    f"pixel value {raw_top} is not a class id: {origin} lists {len(names)} "
                    f"classes (ids 0..{len(names) - 1})",
                )
        elif top >= IGNORE_INDEX:
            raise DataError(
                scan.where[("value", raw_top)],
                f"pixel value {raw_top} does not fit a uint8 mask (at most {IGNORE_INDEX} classes)",
            )
        else:
            names, colors = default_names(top + 1, binary=top <= 1), []
            origin = "the ids found in the masks"
        decoding = MaskDecoding("binary" if binary else "index", len(names), origin)
        return decoding, names, colors

    @staticmethod
    def _auto_palette(
        scan: LabelScan, mask_root: Path, warnings: list[str]
    ) -> tuple[list[str], list[Color], dict[int, int]]:
        """Number the colours found in the masks (black first) and warn with the table."""
        found = scan.colors
        if len(found) > MAX_AUTO_COLORS:
            raise DataError(
                mask_root,
                f"RGB masks hold {len(found)} distinct colours, more than {MAX_AUTO_COLORS} class "
                "colours (JPEG or resized masks?); pass --palette FILE",
            )
        total = sum(found.values())
        for color, count in found.items():
            if count >= _NOISE_SHARE * total:
                continue
            near = next(
                (
                    other
                    for other, n in found.items()
                    if n >= 10 * count
                    and max(
                        abs(a - b)
                        for a, b in zip(unpack_color(color), unpack_color(other), strict=True)
                    )
                    <= _NOISE_DISTANCE
                ),
                None,
            )
            if near is not None:
                raise DataError(
                    scan.where[("color", color)],
                    f"colour {unpack_color(color)} ({count} px) sits next to {unpack_color(near)}: "
                    "the masks look like JPEG or resampling noise; colour masks need exact "
                    "colours (lossless PNG)",
                )
        order = sorted(found, key=lambda c: (c != 0, c))
        names = ["background" if c == 0 else f"class_{i}" for i, c in enumerate(order)]
        colors = [unpack_color(c) for c in order]
        table = "; ".join(
            f"{c} -> {i} {n}" for i, (c, n) in enumerate(zip(colors, names, strict=True))
        )
        warnings.append(
            f"{mask_root}: RGB masks decoded without --palette, colours numbered black first: "
            f"{table}; pass --palette FILE to name them"
        )
        return names, colors, {c: i for i, c in enumerate(order)}
