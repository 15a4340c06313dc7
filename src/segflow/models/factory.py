"""Build networks by name over ``segmentation_models_pytorch.create_model``.

segflow never re-implements an encoder or a decoder: this module only checks names (with
"did you mean" hints), turns SMP's and the hub's exceptions into one-line :class:`ConfigError`
messages, and hands local weights files (for machines without network) to
:mod:`segflow.models.weights`. Starting a network from an earlier bundle is
:mod:`segflow.models.warm_start`'s (it reads bundles, which are built with this module).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segflow.errors import ConfigError
from segflow.models.weights import WEIGHT_SUFFIXES, load_encoder_weights
from segflow.registry import did_you_mean

if TYPE_CHECKING:
    import torch

#: SMP architectures by canonical name (``smp.MODEL_ARCHITECTURES_MAPPING``; a test keeps them equal).
# fmt: off
ARCHITECTURES: tuple[str, ...] = (
    "Unet", "UnetPlusPlus", "MAnet", "Linknet", "FPN", "PSPNet",
    "DeepLabV3", "DeepLabV3Plus", "PAN", "UPerNet", "Segformer", "DPT",
)
# fmt: on
_NO_WEIGHTS = ("", "null", "none")
# Exception class names (anywhere in the MRO or the cause chain) that mean "no network".
# fmt: off
_NETWORK_ERRORS = frozenset({
    "ConnectionError", "ConnectError", "ConnectTimeout", "ReadTimeout", "Timeout", "TimeoutError",
    "TimeoutException", "TransportError", "NetworkError", "ProxyError", "URLError", "gaierror",
    "LocalEntryNotFoundError", "OfflineModeIsEnabled",
})
# fmt: on
# What SMP (and timm below it) raise for names, combinations and arguments they reject.
_REJECTIONS = (ValueError, KeyError, TypeError, AssertionError, RuntimeError, NotImplementedError)


def _first_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def list_architectures() -> list[str]:
    """The architecture names ``create_model`` accepts (any case)."""
    return list(ARCHITECTURES)


def list_encoders() -> list[str]:
    """SMP's encoder names; ``tu-<name>`` is accepted too for every model in ``timm.list_models()``."""
    import segmentation_models_pytorch as smp

    return sorted(smp.encoders.get_encoder_names())


def canonical_arch(name: str) -> str:
    """``"unet"`` -> ``"Unet"``; an unknown name raises ConfigError listing every valid one."""
    by_key = {a.lower(): a for a in ARCHITECTURES}
    found = by_key.get(name.lower())
    if found is None:
        hint = did_you_mean(name, ARCHITECTURES, n=3)
        raise ConfigError(f"unknown architecture {name!r}{hint}; valid: {', '.join(ARCHITECTURES)}")
    return found


def canonical_encoder(name: str) -> str:
    """The encoder name as SMP spells it; unknown names raise ConfigError with close matches."""
    if name[:3].lower() == "tu-":
        import timm

        base = name[3:]
        if timm.is_model(base):
            return f"tu-{base}"
        if timm.is_model(base.lower()):
            return f"tu-{base.lower()}"
        hint = did_you_mean(base, timm.list_models(), n=3, prefix="tu-")
        raise ConfigError(
            f"unknown encoder {name!r}{hint}; 'tu-' takes a name from timm.list_models()"
        )
    names = list_encoders()
    by_key = {n.lower(): n for n in names}
    if name.lower() in by_key:
        return by_key[name.lower()]
    raise ConfigError(
        f"unknown encoder {name!r}{did_you_mean(name.lower(), names, n=3)}; "
        "see segflow.models.factory.list_encoders(), or use 'tu-<timm model name>'"
    )


def create_model(
    arch: str,
    encoder: str,
    *,
    in_channels: int,
    classes: int,
    encoder_weights: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """Build an SMP network, optionally with pretrained encoder weights.

    Args:
        arch: architecture name, any case (see ``ARCHITECTURES``).
        encoder: SMP encoder name or ``tu-<timm model>``.
        in_channels: input image channels.
        classes: output channels (1 for a binary task).
        encoder_weights: ``None``/``"null"`` (random init), ``"imagenet"`` or another name SMP
            knows for the encoder (downloaded once and cached), or a local ``.safetensors`` /
            ``.pth`` / ``.pt`` / ``.bin`` file loaded into ``model.encoder``.
        **kwargs: further arguments for the architecture (``decoder_channels``...).

    Returns:
        The network in training mode.

    Raises:
        ConfigError: unknown names, a combination SMP rejects, weights that cannot be had or
            do not fit.
    """
    import segmentation_models_pytorch as smp

    arch = canonical_arch(arch)
    encoder = canonical_encoder(encoder)
    if in_channels < 1 or classes < 1:
        raise ConfigError(f"in_channels and classes must be >= 1, got {in_channels} and {classes}")
    _check_kwargs(arch, encoder, kwargs)
    weights_file: Path | None = None
    smp_weights: str | bool | None = None
    if encoder_weights is not None and not (
        isinstance(encoder_weights, str) and encoder_weights.strip().lower() in _NO_WEIGHTS
    ):
        if _looks_like_path(encoder_weights):
            weights_file = Path(encoder_weights).expanduser()
            if not weights_file.is_file():
                raise ConfigError(f"encoder weights file not found: {weights_file}")
        else:
            smp_weights = _pretrained_name(encoder, str(encoder_weights).strip())
    try:
        model: torch.nn.Module = smp.create_model(
            arch,
            encoder_name=encoder,
            encoder_weights=smp_weights,
            in_channels=in_channels,
            classes=classes,
            **kwargs,
        )
    except Exception as exc:
        if smp_weights is not None and _is_network_error(exc):
            raise ConfigError(
                f"could not download {encoder_weights!r} weights for encoder {encoder} (offline?): "
                "download them once elsewhere and pass model.encoder_weights=/path/to/weights"
                ".safetensors (or .pth), or null to train from scratch"
            ) from exc
        if smp_weights is not None and isinstance(exc, OSError):
            raise ConfigError(
                f"could not load {encoder_weights!r} weights for encoder {encoder}: {_first_line(exc)}"
            ) from exc
        if isinstance(exc, _REJECTIONS):
            raise ConfigError(f"{arch} with encoder {encoder}: {_first_line(exc)}") from exc
        raise
    if weights_file is not None:
        load_encoder_weights(model, weights_file)
    return model


def _check_kwargs(arch: str, encoder: str, kwargs: dict[str, Any]) -> None:
    """Unknown arguments are errors: SMP passes extras to timm encoders only, else drops them."""
    import inspect

    import segmentation_models_pytorch as smp

    params = inspect.signature(smp.MODEL_ARCHITECTURES_MAPPING[arch.lower()].__init__).parameters
    own = {"self", "kwargs", "encoder_name", "encoder_weights", "in_channels", "classes"}
    valid = [p for p in params if p not in own]
    for key in kwargs:
        if key in own:
            raise ConfigError(
                f"{key!r} is not a model.kwargs entry: segflow sets it from model.encoder, "
                "model.encoder_weights and the dataset's channels and classes"
            )
        if key not in valid and not encoder.startswith("tu-"):
            raise ConfigError(
                f"{arch} takes no argument {key!r}{did_you_mean(key, valid, n=3)}; valid: "
                f"{', '.join(valid)} (other arguments go to the encoder only for tu- encoders)"
            )


def _looks_like_path(value: str | os.PathLike[str]) -> bool:
    if not isinstance(value, str):
        return True
    return (
        value.lower().endswith(WEIGHT_SUFFIXES)
        or "/" in value
        or os.sep in value
        or Path(value).expanduser().is_file()
    )


def _pretrained_name(encoder: str, name: str) -> str | bool:
    """Check a pretrained-weights name against what SMP offers; what to pass to SMP for it."""
    if encoder.startswith("tu-"):
        import timm

        if name.lower() != "imagenet":
            raise ConfigError(
                f"encoder {encoder}: timm encoders take encoder_weights 'imagenet' (the pretrained "
                "tag goes in the name, e.g. tu-resnet18.a1_in1k), a local file, or null"
            )
        if not timm.is_model_pretrained(encoder[3:]):
            raise ConfigError(f"encoder {encoder}: timm has no pretrained weights for this model")
        return True  # SMP asks for a bool for tu- encoders
    import segmentation_models_pytorch as smp

    available = sorted(smp.encoders.encoders[encoder]["pretrained_settings"])
    if name not in available:
        raise ConfigError(
            f"encoder {encoder} has no weights {name!r}{did_you_mean(name, available, n=3)}; "
            f"available: {', '.join(available) or 'none'} (or a local file, or null)"
        )
    return name


def _is_network_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if any(cls.__name__ in _NETWORK_ERRORS for cls in type(current).__mro__):
            return True
        text = str(current).lower()
        if isinstance(current, OSError) and any(
            word in text for word in ("connect", "offline", "network", "resolve host")
        ):
            return True
        current = current.__cause__ or current.__context__
    return False


# ------------------------------------------------------------------------------------------------
# Starting from an earlier bundle
