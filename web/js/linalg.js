// Small dense float64 algebra for the host side of the loop: the L-BFGS k x k solves and the 3 x 3
// symmetric eigenproblem of histogram matching. Matrices are arrays of Float64Array rows.

export function zeros(rows, cols) {
  return Array.from({ length: rows }, () => new Float64Array(cols));
}

export function transpose(a) {
  const n = a.length, m = n ? a[0].length : 0;
  const t = zeros(m, n);
  for (let i = 0; i < n; i++) for (let j = 0; j < m; j++) t[j][i] = a[i][j];
  return t;
}

export function matvec(a, x) {
  const out = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) {
    let s = 0;
    const row = a[i];
    for (let j = 0; j < x.length; j++) s += row[j] * x[j];
    out[i] = s;
  }
  return out;
}

export function dot(a, b) {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

// A x = b by LU with partial pivoting (what numpy.linalg.solve does through LAPACK gesv).
// Returns null where numpy raises LinAlgError (an exactly zero pivot).
export function solve(a, b) {
  const n = a.length;
  const lu = a.map((row) => Float64Array.from(row));
  const x = Float64Array.from(b);
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(lu[r][c]) > Math.abs(lu[p][c])) p = r;
    if (lu[p][c] === 0) return null;
    if (p !== c) {
      [lu[p], lu[c]] = [lu[c], lu[p]];
      [x[p], x[c]] = [x[c], x[p]];
    }
    const piv = lu[c][c];
    for (let r = c + 1; r < n; r++) {
      const f = lu[r][c] / piv;
      if (f === 0) continue;
      lu[r][c] = f;
      for (let j = c + 1; j < n; j++) lu[r][j] -= f * lu[c][j];
      x[r] -= f * x[c];
    }
  }
  for (let r = n - 1; r >= 0; r--) {
    let s = x[r];
    for (let j = r + 1; j < n; j++) s -= lu[r][j] * x[j];
    x[r] = s / lu[r][r];
  }
  return x;
}

// Eigen-decomposition of a symmetric 3 x 3 matrix by cyclic Jacobi rotations:
// returns { values: Float64Array(3), vectors: columns as rows of a 3 x 3 (vectors[i][k] = v_k[i]) }.
export function eighSym3(m) {
  const a = m.map((r) => Float64Array.from(r));
  const v = [new Float64Array([1, 0, 0]), new Float64Array([0, 1, 0]), new Float64Array([0, 0, 1])];
  for (let sweep = 0; sweep < 50; sweep++) {
    const off = a[0][1] ** 2 + a[0][2] ** 2 + a[1][2] ** 2;
    if (off < 1e-30 * (a[0][0] ** 2 + a[1][1] ** 2 + a[2][2] ** 2) || off === 0) break;
    for (const [p, q] of [[0, 1], [0, 2], [1, 2]]) {
      if (a[p][q] === 0) continue;
      const theta = (a[q][q] - a[p][p]) / (2 * a[p][q]);
      const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
      const c = 1 / Math.sqrt(t * t + 1), s = t * c;
      for (let k = 0; k < 3; k++) {  // A <- A J
        const akp = a[k][p], akq = a[k][q];
        a[k][p] = c * akp - s * akq;
        a[k][q] = s * akp + c * akq;
      }
      for (let k = 0; k < 3; k++) {  // A <- J^T A
        const apk = a[p][k], aqk = a[q][k];
        a[p][k] = c * apk - s * aqk;
        a[q][k] = s * apk + c * aqk;
      }
      for (let k = 0; k < 3; k++) {  // V <- V J
        const vkp = v[k][p], vkq = v[k][q];
        v[k][p] = c * vkp - s * vkq;
        v[k][q] = s * vkp + c * vkq;
      }
    }
  }
  return { values: new Float64Array([a[0][0], a[1][1], a[2][2]]), vectors: v };
}
