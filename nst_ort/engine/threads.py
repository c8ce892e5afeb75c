"""Intra-op threads: how many by default, and how the sessions of a run share the cores.

How many: on the CPU provider, the physical cores this process may run on (its affinity mask, one
per core when SMT gives two logical CPUs per core, capped by a cgroup CPU quota). An explicit count
also keeps onnxruntime from pinning: with its own default (0) it pins each session's worker threads
to cores, so the training graph's and the optimizer graphs' workers sit on the same cores. Measured
on the EPYC of issue 15 (quiet, 256 px, device loop): onnxruntime's default 0.40-0.49 s/iteration,
an explicit 2 threads 0.37-0.40. Other providers (CUDA, TensorRT, OpenVINO) compute on their own
device or threads: their count stays onnxruntime's (unmeasured here).

Sharing: every iteration runs the training graph and then the optimizer graphs (or numpy), each
session with its own pool. onnxruntime's workers spin for a while after their session's run; they
then compete for the cores with the next session's threads. SPIN_STOP makes a pool stop spinning
when its run returns (onnxruntime's "session.force_spinning_stop"; within a run they still spin
between operators). A process-wide pool shared by all sessions (onnxruntime's global thread pool)
would do the same, but once made, onnxruntime refuses every later session of the process that has
its own pool (our probes, a caller's own sessions): not for a library. Measured: see
benchmarks/RESULTS.md ("Where the time goes").
"""
from __future__ import annotations

import math
import os
from pathlib import Path

SPIN_STOP = ("session.force_spinning_stop", "1")
SYSFS_CPU = Path("/sys/devices/system/cpu")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def _affinity() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _physical(cpus: list[int]) -> int:
    """Distinct (package, core) pairs among `cpus` (Linux sysfs); len(cpus) where unknown."""
    cores = set()
    for c in cpus:
        base = SYSFS_CPU / f"cpu{c}" / "topology"
        try:
            cores.add((base.joinpath("physical_package_id").read_text().strip(),
                       base.joinpath("core_id").read_text().strip()))
        except OSError:
            return len(cpus)
    return len(cores) or len(cpus)


def _cgroup_quota() -> int | None:
    """CPUs a cgroup v2 quota allows ("max" or "QUOTA PERIOD" in cpu.max), rounded up."""
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return None


def usable_cores() -> int:
    n = _physical(_affinity())
    quota = _cgroup_quota()
    return max(1, min(n, quota) if quota else n)


def default_threads(provider: str) -> int | None:
    """Intra-op threads when the user gives none: the usable cores on the CPU provider; None
    (onnxruntime's own default) elsewhere."""
    return usable_cores() if provider == "CPUExecutionProvider" else None
