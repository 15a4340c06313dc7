"""`segflow serve` as a real process on loopback: curl, load with malformed requests, memory."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serve import (
    BIN,
    decode_mask,
    encode,
    noise_image,
    png_declaring,
    rss_bytes,
    serving,
)

pytestmark = pytest.mark.slow

UPLOAD_LIMIT_MB = 0.1  # ~105 kB: the oversize case stays cheap


def test_curl_against_segflow_serve(onnx_bundle: Path, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(encode(noise_image(72, 100, seed=5)))
    with serving(onnx_bundle, log=tmp_path / "server.log") as (url, _):
        mask = tmp_path / "mask.png"
        if shutil.which("curl"):
            # The exact call from the documentation (only the port differs).
            subprocess.run(
                ["curl", "-sS", "-f", "-F", f"image=@{photo}", f"{url}/predict", "-o", str(mask)],
                check=True,
                cwd=tmp_path,
                timeout=60,
            )
        else:  # same multipart request without curl
            with photo.open("rb") as fh:
                resp = httpx.post(f"{url}/predict", files={"image": fh}, timeout=60)
            assert resp.status_code == 200, resp.text
            mask.write_bytes(resp.content)
        labels = decode_mask(mask.read_bytes())
        assert labels.shape == (72, 100) and labels.dtype == np.uint8
        assert set(np.unique(labels)) <= {0, 1, 2}
        info = httpx.get(f"{url}/info", timeout=10).json()
        assert info["backend"] in ("onnx", "openvino") and info["name"] == "cells"
    log = (tmp_path / "server.log").read_text()
    assert "info: serving cells (multiclass) at http://127.0.0.1:" in log
    assert f"; backend {info['backend']} " in log  # which backend + precision, and why


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    res = subprocess.run(
        [str(BIN / "segflow"), "serve", str(tmp_path / "missing.segflow")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1
    assert "no such bundle folder" in res.stderr


def test_port_in_use_and_bad_limits_are_one_line_errors(onnx_bundle: Path, tmp_path: Path) -> None:
    with serving(onnx_bundle, log=tmp_path / "server.log") as (url, _):
        port = url.rsplit(":", 1)[1]
        res = subprocess.run(
            [str(BIN / "segflow"), "serve", str(onnx_bundle), "--port", port],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 2, res.stderr
        assert res.stderr.strip().splitlines() == [res.stderr.strip()]
        assert f"cannot listen on 127.0.0.1:{port}" in res.stderr
    res = subprocess.run(
        [str(BIN / "segflow"), "serve", str(onnx_bundle), "--max-concurrency", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and res.stderr.startswith("error: --max-concurrency:"), res.stderr


def _malformed(i: int, big: bytes, good: bytes) -> dict:
    kinds = [
        {},  # no file
        {"files": {"file": ("a.png", good, "image/png")}},  # wrong field
        {"files": {"image": ("a.txt", b"just some text\n" * 20, "text/plain")}},
        {"files": {"image": ("a.png", good[: len(good) // 2], "image/png")}},  # truncated
        {"files": {"image": ("bomb.png", png_declaring(100_000, 100_000), "image/png")}},
        {"files": {"image": ("big.png", big, "image/png")}},  # over the upload limit
        {"files": {"image": ("a.png", good, "image/png")}, "params": {"format": "gif"}},
    ]
    return kinds[i % len(kinds)]


@pytest.mark.timeout(240)
def test_load_500_requests_16_clients_10_percent_malformed(
    onnx_bundle: Path, tmp_path: Path
) -> None:
    images = [encode(noise_image(64, 64, seed=s)) for s in range(8)]
    big = encode(noise_image(220, 220, seed=9))
    assert len(big) > UPLOAD_LIMIT_MB * 2**20
    local = threading.local()
    clients: list[httpx.Client] = []

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=httpx.Timeout(60.0))
            clients.append(local.client)
        return local.client

    def request(i: int) -> tuple[bool, int, float]:
        bad = i % 10 == 9
        kwargs = (
            _malformed(i // 10, big, images[0])
            if bad
            else {"files": {"image": (f"{i}.png", images[i % len(images)], "image/png")}}
        )
        start = time.perf_counter()
        try:
            status = client().post(f"{url}/predict", **kwargs).status_code
        except httpx.TransportError:
            status = -1
        return bad, status, time.perf_counter() - start

    with (
        serving(
            onnx_bundle, "--max-upload-mb", str(UPLOAD_LIMIT_MB), log=tmp_path / "server.log"
        ) as (url, proc),
        ThreadPoolExecutor(16) as pool,
    ):
        try:
            warm = list(pool.map(request, range(64)))
            assert all(status == 200 for bad, status, _ in warm if not bad), warm
            rss_warm = rss_bytes(proc.pid)
            start = time.perf_counter()
            results = list(pool.map(request, range(500)))
            wall = time.perf_counter() - start
            rss_after = rss_bytes(proc.pid)
            assert httpx.get(f"{url}/health", timeout=10).status_code == 200
            assert proc.poll() is None
        finally:
            for c in clients:
                c.close()
    good = [(s, t) for bad, s, t in results if not bad]
    bad = [(s, t) for is_bad, s, t in results if is_bad]
    assert len(bad) == 50
    assert [s for s, _ in good] == [200] * 450
    statuses = sorted({s for s, _ in bad})
    assert all(400 <= s < 500 for s in statuses), statuses
    assert {413, 415, 422} <= set(statuses)
    latencies = sorted(t for _, t in good)
    p50 = statistics.median(latencies)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    print(
        f"\nload: 500 requests (450 valid 64x64 PNG, 50 malformed), 16 clients, "
        f"{wall:.1f} s, {500 / wall:.0f} req/s; valid p50 {p50 * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms; server RSS {rss_warm / 2**20:.0f} MiB after warm-up, "
        f"{rss_after / 2**20:.0f} MiB after the run; malformed got {statuses}"
    )
    assert rss_after <= 2 * rss_warm
