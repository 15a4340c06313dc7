"""The HTTP API over a Predictor: ``create_app(predictor) -> FastAPI``.

Routes: ``POST /predict`` (multipart field ``image`` -> class-id PNG / WebP, overlay JPEG or a
JSON summary with polygons), ``GET /info``, ``GET /health``, the web page at ``/`` (files in
``static/``), and the OpenAPI docs at ``/docs`` and ``/openapi.json``.

The predictor is injected, so tests can pass a fake: the app uses ``predict_array``,
``classes``, ``task`` and ``backend_name``, and reads ``members[i].meta`` / ``tile`` /
``overlap`` / ``tta``, ``threshold`` and ``post`` where present. Every error is JSON
``{"detail": "one line"}``: 401 key, 413 body or image too large, 415 not an image, 422 bad
parameters or a damaged image, 503 (with ``Retry-After``) when saturated, 504 too slow.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at run time,
# and some of them (class-name patterns) are built from the served model inside create_app.

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from fastapi import FastAPI, File, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import StringConstraints
from starlette.exceptions import HTTPException

from segflow._version import __version__
from segflow.errors import SegflowError
from segflow.serve.budget import PredictionStoppedError, check_output, check_work, with_deadline
from segflow.serve.decode import ACCEPTED, ImageTooLargeError, UnsupportedImageError, decode_upload
from segflow.serve.gate import Gate, GateTimeoutError, SaturatedError
from segflow.serve.guard import API_KEY_HEADER, Guard, key_matches, unauthorized_message
from segflow.serve.options import PredictOptions, with_options
from segflow.serve.render import (
    FORMATS,
    MEDIA_TYPES,
    Format,
    encode_mask,
    encode_overlay,
    summary,
)
from segflow.serve.schemas import (
    ClassSpec,
    ErrorBody,
    Health,
    Info,
    InputSpec,
    Limits,
    ModelSpec,
    PredictSummary,
)
from segflow.serve.served import ModelFacts, ServedPredictor, model_facts
from segflow.serve.settings import ServeSettings

log = logging.getLogger("segflow.serve")

STATIC_DIR = Path(__file__).parent / "static"
INPUT_FORMATS = ["png", "jpeg", "tiff", "bmp", "webp"]
PROTECTED = ("/predict", "/info")
#: With a key, the API docs need it too: the schema lists the class names.
DOCS = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
TTA_PATTERN = r"^(?:none|(?:h|v|hv)(?:,(?:h|v|hv))*)$"

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "the body is not valid multipart/form-data"),
        (401, "missing or wrong X-API-Key (only when the server has a key)"),
        (413, "request body or image too large"),
        (415, "not a PNG, JPEG, TIFF, BMP or WebP image"),
        (422, "bad query parameter, missing field 'image', or a damaged image"),
        (503, "server saturated: retry after the Retry-After header's seconds"),
        (504, "the prediction took longer than the request timeout"),
    )
}
_HOW_TO_SEND = (
    "send the file as the multipart form field 'image', "
    "e.g. curl -F image=@photo.png http://HOST:PORT/predict"
)
_IMAGE_TYPES = "image/png, image/jpeg, image/tiff, image/bmp, image/webp"
_BINARY = {"schema": {"type": "string", "format": "binary"}}


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": " ".join(detail.split())}, status_code=status, headers=headers)


def _client_name(filename: str | None) -> str:
    """The client's file name, made safe for one-line messages (base name, printable, short)."""
    base = re.split(r"[\\/]", filename or "")[-1]
    clean = "".join(ch for ch in base if ch.isprintable()).strip()
    return clean[:80] or "upload"


def _download_name(name: str, fmt: Format) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name.rsplit(".", 1)[0])[:64] or "image"
    ext = {"png": "png", "webp": "webp", "json": "json", "overlay": "jpg"}[fmt]
    suffix = "_overlay" if fmt == "overlay" else "" if fmt == "json" else "_mask"
    return f"{stem}{suffix}.{ext}"


def _validation_message(exc: RequestValidationError, hints: dict[str, str]) -> str:
    """One line from FastAPI's list of validation errors (the first, plus a count).

    ``hints`` replaces the regex in pattern errors with what the parameter takes.
    """
    errors = list(exc.errors())
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ())]
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    if loc[:2] == ["body", "image"] or loc == ["body"]:
        if first.get("type") == "missing" or loc == ["body"]:
            return f"no image: {_HOW_TO_SEND}{more}"
        return "the multipart field 'image' must be a file upload (curl -F image=@photo.png)"
    if loc[:1] == ["query"] and len(loc) > 1:
        if first.get("type") == "string_pattern_mismatch" and loc[1] in hints:
            return f"query parameter '{loc[1]}': {first.get('input')!r}: {hints[loc[1]]}{more}"
        return f"query parameter '{loc[1]}': {first.get('msg', 'invalid')}{more}"
    return f"{'.'.join(loc)}: {first.get('msg', 'invalid')}{more}"


def _regex_escape(text: str) -> str:
    """Escape regex metacharacters the same way for Python and Rust (pydantic) regexes."""
    return "".join("\\" + ch if ch in r"\.^$|?*+()[]{}" else ch for ch in text)


class _QueryPatterns(NamedTuple):
    """Exact patterns of the class-list query parameters (validated and documented)."""

    class_list: str
    min_size: str

    @classmethod
    def for_classes(cls, names: list[str]) -> "_QueryPatterns":
        keys = "|".join(["all", *(_regex_escape(n) for n in names), *map(str, range(len(names)))])
        one = f"(?:{keys})"
        size = f"(?:{one}=)?[0-9]{{1,9}}"
        return cls(class_list=f"^{one}(?:,{one})*$", min_size=f"^{size}(?:,{size})*$")


def _info(predictor: ServedPredictor, facts: ModelFacts, settings: ServeSettings) -> Info:
    return Info(
        name=facts.name or "segflow",
        version=__version__,
        task=str(predictor.task),
        classes=[ClassSpec(id=c.id, name=c.name, color=list(c.color)) for c in predictor.classes],
        input=InputSpec(
            channels=facts.in_channels,
            dtype=facts.input_dtype,
            formats=INPUT_FORMATS,
            tile_size=facts.tile,
            overlap=facts.overlap,
            tta=facts.tta,
            threshold=facts.threshold,
            postprocess=facts.postprocess,
        ),
        model=ModelSpec(
            arch=facts.arch,
            encoder=facts.encoder,
            bundles=facts.bundles,
            created_at=facts.created_at,
            metrics=facts.metrics,
        ),
        backend=facts.backend,
        output_formats=list(FORMATS),
        limits=Limits(
            max_upload_bytes=settings.max_upload_bytes,
            max_pixels=settings.max_pixels,
            max_concurrency=settings.max_concurrency,
            max_queue=settings.max_queue,
            request_timeout_s=settings.request_timeout_s,
            max_work_pixels=settings.work_budget,
            max_tiles=settings.max_tiles,
        ),
    )


def _install_error_handlers(app: FastAPI, hints: dict[str, str]) -> None:
    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        detail = str(exc.detail)
        if exc.status_code == 400:  # Starlette / FastAPI could not parse the form
            detail = f"malformed multipart body ({detail.rstrip('.')}); {_HOW_TO_SEND}"
        return _error(exc.status_code, detail, dict(exc.headers or {}))

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _error(422, _validation_message(exc, hints))

    async def segflow_error(_: Request, exc: Exception) -> JSONResponse:
        status = (
            413
            if isinstance(exc, ImageTooLargeError)
            else 415
            if isinstance(exc, UnsupportedImageError)
            else 422
        )
        return _error(status, str(exc))

    async def server_error(_: Request, exc: Exception) -> JSONResponse:
        log.error("internal error", exc_info=exc)
        return _error(500, f"internal server error ({type(exc).__name__}); see the server log")

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(SegflowError, segflow_error)
    app.add_exception_handler(Exception, server_error)


def create_app(predictor: ServedPredictor, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app serving ``predictor`` (a :class:`segflow.infer.predictor.Predictor`).

    Built in named steps: the app and its error handlers, the middleware (body limit, API key,
    CORS), the key check, then the routes (service routes and ``/predict``).

    Args:
        predictor: anything with ``predict_array(image, stem=...) -> .labels``, ``classes``
            and ``task`` (:class:`segflow.serve.served.ServedPredictor`); ``/info`` shows what
            else it has (:func:`segflow.serve.served.model_facts`), and per-request options need
            the Predictor's attributes (see :func:`segflow.serve.options.with_options`).
        settings: limits, API key and CORS; the defaults of :class:`ServeSettings` otherwise.
    """
    cfg = settings or ServeSettings()
    gate = Gate(cfg.max_concurrency, cfg.max_queue)
    app = _configure_app(model_facts(predictor), gate, [c.name for c in predictor.classes])
    _configure_middleware(app, cfg)
    guarded = _key_dependencies(cfg)
    _add_service_routes(app, predictor, cfg, guarded)
    _add_predict_route(app, predictor, cfg, gate, guarded)
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    return app


def _configure_app(facts: ModelFacts, gate: Gate, names: list[str]) -> FastAPI:
    """The FastAPI app (title, docs text, the gate closed at shutdown) and its error handlers."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        gate.close()

    app = FastAPI(
        title=f"segflow: {facts.name or 'model'}",
        version=__version__,
        description="Semantic segmentation over HTTP. `POST /predict` with the multipart field "
        "`image` returns the class-id mask (`curl -F image=@photo.png "
        "http://127.0.0.1:9009/predict -o mask.png`); `GET /info` lists the classes.",
        lifespan=lifespan,
    )
    app.state.gate = gate
    listed = ", ".join(names)
    class_hint = f"use class names or ids ({listed}) or all, comma-separated"
    _install_error_handlers(
        app,
        {
            "tta": "use h, v, hv (comma-separated) or none",
            "fill_holes": class_hint,
            "keep_largest": class_hint,
            "min_size": f"use PIXELS or CLASS=PIXELS (up to 9 digits; CLASS: {listed} or all)",
        },
    )
    return app


def _configure_middleware(app: FastAPI, cfg: ServeSettings) -> None:
    """The body-size and API-key guard, and CORS when origins are allowed."""
    app.add_middleware(
        Guard,
        max_body=cfg.max_upload_bytes,
        api_key=cfg.api_key,
        protected=PROTECTED + DOCS,
    )
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=cfg.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=[API_KEY_HEADER, "Content-Type"],
            expose_headers=["Content-Disposition", "Retry-After"],
        )


def _key_dependencies(cfg: ServeSettings) -> list[Any]:
    """The route dependencies that check the API key (none when the server has no key)."""
    key_header = APIKeyHeader(
        name=API_KEY_HEADER, auto_error=False, description="the server's API key"
    )
    expected_key = cfg.api_key

    def check_key(key: Annotated[str | None, Security(key_header)] = None) -> None:
        # The Guard middleware already refused keyless requests before reading their body;
        # this dependency documents the scheme in OpenAPI and checks again.
        if expected_key is not None and not key_matches(key, expected_key):
            raise HTTPException(401, unauthorized_message(), {"WWW-Authenticate": API_KEY_HEADER})

    return [Security(check_key)] if expected_key is not None else []


def _add_service_routes(
    app: FastAPI, predictor: ServedPredictor, cfg: ServeSettings, guarded: list[Any]
) -> None:
    """``/health``, ``/info`` and the web page at ``/``."""

    @app.get("/health", response_model=Health, tags=["service"])
    async def health() -> Health:
        """Liveness: 200 while the server runs (never needs the API key)."""
        return Health()

    @app.get("/info", response_model=Info, responses=_ERRORS, dependencies=guarded, tags=["model"])
    async def info() -> Info:
        """The model: name, classes and colours, input spec, defaults, backend and limits."""
        return _info(predictor, model_facts(predictor), cfg)

    @app.get("/", include_in_schema=False, response_model=None)
    async def page() -> Response:
        index = STATIC_DIR / "index.html"
        if not index.is_file():
            return _error(404, "the web page is not installed; the API is at /docs")
        return FileResponse(index, media_type="text/html")


# Long: the route's signature is its OpenAPI schema (one declared Query per option); the work
# itself is in _job and _gated.
def _add_predict_route(
    app: FastAPI, predictor: ServedPredictor, cfg: ServeSettings, gate: Gate, guarded: list[Any]
) -> None:
    """``POST /predict``: options validated by FastAPI, the work queued through the gate."""
    classes = list(predictor.classes)
    binary = predictor.task == "binary"
    patterns = _QueryPatterns.for_classes([c.name for c in classes])

    @app.post(
        "/predict",
        response_class=Response,
        responses={
            200: {
                "description": "the prediction, in the media type of `format`",
                "model": PredictSummary,
                "content": {"image/png": _BINARY, "image/webp": _BINARY, "image/jpeg": _BINARY},
            },
            **_ERRORS,
        },
        dependencies=guarded,
        tags=["model"],
        openapi_extra={
            "requestBody": {
                "content": {
                    "multipart/form-data": {"encoding": {"image": {"contentType": _IMAGE_TYPES}}}
                }
            }
        },
    )
    async def predict(
        image: Annotated[
            UploadFile, File(description=f"the image: {ACCEPTED} (any size up to the limits)")
        ],
        fmt: Annotated[
            Literal["png", "webp", "json", "overlay"],
            Query(
                alias="format",
                description="png: single-channel class-id mask; webp: lossless, class id in "
                "each channel; overlay: class colours over the image (JPEG); json: per-class "
                "areas and polygons",
            ),
        ] = "png",
        tta: Annotated[
            str | None,
            Query(
                pattern=TTA_PATTERN,
                description="test-time flips, e.g. h,v,hv; none turns the bundle's off",
            ),
        ] = None,
        tile: Annotated[
            int | None, Query(ge=32, le=4096, description="tile side in pixels")
        ] = None,
        overlap: Annotated[
            float | None, Query(ge=0, le=0.9, description="tile overlap share")
        ] = None,
        threshold: Annotated[
            float | None,
            Query(
                ge=0,
                le=1,
                include_in_schema=binary,
                description="binary models: foreground probability cut",
            ),
        ] = None,
        min_size: Annotated[
            list[Annotated[str, StringConstraints(pattern=patterns.min_size)]] | None,
            Query(
                max_length=len(classes) + 1,
                description="drop components under N px: N (every foreground class) or CLASS=N, "
                "comma-separated or repeated",
            ),
        ] = None,
        fill_holes: Annotated[
            list[Annotated[str, StringConstraints(pattern=patterns.class_list)]] | None,
            Query(
                max_length=len(classes) + 1,
                description="fill holes of these classes: names, ids or all",
            ),
        ] = None,
        keep_largest: Annotated[
            list[Annotated[str, StringConstraints(pattern=patterns.class_list)]] | None,
            Query(
                max_length=len(classes) + 1,
                description="keep only the largest component of these classes: names, ids or all",
            ),
        ] = None,
        polygons: Annotated[bool, Query(description="format=json: include the polygons")] = True,
    ) -> Response:
        """Predict the class of every pixel of the uploaded image.

        Query options default to the bundle's settings; post-processing options add to the
        bundle's own. The mask has the input's width and height.
        """
        if threshold is not None and predictor.task != "binary":
            raise HTTPException(
                422, f"threshold applies to binary models; this one is {predictor.task}"
            )
        opts = PredictOptions(
            tta=tta,
            tile=tile,
            overlap=overlap,
            threshold=threshold,
            min_size=tuple(min_size or ()),
            fill_holes=tuple(fill_holes or ()),
            keep_largest=tuple(keep_largest or ()),
        )
        variant = with_options(predictor, opts)
        name = _client_name(image.filename)
        data = await image.read()
        await image.close()
        deadline = time.monotonic() + cfg.request_timeout_s
        job = _job(variant, data, name, fmt, cfg, polygons, classes, deadline)
        body = await _gated(gate, job, cfg)
        return Response(
            body,
            media_type=MEDIA_TYPES[fmt],
            headers={
                "Content-Disposition": f'inline; filename="{_download_name(name, fmt)}"',
                "Cache-Control": "no-store",
            },
        )


async def _gated(gate: Gate, job: Callable[[], bytes], cfg: ServeSettings) -> bytes:
    """Run ``job`` through the gate; its refusals and time-outs as 503 / 504 HTTP errors."""
    try:
        return await gate.run(job, cfg.request_timeout_s)
    except PredictionStoppedError:  # its deadline came just before the gate's timeout
        raise HTTPException(
            504, f"the prediction took longer than {cfg.request_timeout_s:g} s"
        ) from None
    except SaturatedError:
        raise HTTPException(
            503,
            f"server busy: {cfg.max_concurrency} predictions running and {cfg.max_queue} "
            "waiting; retry later",
            {"Retry-After": str(cfg.retry_after_s)},
        ) from None
    except GateTimeoutError as exc:
        if not exc.started:
            raise HTTPException(
                503,
                f"server busy: no prediction slot freed within {cfg.request_timeout_s:g} s",
                {"Retry-After": str(cfg.retry_after_s)},
            ) from None
        raise HTTPException(
            504, f"the prediction took longer than {cfg.request_timeout_s:g} s"
        ) from None


def _job(
    predictor: Any,
    data: bytes,
    name: str,
    fmt: Format,
    cfg: ServeSettings,
    with_polygons: bool,
    classes: list[Any],
    deadline: float,
) -> Callable[[], bytes]:
    """The work of one request, run in the gate's pool: decode, check, predict, encode.

    The output format and the work are checked on the decoded size before predicting; the
    prediction stops between batches of tiles once ``deadline`` (monotonic) has passed.
    """

    def run() -> bytes:
        image = decode_upload(data, name, cfg.max_pixels)
        height, width = image.shape[:2]
        check_output(fmt, height, width)
        check_work(predictor, height, width, budget=cfg.work_budget, max_tiles=cfg.max_tiles)
        labels = with_deadline(predictor, deadline).predict_array(image, stem=name).labels
        if fmt == "png" or fmt == "webp":
            return encode_mask(labels, fmt)
        if fmt == "overlay":
            return encode_overlay(image, labels, classes)
        return json.dumps(summary(labels, classes, with_polygons=with_polygons)).encode()

    return run
