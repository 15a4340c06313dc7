"""JSON bodies of the HTTP API (they document themselves in ``/openapi.json``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every error response."""

    detail: str = Field(description="one line: what went wrong and what to do")


class Health(BaseModel):
    """``GET /health``."""

    status: Literal["ok"] = "ok"


class ClassSpec(BaseModel):
    """One class of the model."""

    id: int = Field(description="the class id, i.e. the pixel value in the mask")
    name: str
    color: list[int] = Field(description="RGB colour of the class in overlays", min_length=3)


class InputSpec(BaseModel):
    """What the model takes and how it predicts by default."""

    channels: int | None = Field(None, description="image channels the network takes")
    dtype: str | None = Field(None, description="dtype of the images the model was trained on")
    formats: list[str] = Field(description="image file formats /predict accepts")
    tile_size: int | None = Field(None, description="default tile side (query parameter tile)")
    overlap: float | None = Field(None, description="default tile overlap (query overlap)")
    tta: list[str] | None = Field(None, description="default test-time flips (query tta)")
    threshold: float | None = Field(None, description="binary models: default threshold")
    postprocess: dict[str, Any] | None = Field(None, description="default post-processing")


class ModelSpec(BaseModel):
    """The network(s) behind the predictions."""

    arch: str | None = None
    encoder: str | None = None
    bundles: int = Field(1, description="models averaged (an ensemble has more than one)")
    created_at: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict, description="metrics at save time")


class Limits(BaseModel):
    """The server's limits (a request beyond them is refused with a 4xx or 503)."""

    max_upload_bytes: int
    max_pixels: int
    max_concurrency: int
    max_queue: int
    request_timeout_s: float
    max_work_pixels: int | None = None  # network-input pixels per request (tiles x area x passes)
    max_tiles: int | None = None  # tiles per request (x TTA passes x models)


class Info(BaseModel):
    """``GET /info``: what this server predicts and how to call it."""

    name: str = Field(description="the model bundle's name")
    version: str = Field(description="segflow version of the server")
    task: str = Field(description="binary or multiclass")
    classes: list[ClassSpec]
    input: InputSpec
    model: ModelSpec
    backend: str = Field(description="inference backend: onnx, openvino or torch")
    output_formats: list[str] = Field(description="values of /predict's format parameter")
    limits: Limits


class ClassArea(ClassSpec):
    """A class with its predicted area."""

    pixels: int = Field(description="pixels predicted as this class")
    fraction: float = Field(description="share of the image predicted as this class")


class PredictSummary(BaseModel):
    """``POST /predict?format=json``: areas per class and the regions as polygons."""

    width: int
    height: int
    classes: list[ClassArea]
    polygons: dict[str, Any] | None = Field(
        None,
        description="GeoJSON FeatureCollection in pixel coordinates (x right, y down; one "
        "feature per connected region of a foreground class, properties class_id and class); "
        "absent with polygons=false",
    )
