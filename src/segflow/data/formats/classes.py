"""Class lists: the ``--classes FILE`` format and the mapping from source labels to class ids.

A classes file is one of

* text: one class name per line, line order = id (blank lines and ``#`` comments skipped). The
  labelme ``labels.txt`` convention works as is: ``__ignore__`` maps a label to the ignore index,
  ``_background_`` is class 0.
* YAML/JSON: a list of names, or of mappings ``{name, color?, aliases?}``, optionally under a
  top-level ``classes:`` key. ``aliases`` lists source labels that also map to that class
  (merging labels), and a top-level ``ignore: [labels]`` maps labels to the ignore index.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segflow.classes import ClassInfo
from segflow.data.dataset import IGNORE_INDEX, make_classes
from segflow.errors import DataError, UsageError

BACKGROUND_ALIASES = frozenset({"background", "_background_", "__background__", "bg"})
IGNORE_ALIASES = frozenset({"__ignore__", "ignore", "_ignore_"})


@dataclass
class ClassesSpec:
    """A user-supplied class list (``--classes FILE``)."""

    names: list[str]
    colors: list[tuple[int, int, int] | None]
    aliases: dict[str, str] = field(default_factory=dict)
    ignore: set[str] = field(default_factory=set)
    path: Path | None = None


def _parse_color(value: Any, path: Path) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = value.lstrip("#")
        if len(text) == 6:
            try:
                return (int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16))
            except ValueError:
                pass
        raise DataError(path, f"colour {value!r} is not #RRGGBB or [r, g, b]")
    if isinstance(value, Sequence) and len(value) == 3 and all(isinstance(c, int) for c in value):
        return (int(value[0]), int(value[1]), int(value[2]))
    raise DataError(path, f"colour {value!r} is not #RRGGBB or [r, g, b]")


def load_classes_file(path: str | Path) -> ClassesSpec:
    """Parse a classes file (see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: classes file not found")
    from segflow._textio import load_yaml, read_text

    text = read_text(p, "classes file", encoding="utf-8-sig")
    spec = ClassesSpec(names=[], colors=[], path=p)
    if p.suffix.lower() in (".yaml", ".yml", ".json"):
        try:
            raw = json.loads(text) if p.suffix.lower() == ".json" else load_yaml(text, p)
        except json.JSONDecodeError as exc:
            raise DataError(p, f"cannot parse classes file: {str(exc).splitlines()[0]}") from None
        if isinstance(raw, Mapping):
            spec.ignore = {str(x) for x in raw.get("ignore", []) or []}
            raw = raw.get("classes")
        if not isinstance(raw, list) or not raw:
            raise DataError(p, "expected a non-empty list of class names or {name, color} entries")
        for item in raw:
            if isinstance(item, str):
                spec.names.append(item)
                spec.colors.append(None)
            elif isinstance(item, Mapping) and isinstance(item.get("name"), str):
                spec.names.append(item["name"])
                spec.colors.append(_parse_color(item.get("color"), p))
                for alias in item.get("aliases", []) or []:
                    spec.aliases[str(alias)] = item["name"]
            else:
                raise DataError(p, f"class entry {item!r} needs a 'name'")
    else:
        for line in text.splitlines():
            name = line.strip()
            if not name or name.startswith("#"):
                continue
            if name in IGNORE_ALIASES:
                spec.ignore.add(name)
                continue
            spec.names.append(name)
            spec.colors.append(None)
    if not spec.names:
        raise DataError(p, "classes file lists no classes")
    dupes = sorted({n for n in spec.names if spec.names.count(n) > 1})
    if dupes:
        raise DataError(p, f"class names listed twice: {dupes}")
    if len(spec.names) > IGNORE_INDEX:
        raise DataError(p, f"at most {IGNORE_INDEX} classes fit in a uint8 mask")
    return spec


@dataclass
class ClassMapping:
    """Final classes of an import and the id of every source label (255 = ignore)."""

    classes: list[ClassInfo]
    label_ids: dict[str, int]
    unknown: list[str] = field(default_factory=list)

    def id_of(self, label: str) -> int | None:
        """The class id for a source label, or ``None`` if the label is dropped."""
        return self.label_ids.get(label)


def resolve_classes(
    source_labels: Iterable[str],
    spec: ClassesSpec | None,
    *,
    strict: bool,
    where: str | Path,
    source_colors: Mapping[str, tuple[int, int, int]] | None = None,
    sort_labels: bool = False,
    has_background: bool = False,
) -> ClassMapping:
    """Map source labels to dense class ids.

    Without ``spec``: class 0 is ``background`` (unless the source already has a background label
    first, ``has_background``), then the source labels in source order (or sorted when
    ``sort_labels``). With ``spec``: the spec's classes, labels matched by name or alias; a label
    the spec does not know is dropped with a warning, or is an error when ``strict``.

    Args:
        source_labels: labels found in (or declared by) the source, in source order.
        spec: the parsed ``--classes`` file, if any.
        strict: unknown labels are errors instead of warnings.
        where: the source, named in error messages.
        source_colors: colours the source declares for its labels.
        sort_labels: order auto-discovered labels alphabetically (LabelMe convention).
        has_background: the first source label is the background class.
    """
    labels = list(dict.fromkeys(source_labels))
    colors = dict(source_colors or {})
    if spec is None:
        ignore = [lb for lb in labels if lb in IGNORE_ALIASES]
        rest = [lb for lb in labels if lb not in IGNORE_ALIASES]
        bg_label: str | None = None
        if has_background and rest:
            bg_label = rest.pop(0)
        else:
            bg_label = next((lb for lb in rest if lb.lower() in BACKGROUND_ALIASES), None)
            if bg_label is not None:
                rest.remove(bg_label)
        if sort_labels:
            rest.sort()
        names = [bg_label if bg_label is not None and has_background else "background", *rest]
        if len(names) > IGNORE_INDEX:
            raise DataError(
                where, f"{len(names)} classes do not fit in a uint8 mask (max {IGNORE_INDEX})"
            )
        class_colors = [colors.get(bg_label or "", (0, 0, 0))] + [colors.get(n) for n in rest]
        classes = make_classes(names, class_colors)
        label_ids = {name: i for i, name in enumerate(names)}
        if bg_label is not None:
            label_ids[bg_label] = 0
        for lb in ignore:
            label_ids[lb] = IGNORE_INDEX
        return ClassMapping(classes, label_ids)

    classes = make_classes(
        spec.names,
        [
            c if c is not None else colors.get(n)
            for n, c in zip(spec.names, spec.colors, strict=True)
        ],
    )
    by_name = {name: i for i, name in enumerate(spec.names)}
    label_ids = dict(by_name)
    for alias, target in spec.aliases.items():
        label_ids[alias] = by_name[target]
    for lb in spec.ignore:
        label_ids[lb] = IGNORE_INDEX
    unknown = []
    for lb in labels:
        if lb in label_ids:
            continue
        if lb.lower() in BACKGROUND_ALIASES and spec.names[0].lower() in BACKGROUND_ALIASES:
            label_ids[lb] = 0
            continue
        unknown.append(lb)
    if unknown and strict:
        raise DataError(
            where,
            f"label(s) {', '.join(repr(u) for u in unknown)} not in classes file {spec.path} "
            "(add them, map them with 'aliases', or drop --strict to skip them)",
        )
    return ClassMapping(classes, label_ids, unknown)
