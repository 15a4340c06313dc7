"""The web page at ``/`` in a real headless Chromium against a real server and bundle.

A uvicorn server runs ``create_app(predictor)`` in a thread on a free loopback port; Playwright
drives Debian's ``chromium``: upload an image, wait for the overlay, check the legend against the
bundle's classes and the canvas against their colours, move the opacity slider, download the mask
and compare it with the legend and with the Predictor; show the server's error message; ask for
the API key when ``/info`` is refused and refuse files over the upload limit without sending them.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from segflow.infer.predictor import Predictor
from tests.fixtures.bundles import make_bundle

pytestmark = pytest.mark.slow

# Names with markup characters: the legend must show them as text. Colours unlike any default
# palette: the canvas must use the ones /info gives.
CLASSES = [
    {"id": 0, "name": "sky", "color": [30, 144, 255]},
    {"id": 1, "name": "road & kerb", "color": [255, 140, 0]},
    {"id": 2, "name": "tree <old>", "color": [50, 205, 50]},
]
WIDTH, HEIGHT = 96, 80  # not square, not a multiple of the tile: a transposed mask would show


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@contextlib.contextmanager
def _live_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a daemon thread on a free loopback port; yield its URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws="none", http="h11"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    bundle = make_bundle(tmp_path_factory.mktemp("bundle") / "m.segflow", classes=3, tile=64)
    # Rename and recolour the classes as a user editing bundle.yaml would (weights untouched).
    meta_file = bundle / "bundle.yaml"
    meta = yaml.safe_load(meta_file.read_text(encoding="utf-8"))
    meta["classes"] = CLASSES
    meta_file.write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
    return Predictor.from_bundles(bundle, backend="torch", device="cpu")


@pytest.fixture(scope="module")
def server_url(predictor: Predictor) -> Iterator[str]:
    from segflow.serve.app import create_app

    with _live_server(create_app(predictor)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium binary on PATH (Debian: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


# Records every value of body[data-state] and whether the busy spinner showed with it.
RECORD_STATES = """
window.__states = [];
new MutationObserver((records) => {
  for (const r of records) {
    if (r.target !== document.body) continue;
    const busy = document.getElementById("busy");
    window.__states.push(document.body.dataset.state + (busy && !busy.hidden ? "+spinner" : ""));
  }
}).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-state"] });
"""

CANVAS_SUMMARY = """
() => {
  const c = document.getElementById("overlay");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  const colours = new Set();
  let sum = 0, transparent = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (colours.size <= 64) colours.add(`${d[i]},${d[i + 1]},${d[i + 2]}`);
    sum += d[i] + 3 * d[i + 1] + 7 * d[i + 2];
    if (d[i + 3] === 0) transparent += 1;
  }
  return { width: c.width, height: c.height, colours: Array.from(colours), sum, transparent };
}
"""


@pytest.fixture
def page(browser: Any, server_url: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 800}, accept_downloads=True)
    context.set_default_timeout(20_000)
    page = context.new_page()
    uncaught: list[str] = []
    page.on("pageerror", lambda exc: uncaught.append(str(exc)))
    page.add_init_script(RECORD_STATES)
    page.goto(server_url + "/")
    page.wait_for_selector("body[data-state=ready]")
    yield page
    context.close()
    assert uncaught == [], f"uncaught JavaScript errors: {uncaught}"


def _photo(path: Path) -> np.ndarray:
    """A seeded RGB image with smooth structure and noise, saved as PNG."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    base = np.stack([xx / WIDTH * 255, yy / HEIGHT * 255, 128 + 100 * np.sin(xx / 7)], axis=-1)
    rgb = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(rgb, "RGB").save(path)
    return rgb


def _legend(page: Any) -> list[dict[str, str]]:
    return page.eval_on_selector_all(
        "#legend li[data-class-id]",
        """items => items.map(li => ({
            id: li.dataset.classId,
            name: li.querySelector(".name").textContent,
            pixels: li.dataset.pixels,
            swatch: getComputedStyle(li.querySelector(".swatch")).backgroundColor,
        }))""",
    )


def test_upload_shows_overlay_legend_and_downloads_the_mask(
    page: Any, predictor: Predictor, tmp_path: Path
) -> None:
    # Before any prediction the legend already lists every class with its colour.
    legend = _legend(page)
    assert [item["name"] for item in legend] == [c["name"] for c in CLASSES]
    assert [item["swatch"] for item in legend] == [
        "rgb({}, {}, {})".format(*c["color"]) for c in CLASSES
    ]
    assert page.is_hidden("#download")

    image_path = tmp_path / "field photo.png"
    rgb = _photo(image_path)
    page.set_input_files("#file", image_path)
    page.wait_for_selector("body[data-state=done]")
    assert page.is_hidden("#error")
    states = page.evaluate("window.__states")
    assert "busy+spinner" in states and states[-1] == "done", states

    # Legend: exactly the bundle's classes, ids in order, pixel counts covering the image.
    legend = _legend(page)
    assert [(item["id"], item["name"]) for item in legend] == [
        (str(c["id"]), c["name"]) for c in CLASSES
    ]
    counts = [int(item["pixels"]) for item in legend]
    assert sum(counts) == WIDTH * HEIGHT
    assert page.locator("#legend li[data-class-id] .pct").all_text_contents()[0].endswith("%")

    # The overlay is drawn, with the image's aspect ratio.
    start = page.evaluate(CANVAS_SUMMARY)
    assert start["width"] > 0 and start["transparent"] == 0
    assert abs(start["width"] / start["height"] - WIDTH / HEIGHT) < 0.03

    # The opacity slider changes the pixels.
    page.fill("#opacity", "0")
    assert page.evaluate(CANVAS_SUMMARY)["sum"] != start["sum"]
    assert page.text_content("#opacity-value") == "0%"

    # Fully opaque with every class shown, the canvas holds exactly the colours of the predicted
    # classes (from /info, upscaled nearest-neighbour).
    page.get_by_label("Show sky").check()
    page.fill("#opacity", "100")
    opaque = page.evaluate(CANVAS_SUMMARY)
    present = {"{},{},{}".format(*c["color"]) for c, n in zip(CLASSES, counts, strict=True) if n}
    assert set(opaque["colours"]) == present

    # The download is the server's class-id mask at the image's full size, named after it.
    with page.expect_download() as download_info:
        page.click("#download")
    download = download_info.value
    assert download.suggested_filename == "field photo_mask.png"
    saved = tmp_path / "downloaded.png"
    download.save_as(saved)
    with Image.open(saved) as im:
        assert im.format == "PNG" and im.mode == "L"
        assert im.size == (WIDTH, HEIGHT)
        mask = np.asarray(im)
    assert set(np.unique(mask).tolist()) <= {c["id"] for c in CLASSES}
    assert np.bincount(mask.ravel(), minlength=len(CLASSES)).tolist() == counts
    assert np.array_equal(mask, predictor.predict_array(rgb).labels)


def test_server_error_is_shown_and_the_page_recovers(
    page: Any, server_url: str, tmp_path: Path
) -> None:
    text_file = tmp_path / "notes.txt"
    text_file.write_text("this is not an image\n", encoding="utf-8")
    with page.expect_response(lambda r: "/predict" in r.url) as answer:
        page.set_input_files("#file", text_file)
    response = answer.value
    assert 400 <= response.status < 500
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    page.wait_for_selector("body[data-state=error]")
    assert page.is_visible("#error")
    assert detail in page.text_content("#error")
    assert page.is_hidden("#download")
    assert all(item["pixels"] == "" for item in _legend(page))

    # The next good image clears the error.
    image_path = tmp_path / "good.png"
    _photo(image_path)
    page.set_input_files("#file", image_path)
    page.wait_for_selector("body[data-state=done]")
    assert page.is_hidden("#error")
    assert page.is_visible("#download")


def test_api_key_prompt_and_upload_limit(
    browser: Any, predictor: Predictor, tmp_path: Path
) -> None:
    from segflow.serve.app import create_app
    from segflow.serve.settings import ServeSettings

    settings = ServeSettings(api_key="s3cret", max_upload_bytes=4000)
    with _live_server(create_app(predictor, settings)) as url:
        context = browser.new_context(viewport={"width": 1200, "height": 800})
        context.set_default_timeout(20_000)
        page = context.new_page()
        predict_calls: list[str] = []
        uncaught: list[str] = []
        page.on("request", lambda r: predict_calls.append(r.url) if "/predict" in r.url else None)
        page.on("pageerror", lambda exc: uncaught.append(str(exc)))
        try:
            # Without the key /info is refused: the page says so and opens the key field.
            page.goto(url + "/")
            page.wait_for_selector("body[data-state=error]")
            assert "API key" in page.text_content("#error")
            page.fill("#api-key", "s3cret")
            page.press("#api-key", "Enter")
            page.wait_for_selector("body[data-state=ready]")
            assert page.locator("#legend li[data-class-id]").count() == len(CLASSES)

            # A file over the server's limit is refused before uploading anything.
            big = tmp_path / "big.png"
            _photo(big)
            assert big.stat().st_size > 4000
            page.set_input_files("#file", big)
            page.wait_for_selector("body[data-state=error]")
            assert "this server accepts up to" in page.text_content("#error")
            assert predict_calls == []

            # A small one goes through with the key.
            small = tmp_path / "flat.png"
            Image.new("RGB", (40, 30), (90, 120, 60)).save(small)
            page.set_input_files("#file", small)
            page.wait_for_selector("body[data-state=done]")
            assert len(predict_calls) == 1
            counts = [int(item["pixels"]) for item in _legend(page)]
            assert sum(counts) == 40 * 30
            # The key lives in the page's memory only.
            assert page.evaluate("localStorage.length + sessionStorage.length") == 0
            assert uncaught == [], f"uncaught JavaScript errors: {uncaught}"
        finally:
            context.close()
