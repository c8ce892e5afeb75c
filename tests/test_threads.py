"""Thread defaults (nst_ort/engine/threads.py): how many, and how the sessions of a run share the cores."""
from __future__ import annotations

import numpy as np

from nst_ort.engine import threads


def _topology(root, cores):
    """A fake /sys/devices/system/cpu: logical CPU i on (package, core) cores[i]."""
    for i, (package, core) in enumerate(cores):
        t = root / f"cpu{i}" / "topology"
        t.mkdir(parents=True)
        (t / "physical_package_id").write_text(f"{package}\n")
        (t / "core_id").write_text(f"{core}\n")


def test_usable_cores_counts_physical_cores_of_the_affinity_mask_under_the_quota(tmp_path, monkeypatch):
    # 4 logical CPUs, two per core (SMT): 2 cores
    _topology(tmp_path / "cpu", [(0, 0), (0, 0), (0, 1), (0, 1)])
    monkeypatch.setattr(threads, "SYSFS_CPU", tmp_path / "cpu")
    monkeypatch.setattr(threads, "CGROUP_CPU_MAX", tmp_path / "cpu.max")  # absent: no quota
    monkeypatch.setattr(threads, "_affinity", lambda: [0, 1, 2, 3])
    assert threads.usable_cores() == 2
    monkeypatch.setattr(threads, "_affinity", lambda: [1, 2])  # one logical CPU of each core
    assert threads.usable_cores() == 2
    monkeypatch.setattr(threads, "_affinity", lambda: [2, 3])
    assert threads.usable_cores() == 1
    monkeypatch.setattr(threads, "_affinity", lambda: [0, 1, 2, 3])
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs of quota: 2 threads
    assert threads.usable_cores() == 2
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert threads.usable_cores() == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.usable_cores() == 2
    # no topology (not Linux, or hidden): logical CPUs
    monkeypatch.setattr(threads, "SYSFS_CPU", tmp_path / "nowhere")
    assert threads.usable_cores() == 4


def test_choose_fills_in_the_cpu_default_and_keeps_an_explicit_count():
    from nst_ort.engine.providers import choose

    assert choose("cpu").threads == threads.usable_cores() == threads.default_threads("CPUExecutionProvider")
    assert choose("cpu", threads=1).threads == 1
    assert threads.default_threads("CUDAExecutionProvider") is None  # onnxruntime's own, unmeasured


def test_sessions_stop_spinning_between_runs_and_are_not_pinned():
    """Each session's pool stops spinning when its run returns (the training and optimizer graphs take
    turns every iteration), and the count is explicit (onnxruntime pins threads only for its own
    default count, 0)."""
    from nst_ort.engine.providers import choose

    so = choose("cpu").session_options()
    assert so.get_session_config_entry("session.force_spinning_stop") == "1"
    assert so.intra_op_num_threads == threads.usable_cores() >= 1


def test_device_lbfgs_host_algebra_uses_no_lapack(monkeypatch):
    """The k x k solves are written out (device_loop._solve_triangular): LAPACK's thread pool woke for
    each 100 x 100 solve and waited for cores held by onnxruntime (0.4-1.1 s per iteration measured)."""
    from nst_ort.engine import device_loop

    rng = np.random.default_rng(0)
    k = 30
    R = np.triu(rng.standard_normal((k, k))) + 5 * np.eye(k)
    b = rng.standard_normal(k)
    want_upper, want_lower = np.linalg.solve(R, b), np.linalg.solve(R.T, b)

    def refuse(*a, **kw):
        raise AssertionError("np.linalg called in the device loop's per-iteration algebra")

    monkeypatch.setattr(np.linalg, "solve", refuse)
    np.testing.assert_allclose(device_loop._solve_triangular(R, b, upper=True), want_upper, rtol=1e-12)
    np.testing.assert_allclose(device_loop._solve_triangular(R, b, upper=False), want_lower, rtol=1e-12)
    M = rng.standard_normal((k, k))
    np.testing.assert_allclose(device_loop._matvec(M, b), M @ b, rtol=1e-12)
