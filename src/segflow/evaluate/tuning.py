"""``segflow tune``: choose a bundle's threshold, flip TTA and post-processing on a validation split.

Probabilities are computed ONCE per image and pass (no re-inference per candidate): a binary
model's foreground probability is quantised to ``uint8`` bins of width 1/256 (``q = floor(256 p)``,
so ``p > j/256`` is exactly ``q >= j``) and the split's per-bin pixel counts of true background and
foreground give the confusion matrix of every threshold ``j/256`` at once; the quantised maps (one
byte per pixel; a multiclass model's argmax labels) and the masks wait on disk in a temporary
folder for the post-processing steps, so memory stays at one image whatever the split's size.

The score is the bundle's monitor metric (``train.monitor``, e.g. ``val/mIoU``, pooled over the
split as training computes it; ``val/mIoU`` when the monitor is not such a score). The steps,
in order, each tried on the result of the steps kept before it:

1. ``threshold`` (binary): the best of 0.05..0.95 in steps of 1/256, on splits of at least
   :data:`MIN_THRESHOLD_IMAGES` images (below that it is recorded as skipped);
2. ``tta``: the flips ``h,v`` averaged in (a second pass), at the threshold then chosen;
3. per foreground class: ``min_size`` (the best of sizes 4, 8, 16... up to 2% of the median
   image area), ``fill_holes``, ``keep_largest``.

A step is KEPT only when it raises the score by more than :data:`MARGIN` (0.002 absolute): on a
validation split of a few dozen images a change of a few hundred pixels moves a pooled IoU by
about 0.001, and a setting chosen for that is noise that will not carry over to new images. TTA
costs time at every prediction, so its gain must exceed the margin times its measured time ratio
(``h,v`` is about 3x the plain pass, so it needs > 0.006): each extra pass has to buy at least
one margin of score. The tuned bundle is written atomically (a temporary folder renamed into
place), with every step's score before and after under ``tuning:`` in ``bundle.yaml``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segflow._io import now_iso
from segflow._progress import ProgressBar
from segflow.data.dataset import CanonicalDataset, Sample
from segflow.errors import DataError, UsageError
from segflow.evaluate.confusion import confusion
from segflow.evaluate.evaluator import _check_classes, _samples
from segflow.evaluate.metrics import summary
from segflow.infer.postprocess import PostProcess, postprocess

if TYPE_CHECKING:
    from segflow.infer.predictor import Predictor
    from segflow.models.bundle import BundleMeta

PathLike = str | os.PathLike[str]
#: A step is kept only when it raises the score by more than this (absolute; see the module doc).
MARGIN = 0.002
#: The threshold is tuned only on at least this many images. Measured (docs/benchmarks.md,
#: CHASE_DB1, 3 seeds): chosen on 4 validation images (0.70-0.75) it gained 0.004-0.006 there and
#: lost 0.008-0.013 of test Dice in every seed against the default 0.5, as on the held-out vessel
#: set of issue 15 (0.7 chosen, -0.005 on test). 12 is a floor, not a fitted value.
MIN_THRESHOLD_IMAGES = 12
#: The flips tried as test-time augmentation.
TTA_CANDIDATE = ("h", "v")
BINS = 256
#: Thresholds tried: j / 256 for these j (about 0.05 to 0.95).
GRID = range(13, 244)
DEFAULT_METRIC = "val/mIoU"


@dataclass
class Step:
    """One tried setting: the score before it and with it, and whether it was kept."""

    step: str
    target: str
    value: Any
    before: float
    after: float
    kept: bool
    note: str = ""


@dataclass
class TuneResult:
    """What ``tune`` chose and measured; ``bundle`` is the tuned bundle written."""

    bundle: Path
    metric: str
    split: str
    images: int
    before: float
    after: float
    steps: list[Step]
    threshold: float | None
    tta: list[str]
    postprocess: PostProcess
    seconds: float


@dataclass
class _Pass:
    """One inference pass over the split: quantised maps on disk, per-bin counts, time."""

    folder: Path
    binary: bool
    hist: np.ndarray  # binary: 2 x BINS pixel counts (truth background, truth foreground)
    base: np.ndarray  # K x K confusion at the bundle's threshold / argmax, no post-processing
    seconds: float = 0.0
    files: list[tuple[Path, Path]] = field(default_factory=list)

    def threshold_confusion(self, j: int) -> np.ndarray:
        """Confusion matrix of ``p > j / 256`` over the split (binary), from the counts."""
        fp, tp = int(self.hist[0, j:].sum()), int(self.hist[1, j:].sum())
        bg, fg = int(self.hist[0].sum()), int(self.hist[1].sum())
        return np.array([[bg - fp, fp], [fg - tp, tp]], dtype=np.int64)

    def labels(self, q: np.ndarray, j: int) -> np.ndarray:
        """Label map of one image at threshold ``j / 256`` (multiclass: the stored argmax)."""
        return (q >= j).astype(np.uint8) if self.binary else q


def _target(src: Path, out: PathLike | None, in_place: bool) -> Path:
    if in_place and out is not None:
        raise UsageError("--out and --in-place: choose one (a new bundle, or this one updated)")
    if in_place:
        return src
    name = src.name.removesuffix(".segflow") or src.name
    target = Path(out) if out is not None else src.with_name(f"{name}.tuned.segflow")
    if target.suffix != ".segflow" or target.name == ".segflow":
        raise UsageError(f"--out {target}: a bundle folder name must end with .segflow")
    if target.exists():
        raise UsageError(
            f"{target}: already exists; choose another --out, delete it, or tune with --in-place"
        )
    if not target.absolute().parent.is_dir():
        raise UsageError(f"--out {target}: folder {target.absolute().parent} does not exist")
    return target


def _stem_samples(
    ds: CanonicalDataset, stems: Sequence[str], label: str
) -> tuple[list[Sample], str]:
    wanted = set(stems)
    samples = [s for s in ds.labelled_samples(None) if s.stem in wanted]
    if not samples:
        raise UsageError(f"{ds.root}: none of the {len(wanted)} {label} images has a mask")
    return samples, label


def _metric(meta: BundleMeta) -> str:
    train = meta.config.get("train", {}) if isinstance(meta.config, dict) else {}
    monitor = str(train.get("monitor", DEFAULT_METRIC))
    probe = summary(
        np.eye(len(meta.classes), dtype=np.int64), [c.name for c in meta.classes], "val/"
    )
    if monitor in probe and train.get("monitor_mode", "max") == "max":
        return monitor
    return DEFAULT_METRIC


def _read(ds: CanonicalDataset, s: Sample, k: int, ignore: int) -> tuple[np.ndarray, np.ndarray]:
    image, truth = ds.read_image(s), ds.read_mask(s)
    if image.shape[:2] != truth.shape:
        raise DataError(
            s.mask,
            f"mask is {truth.shape[1]}x{truth.shape[0]} but image {s.image.name} is "
            f"{image.shape[1]}x{image.shape[0]}",
        )
    bad = np.unique(truth[(truth >= k) & (truth != ignore)])
    if bad.size:
        raise DataError(s.mask, f"holds values {bad[:5].tolist()} that are no class id 0..{k - 1}")
    return image, truth


#: The image and mask of a labelled sample, checked (same size, class ids): used by review.
read_labelled = _read


#: Probabilities of the i-th image, in bands of rows: ``(y0, y1, probs[:, y0:y1])``.
RowSource = Callable[[int, np.ndarray], Iterable[tuple[int, int, np.ndarray]]]


def predictor_rows(predictors: Sequence[Predictor], owner: Sequence[int]) -> RowSource:
    """Image ``i``'s probabilities from ``predictors[owner[i]]`` (out of fold: its own member)."""
    return lambda i, image: predictors[owner[i]].probability_rows(image)


def _infer_pass(
    rows: RowSource,
    binary: bool,
    ds: CanonicalDataset,
    samples: Sequence[Sample],
    folder: Path,
    threshold: float,
    progress: bool,
    label: str,
) -> _Pass:
    from segflow.infer.predictor import argmax_classes

    k, ignore = len(ds.meta.classes), ds.meta.ignore_index
    folder.mkdir()
    run = _Pass(folder, binary, np.zeros((2, BINS), np.int64), np.zeros((k, k), np.int64))
    with ProgressBar(progress, label, len(samples)) as bar:
        for i, s in enumerate(samples):
            image, truth = _read(ds, s, k, ignore)
            q, labels = np.empty(truth.shape, np.uint8), np.empty(truth.shape, np.uint8)
            started = time.perf_counter()
            for y0, y1, probs in rows(i, image):  # float32 one band at a time
                if binary:
                    q[y0:y1] = np.minimum(probs[0] * BINS, BINS - 1)  # floor (p >= 0)
                    labels[y0:y1] = probs[0] > threshold
                else:
                    q[y0:y1] = labels[y0:y1] = argmax_classes(probs)
            run.seconds += time.perf_counter() - started
            if binary:
                for t in (0, 1):
                    run.hist[t] += np.bincount(q[truth == t], minlength=BINS)
            run.base += confusion(truth, labels, k, ignore_index=ignore)
            files = (folder / f"{i:06d}_q.npy", folder / f"{i:06d}_truth.npy")
            np.save(files[0], q, allow_pickle=False)
            np.save(files[1], truth, allow_pickle=False)
            run.files.append(files)
            bar.advance()
    return run


def _post_score(
    run: _Pass, j: int, post: PostProcess, k: int, ignore: int, score: Callable[[Any], float]
) -> float:
    total = np.zeros((k, k), np.int64)
    for qf, tf in run.files:
        q, truth = np.load(qf, allow_pickle=False), np.load(tf, allow_pickle=False)
        total += confusion(truth, postprocess(run.labels(q, j), post), k, ignore_index=ignore)
    return score(total)


def _keep(steps: list[Step], step: Step, margin: float) -> bool:
    step.kept = bool(step.after - step.before > margin)
    steps.append(step)
    return step.kept


def _min_sizes(run: _Pass) -> list[int]:
    areas = [int(np.load(q, mmap_mode="r").size) for q, _ in run.files]
    limit = 0.02 * float(np.median(areas)) if areas else 0.0
    sizes, n = [], 4
    while n <= limit:
        sizes.append(n)
        n *= 2
    return sizes or [4]


def _tune_post(
    run: _Pass,
    j: int,
    names: Sequence[str],
    sizes: Sequence[int],
    start: float,
    steps: list[Step],
    margin: float,
    ignore: int,
    score: Callable[[Any], float],
) -> tuple[PostProcess, float]:
    k, post, current = len(names), PostProcess(), start

    def scored(cand: PostProcess) -> float:
        return _post_score(run, j, cand, k, ignore, score)

    for c in range(1, k):
        tries = [(n, post.model_copy(update={"min_size": {**post.min_size, c: n}})) for n in sizes]
        results = [(scored(cand), -n, n, cand) for n, cand in tries]
        best = max(results, key=lambda r: (r[0], r[1]))
        if _keep(steps, Step("min_size", names[c], best[2], current, best[0], False), margin):
            post, current = best[3], best[0]
        for kind in ("fill_holes", "keep_largest"):
            cand = post.model_copy(update={kind: sorted({*getattr(post, kind), c})})
            after = scored(cand)
            if _keep(steps, Step(kind, names[c], True, current, after, False), margin):
                post, current = cand, after
    return post, current


def tune(
    bundle: PathLike,
    dataset: PathLike | CanonicalDataset,
    *,
    split: str = "val",
    out: PathLike | None = None,
    in_place: bool = False,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    try_tta: bool = True,
    margin: float = MARGIN,
    progress: bool = False,
    stems: Sequence[str] | None = None,
) -> TuneResult:
    """Choose threshold, TTA and post-processing on ``split`` and write the tuned bundle.

    Writes ``NAME.tuned.segflow`` beside ``bundle`` (or ``out``; ``in_place`` updates
    ``bundle`` itself), atomically. See the module docstring for the rules. ``stems`` (training:
    a fold's validation images) replaces the split's images; ``split`` then only names them.

    Raises:
        UsageError: an unknown, empty or unlabelled split; ``out`` exists; both ``out`` and
            ``in_place``; a negative margin.
        DataError: the dataset's classes differ from the bundle's; a broken image or mask.
    """
    from segflow.infer.predictor import Predictor, check_settings
    from segflow.models.bundle import read_bundle_meta
    from segflow.models.ensemble import meta_file

    started = time.monotonic()
    src = Path(bundle)
    meta = read_bundle_meta(src)
    target = _target(src, out, in_place)
    if not margin >= 0:
        raise UsageError(f"--margin {margin}: must be >= 0 (an absolute score difference)")
    check_settings(None, None, None, None, threads)
    ds = dataset if isinstance(dataset, CanonicalDataset) else CanonicalDataset(dataset)
    _check_classes(meta_file(src), f"model {meta.name!r}", meta.classes, ds)
    samples, label = _samples(ds, split) if stems is None else _stem_samples(ds, stems, split)

    def passes(tta: Sequence[str]) -> RowSource:
        p = Predictor.from_bundles(src, backend=backend, device=device, tta=list(tta),
                                   precision=precision, threads=threads, postprocess={})  # fmt: skip
        return predictor_rows([p], [0] * len(samples))

    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.tune-", dir=target.absolute().parent))
    try:
        result = choose_settings(meta, ds, samples, scratch, passes, passes,
                                 try_tta=try_tta, margin=margin, progress=progress)  # fmt: skip
        result.bundle, result.split = target, label
        result.seconds = round(time.monotonic() - started, 3)
        _write_tuned(src, target, meta, result, tuning_record(meta, result, ds, margin))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def choose_settings(
    meta: BundleMeta,
    ds: CanonicalDataset,
    samples: Sequence[Sample],
    scratch: Path,
    plain: Callable[[Sequence[str]], RowSource],
    flipped: Callable[[Sequence[str]], RowSource],
    *,
    try_tta: bool,
    margin: float,
    progress: bool,
    plain_seconds: float | None = None,
) -> TuneResult:
    """The steps of the module docstring on ``samples``; the passes' files go under ``scratch``.

    ``plain([])`` gives the probabilities without TTA, ``flipped(TTA_CANDIDATE)`` with it (the
    out-of-fold tuning of an ensemble reads the first from training's saved OOF maps, and gives
    the time their inference took as ``plain_seconds``, TTA's time ratio being against it).
    ``bundle``, ``split`` and ``seconds`` of the result are the caller's to fill in.
    """
    names, ignore = [c.name for c in meta.classes], ds.meta.ignore_index
    metric, binary = _metric(meta), meta.task == "binary"

    def score(cm: Any) -> float:
        return float(summary(cm, names, "val/")[metric])

    steps: list[Step] = []
    run = _infer_pass(plain([]), binary, ds, samples, scratch / "plain", meta.threshold,
                      progress, "tune: inference")  # fmt: skip
    if plain_seconds is not None:
        run.seconds = plain_seconds
    before = score(run.base)
    j, current = round(meta.threshold * BINS), before
    if run.binary and len(samples) >= MIN_THRESHOLD_IMAGES:
        j, current = _tune_threshold(run, j, current, names[1], steps, margin, score)
    elif run.binary:
        steps.append(Step("threshold", names[1], meta.threshold, current, current, False,
                          f"skipped: {len(samples)} images < {MIN_THRESHOLD_IMAGES}"))  # fmt: skip
    tta: list[str] = []
    if try_tta:
        other = _infer_pass(flipped(TTA_CANDIDATE), binary, ds, samples, scratch / "tta",
                            meta.threshold, progress, "tune: TTA")  # fmt: skip
        if _tune_tta(run, other, j, current, steps, margin, score):
            run, current, tta = other, steps[-1].after, list(TTA_CANDIDATE)
    post, current = _tune_post(run, j, names, _min_sizes(run), current, steps, margin,
                               ignore, score)  # fmt: skip
    kept = any(s.kept for s in steps if s.step == "threshold")
    return TuneResult(
        bundle=scratch,
        metric=metric,
        split="",
        images=len(samples),
        before=before,
        after=current,
        steps=steps,
        threshold=j / BINS if kept else (meta.threshold if run.binary else None),
        tta=tta,
        postprocess=post,
        seconds=0.0,
    )


def _write_tuned(
    src: Path, target: Path, meta: BundleMeta, result: TuneResult, record: dict[str, Any]
) -> None:
    """The tuned bundle (or ensemble: its ``ensemble.yaml`` updated) at ``target``, atomically."""
    from segflow.models.bundle import write_updated_bundle
    from segflow.models.ensemble import is_ensemble, read_manifest, write_manifest

    if not is_ensemble(src):
        write_updated_bundle(src, target, _tuned_meta(meta, result, record))
        return
    manifest = read_manifest(src)
    updated = manifest.model_copy(update=tuned_settings(manifest.threshold, result, record))
    if target == src:
        write_manifest(src, updated)
        return
    tmp = target.absolute().parent / f".{target.name}.tmp-{os.getpid()}"
    try:
        shutil.copytree(src, tmp)
        write_manifest(tmp, updated)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _tune_tta(
    plain: _Pass,
    other: _Pass,
    j: int,
    current: float,
    steps: list[Step],
    margin: float,
    score: Callable[[Any], float],
) -> bool:
    """Whether the TTA pass gains more than ``margin`` x its time ratio (at threshold ``j``)."""
    after = score(other.threshold_confusion(j) if plain.binary else other.base)
    ratio = other.seconds / max(plain.seconds, 1e-9)
    note = f"{ratio:.1f}x the time: kept when the gain > {margin:g} x {ratio:.1f}"
    step = Step("tta", "all", ",".join(TTA_CANDIDATE), current, after, False, note)
    return _keep(steps, step, margin * ratio)


def _tune_threshold(
    run: _Pass,
    j: int,
    current: float,
    name: str,
    steps: list[Step],
    margin: float,
    score: Callable[[Any], float],
) -> tuple[int, float]:
    """The best grid threshold (ties: the one nearest the bundle's), kept past the margin."""
    scored = [(score(run.threshold_confusion(g)), -abs(g - j), g) for g in GRID]
    best = max(scored, key=lambda r: (np.nan_to_num(r[0], nan=-1.0), r[1]))
    step = Step("threshold", name, round(best[2] / BINS, 6), current, best[0], False)
    if _keep(steps, step, margin):
        return best[2], best[0]
    return j, current


def tuning_record(
    meta: BundleMeta, result: TuneResult, ds: CanonicalDataset, margin: float
) -> dict[str, Any]:
    """What ``tuning:`` records: the data, the rules, every step's score before and after."""
    from segflow._version import __version__

    def num(v: float) -> float | None:
        return None if np.isnan(v) else round(float(v), 6)

    return {
        "created_at": now_iso(),
        "segflow_version": __version__,
        "dataset": {"name": ds.meta.name, "path": str(ds.root.absolute())},
        "split": result.split,
        "images": result.images,
        "metric": result.metric,
        "margin": margin,
        "rules": {
            "steps": f"a step is kept when it raises {result.metric} by more than the margin",
            "tta": "kept when its gain > margin x (its time / the time without it)",
        },
        "before": num(result.before),
        "after": num(result.after),
        "steps": [
            {**asdict(s), "before": num(s.before), "after": num(s.after)} for s in result.steps
        ],
        "previous": {
            "threshold": meta.threshold,
            "tta": list(meta.inference.tta),
            "postprocess": dict(meta.postprocess),
        },
        "seconds": result.seconds,
    }


def tuned_settings(threshold: float, result: TuneResult, record: dict[str, Any]) -> dict[str, Any]:
    """The chosen threshold, TTA, post-processing and the record, as manifest fields."""
    return {
        "threshold": threshold if result.threshold is None else result.threshold,
        "tta": list(result.tta),
        "postprocess": result.postprocess.model_dump(mode="json"),
        "tuning": record,
    }


def _tuned_meta(meta: BundleMeta, result: TuneResult, record: dict[str, Any]) -> BundleMeta:
    fields = tuned_settings(meta.threshold, result, record)
    return meta.model_copy(
        update={
            "threshold": fields["threshold"],
            "inference": meta.inference.model_copy(update={"tta": fields["tta"]}),
            "postprocess": fields["postprocess"],
            "tuning": record,
        }
    )
