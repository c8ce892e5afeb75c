"""The machine a benchmark ran on: CPU model and flags (as lscpu prints them), and its fp32 peak.

Every benchmark row carries `cpu_info()`, so that ratios are never quoted without the CPU they came
from. The peak is arithmetic from the flags, not a measurement:

    cores x FMA units x SIMD lanes (fp32) x 2 FLOP per FMA x clock

lanes: 16 with avx512f, 8 with avx2/fma, 4 otherwise; FMA units per core: 2 on Intel Xeon (the
Sapphire/Emerald Rapids parts this project runs on have two 512-bit FMA ports), 2 x 256-bit on AMD
Zen 4 (which splits 512-bit operations: counted as 1 x 16 lanes), else 2; clock: the "cpu MHz" the
kernel reports (a VM reports its nominal TSC; turbo can be higher, AVX-512 licence clocks lower).
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess


def _lscpu() -> dict[str, str]:
    if not shutil.which("lscpu"):
        return {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                             env={**os.environ, "LC_ALL": "C"}).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = {}
    for line in out.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            fields[k.strip()] = v.strip()
    return fields


def _cpuinfo_mhz() -> float | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    return None


def cpu_info() -> dict:
    """Model, flags, cores and clock as lscpu (and /proc/cpuinfo) give them."""
    ls = _lscpu()
    flags = ls.get("Flags", "").split()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    per_core = int(ls.get("Thread(s) per core", "1") or 1)
    mhz = _cpuinfo_mhz()
    max_mhz = ls.get("CPU max MHz")
    return {"model": ls.get("Model name") or platform.processor() or platform.machine(),
            "vendor": ls.get("Vendor ID"), "family": ls.get("CPU family"), "model_number": ls.get("Model"),
            "cpus": cpus, "threads_per_core": per_core, "cores": max(1, (cpus or 1) // per_core),
            "mhz": float(max_mhz) if max_mhz else mhz, "hypervisor": ls.get("Hypervisor vendor"),
            "flags": flags, "simd": simd(flags), "peak_basis": ""}


def simd(flags: list[str]) -> str:
    f = set(flags)
    if "avx512f" in f:
        extra = [x for x in ("avx512_bf16", "avx512_fp16", "amx_tile") if x in f]
        return "AVX-512" + (f" ({', '.join(extra)})" if extra else "")
    if "avx2" in f:
        return "AVX2"
    return "SSE"


def peak_gflops(info: dict) -> float | None:
    """fp32 FMA peak of the cores this process may use, in GFLOP/s (see the module docstring)."""
    flags = set(info["flags"])
    if not info.get("mhz"):
        info["peak_basis"] = "no clock known"
        return None
    lanes = 16 if "avx512f" in flags else 8 if ("avx2" in flags or "fma" in flags) else 4
    units = 2
    if info.get("vendor") == "AuthenticAMD" and lanes == 16 and info.get("family") == "25":
        units = 1  # Zen 4: 512-bit operations on two 256-bit pipes
    flops = info["cores"] * units * lanes * 2 * info["mhz"] / 1e3
    info["peak_basis"] = (f"{info['cores']} cores x {units} FMA x {lanes} lanes x 2 x {info['mhz'] / 1e3:.2f} GHz")
    return round(flops, 1)


def row_stamp(info: dict) -> dict:
    """What goes with every benchmark row: model and flags (compact), cores, clock."""
    return {"cpu": info["model"], "simd": info["simd"], "cores": info["cores"], "mhz": info["mhz"],
            "flags": " ".join(info["flags"])}


if __name__ == "__main__":
    i = cpu_info()
    print(i["model"], i["simd"], f"{i['cores']} cores", f"{peak_gflops(i)} GFLOP/s ({i['peak_basis']})")
    print(re.sub(r"(.{1,100})(\s|$)", r"\1\n", " ".join(i["flags"])))
