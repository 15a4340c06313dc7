"""OnnxBackend: same logits as TorchBackend, never imports torch, refuses an edited model.onnx."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from segflow.errors import DataError, UsageError
from segflow.export.onnx import export_onnx
from segflow.infer import onnx_backend
from segflow.infer.backends import TorchBackend
from segflow.infer.onnx_backend import OnnxBackend
from segflow.models.bundle import load_bundle
from tests.export import SHAPES, tiny_bundle

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = tiny_bundle(tmp_path_factory.mktemp("onnx") / "m.segflow")
    export_onnx(bundle, shapes=SHAPES)
    return bundle


def test_same_logits_as_the_torch_backend(exported: Path) -> None:
    backend = OnnxBackend(exported, threads=1)
    assert backend.name == "onnx" and backend.providers == ["CPUExecutionProvider"]
    batch = np.random.default_rng(0).standard_normal((3, 3, 96, 64), dtype=np.float32)
    out = backend(batch)
    expected = TorchBackend(load_bundle(exported), device="cpu")(batch)
    assert out.dtype == np.float32 and out.shape == (3, 3, 96, 64)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)
    with pytest.raises(UsageError, match="expects N x 3 x H x W input, got 3x1x96x64"):
        backend(batch[:, :1])


def test_runs_without_importing_torch(exported: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from segflow.infer.onnx_backend import OnnxBackend
        backend = OnnxBackend({str(exported)!r})
        out = backend(np.zeros((2, 3, 64, 96), np.float32))
        assert out.shape == (2, 3, 64, 96), out.shape
        leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        assert not leaked, leaked
        print("ok")
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "ok"


def test_an_edited_or_missing_export_is_refused(tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path / "m.segflow")
    with pytest.raises(
        DataError, match=r"no onnx export listed; run `segflow export .*--format onnx"
    ):
        OnnxBackend(bundle)
    export_onnx(bundle, shapes=SHAPES[:1])
    model = bundle / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(DataError, match=r"model\.onnx does not match bundle\.yaml"):
        OnnxBackend(bundle)
    model.unlink()
    with pytest.raises(DataError, match=r"model\.onnx: missing"):
        OnnxBackend(bundle)


def test_providers(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="onnxruntime has no provider NoSuchExecutionProvider"):
        OnnxBackend(exported, providers=["NoSuchExecutionProvider"])
    with pytest.raises(UsageError, match="threads must be >= 1"):
        OnnxBackend(exported, threads=0)
    import onnxruntime

    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    assert onnx_backend.default_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
