// L-BFGS and Adam over the model's optimizer graphs (manifest "optimizers"), step for step the
// algorithm of nst_ort/engine/device_loop.py (DeviceLBFGS, DeviceAdam), which is nst_ort.engine.optim's:
//
// L-BFGS is torch.optim.LBFGS without line search (neural-style's settings) in the compact form of
// Byrd, Nocedal & Schnabel (1994): the graphs do every O(n) operation (lbfgs_pair: s, y and the step's
// scalars; lbfgs_project: S [g y], Y [g y]; lbfgs_direction: d = c g + a S + b Y, x + t d), and the
// k x k algebra (R = triu(S Y^T), Y^T Y, two solves) is done here in float64, as the Python host does.
// Deviation (from torch, as nst_ort.engine.optim.LBFGS): without a curvature pair (first step, or pairs
// rejected while the loss is locally concave, y.s <= 1e-10) a step is steepest descent from torch's
// first-step size min(1, 1/|g|_1) * lr, doubling while no pair is accepted, capped at max_step per
// pixel; a direction that is not downhill restarts the history.
// Deviation (as nst_ort.engine.optim.quasi_newton_length): a quasi-Newton step is lr, shortened so that no pixel
// moves by more than maxQnStep * lr (without a line search the first one moved pixels by 3.4 and sent the
// loss from 3e7 to 2e10, and where it landed depended on the gradients' last bits).
import { dot, matvec, solve, transpose, zeros } from './linalg.js';

const finite = (arr) => arr.every(Number.isFinite);

export class LBFGS {
  // graphs: { pair, project, direction } sessions; vectors: CpuVectors | GpuVectors; n = 3*H*W.
  constructor(graphs, vectors, n, { lr = 1.0, history = 100 } = {}) {
    this.g = graphs;
    this.v = vectors;
    this.n = n;
    this.lr = lr;
    this.m = history;
    this.S = vectors.history(this.m + 1, n); // one spare slot: a new pair is written before it is accepted
    this.Y = vectors.history(this.m + 1, n);
    this.d = vectors.tensor(new Float32Array(n), [n]);
    this.order = []; // slots, oldest first
    this.R = []; // R[i][j] = s_i . y_j (i <= j), in `order`
    this.YY = [];
    this.k = 0;
    this.hDiag = 1.0;
    this.t = 0.0;
    this.restarts = 0;
    this.sdSteps = 0;
    this.maxStep = 0.01; // as nst_ort.engine.optim.LBFGS
    this.maxQnStep = 0.5; // as nst_ort.engine.optim.MAX_QN_STEP
  }

  free() {
    for (let i = 0; i <= this.m; i++) if (!this.order.includes(i)) return i;
    throw new Error('L-BFGS: no free history slot');
  }

  dropOldest() {
    this.order.shift();
    this.R = this.R.slice(1).map((r) => r.slice(1));
    this.YY = this.YY.slice(1).map((r) => r.slice(1));
  }

  // x, g, gPrev: [n] tensors (gPrev: the last step's gradient). Returns the new image tensor, or null
  // (changing nothing) when the gradient is not finite.
  async step(x, g, gPrev) {
    const { v } = this;
    const f = this.free();
    const firstIter = this.k === 0;
    const pair = await this.g.pair.run({
      g, g_prev: firstIter ? g : gPrev, d: this.d, t: v.scalar(firstIter ? 0 : this.t),
    });
    v.setRow(this.S, f, pair.s);
    v.setRow(this.Y, f, pair.y);
    v.release(pair.s);
    const [ys, yy, gg, gl1, gmax] = ['ys', 'yy', 'gg', 'g_l1', 'g_max'].map((k) => pair[k].data[0]);
    if (!(Number.isFinite(gl1) && Number.isFinite(gg))) {
      v.release(pair.y);
      return null;
    }
    const accepted = !firstIter && ys > 1e-10; // curvature condition, as torch
    if (accepted && this.order.length) {
      // Deviation: a pair whose y.s is more than 1e12 times off every pair's in the history restarts
      // the history with the new pair alone (nst_ort/engine/optim.py curvature_jump: the compact form's
      // float32 projections lose every digit at that spread after an overshooting step).
      const diag = this.R.map((row, i) => row[i]);
      if (ys > 1e12 * Math.max(...diag) || ys * 1e12 < Math.min(...diag)) {
        this.order = [];
        this.R = [];
        this.YY = [];
        this.restarts += 1;
      }
    }
    if (accepted) {
      this.order.push(f);
      this.hDiag = ys / yy;
    }
    let count = this.order.length;
    let rows = Math.max(...this.order, f) + 1;
    let dir = null, t = this.t, gd = 0;
    if (count) {
      t = this.lr;
      const proj = await this.g.project.run({ S: v.rows(this.S, rows), Y: v.rows(this.Y, rows), g, y: pair.y });
      const sp = proj.SP.data, yp = proj.YP.data; // [rows, 2]: S g, S y | Y g, Y y
      if (accepted) {
        const k = count;
        const R = zeros(k, k), YY = zeros(k, k);
        for (let i = 0; i < k - 1; i++) for (let j = 0; j < k - 1; j++) {
          R[i][j] = this.R[i][j];
          YY[i][j] = this.YY[i][j];
        }
        for (let i = 0; i < k; i++) {
          R[i][k - 1] = sp[this.order[i] * 2 + 1];
          YY[i][k - 1] = yp[this.order[i] * 2 + 1];
        }
        for (let j = 0; j < k; j++) YY[k - 1][j] = yp[this.order[j] * 2 + 1];
        R[k - 1][k - 1] = ys;
        this.R = R;
        this.YY = YY;
        if (count > this.m) {
          this.dropOldest();
          count -= 1;
        }
      }
      const u = Float64Array.from(this.order, (i) => sp[i * 2]);
      const vv = Float64Array.from(this.order, (i) => yp[i * 2]);
      const gamma = this.hDiag;
      const w = solve(this.R, u);
      let p = null;
      if (w) {
        const M = this.YY.map((row, i) => row.map((val, j) => (i === j ? this.R[i][i] : 0) + gamma * val));
        p = solve(transpose(this.R), matvec(M, w).map((val, i) => val - gamma * vv[i]));
      }
      if (w && p && finite(w) && finite(p)) {
        const a = new Float64Array(rows), b = new Float64Array(rows);
        this.order.forEach((slot, i) => {
          a[slot] = -p[i];
          b[slot] = gamma * w[i];
        });
        dir = { a, b, c: -gamma };
        gd = -gamma * gg - dot(u, p) + gamma * dot(vv, w);
      } else {
        gd = 0; // numerically broken history: restart below
      }
    }
    v.release(pair.y);
    if (dir === null || gd >= 0) {
      // Deviation (see the top of this file): steepest descent, growing, capped.
      if (count) {
        this.order = [];
        this.R = [];
        this.YY = [];
        this.restarts += 1;
      }
      const first = Math.min(1.0, 1.0 / Math.max(gl1, 1e-30)) * this.lr;
      const grown = this.k > 0 && this.sdSteps > 0 ? t * 2.0 : first;
      const cap = (this.maxStep * this.lr) / Math.max(gmax, 1e-30);
      t = Math.max(first, Math.min(grown, cap));
      this.sdSteps += 1;
      rows = 1;
      dir = { a: new Float64Array(1), b: new Float64Array(1), c: -1.0 };
    } else {
      this.sdSteps = 0;
    }
    this.t = t;
    const direction = (step) => this.g.direction.run({
      S: v.rows(this.S, rows), Y: v.rows(this.Y, rows), g, x,
      a: v.tensor(Float32Array.from(dir.a), [1, rows]), b: v.tensor(Float32Array.from(dir.b), [1, rows]),
      c: v.scalar(dir.c), t: v.scalar(step),
    });
    let out = await direction(t);
    if (this.sdSteps === 0) {
      // max|d| from the pair graph's g_max with d as its gradient (as device_loop.py _d_max); where the
      // step is too long it is taken again, shorter.
      const m = await this.g.pair.run({ g: out.d, g_prev: out.d, d: out.d, t: v.scalar(0) });
      v.release(m.s);
      v.release(m.y);
      const capped = Math.min(this.lr, (this.maxQnStep * this.lr) / Math.max(m.g_max.data[0], 1e-30));
      if (capped < t) {
        this.t = capped;
        v.release(out.d);
        v.release(out.x_new);
        out = await direction(capped);
      }
    }
    v.release(this.d);
    this.d = out.d;
    this.k += 1;
    return out.x_new;
  }

  dispose() {
    this.v.releaseHistory(this.S);
    this.v.releaseHistory(this.Y);
    this.v.release(this.d);
  }
}

export class Adam {
  constructor(graphs, vectors, n, { lr = 0.02, betas = [0.9, 0.999], eps = 1e-8 } = {}) {
    this.g = graphs;
    this.v = vectors;
    this.lr = lr;
    [this.b1, this.b2] = betas;
    this.eps = eps;
    this.m1 = vectors.tensor(new Float32Array(n), [n]);
    this.m2 = vectors.tensor(new Float32Array(n), [n]);
    this.k = 0;
  }

  async step(x, g) {
    const { v } = this;
    const k = this.k + 1;
    const out = await this.g.update.run({
      x, g, m1: this.m1, m2: this.m2,
      lr_c1: v.scalar(this.lr / (1 - this.b1 ** k)), beta1: v.scalar(this.b1), beta2: v.scalar(this.b2),
      c2: v.scalar(1.0 / (1 - this.b2 ** k)), eps: v.scalar(this.eps),
    });
    v.release(this.m1);
    v.release(this.m2);
    this.m1 = out.m1_new;
    this.m2 = out.m2_new;
    this.k = k;
    return out.x_new;
  }

  dispose() {
    this.v.release(this.m1);
    this.v.release(this.m2);
  }
}

// learning rate defaults as nst_ort.engine.config.OptimConfig
export function defaultLr(name) {
  return name === 'lbfgs' ? 1.0 : 0.02;
}
