"""The model bundle: round trip, atomic replace, integrity, validation, no pickle anywhere."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from pydantic import ValidationError
from safetensors.torch import load_file

from segflow.errors import DataError, UsageError
from segflow.models.bundle import (
    BundleMeta,
    load_bundle,
    read_bundle_meta,
    read_bundle_weights,
    save_bundle,
)
from segflow.models.factory import create_model
from tests.models import make_meta

KW: dict[str, Any] = {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}


def small(seed: int = 0, classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("Unet", "resnet18", in_channels=3, classes=classes, **KW).eval()


def meta(classes: int = 3, **kw: Any) -> BundleMeta:
    return make_meta(out_channels=classes, model_kwargs=KW, **kw)


def outputs(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(123)
    with torch.no_grad():
        return model(torch.rand(1, 3, 32, 32))


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return save_bundle(tmp_path / "m.segflow", small(), meta())


def edit_yaml(bundle: Path, **changes: Any) -> None:
    path = bundle / "bundle.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# Round trip


def test_round_trip(tmp_path: Path) -> None:
    model = small()
    path = save_bundle(tmp_path / "m.segflow", model, meta())
    assert sorted(p.name for p in path.iterdir()) == ["bundle.yaml", "weights.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.segflow"]  # no temporary leftovers

    text = (path / "bundle.yaml").read_text(encoding="utf-8")
    assert "arch: Unet\n" in text and "encoder: resnet18\n" in text
    assert "color: [0, 0, 0]" in text and "mean: [0.5, 0.5, 0.5]" in text  # readable
    assert "!!python" not in text

    loaded = load_bundle(path)
    digest = hashlib.sha256((path / "weights.safetensors").read_bytes()).hexdigest()
    assert loaded.meta.weights_sha256 == digest
    assert loaded.meta.model_dump(exclude={"weights_sha256"}) == meta().model_dump(
        exclude={"weights_sha256", "created_at"}
    ) | {"created_at": loaded.meta.created_at}
    assert loaded.path == path and not loaded.model.training
    torch.testing.assert_close(outputs(loaded.model), outputs(model), atol=0, rtol=0)
    assert read_bundle_meta(path) == loaded.meta
    assert read_bundle_meta(path / "bundle.yaml") == loaded.meta


def test_read_meta_does_not_need_the_weights(bundle: Path) -> None:
    (bundle / "weights.safetensors").unlink()
    assert read_bundle_meta(bundle).arch == "Unet"


def test_tensors_sharing_memory_are_saved(tmp_path: Path) -> None:
    model = small()
    weight = model.segmentation_head[0].weight
    model.register_buffer("alias", weight.data)  # same storage
    model.register_buffer("row", weight.data[1])  # a view into it
    path = save_bundle(tmp_path / "m.segflow", model, meta())
    saved = load_file(path / "weights.safetensors")
    assert torch.equal(saved["alias"], weight) and torch.equal(saved["row"], weight[1])
    # The extra buffers are not part of a fresh Unet: loading says which tensor does not fit.
    with pytest.raises(DataError, match=r"weights do not fit Unet/resnet18 \(unexpected 'alias'\)"):
        load_bundle(path)


# ------------------------------------------------------------------------------------------------
# Saving: atomic, checked


def test_failed_save_leaves_the_old_bundle(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    before = outputs(load_bundle(bundle).model)

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_bundle(bundle, small(seed=1), meta())
    assert [p.name for p in bundle.parent.iterdir()] == ["m.segflow"]
    torch.testing.assert_close(outputs(load_bundle(bundle).model), before, atol=0, rtol=0)


def test_save_replaces_an_existing_bundle(bundle: Path) -> None:
    (bundle / "model.onnx").write_bytes(b"stale export")
    new = small(seed=1, classes=2)
    save_bundle(bundle, new, meta(classes=2, name="v2"))
    assert [p.name for p in bundle.parent.iterdir()] == ["m.segflow"]
    assert not (bundle / "model.onnx").exists()  # exports of the old model go with it
    loaded = load_bundle(bundle)
    assert loaded.meta.name == "v2"
    torch.testing.assert_close(outputs(loaded.model), outputs(new), atol=0, rtol=0)


def test_save_checks_the_path_and_the_meta(tmp_path: Path) -> None:
    model = small()
    with pytest.raises(UsageError, match=r"must end with \.segflow"):
        save_bundle(tmp_path / "model", model, meta())
    (tmp_path / "data.segflow").mkdir()
    (tmp_path / "data.segflow" / "precious.txt").write_text("keep me")
    with pytest.raises(
        UsageError, match="exists and is not a segflow bundle; refusing to replace it"
    ):
        save_bundle(tmp_path / "data.segflow", model, meta())
    assert (tmp_path / "data.segflow" / "precious.txt").exists()
    with pytest.raises(
        UsageError, match=r"meta\.encoder is 'resnet34' but the model has 'resnet18'"
    ):
        save_bundle(tmp_path / "m.segflow", model, meta(encoder="resnet34"))
    with pytest.raises(UsageError, match=r"meta\.out_channels is 1 but the model has 3"):
        save_bundle(tmp_path / "m.segflow", model, meta(classes=1))
    with pytest.raises(UsageError, match=r"parent folder .* does not exist"):
        save_bundle(tmp_path / "missing" / "m.segflow", model, meta())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"out_channels": 2}, "out_channels is 2; a multiclass task needs 3"),
        ({"task": "binary"}, "a binary bundle has 2 classes"),
        ({"normalization": {"scale": 255, "mean": [0.5], "std": [0.2]}}, "need 3 values"),
        (
            {"normalization": {"scale": 255, "mean": [0] * 3, "std": [0, 1, 1]}},
            "std values must be > 0",
        ),
        ({"weights_file": "../evil.safetensors"}, "weights_file"),
        ({"weights_file": "weights.pt"}, "weights_file"),
        ({"arch": "Unett"}, "unknown architecture 'Unett' (did you mean Unet"),
        ({"input_dtype": "uint9"}, "not a numpy dtype name"),
        ({"preprocess": {"clahe": "maybe"}}, "clahe"),
        ({"inference": {"tile_size": 64, "overlap": 0.95}}, "overlap"),
        ({"surprise": 1}, "Extra inputs are not permitted"),
    ],
)
def test_meta_validation(change: dict[str, Any], message: str) -> None:
    data = meta().model_dump(mode="json") | change
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        BundleMeta.model_validate(data)


def test_class_ids_must_be_dense() -> None:
    data = meta().model_dump(mode="json")
    data["classes"][2]["id"] = 5
    with pytest.raises(ValidationError, match=r"class ids must be 0..2 in order, got \[0, 1, 5\]"):
        BundleMeta.model_validate(data)


# ------------------------------------------------------------------------------------------------
# Loading broken bundles: DataError naming the file


def test_edited_weights_are_detected(bundle: Path) -> None:
    weights = bundle / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(DataError) as info:
        load_bundle(bundle)
    assert str(info.value) == (
        f"{weights}: weights.safetensors does not match bundle.yaml (corrupted or edited)"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("arch: [unclosed", "not valid YAML"),
        ("- a list", "expected a mapping"),
        (None, "in_channels: Input should be a valid integer"),
        ("segflow_version: 9.0.0", "written by segflow 9.0.0; this segflow .* reads major version"),
    ],
)
def test_bad_bundle_yaml(bundle: Path, text: str | None, message: str) -> None:
    if text is None:
        edit_yaml(bundle, in_channels="three")
    elif text.startswith("segflow_version"):
        edit_yaml(bundle, segflow_version="9.0.0")
    else:
        (bundle / "bundle.yaml").write_text(text, encoding="utf-8")
    for read in (read_bundle_meta, load_bundle):
        with pytest.raises(DataError, match=message) as info:
            read(bundle)
        assert info.value.path == str(bundle / "bundle.yaml")


def test_missing_files(bundle: Path, tmp_path: Path) -> None:
    (bundle / "weights.safetensors").unlink()
    with pytest.raises(DataError, match=r"weights\.safetensors: missing: the bundle is incomplete"):
        load_bundle(bundle)
    (bundle / "bundle.yaml").unlink()
    with pytest.raises(DataError, match=r"bundle\.yaml: missing: is this a segflow bundle"):
        load_bundle(bundle)
    with pytest.raises(DataError, match="no such bundle folder"):
        load_bundle(tmp_path / "nope.segflow")


def test_unbuildable_network_is_a_data_error(bundle: Path) -> None:
    edit_yaml(bundle, encoder="resnet19")
    with pytest.raises(
        DataError, match=r"bundle.yaml: cannot build the network: unknown encoder 'resnet19'"
    ):
        load_bundle(bundle)


class _Payload:
    """Unpickling this creates the file named by ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_nothing_is_ever_unpickled(bundle: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    pickle.loads(payload).close()  # the payload is armed...
    assert marker.exists()
    marker.unlink()

    # A pickle beside the weights is ignored.
    (bundle / "weights.pt").write_bytes(payload)
    (bundle / "model.pth").write_bytes(payload)
    assert load_bundle(bundle).meta.arch == "Unet"
    # Pointing bundle.yaml at it is a schema error.
    edit_yaml(bundle, weights_file="weights.pt")
    with pytest.raises(DataError, match="weights_file: String should match pattern"):
        load_bundle(bundle)
    # A pickle posing as weights.safetensors, with a matching checksum, is not safetensors.
    edit_yaml(
        bundle,
        weights_file="weights.safetensors",
        weights_sha256=hashlib.sha256(payload).hexdigest(),
    )
    (bundle / "weights.safetensors").write_bytes(payload)
    with pytest.raises(DataError, match=r"weights\.safetensors: not a valid safetensors file"):
        load_bundle(bundle)
    assert not marker.exists()  # ...and never ran


def test_read_bundle_weights_requires_a_checksum(bundle: Path) -> None:
    empty = read_bundle_meta(bundle).model_copy(update={"weights_sha256": ""})
    with pytest.raises(DataError, match="weights_sha256 is empty"):
        read_bundle_weights(bundle, empty)
