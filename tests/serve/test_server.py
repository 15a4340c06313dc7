"""The uvicorn runner: worker processes built from the app factory, settings, argument errors."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from segflow.api import serve
from segflow.errors import DataError, UsageError
from segflow.serve import ServeSettings
from segflow.serve.server import (
    ENV_BACKEND,
    ENV_BUNDLE,
    ENV_SETTINGS,
    ENV_THREADS,
    app_from_env,
)
from tests.serve import decode_mask, encode, noise_image, serving


def test_app_factory_reads_bundle_and_settings_from_the_environment(
    onnx_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = ServeSettings(max_pixels=1234, api_key="k", cors_origins=["http://a.b"])
    monkeypatch.setenv(ENV_BUNDLE, str(onnx_bundle))
    monkeypatch.setenv(ENV_BACKEND, "onnx")
    monkeypatch.setenv(ENV_THREADS, "1")
    monkeypatch.setenv(ENV_SETTINGS, settings.model_dump_json())
    with TestClient(app_from_env()) as client:
        assert client.get("/info").status_code == 401
        info = client.get("/info", headers={"X-API-Key": "k"}).json()
        assert info["backend"] in ("onnx", "openvino") and info["limits"]["max_pixels"] == 1234
    monkeypatch.delenv(ENV_BUNDLE)
    with pytest.raises(UsageError, match="segflow serve BUNDLE"):
        app_from_env()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_upload_mb": 0}, "--max-upload-mb"),
        ({"max_pixels": 0}, "--max-pixels"),
        ({"timeout": -1}, "--timeout"),
        ({"max_concurrency": 0}, "--max-concurrency"),
        ({"max_queue": -1}, "--max-queue"),
        ({"workers": 0}, "--workers"),
        ({"port": 70000}, "--port"),
        ({"backend": "tensorrt"}, "unknown backend"),
    ],
)
def test_bad_arguments_fail_before_serving(onnx_bundle: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        serve(onnx_bundle, **kwargs)


def test_a_missing_bundle_fails_before_serving(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such bundle folder"):
        serve(tmp_path / "nothing.segflow")


@pytest.mark.slow
def test_two_worker_processes(onnx_bundle: Path, tmp_path: Path) -> None:
    image = noise_image(40, 56, seed=2)
    with serving(onnx_bundle, "--workers", "2", log=tmp_path / "server.log") as (url, _):
        for _ in range(4):
            resp = httpx.post(
                f"{url}/predict", files={"image": ("a.png", encode(image), "image/png")}, timeout=60
            )
            assert resp.status_code == 200, resp.text
            assert decode_mask(resp.content).shape == image.shape[:2]
        assert httpx.get(f"{url}/info", timeout=10).json()["backend"] in ("onnx", "openvino")
    log = (tmp_path / "server.log").read_text()
    assert log.count("Started server process") == 2, log
