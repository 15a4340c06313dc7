"""Inference command: ``predict``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from segflow.cli._common import cli_errors, console, show_backend_choice


@cli_errors
def predict(
    bundle: Annotated[Path, typer.Argument(help="Model bundle folder (NAME.segflow).")],
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or glob patterns.")],
    out: Annotated[Path, typer.Option(help="Folder for the outputs.")],
    with_: Annotated[
        list[Path] | None, typer.Option("--with", help="More bundles for an ensemble (repeatable).")
    ] = None,
    combine: Annotated[
        str | None,
        typer.Option(
            help="Ensemble: 'mean' of probabilities or majority 'vote' (default: an ensemble "
            "bundle's rule, else mean)."
        ),
    ] = None,
    backend: Annotated[
        str,
        typer.Option(help="auto (the fastest measured here, cached), torch, onnx or openvino."),
    ] = "auto",
    precision: Annotated[
        str, typer.Option(help="auto (bf16 where native and safe for the bundle), f32 or bf16.")
    ] = "auto",
    threads: Annotated[
        int | None, typer.Option(help="CPU threads (default: the CPUs this process may use).")
    ] = None,
    device: Annotated[str, typer.Option(help="torch device: auto, cpu, cuda, cuda:1...")] = "auto",
    tile: Annotated[int | None, typer.Option(help="Tile size (default: the bundle's).")] = None,
    overlap: Annotated[
        float | None, typer.Option(help="Tile overlap share (default: the bundle's).")
    ] = None,
    batch: Annotated[int | None, typer.Option(help="Tiles per forward pass.")] = None,
    tta: Annotated[
        str | None, typer.Option(help="Test-time flips, e.g. h,v,hv ('none' to turn off).")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Binary threshold (default: the bundle's).")
    ] = None,
    min_size: Annotated[
        list[str] | None,
        typer.Option(help="Drop components under N px: N, or CLASS=N (repeatable)."),
    ] = None,
    fill_holes: Annotated[
        list[str] | None, typer.Option(help="Fill holes of these classes ('all' or names/ids).")
    ] = None,
    keep_largest: Annotated[
        list[str] | None, typer.Option(help="Keep only the largest component of these classes.")
    ] = None,
    probs: Annotated[
        bool, typer.Option(help="Also write class probabilities (uint8 TIFF).")
    ] = False,
    polygons: Annotated[
        str | None, typer.Option(help="Also write polygons: geojson or coco.")
    ] = None,
    color: Annotated[bool, typer.Option(help="Write a colour PNG per image.")] = True,
    overlay: Annotated[bool, typer.Option(help="Write an overlay JPEG per image.")] = True,
    engine: Annotated[
        str, typer.Option(help="local (this process) or ray (Ray Data actors, resumable).")
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="Ray: auto, HOST:PORT or ray://HOST:PORT (default: a local cluster)."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Ray: actors, each holding the model (default: CPUs/2).")
    ] = None,
    gpus_per_worker: Annotated[float, typer.Option(help="Ray: GPUs per actor.")] = 0.0,
    overwrite: Annotated[
        bool, typer.Option(help="Ray: redo images whose outputs exist (default: skip them).")
    ] = False,
) -> None:
    """Predict masks for images of any size (tiles, TTA, post-processing, ensembles)."""
    from segflow.api import predict as run_predict

    show_backend_choice()
    written = run_predict(
        [bundle, *(with_ or [])],
        inputs,
        out=out,
        combine=combine,
        backend=backend,
        device=device,
        tile=tile,
        overlap=overlap,
        batch=batch,
        tta=tta,
        threshold=threshold,
        min_size=min_size or [],
        fill_holes=fill_holes or [],
        keep_largest=keep_largest or [],
        probs=probs,
        polygons=polygons,
        color=color,
        overlay=overlay,
        progress=True,
        precision=precision,
        threads=threads,
        engine=engine,
        address=address,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        overwrite=overwrite,
    )
    if engine == "ray":
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        console().print(
            f"{summary['predicted']} predicted, {summary['skipped']} skipped (done before), "
            f"{summary['failed']} failed (failures.csv) -> {out}"
        )
        return
    console().print(f"{len(written)} image(s) predicted -> {out}")


def register(app: typer.Typer) -> None:
    """Add the inference commands to ``app``."""
    app.command(no_args_is_help=True)(predict)
