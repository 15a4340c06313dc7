"""The Python API: the CLI's verbs as functions, with the CLI's parameter names."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segflow import _serve_defaults

if TYPE_CHECKING:
    from segflow.data.formats.base import ImportReport
    from segflow.data.qa import CheckResult
    from segflow.data.splits import SplitResult
    from segflow.evaluate.evaluator import EvalResult
    from segflow.evaluate.tuning import TuneResult
    from segflow.models.bundle import ExportInfo
    from segflow.review.runner import ProbabilitySource, ReviewResult
    from segflow.train.planner import Plan

PathLike = str | os.PathLike[str]


def import_dataset(
    format: str, src: PathLike, out: PathLike, *, progress: bool = False, **options: Any
) -> ImportReport:
    """``segflow import FORMAT SRC OUT``: options are the command's flags (``classes=``, ``strict=``...).

    Returns the import report (classes, per-class pixel counts, warnings). A bad option raises a
    UsageError naming it as the command's flag (``--line-width: ...``), as ``segflow import`` does.
    """
    from pydantic import ValidationError

    from segflow.data.formats.base import ImportOptions, run_import
    from segflow.errors import UsageError

    try:
        opts = ImportOptions.model_validate(options)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "-".join(str(p) for p in first["loc"]).replace("_", "-")
        raise UsageError(f"--{flag}: {first['msg']}") from None
    return run_import(format, src, out, opts, progress=progress)


def check(
    dataset: PathLike,
    *,
    report: PathLike | None = None,
    json_out: PathLike | None = None,
    exclude: PathLike | None = None,
    html: bool = True,
    workers: int | None = None,
    progress: bool = False,
) -> CheckResult:
    """``segflow check DATASET``: findings (``.report``), written files (``.paths``).

    Writes ``qa.json``, ``fingerprint.json`` and (with ``html``) the HTML report, by default
    ``DATASET/qa_report.html``.
    """
    from segflow.data.dataset import CanonicalDataset
    from segflow.data.qa import check_output_file, scan_dataset
    from segflow.report.qa_report import write_qa_report

    html_out = Path(report) if report else None
    check_output_file(html_out)  # before any work or output
    result = scan_dataset(
        dataset,
        json_out=Path(json_out) if json_out else None,
        exclude=Path(exclude) if exclude else None,
        workers=workers,
        progress=progress,
    )
    if html:
        folder = CanonicalDataset(dataset)
        result.paths["html"] = html_out or folder.root / "qa_report.html"
        write_qa_report(folder, result, result.paths["html"])
    return result


def split(
    dataset: PathLike,
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
    """``segflow split DATASET``: writes ``splits.csv`` and returns the per-split class presence."""
    from segflow.data.splits import make_splits

    return make_splits(
        dataset,
        val=val,
        test=test,
        stratify=stratify,
        group_by=group_by,
        folds=folds,
        seed=seed,
        workers=workers,
        progress=progress,
    )


def export_dataset(
    format: str,
    dataset: PathLike,
    out: PathLike,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """``segflow export FORMAT DATASET OUT``: write a dataset in another format (e.g. ``coco``)."""
    from segflow.data.dataset import CanonicalDataset
    from segflow.data.formats import EXPORTERS

    exporter = EXPORTERS.get(format)
    return exporter(CanonicalDataset(dataset), Path(out), overwrite=overwrite, progress=progress)


def export_model(
    bundle: PathLike,
    *,
    format: str,
    opset: int | None = None,
    exporter: str = "auto",
    tolerance: float = 1e-4,
) -> ExportInfo | list[ExportInfo]:
    """``segflow export BUNDLE --format onnx|torchscript``: write ``model.onnx`` / ``model.ts``.

    An ensemble bundle exports each member (one file per member, in its own folder, listed in
    its ``bundle.yaml``) and returns their entries in the manifest's order.

    The file goes inside the bundle only after it matched the bundle's PyTorch network within
    ``tolerance`` (max |logit difference|) at several input sizes; ``bundle.yaml`` then lists it
    with its sha256 and the parity figures. ``opset`` and ``exporter`` (``auto``, ``legacy``,
    ``dynamo``) apply to ONNX only.

    Returns:
        The export's entry in ``bundle.yaml`` (file, exporter, opset, parity...).
    """
    from segflow.errors import UsageError
    from segflow.export.registry import MODEL_EXPORTERS

    if not tolerance >= 0:  # also NaN
        raise UsageError(f"--tolerance {tolerance}: must be >= 0 (max |logit difference|)")
    run = MODEL_EXPORTERS.get(format)  # unknown: UsageError listing the formats
    from segflow.models.ensemble import is_ensemble, read_ensemble

    if is_ensemble(bundle):
        members = read_ensemble(bundle).members  # the whole ensemble checked first
        return [run(m, opset=opset, exporter=exporter, tolerance=tolerance) for m in members]
    return run(bundle, opset=opset, exporter=exporter, tolerance=tolerance)


def predict(
    bundles: PathLike | Sequence[PathLike],
    inputs: PathLike | Sequence[PathLike],
    *,
    out: PathLike,
    combine: str | None = None,
    backend: str = "auto",
    device: str = "auto",
    tile: int | None = None,
    overlap: float | None = None,
    batch: int | None = None,
    tta: str | Sequence[str] | None = None,
    threshold: float | None = None,
    min_size: Sequence[str] = (),
    fill_holes: Sequence[str] = (),
    keep_largest: Sequence[str] = (),
    probs: bool = False,
    polygons: str | None = None,
    color: bool = True,
    overlay: bool = True,
    progress: bool = False,
    precision: str = "auto",
    threads: int | None = None,
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0.0,
    overwrite: bool = False,
) -> list[dict[str, Path]]:
    """``segflow predict BUNDLE INPUT... --out DIR``: writes masks and returns the files per image.

    ``engine="ray"`` spreads the images over Ray actors (``address``: ``auto``, ``HOST:PORT`` or
    ``ray://HOST:PORT``; none: a local cluster; ``workers`` actors with ``gpus_per_worker`` GPUs
    each), skips images whose outputs exist unless ``overwrite``, records bad inputs in
    ``failures.csv`` instead of stopping, and writes ``summary.json``
    (:mod:`segflow.infer.ray_engine`). Inputs may also be manifests (CSV/Parquet, ``path`` column).

    Post-processing flags add to the bundle's own settings: ``min_size`` takes ``"N"`` (every
    foreground class) or ``"CLASS=N"``; ``fill_holes``/``keep_largest`` take class names, ids or
    ``"all"``. ``tta`` is ``"h,v,hv"``-style (``"none"`` turns the bundle's TTA off).
    ``backend`` is ``auto`` (the fastest measured here, cached), ``torch``, ``onnx`` or
    ``openvino``; ``precision`` ``auto``, ``f32`` or ``bf16``; the choice and its reason are
    logged on ``segflow.infer`` (the CLI prints them).
    """
    from segflow.errors import UsageError
    from segflow.infer.options import InferenceOptions
    from segflow.infer.predictor import expand_inputs
    from segflow.models.bundle import read_bundle_meta

    paths = (
        [Path(bundles)] if isinstance(bundles, str | os.PathLike) else [Path(b) for b in bundles]
    )
    if polygons not in (None, "geojson", "coco"):
        raise UsageError(f"--polygons {polygons!r}: use geojson or coco")
    out_dir = Path(out)
    files = expand_inputs(inputs)  # inputs whose outputs would collide refused here
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: --out is a file, not a folder")
    _check_engine(engine, address, workers, gpus_per_worker, overwrite, polygons)
    if polygons is not None:
        _refuse_polygons_of_large_rasters(files)
    options = InferenceOptions.from_flags(
        read_bundle_meta(paths[0]),
        backend=backend,
        precision=precision,
        device=device,
        threads=threads,
        tile=tile,
        overlap=overlap,
        batch=batch,
        tta=tta,
        threshold=threshold,
        min_size=min_size,
        fill_holes=fill_holes,
        keep_largest=keep_largest,
        combine=combine,
    )
    if engine == "ray":
        from segflow.infer.ray_engine import WriteSpec, expected_outputs, predict_ray

        spec = WriteSpec(color=color, overlay=overlay, probs=probs, geojson=polygons == "geojson")
        summary = predict_ray(paths, files, out_dir, options, spec, address=address,
                              workers=workers, gpus_per_worker=gpus_per_worker,
                              overwrite=overwrite, progress=progress)  # fmt: skip
        failed = {f["path"] for f in summary.failures}
        return [
            dict(zip(["mask"], expected_outputs(f, out_dir, spec), strict=False))
            for f in files
            if str(f) not in failed
        ]
    predictor = options.predictor(paths)
    logging.getLogger("segflow.infer.backend").info("%s", predictor.describe_backends())
    return _predict_local(predictor, files, out_dir, color=color, overlay=overlay, probs=probs,
                          polygons=polygons, progress=progress)  # fmt: skip


def _refuse_polygons_of_large_rasters(files: Sequence[Path]) -> None:
    from segflow.errors import UsageError
    from segflow.infer.windowed import large_raster

    for f in files:
        if large_raster(f):  # refused before any work, not skipped
            raise UsageError(
                f"{f}: too large to hold whole (predicted window by window): --polygons "
                "needs the whole label image; polygonize its _mask.tif instead "
                "(e.g. gdal_polygonize.py or rasterio.features.shapes)"
            )


def _predict_local(
    predictor: Any,
    files: Sequence[Path],
    out_dir: Path,
    *,
    color: bool,
    overlay: bool,
    probs: bool,
    polygons: str | None,
    progress: bool,
) -> list[dict[str, Path]]:
    """The local engine: each image predicted and written in turn (rasters window by window)."""
    from segflow._progress import ProgressBar
    from segflow.infer.outputs import write_coco, write_prediction
    from segflow.infer.windowed import try_windowed

    written = []
    kept = []
    with ProgressBar(progress, "predict", len(files)) as bar:
        if progress:  # a large image takes minutes: show its tiles too
            predictor.on_tiles = lambda done, total: bar.detail("tiles", done, total)
        for path in files:
            big = try_windowed(predictor, path, out_dir, probs=probs, extras=color or overlay)
            if big is not None:  # a raster larger than memory: windows in, windows out
                written.append(big)
                bar.advance()
                continue
            pred = predictor.predict_path(path, probs=probs)
            written.append(
                write_prediction(
                    pred,
                    out_dir,
                    predictor.classes,
                    color=color,
                    overlay=overlay,
                    probs=probs,
                    polygon_format="geojson" if polygons == "geojson" else None,
                )
            )
            if polygons == "coco":
                pred.image, pred.probs = None, None
                kept.append(pred)
            bar.advance()
    if polygons == "coco":
        write_coco(kept, out_dir / "predictions_coco.json", predictor.classes)
    return written


def _check_engine(
    engine: str,
    address: str | None,
    workers: int | None,
    gpus_per_worker: float,
    overwrite: bool,
    polygons: str | None,
) -> None:
    """The engine flags, before any work: ray-only flags are refused with the local engine."""
    from segflow.errors import UsageError

    if engine not in ("local", "ray"):
        raise UsageError(f"--engine {engine!r}: use local or ray")
    if engine == "local":
        given = [name for name, value in (("--address", address), ("--workers", workers),
                 ("--gpus-per-worker", gpus_per_worker or None),
                 ("--overwrite", overwrite or None)) if value is not None]  # fmt: skip
        if given:
            raise UsageError(f"{given[0]} is for --engine ray (the local engine always writes)")
        return
    if polygons == "coco":
        raise UsageError("--polygons coco collects every image in one file: use the local "
                         "engine, or --polygons geojson with --engine ray")  # fmt: skip
    if workers is not None and workers < 1:
        raise UsageError(f"--workers {workers}: must be >= 1")
    if gpus_per_worker < 0:
        raise UsageError(f"--gpus-per-worker {gpus_per_worker}: must be >= 0")


def evaluate(
    bundle: PathLike | Sequence[PathLike],
    dataset: PathLike,
    *,
    split: str | None = "test",
    out: PathLike | None = None,
    roi: PathLike | None = None,
    backend: str = "auto",
    device: str = "auto",
    tta: str | Sequence[str] | None = None,
    worst_k: int = 8,
    progress: bool = False,
    precision: str = "auto",
    threads: int | None = None,
    tile: int | None = None,
    overlap: float | None = None,
    batch: int | None = None,
    threshold: float | None = None,
    min_size: Sequence[str] = (),
    fill_holes: Sequence[str] = (),
    keep_largest: Sequence[str] = (),
    combine: str | None = None,
) -> EvalResult:
    """``segflow eval BUNDLE DATASET``: a list of bundles is an ensemble (``--with``).

    The inference flags are those of :func:`predict`, parsed by the same code; left unset, eval
    applies what the bundle ships (its TTA, threshold and post-processing), so it scores exactly
    what ``predict`` writes. ``metrics.json`` says which settings were applied (``settings``).

    Returns the metrics (``.metrics``, as in ``metrics.json``), the per-image rows, the output
    folder and the report path. See :func:`segflow.evaluate.evaluator.evaluate`.
    """
    from segflow.evaluate.evaluator import evaluate as run_evaluate

    return run_evaluate(
        bundle,
        dataset,
        split=split,
        out=out,
        roi=roi,
        backend=backend,
        device=device,
        tta=tta,
        worst_k=worst_k,
        progress=progress,
        precision=precision,
        threads=threads,
        tile=tile,
        overlap=overlap,
        batch=batch,
        threshold=threshold,
        min_size=min_size,
        fill_holes=fill_holes,
        keep_largest=keep_largest,
        combine=combine,
    )


def tune(
    bundle: PathLike,
    dataset: PathLike,
    *,
    split: str = "val",
    out: PathLike | None = None,
    in_place: bool = False,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    try_tta: bool = True,
    margin: float = 0.002,
    progress: bool = False,
) -> TuneResult:
    """``segflow tune BUNDLE DATASET``: choose threshold, TTA and post-processing on ``split``.

    Writes ``NAME.tuned.segflow`` beside the bundle (or ``out``; ``in_place`` updates it),
    atomically, with the score before and after each step under ``tuning:`` in ``bundle.yaml``.
    A step is kept only when it raises the bundle's monitor metric by more than ``margin``
    (TTA: by more than ``margin`` x its time ratio). See :mod:`segflow.evaluate.tuning`.
    """
    from segflow.evaluate.tuning import tune as run_tune

    return run_tune(
        bundle,
        dataset,
        split=split,
        out=out,
        in_place=in_place,
        backend=backend,
        device=device,
        precision=precision,
        threads=threads,
        try_tta=try_tta,
        margin=margin,
        progress=progress,
    )


def serve(
    bundle: PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 9009,
    workers: int = 1,
    api_key: str | None = None,
    max_upload_mb: float = _serve_defaults.MAX_UPLOAD_MB,
    max_pixels: int = _serve_defaults.MAX_PIXELS,
    max_concurrency: int = _serve_defaults.MAX_CONCURRENCY,
    max_queue: int = _serve_defaults.MAX_QUEUE,
    timeout: float = _serve_defaults.REQUEST_TIMEOUT_S,
    cors: Sequence[str] = (),
    backend: str = "auto",
    log_level: str = "info",
    precision: str = "auto",
    threads: int | None = None,
) -> None:
    """``segflow serve BUNDLE``: the HTTP API and web page over the bundle, until interrupted.

    ``backend="auto"`` runs the fastest backend measured for the bundle here (``precision`` and
    ``threads`` as for :func:`predict`). Requests
    over ``max_upload_mb`` or ``max_pixels`` are refused before decoding; ``max_concurrency``
    predictions run at once and ``max_queue`` more wait, the rest get 503 with ``Retry-After``;
    ``timeout`` (seconds) bounds queueing plus prediction (a prediction past it stops between
    batches of tiles). With ``api_key`` set, ``/predict``, ``/info`` and the API docs need it in
    the ``X-API-Key`` header; an empty key raises UsageError rather than serving openly.
    ``cors`` lists the browser origins allowed to call the API (none by default). See
    :func:`segflow.serve.create_app` to embed the app in your own server.
    """
    from pydantic import ValidationError

    from segflow.errors import UsageError
    from segflow.serve.server import run_server
    from segflow.serve.settings import ServeSettings

    flags = {
        "max_upload_bytes": "max_upload_mb",
        "request_timeout_s": "timeout",
        "cors_origins": "cors",
    }
    if api_key is not None and not api_key.strip():
        raise UsageError(
            "--api-key is empty (or SEGFLOW_API_KEY is set to nothing): that would serve "
            "without a key; give a key, or leave both unset to serve openly on purpose"
        )
    try:
        settings = ServeSettings(
            max_upload_bytes=round(max_upload_mb * 2**20),
            max_pixels=max_pixels,
            request_timeout_s=timeout,
            max_concurrency=max_concurrency,
            max_queue=max_queue,
            api_key=api_key,
            cors_origins=list(cors),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "settings"
        flag = flags.get(field, field).replace("_", "-")
        raise UsageError(f"--{flag}: {first['msg']}") from None
    run_server(
        bundle,
        host=host,
        port=port,
        workers=workers,
        backend=backend,
        settings=settings,
        log_level=log_level,
        precision=precision,
        threads=threads,
    )


def plan(
    dataset: PathLike,
    *,
    budget: str | float = "10m",
    device: str = "auto",
    out: PathLike | None = None,
    overrides: Sequence[str] = (),
    timing: str = "measure",
    overwrite: bool = False,
    progress: bool = False,
) -> Plan:
    """``segflow plan DATASET``: a training config fitted to the dataset, device and time budget.

    ``budget`` is ``"90s"``, ``"10m"``, ``"1h30m"``... (or seconds); ``device`` is ``auto``,
    ``cpu`` or ``cuda``; ``overrides`` are ``KEY=VALUE`` settings the plan keeps and plans around;
    ``timing`` is ``measure`` (time the network here) or ``table``. With ``out``, the commented
    config is written there (atomically; an existing file needs ``overwrite``).

    Returns:
        The plan: ``.decisions`` (each rule's settings and reason), ``.settings`` (dotted keys),
        ``.config()`` (the validated SegflowConfig), ``.to_yaml()``.
    """
    from segflow.errors import UsageError
    from segflow.train.planner import plan_dataset

    if out is not None and Path(out).exists() and not overwrite:
        raise UsageError(f"{out}: already exists; pass --overwrite or choose another --out")
    if timing not in ("measure", "table"):
        raise UsageError(f"--timing {timing!r}: use measure or table")
    result = plan_dataset(
        dataset,
        budget=budget,
        device=device,
        overrides=overrides,
        timing="table" if timing == "table" else "measure",
        progress=progress,
    )
    if out is not None:
        result.write(out)
    return result


def review(
    dataset: PathLike,
    bundles: Sequence[PathLike] = (),
    *,
    out: PathLike | None = None,
    top: int = 20,
    include_train: bool = False,
    unlabeled: PathLike | None = None,
    temperature: float = 0.1,
    overwrite: bool = False,
    backend: str = "auto",
    device: str = "auto",
    source: ProbabilitySource | None = None,
    progress: bool = False,
    from_run: PathLike | None = None,
) -> ReviewResult:
    """``segflow review DATASET --bundle B``: rank labelled images by label quality, worst first.

    Writes ``review.csv``, ``review.html`` and ``stems.txt`` into ``out`` (``label_next.*`` with
    ``unlabeled``); ``source`` replaces the bundles' probabilities; ``from_run`` takes them from
    a ``train --folds K`` run's out-of-fold maps. See
    :func:`segflow.review.runner.review`. (Not re-exported as ``segflow.review``: that name is
    the ``segflow.review`` package.)
    """
    from segflow.review.runner import review as run_review

    return run_review(
        dataset,
        bundles,
        out=out,
        top=top,
        include_train=include_train,
        unlabeled=unlabeled,
        temperature=temperature,
        overwrite=overwrite,
        backend=backend,
        device=device,
        source=source,
        progress=progress,
        from_run=from_run,
    )
