"""OpenVINO backend and ``--backend auto``: masks of a trained bundle, precision, cache, fallback.

The bundle is trained by ``segflow train`` itself (a few epochs on the synthetic shapes dataset),
so it ends with the ONNX export and its bf16 check, as a user's bundle does.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from segflow.data.image_io import read_image
from segflow.data.splits import make_splits
from segflow.errors import UsageError
from segflow.infer import choose
from segflow.infer.predictor import Predictor
from segflow.models.bundle import read_bundle_meta, record_export
from tests.fixtures.synthetic import make_dataset

ROOT = Path(__file__).parents[2]
TINY = ROOT / "tests" / "fixtures" / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """A bundle trained for 12 epochs by `segflow train` (exported to ONNX at the end) + images."""
    from segflow.train.runner import train

    tmp = tmp_path_factory.mktemp("ov")
    ds = make_dataset(tmp / "ds", n=16, size=(96, 128), num_classes=3, seed=1)
    make_splits(ds, val=0.25, test=0.0, seed=0)
    result = train(TINY, data=ds, overrides=[f"train.output={tmp / 'runs'}", "train.epochs=12"])
    bundle = Path(result.bundle)  # type: ignore[union-attr]
    images = [read_image(p) for p in sorted((ds / "images").iterdir())[:6]]
    return bundle, images


@pytest.fixture
def bundle(trained: tuple[Path, list[np.ndarray]], tmp_path: Path) -> Path:
    """A private copy of the trained bundle (tests edit it and its cache)."""
    import shutil

    copy = tmp_path / "m.segflow"
    shutil.copytree(trained[0], copy, ignore=shutil.ignore_patterns(choose.CACHE_FILE))
    return copy


def _labels(bundle: Path, images: list[np.ndarray], **kw: Any) -> np.ndarray:
    predictor = Predictor.from_bundles(bundle, tta=[], **kw)
    return np.stack([predictor.predict_array(im).labels for im in images])


def test_trained_bundle_records_a_bf16_check(trained: tuple[Path, list[np.ndarray]]) -> None:
    check = read_bundle_meta(trained[0]).exports["onnx"].bf16
    assert check is not None and check.min_agreement == 0.995
    assert check.safe == (check.agreement >= 0.995) and "torch-bf16" in check.runtimes
    assert check.inputs == "4 dataset images"  # the run's validation images, not white noise


def test_openvino_f32_is_onnxruntime_up_to_rounding(
    trained: tuple[Path, list[np.ndarray]],
) -> None:
    from segflow.infer.onnx_backend import OnnxBackend
    from segflow.infer.openvino_backend import OpenVinoBackend

    bundle, images = trained
    ov_backend = OpenVinoBackend(bundle, threads=1, precision="f32")
    assert ov_backend.name == "openvino" and ov_backend.device == "CPU"
    batch = np.random.default_rng(0).standard_normal((3, 3, 96, 64), dtype=np.float32)
    expected = OnnxBackend(bundle, threads=1)(batch)
    out = ov_backend(batch)
    assert out.dtype == np.float32 and out.shape == expected.shape == (3, 3, 96, 64)
    np.testing.assert_allclose(out, expected, atol=1e-3 * max(1.0, np.abs(expected).max()))
    with pytest.raises(UsageError, match="expects N x 3 x H x W input, got 3x1x96x64"):
        ov_backend(batch[:, :1])
    ov = _labels(bundle, images, backend="openvino", precision="f32", threads=1)
    ort = _labels(bundle, images, backend="onnx", threads=1)
    assert np.mean(ov == ort) >= 0.9999  # rounding may flip a near-tie pixel, no more
    assert len(np.unique(ort)) == 3  # a trained model: every class is predicted somewhere


def test_openvino_bf16_keeps_995_percent_of_the_masks(
    trained: tuple[Path, list[np.ndarray]],
) -> None:
    bundle, images = trained
    predictor = Predictor.from_bundles(bundle, backend="openvino", precision="bf16")
    assert predictor.backend_name == "openvino" and predictor.precision == "bf16"
    bf16 = _labels(bundle, images, backend="openvino", precision="bf16")
    ort = _labels(bundle, images, backend="onnx")
    assert np.mean(bf16 == ort) >= 0.995


def test_torch_bf16_autocast_on_cpu(trained: tuple[Path, list[np.ndarray]]) -> None:
    bundle, images = trained
    predictor = Predictor.from_bundles(bundle, backend="torch", device="cpu", precision="bf16")
    assert predictor.precision == "bf16" and predictor.members[0].backend.dtype is not None
    f32 = _labels(bundle, images, backend="torch", device="cpu", precision="f32")
    bf16 = _labels(bundle, images, backend="torch", device="cpu", precision="bf16")
    assert np.mean(bf16 == f32) >= 0.995
    batch = np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32)
    a, b = (
        predictor.members[0].backend(batch),
        Predictor.from_bundles(bundle, backend="torch", device="cpu", precision="f32")
        .members[0]
        .backend(batch),
    )
    assert a.dtype == np.float32 and 0 < np.abs(a - b).max() < 0.5  # bf16 really ran


def test_openvino_never_imports_torch(trained: tuple[Path, list[np.ndarray]]) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from segflow.infer.predictor import Predictor
        p = Predictor.from_bundles({str(trained[0])!r}, backend="openvino")
        assert p.predict_array(np.zeros((50, 70, 3), np.uint8)).labels.shape == (50, 70)
        leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        assert not leaked, leaked
        print(p.describe_backends())
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("backend: openvino ")


@pytest.mark.parametrize("flag", ["0", "1"])
def test_precision_auto_follows_the_cpu_and_the_bundle(
    bundle: Path, flag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEGFLOW_CPU_BF16", flag)
    meta = read_bundle_meta(bundle)
    info = meta.exports["onnx"]
    assert info.bf16 is not None
    safe = info.model_copy(update={"bf16": info.bf16.model_copy(update={"safe": True})})
    record_export(bundle, safe)
    choice = Predictor.from_bundles(bundle, backend="openvino").choices[0]
    if flag == "1":
        assert (choice.precision, choice.reason) == (
            "bf16",
            "--backend openvino; bf16: native and safe",
        )
    else:
        assert choice.precision == "f32" and "this CPU has no native bf16" in choice.reason
    # an unsafe bundle never gets bf16 from auto, and says why
    unsafe = safe.model_copy(
        update={"bf16": safe.bf16.model_copy(update={"safe": False, "agreement": 0.98})}  # type: ignore[union-attr]
    )
    record_export(bundle, unsafe)
    for backend in ("openvino", "auto"):
        choice = Predictor.from_bundles(bundle, backend=backend).choices[0]
        assert choice.precision == "f32"
        if flag == "1":
            assert "bf16 unsafe for this bundle: it kept 98.00% of pixel decisions" in choice.reason
    names, _ = choose.candidates(bundle, read_bundle_meta(bundle), "auto")
    assert names == ["onnx-f32", "openvino-f32"]


def test_auto_measures_once_then_caches_until_the_bundle_changes(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    real = choose.measure

    def counted(*args: Any) -> Any:
        calls.append(list(args[3]))
        return real(*args)

    monkeypatch.setattr(choose, "measure", counted)
    first = Predictor.from_bundles(bundle).choices[0]
    assert first.reason.startswith("measured: ") and len(calls) == 1
    assert {"onnx-f32", "openvino-f32"} <= set(calls[0])
    measured = [part.split()[0] for part in first.reason.removeprefix("measured: ").split(", ")]
    assert f"{first.backend}-{first.precision}" == measured[0]  # the fastest, listed first
    again = Predictor.from_bundles(bundle)
    assert again.choices[0].reason.startswith("cached: ") and len(calls) == 1
    assert (again.backend_name, again.precision) == (first.backend, first.precision)
    assert (bundle / choose.CACHE_FILE).is_file()
    # other settings measured apart
    Predictor.from_bundles(bundle, batch_size=2)
    assert len(calls) == 2
    # a new export (another file) invalidates the cached choice
    from segflow.export.onnx import export_onnx

    export_onnx(bundle)
    assert Predictor.from_bundles(bundle).choices[0].reason.startswith("measured: ")
    assert len(calls) == 3


def test_cache_falls_back_to_the_user_cache(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segflow import _io as dataset

    real = dataset.atomic_write_text

    def read_only_bundle(path: Path, text: str) -> None:
        if path.parent == bundle:
            raise OSError(30, "Read-only file system")
        real(path, text)

    monkeypatch.setattr(dataset, "atomic_write_text", read_only_bundle)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Predictor.from_bundles(bundle).choices[0].reason.startswith("measured: ")
    assert not (bundle / choose.CACHE_FILE).exists()
    assert len(list((tmp_path / "xdg" / "segflow" / "backends").glob("*.json"))) == 1
    assert Predictor.from_bundles(bundle).choices[0].reason.startswith("cached: ")


def test_without_openvino_everything_works_with_a_note(
    bundle: Path, trained: tuple[Path, list[np.ndarray]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    choice = Predictor.from_bundles(bundle).choices[0]
    assert (choice.backend, choice.precision) == ("onnx", "f32")
    assert "openvino not installed" in choice.reason
    with pytest.raises(UsageError, match="openvino is not installed"):
        Predictor.from_bundles(bundle, backend="openvino")
    labels = _labels(bundle, trained[1][:2])
    assert labels.shape[0] == 2


def test_cli_predict_prints_the_choice(
    cli: Any, bundle: Path, trained: tuple[Path, list[np.ndarray]], tmp_path: Path
) -> None:
    image = next((trained[0].parents[2] / "ds" / "images").iterdir())
    res = cli("predict", bundle, image, "--out", tmp_path / "out", "--threads", "1")
    assert res.exit_code == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("info: backend: ")]
    assert len(lines) == 1 and "measured: " in lines[0], res.stderr
    res = cli("predict", bundle, image, "--out", tmp_path / "out2", "--threads", "1")
    assert "cached: " in res.stderr
    for args, needle in (
        (["--backend", "onnx", "--precision", "bf16"], "--backend onnx runs f32 only"),
        (["--precision", "f16"], "unknown precision 'f16'; valid: auto, f32, bf16"),
        (["--backend", "tensorrt"], "unknown backend 'tensorrt'; valid: auto, torch, onnx"),
        (["--threads", "0"], "--threads 0: must be at least 1"),
    ):
        bad = cli("predict", bundle, image, "--out", tmp_path / "o3", *args)
        assert bad.exit_code == 2 and needle in bad.stderr, (args, bad.stderr)
    res = cli("eval", bundle, trained[0].parents[2] / "ds", "--split", "val",
              "--backend", "openvino", "--precision", "f32", "--out", tmp_path / "ev")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    import json

    settings = json.loads((tmp_path / "ev" / "metrics.json").read_text())["settings"]
    assert (settings["backend"], settings["precision"]) == ("openvino", "f32")


def test_serve_workers_get_backend_and_precision(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from segflow.serve import server

    monkeypatch.setenv(server.ENV_BUNDLE, str(bundle))
    monkeypatch.setenv(server.ENV_BACKEND, "openvino")
    monkeypatch.setenv(server.ENV_PRECISION, "f32")
    monkeypatch.setenv(server.ENV_THREADS, "1")
    with TestClient(server.app_from_env()) as client:
        assert client.get("/info").json()["backend"] == "openvino"
    monkeypatch.setenv(server.ENV_BACKEND, "onnx")
    monkeypatch.setenv(server.ENV_PRECISION, "bf16")
    with pytest.raises(UsageError, match="--backend onnx runs f32 only"):
        server.app_from_env()
