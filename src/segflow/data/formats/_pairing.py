"""Pairing images with annotation files by name, and split lists: shared by mask-file formats.

Image and annotation files are keyed by their path relative to their folder
(``train/00000_img.jpg``). Two keys pair when they are equal after removing an image suffix and
an annotation suffix (``_img.jpg`` / ``_gt.png``); the suffixes are given or found as the pair
that matches the most files (ties: the shortest suffixes, i.e. the longest shared stem).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from segflow.data import image_io
from segflow.data.formats.base import safe_stem

#: Folder names that mean a split (ADE20K uses training/validation).
SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
#: Characters that may start a file-name suffix or separate a scene name from a date.
SEPARATORS = "._- "
_CANDIDATES = 12


def image_keys(root: Path) -> dict[str, Path]:
    """Image files under ``root`` (recursively, hidden ones skipped) keyed by relative path."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if (
            path.is_file()
            and image_io.is_image_file(path)
            and not any(p.startswith(".") for p in rel.parts)
        ):
            out[rel.as_posix()] = path
    return out


def name_suffixes(key: str) -> list[str]:
    """Possible suffixes of a key: ``""`` and every file-name ending that starts at a separator."""
    name = key.rsplit("/", 1)[-1]
    return ["", *(name[i:] for i in range(1, len(name)) if name[i] in SEPARATORS)]


def common_suffixes(keys: Iterable[str], limit: int = _CANDIDATES) -> list[str]:
    """The ``limit`` suffixes shared by the most keys (``""`` always included)."""
    counts = Counter(s for k in keys for s in name_suffixes(k))
    ranked = sorted(counts, key=lambda s: (-counts[s], len(s)))[:limit]
    return ranked if "" in ranked else [*ranked, ""]


def strip_suffix(keys: Iterable[str], suffix: str) -> dict[str, str]:
    """``{base: key}`` for the keys ending with ``suffix`` (a base must not be empty)."""
    out: dict[str, str] = {}
    for key in keys:
        if suffix and not key.endswith(suffix):
            continue
        base = key[: len(key) - len(suffix)] if suffix else key
        if base and not base.endswith("/"):
            out.setdefault(base, key)
    return out


@dataclass
class Pairing:
    """Images paired with annotations by name."""

    img_suffix: str
    seg_suffix: str
    pairs: dict[str, tuple[str, str]]  # base -> (image key, annotation key), sorted by base
    lonely_images: list[str] = field(default_factory=list)
    lonely_annotations: list[str] = field(default_factory=list)


def pair_by_suffix(
    img_keys: Collection[str],
    ann_keys: Collection[str],
    img_suffix: str | None = None,
    seg_suffix: str | None = None,
) -> Pairing:
    """Pair keys by the given suffixes, or by the suffix pair that matches the most keys."""
    img_options = [img_suffix] if img_suffix is not None else common_suffixes(img_keys)
    seg_options = [seg_suffix] if seg_suffix is not None else common_suffixes(ann_keys)
    seg_maps = {s: strip_suffix(ann_keys, s) for s in seg_options}
    best = (-1, 0, img_options[0], seg_options[0])
    for img_option in img_options:
        img_bases = strip_suffix(img_keys, img_option)
        for seg_option, seg_bases in seg_maps.items():
            score = (len(img_bases.keys() & seg_bases.keys()), -len(img_option) - len(seg_option))
            if score > best[:2]:
                best = (score[0], score[1], img_option, seg_option)
    _, _, i_suf, s_suf = best
    img_bases, seg_bases = strip_suffix(img_keys, i_suf), seg_maps[s_suf]
    pairs = {b: (img_bases[b], seg_bases[b]) for b in sorted(img_bases.keys() & seg_bases.keys())}
    used_img = {v[0] for v in pairs.values()}
    used_ann = {v[1] for v in pairs.values()}
    return Pairing(
        i_suf,
        s_suf,
        pairs,
        sorted(k for k in img_keys if k not in used_img),
        sorted(k for k in ann_keys if k not in used_ann),
    )


def shared_prefix(stem: str, candidates: Collection[str]) -> list[str]:
    """Candidates that are ``stem`` cut before a separator (``scene1`` for ``scene1_2019``)."""
    return [
        stem[:i] for i in range(1, len(stem)) if stem[i] in SEPARATORS and stem[:i] in candidates
    ]


def split_and_stem(base: str) -> tuple[str, str]:
    """``("train", "a_b")`` for ``train/a/b``: a leading split folder becomes the split."""
    parts = base.split("/")
    split = SPLIT_FOLDERS.get(parts[0].lower(), "") if len(parts) > 1 else ""
    rest = parts[1:] if split else parts
    return split, safe_stem("_".join(rest))


def read_split_lists(folder: Path) -> tuple[dict[str, str], list[str]]:
    """``{name: split}`` from the split lists in ``folder``, plus warnings.

    The lists are ``train.txt``, ``val.txt`` and ``test.txt``; ``trainval.txt`` counts as train
    when neither ``train.txt`` nor ``val.txt`` exists. Each line's first word is a name (VOC and
    MMSeg list bare stems); blank lines are skipped.
    """
    files = {p.stem.lower(): p for p in folder.glob("*.txt")} if folder.is_dir() else {}
    order = [("train", "train"), ("val", "val"), ("test", "test")]
    if "train" not in files and "val" not in files:
        order.insert(0, ("trainval", "train"))
    splits: dict[str, str] = {}
    conflicts: list[str] = []
    for list_name, split in order:
        path = files.get(list_name)
        if path is None:
            continue
        for line in path.read_text(encoding="utf-8-sig").splitlines():
            words = line.split()
            if not words:
                continue
            name = words[0]
            if name in splits and splits[name] != split:
                conflicts.append(name)
                continue
            splits[name] = split
    warnings = []
    if conflicts:
        warnings.append(
            f"{folder}: {len(conflicts)} name(s) listed in two splits, first list kept "
            f"(train, val, test order): {summarise(conflicts)}"
        )
    return splits, warnings


def summarise(names: Collection[str], limit: int = 5) -> str:
    """``a, b, c ... (12 in all)``: a short list for one-line messages."""
    shown = ", ".join(list(names)[:limit])
    return shown if len(names) <= limit else f"{shown} ... ({len(names)} in all)"
