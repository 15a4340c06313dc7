"""Running the app with uvicorn: one process, or several workers started from an app factory.

With ``workers > 1`` uvicorn starts worker processes that each import the app anew; they find the
bundle and the settings in environment variables (:data:`ENV_BUNDLE`, :data:`ENV_BACKEND`,
:data:`ENV_SETTINGS`) and build their own predictor in :func:`app_from_env`.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from segflow.errors import UsageError
from segflow.serve.settings import ServeSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("segflow.serve")

ENV_BUNDLE = "SEGFLOW_SERVE_BUNDLE"
ENV_BACKEND = "SEGFLOW_SERVE_BACKEND"
ENV_THREADS = "SEGFLOW_SERVE_THREADS"
ENV_PRECISION = "SEGFLOW_SERVE_PRECISION"
ENV_SETTINGS = "SEGFLOW_SERVE_SETTINGS"


def build_app(
    bundle: str | os.PathLike[str],
    *,
    backend: str = "auto",
    settings: ServeSettings | None = None,
    threads: int | None = None,
    precision: str = "auto",
) -> FastAPI:
    """Load the bundle (``auto``: the fastest backend measured for it here) and wrap it in the app."""
    from segflow.infer.predictor import Predictor
    from segflow.serve.app import create_app

    predictor = Predictor.from_bundles(
        bundle, backend=backend, threads=threads, precision=precision
    )
    log.info("%s", predictor.describe_backends())
    return create_app(predictor, settings)


def app_from_env() -> FastAPI:
    """The uvicorn app factory of worker processes (``factory=True``)."""
    bundle = os.environ.get(ENV_BUNDLE)
    if not bundle:
        raise UsageError(f"{ENV_BUNDLE} is not set: start the server with `segflow serve BUNDLE`")
    raw_settings = os.environ.get(ENV_SETTINGS)
    settings = ServeSettings.model_validate_json(raw_settings) if raw_settings else None
    threads = os.environ.get(ENV_THREADS)
    return build_app(
        bundle,
        backend=os.environ.get(ENV_BACKEND, "auto"),
        settings=settings,
        threads=int(threads) if threads else None,
        precision=os.environ.get(ENV_PRECISION, "auto"),
    )


def _check_port_free(host: str, port: int) -> None:
    """Fail with one line before loading the model when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                "pick another --port or --host"
            ) from None


def run_server(
    bundle: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 9009,
    workers: int = 1,
    backend: str = "auto",
    settings: ServeSettings | None = None,
    log_level: str = "info",
    precision: str = "auto",
    threads: int | None = None,
) -> None:
    """Serve ``bundle`` over HTTP until interrupted (blocks).

    Raises:
        UsageError: bad port/workers/backend, or the address is in use.
        DataError: the bundle cannot be read.
    """
    import uvicorn

    from segflow.infer.backends import default_threads
    from segflow.infer.predictor import Predictor
    from segflow.models.bundle import read_bundle_meta

    if workers < 1:
        raise UsageError(f"--workers {workers}: must be at least 1")
    if not 0 < port < 65536:
        raise UsageError(f"--port {port}: must be in 1..65535")
    meta = read_bundle_meta(bundle)
    _check_port_free(host, port)
    share = threads or (None if workers == 1 else max(1, default_threads() // workers))
    # Measured (and cached) once here, so worker processes find the choice in the cache.
    predictor = Predictor.from_bundles(bundle, backend=backend, threads=share, precision=precision)
    chosen = predictor.describe_backends().removeprefix("backend: ")
    cfg = settings or ServeSettings()
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    log.info(
        "serving %s (%s) at %s: web page /, API docs /docs%s; backend %s",
        meta.name,
        meta.task,
        url,
        ", API key required" if cfg.api_key else "",
        chosen,
    )
    if workers == 1:
        from segflow.serve.app import create_app

        uvicorn.run(create_app(predictor, cfg), host=host, port=port, log_level=log_level)
        return
    del predictor
    # Each worker process builds its own predictor; share the CPU between their thread pools.
    os.environ[ENV_BUNDLE] = str(Path(bundle).resolve())
    os.environ[ENV_BACKEND] = backend
    os.environ[ENV_THREADS] = str(share)
    os.environ[ENV_PRECISION] = precision
    os.environ[ENV_SETTINGS] = cfg.model_dump_json()
    uvicorn.run(
        "segflow.serve.server:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
    )
