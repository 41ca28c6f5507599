"""What this process runs on: the CPU's model name and features (from ``/proc/cpuinfo`` on Linux), and how many
cores it may use. No torch here."""

from __future__ import annotations

import functools
import os
import platform

__all__ = ["cpu_model", "cpu_flags", "cpu_vendor", "usable_cpus", "has_fast_bf16"]


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block ends here; the others repeat it
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """The CPU's model name (else what :mod:`platform` knows)."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``avx512_bf16``, ``amx_bf16``, ...); empty where unknown."""
    return frozenset(_cpuinfo().get("flags", "").split())


def cpu_vendor() -> str:
    """``GenuineIntel``, ``AuthenticAMD``, ...; empty where unknown."""
    return _cpuinfo().get("vendor_id", "")


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def has_fast_bf16() -> bool:
    """True where bf16 autocast was measured to pay on the CPU: AMX, or AVX512-BF16 on AMD (1.2-1.6x the paper
    net's images/s on a 2-core EPYC). On an Intel Xeon with AVX512-BF16 but no AMX it was slower than float32
    (paper net on MNIST 2,319 against 3,194 images/s; airbench's convolutions 20-45% slower), so not there."""
    flags = cpu_flags()
    return "amx_bf16" in flags or ("avx512_bf16" in flags and cpu_vendor() == "AuthenticAMD")
