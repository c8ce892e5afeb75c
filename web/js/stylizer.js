// The loop in the browser, as nst_ort/engine/stylize.py runs one scale: targets from the eval graph once, then
// per iteration the training graph and the optimizer graphs, one record per iteration (the fields of
// nst_ort.engine.stylize.IterationRecord). Runs in the worker.
import { createSession } from './backend.js';
import { luminance, matchHistogram, matchLuminance, recombine } from './color.js';
import { fitSize, fromCHW, pyRound, resize, toCHW } from './images.js';
import { Adam, LBFGS, defaultLr } from './optim.js';
import { TileGraphs, TiledStep, tiledFeatures, tilingEntry } from './tiling.js';
import { CpuVectors, GpuVectors } from './vectors.js';

export class RunError extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind; // 'usage' | 'image' | 'memory' | 'numerical' | 'device'
  }
}

// onnxruntime-web's failures as one message; running out of the wasm heap is the one users can fix.
export function runError(e, what) {
  const msg = String(e?.message || e);
  if (/out of memory|OOM|alloc|Memory\.grow|Maximum memory|Array buffer allocation failed|memory access out of bounds/i.test(msg)) {
    return new RunError('memory', `${what}: out of memory in the browser (${msg.split('\n')[0].slice(0, 160)}); try a smaller size or L-BFGS history`);
  }
  return new RunError('device', `${what}: onnxruntime-web failed (${msg.split('\n')[0].slice(0, 200)})`);
}

// The graphs of one model on one backend, made once and reused by every run.
export class Sessions {
  static async create(backend, model, progress = () => {}) {
    const s = new Sessions();
    s.backend = backend;
    const weights = model.files[model.weightsFile];
    const ext = { weights, weightsPath: model.weightsFile };
    try {
      progress('preparing the eval graph');
      s.eval = await createSession(backend, model.graph('eval'), ext);
      progress(`preparing the training graph (${model.manifest.graphs[model.trainRole].file})`);
      s.train = await createSession(backend, model.graph(model.trainRole), { ...ext, gpuOutputs: ['image_grad'] });
      progress('preparing the optimizer graphs');
      const opt = async (kind, role, gpuOutputs) => createSession(backend, model.optimizerGraph(kind, role), { gpuOutputs });
      s.lbfgs = {
        pair: await opt('lbfgs', 'pair', ['s', 'y']),
        project: await opt('lbfgs', 'project', []),
        direction: await opt('lbfgs', 'direction', ['d', 'x_new']),
      };
      s.adam = { update: await opt('adam', 'update', ['x_new', 'm1_new', 'm2_new']) };
    } catch (e) {
      throw runError(e, 'loading the model into onnxruntime-web');
    }
    s.vectors = backend.ep === 'webgpu'
      ? new GpuVectors(backend.ort, await backend.ort.env.webgpu.device)
      : new CpuVectors(backend.ort);
    return s;
  }
}

// Weights in the training graph's input order (nst_ort.engine.stylize.resolve_weights); settings may override
// the manifest's content, style and tv weights (null: the model's defaults).
export function resolveWeights(model, settings) {
  const d = model.defaults;
  const clw = d.content_layer_weights || {};
  const slw = d.style_layer_weights || {};
  const pick = (v, dflt) => (v === null || v === undefined || v === '' ? dflt : Number(v));
  return {
    contentLayers: Float32Array.from(model.contentLayers, (n) => Number(clw[n] || 0)),
    styleLayers: Float32Array.from(model.styleLayers, (n) => Number(slw[n] || 0)),
    terms: Float32Array.of(pick(settings.contentWeight, d.content_weight), pick(settings.styleWeight, d.style_weight), pick(settings.tvWeight, d.tv_weight)),
  };
}

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class Stylizer {
  // settings: { size, iterations, optimizer, lr, history, contentWeight, styleWeight, tvWeight, color,
  // init, seed, styleScale }; content, styles[i].image: images (images.js); styles[i].weight: blend weight
  constructor(sessions, model, settings, content, styles) {
    this.s = sessions;
    this.model = model;
    this.settings = settings;
    this.content = content;
    this.styles = styles;
    this.iterations = settings.iterations;
    this.iteration = 0;
    this.weights = resolveWeights(model, settings);
    [this.width, this.height] = fitSize(content.width, content.height, settings.size);
    const min = model.minSize;
    if (Math.min(this.width, this.height) < min) {
      throw new RunError('image', `content: ${this.width}x${this.height} at size ${settings.size} is too small for this network; the short side must be at least ${min} px`);
    }
  }

  get v() {
    return this.s.vectors;
  }

  contentAt() {
    const img = resize(this.content, this.width, this.height);
    return this.settings.color === 'luminance' ? luminance(img) : img;
  }

  styleAt(k) {
    const style = this.styles[k].image;
    const long = Math.max(1, pyRound(Math.max(this.width, this.height) * (this.settings.styleScale || 1)));
    const [w, h] = fitSize(style.width, style.height, long);
    let img = resize(style, w, h);
    if (Math.min(w, h) < this.model.minSize) {
      throw new RunError('image', `${this.styles[k].name}: ${w}x${h} after the style scale is smaller than the network's minimum of ${this.model.minSize} px`);
    }
    const ref = resize(this.content, this.width, this.height);
    if (this.settings.color === 'histogram') img = matchHistogram(img, ref);
    else if (this.settings.color === 'luminance') img = matchLuminance(img, ref);
    return img;
  }

  async features(img) {
    const { ort } = this.s.backend;
    if (this.tile) {
      try {
        return await tiledFeatures(ort, this.s.tiles, this.model, toCHW(img), img.height, img.width, this.tile, this.keepContent);
      } catch (e) {
        throw runError(e, `tile graph (features) at ${img.width}x${img.height}, ${this.tile} px tiles`);
      }
    }
    const image = new ort.Tensor('float32', toCHW(img), [1, 3, img.height, img.width]);
    try {
      return await this.s.eval.run({ image });
    } catch (e) {
      throw runError(e, `eval graph at ${img.width}x${img.height}`);
    }
  }

  // Targets and weights as graph inputs: nst_ort.engine.stylize.Stylizer._feeds for one unmasked scale.
  async prepare(progress = () => {}) {
    const { v, model } = this;
    const w = this.width, h = this.height;
    // settings.tile: the tile size the memory plan chose (0: untiled); tiled runs are wasm only
    this.tile = Number(this.settings.tile) || 0;
    if (this.tile) {
      if (v.kind === 'gpu') throw new RunError('usage', 'tiled runs need the wasm backend (the tiled loop keeps the image on the host)');
      const entry = tilingEntry(model.manifest);
      if (!entry) throw new RunError('usage', 'this model has no tiled graphs (manifest.json "tiling"); add them with python -m nst_ort_export.tiled MODEL');
      if (!this.s.tiles) {
        progress('preparing the tile graphs');
        try {
          this.s.tiles = await TileGraphs.create(this.s.backend, model, entry);
        } catch (e) {
          throw runError(e, 'loading the tile graphs into onnxruntime-web');
        }
      }
      // content layers of weight 0 are not assembled (at 2048 px relu3_1 alone is 180 MB)
      this.keepContent = new Set(model.contentLayers.filter((_, i) => this.weights.contentLayers[i] !== 0));
    }
    progress('content targets');
    const content = this.contentAt();
    const feats = await this.features(content);
    const total = this.styles.reduce((a, s) => a + s.weight, 0);
    if (!(total > 0)) throw new RunError('usage', 'style weights must sum to a positive number');
    const blend = {};
    for (let k = 0; k < this.styles.length; k++) {
      progress(`style targets (${this.styles[k].name})`);
      const grams = await this.features(this.styleAt(k));
      // Blending Grams (as neural-style does) has the same minimizer as weighting the K style losses.
      const wk = Math.fround(this.styles[k].weight / total);
      for (const n of model.styleLayers) {
        const g = grams[`gram.${n}`].data;
        const acc = blend[n] || (blend[n] = { dims: grams[`gram.${n}`].dims, data: new Float32Array(g.length) });
        for (let i = 0; i < g.length; i++) acc.data[i] += Math.fround(wk * g[i]);
      }
    }
    if (this.tile) {
      const targets = { content: {}, style: {} };
      for (const n of model.contentLayers) targets.content[n] = feats[`content.${n}`];
      for (const n of model.styleLayers) targets.style[n] = blend[n].data;
      this.tiled = new TiledStep(this.s.backend.ort, this.s.tiles, model, targets, this.weights, h, w, this.tile);
    }
    const feeds = {};
    for (const n of model.contentLayers) {
      if (this.tile) break; // the tiled step cuts the targets per crop
      const t = feats[`content.${n}`];
      feeds[`content_target.${n}`] = v.tensor(t.data, t.dims);
    }
    for (const n of model.styleLayers) if (!this.tile) feeds[`style_target.${n}`] = v.tensor(blend[n].data, [1, ...blend[n].dims]);
    if (!this.tile) feeds.style_masks = v.tensor(new Float32Array(w * h).fill(1), [1, 1, h, w]);
    feeds.style_weights = v.tensor(Float32Array.of(1), [1]);
    feeds.content_layer_weights = v.tensor(this.weights.contentLayers, [this.weights.contentLayers.length]);
    feeds.style_layer_weights = v.tensor(this.weights.styleLayers, [this.weights.styleLayers.length]);
    feeds.term_weights = v.tensor(this.weights.terms, [3]);
    this.feeds = feeds;
    this.contentImage = content;
    this.contentColors = resize(this.content, w, h); // for luminance recombination

    const n = 3 * w * h;
    let x0;
    if (this.settings.init === 'noise') {
      const rand = mulberry32(this.settings.seed || 0);
      x0 = Float32Array.from({ length: n }, rand);
    } else {
      x0 = toCHW(content);
    }
    // sha256 of the starting image's float32 bytes [3, H, W]: lets a test prove that the page and the
    // Python runtime start from the same pixels, bit for bit
    this.initDigest = Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', x0)), (b) => b.toString(16).padStart(2, '0')).join('');
    this.x = v.tensor(x0, [n]);
    this.xPrev = null;
    this.gPrev = null;
    const name = this.settings.optimizer;
    const lr = this.settings.lr ? Number(this.settings.lr) : defaultLr(name);
    this.opt = name === 'adam'
      ? new Adam(this.s.adam, v, n, { lr })
      : new LBFGS(this.s.lbfgs, v, n, { lr, history: Number(this.settings.history) || 100 });
    this.n = n;
  }

  // One evaluation at the current image and its update; returns the iteration's record.
  async step() {
    const { v } = this;
    const t0 = performance.now();
    const w = this.width, h = this.height;
    let out;
    try {
      const { ort } = this.s.backend;
      if (this.tiled) {
        const t = await this.tiled.run(this.x.data);
        // the training graph's outputs, as the untiled path reads them
        out = { loss: { data: [t.loss] }, content_losses: { data: t.closs }, style_losses: { data: t.sloss }, tv_loss: { data: [t.tv] },
          image_grad: { data: t.grad } };
      } else {
        const image = v.kind === 'gpu'
          ? ort.Tensor.fromGpuBuffer(this.x.gpuBuffer, { dataType: 'float32', dims: [1, 3, h, w] })
          : new ort.Tensor('float32', this.x.data, [1, 3, h, w]);
        out = await this.s.train.run({ ...this.feeds, image });
      }
    } catch (e) {
      throw runError(e, this.tiled ? `tile graphs at ${w}x${h}, ${this.tile} px tiles` : `training graph at ${w}x${h}`);
    }
    const total = out.loss.data[0];
    const closs = Array.from(out.content_losses.data), sloss = Array.from(out.style_losses.data);
    const tv = out.tv_loss.data[0];
    const grad = out.image_grad;
    if (!Number.isFinite(total)) {
      v.release(grad);
      throw new RunError('numerical', `loss became ${total} at iteration ${this.iteration + 1}; stopped and kept the last finite image (try a smaller learning rate or weights)`);
    }
    const g = v.kind === 'gpu'
      ? this.s.backend.ort.Tensor.fromGpuBuffer(grad.gpuBuffer, { dataType: 'float32', dims: [this.n] })
      : new this.s.backend.ort.Tensor('float32', grad.data, [this.n]);
    let xNew;
    try {
      xNew = await this.opt.step(this.x, g, this.gPrev);
    } catch (e) {
      throw runError(e, `optimizer graphs at ${w}x${h}`);
    }
    if (xNew === null) {
      v.release(grad);
      throw new RunError('numerical', `the gradient became NaN or Inf at iteration ${this.iteration + 1}; stopped and kept the last finite image (try a smaller learning rate or weights)`);
    }
    if (this.gPrevOwner) v.release(this.gPrevOwner);
    this.gPrevOwner = grad; // keeps the buffer g (a view of it) lives in
    this.gPrev = g;
    if (this.xPrev) v.release(this.xPrev);
    this.xPrev = this.x;
    this.x = xNew;
    this.iteration += 1;
    const tw = this.weights.terms;
    const sum = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0);
    return {
      step: this.iteration, scale: 0, iteration: this.iteration, iterations: this.iterations, width: w, height: h, tile: this.tile || null,
      loss: total,
      content: tw[0] * sum(closs, this.weights.contentLayers),
      style: tw[1] * sum(sloss, this.weights.styleLayers),
      tv: tw[2] * tv,
      style_layers: sloss, content_layers: closs,
      seconds: (performance.now() - t0) / 1000,
    };
  }

  // The image as it would be saved: RGB [H, W, 3] (clipping happens in toRGBA); with luminance-only
  // transfer, the result's luminance with the content's colors.
  async current() {
    const data = await this.v.read(this.x);
    let img = fromCHW(data, this.width, this.height);
    if (!img.data.every(Number.isFinite) && this.xPrev) img = fromCHW(await this.v.read(this.xPrev), this.width, this.height);
    if (this.settings.color === 'luminance') {
      const clipped = { ...img, data: img.data.map((x) => Math.min(1, Math.max(0, x))) };
      img = recombine(clipped, this.contentColors);
    }
    return img;
  }

  dispose() {
    const { v } = this;
    for (const t of Object.values(this.feeds || {})) v.release(t);
    v.release(this.x);
    v.release(this.xPrev);
    v.release(this.gPrevOwner);
    this.opt?.dispose();
  }
}
