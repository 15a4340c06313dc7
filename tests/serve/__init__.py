"""Serving tests: fake predictors, crafted images (truncated, bombs), a real server subprocess."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import httpx
import numpy as np

from segflow.data.dataset import make_classes
from segflow.infer.predictor import Prediction

BIN = Path(sys.executable).parent


class FakePredictor:
    """Duck-typed predictor: class = first channel // 86 (0, 1 or 2), counts its calls."""

    task = "multiclass"
    backend_name = "fake"

    def __init__(self) -> None:
        self.classes = make_classes(["background", "cell", "edge"])
        self.calls = 0
        self.threshold = 0.5

    def predict_array(self, image: np.ndarray, *, stem: str = "") -> Prediction:
        self.calls += 1
        labels = (image[:, :, 0].astype(np.int32) // 86).astype(np.uint8)
        return Prediction(labels, None, stem)


class SlowPredictor(FakePredictor):
    """Blocks in predict_array until released: to fill the server's slots on purpose."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Semaphore(0)
        self.release = threading.Event()

    def predict_array(self, image: np.ndarray, *, stem: str = "") -> Prediction:
        self.started.release()
        assert self.release.wait(30), "the test never released the slow predictor"
        return super().predict_array(image, stem=stem)


def gradient_image(height: int = 48, width: int = 64) -> np.ndarray:
    """RGB uint8 whose first channel spans 0..255 left to right (all three fake classes)."""
    ramp = np.linspace(0, 255, width, dtype=np.float32).astype(np.uint8)
    image = np.zeros((height, width, 3), np.uint8)
    image[:, :, 0] = ramp[None, :]
    image[:, :, 1] = np.arange(height, dtype=np.uint8)[:, None] * 3
    return image


def noise_image(height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    """Image bytes in ``ext`` (RGB input)."""
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(image[:, :, ::-1]))
    assert ok
    return buf.tobytes()


def decode_mask(data: bytes) -> np.ndarray:
    """A returned mask (PNG or WebP) as an array, unchanged."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert arr is not None, "not an image"
    return arr


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking 8-bit RGB PNG header declaring ``width x height``, with one tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def tiff_declaring(width: int, height: int) -> bytes:
    """A little-endian grey uint8 TIFF whose IFD declares ``width x height`` (one tiny strip)."""
    entries = [
        (256, 4, 1, width),  # ImageWidth, LONG
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample, SHORT
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: min-is-black
        (273, 4, 1, 8),  # StripOffsets: right after the header
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 16),  # StripByteCounts
    ]
    data = b"\x00" * 16
    ifd_offset = 8 + len(data)
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        packed = struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", ifd_offset) + data + ifd


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@contextmanager
def serving(bundle: Path, *args: str, log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``segflow serve BUNDLE`` on a free loopback port; yields (base URL, process), then stops it."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "segflow"), "serve", str(bundle), "--port", str(port), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}: {log.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server not up after 90 s: {log.read_text()}")
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
