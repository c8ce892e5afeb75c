// Color control (Gatys et al. 2017), as nst_ort/media/color.py: luminance-only transfer in YIQ and linear
// histogram matching (the style's pixels get the content's mean and covariance). Images: see images.js.
import { eighSym3 } from './linalg.js';

const RGB2YIQ = [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]].map((r) => r.map(Math.fround));

function inverse3(m) {
  const [[a, b, c], [d, e, f], [g, h, i]] = m;
  const A = e * i - f * h, B = -(d * i - f * g), C = d * h - e * g;
  const det = a * A + b * B + c * C;
  return [
    [A / det, -(b * i - c * h) / det, (b * f - c * e) / det],
    [B / det, (a * i - c * g) / det, -(a * f - c * d) / det],
    [C / det, -(a * h - b * g) / det, (a * e - b * d) / det],
  ].map((r) => r.map(Math.fround));
}
const YIQ2RGB = inverse3(RGB2YIQ);

function luma(data, i) {
  return Math.fround(RGB2YIQ[0][0] * data[i] + RGB2YIQ[0][1] * data[i + 1] + RGB2YIQ[0][2] * data[i + 2]);
}

// Luminance replicated to three channels (what the network sees).
export function luminance(img) {
  const out = new Float32Array(img.data.length);
  for (let i = 0; i < out.length; i += 3) out[i] = out[i + 1] = out[i + 2] = luma(img.data, i);
  return { width: img.width, height: img.height, data: out };
}

function meanStd(values) {
  let s = 0;
  for (const v of values) s += v;
  const mean = s / values.length;
  let q = 0;
  for (const v of values) q += (v - mean) ** 2;
  return [mean, Math.sqrt(q / values.length)];
}

// Style luminance with the content's luminance mean and std (paper, sec. 3.1).
export function matchLuminance(style, content) {
  const ys = new Float64Array(style.data.length / 3), yc = new Float64Array(content.data.length / 3);
  for (let p = 0; p < ys.length; p++) ys[p] = luma(style.data, p * 3);
  for (let p = 0; p < yc.length; p++) yc[p] = luma(content.data, p * 3);
  const [ms, ss] = meanStd(ys), [mc, sc] = meanStd(yc);
  const k = sc / Math.max(ss, 1e-6);
  const out = new Float32Array(style.data.length);
  for (let p = 0; p < ys.length; p++) out[p * 3] = out[p * 3 + 1] = out[p * 3 + 2] = (ys[p] - ms) * k + mc;
  return { width: style.width, height: style.height, data: out };
}

// Output luminance with the content's I and Q: the content's colors, the style's strokes.
export function recombine(stylized, content) {
  const out = new Float32Array(content.data.length);
  const c = content.data, s = stylized.data;
  for (let i = 0; i < out.length; i += 3) {
    const y = luma(s, i);
    const iq1 = Math.fround(RGB2YIQ[1][0] * c[i] + RGB2YIQ[1][1] * c[i + 1] + RGB2YIQ[1][2] * c[i + 2]);
    const iq2 = Math.fround(RGB2YIQ[2][0] * c[i] + RGB2YIQ[2][1] * c[i + 1] + RGB2YIQ[2][2] * c[i + 2]);
    for (let ch = 0; ch < 3; ch++) out[i + ch] = YIQ2RGB[ch][0] * y + YIQ2RGB[ch][1] * iq1 + YIQ2RGB[ch][2] * iq2;
  }
  return { width: content.width, height: content.height, data: out };
}

function meanCov(data) {
  const n = data.length / 3;
  const mu = [0, 0, 0];
  for (let i = 0; i < data.length; i += 3) for (let c = 0; c < 3; c++) mu[c] += data[i + c];
  for (let c = 0; c < 3; c++) mu[c] /= n;
  const cov = [[0, 0, 0], [0, 0, 0], [0, 0, 0]];
  for (let i = 0; i < data.length; i += 3) {
    const d = [data[i] - mu[0], data[i + 1] - mu[1], data[i + 2] - mu[2]];
    for (let a = 0; a < 3; a++) for (let b = 0; b < 3; b++) cov[a][b] += d[a] * d[b];
  }
  for (let a = 0; a < 3; a++) for (let b = 0; b < 3; b++) cov[a][b] = cov[a][b] / (n - 1) + (a === b ? 1e-5 : 0);
  return [mu, cov];
}

function sqrtm(c, inverse) {
  const { values, vectors: v } = eighSym3(c);
  const p = Array.from(values, (w) => Math.max(w, 1e-8) ** (inverse ? -0.5 : 0.5));
  const out = [[0, 0, 0], [0, 0, 0], [0, 0, 0]];
  for (let a = 0; a < 3; a++) for (let b = 0; b < 3; b++) {
    let s = 0;
    for (let k = 0; k < 3; k++) s += v[a][k] * p[k] * v[b][k];
    out[a][b] = s;
  }
  return out;
}

// Linear color transfer, not clipped (the network takes values outside [0, 1]; see color.py).
export function matchHistogram(style, content) {
  const [muS, covS] = meanCov(style.data), [muC, covC] = meanCov(content.data);
  const a1 = sqrtm(covC, false), a2 = sqrtm(covS, true);
  const A = [[0, 0, 0], [0, 0, 0], [0, 0, 0]];
  for (let i = 0; i < 3; i++) for (let j = 0; j < 3; j++) for (let k = 0; k < 3; k++) A[i][j] += a1[i][k] * a2[k][j];
  const out = new Float32Array(style.data.length);
  const s = style.data;
  for (let i = 0; i < s.length; i += 3) {
    const d = [s[i] - muS[0], s[i + 1] - muS[1], s[i + 2] - muS[2]];
    for (let c = 0; c < 3; c++) out[i + c] = A[c][0] * d[0] + A[c][1] * d[1] + A[c][2] * d[2] + muC[c];
  }
  return { width: style.width, height: style.height, data: out };
}
