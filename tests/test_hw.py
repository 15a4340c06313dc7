"""CPU capability detection: parsed from /proc/cpuinfo text, overridable by environment."""

from __future__ import annotations

import pytest

from segflow import _hw

AMX = (
    "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum\n"
    "flags\t\t: fpu sse avx512f avx512_vnni amx_bf16 amx_tile\n"
)
PLAIN = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 fma\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16\n"


def test_amx_cpu_supports_bf16():
    info = _hw.parse_cpuinfo(AMX)
    assert info.model == "Intel(R) Xeon(R) Platinum"
    assert info.bf16 and info.amx


def test_avx2_cpu_does_not():
    info = _hw.parse_cpuinfo(PLAIN)
    assert not info.bf16 and not info.amx
    assert "avx2" in info.flags


def test_arm_bf16_feature_is_not_mistaken_for_x86_bf16():
    assert not _hw.parse_cpuinfo(ARM).bf16


@pytest.mark.parametrize(("text", "expected"), [(AMX, True), (PLAIN, False)])
def test_cpu_supports_bf16_follows_the_flags(monkeypatch, text, expected):
    monkeypatch.delenv(_hw.ENV_BF16, raising=False)
    monkeypatch.setattr(_hw, "_read_cpu", lambda: _hw.parse_cpuinfo(text))
    assert _hw.cpu_supports_bf16() is expected


@pytest.mark.parametrize(("value", "expected"), [("0", False), ("1", True)])
def test_environment_overrides_detection(monkeypatch, value, expected):
    monkeypatch.setattr(_hw, "_read_cpu", lambda: _hw.parse_cpuinfo(AMX if value == "0" else PLAIN))
    monkeypatch.setenv(_hw.ENV_BF16, value)
    assert _hw.cpu_supports_bf16() is expected
