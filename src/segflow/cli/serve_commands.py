"""Serving command: ``serve``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from segflow import _serve_defaults as defaults
from segflow.cli._common import cli_errors


@cli_errors
def serve(
    bundle: Annotated[Path, typer.Argument(help="Model bundle folder (NAME.segflow).")],
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0 for every interface).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9009,
    workers: Annotated[
        int, typer.Option(help="Worker processes, each with its own copy of the model.")
    ] = 1,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="SEGFLOW_API_KEY",
            help="Require this key in the X-API-Key header of /predict and /info "
            "(or set SEGFLOW_API_KEY).",
            show_default=False,
        ),
    ] = None,
    max_upload_mb: Annotated[
        float, typer.Option(help="Largest request body in MiB.")
    ] = defaults.MAX_UPLOAD_MB,
    max_pixels: Annotated[
        int, typer.Option(help="Largest image in pixels, checked before decoding.")
    ] = defaults.MAX_PIXELS,
    max_concurrency: Annotated[
        int, typer.Option(help="Predictions running at once per worker.")
    ] = defaults.MAX_CONCURRENCY,
    max_queue: Annotated[
        int, typer.Option(help="Predictions waiting per worker; beyond that 503 + Retry-After.")
    ] = defaults.MAX_QUEUE,
    timeout: Annotated[
        float, typer.Option(help="Seconds a request may wait and run before 503/504.")
    ] = defaults.REQUEST_TIMEOUT_S,
    cors: Annotated[
        list[str] | None,
        typer.Option(help="Allow browser calls from this origin (repeatable); off by default."),
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            envvar="SEGFLOW_BACKEND",
            help="auto (the fastest measured here, cached), torch, onnx or openvino "
            "(or set SEGFLOW_BACKEND).",
        ),
    ] = "auto",
    precision: Annotated[
        str,
        typer.Option(
            envvar="SEGFLOW_PRECISION",
            help="auto (bf16 where native and safe for the bundle), f32 or bf16 "
            "(or set SEGFLOW_PRECISION).",
        ),
    ] = "auto",
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads per worker (default: the CPUs shared between workers)."),
    ] = None,
) -> None:
    """Serve the model over HTTP: POST /predict, GET /info, a web page at /, docs at /docs."""
    import os

    from segflow.api import serve as run_serve

    if api_key is None and "SEGFLOW_API_KEY" in os.environ:  # click reads an empty value as unset
        api_key = os.environ["SEGFLOW_API_KEY"]
    serve_log = logging.getLogger("segflow.serve")
    if logging.getLogger("segflow").level <= logging.WARNING:
        serve_log.setLevel(logging.INFO)  # the "serving ... at URL" line, unless --quiet
    run_serve(
        bundle,
        host=host,
        port=port,
        workers=workers,
        api_key=api_key,
        max_upload_mb=max_upload_mb,
        max_pixels=max_pixels,
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        timeout=timeout,
        cors=cors or [],
        backend=backend,
        precision=precision,
        threads=threads,
        log_level="warning" if logging.getLogger("segflow").level >= logging.ERROR else "info",
    )


def register(app: typer.Typer) -> None:
    """Add the serving command to ``app``."""
    app.command(no_args_is_help=True)(serve)
