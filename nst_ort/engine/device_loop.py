"""The whole iteration on the device: training graph and optimizer update, IOBinding throughout.

The image, its gradient and the optimizer state (L-BFGS history, Adam moments) live in device buffers
(host memory on the CPU provider, GPU memory on CUDA), bound by pointer. Per iteration only scalars
cross to the host: the loss terms, a few dot products, and for L-BFGS the history projections
(2 x history floats) and the coefficients that come back. The optimizer graphs are written at export
time (export/optim_graphs.py, listed in manifest.json under "optimizers"); without them the Stylizer
uses the host loop (loop.HostLoop: session.TrainStep + optim.py), which gives the same iterates up to
rounding. DeviceLoop is the other implementation of loop.Loop.

L-BFGS here is nst_ort.engine.optim.LBFGS (torch.optim.LBFGS without line search, plus its documented
steepest-descent deviation) in the compact form of Byrd, Nocedal & Schnabel (see optim_graphs.py):
the k x k algebra in float64 on the host, every O(n) operation in the graphs. The state_dict format
is optim.py's, so checkpoints move freely between the two loops.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from ..base.errors import ArtifactError, NumericalError
from .contract import Losses
from .optim import CURVATURE_MIN, MAX_QN_STEP, MAX_STEP, curvature_jump, quasi_newton_length, steepest_descent_length
from .session import Graphs, TrainingGraph, run_error
from .terms import bind

F32 = 4  # bytes


class Buffer:
    """A float32 device buffer [rows, n]; views are (pointer, shape) pairs for IOBinding."""

    def __init__(self, device: str, rows: int, n: int, zero: bool = True):
        self.device, self.rows, self.n = device, rows, n
        host = np.zeros((rows, n), np.float32)
        if device == "cpu":
            self.host = host  # OrtValue shares this memory; zero pages are only touched when written
            self.value = ort.OrtValue.ortvalue_from_numpy(host)
        else:
            self.host = None
            self.value = (ort.OrtValue.ortvalue_from_numpy(host, device, 0) if zero else
                          ort.OrtValue.ortvalue_from_shape_and_type([rows, n], np.float32, device, 0))
        self.ptr = self.value.data_ptr()

    def row(self, i: int) -> int:
        return self.ptr + i * self.n * F32

    def fetch(self, rows=None) -> np.ndarray:
        if self.host is not None:
            return (self.host if rows is None else self.host[rows]).copy()
        a = self.value.numpy()
        return a if rows is None else a[rows]

    def upload(self, row: int, data: np.ndarray) -> None:
        """Rows row.. of the buffer from data [k, n] or [n] (one host-to-device copy of the buffer)."""
        data = np.ascontiguousarray(data, np.float32).reshape(-1, self.n)
        if self.host is not None:
            self.host[row:row + len(data)] = data
        else:
            full = self.value.numpy()
            full[row:row + len(data)] = data
            self.value.update_inplace(full)


class Runner:
    """One optimizer graph: bind by pointer, scalars through the host, run."""

    def __init__(self, session: ort.InferenceSession, device: str):
        self.sess, self.device = session, device
        self.outputs = [o.name for o in self.sess.get_outputs()]

    def __call__(self, dev: dict, host: dict, out_dev: dict, what: str) -> dict:
        """dev/out_dev: name -> (pointer, shape); host: name -> numpy array. Returns host outputs."""
        b = self.sess.io_binding()
        keep = []
        for name, (ptr, shape) in dev.items():
            b.bind_input(name, self.device, 0, np.float32, list(shape), ptr)
        for name, arr in host.items():
            # np.require, not ascontiguousarray: that turns a 0-d scalar into shape [1], which the
            # CPU provider broadcasts but OpenVINO refuses ("model input shape=[], tensor shape=(1)").
            arr = np.require(arr, np.float32, "C")
            keep.append(arr)
            b.bind_cpu_input(name, arr)
        host_out = [n for n in self.outputs if n not in out_dev]
        for name in self.outputs:
            if name in out_dev:
                ptr, shape = out_dev[name]
                b.bind_output(name, self.device, 0, np.float32, list(shape), ptr)
            else:
                b.bind_output(name, "cpu")
        try:
            self.sess.run_with_iobinding(b)
        except Exception as e:  # noqa: BLE001
            raise run_error(e, what) from None
        vals = b.get_outputs()  # in binding order, which is the graph's output order
        return {name: vals[i].numpy() for i, name in enumerate(self.outputs) if name in host_out}


# The k x k algebra below is written out instead of calling np.linalg.solve and `@`: those go to
# numpy's BLAS/LAPACK, whose own thread pool (OpenBLAS: one thread per core) wakes for a 100 x 100
# solve and then waits for cores that onnxruntime's threads hold. Measured on the 2-core machine
# (busy, 256 px, history 100): np.linalg.solve 0.4-1.1 s per iteration with BLAS threads, 0.3 ms with
# one; these loops take about 0.3 ms. They also make the coefficients independent of the BLAS build
# and its thread count.
def _solve_triangular(R: np.ndarray, b: np.ndarray, upper: bool) -> np.ndarray:
    """x with R x = b (upper) or R^T x = b (upper=False), R upper triangular, by substitution."""
    k = len(b)
    x = np.zeros(k)
    if upper:
        for i in range(k - 1, -1, -1):
            x[i] = (b[i] - float(np.multiply(R[i, i + 1:], x[i + 1:]).sum())) / R[i, i]
    else:  # R^T is lower triangular
        L = np.ascontiguousarray(R.T)
        for i in range(k):
            x[i] = (b[i] - float(np.multiply(L[i, :i], x[:i]).sum())) / L[i, i]
    return x


def _matvec(M: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.multiply(M, v).sum(axis=1)


class DeviceLBFGS:
    def __init__(self, runners: dict, device: str, n: int, lr: float = 1.0, history: int = 100):
        self.r, self.device, self.n = runners, device, n
        self.lr, self.m = float(lr), int(history)
        self.S = Buffer(device, self.m + 1, n)  # one spare slot: a new pair is written before it is accepted
        self.Y = Buffer(device, self.m + 1, n)
        self.d = Buffer(device, 1, n)
        self.scratch = Buffer(device, 2, n)  # the pair graph's s and y when it only measures max|d|
        self.order: list[int] = []  # slots, oldest first
        self.R = np.zeros((0, 0))  # R[i, j] = s_i . y_j (i <= j), in `order`
        self.YY = np.zeros((0, 0))
        self.k = 0
        self.h_diag = 1.0
        self.t = 0.0
        self.restarts = 0
        self.sd_steps = 0
        self.max_step = MAX_STEP
        self.max_qn_step = MAX_QN_STEP

    def _free(self) -> int:
        used = set(self.order)
        return next(i for i in range(self.m + 1) if i not in used)

    def _drop_oldest(self) -> None:
        self.order.pop(0)
        self.R, self.YY = self.R[1:, 1:], self.YY[1:, 1:]

    def step(self, x: int, g: int, g_prev: int, x_out: int) -> bool:
        """Pointers to [n] buffers: x, g (in), g_prev (the last step's gradient), x_out (new image).
        Returns False (and changes nothing) if the gradient is not finite."""
        f = self._free()
        first_iter = self.k == 0
        ys, yy, gg, gl1, gmax = self._pair(f, g, g_prev, first_iter)
        if not (np.isfinite(gl1) and np.isfinite(gg)):
            return False
        accepted = not first_iter and ys > CURVATURE_MIN
        if accepted and self.order and curvature_jump(np.diag(self.R), ys):
            # Deviation: see optim.curvature_jump (the history restarts with the new pair alone).
            self.order, self.R, self.YY = [], np.zeros((0, 0)), np.zeros((0, 0))
            self.restarts += 1
        if accepted:
            self.order.append(f)
            self.h_diag = ys / yy
        rows = max(self.order + [f]) + 1
        t, coefficients = self.t, None
        if self.order:
            t = self.lr
            coefficients = self._quasi_newton(f, g, rows, ys if accepted else None, gg)
        if coefficients is None:
            # No curvature pair, or an uphill direction (which restarts the history): optim.LBFGS's
            # capped steepest-descent step (Deviation: see optim.steepest_descent_length).
            if self.order:
                self.order, self.R, self.YY = [], np.zeros((0, 0)), np.zeros((0, 0))
                self.restarts += 1
            t = steepest_descent_length(t, self.k > 0 and self.sd_steps > 0, gl1, gmax, self.lr, self.max_step)
            self.sd_steps += 1
            rows, coefficients = 1, (np.zeros(1), np.zeros(1), -1.0)
        else:
            self.sd_steps = 0
        self.t = t
        self._direction(coefficients, rows, g, x, x_out)
        if self.sd_steps == 0:
            # optim.quasi_newton_length needs max|d|, known only once d is on the device: measured,
            # and where it is too long the step is taken again, shorter (early iterations only).
            t = quasi_newton_length(self.lr, self._d_max(), self.max_qn_step)
            if t < self.t:
                self.t = t
                self._direction(coefficients, rows, g, x, x_out)
        self.k += 1
        return True

    def _d_max(self) -> float:
        """max|d| of the direction buffer: the pair graph's g_max with d as its gradient (y = 0, t = 0;
        s and y go to scratch)."""
        n = self.n
        sc = self.r["pair"]({"g": (self.d.ptr, [n]), "g_prev": (self.d.ptr, [n]), "d": (self.d.ptr, [n])},
                            {"t": np.array(0.0, np.float32)},
                            {"s": (self.scratch.row(0), [n]), "y": (self.scratch.row(1), [n])}, "L-BFGS pair graph")
        return float(sc["g_max"])

    def _pair(self, f: int, g: int, g_prev: int, first_iter: bool) -> tuple[float, ...]:
        """s = t d and y = g - g_prev into slot f; returns y.s, y.y, g.g, |g|_1, max|g|."""
        n = self.n
        sc = self.r["pair"](
            {"g": (g, [n]), "g_prev": (g if first_iter else g_prev, [n]), "d": (self.d.ptr, [n])},
            {"t": np.array(0.0 if first_iter else self.t, np.float32)},
            {"s": (self.S.row(f), [n]), "y": (self.Y.row(f), [n])}, "L-BFGS pair graph")
        return tuple(float(sc[k]) for k in ("ys", "yy", "gg", "g_l1", "g_max"))

    def _quasi_newton(self, f: int, g: int, rows: int, ys: float | None, gg: float):
        """The compact-form direction -H g = a S + b Y + c g as (a [rows], b [rows], c), or None where
        the history is numerically broken or the direction goes uphill. ys: the new pair's y.s if it
        was accepted (R and Y^T Y grow by it)."""
        n = self.n
        proj = self.r["project"](
            {"S": (self.S.ptr, [rows, n]), "Y": (self.Y.ptr, [rows, n]), "g": (g, [n]), "y": (self.Y.row(f), [n])},
            {}, {}, "L-BFGS projection graph")
        sp, yp = proj["SP"].astype(np.float64), proj["YP"].astype(np.float64)
        if ys is not None:
            self._grow(sp[self.order, 1], yp[self.order, 1], ys)
        u, v = sp[self.order, 0], yp[self.order, 0]
        gamma = self.h_diag
        with np.errstate(all="ignore"):  # a broken history shows as non-finite w or p below
            w = _solve_triangular(self.R, u, upper=True)
            p = _solve_triangular(self.R, _matvec(np.diag(np.diag(self.R)) + gamma * self.YY, w) - gamma * v,
                                  upper=False)
        if not (np.isfinite(w).all() and np.isfinite(p).all()):
            return None
        if -gamma * gg - float(u @ p) + gamma * float(v @ w) >= 0.0:  # g.d: uphill
            return None
        a = np.zeros(rows)
        b = np.zeros(rows)
        a[self.order] = -p
        b[self.order] = gamma * w
        return a, b, -gamma

    def _grow(self, s_y: np.ndarray, y_y: np.ndarray, ys: float) -> None:
        """R and Y^T Y gain the new pair's column (s_i . y_new and y_i . y_new over the history, the
        new pair last); past `history` pairs the oldest goes."""
        k = len(self.order)
        R = np.zeros((k, k))
        R[: k - 1, : k - 1] = self.R
        R[:, k - 1] = s_y
        R[k - 1, k - 1] = ys
        YY = np.zeros((k, k))
        YY[: k - 1, : k - 1] = self.YY
        YY[:, k - 1] = YY[k - 1, :] = y_y
        self.R, self.YY = R, YY
        if k > self.m:
            self._drop_oldest()

    def _direction(self, coefficients, rows: int, g: int, x: int, x_out: int) -> None:
        """d = a S + b Y + c g into the d buffer, and x_out = x + t d."""
        n = self.n
        a, b, c = coefficients
        self.r["direction"](
            {"S": (self.S.ptr, [rows, n]), "Y": (self.Y.ptr, [rows, n]), "g": (g, [n]), "x": (x, [n])},
            {"a": a.reshape(1, -1), "b": b.reshape(1, -1), "c": np.array(c, np.float32),
             "t": np.array(self.t, np.float32)},
            {"d": (self.d.ptr, [n]), "x_new": (x_out, [n])}, "L-BFGS direction graph")

    # -- state (optim.LBFGS's format) --------------------------------------------------------------
    def state_dict(self, g_prev: np.ndarray) -> dict:
        rho = 1.0 / np.diag(self.R) if len(self.order) else np.zeros(0)
        return {"kind": "lbfgs", "lr": self.lr, "m": self.m, "S": self.S.fetch(self.order),
                "Y": self.Y.fetch(self.order), "rho": rho, "k": self.k, "h_diag": self.h_diag,
                "d": self.d.fetch()[0], "t": self.t, "g_prev": g_prev, "restarts": self.restarts,
                "sd_steps": self.sd_steps,
                # The host-side dot products exactly as accumulated (float32 on the device, one pair
                # at a time): recomputing them from S and Y on load rounds differently, and the
                # resumed run would drift from the uninterrupted one by a few ulps per step.
                "R": self.R, "YY": self.YY,
                # Which buffer row holds each pair: the projection and direction graphs sum over
                # rows in slot order, so the same slots give the same rounding after a resume.
                "slots": np.asarray(self.order, np.int64)}

    def load_state_dict(self, s: dict) -> None:
        S, Y = np.asarray(s["S"], np.float32), np.asarray(s["Y"], np.float32)
        c = min(len(s["rho"]), self.m)
        S, Y = S[len(S) - c:], Y[len(Y) - c:]
        slots = [int(i) for i in np.asarray(s.get("slots", []), np.int64).reshape(-1)][len(s["rho"]) - c:]
        if len(slots) != c or len(set(slots)) != c or not all(0 <= i < self.m for i in slots):
            slots = list(range(c))  # a host-loop checkpoint, or another history size: pack them
        if c:
            rows = max(slots) + 1
            for buf, data in ((self.S, S), (self.Y, Y)):
                full = np.zeros((rows, self.n), np.float32)
                full[slots] = data
                buf.upload(0, full)
        self.order = slots
        R, YY = s.get("R"), s.get("YY")
        if R is not None and YY is not None and np.shape(R) == (c, c) and np.shape(YY) == (c, c):
            self.R, self.YY = np.asarray(R, np.float64), np.asarray(YY, np.float64)
        else:  # a host-loop checkpoint (optim.LBFGS keeps no dot products): recompute them
            self.R = np.triu((S @ Y.T).astype(np.float64)) if c else np.zeros((0, 0))
            if c:
                np.fill_diagonal(self.R, 1.0 / np.asarray(s["rho"], np.float64)[len(s["rho"]) - c:])
            self.YY = (Y @ Y.T).astype(np.float64) if c else np.zeros((0, 0))
        self.d.upload(0, s["d"])
        self.k, self.h_diag, self.t = int(s["k"]), float(s["h_diag"]), float(s["t"])
        self.restarts, self.sd_steps = int(s["restarts"]), int(s["sd_steps"])


class DeviceAdam:
    def __init__(self, runners: dict, device: str, n: int, lr: float = 0.02, betas=(0.9, 0.999), eps: float = 1e-8):
        self.r, self.n = runners, n
        self.lr, self.b1, self.b2, self.eps = float(lr), betas[0], betas[1], eps
        self.m1 = Buffer(device, 2, n)  # ping-pong: a graph's output never aliases its input
        self.m2 = Buffer(device, 2, n)
        self.cur = 0
        self.k = 0

    def step(self, x: int, g: int, g_prev: int, x_out: int) -> bool:
        n, c, o = self.n, self.cur, 1 - self.cur
        k = self.k + 1
        self.r["update"](
            {"x": (x, [n]), "g": (g, [n]), "m1": (self.m1.row(c), [n]), "m2": (self.m2.row(c), [n])},
            {"lr_c1": np.array(self.lr / (1 - self.b1**k), np.float32), "beta1": np.array(self.b1, np.float32),
             "beta2": np.array(self.b2, np.float32), "c2": np.array(1.0 / (1 - self.b2**k), np.float32),
             "eps": np.array(self.eps, np.float32)},
            {"x_new": (x_out, [n]), "m1_new": (self.m1.row(o), [n]), "m2_new": (self.m2.row(o), [n])},
            "Adam graph")
        self.k, self.cur = k, o
        return True

    def state_dict(self, g_prev=None) -> dict:
        return {"kind": "adam", "lr": self.lr, "m1": self.m1.fetch(self.cur), "m2": self.m2.fetch(self.cur), "k": self.k}

    def load_state_dict(self, s: dict) -> None:
        self.m1.upload(self.cur, s["m1"])
        self.m2.upload(self.cur, s["m2"])
        self.k = int(s["k"])


class DeviceLoop:
    """loop.Loop over device buffers: the training graph and the optimizer graphs, bound by pointer."""

    kind = "device"

    def __init__(self, graphs: Graphs, feeds: dict[str, np.ndarray], x0: np.ndarray, optimizer: str, lr: float,
                 history: int = 100, terms=None, train=None):
        """train: a host-side evaluation with TrainStep's call instead of the training graph
        (tiling.TiledTrainStep): the image comes to the host, the assembled gradient goes into the
        gradient buffer; the optimizer graphs and the terms run on the device as always."""
        device = graphs.placement.device
        self.shape = tuple(x0.shape)
        n = self.n = int(np.prod(self.shape))
        sessions = graphs.optimizer_sessions(optimizer)
        if sessions is None:
            raise ArtifactError(f"{graphs.artifacts.path}: no {optimizer} optimizer graphs in this model")
        runners = {role: Runner(sess, device) for role, sess in sessions.items()}
        self.x = Buffer(device, 2, n)  # ping-pong: current image and the next one
        self.g = Buffer(device, 2, n)  # ping-pong: this gradient and the previous one
        self.x.upload(0, x0)
        self.cur = 0
        self.steps = 0  # taken by this loop (a resumed optimizer may count more)
        self.train = train
        # targets and weights: on the device once (a tiled step keeps its own on the host)
        self.graph = TrainingGraph(graphs, feeds, self.shape) if train is None else None
        self.terms = bind(terms, device, self.shape)
        if not self.terms:
            self.bindings = [None, None] if train is not None else [
                self.graph.binding(self.x.row(p), self.g.row(p)) for p in (0, 1)]
            self.term_bindings = [[], []]
        else:
            # Extra terms: the training graph writes into scratch, each term reads one buffer and writes
            # another (never in place), the last into g[cur], which the optimizer reads.
            self.scratch = Buffer(device, min(len(self.terms), 2), n)
            self.bindings = [None, None] if train is not None else [
                self.graph.binding(self.x.row(p), self.scratch.row(0)) for p in (0, 1)]
            self.term_bindings = [[t.binding(self.x.row(p), self.scratch.row(i % 2),
                                             self.g.row(p) if i == len(self.terms) - 1 else self.scratch.row((i + 1) % 2))
                                   for i, t in enumerate(self.terms)] for p in (0, 1)]
        self.opt = (DeviceLBFGS(runners, device, n, lr=lr, history=history) if optimizer == "lbfgs" else
                    DeviceAdam(runners, device, n, lr=lr))

    def _evaluate(self, c: int) -> Losses:
        if self.train is None:
            return self.graph.run(self.bindings[c])
        *outputs, grad = self.train(self.x.fetch(c).reshape(self.shape))
        if self.terms:
            self.scratch.upload(0, grad.reshape(-1))
        else:
            self.g.upload(c, grad.reshape(-1))
        return Losses(*outputs)

    def step(self) -> Losses:
        c = self.cur
        losses = self._evaluate(c)
        if self.terms:
            extra = tuple((t.term.name, t.run(b)) for t, b in zip(self.terms, self.term_bindings[c]))
            losses = losses._replace(loss=losses.loss + sum(v for _, v in extra), terms=extra)
        if not np.isfinite(losses.loss) or not self.opt.step(self.x.row(c), self.g.row(c), self.g.row(1 - c),
                                                             self.x.row(1 - c)):
            raise NumericalError(f"loss became {losses.loss}")
        self.cur = 1 - c
        self.steps += 1
        return losses

    def image(self) -> np.ndarray:
        return self.x.fetch(self.cur).reshape(self.shape)

    def best(self) -> np.ndarray | None:
        # The other ping-pong slot holds the image the last successful step evaluated.
        return self.x.fetch(1 - self.cur).reshape(self.shape) if self.steps else None

    def state_dict(self) -> dict:
        return self.opt.state_dict(self.g.fetch(1 - self.cur))

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state)
        if isinstance(self.opt, DeviceLBFGS) and state.get("g_prev") is not None and self.opt.k > 0:
            self.g.upload(1 - self.cur, state["g_prev"])  # the previous gradient lives in the other slot
