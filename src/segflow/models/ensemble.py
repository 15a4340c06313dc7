"""The ensemble bundle: a folder ``NAME.segflow/`` of member bundles and the rule combining them.

Layout (``segflow train --folds K`` writes ``ensemble.segflow/``)::

    NAME.segflow/
      ensemble.yaml        # EnsembleManifest below: members, combine, threshold, TTA, post-proc.
      fold0.segflow/ ...   # the member bundles (each a complete bundle on its own)
      oof/                 # training's out-of-fold probabilities (optional, see train/ensemble.py)

Every consumer loads an ensemble like a bundle: :func:`segflow.models.bundle.read_bundle_meta`
returns its *effective* metadata (the first member's network facts, the manifest's threshold,
TTA and post-processing) and :meth:`segflow.infer.predictor.Predictor.from_bundles` expands it
into its members. The manifest is read with ``yaml.safe_load`` and validated strictly: every
member is a relative path inside the folder (no ``..``, no absolute path, no link leading out),
exists, is a bundle (not another ensemble), and has the manifest's classes and task.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from segflow._io import atomic_write_text, dump_yaml, now_iso
from segflow._version import __version__
from segflow.classes import ClassInfo
from segflow.errors import DataError, UsageError, validation_message

if TYPE_CHECKING:
    from segflow.models.bundle import BundleMeta

ENSEMBLE_FILE = "ensemble.yaml"


class EnsembleManifest(BaseModel):
    """Everything ``ensemble.yaml`` holds."""

    model_config = ConfigDict(extra="forbid")

    segflow_version: str = Field(__version__, pattern=r"^\d+\.\d+", description="writer's version")
    kind: Literal["ensemble"] = Field("ensemble", description="marks an ensemble bundle")
    name: str = Field(min_length=1, description="ensemble name")
    created_at: str = Field(default_factory=now_iso, description="UTC time of saving, ISO 8601")
    task: Literal["binary", "multiclass"] = Field(description="the members' task")
    classes: list[ClassInfo] = Field(min_length=2, description="the members' classes")
    members: list[str] = Field(min_length=1, description="member bundle folders, relative")
    combine: Literal["mean", "vote"] = Field("mean", description="mean probabilities or vote")
    threshold: float = Field(0.5, ge=0, le=1, description="binary: foreground probability cut")
    tta: list[Literal["h", "v", "hv"]] = Field(
        default_factory=list, description="test-time flips every member averages in"
    )
    postprocess: dict[str, Any] = Field(default_factory=dict, description="post-processing steps")
    folds: dict[str, list[str]] = Field(
        default_factory=dict, description="member -> the images it validated on (out of fold)"
    )
    metrics: dict[str, float] = Field(default_factory=dict, description="out-of-fold metrics")
    tuning: dict[str, Any] = Field(
        default_factory=dict, description="how threshold/TTA/post-processing were chosen"
    )


@dataclass
class Ensemble:
    """A validated ensemble: its folder, manifest and the member bundles' paths and metadata."""

    folder: Path
    manifest: EnsembleManifest
    members: list[Path]
    metas: list[BundleMeta]


def is_ensemble(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an ensemble folder (holds ``ensemble.yaml``)."""
    return (Path(path) / ENSEMBLE_FILE).is_file()


def meta_file(path: str | os.PathLike[str]) -> Path:
    """The file describing a bundle or an ensemble (``bundle.yaml`` / ``ensemble.yaml``)."""
    return Path(path) / (ENSEMBLE_FILE if is_ensemble(path) else "bundle.yaml")


def _member_path(folder: Path, manifest_path: Path, member: str) -> Path:
    rel = PurePosixPath(member.replace("\\", "/"))
    if rel.is_absolute() or Path(member).is_absolute() or ".." in rel.parts or not rel.parts:
        raise DataError(manifest_path, f"member {member!r} must be a folder inside the ensemble")
    path = folder / Path(*rel.parts)
    root = folder.resolve()
    resolved = path.resolve()
    if resolved == root or root not in resolved.parents:
        raise DataError(manifest_path, f"member {member!r} leads out of the ensemble folder")
    if not path.is_dir():
        raise DataError(manifest_path, f"member {member!r} is missing: the ensemble is incomplete")
    if is_ensemble(path):
        raise DataError(manifest_path, f"member {member!r} is an ensemble itself (not supported)")
    return path


def read_manifest(path: str | os.PathLike[str]) -> EnsembleManifest:
    """Read and validate ``ensemble.yaml`` alone (the members are not opened)."""
    from segflow._textio import load_yaml, read_text

    manifest_path = Path(path) / ENSEMBLE_FILE
    raw = load_yaml(read_text(manifest_path, ENSEMBLE_FILE), manifest_path)
    if not isinstance(raw, dict):
        raise DataError(manifest_path, "expected a mapping (name, classes, members, combine, ...)")
    try:
        return EnsembleManifest.model_validate(raw)
    except ValidationError as exc:
        raise DataError(manifest_path, validation_message(exc)) from None


def read_ensemble(path: str | os.PathLike[str]) -> Ensemble:
    """The validated ensemble at ``path``; a broken one raises DataError naming ``ensemble.yaml``."""
    from segflow.models.bundle import read_bundle_meta

    folder = Path(path)
    manifest_path = folder / ENSEMBLE_FILE
    manifest = read_manifest(folder)
    if len(set(manifest.members)) != len(manifest.members):
        raise DataError(manifest_path, "a member is listed twice")
    members = [_member_path(folder, manifest_path, m) for m in manifest.members]
    metas = [read_bundle_meta(m) for m in members]
    names = [c.name for c in manifest.classes]
    for member, meta in zip(manifest.members, metas, strict=True):
        theirs = [c.name for c in meta.classes]
        if theirs != names or meta.task != manifest.task:
            raise DataError(
                manifest_path,
                f"member {member!r} has classes {theirs} ({meta.task}), the ensemble "
                f"{names} ({manifest.task})",
            )
    unknown = sorted(set(manifest.folds) - set(manifest.members))
    if unknown:
        raise DataError(manifest_path, f"folds name {unknown[0]!r}, which is no member")
    return Ensemble(folder, manifest, members, metas)


def ensemble_meta(path: str | os.PathLike[str]) -> BundleMeta:
    """The metadata an ensemble predicts with: the first member's, with the manifest's settings.

    Network facts (channels, normalisation, tiling) are the first member's, as the Predictor
    checks inputs against them; name, threshold, TTA, post-processing, metrics and tuning come
    from ``ensemble.yaml``. ``weights_sha256`` and ``exports`` are emptied: an ensemble has no
    weights of its own.
    """
    ens = read_ensemble(path)
    first, m = ens.metas[0], ens.manifest
    return first.model_copy(
        update={
            "name": m.name,
            "created_at": m.created_at,
            "threshold": m.threshold,
            "postprocess": dict(m.postprocess),
            "inference": first.inference.model_copy(update={"tta": list(m.tta)}),
            "metrics": dict(m.metrics),
            "tuning": dict(m.tuning),
            "weights_sha256": "",
            "exports": {},
        }
    )


def write_manifest(folder: Path, manifest: EnsembleManifest) -> None:
    """Write ``ensemble.yaml`` atomically (validated again first)."""
    data = EnsembleManifest.model_validate(manifest.model_dump()).model_dump(mode="json")
    atomic_write_text(folder / ENSEMBLE_FILE, dump_yaml(data))


def save_ensemble(
    target: str | os.PathLike[str],
    members: Sequence[tuple[str, Path]],
    manifest: EnsembleManifest,
    extra: Sequence[tuple[str, Path]] = (),
) -> Path:
    """Write the ensemble folder ``target`` atomically: member bundles copied in, the manifest.

    ``members`` are ``(name inside the ensemble, bundle folder)``; ``extra`` folders (``oof``)
    are copied in under their names. The folder is built under a temporary sibling name, read
    back with :func:`read_ensemble` and only then renamed into place; ``target`` must not exist.
    """
    path = Path(target)
    if path.suffix != ".segflow" or path.name == ".segflow":
        raise UsageError(f"{path}: an ensemble folder name must end with .segflow")
    if path.exists():
        raise UsageError(f"{path}: already exists; refusing to replace it")
    parent = path.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        for name, src in [*members, *extra]:
            shutil.copytree(src, tmp / name)
        write_manifest(tmp, manifest.model_copy(update={"members": [n for n, _ in members]}))
        read_ensemble(tmp)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def expand_bundles(
    paths: Sequence[str | os.PathLike[str]],
) -> tuple[list[tuple[Path, list[str] | None]], EnsembleManifest | None]:
    """Bundles with ensembles replaced by their members: ``(bundle, the ensemble's TTA)``.

    Also returns the first path's manifest when it is an ensemble (its combine rule, threshold
    and post-processing are the defaults of the whole prediction), else None.
    """
    out: list[tuple[Path, list[str] | None]] = []
    first: EnsembleManifest | None = None
    for i, path in enumerate(paths):
        if not is_ensemble(path):
            out.append((Path(path), None))
            continue
        ens = read_ensemble(path)
        if i == 0:
            first = ens.manifest
        out.extend((m, list(ens.manifest.tta)) for m in ens.members)
    return out, first
