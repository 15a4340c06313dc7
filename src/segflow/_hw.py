"""What this machine's processor can do, read from the operating system (no guessing by name).

bf16 matters on CPUs: with AMX (``amx_bf16``) or AVX-512 BF16 (``avx512_bf16``) a bf16 matrix
multiply is several times faster than fp32, so training under ``torch.autocast`` and OpenVINO's
bf16 inference pay off; without those instructions bf16 is emulated and slower. The flags come
from ``/proc/cpuinfo`` on Linux; elsewhere torch's own dispatch level is asked (``"avx512"`` alone
does not imply bf16, so only an explicit AMX/bf16 answer counts).
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

#: Flags that mean the CPU computes bf16 natively (not emulated).
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})

#: Environment override for tests and for users who know better: "1"/"0" forces bf16 support.
ENV_BF16 = "SEGFLOW_CPU_BF16"


@dataclass(frozen=True)
class CpuInfo:
    """The processor's model name and instruction-set flags."""

    model: str
    flags: frozenset[str]

    @property
    def bf16(self) -> bool:
        """Whether bf16 arithmetic runs natively (AMX or AVX-512 BF16)."""
        return bool(self.flags & BF16_FLAGS)

    @property
    def amx(self) -> bool:
        """Whether the CPU has AMX tiles for bf16."""
        return "amx_bf16" in self.flags


def parse_cpuinfo(text: str) -> CpuInfo:
    """Model name and flags from the text of ``/proc/cpuinfo`` (the first processor's block)."""
    model = ""
    flags: frozenset[str] = frozenset()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return CpuInfo(model=model or platform.processor() or platform.machine(), flags=flags)


@functools.lru_cache(maxsize=1)
def _read_cpu() -> CpuInfo:
    path = Path("/proc/cpuinfo")
    try:
        info = parse_cpuinfo(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        info = CpuInfo(model=platform.processor() or platform.machine(), flags=frozenset())
    if not info.flags:
        info = CpuInfo(model=info.model, flags=_torch_flags())
    return info


def _torch_flags() -> frozenset[str]:
    """Flags implied by torch's CPU dispatch level where the OS gives none (macOS, Windows)."""
    try:
        import torch

        level = str(torch.backends.cpu.get_cpu_capability()).lower()
    except Exception:  # torch missing or too old: no flags known, so no bf16 claimed
        return frozenset()
    return frozenset({"amx_bf16"}) if "amx" in level else frozenset()


def cpu_info() -> CpuInfo:
    """This machine's processor (read once per process)."""
    return _read_cpu()


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bf16 natively; ``SEGFLOW_CPU_BF16=0|1`` overrides the detection."""
    forced = os.environ.get(ENV_BF16, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return cpu_info().bf16
