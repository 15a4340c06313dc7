"""The HTTP app with a fake predictor: formats, /info, /health, key, CORS, limits, errors, 503/504."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

import segflow
from segflow.serve import ServeSettings, create_app
from tests.serve import (
    FakePredictor,
    SlowPredictor,
    decode_mask,
    encode,
    gradient_image,
    png_declaring,
    tiff_declaring,
)

IMAGE = gradient_image()
EXPECTED = (IMAGE[:, :, 0].astype(np.int32) // 86).astype(np.uint8)


def _files(data: bytes, name: str = "photo.png", field: str = "image") -> dict[str, tuple]:
    return {field: (name, data, "application/octet-stream")}


@pytest.fixture
def fake() -> FakePredictor:
    return FakePredictor()


@pytest.fixture
def client(fake: FakePredictor):
    with TestClient(create_app(fake)) as c:
        yield c


def _error(resp, status: int, *needles: str) -> str:
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str)
    assert "\n" not in body["detail"] and "Traceback" not in body["detail"]
    for needle in needles:
        assert needle in body["detail"], body["detail"]
    return str(body["detail"])


def test_png_mask_is_the_class_ids_at_the_input_size(client: TestClient) -> None:
    resp = client.post("/predict", files=_files(encode(IMAGE)))
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    assert 'filename="photo_mask.png"' in resp.headers["content-disposition"]
    mask = decode_mask(resp.content)
    assert mask.dtype == np.uint8 and mask.shape == IMAGE.shape[:2]  # single channel
    np.testing.assert_array_equal(mask, EXPECTED)


@pytest.mark.parametrize("ext", [".jpg", ".bmp", ".webp", ".tif"])
def test_other_input_formats(client: TestClient, ext: str) -> None:
    if ext == ".tif":
        import io

        import tifffile

        buf = io.BytesIO()
        tifffile.imwrite(buf, IMAGE, photometric="rgb", compression="zlib")
        data = buf.getvalue()
    else:
        data = encode(IMAGE, ext)
    resp = client.post("/predict", files=_files(data, f"x{ext}"))
    assert resp.status_code == 200, resp.text
    mask = decode_mask(resp.content)
    assert mask.shape == IMAGE.shape[:2]
    if ext != ".jpg":  # lossless inputs give exactly the classes of the pixels
        np.testing.assert_array_equal(mask, EXPECTED)


def test_webp_mask_is_lossless(client: TestClient) -> None:
    resp = client.post("/predict?format=webp", files=_files(encode(IMAGE)))
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/webp"
    mask = decode_mask(resp.content)
    assert mask.shape[:2] == IMAGE.shape[:2]
    for channel in range(mask.shape[2]):  # WebP has no grey mode: the id is in every channel
        np.testing.assert_array_equal(mask[:, :, channel], EXPECTED)


def test_overlay_is_a_jpeg_of_the_input_size_coloured_by_class(client: TestClient) -> None:
    resp = client.post("/predict?format=overlay", files=_files(encode(IMAGE)))
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"
    overlay = decode_mask(resp.content)
    assert overlay.shape == (*IMAGE.shape[:2], 3)
    # Background pixels keep the image; class pixels move towards the class colour.
    bg = overlay[:, :2].astype(int)[:, :, ::-1]
    assert np.abs(bg - IMAGE[:, :2].astype(int)).mean() < 8
    assert np.abs(overlay[:, -2:].astype(int)[:, :, ::-1] - IMAGE[:, -2:].astype(int)).mean() > 20


def test_json_has_areas_and_polygons(client: TestClient, fake: FakePredictor) -> None:
    resp = client.post("/predict?format=json", files=_files(encode(IMAGE)))
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert (body["width"], body["height"]) == (64, 48)
    counts = np.bincount(EXPECTED.ravel(), minlength=3)
    assert [c["pixels"] for c in body["classes"]] == counts.tolist()
    assert [c["name"] for c in body["classes"]] == ["background", "cell", "edge"]
    assert body["classes"][1]["color"] == list(fake.classes[1].color)
    assert sum(c["fraction"] for c in body["classes"]) == pytest.approx(1.0)
    features = body["polygons"]["features"]
    assert body["polygons"]["type"] == "FeatureCollection"
    assert sorted(f["properties"]["class"] for f in features) == ["cell", "edge"]
    edge = next(f for f in features if f["properties"]["class_id"] == 2)
    xs = [x for x, _ in edge["geometry"]["coordinates"][0]]
    assert max(xs) == 64 and min(xs) == int(np.argmax(EXPECTED[0] == 2))  # pixel corners
    bare = client.post("/predict?format=json&polygons=false", files=_files(encode(IMAGE)))
    assert "polygons" not in bare.json() and bare.json()["classes"] == body["classes"]


def test_info_and_health(client: TestClient) -> None:
    info = client.get("/info").json()
    assert info["version"] == segflow.__version__
    assert info["task"] == "multiclass" and info["backend"] == "fake"
    assert info["classes"][2] == {"id": 2, "name": "edge", "color": [0, 128, 0]}
    assert info["limits"]["max_upload_bytes"] == ServeSettings().max_upload_bytes
    assert info["limits"]["max_pixels"] == ServeSettings().max_pixels
    assert set(info["input"]["formats"]) >= {"png", "jpeg", "tiff"}
    assert info["output_formats"] == ["png", "webp", "json", "overlay"]
    assert client.get("/health").json() == {"status": "ok"}


def test_openapi_documents_the_media_types_and_the_web_page_is_served(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    post = schema["paths"]["/predict"]["post"]
    content = post["responses"]["200"]["content"]
    assert set(content) == {"image/png", "image/webp", "image/jpeg", "application/json"}
    form = post["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].split("/")[-1]
    assert "image" in schema["components"]["schemas"][form]["required"]
    assert {"413", "415", "422", "503"} <= set(post["responses"])
    assert "swagger" in client.get("/docs").text.lower()
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert client.get("/static/index.html").status_code == 200
    _error(client.get("/static/nothing-here.js"), 404)


def test_api_key(fake: FakePredictor) -> None:
    app = create_app(fake, ServeSettings(api_key="s3cret"))
    with TestClient(app) as client:
        _error(client.get("/info"), 401, "X-API-Key")
        _error(client.post("/predict", files=_files(encode(IMAGE))), 401, "API key")
        _error(
            client.post("/predict", files=_files(encode(IMAGE)), headers={"X-API-Key": "wrong"}),
            401,
        )
        assert fake.calls == 0
        ok = {"X-API-Key": "s3cret"}
        assert client.get("/info", headers=ok).status_code == 200
        assert client.post("/predict", files=_files(encode(IMAGE)), headers=ok).status_code == 200
        assert client.get("/health").status_code == 200  # stays open
        assert client.get("/").status_code == 200
        _error(client.get("/openapi.json"), 401, "API key")  # the schema lists the classes
        _error(client.get("/docs"), 401, "API key")
        schema = client.get("/openapi.json", headers=ok).json()
        assert schema["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"


def test_cors_is_off_by_default_and_on_for_listed_origins(fake: FakePredictor) -> None:
    origin = {"Origin": "http://example.org"}
    preflight = {
        **origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key",
    }
    with TestClient(create_app(fake)) as client:
        assert "access-control-allow-origin" not in client.get("/info", headers=origin).headers
        assert client.options("/predict", headers=preflight).status_code >= 400
    app = create_app(fake, ServeSettings(cors_origins=["http://example.org"], api_key="k"))
    with TestClient(app) as client:
        resp = client.get("/info", headers={**origin, "X-API-Key": "k"})
        assert resp.headers["access-control-allow-origin"] == "http://example.org"
        pre = client.options("/predict", headers=preflight)  # no key needed for a preflight
        assert pre.status_code == 200
        assert "x-api-key" in pre.headers["access-control-allow-headers"].lower()
        other = client.get("/info", headers={"Origin": "http://evil.test", "X-API-Key": "k"})
        assert "access-control-allow-origin" not in other.headers


def test_query_options_reach_a_copy_of_the_predictor(fake: FakePredictor) -> None:
    seen: list[object] = []
    original = FakePredictor.predict_array

    def spy(self, image, *, stem=""):
        seen.append(self)
        return original(self, image, stem=stem)

    def query_names(client: TestClient) -> set[str]:
        post = client.get("/openapi.json").json()["paths"]["/predict"]["post"]
        return {p["name"] for p in post["parameters"]}

    with TestClient(create_app(fake)) as client:
        resp = client.post("/predict?threshold=0.3", files=_files(encode(IMAGE)))
        _error(resp, 422, "threshold applies to binary models")
        assert "threshold" not in query_names(client)
    fake.task = "binary"
    with TestClient(create_app(fake)) as client, pytest.MonkeyPatch.context() as mp:
        mp.setattr(FakePredictor, "predict_array", spy)
        assert client.post("/predict?threshold=0.3", files=_files(encode(IMAGE))).status_code == 200
        assert client.post("/predict", files=_files(encode(IMAGE))).status_code == 200
        assert "threshold" in query_names(client)
    variant, plain = seen
    assert variant is not fake and variant.threshold == 0.3
    assert plain is fake and fake.threshold == 0.5  # the loaded predictor is never changed


def test_class_options_are_validated_against_the_model_classes(client: TestClient) -> None:
    ok = ["min_size=5", "min_size=cell=5,edge=2", "fill_holes=all", "fill_holes=1,edge"]
    ok += ["keep_largest=cell&keep_largest=2", "tta=none", "tta=h,hv"]
    for query in ok:
        assert client.post(f"/predict?{query}", files=_files(encode(IMAGE))).status_code == 200
    bad = ["min_size=cat=5", "min_size=-1", "fill_holes=3", "fill_holes=", "tta=h,", "tta=x"]
    for query in bad:
        _error(client.post(f"/predict?{query}", files=_files(encode(IMAGE))), 422, "query")
    detail = _error(client.post("/predict?fill_holes=cat", files=_files(encode(IMAGE))), 422)
    assert detail == (
        "query parameter 'fill_holes': 'cat': use class names or ids (background, cell, edge) "
        "or all, comma-separated"
    )
    _error(client.post("/predict?tta=d", files=_files(encode(IMAGE))), 422, "use h, v, hv", "none")
    schema = client.get("/openapi.json").json()
    params = {p["name"]: p for p in schema["paths"]["/predict"]["post"]["parameters"]}
    assert "edge" in params["fill_holes"]["schema"]["anyOf"][0]["items"]["pattern"]


@pytest.mark.parametrize(
    ("kwargs", "status", "needle"),
    [
        ({}, 422, "multipart form field 'image'"),  # no file at all
        ({"files": _files(encode(IMAGE), field="file")}, 422, "field 'image'"),  # wrong field
        ({"data": {"image": "not a file"}}, 422, "must be a file upload"),
        ({"files": _files(b"hello, I am text\n" * 10, "notes.txt")}, 415, "PNG, JPEG, TIFF"),
        ({"files": _files(b"")}, 422, "empty"),
        ({"files": _files(encode(IMAGE)[:300])}, 422, "truncated"),
        ({"files": _files(png_declaring(100_000, 100_000))}, 413, "limit"),
        ({"files": _files(png_declaring(8000, 8000))}, 413, "64,000,000 pixels"),
        ({"files": _files(tiff_declaring(100_000, 100_000), "big.tif")}, 413, "limit"),
        ({"files": _files(encode(IMAGE)), "params": {"format": "gif"}}, 422, "'format'"),
        ({"files": _files(encode(IMAGE)), "params": {"tile": "abc"}}, 422, "'tile'"),
        ({"files": _files(encode(IMAGE)), "params": {"overlap": "0.95"}}, 422, "'overlap'"),
        ({"files": _files(encode(IMAGE)), "params": {"tta": "diagonal"}}, 422, "'tta'"),
        ({"files": _files(encode(IMAGE)), "params": {"min_size": "x=1"}}, 422, "'min_size'"),
        ({"json": {"image": "abc"}}, 422, "multipart form field 'image'"),
    ],
)
def test_malformed_requests_get_one_line_json_4xx_and_the_server_keeps_serving(
    client: TestClient, fake: FakePredictor, kwargs: dict, status: int, needle: str
) -> None:
    _error(client.post("/predict", **kwargs), status, needle)
    assert fake.calls == 0
    resp = client.post("/predict", files=_files(encode(IMAGE)))
    assert resp.status_code == 200 and fake.calls == 1


def test_bombs_are_refused_before_decoding(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segflow.data import image_io

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(image_io, "decode_image_bytes", never)
    monkeypatch.setattr(image_io, "read_image", never)
    start = time.perf_counter()
    for data, name in (
        (png_declaring(100_000, 100_000), "bomb.png"),
        (png_declaring(9000, 9000), "big.png"),
        (tiff_declaring(100_000, 100_000), "bomb.tif"),
    ):
        _error(client.post("/predict", files=_files(data, name)), 413, name)
    assert time.perf_counter() - start < 5


def test_upload_limit_is_counted_while_reading(fake: FakePredictor) -> None:
    app = create_app(fake, ServeSettings(max_upload_bytes=20_000))
    big = encode(np.random.default_rng(0).integers(0, 255, (100, 100, 3), np.uint8))
    assert len(big) > 20_000
    with TestClient(app) as client:
        _error(client.post("/predict", files=_files(big)), 413, "20,000 bytes")

        # A chunked body (no Content-Length) is counted as it streams in.
        def chunks():
            boundary = b"--xyz\r\n"
            yield boundary + b'Content-Disposition: form-data; name="image"; filename="a.png"\r\n'
            yield b"Content-Type: image/png\r\n\r\n"
            for i in range(0, len(big), 4096):
                yield big[i : i + 4096]
            yield b"\r\n--xyz--\r\n"

        resp = client.post(
            "/predict",
            content=chunks(),
            headers={"Content-Type": "multipart/form-data; boundary=xyz"},
        )
        _error(resp, 413, "larger than this server's limit")
        assert fake.calls == 0
        small = encode(IMAGE)
        assert client.post("/predict", files=_files(small)).status_code == 200


def test_saturation_gives_503_with_retry_after_then_recovers() -> None:
    slow = SlowPredictor()
    app = create_app(slow, ServeSettings(max_concurrency=1, max_queue=1, retry_after_s=7))
    results: dict[str, int] = {}
    with TestClient(app) as client:

        def call(key: str) -> None:
            results[key] = client.post("/predict", files=_files(encode(IMAGE))).status_code

        running = threading.Thread(target=call, args=("running",))
        running.start()
        assert slow.started.acquire(timeout=10)  # the first holds the only slot
        queued = threading.Thread(target=call, args=("queued",))
        queued.start()
        deadline = time.monotonic() + 10
        while _admitted(app) < 2 and time.monotonic() < deadline:  # the second one is queued
            time.sleep(0.02)
        resp = client.post("/predict", files=_files(encode(IMAGE)))
        _error(resp, 503, "busy")
        assert resp.headers["retry-after"] == "7"
        assert client.get("/health").status_code == 200  # the loop is free while models run
        slow.release.set()
        running.join(10)
        queued.join(10)
    assert results == {"running": 200, "queued": 200}
    with TestClient(app) as client:
        assert client.post("/predict", files=_files(encode(IMAGE))).status_code == 200


def _admitted(app) -> int:
    return int(app.state.gate.admitted)


def test_timeouts_503_while_queued_504_while_running_and_the_slot_comes_back() -> None:
    slow = SlowPredictor()
    app = create_app(slow, ServeSettings(max_concurrency=1, request_timeout_s=0.5))
    with TestClient(app) as client:
        codes: list[int] = []
        first = threading.Thread(
            target=lambda: codes.append(
                client.post("/predict", files=_files(encode(IMAGE))).status_code
            )
        )
        first.start()
        assert slow.started.acquire(timeout=10)
        _error(client.post("/predict", files=_files(encode(IMAGE))), 503, "no prediction slot")
        first.join(10)
        assert codes == [504]
        assert _admitted(app) == 1  # the timed-out work still runs and holds its slot
        slow.release.set()
        deadline = time.monotonic() + 10
        while _admitted(app) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.post("/predict", files=_files(encode(IMAGE))).status_code == 200


def test_predictor_errors_are_422_and_bugs_are_json_500(fake: FakePredictor) -> None:
    from segflow.errors import ConfigError

    def wrong_channels(image, *, stem=""):
        raise ConfigError("image has 4 channels but the model takes 3")

    fake.predict_array = wrong_channels  # type: ignore[method-assign]
    with TestClient(create_app(fake)) as client:
        _error(client.post("/predict", files=_files(encode(IMAGE))), 422, "4 channels")

    def bug(image, *, stem=""):
        raise RuntimeError("boom")

    fake.predict_array = bug  # type: ignore[method-assign]
    with TestClient(create_app(fake), raise_server_exceptions=False) as client:
        _error(client.post("/predict", files=_files(encode(IMAGE))), 500, "RuntimeError")
        assert client.get("/health").status_code == 200


def test_json_error_bodies_parse(client: TestClient) -> None:
    resp = client.get("/nowhere")
    assert json.loads(resp.text) == {"detail": "Not Found"}
    _error(client.get("/predict"), 405)
