"""L-BFGS and Adam on flat float32 vectors, in ask-tell form: step(x, grad) -> new x.

L-BFGS follows torch.optim.LBFGS without line search, as neural-style runs it (one function
evaluation per iteration, history 100, first step scaled by min(1, 1/|g|_1)). Their whole state is a
dict of arrays, which is what a checkpoint saves.
"""
from __future__ import annotations

import numpy as np

from ..base.errors import UsageError

CURVATURE_MIN = 1e-10  # a pair (s, y) is kept only if y.s exceeds this: torch.optim.LBFGS's test
MAX_STEP = 0.01  # largest pixel change of a steepest-descent step, in [0, 1] units, times lr
CURVATURE_SPREAD = 1e12  # a new pair's y.s this many times off the history's restarts the history
MAX_QN_STEP = 0.5  # largest pixel change of a quasi-Newton step, in [0, 1] units, times lr


def curvature_jump(history_ys, ys: float) -> bool:
    """Whether a new pair's curvature y.s is more than CURVATURE_SPREAD times larger or smaller than
    every pair's in the history (both loops and the browser apply it).

    Deviation from torch.optim.LBFGS. Without a line search the first quasi-Newton step after the
    tiny steepest-descent steps can overshoot by orders of magnitude (measured: a 192x144 frame,
    default weights, loss 1.4e7 -> 1.6e20 at iteration 16). The pair that step makes has y.s ~1e20
    beside pairs of ~10; the two-loop recursion then steps back, but the compact form the device loop
    uses (float32 projections S g, Y g) loses every digit at that spread and walked on from 1e17.
    Keeping only the new pair gives both forms the same, well-conditioned step back."""
    if ys <= 0 or len(history_ys) == 0:
        return False
    h = np.asarray(history_ys, np.float64)
    return bool(ys > CURVATURE_SPREAD * h.max() or ys * CURVATURE_SPREAD < h.min())


def steepest_descent_length(t: float, growing: bool, g_l1: float, g_max: float, lr: float,
                            max_step: float = MAX_STEP) -> float:
    """The step length along -g when L-BFGS has no usable curvature pair (optim.LBFGS and the device
    loop's L-BFGS both take it from here).

    Deviation from torch.optim.LBFGS. Without a curvature pair (first step, or pairs rejected because
    the loss is locally concave, as Gram losses are at the content image: y.s < 0 was measured there),
    torch steps -g with t = lr and explodes (style terms ~1e9). We take steepest descent from torch's
    first-step size min(1, 1/|g|_1) * lr, doubling while no pair is accepted (`growing`: the previous
    step was such a step too), capped at `max_step` per pixel; the caller restarts the history when
    the direction went uphill.
    """
    first = min(1.0, 1.0 / max(g_l1, 1e-30)) * lr
    grown = t * 2.0 if growing else first
    cap = max_step * lr / max(g_max, 1e-30)
    return max(first, min(grown, cap))


def quasi_newton_length(lr: float, d_max: float, max_step: float = MAX_QN_STEP) -> float:
    """The step length along a quasi-Newton direction d (largest component d_max): lr, shortened so
    that no pixel moves by more than `max_step` * lr (optim.LBFGS, the device loop and the browser).

    Deviation from torch.optim.LBFGS (which always steps lr). Without a line search the first
    quasi-Newton step scales by y.s / y.y from the pair the tiny first step made (y = g1 - g0, |y| / |g| ~ 0.02:
    two of float32's seven digits are gone); measured at 128 px (chelsea_cat / great_wave) it moved
    pixels by 3.4 (their range is 1) and the loss went 3.1e7 -> 2.2e10. Where such a step lands
    depends on the gradients' last bits: after 20 iterations another thread count, graph variant or
    loop moved the loss by 1-3.1%, and 1e-7 relative noise on each gradient by 2.1-2.3%; capped,
    0.1-0.4%, and the loss after 20 iterations is 43% lower. On two other pairs the cap binds less
    (tuebingen / starry_night) or never (astronaut / the_scream), and the spread stays 0.1-1.3%
    either way. After 500 iterations the loss is the same within rounding's own spread (+0.11%,
    -0.32%, 0; 1e-7 noise alone moved it by +0.11% and -0.24%). benchmarks/provider_spread.py and
    benchmarks/RESULTS.md have the tables. The pair (s, y) a capped step makes is exact: s is the
    step taken."""
    return min(lr, max_step * lr / max(d_max, 1e-30))


class LBFGS:
    def __init__(self, n: int, lr: float = 1.0, history: int = 100):
        self.lr, self.m, self.n = float(lr), int(history), n
        self.S = np.zeros((self.m, n), np.float32)  # steps s_i (ring buffer)
        self.Y = np.zeros((self.m, n), np.float32)  # gradient changes y_i
        self.rho = np.zeros(self.m, np.float64)
        self.count = 0  # pairs stored
        self.head = 0  # next slot
        self.k = 0  # iterations done
        self.h_diag = 1.0
        self.d = np.zeros(n, np.float32)
        self.t = 0.0
        self.g_prev = np.zeros(n, np.float32)
        self.restarts = 0
        self.sd_steps = 0  # consecutive steepest-descent steps (no curvature pair)
        self.max_step = MAX_STEP
        self.max_qn_step = MAX_QN_STEP

    def _order(self) -> list[int]:
        """Slots from oldest to newest."""
        start = (self.head - self.count) % self.m
        return [(start + i) % self.m for i in range(self.count)]

    def direction(self, g: np.ndarray) -> np.ndarray:
        q = -g.astype(np.float32, copy=True)
        order = self._order()
        alpha = np.zeros(self.m, np.float64)
        for i in reversed(order):
            alpha[i] = float(self.S[i] @ q) * self.rho[i]
            q -= np.float32(alpha[i]) * self.Y[i]
        r = q * np.float32(self.h_diag)
        for i in order:
            beta = float(self.Y[i] @ r) * self.rho[i]
            r += np.float32(alpha[i] - beta) * self.S[i]
        return r

    def step(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        if self.k > 0:
            y = g - self.g_prev
            s = self.d * np.float32(self.t)
            ys = float(y @ s)
            if ys > CURVATURE_MIN:
                if curvature_jump(1.0 / self.rho[self._order()], ys):
                    self.count, self.head, self.restarts = 0, 0, self.restarts + 1
                self.S[self.head], self.Y[self.head], self.rho[self.head] = s, y, 1.0 / ys
                self.head = (self.head + 1) % self.m
                self.count = min(self.count + 1, self.m)
                self.h_diag = ys / float(y @ y)
        self.g_prev = g.astype(np.float32, copy=True)
        gl1 = float(np.abs(g).sum())
        if self.count:
            self.d = self.direction(g)
            self.t = quasi_newton_length(self.lr, float(np.abs(self.d).max()), self.max_qn_step)
        if not self.count or float(g @ self.d) >= 0.0:
            # No curvature pair, or an uphill direction (which restarts the history): a capped
            # steepest-descent step (Deviation: see steepest_descent_length).
            if self.count:
                self.count, self.head, self.restarts = 0, 0, self.restarts + 1
            self.d = -g.astype(np.float32, copy=True)
            self.t = steepest_descent_length(self.t, self.k > 0 and self.sd_steps > 0, gl1,
                                             float(np.abs(g).max()), self.lr, self.max_step)
            self.sd_steps += 1
        else:
            self.sd_steps = 0
        self.k += 1
        return x + np.float32(self.t) * self.d

    def state_dict(self) -> dict:
        c = self._order()
        return {"kind": "lbfgs", "lr": self.lr, "m": self.m, "S": self.S[c], "Y": self.Y[c], "rho": self.rho[c],
                "k": self.k, "h_diag": self.h_diag, "d": self.d, "t": self.t, "g_prev": self.g_prev,
                "restarts": self.restarts, "sd_steps": self.sd_steps}

    def load_state_dict(self, s: dict) -> None:
        c = len(s["rho"])
        self.S[:c], self.Y[:c], self.rho[:c] = s["S"], s["Y"], s["rho"]
        self.count, self.head = c, c % self.m
        self.k, self.h_diag, self.t = int(s["k"]), float(s["h_diag"]), float(s["t"])
        self.d, self.g_prev = s["d"].astype(np.float32), s["g_prev"].astype(np.float32)
        self.restarts, self.sd_steps = int(s["restarts"]), int(s["sd_steps"])


class Adam:
    def __init__(self, n: int, lr: float = 0.02, betas=(0.9, 0.999), eps: float = 1e-8):
        self.lr, self.b1, self.b2, self.eps = float(lr), betas[0], betas[1], eps
        self.m1 = np.zeros(n, np.float32)
        self.m2 = np.zeros(n, np.float32)
        self.k = 0

    def step(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        self.k += 1
        self.m1 = self.b1 * self.m1 + (1 - self.b1) * g
        self.m2 = self.b2 * self.m2 + (1 - self.b2) * g * g
        mhat = self.m1 / (1 - self.b1**self.k)
        vhat = self.m2 / (1 - self.b2**self.k)
        return (x - self.lr * mhat / (np.sqrt(vhat) + self.eps)).astype(np.float32)

    def state_dict(self) -> dict:
        return {"kind": "adam", "lr": self.lr, "m1": self.m1, "m2": self.m2, "k": self.k}

    def load_state_dict(self, s: dict) -> None:
        self.m1, self.m2, self.k = s["m1"].astype(np.float32), s["m2"].astype(np.float32), int(s["k"])


def check_state(s: dict, n: int, name: str, history: int) -> None:
    """Refuse an optimizer state_dict (a checkpoint's) that does not fit an image of n floats and
    this optimizer, before a loop takes it: UsageError naming the field (never an IndexError later)."""
    def bad(what: str) -> UsageError:
        return UsageError(f"checkpoint: optimizer state: {what}"[:300])

    if not isinstance(s, dict) or s.get("kind") != name:
        raise bad(f"kind is {s.get('kind') if isinstance(s, dict) else s!r}, this run uses {name!r}")

    def array(key: str, shape: tuple) -> np.ndarray:
        a = s.get(key)
        if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype.kind != "f":
            got = f"{a.dtype} {list(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__
            raise bad(f"{key} is {got}, expected floats {list(shape)}")
        if not np.isfinite(a).all():
            raise bad(f"{key} has NaN or Inf")
        return a

    def number(key: str, integer: bool = False) -> float:
        v = s.get(key)
        ok = isinstance(v, (int, np.integer)) if integer else isinstance(v, (int, float, np.integer, np.floating))
        if isinstance(v, bool) or not ok or not np.isfinite(float(v)) or (integer and not 0 <= v <= 2**53):
            raise bad(f"{key} is {v!r}")
        return float(v)

    number("k", integer=True)
    if name == "adam":
        array("m1", (n,)), array("m2", (n,))
        return
    rho = s.get("rho")
    c = rho.shape[0] if isinstance(rho, np.ndarray) and rho.ndim == 1 else -1
    if not 0 <= c <= history:
        raise bad(f"{c if c >= 0 else 'no'} curvature pairs for a history of {history}")
    array("rho", (c,)), array("S", (c, n)), array("Y", (c, n)), array("d", (n,)), array("g_prev", (n,))
    number("h_diag"), number("t")
    number("restarts", integer=True), number("sd_steps", integer=True)
    for key in ("R", "YY"):  # the device loop's dot products (optional)
        if s.get(key) is not None:
            array(key, (c, c))
    slots = s.get("slots")
    if slots is not None:
        if (not isinstance(slots, np.ndarray) or slots.dtype.kind not in "iu" or slots.shape != (c,)
                or len(set(slots.tolist())) != c or not all(0 <= i < history for i in slots.tolist())):
            raise bad(f"slots must be {c} distinct buffer rows below {history}")


def make(name: str, n: int, lr: float, history: int = 100):
    if name == "lbfgs":
        return LBFGS(n, lr=lr, history=history)
    if name == "adam":
        return Adam(n, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}: use lbfgs or adam")
