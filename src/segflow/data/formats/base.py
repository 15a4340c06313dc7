"""The import pipeline shared by every annotation format.

An importer does two things:

1. ``plan(src, options)`` walks the source (reading annotations, never images), and returns the
   samples, the labels it found and any split/group information;
2. ``render(spec, height, width, label_ids, options)`` rasterises one sample's annotation into a
   uint8 class-id mask of the image's size.

:func:`run_import` resolves the classes, then materialises every sample in worker processes
(decode the image fully, copy it, render and write the mask) into a temporary folder that becomes
the dataset only when everything succeeded.
"""

from __future__ import annotations

import logging
import os
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from segflow._io import now_iso
from segflow._parallel import parallel_map
from segflow.data import image_io
from segflow.data.dataset import (
    IGNORE_INDEX,
    CanonicalDataset,
    DatasetMeta,
    DatasetWriter,
    SourceInfo,
    SplitRow,
    write_image_file,
)
from segflow.data.formats.classes import (
    ClassesSpec,
    ClassMapping,
    load_classes_file,
    resolve_classes,
)
from segflow.errors import DataError, SegflowError, UsageError

log = logging.getLogger("segflow.import")


class ImportOptions(BaseModel):
    """Options of ``segflow import``; each importer reads the ones that concern it."""

    model_config = ConfigDict(extra="forbid")

    classes: Path | None = Field(
        None, description="classes file fixing class names, order and colours"
    )
    strict: bool = Field(
        False, description="labels outside --classes and skipped shapes are errors"
    )
    images: Path | None = Field(
        None, description="folder holding the images, when not beside the annotations"
    )
    crowd: Literal["class", "ignore"] = Field(
        "class", description="COCO iscrowd regions: their class, or ignore"
    )
    line_width: int = Field(
        10, ge=1, description="LabelMe line/linestrip width in pixels (labelme's default)"
    )
    point_radius: int = Field(
        5, ge=0, description="LabelMe point disk radius in pixels (labelme's default)"
    )
    label_property: str | None = Field(
        None, description="GeoJSON feature property holding the class name"
    )
    coords: Literal["auto", "pixel", "crs"] = Field(
        "auto", description="GeoJSON coordinates: pixels or the raster CRS"
    )
    img_suffix: str | None = Field(
        None, description="MMSeg image suffix, e.g. _img.jpg (auto-detected)"
    )
    seg_suffix: str | None = Field(
        None, description="MMSeg annotation suffix, e.g. _gt.png (auto-detected)"
    )
    reduce_zero_label: bool = Field(
        False, description="MMSeg: label 0 is ignore, others shift down by one"
    )
    palette: Path | None = Field(
        None, description="masks: classes file whose colours decode RGB masks"
    )
    skip_bad: bool = Field(
        False, description="skip broken samples with a warning instead of failing"
    )
    overwrite: bool = Field(False, description="replace OUT if it is an existing segflow dataset")
    name: str | None = Field(None, description="dataset name (default: OUT's folder name)")
    workers: int | None = Field(
        None, ge=1, description="worker processes (default: CPU count, max 8)"
    )


@dataclass
class SampleSpec:
    """One sample found by ``plan``: everything a worker needs, picklable."""

    stem: str
    source: Path  # the annotation file (or mask) this sample comes from; named in errors
    image: Path | None  # image file; None when the importer embeds the image (``image_bytes``)
    payload: Any = None  # format-specific annotation data
    declared_size: tuple[int, int] | None = None  # (height, width) the annotation states
    split: str = ""
    group: str = ""


@dataclass
class ImportPlan:
    """What ``plan`` found."""

    samples: list[SampleSpec]
    labels: list[str]  # labels in source order (declared or first seen)
    source_colors: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    sort_labels: bool = False
    has_background: bool = False
    mapping: ClassMapping | None = None  # set by importers that fix ids themselves (index masks)
    warnings: list[str] = field(default_factory=list)
    notes: str = ""


@dataclass
class RenderResult:
    """A rendered mask and what was noticed while drawing it."""

    mask: np.ndarray
    warnings: list[str] = field(default_factory=list)


class Importer(ABC):
    """An annotation format. Subclasses are registered in ``segflow.data.formats.IMPORTERS``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    #: ``--images`` may name one image file (for a single annotation file), not only a folder.
    images_may_be_file: ClassVar[bool] = False

    @abstractmethod
    def plan(self, src: Path, options: ImportOptions) -> ImportPlan:
        """Find the samples and labels under ``src`` without decoding images."""

    @abstractmethod
    def render(
        self,
        spec: SampleSpec,
        height: int,
        width: int,
        label_ids: Mapping[str, int],
        options: ImportOptions,
    ) -> RenderResult:
        """Rasterise ``spec``'s annotation into a ``height x width`` uint8 mask."""

    def image_bytes(self, spec: SampleSpec) -> bytes:
        """Encoded image bytes for specs without an image file (embedded images)."""
        raise DataError(spec.source, "no image file and no embedded image")


# ------------------------------------------------------------------------------------------------
# Helpers for importers


def portable_name(raw: str) -> str:
    r"""The file name of a path written on any OS (``C:\a\b.jpg`` and ``a/b.jpg`` -> ``b.jpg``)."""
    return PureWindowsPath(raw).name if "\\" in raw else PurePosixPath(raw).name


def safe_stem(raw: str) -> str:
    """A stem usable as a file name: separators replaced, no leading dot."""
    stem = re.sub(r"[\\/:\x00]", "_", raw).strip()
    if not stem:
        stem = "unnamed"
    return f"_{stem[1:]}" if stem.startswith(".") else stem


def contained(path: Path, roots: Sequence[Path]) -> bool:
    """Whether ``path`` (resolved) lies inside one of ``roots`` (resolved)."""
    resolved = path.resolve()
    return any(resolved.is_relative_to(r.resolve()) for r in roots)


def resolve_image_path(
    raw: str, annotation: Path, roots: Sequence[Path], search_dirs: Sequence[Path]
) -> Path:
    """Find the image an annotation file names, never leaving the allowed ``roots``.

    The path is taken relative to the annotation (Windows separators accepted); if that file does
    not exist, the bare file name is looked up in ``search_dirs``. A path that resolves outside
    ``roots`` is rejected (``../../etc/passwd`` in an annotation must not be read).
    """
    if not raw.strip():
        raise DataError(annotation, "annotation names no image file")
    norm = raw.replace("\\", "/")
    is_absolute = norm.startswith("/") or bool(re.match(r"^[A-Za-z]:/", norm))
    name = portable_name(raw)
    if not is_absolute:
        candidate = annotation.parent / norm
        if candidate.exists():
            if not contained(candidate, roots):
                raise DataError(
                    annotation,
                    f"image path '{raw}' escapes the source folder; refusing to read it",
                )
            return candidate
    for folder in search_dirs:
        candidate = folder / name
        if candidate.is_file() and contained(candidate, roots):
            return candidate
    if not is_absolute and not contained(annotation.parent / norm, roots):
        raise DataError(
            annotation, f"image path '{raw}' escapes the source folder; refusing to read it"
        )
    looked = ", ".join(dict.fromkeys(str(d) for d in search_dirs))
    raise DataError(
        annotation,
        f"image '{raw}' not found (looked beside the annotation and in {looked}; pass --images DIR)",
    )


def read_json(path: Path) -> Any:
    """Parse a JSON file, with a one-line error naming it."""
    import json

    try:
        with path.open("rb") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise DataError(path, "not valid JSON (not UTF-8 text)") from None
    except RecursionError:
        raise DataError(path, "not accepted JSON: nested too deeply") from None
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror}") from None


def find_files(root: Path, suffixes: Iterable[str]) -> list[Path]:
    """Files under ``root`` (recursively) with one of ``suffixes``, sorted, hidden ones skipped."""
    wanted = tuple(s.lower() for s in suffixes)
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.name.lower().endswith(wanted)
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def images_by_stem(folder: Path) -> dict[str, Path]:
    """Image files directly inside ``folder`` keyed by stem."""
    if not folder.is_dir():
        return {}
    return {
        p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and image_io.is_image_file(p)
    }


# ------------------------------------------------------------------------------------------------
# The runner


@dataclass
class SampleResult:
    """What a worker did with one sample."""

    stem: str
    image_file: str = ""
    height: int = 0
    width: int = 0
    channels: int = 0
    dtype: str = ""
    class_pixels: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class ImportReport:
    """Summary of an import."""

    out: Path
    meta: DatasetMeta
    samples: list[SampleResult]
    skipped: list[SampleResult]
    warnings: list[str]

    @property
    def class_pixels(self) -> dict[str, int]:
        """Pixels per class name over the whole dataset, plus ``ignore``."""
        total = np.zeros(256, dtype=np.int64)
        for s in self.samples:
            total += np.asarray(s.class_pixels, dtype=np.int64)
        out = {c.name: int(total[c.id]) for c in self.meta.classes}
        out["ignore"] = int(total[self.meta.ignore_index])
        return out


@dataclass
class _Task:
    importer: str
    spec: SampleSpec
    images_dir: Path
    masks_dir: Path
    label_ids: dict[str, int]
    options: ImportOptions
    num_classes: int


def _materialise(task: _Task) -> SampleResult:
    from segflow.data.formats import IMPORTERS

    spec = task.spec
    importer = IMPORTERS.get(task.importer)()
    if spec.image is not None:
        # Full decode: truncated files fail here. The file itself is copied, not re-encoded.
        height, width, channels, dtype = image_io.verify_image(spec.image)
        image_file = write_image_file(task.images_dir, spec.stem, spec.image, None, None)
    else:
        data = importer.image_bytes(spec)
        array = image_io.decode_image_bytes(data, f"{spec.source} (embedded image)")
        height, width, channels, dtype = *array.shape[:3], str(array.dtype)
        image_file = write_image_file(task.images_dir, spec.stem, None, data, None)
    if spec.declared_size is not None and tuple(spec.declared_size) != (height, width):
        dh, dw = spec.declared_size
        raise DataError(
            spec.source,
            f"annotation declares a {dw}x{dh} image but {image_file.name} is {width}x{height}",
        )
    rendered = importer.render(spec, height, width, task.label_ids, task.options)
    mask = rendered.mask
    if mask.shape != (height, width) or mask.dtype != np.uint8:
        raise DataError(
            spec.source,
            f"mask is {mask.shape[1]}x{mask.shape[0]} {mask.dtype} but the image is {width}x{height}",
        )
    values = image_io.class_histogram(mask)
    bad = [v for v in np.flatnonzero(values) if v >= task.num_classes and v != IGNORE_INDEX]
    if bad:
        raise DataError(
            spec.source, f"mask values {bad} are not class ids (0..{task.num_classes - 1}) or 255"
        )
    image_io.write_png(task.masks_dir / f"{spec.stem}.png", mask)
    return SampleResult(
        stem=spec.stem,
        image_file=image_file.name,
        height=height,
        width=width,
        channels=channels,
        dtype=dtype,
        class_pixels=values.tolist(),
        warnings=rendered.warnings,
    )


def _safe_materialise(task: _Task) -> SampleResult:
    try:
        return _materialise(task)
    except SegflowError as exc:
        # DataError/UsageError are reported, not raised: the parent decides to stop or skip.
        return SampleResult(stem=task.spec.stem, error=str(exc))
    except Exception as exc:
        error = _input_error(exc, task.spec.source)
        if error is None:
            raise  # a bug: keep the traceback
        return SampleResult(stem=task.spec.stem, error=str(error))


def _input_error(exc: Exception, source: Path) -> SegflowError | None:
    """A user error for what reading or writing one input raised (None: a bug, or --debug)."""
    from segflow.errors import debug_enabled, os_error

    if debug_enabled():
        return None
    if isinstance(exc, OSError):
        return os_error(exc)
    if isinstance(exc, UnicodeDecodeError):
        return DataError(source, f"not UTF-8 text (byte {exc.start}); save it as UTF-8")
    if isinstance(exc, ValueError | OverflowError | RecursionError):
        return DataError(source, f"cannot parse: {' '.join(str(exc).split())[:200]}")
    if isinstance(exc, MemoryError):
        return DataError(source, "declares a size too large to decode")
    return None


def _plan(importer: Importer, src: Path, options: ImportOptions) -> ImportPlan:
    try:
        return importer.plan(src, options)
    except SegflowError:
        raise
    except Exception as exc:
        error = _input_error(exc, src)
        if error is None:
            raise
        raise error from None


def run_import(
    format_name: str,
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: ImportOptions | None = None,
    *,
    progress: bool = False,
) -> ImportReport:
    """Import annotations in ``format_name`` from ``src`` into a new canonical dataset ``out``.

    ``src`` is never modified. ``out`` appears only when every sample was imported (or, with
    ``options.skip_bad``, every sample that could be).
    """
    from segflow.data.formats import IMPORTERS

    options = options or ImportOptions()
    importer_cls = IMPORTERS.get(format_name)
    src_path, out_path = Path(src), Path(out)
    _check_paths(importer_cls, src_path, out_path, options)
    spec: ClassesSpec | None = load_classes_file(options.classes) if options.classes else None

    writer = DatasetWriter(out_path, overwrite=options.overwrite)
    importer = importer_cls()
    plan = _plan(importer, src_path, options)
    if not plan.samples:
        raise DataError(
            src_path, f"no {importer_cls.name} samples found (is this the right format and folder?)"
        )
    _check_duplicate_stems(plan.samples)

    mapping = plan.mapping or resolve_classes(
        plan.labels,
        spec,
        strict=options.strict,
        where=src_path,
        source_colors=plan.source_colors,
        sort_labels=plan.sort_labels,
        has_background=plan.has_background,
    )
    warnings = list(plan.warnings)
    if mapping.unknown:
        warnings.append(
            f"labels not in the classes file were skipped: {', '.join(repr(u) for u in mapping.unknown)}"
        )
    if options.strict and warnings:
        raise DataError(src_path, f"--strict: {warnings[0]}")

    with writer:
        results, skipped = _import_all(importer_cls.name, plan, writer, mapping, options, progress)
        if not results:
            raise DataError(src_path, "every sample failed to import; nothing written")
        sample_warnings = Counter(w for r in results for w in r.warnings)
        warnings += [f"{w} (x{n})" if n > 1 else w for w, n in sample_warnings.items()]
        warnings += [f"skipped {r.error}" for r in skipped]
        meta = DatasetMeta(
            name=options.name or out_path.resolve().name,
            classes=mapping.classes,
            ignore_index=IGNORE_INDEX,
            source=SourceInfo(format=importer_cls.name, path=str(src_path), imported_at=now_iso()),
            notes=plan.notes,
        )
        kept = {r.stem for r in results}
        rows = [
            SplitRow(s.stem, s.split, s.group)
            for s in plan.samples
            if s.stem in kept and (s.split or s.group)
        ]
        writer.finish(meta, rows)
    results.sort(key=lambda r: r.stem)
    for w in warnings:
        log.warning(w)
    return ImportReport(out_path, meta, results, skipped, warnings)


def _check_paths(
    importer_cls: type[Importer], src_path: Path, out_path: Path, options: ImportOptions
) -> None:
    """UsageErrors before any work: no source, output inside the source, no ``--images``."""
    if not src_path.exists():
        raise UsageError(f"{src_path}: source not found")
    if out_path.resolve() == src_path.resolve() or (
        out_path.resolve().is_relative_to(src_path.resolve()) and src_path.is_dir()
    ):
        raise UsageError(f"{out_path}: output must not be inside the source {src_path}")
    if options.images is not None and not (
        options.images.is_dir() or (importer_cls.images_may_be_file and options.images.is_file())
    ):
        raise UsageError(f"{options.images}: --images folder not found")


def _import_all(
    name: str,
    plan: ImportPlan,
    writer: DatasetWriter,
    mapping: ClassMapping,
    options: ImportOptions,
    progress: bool,
) -> tuple[list[SampleResult], list[SampleResult]]:
    """Convert every planned sample into the writer's folders (in parallel).

    Returns the imported and the skipped (``--skip-bad``) samples; the first failure otherwise
    raises a DataError.
    """
    results: list[SampleResult] = []
    skipped: list[SampleResult] = []
    failure: list[str] = []
    tasks = [
        _Task(
            name,
            s,
            writer.images,
            writer.masks,
            mapping.label_ids,
            options,
            len(mapping.classes),
        )
        for s in plan.samples
    ]

    def on_done(res: SampleResult) -> bool:
        if res.error is not None:
            if options.skip_bad:
                skipped.append(res)
                return True
            failure.append(res.error)
            return False
        if options.strict and res.warnings:
            failure.append(f"--strict: {res.warnings[0]}")
            return False
        results.append(res)
        return True

    for res in parallel_map(
        _safe_materialise,
        tasks,
        workers=options.workers,
        progress=progress,
        label=f"import {name}",
    ):
        if not on_done(res):
            break
    if failure:
        raise DataError(None, failure[0])
    return results, skipped


def _check_duplicate_stems(samples: Sequence[SampleSpec]) -> None:
    seen: dict[str, SampleSpec] = {}
    for s in samples:
        if s.stem in seen:
            other = seen[s.stem]
            raise DataError(
                s.source,
                f"duplicate stem {s.stem!r}: also used by {other.source} (rename one of the images)",
            )
        seen[s.stem] = s


class DatasetExporter(Protocol):
    """Writes a canonical dataset out in another format (e.g. COCO JSON for re-labelling)."""

    def __call__(
        self,
        dataset: CanonicalDataset,
        out: Path,
        *,
        overwrite: bool = False,
        progress: bool = False,
    ) -> Path:
        """Export ``dataset`` to ``out`` atomically and return the written path."""
        ...
