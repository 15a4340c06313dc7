"""Mask files as annotations: index PNGs, binary 0/255 masks and RGB colour masks.

Shared by the formats whose annotation is one mask file per image (VOC, MMSeg, mask folders).
Pixel values are class ids and keep their value (the importers fix the classes themselves through
``ImportPlan.mapping``), except where the format says otherwise: binary 0/255 -> 0/1, RGB colours
looked up in a colour table, MMSeg's ``reduce_zero_label``. 255 is the ignore index throughout.
A palette (mode ``P``) PNG gives its indices, never its colours.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from segflow.data import image_io
from segflow.data.dataset import IGNORE_INDEX, make_classes
from segflow.data.formats.base import Importer, ImportOptions, RenderResult, SampleSpec
from segflow.data.formats.classes import IGNORE_ALIASES, ClassesSpec, ClassMapping
from segflow.errors import DataError

Color = tuple[int, int, int]
#: ``index``: values are ids; ``binary``: 0/255 -> 0/1; ``rgb``: colours -> ids via the table;
#: ``auto``: single-channel files are ids, colour files go through the table (VOC).
MaskKind = Literal["index", "binary", "rgb", "auto"]

_SINGLE_CHANNEL_MODES = ("P", "L", "1", "I;16", "I;16B", "I;16L", "I;16N", "I", "PA", "LA")
_COLOR_MODES = ("RGB", "RGBA", "RGBX")


@dataclass(frozen=True)
class MaskDecoding:
    """How every mask of one import is turned into class ids (picklable, sent to workers)."""

    kind: MaskKind
    num_classes: int
    origin: str  # where the classes come from, named in errors ("--classes c.txt")
    colors: Mapping[int, int] = field(default_factory=dict)  # packed 0xRRGGBB -> id (255 ignore)
    reduce_zero_label: bool = False


@dataclass(frozen=True)
class MaskPayload:
    """``SampleSpec.payload`` of a mask-file sample."""

    mask: Path
    decoding: MaskDecoding


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """``H x W x 3`` uint8 -> ``H x W`` uint32 ``0xRRGGBB``."""
    a = rgb.astype(np.uint32)
    packed: np.ndarray = (a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]
    return packed


def pack_color(color: Sequence[int]) -> int:
    """``(r, g, b)`` -> ``0xRRGGBB``."""
    return (int(color[0]) << 16) | (int(color[1]) << 8) | int(color[2])


def unpack_color(value: int) -> Color:
    """``0xRRGGBB`` -> ``(r, g, b)``."""
    return ((value >> 16) & 255, (value >> 8) & 255, value & 255)


def read_label_image(path: Path) -> np.ndarray:
    """A mask file as ``H x W`` integer values (single channel) or ``H x W x 3`` uint8 (colour).

    Palette PNGs give their indices; alpha channels are dropped.
    """
    if path.suffix.lower() in image_io.TIFF_EXTENSIONS:
        arr = image_io.read_image(path)
    else:
        with image_io._open_pil(path) as raw:
            img = image_io._load_pil(raw, path)
            if img.mode in ("PA", "LA"):
                img = img.getchannel(0)
            if img.mode not in _SINGLE_CHANNEL_MODES + _COLOR_MODES:
                raise DataError(
                    path, f"a mask must be an index (L/P) or RGB image, found mode {img.mode}"
                )
            arr = np.array(img)
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    elif arr.ndim == 3:
        if arr.shape[2] < 3 or arr.dtype != np.uint8:
            raise DataError(
                path, f"a colour mask must be 8-bit RGB, found {arr.shape[2]} x {arr.dtype}"
            )
        arr = arr[:, :, :3]
    if np.issubdtype(arr.dtype, np.floating):
        raise DataError(path, f"mask pixels are {arr.dtype}; class ids must be integers")
    return np.ascontiguousarray(arr)


def check_size(
    mask: np.ndarray, height: int, width: int, mask_path: Path, image: Path | None
) -> None:
    """Raise DataError naming the mask and the image when their sizes differ."""
    h, w = mask.shape[:2]
    if (h, w) != (height, width):
        name = image.name if image is not None else "its image"
        raise DataError(mask_path, f"mask is {w}x{h} but the image {name} is {width}x{height}")


def decode_colors(rgb: np.ndarray, table: Mapping[int, int], path: Path, origin: str) -> np.ndarray:
    """Colours -> class ids through ``table``; a colour not in it is a DataError naming it."""
    uniq, inverse = np.unique(pack_rgb(rgb), return_inverse=True)
    missing = [int(u) for u in uniq if int(u) not in table]
    if missing:
        shown = ", ".join(str(unpack_color(m)) for m in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        what = "colour" if len(missing) == 1 else "colours"
        raise DataError(path, f"{what} {shown}{more} not in the colour table of {origin}")
    lut = np.array([table[int(u)] for u in uniq], dtype=np.uint8)
    return lut[inverse.reshape(-1)].reshape(rgb.shape[:2])


def decode_mask(payload: MaskPayload, height: int, width: int, image: Path | None) -> np.ndarray:
    """Read ``payload.mask`` and return its ``height x width`` uint8 class ids."""
    path, d = payload.mask, payload.decoding
    arr = read_label_image(path)
    check_size(arr, height, width, path, image)
    if arr.ndim == 3:
        if d.kind not in ("rgb", "auto"):
            raise DataError(path, "colour (RGB) mask in a dataset of single-channel class-id masks")
        return decode_colors(arr, d.colors, path, d.origin)
    if d.kind == "rgb":
        raise DataError(path, "single-channel mask in a dataset of RGB colour masks")
    ids = arr.astype(np.int64)
    if d.kind == "binary":
        ids[ids == 255] = 1
    if d.reduce_zero_label:
        ids = np.where(ids == 0, IGNORE_INDEX, np.where(ids == IGNORE_INDEX, IGNORE_INDEX, ids - 1))
    values = np.unique(ids)
    bad = values[((values < 0) | (values >= d.num_classes)) & (values != IGNORE_INDEX)]
    if bad.size:
        raise DataError(
            path,
            f"pixel value {int(bad[0])} is not a class id (0..{d.num_classes - 1}) or 255 "
            f"(ignore); the classes come from {d.origin}",
        )
    return ids.astype(np.uint8)


class MaskFileImporter(Importer):
    """Base of importers whose samples are an image plus a mask file (payload: MaskPayload)."""

    def render(
        self,
        spec: SampleSpec,
        height: int,
        width: int,
        label_ids: Mapping[str, int],
        options: ImportOptions,
    ) -> RenderResult:
        """Decode the sample's mask file (the classes were fixed by ``plan``)."""
        return RenderResult(decode_mask(spec.payload, height, width, spec.image))


@dataclass
class LabelScan:
    """What the masks of a dataset hold, read once in ``plan``."""

    values: Counter[int] = field(default_factory=Counter)  # single-channel value -> pixels
    colors: Counter[int] = field(default_factory=Counter)  # packed colour -> pixels
    where: dict[tuple[str, int], Path] = field(default_factory=dict)  # (kind, value) -> first file
    index_file: Path | None = None  # first single-channel mask seen
    color_file: Path | None = None  # first colour mask seen


def scan_masks(paths: Iterable[Path]) -> LabelScan:
    """Count the values (or colours) of every mask."""
    scan = LabelScan()
    for path in paths:
        arr = read_label_image(path)
        if arr.ndim == 3:
            scan.color_file = scan.color_file or path
            kind, counter = "color", scan.colors
            uniq, counts = np.unique(pack_rgb(arr), return_counts=True)
        else:
            scan.index_file = scan.index_file or path
            kind, counter = "value", scan.values
            uniq, counts = np.unique(arr, return_counts=True)
        for value, count in zip(uniq.tolist(), counts.tolist(), strict=True):
            counter[value] += count
            scan.where.setdefault((kind, value), path)
    return scan


def default_names(num_classes: int, *, binary: bool = False) -> list[str]:
    """``background, class_1 .. class_{n-1}`` (``background, foreground`` when ``binary``)."""
    if binary:
        return ["background", "foreground"]
    return ["background", *(f"class_{i}" for i in range(1, num_classes))]


def fixed_mapping(names: Sequence[str], colors: Sequence[Color | None] = ()) -> ClassMapping:
    """A mapping whose ids are the positions in ``names`` (pixel values are kept)."""
    return ClassMapping(make_classes(names, colors), {n: i for i, n in enumerate(names)})


def spec_colors(spec: ClassesSpec, where: Path) -> tuple[list[str], list[Color], dict[int, int]]:
    """Names, colours and colour table of a classes file used as a palette.

    Every entry needs a colour; entries named like ``__ignore__`` give colours that map to 255
    and are not classes.
    """
    names: list[str] = []
    colors: list[Color] = []
    table: dict[int, int] = {}
    for name, color in zip(spec.names, spec.colors, strict=True):
        if color is None:
            raise DataError(
                where,
                f"class {name!r} has no colour; decoding RGB masks needs a YAML/JSON classes file "
                "with a colour for every class",
            )
        key = pack_color(color)
        if key in table:
            raise DataError(where, f"colour {color} is given to two classes")
        if name in IGNORE_ALIASES:
            table[key] = IGNORE_INDEX
            continue
        table[key] = len(names)
        names.append(name)
        colors.append(color)
    return names, colors, table
