"""Local encoder weights: a ``.safetensors`` or torch file loaded into ``model.encoder``.

Files are read with safetensors or ``torch.load(weights_only=True)``, never by unpickling arbitrary
objects. Tensors are matched to the encoder by name (up to a prefix such as ``encoder.`` or
``module.``), else, for torch files that keep their order, by position; a classification head
in the file is ignored and a 3-channel first convolution is adapted to the model's input channels.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segflow.errors import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("segflow.models")

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
# Classification heads that checkpoints carry and segmentation encoders drop.
_HEAD_NAMES = frozenset({"fc", "_fc", "classifier", "last_linear", "head", "linear"})
_CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def read_weights_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pth``/``.pt``/``.bin`` file (never unpickles objects).

    A checkpoint wrapping its weights in a ``state_dict`` or ``model`` key is unwrapped.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"encoder weights file not found: {path}")
    suffix = path.suffix.lower()
    obj: Any
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ConfigError(
                f"{path}: not a readable safetensors file ({_first_line(exc)})"
            ) from None
    elif suffix in WEIGHT_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise ConfigError(
                f"{path}: refused: it holds Python objects besides tensors and segflow reads .pth "
                "files only with torch.load(weights_only=True); save it as .safetensors where it was made"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise ConfigError(f"{path}: not a readable torch file ({_first_line(exc)})") from None
    else:
        raise ConfigError(f"{path}: unsupported weights file; use {', '.join(WEIGHT_SUFFIXES)}")
    for _ in range(2):
        if isinstance(obj, Mapping):
            inner = next(
                (obj[k] for k in _CHECKPOINT_KEYS if isinstance(obj.get(k), Mapping)), None
            )
            obj = inner if inner is not None else obj
    tensors = (
        {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if isinstance(obj, Mapping)
        else {}
    )
    if not tensors:
        raise ConfigError(f"{path}: holds no tensors (expected a state dict)")
    return tensors


def _prefixes(keys: list[str], common_only: bool) -> list[str]:
    found = {""}
    for key in keys:
        parts = key.split(".")
        for depth in (1, 2):
            if len(parts) > depth:
                found.add(".".join(parts[:depth]) + ".")
    if common_only:
        found = {p for p in found if all(k.startswith(p) for k in keys)}
    return sorted(found, key=len)


def _is_head(key: str, target_parts: set[str]) -> bool:
    return any(p in _HEAD_NAMES and p not in target_parts for p in key.split("."))


def _adapt_input_conv(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """A 3-channel first convolution adapted to ``shape[1]`` channels, as SMP does for imagenet."""
    if tensor.ndim != 4 or len(shape) != 4 or tensor.shape[1] != 3:
        return None
    if tensor.shape[0] != shape[0] or tensor.shape[2:] != shape[2:]:
        return None
    n = shape[1]
    if n == 1:
        return tensor.sum(1, keepdim=True)
    return tensor[:, [i % 3 for i in range(n)]] * (3 / n)


def _match_tensors(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], path: Path
) -> dict[str, torch.Tensor]:
    """Map the file's tensors onto the encoder's keys: by name, else by position, else fail.

    Only torch files keep their tensors in order; safetensors sorts them, so names must match.
    """
    target_parts = {p for k in target for p in k.split(".")}
    first_conv = next((k for k, v in target.items() if v.ndim == 4), None)

    def fit(src_key: str, dst_key: str) -> torch.Tensor | None:
        tensor, want = source[src_key], target[dst_key].shape
        if tensor.shape == want:
            return tensor
        return _adapt_input_conv(tensor, want) if dst_key == first_conv else None

    best: tuple[int, str, str] = (0, "", "")
    for sp in _prefixes(list(source), common_only=False):
        for tp in _prefixes(list(target), common_only=True):
            hits = sum(1 for k in source if k.startswith(sp) and tp + k[len(sp) :] in target)
            best = max(best, (hits, sp, tp), key=lambda b: b[0])
    hits, sp, tp = best
    if hits == len(target):
        by_name = {tp + k[len(sp) :]: k for k in source if k.startswith(sp)}
        out: dict[str, torch.Tensor] = {}
        for dst_key in target:
            src_key = by_name[dst_key]
            tensor = fit(src_key, dst_key)
            if tensor is None:
                raise ConfigError(
                    f"{path}: tensor {src_key!r} has shape {tuple(source[src_key].shape)}, the "
                    f"encoder's {dst_key!r} has {tuple(target[dst_key].shape)}"
                )
            out[dst_key] = tensor
        used = {by_name[k] for k in target}
        ignored = [
            k
            for k in source
            if k.startswith(sp) and k not in used and not _is_head(k, target_parts)
        ]
        if ignored:
            log.warning(
                "%s: ignored %d tensors the encoder does not have (first: %s)",
                path, len(ignored), ignored[0],
            )  # fmt: skip
        return out
    ordered = [k for k in source if not _is_head(k, target_parts)]
    in_order = path.suffix.lower() != ".safetensors"
    if in_order and len(ordered) == len(target):
        out = {}
        for i, (src_key, dst_key) in enumerate(zip(ordered, target, strict=True)):
            tensor = fit(src_key, dst_key)
            if tensor is None:
                raise ConfigError(
                    f"{path}: names differ from the encoder's and tensor #{i} {src_key!r} "
                    f"{tuple(source[src_key].shape)} does not fit {dst_key!r} "
                    f"{tuple(target[dst_key].shape)}"
                )
            out[dst_key] = tensor
        log.info(
            "%s: tensor names differ from the encoder's; loaded all %d by position (%r -> %r ...)",
            path, len(out), ordered[0], next(iter(target)),
        )  # fmt: skip
        return out
    named = {tp + k[len(sp) :] for k in source if k.startswith(sp)}
    missing = next((k for k in target if k not in named), "")
    count = (
        f"it holds {len(ordered)} tensors, the encoder {len(target)}"
        if in_order
        else "a .safetensors file keeps no order, so names must match"
    )
    raise ConfigError(
        f"{path}: does not fit the encoder: {hits} of {len(target)} tensor names match "
        f"(first missing: {missing!r}) and {count}"
    )


def _is_counter(key: str, tensor: torch.Tensor) -> bool:
    """BatchNorm's num_batches_tracked (also under other names): not weights, often absent."""
    return key.endswith("num_batches_tracked") or (
        tensor.ndim == 0 and not tensor.is_floating_point()
    )


def load_encoder_weights(model: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a local weights file into ``model.encoder`` (by name, else by position).

    Names may differ by a prefix (``encoder.``, ``module.``...); a classification head in the file
    is ignored; a 3-channel first convolution is adapted to the model's input channels.
    """
    import torch

    path = Path(path)
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, torch.nn.Module):
        raise ConfigError(f"{type(model).__name__} has no .encoder to load {path} into")
    source = {k: v for k, v in read_weights_file(path).items() if not _is_counter(k, v)}
    target = {k: v for k, v in encoder.state_dict().items() if not _is_counter(k, v)}
    state = _match_tensors(source, target, path)
    # nn.Module's loader, not the encoder's override (SMP's overrides drop/rename keys themselves).
    torch.nn.Module.load_state_dict(encoder, state, strict=True)
