"""Real bundles behind the app: the mask equals Predictor.predict_array, options, ONNX, binary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from segflow.infer.postprocess import PostProcess
from segflow.infer.predictor import Predictor
from segflow.serve import create_app
from segflow.serve.server import build_app
from tests.export import tiny_bundle
from tests.serve import decode_mask, encode, noise_image

IMAGE = noise_image(80, 112, seed=3)


def _mask(client: TestClient, query: str = "", image: np.ndarray = IMAGE) -> np.ndarray:
    resp = client.post(f"/predict{query}", files={"image": ("x.png", encode(image), "image/png")})
    assert resp.status_code == 200, resp.text
    mask = decode_mask(resp.content)
    assert mask.shape == image.shape[:2]
    return mask


def test_served_mask_equals_predict_array_and_options_match_the_predictor(
    torch_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = Predictor.from_bundles(torch_bundle, backend="torch", device="cpu")
    with TestClient(create_app(served)) as client:
        default = _mask(client)
        reference = Predictor.from_bundles(torch_bundle, backend="torch", device="cpu")
        np.testing.assert_array_equal(default, reference.predict_array(IMAGE).labels)

        # Per-request options must not load anything again.
        import segflow.models.bundle

        def no_reload(*args: object, **kwargs: object) -> None:
            raise AssertionError("the model was loaded again for a request")

        monkeypatch.setattr(segflow.models.bundle, "load_bundle", no_reload)
        monkeypatch.setattr(Predictor, "from_bundles", no_reload)
        query = "?tta=h,v&tile=32&overlap=0.5&min_size=6&fill_holes=c1&keep_largest=c2"
        tuned = _mask(client, query)
        monkeypatch.undo()
        expected = Predictor.from_bundles(
            torch_bundle,
            backend="torch",
            device="cpu",
            tta=["h", "v"],
            tile_size=32,
            overlap=0.5,
            postprocess=PostProcess(min_size={1: 6, 2: 6}, fill_holes=[1], keep_largest=[2]),
        ).predict_array(IMAGE)
        np.testing.assert_array_equal(tuned, expected.labels)
        assert not np.array_equal(tuned, default)  # the options changed something
        # ... and the served predictor kept the bundle's settings.
        np.testing.assert_array_equal(_mask(client), default)
        assert served.members[0].tile == 64 and served.members[0].tta == ()

        summary = client.post(
            "/predict?format=json", files={"image": ("x.png", encode(IMAGE), "image/png")}
        ).json()
        counts = np.bincount(default.ravel(), minlength=3)
        assert [c["pixels"] for c in summary["classes"]] == counts.tolist()
        regions = {f["properties"]["class_id"] for f in summary["polygons"]["features"]}
        assert regions == {c for c in (1, 2) if counts[c]}


def test_onnx_bundle_is_served_with_onnxruntime(onnx_bundle: Path) -> None:
    app = build_app(onnx_bundle)  # what `segflow serve` does: auto measures the ONNX runtimes
    with TestClient(app) as client:
        info = client.get("/info").json()
        assert info["backend"] in ("onnx", "openvino")
        assert info["name"] == "cells"
        assert info["input"]["channels"] == 3 and info["input"]["dtype"] == "uint8"
        assert info["input"]["tile_size"] == 64 and info["input"]["tta"] == []
        assert info["model"]["encoder"] == "tu-resnet10t"
        assert [c["name"] for c in info["classes"]] == ["c0", "c1", "c2"]
        reference = Predictor.from_bundles(onnx_bundle)  # the same (cached) choice
        assert reference.backend_name == info["backend"]
        np.testing.assert_array_equal(_mask(client), reference.predict_array(IMAGE).labels)
        grey = IMAGE[:, :, :1].copy()  # one channel is repeated to the model's three
        np.testing.assert_array_equal(
            _mask(client, image=grey), reference.predict_array(grey).labels
        )


def test_binary_threshold_override(tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path / "fg.segflow", classes=1)
    predictor = Predictor.from_bundles(bundle, backend="torch", device="cpu")
    with TestClient(create_app(predictor)) as client:
        assert client.get("/info").json()["input"]["threshold"] == 0.5
        for cut in (0.3, 0.7):
            expected = Predictor.from_bundles(
                bundle, backend="torch", device="cpu", threshold=cut
            ).predict_array(IMAGE)
            np.testing.assert_array_equal(_mask(client, f"?threshold={cut}"), expected.labels)
        low, high = _mask(client, "?threshold=0.01"), _mask(client, "?threshold=0.99")
        assert low.sum() > high.sum()
