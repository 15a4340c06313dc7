"""The class list that ``dataset.yaml`` and ``bundle.yaml`` share: ids, names, colours.

It sits on the ground floor (it imports only pydantic) because the dataset, the bundle, the
predictor's outputs and the server all speak it; none of them should import another stage for it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


def default_color(class_id: int) -> tuple[int, int, int]:
    """A distinct colour per class id: the PASCAL VOC colour map (0 is black).

    Written out here because it is a five-line bit trick that every VOC tool re-derives; no
    library exposes it without pulling in a framework.
    """
    r = g = b = 0
    c = class_id
    for shift in range(7, -1, -1):
        r |= (c & 1) << shift
        g |= ((c >> 1) & 1) << shift
        b |= ((c >> 2) & 1) << shift
        c >>= 3
    return (r, g, b)


class ClassInfo(BaseModel):
    """One class of the dataset."""

    model_config = ConfigDict(extra="forbid")

    id: int = Field(ge=0, le=254, description="class id stored in the mask pixels")
    name: str = Field(min_length=1, description="human-readable class name")
    color: tuple[int, int, int] = Field(description="RGB colour used in overlays and colour masks")

    @field_validator("color")
    @classmethod
    def _check_color(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in value):
            raise ValueError(f"colour components must be 0..255, got {value}")
        return value

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("class name is blank")
        return value
