"""Hostile requests to the server: each gets a one-line 4xx and the bound it attacks holds.

Groups: TIFFs whose pages or bands add up past the pixel limit, outputs past an encoder's
limits, requests whose tiling work is out of proportion (refused before any network call), a
timed-out prediction that must give its slot back, empty API keys, the API docs behind the key,
and query parameters out of range. Each group has a control request that must succeed.
"""

from __future__ import annotations

import dataclasses
import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from fastapi.testclient import TestClient

from segflow.infer.predictor import Predictor
from segflow.serve import ServeSettings, create_app
from segflow.serve.budget import work_estimate
from tests.conftest import run_cli
from tests.serve import FakePredictor, decode_mask, encode, gradient_image

IMAGE = gradient_image()


def _files(data: bytes, name: str = "x.png") -> dict[str, tuple[str, bytes, str]]:
    return {"image": (name, data, "application/octet-stream")}


def _refused(resp: Any, status: int, *needles: str) -> str:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"detail"} and "\n" not in body["detail"], body
    assert "Traceback" not in body["detail"]
    for needle in needles:
        assert needle in body["detail"], body["detail"]
    return str(body["detail"])


def _tiff(pages: list[np.ndarray], **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tif:
        for page in pages:
            tif.write(page, compression="zlib", **kwargs)
    return buf.getvalue()


@pytest.fixture
def fake() -> FakePredictor:
    return FakePredictor()


def _client(predictor: Any, **settings: Any) -> TestClient:
    return TestClient(create_app(predictor, ServeSettings(**settings)))


# -- TIFF pages and bands: every decoded value counts -------------------------------------------

TIFF_CASES = {
    "40 pages of 200x200 (1.6 Mpx) under 1 Mpx": ([np.zeros((200, 200), np.uint8)] * 40, 413,
                                                   "every page counts"),
    "small first page, huge second": ([np.zeros((10, 10), np.uint8),
                                       np.zeros((2000, 2000), np.uint8)], 413, "pages 1-2"),
    "300 tiny pages": ([np.zeros((4, 4), np.uint8)] * 300, 413, "more than 256 pages"),
    "20 bands of 500x500 (5 M values)": ([np.zeros((500, 500, 20), np.uint8)], 413, "values"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(TIFF_CASES), ids=list(TIFF_CASES))
def test_tiff_pages_and_bands_count_against_the_pixel_limit(fake: FakePredictor, case: str) -> None:
    pages, status, needle = TIFF_CASES[case]
    data = _tiff(pages, photometric="minisblack")
    assert len(data) < 120_000  # a small upload ...
    with _client(fake, max_pixels=1_000_000) as client:
        start = time.perf_counter()
        _refused(client.post("/predict", files=_files(data, "pages.tif")), status, needle)
        assert time.perf_counter() - start < 2  # ... refused from the headers, nothing decoded
        assert fake.calls == 0
        control = _tiff([np.full((200, 200), 100, np.uint8)] * 2, photometric="minisblack")
        resp = client.post("/predict", files=_files(control, "two.tif"))
        assert resp.status_code == 200 and decode_mask(resp.content).shape == (200, 200)


def _many_pages(count: int) -> bytes:
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tif:
        for _ in range(count):
            tif.write(np.zeros((1, 1), np.uint8), photometric="minisblack", contiguous=False)
    return buf.getvalue()


def _circular_ifd() -> bytes:
    from tests.serve import tiff_declaring

    data = bytearray(tiff_declaring(10, 10))
    data[-4:] = data[4:8]  # the next-IFD offset points back at the first IFD
    return bytes(data)


@pytest.mark.parametrize(
    "make", [lambda: _many_pages(3000), _circular_ifd], ids=["3000-pages", "circular-ifd"]
)
def test_tiff_page_chains_are_cut_short(fake: FakePredictor, make: Any) -> None:
    """Parsing every IFD of a 3000-page TIFF took 2 s before the pixel check: refused at 256."""
    data = make()
    with _client(fake, max_pixels=1_000_000) as client:
        start = time.perf_counter()
        _refused(client.post("/predict", files=_files(data, "chain.tif")), 413, "256 pages")
        assert time.perf_counter() - start < 1.0 and fake.calls == 0


# -- encoder limits: a clear 422 before any work, never a 500 ------------------------------------


@pytest.mark.parametrize(
    ("fmt", "width", "status"),
    [("webp", 16384, 422), ("overlay", 65501, 422), ("webp", 16383, 200),
     ("overlay", 65500, 200), ("png", 70000, 200)],
    ids=["webp-16384", "jpeg-65501", "webp-16383-ok", "jpeg-65500-ok", "png-70000-ok"],
)  # fmt: skip
def test_outputs_past_an_encoder_limit_are_refused_up_front(
    fake: FakePredictor, fmt: str, width: int, status: int
) -> None:
    image = np.zeros((2, width, 3), np.uint8)
    with _client(fake) as client:
        resp = client.post(f"/predict?format={fmt}", files=_files(encode(image)))
        if status == 200:
            assert resp.status_code == 200, resp.text
            assert fake.calls == 1
        else:
            _refused(resp, 422, f"format={fmt}", f"{width}x2", "format=png")
            assert fake.calls == 0


# -- the work of one request: estimated exactly, refused over the budget --------------------------


class CountingBackend:
    """Wraps a backend: counts tiles and network-input pixels; optionally slow per call."""

    def __init__(self, inner: Any, delay: float = 0.0) -> None:
        self.inner, self.delay, self.name = inner, delay, "counting"
        self.tiles = self.pixels = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.tiles += batch.shape[0]
        self.pixels += batch.shape[0] * batch.shape[2] * batch.shape[3]
        if self.delay:
            time.sleep(self.delay)
        return np.asarray(self.inner(batch))


def _counted(bundle: Path, delay: float = 0.0) -> tuple[Predictor, CountingBackend]:
    predictor = Predictor.from_bundles(bundle, backend="torch")
    counting = CountingBackend(predictor.members[0].backend, delay)
    predictor.members = [dataclasses.replace(predictor.members[0], backend=counting)]
    return predictor, counting


@pytest.mark.parametrize(
    ("tile", "overlap", "tta"), [(64, 0.5, "none"), (32, 0.25, "h,v"), (96, 0.0, "hv")]
)
def test_the_estimate_is_the_work_the_predictor_runs(
    torch_bundle: Path, tile: int, overlap: float, tta: str
) -> None:
    predictor, counting = _counted(torch_bundle)
    with _client(predictor) as client:
        query = f"tile={tile}&overlap={overlap}&tta={tta}"
        resp = client.post(f"/predict?{query}", files=_files(encode(IMAGE)))
        assert resp.status_code == 200, resp.text
    variant = dataclasses.replace(
        predictor.members[0], tile=tile, overlap=overlap, tta=() if tta == "none" else tuple(
            tta.split(",")
        )
    )  # fmt: skip
    probe = type("P", (), {"members": [variant]})()
    assert work_estimate(probe, *IMAGE.shape[:2]) == (counting.tiles, counting.pixels)


def test_the_estimate_follows_the_bundles_resize(torch_bundle: Path) -> None:
    """A bundle resizing to 256 x 256 runs 256 x 256 of tiles whatever the upload's size."""
    from segflow.data.preprocess import Preprocessor

    predictor, counting = _counted(torch_bundle)
    m = predictor.members[0]
    resized = m.preprocessor.cfg.model_copy(update={"resize": [256, 256]})
    pre = Preprocessor(resized, m.preprocessor.in_channels, m.preprocessor.normalization)
    predictor.members = [dataclasses.replace(m, preprocessor=pre)]
    small = encode(IMAGE[:20, :20])
    with _client(predictor, max_tiles=1000) as client:
        query = "/predict?tile=32&overlap=0.9"  # 76 x 76 tiles of the resized 256 x 256
        _refused(client.post(query, files=_files(small)), 422, "5,776 tiles", "on 20x20")
        assert counting.tiles == 0
        assert client.post("/predict", files=_files(small)).is_success  # the bundle's tiling
    assert counting.tiles == work_estimate(predictor, 20, 20)[0] > 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("query", "side", "limit", "needle"),
    [
        ("tile=32&overlap=0.9", 512, {}, "25,921 tiles"),  # the cheap-request saturation attack
        ("tile=64&overlap=0.5&tta=h,v,hv", 256, {"max_tiles": 100}, "4 pass(es)"),
        ("tta=hv", 256, {"max_work_pixels": 1.5}, "Mpx per request"),  # x the control's cost
    ],
    ids=["tiny-tile-high-overlap", "tta-multiplies-tiles", "pixel-budget"],
)
def test_work_over_the_budget_is_refused_before_any_network_call(
    torch_bundle: Path, query: str, side: int, limit: dict[str, float], needle: str
) -> None:
    predictor, counting = _counted(torch_bundle)
    estimate = work_estimate(predictor, side, side)
    assert estimate is not None
    settings = {k: int(v * estimate[1]) if k == "max_work_pixels" else int(v)
                for k, v in limit.items()}  # fmt: skip
    image = encode(np.zeros((side, side, 3), np.uint8))
    with _client(predictor, **settings) as client:
        start = time.perf_counter()
        _refused(client.post(f"/predict?{query}", files=_files(image)), 422, needle, "this server")
        assert time.perf_counter() - start < 2 and counting.tiles == 0
        assert client.app.state.gate.admitted == 0
        control = client.post("/predict?tta=none", files=_files(image))  # the bundle's own tiling
        assert control.status_code == 200 and counting.tiles == estimate[0]


def test_a_timed_out_prediction_stops_and_gives_its_slot_back(torch_bundle: Path) -> None:
    """504 after 0.5 s; the abandoned prediction (~3 s of tiles) ends within a batch of tiles."""
    predictor, counting = _counted(torch_bundle, delay=0.05)
    image = encode(np.zeros((256, 256, 3), np.uint8))
    with _client(predictor, max_concurrency=1, max_queue=0, request_timeout_s=0.5) as client:
        gate = client.app.state.gate
        _refused(client.post("/predict?tile=32&overlap=0.5", files=_files(image)), 504, "0.5 s")
        answered = time.monotonic()
        while gate.admitted and time.monotonic() - answered < 5:
            time.sleep(0.01)
        assert gate.admitted == 0 and time.monotonic() - answered < 0.5  # slot back at once
        ran = counting.tiles
        time.sleep(0.3)
        assert counting.tiles == ran < 15 * 15  # stopped: no tile ran after, far from all 225
        ok = client.post("/predict", files=_files(encode(IMAGE)))  # the freed slot serves
        assert ok.status_code == 200


def test_concurrent_cheap_attacks_cannot_hold_the_server(torch_bundle: Path) -> None:
    """Four 504-bound requests in a row: each stops at its deadline; none outlives it for long."""
    predictor, _ = _counted(torch_bundle, delay=0.05)
    image = encode(np.zeros((256, 256, 3), np.uint8))
    with _client(predictor, max_concurrency=2, max_queue=2, request_timeout_s=0.4) as client:
        codes: list[int] = []

        def attack() -> None:
            resp = client.post("/predict?tile=32&overlap=0.5", files=_files(image))
            codes.append(resp.status_code)

        threads = [threading.Thread(target=attack) for _ in range(4)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        gate = client.app.state.gate
        while gate.admitted and time.monotonic() - start < 5:
            time.sleep(0.01)
        assert sorted(set(codes)) <= [503, 504] and len(codes) == 4
        assert gate.admitted == 0 and time.monotonic() - start < 2.0


# -- API keys: never an open server by mistake; docs behind the key -------------------------------


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--api-key", ""], {}), (["--api-key", "   "], {}), ([], {"SEGFLOW_API_KEY": ""}),
     ([], {"SEGFLOW_API_KEY": " \t"})],
    ids=["flag-empty", "flag-blank", "env-empty", "env-blank"],
)  # fmt: skip
def test_an_empty_api_key_refuses_to_start(
    torch_bundle: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str]
) -> None:
    import segflow.serve.server as server

    started: list[object] = []
    monkeypatch.setattr(server, "run_server", lambda *a, **k: started.append(a))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    res = run_cli("serve", torch_bundle, "--port", "9", *args)
    assert res.exit_code == 2, (res.exit_code, res.stderr)
    assert res.stderr.startswith("error: ") and "api-key is empty" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not started


def test_an_empty_key_cannot_reach_create_app(fake: FakePredictor) -> None:
    from pydantic import ValidationError

    for key in ("", "  "):
        with pytest.raises(ValidationError):
            ServeSettings(api_key=key)


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc", "/info"])
def test_with_a_key_the_docs_do_not_list_the_classes_without_it(
    fake: FakePredictor, path: str
) -> None:
    with _client(fake, api_key="s3cret") as client:
        for headers in ({}, {"X-API-Key": "wrong"}):
            resp = client.get(path, headers=headers)
            detail = _refused(resp, 401, "API key")
            assert "cell" not in resp.text and "edge" not in detail
        ok = client.get(path, headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200
        assert client.get("/health").status_code == 200  # liveness stays open


# -- every query parameter has its range ---------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    ["tile=31", "tile=4097", "tile=abc", "tile=1e3", "overlap=0.95", "overlap=-0.1",
     "overlap=nan", "overlap=inf", "min_size=9999999999", "format=gif", "polygons=maybe",
     "tta=h,h,h,h,x"],
)  # fmt: skip
def test_query_parameters_out_of_range(fake: FakePredictor, query: str) -> None:
    with _client(fake) as client:
        name = query.split("=")[0]
        _refused(client.post(f"/predict?{query}", files=_files(encode(IMAGE))), 422, name)
        assert fake.calls == 0
        assert client.post("/predict?tile=32&overlap=0.5", files=_files(encode(IMAGE))).is_success


@pytest.mark.parametrize("query", ["threshold=1.5", "threshold=-0.01", "threshold=nan"])
def test_binary_threshold_out_of_range(fake: FakePredictor, query: str) -> None:
    fake.task = "binary"
    with _client(fake) as client:
        _refused(client.post(f"/predict?{query}", files=_files(encode(IMAGE))), 422, "threshold")
        assert fake.calls == 0
        assert client.post("/predict?threshold=0.3", files=_files(encode(IMAGE))).is_success
