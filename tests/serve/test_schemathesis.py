"""Requests generated from /openapi.json by schemathesis (in-process ASGI, real ONNX bundle).

Positive cases carry real PNGs (a strategy registered for the ``image/png`` encoding the schema
documents) with any documented option, so they must succeed; negative cases break the schema
and must be refused with a 4xx. Both run every default check: no 5xx, documented status codes,
content types, headers and response schemas.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segflow.serve.server import build_app
from segflow.serve.settings import ServeSettings
from tests.serve import encode, noise_image

PNGS = st.builds(
    lambda h, w, seed: encode(noise_image(h, w, seed)),
    st.integers(1, 40),
    st.integers(1, 40),
    st.integers(0, 2**16),
)


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_generated_requests_conform_and_never_fail(onnx_bundle: Path, mode: str) -> None:
    schemathesis.openapi.media_type("image/png", PNGS)
    app = build_app(onnx_bundle, settings=ServeSettings(max_upload_bytes=200_000, max_pixels=10**6))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    strategy = schema.as_strategy(generation_mode=schemathesis.GenerationMode(mode))
    statuses: list[int] = []

    @given(case=strategy)
    @settings(
        max_examples=30,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def check(case) -> None:
        statuses.append(case.call_and_validate().status_code)

    check()
    assert statuses and max(statuses) < 500
    if mode == "positive":
        assert statuses.count(200) == len(statuses)
