"""``--backend auto``: the fastest installed backend for this bundle on this machine, measured.

The candidates are the ONNX runtimes when the bundle has ``model.onnx`` (onnxruntime f32,
OpenVINO f32 and, where allowed, OpenVINO bf16), else eager torch. bf16 is a candidate only where
the CPU runs it natively (:func:`segflow._hw.cpu_supports_bf16`) and the bundle's export check
found it safe (``exports.onnx.bf16.safe`` in ``bundle.yaml``). Each candidate runs a few batches
of tiles at the bundle's tile size; the fastest wins. The result is cached, in
``NAME.segflow/.segflow-backend.json`` when the bundle folder is writable, else in
``$XDG_CACHE_HOME/segflow/backends/`` (``~/.cache/segflow``), keyed by the CPU model, the
library versions, the settings measured and a digest of the bundle's weights and ONNX file, so a
changed bundle, library or machine is measured again.

Torch is not measured when the bundle has an ONNX export: the ONNX runtimes run the same
parity-checked graph, and importing torch would cost seconds and memory at every start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segflow.errors import UsageError
from segflow.infer.backends import BACKENDS, PRECISIONS, Backend, onnx_file
from segflow.models.bundle import BundleMeta

log = logging.getLogger("segflow.infer")

#: The logger of the one line saying which backend and precision run, and why (the CLI shows it).
CHOICE_LOG = "segflow.infer.backend"
CACHE_FILE = ".segflow-backend.json"
#: Entries kept per cache file (one per machine, library versions and settings).
CACHE_ENTRIES = 16
#: Timed batches per candidate, after one warm-up batch.
REPEATS = 2


@dataclass(frozen=True)
class Choice:
    """The backend and precision a bundle runs with, and why (for the one line predict prints)."""

    backend: str
    precision: str
    reason: str

    def describe(self) -> str:
        """``openvino bf16 (measured: openvino-bf16 0.05 s, onnx-f32 0.20 s per batch ...)``."""
        return f"{self.backend} {self.precision} ({self.reason})"


@dataclass(frozen=True)
class Request:
    """What the user asked for and the settings a measurement depends on."""

    backend: str = "auto"
    precision: str = "auto"
    device: str = "auto"
    threads: int | None = None
    tile: int = 512
    batch: int = 4


def has_openvino() -> bool:
    """Whether ``import openvino`` works here (a broken install counts as missing)."""
    try:
        import openvino  # noqa: F401
    except Exception:  # ImportError, or a shared library that fails to load
        return False
    return True


def has_onnxruntime() -> bool:
    """Whether onnxruntime is installed."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def bf16_status(meta: BundleMeta) -> tuple[bool, str]:
    """Whether ``auto`` may use bf16 for this bundle here, and why not when it may not."""
    from segflow._hw import cpu_supports_bf16

    if not cpu_supports_bf16():
        return False, "this CPU has no native bf16 (AMX / AVX-512 BF16)"
    export = meta.exports.get("onnx")
    check = export.bf16 if export is not None else None
    if check is None:
        return False, "bf16 not checked for this bundle (segflow export --format onnx checks it)"
    if not check.safe:
        return False, (
            f"bf16 unsafe for this bundle: it kept {check.agreement:.2%} of pixel decisions "
            f"(< {check.min_agreement:.1%}) in the export check"
        )
    return True, ""


def build(name: str, precision: str, path: Path, req: Request) -> Backend:
    """The backend ``name`` at ``precision`` for the bundle at ``path``."""
    if name == "onnx":
        from segflow.infer.onnx_backend import OnnxBackend

        return OnnxBackend(path, threads=req.threads)
    if name == "openvino":
        from segflow.infer.openvino_backend import OpenVinoBackend

        device = req.device if req.device in ("auto", "cpu") or req.device.isupper() else "cpu"
        return OpenVinoBackend(path, threads=req.threads, precision=precision, device=device)
    from segflow.infer.backends import TorchBackend
    from segflow.models.bundle import load_bundle

    # CUDA keeps its mixed precision unless f32 is asked for explicitly
    amp = req.precision != "f32"
    return TorchBackend(load_bundle(path), device=req.device, amp=amp, precision=precision)


def _forced(path: Path, meta: BundleMeta, req: Request) -> tuple[Backend, Choice]:
    """An explicit ``--backend``: check it can run, resolve ``--precision auto``."""
    name = req.backend
    if name in ("onnx", "openvino") and onnx_file(path) is None:
        raise UsageError(
            f"{path}: no model.onnx for --backend {name}; "
            f"run `segflow export {path} --format onnx` first"
        )
    if name == "openvino" and not has_openvino():
        raise UsageError("--backend openvino: openvino is not installed (pip install openvino)")
    if name == "onnx" and req.precision == "bf16":
        raise UsageError("--backend onnx runs f32 only; use --backend openvino or torch for bf16")
    allowed, why = bf16_status(meta)
    if req.precision != "auto":
        precision, reason = req.precision, f"--backend {name} --precision {req.precision}"
        if precision == "bf16" and not allowed:
            log.warning("--precision bf16 although %s", why)
    elif name in ("onnx", "torch"):  # the reference runtimes: bf16 only when asked for
        precision, reason = "f32", f"--backend {name}"
    else:
        precision = "bf16" if allowed else "f32"
        reason = f"--backend {name}" + (f"; f32: {why}" if why else "; bf16: native and safe")
    engine = build(name, precision, path, req)
    return engine, Choice(name, str(getattr(engine, "precision", precision)), reason)


def candidates(path: Path, meta: BundleMeta, precision: str) -> tuple[list[str], list[str]]:
    """``backend-precision`` names ``auto`` measures, and notes on what it left out and why."""
    allowed, why = bf16_status(meta)
    want = ["f32", "bf16"] if precision == "auto" else [precision]
    if "bf16" in want and not allowed:
        want.remove("bf16")
        if precision == "bf16":
            log.warning("--precision bf16 although %s", why)
            want = ["bf16"]
    notes = [why] if why and precision == "auto" else []
    found: list[str] = []
    if onnx_file(path) is not None:
        if "f32" in want and has_onnxruntime():
            found.append("onnx-f32")
        if has_openvino():
            found += [f"openvino-{p}" for p in want]
        else:
            notes.append("openvino not installed")
    else:
        notes.append("no model.onnx: torch only (segflow export --format onnx)")
    if not found:
        found = [f"torch-{p}" for p in want]
    return found, notes


def choose_backend(path: Path, meta: BundleMeta, req: Request) -> tuple[Backend, Choice]:
    """The backend to run and the Choice that explains it (measured and cached for ``auto``)."""
    if req.backend not in BACKENDS:
        raise UsageError(f"unknown backend {req.backend!r}; valid: {', '.join(BACKENDS)}")
    if req.precision not in PRECISIONS:
        raise UsageError(f"unknown precision {req.precision!r}; valid: {', '.join(PRECISIONS)}")
    if req.threads is not None and req.threads < 1:
        raise UsageError(f"--threads {req.threads}: must be at least 1")
    if req.backend != "auto":
        return _forced(path, meta, req)
    names, notes = candidates(path, meta, req.precision)
    note = f"; {'; '.join(notes)}" if notes else ""
    if len(names) == 1:
        name, precision = names[0].split("-")
        return build(name, precision, path, req), Choice(
            name, precision, f"auto: only {names[0]}{note}"
        )
    key = cache_key(path, meta, req, names)
    cached = read_cache(path, key)
    if cached is not None and cached.get("winner") in names:
        name, precision = str(cached["winner"]).split("-")
        text = _times_text(cached["times"], req)
        return build(name, precision, path, req), Choice(name, precision, f"cached: {text}{note}")
    engine, winner, times = measure(path, meta, req, names)
    write_cache(path, key, {"winner": winner, "times": times, "measured_at": time.time()})
    name, precision = winner.split("-")
    return engine, Choice(name, precision, f"measured: {_times_text(times, req)}{note}")


def _times_text(times: dict[str, float], req: Request) -> str:
    ranked = sorted(times.items(), key=lambda kv: kv[1])
    shown = ", ".join(f"{n} {t:.3f} s" for n, t in ranked)
    return f"{shown} per batch of {req.batch} x {req.tile}^2 tiles"


def measure(
    path: Path, meta: BundleMeta, req: Request, names: list[str]
) -> tuple[Backend, str, dict[str, float]]:
    """Time every candidate on the same random tiles; return the fastest engine and all times."""
    x = np.random.default_rng(0).standard_normal(
        (req.batch, meta.in_channels, req.tile, req.tile), dtype=np.float32
    )
    times: dict[str, float] = {}
    best: tuple[float, str, Backend] | None = None
    for cand in names:
        name, precision = cand.split("-")
        try:
            engine = build(name, precision, path, req)
            seconds = time_backend(engine, x)
        except Exception as exc:  # a runtime that cannot run this bundle here is not a candidate
            log.warning("backend %s left out: %s", cand, str(exc).splitlines()[0][:200])
            continue
        times[cand] = seconds
        if best is None or seconds < best[0]:
            best = (seconds, cand, engine)
        del engine
    if best is None:
        raise UsageError(f"{path}: no backend could run it ({', '.join(names)})")
    return best[2], best[1], times


def time_backend(engine: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> float:
    """Best wall time of :data:`REPEATS` calls after one warm-up (first calls compile, allocate)."""
    engine(x)
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        engine(x)
        best = min(best, time.perf_counter() - start)
    return best


# -- the cache -------------------------------------------------------------------------------------
def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return ""


def _file_stamp(path: Path) -> list[int]:
    try:
        st = path.stat()
    except OSError:
        return []
    return [st.st_size, st.st_mtime_ns]


def cache_key(path: Path, meta: BundleMeta, req: Request, names: list[str]) -> str:
    """Digest of everything a measurement depends on: machine, libraries, bundle, settings."""
    from segflow._hw import cpu_info
    from segflow._version import __version__

    onnx = meta.exports.get("onnx")
    parts: dict[str, Any] = {
        "cpu": cpu_info().model,
        "cpus": os.cpu_count(),
        "versions": [__version__, *(_version(d) for d in ("torch", "onnxruntime", "openvino"))],
        "weights": [meta.weights_sha256, *_file_stamp(path / "weights.safetensors")],
        "onnx": [onnx.sha256 if onnx else "", *_file_stamp(path / "model.onnx")],
        "request": [req.precision, req.device, req.threads, req.tile, req.batch],
        "candidates": names,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/segflow``, else ``~/.cache/segflow``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "segflow"


def cache_files(path: Path) -> list[Path]:
    """Where a bundle's choices are cached: inside the bundle, then in the user cache."""
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return [path / CACHE_FILE, user_cache_dir() / "backends" / f"{digest}.json"]


def _load(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_cache(path: Path, key: str) -> dict[str, Any] | None:
    """The cached measurement for ``key``, if any file holds one."""
    for file in cache_files(path):
        entry = _load(file).get(key)
        if isinstance(entry, dict) and isinstance(entry.get("times"), dict):
            return entry
    return None


def write_cache(path: Path, key: str, entry: dict[str, Any]) -> Path | None:
    """Add ``entry`` atomically to the first writable cache file; None when none is."""
    from segflow._io import atomic_write_text

    for file in cache_files(path):
        data = {k: v for k, v in _load(file).items() if k != key}
        kept = dict(list(data.items())[-(CACHE_ENTRIES - 1) :])
        kept[key] = entry
        try:
            atomic_write_text(file, json.dumps(kept, indent=1))
        except (OSError, UsageError):
            continue
        return file
    log.warning("cannot cache the backend choice (%s not writable)", cache_files(path)[-1])
    return None
