r"""Train/val/test splits and k folds: random, stratified, grouped; deterministic for a seed.

Groups (samples that must stay on one side) come from three places, merged:

* ``--group-by REGEX`` on the stem (first capture group, or the whole match), e.g. the child of
  ``Image_01L``/``Image_01R`` with ``Image_(\d+)``;
* the ``group`` column an importer or an earlier split wrote into ``splits.csv``;
* masks that are pixel-identical (several images sharing one mask, as in multi-temporal scenes);
  masks with a single value (all background) are not grouped by this rule.

Stratification uses each group's *class-presence signature* (the set of foreground classes in it);
signatures too rare to be spread over every part fall back to their rarest class, then to one
shared stratum. Inside each stratum, groups are placed by weighted systematic sampling with a
random start: each part receives its share of the stratum's images, and tiny strata do not all
land in the largest part.

Why not scikit-learn: its splitters give grouped *and* stratified splits only as k folds
(``StratifiedGroupKFold``), so a 15% test set would become 1/7 or 1/6; the allocation below hits
the requested fractions and handles folds with the same code.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segflow._parallel import parallel_map
from segflow.data import image_io
from segflow.data.dataset import CanonicalDataset, SplitRow
from segflow.errors import DataError, UsageError


@dataclass
class SplitResult:
    """What ``make_splits`` wrote and how the classes fell."""

    path: Path
    rows: list[SplitRow]
    parts: list[str]  # split names in display order (train/val/test, or fold-k)
    images: dict[str, int]
    groups: dict[str, int]
    presence: dict[str, dict[str, int]]  # part -> class name -> images containing it
    warnings: list[str] = field(default_factory=list)


def _mask_summary(path: Path) -> tuple[list[int], str]:
    """Classes present in a mask and, when it has more than one value, a hash of its pixels."""
    mask = image_io.read_mask(path)
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256)).tolist()
    digest = ""
    if len(present) > 1:
        digest = hashlib.blake2b(mask.tobytes(), digest_size=16).hexdigest() + str(mask.shape)
    return present, digest


class _UnionFind:
    def __init__(self, items: Sequence[str]) -> None:
        self.parent = {i: i for i in items}

    def find(self, x: str) -> str:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _group_key(pattern: re.Pattern[str], stem: str) -> str | None:
    m = pattern.search(stem)
    if m is None:
        return None
    return m.group(1) if m.groups() else m.group(0)


def _allocate(
    strata: dict[tuple[int, ...], list[tuple[str, int]]],
    fractions: dict[str, float],
    rng: random.Random,
) -> dict[str, str]:
    """Assign groups ``(name, size)`` of each stratum to parts by weighted systematic sampling."""
    parts = [p for p, f in fractions.items() if f > 0]
    bounds = np.cumsum([fractions[p] for p in parts])
    bounds /= bounds[-1]
    out: dict[str, str] = {}
    for key in sorted(strata):
        groups = sorted(strata[key])
        rng.shuffle(groups)
        total = sum(size for _, size in groups)
        start = rng.random()
        cumulative = 0.0
        for name, size in groups:
            u = (start + (cumulative + size / 2) / total) % 1.0
            out[name] = parts[min(int(np.searchsorted(bounds, u, side="right")), len(parts) - 1)]
            cumulative += size
    return out


def _fill_empty_parts(
    assignment: dict[str, str],
    sizes: dict[str, int],
    fractions: dict[str, float],
    rng: random.Random,
) -> None:
    """Give every part with a non-zero fraction at least one group, taken from the biggest part."""
    for part, frac in fractions.items():
        if frac <= 0 or part in assignment.values():
            continue
        counts = Counter(assignment.values())
        donor = max(counts, key=lambda p: (counts[p], p))
        if counts[donor] <= 1:
            continue
        candidates = sorted(g for g, p in assignment.items() if p == donor)
        smallest = min(sizes[g] for g in candidates)
        choice = rng.choice([g for g in candidates if sizes[g] == smallest])
        assignment[choice] = part


def make_splits(
    dataset_path: str | os.PathLike[str],
    *,
    val: float = 0.1,
    test: float = 0.1,
    stratify: bool = False,
    group_by: str | None = None,
    folds: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = False,
) -> SplitResult:
    """Write ``splits.csv`` for the labelled, non-excluded images of a dataset.

    The arguments are :func:`plan_splits`'s; this writes its rows into the dataset folder.
    """
    result = plan_splits(dataset_path, val=val, test=test, stratify=stratify, group_by=group_by,
                         folds=folds, seed=seed, workers=workers, progress=progress)  # fmt: skip
    result.path = CanonicalDataset(dataset_path).save_splits(result.rows)
    return result


def plan_splits(
    dataset_path: str | os.PathLike[str],
    *,
    val: float = 0.1,
    test: float = 0.1,
    stratify: bool = False,
    group_by: str | None = None,
    folds: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = False,
    only: Sequence[str] | None = None,
) -> SplitResult:
    """The rows ``splits.csv`` would get (nothing is written; ``path`` is where it would go).

    Args:
        dataset_path: the canonical dataset folder.
        val: share of images for validation (ignored with ``folds``: the validation set is the
            held-out fold).
        test: share of images held out for testing.
        stratify: keep the class-presence mix similar in every part.
        group_by: regular expression whose first group (or match) names a sample's group.
        folds: k >= 2 writes a ``fold`` column over the non-test images; fold 0 is also marked
            ``val`` so single-run training has a validation set.
        seed: random seed; the same inputs and seed always give the same splits.
        workers: processes used to read the masks.
        progress: show a progress bar.
        only: split just these stems (training's ``--folds K`` folds the non-test images).
    """
    if not 0 <= test < 1 or not 0 <= val < 1 or (folds is None and val + test >= 1):
        raise UsageError(f"--val {val} and --test {test} must be in [0, 1) and sum to less than 1")
    if folds is not None and folds < 2:
        raise UsageError(f"--folds {folds}: need at least 2 folds")
    pattern = None
    if group_by:
        try:
            pattern = re.compile(group_by)
        except re.error as exc:
            raise UsageError(
                f"--group-by {group_by!r} is not a valid regular expression: {exc}"
            ) from None
    dataset = CanonicalDataset(dataset_path)
    samples = dataset.labelled_samples()
    if only is not None:
        keep = set(only)
        samples = [s for s in samples if s.stem in keep]
    if not samples:
        raise DataError(dataset.root, "no labelled images (image + mask) to split")
    previous = dataset.splits()
    stems = [s.stem for s in samples]
    mask_paths = [s.mask for s in samples if s.mask is not None]
    jobs = list(enumerate(mask_paths))
    done = sorted(
        parallel_map(_summary_job, jobs, workers=workers, progress=progress, label="split")
    )
    summaries = {stems[i]: summary for i, summary in done}
    warnings: list[str] = []
    uf, components, labels, group_name = _group(stems, summaries, pattern, previous, warnings)

    n_classes = dataset.meta.num_classes
    ignore = dataset.meta.ignore_index
    signature: dict[str, tuple[int, ...]] = {}
    for root, members in components.items():
        present = {
            c for s in members for c in summaries[s][0] if c not in (0, ignore) and c < n_classes
        }
        signature[root] = tuple(sorted(present)) if stratify else ()
    if folds is not None:
        fractions = {"test": test, **{f"fold{k}": (1 - test) / folds for k in range(folds)}}
    else:
        fractions = {"train": 1 - val - test, "val": val, "test": test}
    n_parts = sum(1 for f in fractions.values() if f > 0)
    strata = _strata(signature, components, n_parts)
    rng = random.Random(seed)
    assignment = _allocate(strata, fractions, rng)
    _fill_empty_parts(assignment, {r: len(m) for r, m in components.items()}, fractions, rng)

    rows: list[SplitRow] = []
    for root, members in components.items():
        part = assignment[root]
        fold = int(part[4:]) if part.startswith("fold") else None
        split = part if fold is None else ("val" if fold == 0 else "train")
        group = group_name[root] if (len(members) > 1 or root in labels) else ""
        rows.extend(SplitRow(stem, split, group, fold) for stem in members)
    rows.sort(key=lambda r: r.stem)
    path = dataset.root / "splits.csv"
    parts = [p for p in fractions if fractions[p] > 0]
    names = {c.id: c.name for c in dataset.meta.classes}
    part_of = {r.stem: (f"fold{r.fold}" if r.fold is not None else r.split) for r in rows}
    images = Counter(part_of.values())
    groups = Counter(assignment[uf.find(s)] for s in {uf.find(s) for s in stems})
    presence: dict[str, dict[str, int]] = {p: dict.fromkeys(names.values(), 0) for p in parts}
    for stem, part in part_of.items():
        for c in summaries[stem][0]:
            if c in names:
                presence[part][names[c]] += 1
    for part in parts:
        if images.get(part, 0) == 0:
            warnings.append(f"{part} is empty: too few images or groups for the requested shares")
    return SplitResult(path, rows, parts, dict(images), dict(groups), presence, warnings)


def _group(
    stems: list[str],
    summaries: dict[str, tuple[list[int], str]],
    pattern: re.Pattern[str] | None,
    previous: dict[str, SplitRow],
    warnings: list[str],
) -> tuple[_UnionFind, dict[str, list[str]], dict[str, str], dict[str, str]]:
    """Join samples that must stay together: same ``--group-by`` key (or earlier group), same mask.

    Returns the union-find, its components (root -> stems), each labelled stem's group key and
    each component's group name; appends what the user should know to ``warnings``.
    """
    uf = _UnionFind(stems)
    labels: dict[str, str] = {}
    unmatched = []
    by_key: dict[str, list[str]] = defaultdict(list)
    for stem in stems:
        key = _group_key(pattern, stem) if pattern else None
        if pattern and key is None:
            unmatched.append(stem)
        old = previous.get(stem)
        if key is None and old is not None and old.group:
            key = old.group
        if key is not None:
            by_key[key].append(stem)
            labels[stem] = key
    if unmatched:
        warnings.append(
            f"--group-by matched no group in {len(unmatched)} stem(s) (first: {unmatched[0]}); "
            "each is its own group"
        )
    by_mask: dict[str, list[str]] = defaultdict(list)
    for stem, (_, digest) in summaries.items():
        if digest:
            by_mask[digest].append(stem)
    shared = [members for members in by_mask.values() if len(members) > 1]
    if shared:
        warnings.append(
            f"{sum(len(m) for m in shared)} images share {len(shared)} identical mask(s); kept together"
        )
    for members in [*by_key.values(), *shared]:
        for other in members[1:]:
            uf.union(members[0], other)
    components: dict[str, list[str]] = defaultdict(list)
    for stem in stems:
        components[uf.find(stem)].append(stem)
    group_name = {
        root: min((labels[s] for s in members if s in labels), default=root)
        for root, members in components.items()
    }
    return uf, components, labels, group_name


def _summary_job(item: tuple[int, Path]) -> tuple[int, tuple[list[int], str]]:
    index, path = item
    return index, _mask_summary(path)


def _strata(
    signature: dict[str, tuple[int, ...]], components: dict[str, list[str]], n_parts: int
) -> dict[tuple[int, ...], list[tuple[str, int]]]:
    """Group the components by signature, merging signatures too rare to cover every part."""
    counts = Counter(signature.values())
    class_groups = Counter(c for sig in signature.values() for c in sig)
    merged: dict[str, tuple[int, ...]] = {}
    for root, sig in signature.items():
        if counts[sig] >= n_parts or not sig:
            merged[root] = sig
        else:
            rarest = min(sig, key=lambda c: (class_groups[c], c))
            merged[root] = (rarest,)
    counts = Counter(merged.values())
    strata: dict[tuple[int, ...], list[tuple[str, int]]] = defaultdict(list)
    for root, sig in merged.items():
        key = sig if counts[sig] >= n_parts else (-1,)
        strata[key].append((root, len(components[root])))
    return dict(strata)
