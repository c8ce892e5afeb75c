"""The device loop (optimizer graphs, IOBinding) against the host loop (optim.py)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from conftest import EXAMPLES, needs_torch

needs_onnx = pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="needs the [export] extra (onnx)")


@pytest.fixture(scope="module")
def optimizer_graphs(tmp_path_factory):
    if importlib.util.find_spec("onnx") is None:
        pytest.skip("needs onnx")
    from nst_ort_export.optim_graphs import MANIFEST, write_optimizer_graphs
    from nst_ort.engine.device_loop import Runner
    from nst_ort.engine.providers import choose
    from nst_ort.engine.session import make_session

    folder = tmp_path_factory.mktemp("optim")
    write_optimizer_graphs(folder)
    placement = choose("cpu")
    return {kind: {role: Runner(make_session(folder / name, placement), "cpu") for role, name in files.items()}
            for kind, files in MANIFEST.items()}


def _quadratic(n=300, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    h = a @ a.T / n + 0.1 * np.eye(n)
    b = rng.standard_normal(n)
    return h, b


@needs_onnx
@pytest.mark.parametrize("history", [5, 50])
def test_device_lbfgs_matches_host_lbfgs(optimizer_graphs, history):
    """Compact-form L-BFGS on the device == optim.LBFGS's two-loop recursion, with the ring buffer
    wrapping (history 5) and without (50)."""
    from nst_ort.engine.device_loop import DeviceLBFGS, Buffer
    from nst_ort.engine.optim import LBFGS

    h, b = _quadratic()
    n = len(b)
    grad = lambda x: (h @ x - b).astype(np.float32)  # noqa: E731
    host = LBFGS(n, lr=1.0, history=history)
    dev = DeviceLBFGS(optimizer_graphs["lbfgs"], "cpu", n, lr=1.0, history=history)
    x, g = Buffer("cpu", 2, n), Buffer("cpu", 2, n)
    xh, cur, capped = np.zeros(n, np.float32), 0, 0
    for _ in range(40):
        g.host[cur] = grad(x.host[cur])
        assert dev.step(x.row(cur), g.row(cur), g.row(1 - cur), x.row(1 - cur))
        cur = 1 - cur
        xh = host.step(xh, grad(xh))
        assert np.abs(x.host[cur] - xh).max() <= 1e-5 * np.abs(xh).max()
        capped += dev.sd_steps == 0 and dev.t < 1.0  # optim.quasi_newton_length shortened the step
    assert capped > 0
    assert len(dev.order) == host.count == min(history, 39)
    # state_dict in optim.py's format: the host optimizer continues from it identically
    s = dev.state_dict(g.host[1 - cur].copy())
    again = LBFGS(n, lr=1.0, history=history)
    again.load_state_dict(s)
    x1 = host.step(xh, grad(xh))
    x2 = again.step(xh, grad(xh))
    assert np.abs(x1 - x2).max() <= 1e-5 * np.abs(x1).max()
    # and the other way: a host state_dict loaded into a fresh device optimizer
    dev2 = DeviceLBFGS(optimizer_graphs["lbfgs"], "cpu", n, lr=1.0, history=history)
    dev2.load_state_dict(again.state_dict())
    x, g = Buffer("cpu", 2, n), Buffer("cpu", 2, n)
    x.host[0], g.host[0], g.host[1] = x2, grad(x2), again.g_prev
    assert dev2.step(x.row(0), g.row(0), g.row(1), x.row(1))
    x3 = again.step(x2, grad(x2))
    assert np.abs(x.host[1] - x3).max() <= 1e-5 * np.abs(x3).max()


@needs_onnx
def test_device_lbfgs_steepest_descent_and_nonfinite(optimizer_graphs):
    """No curvature pair (a concave function): the same steepest-descent steps as optim.LBFGS."""
    from nst_ort.engine.device_loop import DeviceLBFGS, Buffer
    from nst_ort.engine.optim import LBFGS

    n = 50
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal(n).astype(np.float32)
    grad = lambda x: (-x).astype(np.float32)  # noqa: E731  f = -|x|^2 / 2: y.s < 0 always
    host, dev = LBFGS(n), DeviceLBFGS(optimizer_graphs["lbfgs"], "cpu", n)
    x, g = Buffer("cpu", 2, n), Buffer("cpu", 2, n)
    x.host[0], xh, cur = x0, x0.copy(), 0
    for _ in range(6):
        g.host[cur] = grad(x.host[cur])
        dev.step(x.row(cur), g.row(cur), g.row(1 - cur), x.row(1 - cur))
        cur = 1 - cur
        xh = host.step(xh, grad(xh))
        np.testing.assert_allclose(x.host[cur], xh, rtol=1e-5)
    assert dev.sd_steps == host.sd_steps == 6
    g.host[cur, 3] = np.inf
    assert not dev.step(x.row(cur), g.row(cur), g.row(1 - cur), x.row(1 - cur))


@needs_onnx
def test_device_adam_matches_host_adam(optimizer_graphs):
    from nst_ort.engine.device_loop import DeviceAdam, Buffer
    from nst_ort.engine.optim import Adam

    h, b = _quadratic(n=100, seed=2)
    n = len(b)
    grad = lambda x: (h @ x - b).astype(np.float32)  # noqa: E731
    host, dev = Adam(n, lr=0.05), DeviceAdam(optimizer_graphs["adam"], "cpu", n, lr=0.05)
    x, g = Buffer("cpu", 2, n), Buffer("cpu", 2, n)
    xh, cur = np.zeros(n, np.float32), 0
    for _ in range(10):
        g.host[cur] = grad(xh)  # the same gradient on both sides: Adam's normalization amplifies rounding
        x.host[cur] = xh
        dev.step(x.row(cur), g.row(cur), g.row(1 - cur), x.row(1 - cur))
        cur = 1 - cur
        xh = host.step(xh, grad(xh))
        np.testing.assert_allclose(x.host[cur], xh, rtol=1e-5, atol=1e-6)
    s = dev.state_dict()
    assert s["kind"] == "adam" and s["k"] == 10
    np.testing.assert_allclose(s["m1"], host.m1, rtol=1e-5, atol=1e-7)


@needs_torch
def test_stylizer_device_loop_matches_host_loop(vgg16_random):
    """The exported model carries optimizer graphs; the Stylizer's device loop gives the host loop's
    losses, and its checkpoint state resumes in the host loop."""
    from nst_ort import Config, OptimConfig, StyleInput, Stylizer

    _, path = vgg16_random

    def make(loop, iterations=6):
        return Stylizer(Config(content=EXAMPLES / "chelsea_cat.jpg", styles=[StyleInput(EXAMPLES / "starry_night.jpg")],
                               size=64, model=path, device="cpu", threads=1, loop=loop,
                               optim=OptimConfig(name="lbfgs", iterations=iterations)))

    host, dev = make("host"), make("device")
    lh = [r.loss for r in host.run()]
    ld = [r.loss for r in dev.run()]
    assert (host.loop_kind, dev.loop_kind) == ("host", "device")
    assert dev.runtime()["loop"] == "device"
    # The two differ by rounding (fp32 reductions in another order, FMA), which L-BFGS amplifies
    # (measured: 2e-6 relative per step with identical gradients, 5e-4 in the loss after 6 steps).
    np.testing.assert_allclose(ld[:3], lh[:3], rtol=1e-5)
    np.testing.assert_allclose(ld, lh, rtol=5e-3)
    np.testing.assert_allclose(dev.result(), host.result(), atol=2e-2)
    # resume: a device-loop checkpoint continues in a host loop as its own run would have
    state = dev.state_dict()
    assert state["optimizer"]["kind"] == "lbfgs" and len(state["optimizer"]["rho"]) > 0
    longer, resumed = make("device", 8), make("host", 8)
    full = [r.loss for r in longer.run()]
    resumed.load_state_dict(state)
    rest = [r.loss for r in resumed.run()]
    np.testing.assert_allclose(rest, full[6:], rtol=5e-3)


@needs_torch
def test_cpu_training_graph_matches_train_graph(vgg16_random, monkeypatch):
    """train_cpu.onnx (Winograd convolutions, what the CPU provider runs) and train.onnx (direct
    convolutions, what CUDA runs) compute the same loss and gradient. test_gradient.py checks the
    CPU graph against float64 torch autograd."""
    from backbone_checks import feeds_for as _feeds

    from nst_ort import Artifacts
    from nst_ort.engine.session import TrainStep

    _, path = vgg16_random
    art = Artifacts(path)
    assert "train_cpu" in art.manifest["graphs"] and art.train_graph_path("cpu").name == "train_cpu.onnx"
    rng = np.random.default_rng(5)
    h, w = 67, 75
    graphs, feeds = _feeds(art, rng, h, w)
    x = rng.random((1, 3, h, w), dtype=np.float32)
    total_cpu, _, _, _, grad_cpu = TrainStep(graphs, feeds, x.shape)(x)
    grad_cpu = grad_cpu.copy()
    monkeypatch.setenv("NST_ORT_TRAIN_GRAPH", "train")
    graphs2, _ = _feeds(art, np.random.default_rng(5), h, w)
    assert graphs2.train_path.name == "train.onnx"
    total, _, _, _, grad = TrainStep(graphs2, feeds, x.shape)(x)
    assert abs(total_cpu - total) <= 1e-5 * abs(total)
    assert np.abs(grad_cpu - grad).max() <= 1e-4 * np.abs(grad).max()
