"""Data quality checks: one parallel scan of the dataset, then registered checks over the scan.

Every check is a small function registered in :data:`QA_CHECKS` that returns typed
:class:`Finding` objects with a severity. ``segflow check`` writes them to ``qa.json``, the
fingerprint to ``fingerprint.json`` and an HTML report with plots and overlays.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from segflow._io import atomic_write_text, now_iso
from segflow._parallel import parallel_map
from segflow._version import __version__
from segflow.data import image_io
from segflow.data.dataset import CanonicalDataset, SplitRow
from segflow.data.fingerprint import Fingerprint, SampleStats, nonfinite_problem, sample_stats
from segflow.errors import DataError, SegflowError, UsageError
from segflow.registry import Registry

#: Perceptual hash size: ``PHASH_SIZE**2`` bits (imagehash.phash, DCT of a 64x64 grey thumbnail).
PHASH_SIZE = 16
#: Two images whose perceptual hashes differ in at most this many of the 256 bits are near
#: duplicates. Measured on the shared datasets: distinct CHASE_DB1 photos (look-alike fundus
#: images, both eyes of one child) are >= 48 bits apart, DSB2018 >= 98; re-encoded (JPEG q50),
#: 75%-resized and brightened copies are <= 10 bits from their original.
NEAR_DUPLICATE_BITS = 16
#: A class seen in fewer images than this is reported as rare.
RARE_CLASS_IMAGES = 3
#: Images with a side shorter than this are reported as tiny.
TINY_SIDE = 32


class Severity(str, Enum):
    """How bad a finding is: errors make ``segflow check`` exit non-zero."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Finding(BaseModel):
    """One problem (or fact) found in the dataset."""

    check: str = Field(description="name of the check that found it")
    severity: Severity
    message: str = Field(description="one line saying what is wrong and where")
    stems: list[str] = Field(default_factory=list, description="samples concerned")
    files: list[str] = Field(default_factory=list, description="files concerned")


@dataclass
class SampleScan:
    """What the scan learnt about one sample (picklable, computed in a worker)."""

    stem: str
    image_file: Path
    mask_file: Path | None
    image_error: str | None = None
    mask_error: str | None = None
    mask_size: tuple[int, int] | None = None
    bad_values: list[int] = field(default_factory=list)
    stats: SampleStats | None = None
    pixel_hash: str = ""
    phash: str | None = None  # hex
    mask_hash: str = ""

    @property
    def ok(self) -> bool:
        """Image readable and, if there is a mask, the mask is readable and the same size."""
        return (
            self.stats is not None
            and self.image_error is None
            and self.mask_error is None
            and (self.mask_file is None or self.mask_size == (self.stats.height, self.stats.width))
        )

    def present_classes(self) -> list[int]:
        """Class ids with at least one pixel (empty when unlabelled)."""
        if self.stats is None or not self.stats.class_pixels:
            return []
        return [i for i, n in enumerate(self.stats.class_pixels) if n > 0]


@dataclass
class _ScanJob:
    stem: str
    image: Path
    mask: Path | None
    num_classes: int
    ignore_index: int


def _scan(job: _ScanJob) -> SampleScan:
    import imagehash
    from PIL import Image

    from segflow.data.visual import to_display_rgb

    scan = SampleScan(job.stem, job.image, job.mask)
    image: np.ndarray | None = None
    try:
        image = image_io.read_image(job.image)
    except SegflowError as exc:
        scan.image_error = str(exc)
    mask: np.ndarray | None = None
    if job.mask is not None:
        try:
            mask = image_io.read_mask(job.mask)
            scan.mask_size = (int(mask.shape[0]), int(mask.shape[1]))
            scan.mask_hash = hashlib.blake2b(mask.tobytes(), digest_size=16).hexdigest() + str(
                mask.shape
            )
        except SegflowError as exc:
            scan.mask_error = str(exc)
    scan.image_error = scan.image_error or (
        nonfinite_problem(job.image, image) if image is not None else None
    )
    if image is None or scan.image_error:
        return scan
    labelled = mask is not None and mask.shape == image.shape[:2]
    fg = list(range(1, job.num_classes))
    # The same statistics as `segflow plan`'s scan (sizes, channels, class pixels, object areas
    # and extents, structure widths), so that fingerprint.json is the planner's fingerprint.
    stats = sample_stats(job.stem, image, mask if labelled else None, fg)
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(f"{image.shape}{image.dtype}".encode())
    scan.pixel_hash = digest.hexdigest()
    grey = Image.fromarray(to_display_rgb(image)).convert("L")
    scan.phash = str(imagehash.phash(grey, hash_size=PHASH_SIZE))
    if labelled:
        counts = np.asarray(stats.class_pixels)
        scan.bad_values = [
            int(v) for v in np.flatnonzero(counts) if v >= job.num_classes and v != job.ignore_index
        ]
    scan.stats = stats
    return scan


@dataclass
class QAContext:
    """Everything the checks look at."""

    dataset: CanonicalDataset
    scans: list[SampleScan]
    splits: dict[str, SplitRow]
    excluded: list[str]
    orphan_masks: list[Path]
    duplicate_stems: dict[str, list[Path]]


QACheck = Callable[[QAContext], Iterable[Finding]]
QA_CHECKS: Registry[QACheck] = Registry("QA check")


def _f(
    check: str,
    severity: Severity,
    message: str,
    stems: Sequence[str] = (),
    files: Sequence[Path | str] = (),
) -> Finding:
    return Finding(
        check=check,
        severity=severity,
        message=message,
        stems=list(stems),
        files=[str(f) for f in files],
    )


@QA_CHECKS.register("unreadable")
def check_unreadable(ctx: QAContext) -> Iterable[Finding]:
    """Images or masks that cannot be decoded (truncated, empty, not an image, too large)."""
    for s in ctx.scans:
        if s.image_error:
            yield _f("unreadable", Severity.ERROR, s.image_error, [s.stem], [s.image_file])
        if s.mask_error:
            yield _f("unreadable", Severity.ERROR, s.mask_error, [s.stem], [s.mask_file or ""])


@QA_CHECKS.register("unmatched")
def check_unmatched(ctx: QAContext) -> Iterable[Finding]:
    """Images without a mask (unlabelled, left out of training) and masks without an image."""
    lonely = [s for s in ctx.scans if s.mask_file is None]
    if lonely:
        yield _f(
            "unmatched",
            Severity.WARNING,
            f"{len(lonely)} image(s) have no mask in masks/ and are left out of training "
            f"(first: {lonely[0].image_file.name})",
            [s.stem for s in lonely],
            [s.image_file for s in lonely],
        )
    if ctx.orphan_masks:
        yield _f(
            "unmatched",
            Severity.WARNING,
            f"{len(ctx.orphan_masks)} mask(s) have no image in images/ (first: {ctx.orphan_masks[0].name})",
            [p.stem for p in ctx.orphan_masks],
            ctx.orphan_masks,
        )


@QA_CHECKS.register("duplicate_stem")
def check_duplicate_stem(ctx: QAContext) -> Iterable[Finding]:
    """Two image files with one stem (a.jpg and a.png): which one the mask belongs to is unclear."""
    for stem, files in ctx.duplicate_stems.items():
        names = ", ".join(p.name for p in files)
        yield _f(
            "duplicate_stem",
            Severity.ERROR,
            f"stem {stem!r} has several images: {names}",
            [stem],
            files,
        )


@QA_CHECKS.register("size_mismatch")
def check_size_mismatch(ctx: QAContext) -> Iterable[Finding]:
    """Masks whose size differs from their image."""
    for s in ctx.scans:
        if (
            s.stats is not None
            and s.mask_size is not None
            and s.mask_size != (s.stats.height, s.stats.width)
        ):
            mh, mw = s.mask_size
            yield _f(
                "size_mismatch",
                Severity.ERROR,
                f"{s.mask_file}: mask is {mw}x{mh} but image {s.image_file.name} is "
                f"{s.stats.width}x{s.stats.height}",
                [s.stem],
                [s.mask_file or "", s.image_file],
            )


@QA_CHECKS.register("mask_values")
def check_mask_values(ctx: QAContext) -> Iterable[Finding]:
    """Mask values that are neither a class id nor the ignore index."""
    n = ctx.dataset.meta.num_classes
    for s in ctx.scans:
        if s.bad_values:
            yield _f(
                "mask_values",
                Severity.ERROR,
                f"{s.mask_file}: values {s.bad_values[:10]} are not class ids 0..{n - 1} or "
                f"{ctx.dataset.meta.ignore_index} (ignore)",
                [s.stem],
                [s.mask_file or ""],
            )


@QA_CHECKS.register("empty_mask")
def check_empty_mask(ctx: QAContext) -> Iterable[Finding]:
    """Masks with no foreground class, and masks that are mostly unlabelled."""
    ignore = ctx.dataset.meta.ignore_index
    empty = [
        s
        for s in ctx.scans
        if s.ok
        and s.stats
        and s.stats.class_pixels
        and not [c for c in s.present_classes() if c not in (0, ignore)]
    ]
    if empty:
        yield _f(
            "empty_mask",
            Severity.WARNING,
            f"{len(empty)} mask(s) contain no foreground class (first: {empty[0].stem}); fine for "
            "negative examples, a mistake otherwise",
            [s.stem for s in empty],
            [s.mask_file for s in empty if s.mask_file is not None],
        )
    mostly = [
        s
        for s in ctx.scans
        if s.ok
        and s.stats
        and s.stats.class_pixels
        and s.stats.class_pixels[ignore] > 0.9 * s.stats.height * s.stats.width
    ]
    if mostly:
        yield _f(
            "empty_mask",
            Severity.WARNING,
            f"{len(mostly)} mask(s) are more than 90% unlabelled (ignore) (first: {mostly[0].stem})",
            [s.stem for s in mostly],
            [s.mask_file for s in mostly if s.mask_file is not None],
        )


def _split_of(ctx: QAContext, stem: str) -> str:
    row = ctx.splits.get(stem)
    return row.split if row else ""


def _hamming_pairs(hex_hashes: Sequence[str], max_bits: int) -> list[tuple[int, int]]:
    """Index pairs whose hashes differ in at most ``max_bits`` bits (chunked, vectorised)."""
    pairs: list[tuple[int, int]] = []
    as_bytes = np.array([np.frombuffer(bytes.fromhex(h), dtype=np.uint8) for h in hex_hashes])
    bits = np.unpackbits(as_bytes, axis=1).astype(bool)
    for start in range(0, len(bits), 512):
        block = bits[start : start + 512]
        dist = (block[:, None, :] != bits[None, :, :]).sum(axis=2)
        for i, j in zip(*np.nonzero(dist <= max_bits), strict=True):
            a = start + int(i)
            if a < int(j):
                pairs.append((a, int(j)))
    return pairs


@QA_CHECKS.register("duplicates")
def check_duplicates(ctx: QAContext) -> Iterable[Finding]:
    """Exact (same pixels) and near (perceptual hash) duplicate images; across splits = leakage."""
    readable = [s for s in ctx.scans if s.stats is not None]
    by_hash: dict[str, list[SampleScan]] = defaultdict(list)
    for s in readable:
        by_hash[s.pixel_hash].append(s)
    exact_pairs: set[tuple[str, str]] = set()
    for group in by_hash.values():
        if len(group) < 2:
            continue
        stems = [s.stem for s in group]
        exact_pairs.update((a, b) for a in stems for b in stems if a < b)
        splits = {_split_of(ctx, st) for st in stems} - {""}
        if len(splits) > 1:
            yield _f(
                "duplicates",
                Severity.ERROR,
                f"identical images across splits {sorted(splits)} (leakage): {', '.join(stems)}",
                stems,
                [s.image_file for s in group],
            )
        else:
            yield _f(
                "duplicates",
                Severity.WARNING,
                f"identical images: {', '.join(stems)}",
                stems,
                [s.image_file for s in group],
            )
    hashed = [s for s in readable if s.phash is not None]
    if len(hashed) < 2:
        return
    for i, j in _hamming_pairs([s.phash or "" for s in hashed], NEAR_DUPLICATE_BITS):
        a, b = hashed[i], hashed[j]
        if (min(a.stem, b.stem), max(a.stem, b.stem)) in exact_pairs:
            continue
        sa, sb = _split_of(ctx, a.stem), _split_of(ctx, b.stem)
        leak = sa and sb and sa != sb
        where = f" across splits {sa}/{sb} (possible leakage)" if leak else ""
        yield _f(
            "duplicates",
            Severity.WARNING,
            f"near-duplicate images{where}: {a.stem}, {b.stem}",
            [a.stem, b.stem],
            [a.image_file, b.image_file],
        )


@QA_CHECKS.register("classes")
def check_classes(ctx: QAContext) -> Iterable[Finding]:
    """Declared classes that never appear, and rare classes."""
    presence = np.zeros(256, dtype=np.int64)
    labelled = 0
    for s in ctx.scans:
        if s.ok and s.stats and s.stats.class_pixels:
            labelled += 1
            presence += np.asarray(s.stats.class_pixels) > 0
    if not labelled:
        return
    for c in ctx.dataset.meta.classes:
        if presence[c.id] == 0:
            yield _f("classes", Severity.WARNING, f"class {c.id} {c.name!r} appears in no mask")
        elif c.id != 0 and presence[c.id] < RARE_CLASS_IMAGES:
            yield _f(
                "classes",
                Severity.INFO,
                f"class {c.id} {c.name!r} appears in only {presence[c.id]} image(s)",
            )


@QA_CHECKS.register("image_properties")
def check_image_properties(ctx: QAContext) -> Iterable[Finding]:
    """Mixed channel counts or dtypes across images, and tiny images."""
    stats = [s.stats for s in ctx.scans if s.stats is not None]
    for attr, what in (("channels", "channel counts"), ("dtype", "pixel types")):
        groups: dict[object, list[str]] = defaultdict(list)
        for st in stats:
            groups[getattr(st, attr)].append(st.stem)
        if len(groups) > 1:
            summary = ", ".join(f"{k}: {len(v)}" for k, v in groups.items())
            minority = min(groups.values(), key=len)
            yield _f(
                "image_properties",
                Severity.WARNING,
                f"images have mixed {what} ({summary}); they are converted at training time",
                minority,
            )
    tiny = [st.stem for st in stats if min(st.height, st.width) < TINY_SIDE]
    if tiny:
        yield _f(
            "image_properties",
            Severity.WARNING,
            f"{len(tiny)} image(s) are smaller than {TINY_SIDE} px",
            tiny,
        )


@QA_CHECKS.register("splits")
def check_splits(ctx: QAContext) -> Iterable[Finding]:
    """splits.csv naming unknown stems, labelled images missing from it, groups straddling splits."""
    if not ctx.splits:
        return
    known = {s.stem for s in ctx.scans} | set(ctx.excluded)
    unknown = [st for st in ctx.splits if st not in known]
    if unknown:
        yield _f(
            "splits",
            Severity.ERROR,
            f"splits.csv lists {len(unknown)} stem(s) with no image (first: {unknown[0]})",
            unknown,
        )
    missing = [s.stem for s in ctx.scans if s.mask_file is not None and s.stem not in ctx.splits]
    if missing:
        yield _f(
            "splits",
            Severity.WARNING,
            f"{len(missing)} labelled image(s) are not in splits.csv (first: {missing[0]})",
            missing,
        )
    groups: dict[str, set[str]] = defaultdict(set)
    members: dict[str, list[str]] = defaultdict(list)
    for row in ctx.splits.values():
        if row.group and row.split:
            groups[row.group].add(row.split)
            members[row.group].append(row.stem)
    for group, splits in groups.items():
        if len(splits) > 1:
            yield _f(
                "splits",
                Severity.ERROR,
                f"group {group!r} straddles splits {sorted(splits)} (leakage); re-run segflow split",
                members[group],
            )


@QA_CHECKS.register("excluded")
def check_excluded(ctx: QAContext) -> Iterable[Finding]:
    """Samples excluded from later stages by ``--exclude``."""
    if ctx.excluded:
        yield _f(
            "excluded",
            Severity.INFO,
            f"{len(ctx.excluded)} sample(s) excluded from later stages by --exclude",
            ctx.excluded,
        )


class QAReport(BaseModel):
    """Contents of ``qa.json``."""

    dataset: str
    created_at: str
    segflow_version: str = __version__
    num_images: int
    num_masks: int
    counts: dict[str, int] = Field(description="findings per severity")
    findings: list[Finding]
    fingerprint: Fingerprint | None = None

    @property
    def has_errors(self) -> bool:
        """Whether any finding is an error."""
        return self.counts.get(Severity.ERROR.value, 0) > 0


def read_exclude_file(path: Path, dataset: CanonicalDataset) -> list[str]:
    """Stems listed in an exclude file (one stem or file name per line, ``#`` comments)."""
    if not path.is_file():
        raise DataError(path, "exclude file not found")
    known = set(dataset.image_files())
    stems: list[str] = []
    from segflow._textio import read_text

    for lineno, line in enumerate(read_text(path, "exclude file").splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        stem = entry if entry in known else Path(entry).stem
        if stem not in known:
            raise DataError(path, f"line {lineno}: {entry!r} is not an image of {dataset.root}")
        stems.append(stem)
    return sorted(set(stems))


@dataclass
class CheckResult:
    """The report and the raw scans (the HTML report draws from both)."""

    report: QAReport
    scans: list[SampleScan]
    paths: dict[str, Path]


def scan_dataset(
    dataset_path: str | os.PathLike[str],
    *,
    json_out: Path | None = None,
    exclude: Path | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> CheckResult:
    """Check a dataset; write ``qa.json`` and ``fingerprint.json``.

    The HTML report is the caller's: :func:`segflow.api.check` writes it with
    :func:`segflow.report.qa_report.write_qa_report` (report sits above data).

    Args:
        dataset_path: the canonical dataset folder.
        json_out: findings path (default ``DATASET/qa.json``).
        exclude: a file of stems to drop from later stages; stored in ``dataset.yaml`` (replacing
            the previous list). Files are never deleted.
        workers: worker processes for the scan.
        progress: show a progress bar.
    """
    dataset = CanonicalDataset(dataset_path)
    if exclude is not None:
        stems = read_exclude_file(Path(exclude), dataset)
        dataset.save_meta(dataset.meta.model_copy(update={"exclude": stems}))
    check_output_file(json_out)  # before any work or output
    meta = dataset.meta
    image_files = dataset.image_files()
    if not image_files:
        raise DataError(dataset.images_dir, "no images found")
    masks = dataset.mask_files()
    excluded = [s for s in meta.exclude if s in image_files]
    jobs = [
        _ScanJob(stem, files[0], masks.get(stem), meta.num_classes, meta.ignore_index)
        for stem, files in image_files.items()
        if stem not in set(excluded)
    ]
    scans = sorted(
        parallel_map(_scan, jobs, workers=workers, progress=progress, label="check"),
        key=lambda s: s.stem,
    )
    ctx = QAContext(
        dataset=dataset,
        scans=scans,
        splits=dataset.splits(),
        excluded=excluded,
        orphan_masks=[p for stem, p in masks.items() if stem not in image_files],
        duplicate_stems={k: v for k, v in image_files.items() if len(v) > 1},
    )
    findings = [f for name in QA_CHECKS for f in QA_CHECKS.get(name)(ctx)]
    order = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
    findings.sort(key=lambda f: order[f.severity])
    readable = [s.stats for s in scans if s.stats is not None and s.ok]
    fingerprint = Fingerprint.from_stats(meta, readable) if readable else None
    qa = QAReport(
        dataset=str(dataset.root),
        created_at=now_iso(),
        num_images=len(scans),
        num_masks=sum(1 for s in scans if s.mask_file is not None),
        counts={sev.value: sum(1 for f in findings if f.severity == sev) for sev in Severity},
        findings=findings,
        fingerprint=fingerprint,
    )
    paths = {"json": Path(json_out) if json_out else dataset.root / "qa.json"}
    atomic_write_text(paths["json"], qa.model_dump_json(indent=2))
    if fingerprint is not None:
        paths["fingerprint"] = dataset.root / "fingerprint.json"
        atomic_write_text(paths["fingerprint"], fingerprint.model_dump_json(indent=2))
    return CheckResult(qa, scans, paths)


def check_output_file(path: Path | None) -> None:
    """A UsageError when an output path given by the user is a folder."""
    if path is not None and path.is_dir():
        raise UsageError(f"{path}: is a folder; give the path of a file to write")
