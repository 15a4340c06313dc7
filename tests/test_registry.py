"""The one "did you mean" hint: closest names in any case, shown as spelled."""

from __future__ import annotations

import pytest

from segflow.errors import UnknownNameError
from segflow.registry import Registry, did_you_mean


def test_hint_names_the_closest_candidates_as_spelled() -> None:
    assert did_you_mean("unett", ["Unet", "FPN", "UnetPlusPlus"]) == " (did you mean Unet?)"
    assert did_you_mean("UNET", ["Unet", "Unet2"], n=2) == " (did you mean Unet, Unet2?)"
    assert did_you_mean("resnet3", ["resnet34"], prefix="tu-") == " (did you mean tu-resnet34?)"


def test_no_hint_when_nothing_is_close() -> None:
    assert did_you_mean("zzz", ["Unet", "FPN"]) == ""
    assert did_you_mean("onx", ["onnx"], cutoff=0.99) == ""


def test_registry_message_uses_the_hint() -> None:
    reg: Registry[int] = Registry("annotation format")
    reg.add("labelme", 1)
    reg.add("coco", 2)
    with pytest.raises(UnknownNameError) as info:
        reg.get("labelmee")
    assert str(info.value) == (
        "unknown annotation format 'labelmee' (did you mean labelme?); valid: coco, labelme"
    )
