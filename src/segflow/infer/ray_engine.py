"""Batch prediction on Ray Data: ``segflow predict ... --engine ray``.

Ray Data schedules the images over a pool of actors, each holding one :class:`Predictor` (the
bundle loaded once per actor, any backend), with back-pressure and retries; segflow adds what a
batch job needs around it:

* **the same outputs as the local engine** — each actor calls the same ``predict_path`` and
  ``write_prediction`` (temporary names, renamed; the class-id PNG last);
* **resume** — an image whose outputs all exist is skipped (``overwrite=True`` redoes it), and the
  temporary files of a killed writer are swept before the workers start;
* **failures recorded, not fatal** — a bad input's one-line error goes to ``failures.csv``;
  a killed actor is restarted by Ray and its image retried;
* ``summary.json`` — counts, failures, images/s, per-worker time — and a progress bar.

Without ``address`` Ray starts a local cluster sized to the CPUs this process may use (or reuses
the one already started in this process, as tests do); ``address`` may be ``auto`` or
``ray://HOST:PORT`` (checked to answer before Ray is asked to connect: Ray itself retries for
minutes).
"""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segflow.errors import SegflowError, UsageError, user_error
from segflow.infer.options import InferenceOptions


@dataclass(frozen=True)
class WriteSpec:
    """Which files are written per image (the predict flags)."""

    color: bool = True
    overlay: bool = True
    probs: bool = False
    geojson: bool = False


def expected_outputs(image: Path, out_dir: Path, spec: WriteSpec) -> list[Path]:
    """The files ``write_prediction`` (``predict_windowed`` for a large raster) writes.

    A GeoTIFF's extra ``_mask.tif`` is implied by its PNG, which is renamed after it.
    """
    from segflow.infer.windowed import large_raster, windowed_outputs

    if large_raster(image):
        return windowed_outputs(image, out_dir, spec.probs)
    stem = image.stem
    names = [f"{stem}.png"]
    names += [f"{stem}_color.png"] if spec.color else []
    names += [f"{stem}_overlay.jpg"] if spec.overlay else []
    names += [f"{stem}_probs.tif"] if spec.probs else []
    names += [f"{stem}.geojson"] if spec.geojson else []
    return [out_dir / n for n in names]


def is_done(image: Path, out_dir: Path, spec: WriteSpec) -> bool:
    """Every output of ``image`` exists (each was renamed into place only when complete)."""
    return all(p.is_file() for p in expected_outputs(image, out_dir, spec))


def one_line(exc: BaseException) -> str:
    """The message the CLI would print for ``exc`` (a user error), else its type and text."""
    error = exc if isinstance(exc, SegflowError) else user_error(exc)
    text = str(error) if error is not None else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


class PredictWorker:
    """A Ray Data actor: one Predictor, predicting and writing one image per row."""

    def __init__(self, options: str, bundles: list[str], out_dir: str, spec: WriteSpec) -> None:
        self.predictor = InferenceOptions.model_validate_json(options).predictor(bundles)
        self.out_dir, self.spec = Path(out_dir), spec
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def predict_one(self, path: Path) -> None:
        """Predict and write one image (the part a test may replace)."""
        from segflow.infer.outputs import write_prediction
        from segflow.infer.windowed import try_windowed

        extras = self.spec.color or self.spec.overlay
        if try_windowed(self.predictor, path, self.out_dir, probs=self.spec.probs, extras=extras):
            return
        pred = self.predictor.predict_path(path, probs=self.spec.probs)
        write_prediction(pred, self.out_dir, self.predictor.classes, color=self.spec.color,
                         overlay=self.spec.overlay, probs=self.spec.probs,
                         polygon_format="geojson" if self.spec.geojson else None)  # fmt: skip

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One row per image in, one row out: its error ('' when written), time and worker."""
        errors, seconds = [], []
        for path in batch["path"]:
            start = time.perf_counter()
            try:
                self.predict_one(Path(str(path)))
                errors.append("")
            except Exception as exc:  # a bad input is recorded, the run goes on
                errors.append(one_line(exc))
            seconds.append(time.perf_counter() - start)
        n = len(batch["path"])
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this actor's peak, MiB
        return {
            "path": np.asarray(batch["path"]),
            "error": np.asarray(errors, dtype=object),
            "seconds": np.asarray(seconds, dtype=np.float64),
            "worker": np.asarray([self.name] * n, dtype=object),
            "peak_rss_mb": np.asarray([rss] * n, dtype=np.float64),
        }


@dataclass
class BatchSummary:
    """What ``summary.json`` holds."""

    engine: str
    total: int
    predicted: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0
    workers: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)


def _address_parts(address: str) -> tuple[str, str]:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--address {address!r}: use auto, HOST:PORT or ray://HOST:PORT")
    return host, port


def _check_reachable(address: str) -> None:
    """``ray://HOST:PORT`` or ``HOST:PORT`` must accept a TCP connection within 5 s."""
    host, port = _address_parts(address)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise UsageError(
            f"--address {address!r}: no Ray cluster answers there ({exc.strerror or exc}); "
            "start one with `ray start --head` or leave --address out for a local cluster"
        ) from None


def _start_ray(address: str | None, workers: int) -> bool:
    """Connect or start Ray; True when this call started it (and must shut it down)."""
    try:
        import ray
    except ImportError:
        raise UsageError(
            "--engine ray needs Ray: pip install 'segflow[ray]' (or pip install 'ray[data]')"
        ) from None
    if ray.is_initialized():
        return False
    if address not in (None, "auto"):
        _check_reachable(address)
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address is None:
        kwargs["num_cpus"] = max(workers, len(os.sched_getaffinity(0)))
    else:
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise UsageError(f"--address {address!r}: cannot connect to Ray ({exc})") from None
    return True


def _plan_workers(workers: int | None, gpus_per_worker: float) -> tuple[int, float]:
    """(actors, CPUs per actor) from the cluster's resources."""
    import ray

    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    cpus = float(resources.get("CPU", 1.0))
    if workers is None:
        gpus = float(resources.get("GPU", 0.0))
        workers = int(gpus // gpus_per_worker) if gpus_per_worker > 0 else max(1, int(cpus) // 2)
        workers = max(1, workers)
    return workers, max(1.0, cpus // workers) if cpus >= workers else cpus / workers


def _run(
    todo: list[Path],
    bundles: Sequence[Path],
    out_dir: Path,
    options: InferenceOptions,
    spec: WriteSpec,
    *,
    workers: int | None,
    gpus_per_worker: float,
    progress: bool,
    worker_cls: type[PredictWorker],
) -> list[dict[str, Any]]:
    import ray

    from segflow._progress import ProgressBar

    actors, cpus = _plan_workers(workers, gpus_per_worker)
    actors = min(actors, len(todo))  # no idle actor (each loads the model)
    if options.threads is None:  # the ONNX runtimes would each take every CPU of the machine
        options = options.model_copy(update={"threads": max(1, int(cpus))})
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours below: images done / total
    context.print_on_execution_start = False
    ds = ray.data.from_items([{"path": str(p)} for p in todo], override_num_blocks=len(todo))
    results = ds.map_batches(
        worker_cls,
        fn_constructor_args=(
            options.model_dump_json(),
            [str(b) for b in bundles],
            str(out_dir),
            spec,
        ),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus,
        num_gpus=gpus_per_worker or None,
    )  # Ray Data's actor pools restart a killed actor and retry its image (max_restarts=-1)
    rows = []
    with ProgressBar(progress, f"predict (ray, {actors} workers)", len(todo)) as bar:
        for row in results.iter_rows():
            rows.append(row)
            bar.advance()
    return rows


def _write_reports(out_dir: Path, summary: BatchSummary) -> None:
    from segflow._io import atomic_write_text

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "error"])
    writer.writerows([f["path"], f["error"]] for f in summary.failures)
    atomic_write_text(out_dir / "failures.csv", buf.getvalue())
    payload = {k: v for k, v in summary.__dict__.items() if k != "failures"}
    atomic_write_text(out_dir / "summary.json", json.dumps(payload, indent=2) + "\n")


def predict_ray(
    bundles: Sequence[Path],
    files: Sequence[Path],
    out_dir: Path,
    options: InferenceOptions,
    spec: WriteSpec,
    *,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0.0,
    overwrite: bool = False,
    progress: bool = False,
    worker_cls: type[PredictWorker] = PredictWorker,
) -> BatchSummary:
    """Predict ``files`` into ``out_dir`` on Ray; writes ``failures.csv`` and ``summary.json``."""
    from segflow._tempfiles import sweep_stale_outputs

    if workers is not None and workers < 1:
        raise UsageError(f"--workers {workers}: must be >= 1")
    if gpus_per_worker < 0:
        raise UsageError(f"--gpus-per-worker {gpus_per_worker}: must be >= 0")
    if address not in (None, "auto"):
        _address_parts(address)
    sweep_stale_outputs(out_dir)
    todo = [f for f in files if overwrite or not is_done(f, out_dir, spec)]
    summary = BatchSummary(engine="ray", total=len(files), skipped=len(files) - len(todo))
    start = time.perf_counter()
    if todo:
        started = _start_ray(address, workers or 1)  # an unreachable cluster: nothing written
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            rows = _run(todo, bundles, out_dir, options, spec, workers=workers,
                        gpus_per_worker=gpus_per_worker, progress=progress,
                        worker_cls=worker_cls)  # fmt: skip
        finally:
            if started:
                import ray

                ray.shutdown()
            sweep_stale_outputs(out_dir)  # what a killed (then retried) worker left
        for row in rows:
            stats = summary.workers.setdefault(
                str(row["worker"]), {"images": 0, "seconds": 0.0, "peak_rss_mb": 0.0}
            )
            stats["images"] += 1
            stats["seconds"] = round(stats["seconds"] + float(row["seconds"]), 3)
            stats["peak_rss_mb"] = round(max(stats["peak_rss_mb"], float(row["peak_rss_mb"])), 1)
            if row["error"]:
                summary.failures.append({"path": str(row["path"]), "error": str(row["error"])})
        summary.failed = len(summary.failures)
        summary.predicted = len(rows) - summary.failed
    out_dir.mkdir(parents=True, exist_ok=True)
    summary.seconds = round(time.perf_counter() - start, 3)
    summary.images_per_second = (
        round(summary.predicted / summary.seconds, 3) if summary.seconds else 0.0
    )
    _write_reports(out_dir, summary)
    return summary
