"""dsh.utils.cpu: what /proc/cpuinfo says, and the bf16 rule that follows from it."""

from __future__ import annotations

import pytest

import dsh.utils.cpu as cpu

INTEL_NO_AMX = {"vendor_id": "GenuineIntel", "model name": "Intel(R) Xeon(R) Processor",
                "flags": "fpu sse2 avx2 avx512f avx512_bf16"}


@pytest.mark.parametrize("fields, fast", [
    (INTEL_NO_AMX, False),  # measured slower than float32 there
    ({**INTEL_NO_AMX, "flags": INTEL_NO_AMX["flags"] + " amx_bf16 amx_tile"}, True),
    ({"vendor_id": "AuthenticAMD", "model name": "AMD EPYC", "flags": "avx2 avx512_bf16"}, True),
    ({"vendor_id": "AuthenticAMD", "model name": "AMD EPYC", "flags": "avx2"}, False),
    ({}, False),  # no /proc/cpuinfo
])
def test_bf16_only_where_it_was_measured_to_pay(monkeypatch, fields, fast):
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: fields)
    assert cpu.has_fast_bf16() is fast
    assert cpu.cpu_flags() == frozenset(fields.get("flags", "").split())
    assert cpu.cpu_model() == (fields.get("model name") or cpu.platform.processor() or cpu.platform.machine())


def test_cpuinfo_reads_the_first_processor(tmp_path, monkeypatch):
    text = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: First CPU\nflags\t\t: a b\n\n"
            "processor\t: 1\nvendor_id\t: Other\nmodel name\t: Second CPU\nflags\t\t: c\n")
    fake = tmp_path / "cpuinfo"
    fake.write_text(text)
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(fake if p == "/proc/cpuinfo" else p, *a, **k))
    cpu._cpuinfo.cache_clear()
    try:
        assert cpu.cpu_model() == "First CPU" and cpu.cpu_vendor() == "GenuineIntel"
        assert cpu.cpu_flags() == {"a", "b"}
    finally:
        cpu._cpuinfo.cache_clear()
    assert 1 <= cpu.usable_cpus()
