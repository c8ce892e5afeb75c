"""Optimizers: our L-BFGS follows torch.optim.LBFGS (no line search) where both have curvature."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import needs_torch
from nst_ort.engine.optim import LBFGS, Adam


def _quadratic(n=50, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    h = a @ a.T / n + np.eye(n)
    b = rng.standard_normal(n)
    return h, b


def test_lbfgs_minimizes_a_quadratic():
    h, b = _quadratic()
    x = np.zeros(len(b), np.float32)
    opt = LBFGS(len(b), lr=1.0, history=10)
    f0 = None
    for _ in range(60):
        g = (h @ x - b).astype(np.float32)
        f = 0.5 * x @ h @ x - b @ x
        f0 = f if f0 is None else f0
        x = opt.step(x, g)
    xstar = np.linalg.solve(h, b)
    assert np.abs(x - xstar).max() < 1e-3


@needs_torch
def test_lbfgs_matches_torch_on_a_convex_quadratic():
    import torch

    h, b = _quadratic(seed=1)
    ht, bt = torch.tensor(h, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)
    xt = torch.zeros(len(b), requires_grad=True)
    topt = torch.optim.LBFGS([xt], lr=1.0, max_iter=1, history_size=5, tolerance_grad=-1, tolerance_change=-1)

    def closure():
        topt.zero_grad()
        loss = 0.5 * xt @ ht @ xt - bt @ xt
        loss.backward()
        return loss

    x = np.zeros(len(b), np.float32)
    ours = LBFGS(len(b), lr=1.0, history=5)
    ours.max_qn_step = float("inf")  # torch has no cap on a quasi-Newton step (optim.quasi_newton_length)
    for it in range(15):
        g = (h.astype(np.float32) @ x - b.astype(np.float32)).astype(np.float32)
        x = ours.step(x, g)
        topt.step(closure)
        assert np.allclose(x, xt.detach().numpy(), rtol=1e-3, atol=1e-4), it


@needs_torch
def test_adam_matches_torch():
    import torch

    h, b = _quadratic(seed=2)
    xt = torch.zeros(len(b), requires_grad=True)
    topt = torch.optim.Adam([xt], lr=0.05)
    x = np.zeros(len(b), np.float32)
    ours = Adam(len(b), lr=0.05)
    for _ in range(20):
        g = (h @ x - b).astype(np.float32)
        x = ours.step(x, g)
        topt.zero_grad()
        xt.grad = torch.tensor((h @ xt.detach().numpy() - b), dtype=torch.float32)
        topt.step()
    assert np.allclose(x, xt.detach().numpy(), atol=1e-5)


def test_lbfgs_quasi_newton_step_is_capped_per_pixel():
    """A quasi-Newton step moves no pixel by more than MAX_QN_STEP * lr; the direction is kept and the
    pair the step makes is the step taken (the next step is the uncapped run's after the same pairs)."""
    from nst_ort.engine.optim import MAX_QN_STEP

    h, b = _quadratic(seed=1)
    b = 20.0 * b  # the minimizer lies far away: the first quasi-Newton step would move by several units
    capped, free = LBFGS(len(b), lr=1.0, history=5), LBFGS(len(b), lr=1.0, history=5)
    free.max_qn_step = float("inf")
    x = np.zeros(len(b), np.float32)
    g = (h @ x - b).astype(np.float32)
    x1 = capped.step(x, g)
    assert free.step(x, g) == pytest.approx(x1)  # the first step is steepest descent: not capped
    g1 = (h @ x1 - b).astype(np.float32)
    x2, x2_free = capped.step(x1, g1), free.step(x1, g1)
    assert np.abs(x2_free - x1).max() > 2 * MAX_QN_STEP
    assert np.abs(x2 - x1).max() == pytest.approx(MAX_QN_STEP, rel=1e-5)
    step, step_free = x2 - x1, x2_free - x1
    cos = float(step @ step_free) / float(np.linalg.norm(step) * np.linalg.norm(step_free))
    assert cos > 1 - 1e-6
    assert capped.t < 1.0 and float(np.abs(capped.t * capped.d).max()) == pytest.approx(MAX_QN_STEP, rel=1e-5)


def test_lbfgs_survives_concave_start():
    """Gram losses are locally concave at the content image: no explosion, the loss falls."""
    def f_and_g(x):  # (x^2 - 1)^2 summed: concave near 0
        return float(((x**2 - 1) ** 2).sum()), (4 * x * (x**2 - 1)).astype(np.float32)

    x = np.full(100, 0.1, np.float32)
    opt = LBFGS(100, lr=1.0)
    f0, _ = f_and_g(x)
    # Steepest-descent steps are capped at 0.01 per pixel: ~50 steps to leave the concave region.
    for _ in range(150):
        f, g = f_and_g(x)
        assert np.isfinite(f)
        x = opt.step(x, g)
    assert f_and_g(x)[0] < 1e-3 * f0


def test_state_dict_round_trip():
    h, b = _quadratic(seed=3)
    a, c = LBFGS(len(b), history=4), None
    x = np.zeros(len(b), np.float32)
    for _ in range(6):
        x = a.step(x, (h @ x - b).astype(np.float32))
    c = LBFGS(len(b), history=4)
    c.load_state_dict(a.state_dict())
    xa = xc = x
    for _ in range(5):
        xa = a.step(xa, (h @ xa - b).astype(np.float32))
        xc = c.step(xc, (h @ xc - b).astype(np.float32))
    assert np.array_equal(xa, xc)
