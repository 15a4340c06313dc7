"""Start a network from an earlier bundle's weights (``model.init_from``).

Kept apart from :mod:`segflow.models.factory` so the import graph stays one-way:
bundle -> factory (a bundle builds its network by name), warm_start -> bundle + factory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from segflow.errors import ConfigError
from segflow.models.bundle import read_bundle_meta, read_bundle_weights
from segflow.models.factory import canonical_arch

if TYPE_CHECKING:
    import torch


def init_from_bundle(
    model: torch.nn.Module, bundle_path: str | os.PathLike[str], *, classes: int
) -> list[str]:
    """Load an earlier bundle's weights into ``model`` (same architecture and encoder).

    Args:
        model: a freshly created network.
        bundle_path: the ``NAME.segflow`` folder.
        classes: the model's output channels; when the bundle has another count, the
            segmentation (and auxiliary) heads keep their fresh initialisation.

    Returns:
        Messages for the user (e.g. that the head was re-initialised).
    """
    bundle = Path(bundle_path)
    meta = read_bundle_meta(bundle)
    arch = type(model).__name__
    encoder = getattr(model, "_hub_mixin_config", {}).get("encoder_name")
    same_encoder = encoder is None or str(encoder).lower() == meta.encoder.lower()
    if canonical_arch(meta.arch) != arch or not same_encoder:
        raise ConfigError(
            f"{bundle}: holds a {meta.arch} with encoder {meta.encoder}, the model is a {arch} with "
            f"encoder {encoder}; set model.arch and model.encoder to match, or drop model.init_from"
        )
    state = read_bundle_weights(bundle, meta)
    messages: list[str] = []
    heads = ("segmentation_head.", "classification_head.")
    if meta.out_channels != classes:
        state = {k: v for k, v in state.items() if not k.startswith(heads)}
        messages.append(
            f"re-initialised the segmentation head: {meta.out_channels} classes in bundle, {classes} now"
        )
    own = model.state_dict()
    missing = [
        k
        for k in own
        if k not in state and not (meta.out_channels != classes and k.startswith(heads))
    ]
    problems = [f"missing {k!r}" for k in missing] + [
        f"unexpected {k!r}" for k in state if k not in own
    ]
    problems += [
        f"{k!r} has shape {tuple(v.shape)}, the model's {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if problems:
        raise ConfigError(
            f"{bundle}: weights do not fit the model ({problems[0]}; {len(problems)} problems): "
            "were in_channels or model.kwargs different?"
        )
    model.load_state_dict(state, strict=False)
    return messages
