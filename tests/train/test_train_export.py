"""`segflow train` ends with an ONNX export of the best bundle; a failed export only warns."""

from __future__ import annotations

from pathlib import Path

import pytest

from segflow.models.bundle import read_bundle_meta
from tests.train.test_train_e2e import _dataset, _train


def test_trained_bundle_is_exported_and_bf16_checked(cli, tmp_path: Path) -> None:
    res, run = _train(cli, tmp_path, _dataset(tmp_path))
    assert res.exit_code == 0, res.stderr
    bundle = run / "best.segflow"
    meta = read_bundle_meta(bundle)
    onnx = meta.exports["onnx"]
    assert (bundle / onnx.file).is_file() and onnx.parity.argmax_agreement >= 0.9999
    assert onnx.bf16 is not None and "torch-bf16" in onnx.bf16.runtimes
    assert 0 <= onnx.bf16.agreement <= 1
    assert onnx.bf16.safe == (onnx.bf16.agreement >= onnx.bf16.min_agreement == 0.995)


def test_a_failed_export_is_a_warning(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from segflow.errors import DataError
    from segflow.export import onnx

    def broken(path: object, **_: object) -> None:
        raise DataError(path, "cannot export: unsupported operator Foo")  # type: ignore[arg-type]

    monkeypatch.setattr(onnx, "export_onnx", broken)
    res, run = _train(cli, tmp_path, _dataset(tmp_path))
    assert res.exit_code == 0, res.stderr
    assert "no ONNX export (" in res.stderr and "unsupported operator Foo" in res.stderr
    assert not (run / "best.segflow" / "model.onnx").exists()
    assert read_bundle_meta(run / "best.segflow").exports == {}


def test_relative_tolerance_scales_with_the_logits(tmp_path: Path) -> None:
    import torch

    from segflow.export.onnx import relative_tolerance
    from segflow.models.bundle import load_bundle
    from tests.export import tiny_bundle

    bundle = tiny_bundle(tmp_path / "m.segflow")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 128, 160, generator=torch.Generator().manual_seed(0))[:1]
    with torch.inference_mode():
        scale = float(load_bundle(bundle).model(x).abs().max())
    assert relative_tolerance(bundle) == pytest.approx(1e-4 * max(1.0, scale), rel=1e-5)
    assert relative_tolerance(bundle, base=1e-3) == pytest.approx(1e-3 * max(1.0, scale), rel=1e-5)
