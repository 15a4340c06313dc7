"""Serving overhead: p50 latency of `POST /predict` vs an in-process `Predictor.predict_array`.

Same bundle (SMP Unet-resnet34, 3 classes, seeded random weights, exported to ONNX, tile 512; or a
trained one with ``--bundle``, e.g. the one ``tiled_inference.py --keep DIR`` leaves in
``DIR/bench.segflow``), same 512 x 512 RGB image, same backend and thread count: ``--backend
auto`` on both sides (what ``segflow serve`` does by default; measured once by the in-process side,
then read from the cache by the server, so both run the same backend and precision):

* ``in-process``: `Predictor.predict_array` on the decoded image (what a Python user calls);
* ``HTTP``: `segflow serve` in its own process on loopback, one client sending the PNG as
  multipart (`curl -F image=@photo.png .../predict`) and reading the class-id PNG back -- the
  whole path: upload, multipart parsing, decoding with the pixel check, admission, prediction in
  the worker pool, PNG encoding, response.

Both sides run in fresh processes without torch, stay up together and are timed alternately
(one in-process call, one request, ...), so background load on the machine hits both alike.
Requests are sequential (latency, not throughput), after warm-up. Goal (issue 5): HTTP p50 /
in-process p50 <= 1.2.

    python benchmarks/serve_latency.py [--size 512] [--runs 30] [--encoder resnet34]
                                       [--bundle B.segflow]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from _bench import bench_bundle, disc_image


def _make(work: Path, encoder: str, tile: int, given: Path | None) -> Path:
    """A copy of ``given`` (exported to ONNX when it is not), else an untrained exported bundle."""
    import shutil

    from segflow.export.onnx import export_onnx
    from segflow.models.bundle import read_bundle_meta

    if given is not None:
        bundle = work / "given.segflow"
        shutil.copytree(given, bundle, ignore=shutil.ignore_patterns(".segflow-backend.json"))
        if "onnx" not in read_bundle_meta(bundle).exports:
            export_onnx(bundle)
        return bundle
    bundle = bench_bundle(work, encoder, tile)
    # Untrained BatchNorm statistics give logits near 100; float32 rounding then exceeds the
    # default 1e-4 parity tolerance (relative error ~3e-6), which is irrelevant for timing.
    export_onnx(bundle, tolerance=1e-3)
    return bundle


def _image(size: int) -> np.ndarray:
    """Discs of random colours: structure rather than noise (a realistic PNG size)."""
    return disc_image(size, 60, (5, size // 8), background=30)


def _in_process_child(bundle: Path, image_path: Path) -> None:
    """Child process: one timed predict_array per ``run`` line on stdin, seconds on stdout."""
    from segflow.infer.predictor import Predictor

    image = np.load(image_path)
    predictor = Predictor.from_bundles(bundle, backend="auto")
    np.save(image_path.with_name("labels.npy"), predictor.predict_array(image).labels)
    assert "torch" not in sys.modules, "the ONNX runtimes imported torch"
    print("ready", predictor.describe_backends(), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start = time.perf_counter()
        predictor.predict_array(image)
        print(time.perf_counter() - start, flush=True)


def _wait_for(client, url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            if client.get(f"{url}/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start: {log.read_text()}")
        time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--encoder", default="resnet34")
    parser.add_argument("--bundle", type=Path, help="a trained bundle (copied) instead")
    parser.add_argument("--child", nargs=2, metavar=("BUNDLE", "IMAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _in_process_child(Path(args.child[0]), Path(args.child[1]))
        return

    import cv2

    threads = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="segflow-serve-bench-") as tmp:
        bundle = _make(Path(tmp), args.encoder, args.size, args.bundle)
        image = _image(args.size)
        png = cv2.imencode(".png", image[:, :, ::-1])[1].tobytes()

        image_path = Path(tmp) / "image.npy"
        np.save(image_path, image)
        # The in-process side runs in a fresh process without torch (imported here to build
        # the bundle) and measures the auto choice first; the server then finds it in the cache.
        child = subprocess.Popen(
            [sys.executable, __file__, "--child", str(bundle), str(image_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdin is not None and child.stdout is not None
        ready = child.stdout.readline().strip()
        assert ready.startswith("ready"), ready
        choice = ready.removeprefix("ready ").strip()
        port = _free_port()
        log = Path(tmp) / "server.log"
        segflow = Path(sys.executable).parent / "segflow"
        with log.open("wb") as out:
            server = subprocess.Popen(
                [segflow, "serve", bundle, "--port", str(port), "--backend", "auto"],
                stdout=out,
                stderr=out,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(timeout=120) as client:
                _wait_for(client, url, server, log)

                def local() -> float:
                    child.stdin.write("run\n")
                    child.stdin.flush()
                    return float(child.stdout.readline())

                def served() -> float:
                    start = time.perf_counter()
                    resp = client.post(
                        f"{url}/predict", files={"image": ("bench.png", png, "image/png")}
                    )
                    resp.raise_for_status()
                    return time.perf_counter() - start

                for _ in range(args.warmup):
                    local(), served()
                pairs = [(local(), served()) for _ in range(args.runs)]
                resp = client.post(f"{url}/predict", files={"image": ("b.png", png, "image/png")})
                mask = cv2.imdecode(np.frombuffer(resp.content, np.uint8), cv2.IMREAD_UNCHANGED)
                backend = client.get(f"{url}/info").json()["backend"]
        finally:
            child.stdin.close()
            child.wait(timeout=30)
            server.terminate()
            server.wait(timeout=30)
        reference = np.load(image_path.with_name("labels.npy"))
        from segflow.models.bundle import read_bundle_meta

        meta = read_bundle_meta(bundle)
    local_p50 = statistics.median(t for t, _ in pairs)
    served_p50 = statistics.median(t for _, t in pairs)
    same = bool(np.array_equal(mask, reference))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {threads} threads")
    print(
        f"image {args.size}x{args.size} RGB PNG ({len(png) / 1024:.0f} kB), {meta.arch}-{meta.encoder}, "
        f"tile {meta.inference.tile_size}, served backend {backend}, {args.runs} runs after "
        f"{args.warmup} warm-up"
    )
    print(f"in-process {choice}")
    print(f"in-process Predictor.predict_array  p50 {local_p50 * 1000:8.1f} ms")
    print(f"HTTP POST /predict (loopback)       p50 {served_p50 * 1000:8.1f} ms")
    print(f"HTTP / in-process: {served_p50 / local_p50:.3f}  (goal <= 1.2)")
    print(f"served mask identical to the in-process one: {same}")


if __name__ == "__main__":
    main()
