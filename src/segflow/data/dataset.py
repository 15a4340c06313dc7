"""The canonical dataset folder: read, write (atomically), validate, and a torch-style Dataset.

Layout (see ARCHITECTURE.md)::

    DATASET/
      dataset.yaml     # DatasetMeta below
      images/<stem>.<png|jpg|tif>
      masks/<stem>.png # single-channel uint8 class ids; ignore_index = unlabelled
      splits.csv       # optional: stem, split, group, fold
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from segflow._io import FlowList, atomic_write_text, dump_yaml
from segflow._version import __version__
from segflow.classes import ClassInfo, default_color
from segflow.data import image_io
from segflow.errors import DataError, UsageError, validation_message

if TYPE_CHECKING:
    import torch

SplitName = Literal["train", "val", "test", ""]
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
IGNORE_INDEX = 255
SPLITS_FIELDS = ("stem", "split", "group", "fold")


class SourceInfo(BaseModel):
    """Where a dataset was imported from."""

    model_config = ConfigDict(extra="forbid")

    format: str = Field(description="importer that wrote this dataset (or 'manual')")
    path: str = Field(default="", description="source path given to the importer")
    imported_at: str = Field(default="", description="UTC time of the import (ISO 8601)")
    segflow_version: str = Field(
        default=__version__, description="segflow version that imported it"
    )


class DatasetMeta(BaseModel):
    """The contents of ``dataset.yaml``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="dataset name")
    classes: list[ClassInfo] = Field(min_length=1, description="classes, ids dense 0..N-1")
    ignore_index: int = Field(default=IGNORE_INDEX, ge=0, le=255, description="unlabelled pixels")
    source: SourceInfo | None = Field(default=None, description="import provenance")
    notes: str = Field(default="", description="free text (licence, attribution, caveats)")
    exclude: list[str] = Field(
        default_factory=list,
        description="stems dropped from later stages by `segflow check --exclude`",
    )

    @model_validator(mode="after")
    def _check_classes(self) -> DatasetMeta:
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))):
            raise ValueError(f"class ids must be dense and ordered 0..{len(ids) - 1}, got {ids}")
        names = [c.name for c in self.classes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate class names: {dupes}")
        if self.ignore_index < len(self.classes):
            raise ValueError(
                f"ignore_index {self.ignore_index} collides with class id {self.ignore_index}"
            )
        return self

    @property
    def num_classes(self) -> int:
        """Number of classes, background included."""
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        """Class names in id order."""
        return [c.name for c in self.classes]


def make_classes(
    names: Sequence[str], colors: Sequence[tuple[int, int, int] | None] = ()
) -> list[ClassInfo]:
    """Build dense ClassInfo entries from names, with given colours or the default palette."""
    out = []
    for i, name in enumerate(names):
        color = colors[i] if i < len(colors) and colors[i] is not None else default_color(i)
        out.append(ClassInfo(id=i, name=name, color=color))
    return out


def load_meta(path: Path) -> DatasetMeta:
    """Read and validate ``dataset.yaml``."""
    if not path.is_file():
        raise DataError(path, "dataset.yaml not found: is this a segflow dataset folder?")
    from segflow._textio import load_yaml, read_text

    raw = load_yaml(read_text(path, "dataset.yaml"), path)
    if not isinstance(raw, dict):
        raise DataError(path, "expected a mapping with name, classes, ignore_index")
    try:
        return DatasetMeta.model_validate(raw)
    except ValidationError as exc:
        raise DataError(path, validation_message(exc)) from None


def dump_meta(meta: DatasetMeta) -> str:
    """YAML text for ``dataset.yaml`` (colours inline)."""
    data = meta.model_dump(mode="json", exclude_none=True)
    for c in data["classes"]:
        c["color"] = FlowList(c["color"])
    return dump_yaml(data)


@dataclass(frozen=True)
class SplitRow:
    """One row of ``splits.csv``."""

    stem: str
    split: str = ""
    group: str = ""
    fold: int | None = None


def read_splits(path: Path) -> dict[str, SplitRow]:
    """Read ``splits.csv`` into ``{stem: SplitRow}``; raises DataError naming bad rows."""
    import io

    from segflow._textio import read_text

    rows: dict[str, SplitRow] = {}
    with io.StringIO(read_text(path, "splits.csv"), newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "stem" not in reader.fieldnames:
            raise DataError(path, "splits.csv needs a header with at least a 'stem' column")
        for lineno, rec in enumerate(reader, start=2):
            stem = (rec.get("stem") or "").strip()
            split = (rec.get("split") or "").strip()
            if not stem:
                raise DataError(path, f"line {lineno}: empty stem")
            if split not in (*SPLIT_NAMES, ""):
                raise DataError(path, f"line {lineno}: split {split!r} is not train, val or test")
            fold_raw = (rec.get("fold") or "").strip()
            try:
                fold = int(fold_raw) if fold_raw else None
            except ValueError:
                raise DataError(
                    path, f"line {lineno}: fold {fold_raw!r} is not an integer"
                ) from None
            if stem in rows:
                raise DataError(path, f"line {lineno}: stem {stem!r} listed twice")
            rows[stem] = SplitRow(stem, split, (rec.get("group") or "").strip(), fold)
    return rows


def splits_csv_text(rows: Sequence[SplitRow]) -> str:
    """CSV text for ``splits.csv``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SPLITS_FIELDS)
    for r in rows:
        writer.writerow([r.stem, r.split, r.group, "" if r.fold is None else r.fold])
    return buf.getvalue()


@dataclass(frozen=True)
class Sample:
    """One image of the dataset and its mask (``None`` when the image is unlabelled)."""

    stem: str
    image: Path
    mask: Path | None


class CanonicalDataset:
    """A canonical dataset folder opened for reading.

    Args:
        root: the dataset folder.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(self.root, "dataset folder not found")
        self.meta = load_meta(self.root / "dataset.yaml")
        self.images_dir = self.root / "images"
        self.masks_dir = self.root / "masks"
        if not self.images_dir.is_dir():
            raise DataError(self.images_dir, "images/ folder missing")

    # -- listing -----------------------------------------------------------------------------
    def image_files(self) -> dict[str, list[Path]]:
        """Image files grouped by stem (a stem with two files is a problem `check` reports)."""
        out: dict[str, list[Path]] = {}
        for p in sorted(self.images_dir.iterdir()):
            if p.is_file() and not p.name.startswith(".") and image_io.is_image_file(p):
                out.setdefault(p.stem, []).append(p)
        return out

    def mask_files(self) -> dict[str, Path]:
        """Mask files by stem."""
        if not self.masks_dir.is_dir():
            return {}
        return {
            p.stem: p
            for p in sorted(self.masks_dir.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() == ".png"
        }

    def samples(self, *, include_excluded: bool = False) -> list[Sample]:
        """Every image (first file per stem) with its mask path if there is one."""
        masks = self.mask_files()
        excluded = set() if include_excluded else set(self.meta.exclude)
        return [
            Sample(stem, files[0], masks.get(stem))
            for stem, files in self.image_files().items()
            if stem not in excluded
        ]

    def labelled_samples(self, split: str | None = None) -> list[Sample]:
        """Samples with a mask, optionally restricted to one split of ``splits.csv``."""
        samples = [s for s in self.samples() if s.mask is not None]
        if split is None:
            return samples
        splits = self.splits()
        if not splits:
            raise UsageError(
                f"{self.root}: no splits.csv; run `segflow split {self.root}` before asking for "
                f"the {split!r} split"
            )
        return [s for s in samples if s.stem in splits and splits[s.stem].split == split]

    def splits(self) -> dict[str, SplitRow]:
        """``splits.csv`` rows by stem (empty when the file does not exist)."""
        path = self.root / "splits.csv"
        return read_splits(path) if path.is_file() else {}

    # -- reading -----------------------------------------------------------------------------
    def read_image(self, sample: Sample) -> np.ndarray:
        """The image of ``sample`` as ``H x W x C`` in its stored dtype."""
        return image_io.read_image(sample.image)

    def read_mask(self, sample: Sample) -> np.ndarray:
        """The mask of ``sample`` as ``H x W`` uint8."""
        if sample.mask is None:
            raise DataError(sample.image, "this image has no mask in masks/")
        return image_io.read_mask(sample.mask)

    # -- updating (segflow's own files only) --------------------------------------------------
    def save_meta(self, meta: DatasetMeta) -> None:
        """Replace ``dataset.yaml`` atomically."""
        atomic_write_text(self.root / "dataset.yaml", dump_meta(meta))
        self.meta = meta

    def save_splits(self, rows: Sequence[SplitRow]) -> Path:
        """Replace ``splits.csv`` atomically and return its path."""
        path = self.root / "splits.csv"
        atomic_write_text(path, splits_csv_text(rows))
        return path


class DatasetWriter:
    """Writes a new canonical dataset into a temporary sibling folder, renamed into place at the end.

    Used as a context manager: on any exception the temporary folder is removed and ``out`` is
    never created, so a failed import leaves nothing behind.

    Args:
        out: the dataset folder to create; it must not exist unless ``overwrite``.
        overwrite: replace an existing ``out`` (only after the new dataset is complete).
    """

    def __init__(self, out: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.out = Path(out)
        if self.out.exists() and not overwrite:
            raise UsageError(
                f"{self.out}: output already exists; choose a new folder or pass --overwrite"
            )
        if self.out.exists() and not (self.out / "dataset.yaml").is_file():
            raise UsageError(
                f"{self.out}: exists and is not a segflow dataset; refusing to overwrite it"
            )
        parent = self.out.resolve().parent
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"{self.out}: {parent} is a file, not a folder")
        try:
            parent.mkdir(parents=True, exist_ok=True)  # `import x data/new/ds` just works
        except OSError as exc:
            raise UsageError(f"{self.out}: cannot create {parent} ({exc.strerror})") from exc
        from segflow._tempfiles import sweep_stale, tag

        sweep_stale(parent, f".{self.out.name}.tmp-")  # left by a killed import
        self.tmp = parent / f".{self.out.name}.tmp-{tag()}"
        self.images = self.tmp / "images"
        self.masks = self.tmp / "masks"

    def __enter__(self) -> DatasetWriter:
        from segflow.errors import os_error

        try:
            self.images.mkdir(parents=True)
            self.masks.mkdir()
        except OSError as exc:  # a read-only or full disk: name the output, not the temp folder
            shutil.rmtree(self.tmp, ignore_errors=True)
            error = os_error(exc, self.out)
            if error is None:
                raise
            raise error from None
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def finish(
        self,
        meta: DatasetMeta,
        splits: Sequence[SplitRow] = (),
        extra_files: dict[str, str] | None = None,
    ) -> Path:
        """Write ``dataset.yaml`` (+ ``splits.csv``) and move the folder into place."""
        (self.tmp / "dataset.yaml").write_text(dump_meta(meta), encoding="utf-8")
        if splits:
            (self.tmp / "splits.csv").write_text(splits_csv_text(splits), encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (self.tmp / name).write_text(text, encoding="utf-8")
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{uuid.uuid4().hex[:8]}")
            self.out.rename(old)
            self.tmp.rename(self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp.rename(self.out)
        return self.out


def write_image_file(
    images_dir: Path, stem: str, source: Path | None, data: bytes | None, array: np.ndarray | None
) -> Path:
    """Store one image under ``images_dir`` without re-encoding when its format is canonical.

    Exactly one of ``source`` (a file to copy), ``data`` (encoded bytes) or ``array`` is used.
    """
    if source is not None:
        ext = image_io.CANONICAL_EXTENSIONS.get(source.suffix.lower())
        if ext is not None:
            dest = images_dir / f"{stem}{ext}"
            shutil.copyfile(source, dest)
            return dest
        array = image_io.read_image(source)
    elif data is not None:
        ext = image_io.sniff_extension(data)
        if ext is not None:
            dest = images_dir / f"{stem}{ext}"
            dest.write_bytes(data)
            return dest
        array = image_io.decode_image_bytes(data, stem)
    if array is None:
        raise ValueError("write_image_file needs a source, data or an array")
    dest = images_dir / f"{stem}.png"
    image_io.write_png(dest, array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array)
    return dest


Transform = Callable[..., dict[str, Any]]


class SegmentationDataset:
    """A map-style dataset yielding the sample contract ``{"image", "mask", "meta"}``.

    ``image`` is a float32 ``C x H x W`` tensor (raw values unless ``transform`` normalises them),
    ``mask`` an int64 ``H x W`` tensor of class ids (``ignore_index`` kept), ``meta`` a dict with
    the stem and the original size. ``transform`` is called as ``transform(image=HWC, mask=HW)``
    (the albumentations convention) and must return a dict with the same keys.

    It duck-types ``torch.utils.data.Dataset`` (``__len__`` + ``__getitem__``) so that importing
    this module never imports torch.

    Args:
        dataset: a CanonicalDataset or the path of one.
        split: ``train``/``val``/``test`` from ``splits.csv``, or ``None`` for every labelled image.
        transform: optional albumentations-style callable.
        stems: explicit stems to use instead of ``split``.
    """

    def __init__(
        self,
        dataset: CanonicalDataset | str | os.PathLike[str],
        split: str | None = None,
        transform: Transform | None = None,
        stems: Sequence[str] | None = None,
    ) -> None:
        self.dataset = (
            dataset if isinstance(dataset, CanonicalDataset) else CanonicalDataset(dataset)
        )
        samples = self.dataset.labelled_samples(None if stems is not None else split)
        if stems is not None:
            by_stem = {s.stem: s for s in samples}
            missing = [s for s in stems if s not in by_stem]
            if missing:
                raise DataError(self.dataset.root, f"no labelled image for stems {missing[:5]}")
            samples = [by_stem[s] for s in stems]
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """The raw ``(image HWC, mask HW, meta)`` of one sample, before any transform."""
        sample = self.samples[index]
        image = self.dataset.read_image(sample)
        mask = self.dataset.read_mask(sample)
        if image.shape[:2] != mask.shape:
            raise DataError(
                sample.mask,
                f"mask is {mask.shape[1]}x{mask.shape[0]} but image {sample.image.name} is "
                f"{image.shape[1]}x{image.shape[0]}",
            )
        meta = {"stem": sample.stem, "height": image.shape[0], "width": image.shape[1]}
        return image, mask, meta

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask, meta = self.load(index)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {"image": _to_chw_float(image), "mask": _to_long(mask), "meta": meta}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]


def _to_chw_float(image: Any) -> torch.Tensor:
    import torch

    if isinstance(image, torch.Tensor):
        return image.float()
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    chw = np.ascontiguousarray(arr.transpose(2, 0, 1)).astype(np.float32)
    return torch.from_numpy(chw)


def _to_long(mask: Any) -> torch.Tensor:
    import torch

    if isinstance(mask, torch.Tensor):
        return mask.long()
    return torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))
