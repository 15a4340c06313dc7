"""Limits and switches of the HTTP server (``segflow serve`` flags map one to one onto these)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from segflow import _serve_defaults as defaults

#: See :mod:`segflow._serve_defaults` (the one home of the default limits).
DEFAULT_MAX_UPLOAD_BYTES = round(defaults.MAX_UPLOAD_MB * 2**20)
DEFAULT_MAX_PIXELS = defaults.MAX_PIXELS


class ServeSettings(BaseModel):
    """What the server accepts and how much work it takes on at once."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_upload_bytes: int = Field(
        DEFAULT_MAX_UPLOAD_BYTES,
        ge=1,
        description="largest request body in bytes (the multipart upload with its headers); "
        "counted while reading, larger bodies get 413",
    )
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        ge=1,
        description="largest image in pixels (width x height), read from the file header before "
        "decoding; larger images get 413",
    )
    max_work_pixels: int | None = Field(
        None,
        ge=1,
        description="most network-input pixels one request may cost (tiles x tile area x TTA "
        "passes x models, estimated from the image size and the request's tile/overlap/tta) "
        "before anything runs; null: 16 x max_pixels; more gets 422",
    )
    max_tiles: int = Field(
        20_000,
        ge=1,
        description="most network calls' worth of tiles one request may cost (tiles x TTA "
        "passes x models); more gets 422",
    )
    request_timeout_s: float = Field(
        defaults.REQUEST_TIMEOUT_S,
        gt=0,
        description="seconds a prediction may take, waiting in the queue included; "
        "then 503 (still queued) or 504 (running)",
    )
    max_concurrency: int = Field(
        defaults.MAX_CONCURRENCY,
        ge=1,
        description="predictions running at once (each already uses every CPU core of the backend)",
    )
    max_queue: int = Field(
        defaults.MAX_QUEUE,
        ge=0,
        description="predictions waiting for a free slot; beyond that requests get 503 with "
        "Retry-After",
    )
    retry_after_s: int = Field(
        2, ge=1, description="the Retry-After header (seconds) sent with 503 responses"
    )
    api_key: str | None = Field(
        None,
        min_length=1,
        pattern=r"\S",
        description="when set, /predict, /info and the API docs (/docs, /openapi.json) need this "
        "value in the X-API-Key header; an empty key is refused (it would be an open server)",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="origins allowed to call the API from a browser (CORS); empty = CORS off",
    )

    @property
    def work_budget(self) -> int:
        """``max_work_pixels``, or 16 x ``max_pixels`` when it is not set."""
        return self.max_work_pixels if self.max_work_pixels is not None else 16 * self.max_pixels
