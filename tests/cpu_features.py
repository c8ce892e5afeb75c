"""What this machine's CPU can do, for tests that need a hardware feature (they skip, saying why).

OpenVINO's own answer (OPTIMIZATION_CAPABILITIES) where its Python package is importable: it is what
decides whether a precision hint is honoured. Else the kernel's flags (/proc/cpuinfo): OpenVINO's CPU
plugin computes in bf16 only with AVX-512 BF16 or AMX (on AVX2-only CPUs it ignores the hint and
stays in f32, measured on an AMD EPYC: `nst-ort check` passes with the hint set).
"""
from __future__ import annotations

import functools
from pathlib import Path

BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


@functools.lru_cache(maxsize=None)
def flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them; empty where /proc/cpuinfo is missing."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, ARM
            return frozenset(value.split())
    return frozenset()


def openvino_capabilities() -> list[str] | None:
    """OpenVINO's CPU OPTIMIZATION_CAPABILITIES (e.g. FP32, BF16, INT8), or None without its package
    (onnxruntime-openvino bundles the libraries, not the `openvino` module)."""
    try:
        import openvino as ov
    except ImportError:
        return None
    try:
        return [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    except Exception:  # noqa: BLE001 - no CPU device, an old package: unknown
        return None


def bf16_missing() -> str | None:
    """Why OpenVINO would not compute in bf16 here, or None where it would."""
    caps = openvino_capabilities()
    if caps is not None:
        return None if "BF16" in caps else f"OpenVINO's CPU capabilities {caps} have no BF16"
    have = flags()
    if not have:
        return "cannot tell whether this CPU has bf16 (no /proc/cpuinfo flags)"
    if have & BF16_FLAGS:
        return None
    return f"this CPU has no bf16 ({' or '.join(sorted(BF16_FLAGS))} not in /proc/cpuinfo's flags)"
