"""ONNX and TorchScript exports: written into the bundle only after parity, recorded in bundle.yaml."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from segflow.errors import DataError, UsageError
from segflow.export import onnx as onnx_export
from segflow.export import torchscript as ts_export
from segflow.export.onnx import export_onnx, onnx_runner
from segflow.export.torchscript import export_torchscript, load_torchscript
from segflow.export.verify import check_parity
from segflow.models.bundle import (
    BundleMeta,
    ExportInfo,
    load_bundle,
    read_bundle_meta,
    save_bundle,
)
from tests.export import SHAPES, tiny_bundle

# Sizes the exported files are run at after the export: other sizes and batches than checked.
RUN_AT = [(1, 32, 96), (3, 96, 32), (3, 128, 160)]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _eager(bundle: Path, x: np.ndarray) -> np.ndarray:
    model = load_bundle(bundle).model
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return tiny_bundle(tmp_path / "m.segflow")


# ------------------------------------------------------------------------------------------------
# ONNX


def test_onnx_export_is_verified_recorded_and_dynamic(bundle: Path) -> None:
    weights = bundle / "weights.safetensors"
    weights_sha = _sha(weights)

    info = export_onnx(bundle, shapes=SHAPES)

    file = bundle / "model.onnx"
    assert info.file == "model.onnx" and file.is_file()
    assert info.sha256 == _sha(file)
    assert info.exporter == "torch.onnx legacy (TorchScript-based)"  # the measured default
    assert info.opset == 20 and info.dynamic_axes == ["batch", "height", "width"]
    assert info.parity.max_abs_diff <= info.parity.tolerance == 1e-4
    assert info.parity.argmax_agreement >= info.parity.min_agreement == 0.9999
    assert info.parity.inputs == [[b, 3, h, w] for b, h, w in SHAPES]
    assert _leftovers(bundle) == []
    # bundle.yaml lists it; the weights are untouched; the bundle still loads.
    meta = read_bundle_meta(bundle)
    assert meta.exports == {"onnx": info}
    assert _sha(weights) == weights_sha == meta.weights_sha256
    assert load_bundle(bundle).meta.exports["onnx"].sha256 == info.sha256
    # the graph: image -> logits, batch/height/width symbolic.
    graph = onnx.load(str(file)).graph
    assert [i.name for i in graph.input] == ["image"]
    assert [o.name for o in graph.output] == ["logits"]
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    # other batch sizes and sizes than those checked
    run = onnx_runner(file)
    rng = np.random.default_rng(1)
    for b, h, w in RUN_AT:
        x = rng.standard_normal((b, 3, h, w), dtype=np.float32)
        out = run(x)
        assert out.shape == (b, 3, h, w)
        np.testing.assert_allclose(out, _eager(bundle, x), atol=1e-4, rtol=0)


def test_onnx_opset_is_chosen_and_recorded(bundle: Path) -> None:
    info = export_onnx(bundle, opset=17, shapes=SHAPES[:1])
    assert info.opset == 17
    model = onnx.load(str(bundle / "model.onnx"))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]


def test_a_binary_bundle_exports_with_threshold_agreement(tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path / "b.segflow", classes=1)
    info = export_onnx(bundle, shapes=SHAPES)
    ts = export_torchscript(bundle, shapes=SHAPES)
    assert read_bundle_meta(bundle).task == "binary"
    for parity in (info.parity, ts.parity):
        assert parity.max_abs_diff <= 1e-4 and parity.argmax_agreement >= 0.9999
        assert parity.inputs[0] == [2, 3, 64, 96]


def test_parity_failure_raises_and_leaves_the_bundle_as_it_was(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export_onnx(bundle, shapes=SHAPES)  # a good earlier export must survive a failed one
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    real = onnx_export.onnx_runner

    def noisy(path: Path, threads: int | None = None):
        run = real(path, threads)
        return lambda x: run(x) + np.float32(3.2e-3)

    monkeypatch.setattr(onnx_export, "onnx_runner", noisy)
    with pytest.raises(DataError) as err:
        export_onnx(bundle, exporter="legacy", shapes=SHAPES)
    message = str(err.value)
    assert message.startswith(
        f"{bundle}: ONNX export does not match PyTorch: max |logit diff| 3.2e-3 > 1e-4 "
        "at 2x3x64x96 (logits up to "
    )
    assert "raise --tolerance); file not written" in message and "\n" not in message
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before  # no temp file either


def test_auto_tries_the_dynamo_exporter_when_the_legacy_one_fails(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("Unsupported: ONNX export of operator adaptive_avg_pool2d\nmore")

    legacy = onnx_export._EXPORT["legacy"]
    monkeypatch.setitem(onnx_export._EXPORT, "legacy", broken)
    monkeypatch.setattr(onnx_export, "_has_onnxscript", lambda: False)
    with pytest.raises(DataError) as err:
        export_onnx(bundle, shapes=SHAPES)
    assert str(err.value) == (
        f"{bundle}: ONNX export failed with every exporter: legacy exporter: cannot export: "
        "Unsupported: ONNX export of operator adaptive_avg_pool2d; dynamo exporter: needs "
        "onnxscript (pip install onnxscript); no file written"
    )
    assert not (bundle / "model.onnx").exists() and read_bundle_meta(bundle).exports == {}

    # With onnxscript, auto falls through to dynamo (stood in for by the legacy exporter here,
    # since onnxscript is not a segflow dependency).
    monkeypatch.setattr(onnx_export, "_has_onnxscript", lambda: True)
    monkeypatch.setitem(onnx_export._EXPORT, "dynamo", legacy)
    info = export_onnx(bundle, shapes=SHAPES)
    assert info.exporter == "torch.onnx dynamo"
    assert read_bundle_meta(bundle).exports["onnx"].exporter == "torch.onnx dynamo"


def test_what_torch_prints_natively_goes_to_the_debug_log(capfd, caplog) -> None:
    # The legacy exporter prints its whole IR graph from C++ when it fails (see onnx.py).
    import logging
    import os

    with caplog.at_level(logging.DEBUG, logger="segflow.export"):
        with onnx_export._native_output_to_log():
            os.write(1, b"Torch IR graph at exception: graph(...)\n")
            os.write(2, b"more noise\n")
        print("after")
    out, err = capfd.readouterr()
    assert (out, err) == ("after\n", "")
    assert "Torch IR graph at exception" in caplog.text and "more noise" in caplog.text


def test_onnx_option_errors(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        UsageError, match="unknown ONNX exporter 'jit'; valid: auto, legacy, dynamo"
    ):
        export_onnx(bundle, exporter="jit")
    with pytest.raises(UsageError, match="opset 5 is too old"):
        export_onnx(bundle, opset=5)
    monkeypatch.setattr(onnx_export, "_has_onnxscript", lambda: False)
    with pytest.raises(UsageError, match="dynamo ONNX exporter needs onnxscript"):
        export_onnx(bundle, exporter="dynamo")
    with pytest.raises(DataError, match="no such bundle folder"):
        export_onnx(bundle.parent / "nope.segflow")


def test_the_dynamo_exporter_when_onnxscript_is_installed(bundle: Path) -> None:
    pytest.importorskip("onnxscript")
    info = export_onnx(bundle, exporter="dynamo", shapes=SHAPES)
    assert info.exporter == "torch.onnx dynamo" and info.parity.max_abs_diff <= 1e-4


# ------------------------------------------------------------------------------------------------
# TorchScript


def test_torchscript_export_is_verified_recorded_and_dynamic(bundle: Path) -> None:
    onnx_info = export_onnx(bundle, shapes=SHAPES)
    info = export_torchscript(bundle, shapes=SHAPES)

    file = bundle / "model.ts"
    assert info.file == "model.ts" and info.sha256 == _sha(file)
    assert info.format == "torchscript" and info.opset is None
    assert info.exporter == "torch.jit.trace"
    assert info.parity.max_abs_diff <= 1e-4 and len(info.parity.inputs) == 3
    assert read_bundle_meta(bundle).exports == {"onnx": onnx_info, "torchscript": info}
    assert _leftovers(bundle) == []
    module = load_torchscript(file)
    rng = np.random.default_rng(2)
    for b, h, w in RUN_AT:
        x = rng.standard_normal((b, 3, h, w), dtype=np.float32)
        with torch.no_grad():
            out = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(out, _eager(bundle, x), atol=1e-4, rtol=0)


def test_torchscript_parity_failure_tries_script_then_raises(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    real = ts_export._runner
    monkeypatch.setattr(ts_export, "_runner", lambda path: lambda x: real(path)(x) * 1.5)
    with pytest.raises(DataError) as err:
        export_torchscript(bundle, shapes=SHAPES)
    message = str(err.value)
    assert message.startswith(
        f"{bundle}: TorchScript export failed: torch.jit.trace: TorchScript export does not "
        "match PyTorch: max |logit diff|"
    )
    assert "; torch.jit.script: " in message and message.endswith("; no file written")
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before


# ------------------------------------------------------------------------------------------------
# bundle.yaml


def test_saving_a_bundle_again_drops_its_exports(bundle: Path) -> None:
    export_onnx(bundle, shapes=SHAPES[:1])
    loaded = load_bundle(bundle)
    assert "onnx" in loaded.meta.exports
    save_bundle(bundle, loaded.model, loaded.meta)  # e.g. after fine-tuning
    assert read_bundle_meta(bundle).exports == {}
    assert sorted(p.name for p in bundle.iterdir()) == ["bundle.yaml", "weights.safetensors"]


def test_export_info_is_validated(bundle: Path) -> None:
    info = export_onnx(bundle, shapes=SHAPES[:1])
    data = info.model_dump()
    for bad in ("../model.onnx", "sub/model.onnx", "bundle.yaml", "weights.safetensors"):
        with pytest.raises(ValueError, match="file"):
            ExportInfo.model_validate({**data, "file": bad})
    meta = read_bundle_meta(bundle).model_dump()
    with pytest.raises(ValueError, match=r"exports\.torchscript holds a onnx export"):
        BundleMeta.model_validate({**meta, "exports": {"torchscript": data}})
    (bundle / "bundle.yaml").write_text(
        (bundle / "bundle.yaml").read_text().replace("sha256: " + info.sha256, "sha256: abc")
    )
    with pytest.raises(DataError, match=r"exports\.onnx\.sha256"):
        read_bundle_meta(bundle)


# ------------------------------------------------------------------------------------------------
# check_parity on its own


def _logits(seed: int, classes: int = 3):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((classes, 3)).astype(np.float32)
    return lambda x: np.einsum("kc,nchw->nkhw", weight, x)


def test_check_parity_passes_and_reports_the_worst_figures() -> None:
    fn = _logits(0)
    parity = check_parity(fn, lambda x: fn(x) + 1e-5, [(1, 8, 12), (2, 4, 4)], 3, seed=0)
    assert parity.max_abs_diff == pytest.approx(1e-5, rel=1e-2)
    assert parity.argmax_agreement == 1.0 and parity.inputs == [[1, 3, 8, 12], [2, 3, 4, 4]]


def test_check_parity_fails_on_decisions_and_broken_exports() -> None:
    fn = _logits(0)
    swapped = lambda x: fn(x)[:, ::-1]  # noqa: E731
    with pytest.raises(
        DataError, match=r"agrees on .*% of pixels < 99.9900% \(most differ at 1x3x8x8\)"
    ):
        check_parity(fn, swapped, [(1, 4, 4), (1, 8, 8)], 3, tolerance=100.0, label="ONNX export")

    def boom(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("Reshape node failed\ndetails")

    with pytest.raises(DataError, match=r"x fails at 1x3x8x8 \(Reshape node failed\); file not"):
        check_parity(fn, boom, [(1, 8, 8)], 3, label="x")
    with pytest.raises(DataError, match="gives logits of shape 1x3x4x8, PyTorch 1x3x8x8"):
        check_parity(fn, lambda x: fn(x)[:, :, :4], [(1, 8, 8)], 3)
    with pytest.raises(DataError, match=r"max \|logit diff\| nan"):
        check_parity(fn, lambda x: fn(x) * np.nan, [(1, 8, 8)], 3)
    with pytest.raises(DataError, match="PyTorch cannot run the network at 1x3x8x8"):
        check_parity(boom, fn, [(1, 8, 8)], 3)


def test_check_parity_counts_agreement_over_every_pixel_tested() -> None:
    def binary(x: np.ndarray) -> np.ndarray:
        return x[:, :1]

    # Every binary logit flips sign: the decision (logit > 0) disagrees everywhere.
    with pytest.raises(DataError, match=r"agrees on 0.0000% of pixels"):
        check_parity(binary, lambda x: -binary(x), [(1, 8, 8)], 3, tolerance=10.0)

    # One flipped pixel at batch 1 (64 pixels), none at batch 2 (128 pixels): 191/192 agree,
    # enough for agreement=0.99, not for 0.999; the message names where the flips are.
    def one_flip(x: np.ndarray) -> np.ndarray:
        out = binary(x).copy()
        if out.shape[0] == 1:
            out[0, 0, 0, 0] = -out[0, 0, 0, 0]
        return out

    shapes = [(2, 8, 8), (1, 8, 8)]
    parity = check_parity(binary, one_flip, shapes, 3, tolerance=10.0, agreement=0.99)
    assert parity.argmax_agreement == 191 / 192 and parity.min_agreement == 0.99
    with pytest.raises(
        DataError, match=r"agrees on 99.4792% of pixels < 99.9000% \(most differ at 1x3x8x8\)"
    ):
        check_parity(binary, one_flip, shapes, 3, tolerance=10.0, agreement=0.999)


# ------------------------------------------------------------------------------------------------
# CLI


def test_cli_exports_a_bundle(bundle: Path, cli) -> None:
    res = cli("export", bundle, "--format", "onnx")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"wrote {bundle / 'model.onnx'} (")
    assert lines[0].endswith("MB, torch.onnx legacy (TorchScript-based), opset 20)")
    assert lines[1].startswith("parity with PyTorch: max |logit diff| ")
    assert "at 2x3x128x160, 1x3x160x224, 3x3x224x128" in lines[1]  # the default shapes
    res = cli("export", bundle, "--format", "torchscript", "--tolerance", "1e-3")
    assert res.exit_code == 0, res.stderr
    assert res.stdout.startswith(f"wrote {bundle / 'model.ts'} (")
    exports = read_bundle_meta(bundle).exports
    assert sorted(exports) == ["onnx", "torchscript"]
    assert exports["torchscript"].parity.tolerance == 1e-3


def test_cli_export_errors(bundle: Path, tmp_path: Path, cli) -> None:
    def error(*args: object) -> str:
        res = cli("export", *args)
        assert res.exit_code == 2, (args, res.stdout, res.stderr)
        return res.stderr

    assert error(bundle) == (
        "error: --format is required to export a bundle: onnx or torchscript\n"
    )
    assert "unknown model export format 'onx' (did you mean onnx?)" in error(
        bundle, "--format", "onx"
    )
    assert "--opset and --exporter apply to --format onnx only" in error(
        bundle, "--format", "torchscript", "--opset", "17"
    )
    assert "unknown ONNX exporter 'fast'" in error(bundle, "--format", "onnx", "--exporter", "fast")
    assert "takes no further paths" in error(bundle, tmp_path / "x.onnx", "--format", "onnx")
    assert error("tflite", tmp_path, tmp_path / "x") == (
        "error: unknown export target 'tflite': give a bundle folder (NAME.segflow) or a "
        "dataset format (coco)\n"
    )
    assert "--format, --opset and --exporter are for bundles" in error(
        "coco", tmp_path, tmp_path / "x.json", "--format", "onnx"
    )
    missing = cli("export", tmp_path / "nope.segflow", "--format", "onnx")
    assert missing.exit_code == 1 and "no such bundle folder" in missing.stderr
    assert read_bundle_meta(bundle).exports == {}
