// The exact tiled loss and gradient in the page (docs/tiling.md, "The protocol"; nst_ort/engine/tiling.py is
// the reference): the image in tiles, each run as a crop with a halo through the model's tile graphs,
// the whole-image parts on the host in float64 (the Grams' sums, the style losses and dL/dG, TV).
// Only one crop's activations are ever in the wasm heap, so a 2048 px image fits its 4 GiB.
//
// The page runs unmasked styles blended into one Gram target (K = 1): a layer's style mask is ones
// at the whole image's layer size, cut to the crop and zeroed where the tile does not own.
// Images here are [3, H, W] float32 (CHW), as the loop keeps them.

import { createSession } from './backend.js';

const AREA_MIN = 1e-6; // the untiled graph's clamp of a mask's area (manual_grad.style_terms)

export function tilingEntry(manifest) {
  const t = manifest?.tiling;
  return t && typeof t === 'object' && t.format === 1 ? t : null;
}

function spans(n, tile) {
  const out = [];
  for (let a = 0; a < n; a += tile) out.push([a, Math.min(a + tile, n)]);
  // the last tile takes what is left (as nst_ort.engine.tiling._spans: starts every `tile`, last ends at n)
  return out;
}

// Which pixels each tile owns and which it reads: { own: [r0, r1, c0, c1], crop: [...] }.
export function layout(height, width, tile, align, halo) {
  if (!(tile > 0) || tile % align) throw new Error(`tile ${tile}: a tile's size must be a positive multiple of ${align} px for this model`);
  const tiles = [];
  for (const [r0, r1] of spans(height, tile)) {
    for (const [c0, c1] of spans(width, tile)) {
      tiles.push({ own: [r0, r1, c0, c1], crop: [Math.max(0, r0 - halo), Math.min(height, r1 + halo), Math.max(0, c0 - halo), Math.min(width, c1 + halo)] });
    }
  }
  return { height, width, tile, align, halo, tiles };
}

export function largestCrop(lay) {
  let h = 0, w = 0;
  for (const t of lay.tiles) {
    h = Math.max(h, t.crop[1] - t.crop[0]);
    w = Math.max(w, t.crop[3] - t.crop[2]);
  }
  return [h, w];
}

// Layer positions of pixels [a, b) of an image n px long: b at the image's end maps to n // s
// (floor-mode pools), else b // s.
function layerSpan(a, b, s, n) {
  return [Math.floor(a / s), b === n ? Math.floor(n / s) : Math.floor(b / s)];
}

// The crop's and the owned spans of a tile at a layer of stride s.
function spansAt(tile, s, H, W) {
  const [r0, r1, c0, c1] = tile.crop;
  const [o0, o1, p0, p1] = tile.own;
  return { cy: layerSpan(r0, r1, s, H), cx: layerSpan(c0, c1, s, W), oy: layerSpan(o0, o1, s, H), ox: layerSpan(p0, p1, s, W) };
}

// A [1, 1, h, w] mask of the crop at stride s: 1 where the tile owns, 0 elsewhere.
function ownedMask(tile, s, H, W) {
  const { cy, cx, oy, ox } = spansAt(tile, s, H, W);
  const h = cy[1] - cy[0], w = cx[1] - cx[0];
  const m = new Float32Array(h * w);
  for (let y = oy[0]; y < oy[1]; y++) m.fill(1, (y - cy[0]) * w + (ox[0] - cx[0]), (y - cy[0]) * w + (ox[1] - cx[0]));
  return { data: m, dims: [1, 1, h, w] };
}

// A whole-layer array [C, hl, wl] cut to the crop at stride s.
function cropLayer(full, C, hl, wl, tile, s, H, W) {
  const { cy, cx } = spansAt(tile, s, H, W);
  const h = cy[1] - cy[0], w = cx[1] - cx[0];
  const out = new Float32Array(C * h * w);
  for (let c = 0; c < C; c++) {
    for (let y = 0; y < h; y++) {
      const src = c * hl * wl + (y + cy[0]) * wl + cx[0];
      out.set(full.subarray(src, src + w), (c * h + y) * w);
    }
  }
  return { data: out, dims: [1, C, h, w] };
}

function cropImage(x, H, W, tile) {
  return cropLayer(x, 3, H, W, tile, 1, H, W);
}

// (tv, weight * dtv/dx) on the whole image [3, H, W], as nst_ort.engine.tiling.tv_term: the means in
// float64, the gradient in float32 in numpy's order (+gx, -gx, +gy, -gy).
export function tvTerm(x, H, W, weight) {
  const nx = 3 * H * (W - 1), ny = 3 * (H - 1) * W;
  let sx = 0, sy = 0;
  const kx = Math.fround((weight * 2.0) / nx), ky = Math.fround((weight * 2.0) / ny);
  const g = new Float32Array(3 * H * W);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < H; y++) {
      const row = (c * H + y) * W;
      for (let i = 0; i < W - 1; i++) {
        const d = Math.fround(x[row + i + 1] - x[row + i]);
        sx += Math.fround(d * d);
        const gx = Math.fround(d * kx);
        g[row + i + 1] = Math.fround(g[row + i + 1] + gx);
        g[row + i] = Math.fround(g[row + i] - gx);
      }
    }
  }
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < H - 1; y++) {
      const row = (c * H + y) * W;
      for (let i = 0; i < W; i++) {
        const d = Math.fround(x[row + W + i] - x[row + i]);
        sy += Math.fround(d * d);
        const gy = Math.fround(d * ky);
        g[row + W + i] = Math.fround(g[row + W + i] + gy);
        g[row + i] = Math.fround(g[row + i] - gy);
      }
    }
  }
  return { tv: sx / nx + sy / ny, grad: g };
}

// The two tile graphs on this backend (the Winograd variants on wasm, as train_cpu.onnx), made on
// the first tiled run only: an untiled page never holds them.
export class TileGraphs {
  static async create(backend, model, entry) {
    const t = new TileGraphs();
    const cpu = backend.ep === 'wasm' && entry.grams_cpu && entry.train_cpu;
    const ext = { weights: model.files[model.weightsFile], weightsPath: model.weightsFile };
    t.entry = entry;
    t.align = entry.align;
    t.halo = entry.halo;
    t.strides = entry.strides;
    t.grams = await createSession(backend, model.files[entry[cpu ? 'grams_cpu' : 'grams'].file], ext);
    t.train = await createSession(backend, model.files[entry[cpu ? 'train_cpu' : 'train'].file], ext);
    return t;
  }
}

function tensor(ort, { data, dims }) {
  return new ort.Tensor('float32', data, dims);
}

// The eval graph's outputs computed tile by tile (nst_ort.engine.tiling.tiled_features): x [3, H, W] ->
// { 'content.<layer>': {data, dims}, 'gram.<layer>': {data, dims: [C, C]} }. keep: the content layers
// to assemble (others: null, they take no memory).
export async function tiledFeatures(ort, graphs, model, x, H, W, tile, keep) {
  const lay = layout(H, W, tile, graphs.align, graphs.halo);
  const channels = Object.fromEntries(model.layers.map((l) => [l.name, l.channels]));
  const out = {};
  const parts = {};
  for (const t of lay.tiles) {
    const feeds = { image: tensor(ort, cropImage(x, H, W, t)) };
    for (const n of model.styleLayers) feeds[`style_mask.${n}`] = tensor(ort, ownedMask(t, graphs.strides[n], H, W));
    const res = await graphs.grams.run(feeds);
    for (const n of model.contentLayers) {
      if (!keep.has(n)) continue;
      const s = graphs.strides[n], C = channels[n];
      const hl = Math.floor(H / s), wl = Math.floor(W / s);
      const full = out[`content.${n}`] || (out[`content.${n}`] = { data: new Float32Array(C * hl * wl), dims: [1, C, hl, wl] });
      const { cy, cx, oy, ox } = spansAt(t, s, H, W);
      const f = res[`content.${n}`].data, fw = cx[1] - cx[0], fh = cy[1] - cy[0];
      for (let c = 0; c < C; c++) {
        for (let y = oy[0]; y < oy[1]; y++) {
          const src = (c * fh + (y - cy[0])) * fw + (ox[0] - cx[0]);
          full.data.set(f.subarray(src, src + (ox[1] - ox[0])), (c * hl + y) * wl + ox[0]);
        }
      }
    }
    for (const n of model.styleLayers) {
      const p = res[`gram_part.${n}`].data;
      const acc = parts[n] || (parts[n] = new Float64Array(p.length));
      for (let i = 0; i < p.length; i++) acc[i] += p[i];
    }
  }
  for (const n of model.contentLayers) if (!keep.has(n)) out[`content.${n}`] = null;
  for (const n of model.styleLayers) {
    const s = graphs.strides[n], C = channels[n];
    const area = Math.max(Math.floor(H / s) * Math.floor(W / s), AREA_MIN);
    out[`gram.${n}`] = { data: Float32Array.from(parts[n], (v) => v / area), dims: [C, C] };
  }
  return out;
}

// The training graph's outputs from the tile graphs (nst_ort.engine.tiling.TiledTrainStep, K = 1):
//   targets: { content: {layer: {data, dims} | null (weight 0)}, style: {layer: Float32Array [C*C]} }
//   weights: resolveWeights(...) (contentLayers, styleLayers, terms)
export class TiledStep {
  constructor(ort, graphs, model, targets, weights, H, W, tile) {
    this.ort = ort;
    this.g = graphs;
    this.model = model;
    this.H = H;
    this.W = W;
    this.layout = layout(H, W, tile, graphs.align, graphs.halo);
    this.targets = targets;
    this.clw = Array.from(weights.contentLayers);
    this.slw = Array.from(weights.styleLayers);
    this.tw = Array.from(weights.terms);
    this.channels = Object.fromEntries(model.layers.map((l) => [l.name, l.channels]));
    const cl = model.contentLayers;
    this.contentWeights = Float32Array.from(cl, (_, i) => this.tw[0] * this.clw[i]);
    this.contentNorms = Float32Array.from(cl, (n) => {
      const s = graphs.strides[n];
      return 1 / (this.channels[n] * Math.floor(H / s) * Math.floor(W / s));
    });
  }

  // x: [3, H, W] float32 -> { loss, closs, sloss, tv, grad: Float32Array [3 H W] }
  async run(x) {
    const { ort, g, model, H, W } = this;
    const styleMasks = (t) => Object.fromEntries(model.styleLayers.map((n) => [`style_mask.${n}`, tensor(ort, ownedMask(t, g.strides[n], H, W))]));
    // pass 1: the whole image's Grams, part by part (summed in float64)
    const parts = {};
    for (const t of this.layout.tiles) {
      const res = await g.grams.run({ image: tensor(ort, cropImage(x, H, W, t)), ...styleMasks(t) });
      for (const n of model.styleLayers) {
        const p = res[`gram_part.${n}`].data;
        const acc = parts[n] || (parts[n] = new Float64Array(p.length));
        for (let i = 0; i < p.length; i++) acc[i] += p[i];
      }
    }
    // the style losses and E = sym(dL/dG) / area, on the host in float64
    const sloss = [], sgrads = {};
    model.styleLayers.forEach((n, j) => {
      const s = g.strides[n], C = this.channels[n];
      const area = Math.max(Math.floor(H / s) * Math.floor(W / s), AREA_MIN);
      const A = this.targets.style[n];
      const diff = new Float64Array(C * C);
      let sq = 0;
      for (let i = 0; i < C * C; i++) {
        diff[i] = parts[n][i] / area - A[i];
        sq += diff[i] * diff[i];
      }
      sloss.push(sq / (C * C));
      const k = (this.tw[1] * this.slw[j] * 2.0) / (C * C);
      const e = new Float32Array(C * C);
      for (let a = 0; a < C; a++) for (let b = 0; b < C; b++) e[a * C + b] = (diff[a * C + b] * k + diff[b * C + a] * k) / area;
      sgrads[n] = tensor(ort, { data: e, dims: [1, C, C] });
    });
    // pass 2: content terms and the backward, given dL/dG; each crop's gradient added at its place
    const closs = new Float64Array(model.contentLayers.length);
    const grad = new Float32Array(3 * H * W);
    const cw = tensor(ort, { data: this.contentWeights, dims: [this.contentWeights.length] });
    const cn = tensor(ort, { data: this.contentNorms, dims: [this.contentNorms.length] });
    for (const t of this.layout.tiles) {
      const feeds = { image: tensor(ort, cropImage(x, H, W, t)), ...styleMasks(t), content_weights: cw, content_norms: cn };
      for (const n of model.contentLayers) {
        const s = g.strides[n], C = this.channels[n];
        const mask = ownedMask(t, s, H, W);
        feeds[`content_mask.${n}`] = tensor(ort, mask);
        const full = this.targets.content[n];
        feeds[`content_target.${n}`] = tensor(ort, full
          ? cropLayer(full.data, C, full.dims[2], full.dims[3], t, s, H, W)
          : { data: new Float32Array(C * mask.dims[2] * mask.dims[3]), dims: [1, C, mask.dims[2], mask.dims[3]] });
      }
      for (const n of model.styleLayers) feeds[`style_grad.${n}`] = sgrads[n];
      const res = await g.train.run(feeds);
      res.content_losses.data.forEach((v, i) => { closs[i] += v; });
      const gi = res.image_grad.data;
      const [r0, r1, c0, c1] = t.crop;
      const h = r1 - r0, w = c1 - c0;
      for (let c = 0; c < 3; c++) {
        for (let y = 0; y < h; y++) {
          const dst = (c * H + r0 + y) * W + c0, src = (c * h + y) * w;
          for (let i = 0; i < w; i++) grad[dst + i] = Math.fround(grad[dst + i] + gi[src + i]);
        }
      }
    }
    const { tv, grad: tvGrad } = tvTerm(x, H, W, this.tw[2]);
    for (let i = 0; i < grad.length; i++) grad[i] = Math.fround(grad[i] + tvGrad[i]);
    const dot = (a, b) => a.reduce((acc, v, i) => acc + v * b[i], 0);
    const loss = this.tw[0] * dot(Array.from(closs), this.clw) + this.tw[1] * dot(sloss, this.slw) + this.tw[2] * tv;
    return { loss, closs: Array.from(closs), sloss, tv, grad };
  }
}
