// A model folder in the browser: manifest.json read and checked, and each file it lists fetched (from
// the server, or from a folder the user picked) and checked against its sha256 before any graph is
// made from it. The web app's counterpart of nst_ort/engine/artifacts.py; every failure is a ModelError whose
// message names the file.

export const SCHEMA_VERSIONS = [1];
const REQUIRED = ['schema_version', 'backbone', 'graphs', 'files', 'layers', 'content_layers', 'style_layers', 'defaults'];
export const TRAIN_OUTPUTS = ['loss', 'content_losses', 'style_losses', 'tv_loss', 'image_grad'];

export class ModelError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ModelError';
  }
}

// Where the files come from: a URL prefix (`nst-ort web` serves the model at model/) or the File
// objects of a picked folder (<input type=file webkitdirectory>).
export class ModelSource {
  static url(base) {
    const s = new ModelSource();
    s.base = new URL(base.endsWith('/') ? base : base + '/', globalThis.location?.href).href;
    s.label = base;
    // the page loads only from the server that serves it (`?model=` too; the server's CSP says so as well)
    const origin = globalThis.location?.origin;
    if (origin && new URL(s.base).origin !== origin) throw new ModelError(`${base}: not on this server (${origin}); the page loads a model only from nst-ort web's own --model, or from a folder picked with "model folder…"`);
    return s;
  }

  // files: the folder's own files (not its subfolders'); label: the folder's name, for messages.
  static files(files, label) {
    const s = new ModelSource();
    s.map = new Map();
    for (const f of files) s.map.set(f.name, f);
    s.label = label.endsWith('/') ? label : label + '/';
    return s;
  }

  where(name) {
    return this.map ? this.label + name : new URL(name, this.base).pathname;
  }

  async bytes(name) {
    if (this.map) {
      const f = this.map.get(name);
      if (!f) throw new ModelError(`${this.where(name)}: missing from the picked folder`);
      return new Uint8Array(await f.arrayBuffer());
    }
    // a manifest's file name is a name in the folder, not a URL elsewhere (../, //host, https:)
    if (!new URL(name, this.base).href.startsWith(this.base)) throw new ModelError(`${this.where('manifest.json')}: names ${JSON.stringify(name)}, which is not a file in the model folder`);
    let res;
    try {
      res = await fetch(new URL(name, this.base), { cache: 'no-cache' });
    } catch (e) {
      throw new ModelError(`${this.where(name)}: could not be fetched (${e.message}); is \`nst-ort web\` still running?`);
    }
    if (!res.ok) throw new ModelError(`${this.where(name)}: ${res.status === 404 ? 'missing (HTTP 404)' : 'HTTP ' + res.status}`);
    return new Uint8Array(await res.arrayBuffer());
  }
}

function check(manifest, where) {
  if (typeof manifest !== 'object' || manifest === null || Array.isArray(manifest)) throw new ModelError(`${where}: expected a JSON object`);
  const missing = REQUIRED.filter((k) => !(k in manifest));
  if (missing.length) throw new ModelError(`${where}: missing keys ${missing.join(', ')}; not an nst-ort model`);
  if (!SCHEMA_VERSIONS.includes(manifest.schema_version)) {
    throw new ModelError(`${where}: unknown schema_version ${JSON.stringify(manifest.schema_version)} (this page reads ${SCHEMA_VERSIONS.join(', ')}); update nst-ort or re-export`);
  }
  try {
    for (const role of ['eval', 'train']) {
      const g = manifest.graphs[role];
      if (typeof g.file !== 'string' || !Array.isArray(g.inputs) || !Array.isArray(g.outputs)) throw new TypeError(`graphs.${role}`);
    }
    const names = manifest.layers.map((l) => l.name);
    for (const l of manifest.layers) {
      if (typeof l.name !== 'string' || !(Number.isInteger(l.channels) && l.channels > 0) || !(Number.isInteger(l.stride) && l.stride > 0)) {
        throw new TypeError(`layer ${JSON.stringify(l.name)}`);
      }
    }
    for (const key of ['content_layers', 'style_layers']) {
      if (!Array.isArray(manifest[key]) || !manifest[key].every((n) => names.includes(n))) throw new TypeError(key);
    }
    for (const key of ['content_weight', 'style_weight', 'tv_weight']) {
      if (typeof manifest.defaults[key] !== 'number') throw new TypeError(`defaults.${key}`);
    }
    for (const [name, f] of Object.entries(manifest.files)) {
      if (typeof f?.sha256 !== 'string' || typeof name !== 'string') throw new TypeError(`files.${name}`);
    }
  } catch (e) {
    throw new ModelError(`${where}: malformed entry (${e.message})`);
  }
  const outs = manifest.graphs.train.outputs.map((o) => o.name);
  if (outs.join() !== TRAIN_OUTPUTS.join()) throw new ModelError(`${where}: training graph outputs ${outs.join(', ')}, expected ${TRAIN_OUTPUTS.join(', ')}`);
  const opt = manifest.optimizers;
  if (!opt || typeof opt.lbfgs !== 'object' || typeof opt.adam !== 'object') {
    throw new ModelError(`${where}: this model has no optimizer graphs, which the web app runs the loop with; re-export it, or add them: python -m export.optim_graphs MODEL_FOLDER`);
  }
}

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, '0')).join('');
}

export class Model {
  // progress(text) is called as files arrive.
  static async load(source, { wantTrain = 'train', progress = () => {} } = {}) {
    if (!globalThis.crypto?.subtle) {
      throw new ModelError('this page is not in a secure context (open it as http://127.0.0.1 or http://localhost, or over https), so the browser gives it no SubtleCrypto to check the model files\' sha256 with');
    }
    const where = source.where('manifest.json');
    progress('reading manifest.json');
    const raw = await source.bytes('manifest.json');
    let manifest;
    try {
      manifest = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(raw));
    } catch (e) {
      throw new ModelError(`${where}: not valid JSON (${e.message})`);
    }
    check(manifest, where);
    const m = new Model(source, manifest);
    const train = manifest.graphs[wantTrain] ? wantTrain : 'train';
    m.trainRole = train;
    const needed = new Set([manifest.graphs.eval.file, manifest.graphs[train].file]);
    for (const kind of ['lbfgs', 'adam']) for (const f of Object.values(manifest.optimizers[kind])) needed.add(f);
    // the tile graphs (manifest "tiling", docs/tiling.md) of the same variant as the training graph
    const tiling = manifest.tiling?.format === 1 ? manifest.tiling : null;
    const tileVariant = train === 'train_cpu' && tiling?.grams_cpu && tiling?.train_cpu ? '_cpu' : '';
    if (tiling?.grams && tiling?.train) for (const role of ['grams', 'train']) needed.add(tiling[role + tileVariant].file);
    const weights = manifest.weights?.file || 'weights.bin';
    if (manifest.files[weights]) needed.add(weights);
    m.weightsFile = weights;
    for (const name of needed) {
      if (!manifest.files[name]) throw new ModelError(`${where}: ${name} has no sha256 entry`);
      progress(`loading ${name}`);
      m.files[name] = await m.verified(name);
    }
    return m;
  }

  constructor(source, manifest) {
    this.source = source;
    this.manifest = manifest;
    this.files = {};
  }

  async verified(name) {
    const data = await this.source.bytes(name);
    const entry = this.manifest.files[name];
    const digest = hex(await crypto.subtle.digest('SHA-256', data));
    if (digest !== entry.sha256) {
      const size = entry.bytes !== undefined ? `${data.length} bytes, manifest says ${entry.bytes}` : `${data.length} bytes`;
      throw new ModelError(`${this.source.where(name)}: sha256 mismatch (file changed or truncated: ${size}); re-export or re-download the model`);
    }
    return data;
  }

  get contentLayers() { return this.manifest.content_layers; }
  get styleLayers() { return this.manifest.style_layers; }
  get defaults() { return this.manifest.defaults; }
  get layers() { return this.manifest.layers; }

  // Smallest image side the graphs accept (nst_ort.engine.artifacts.Artifacts.min_size).
  get minSize() {
    return Math.max(...this.manifest.layers.map((l) => (l.name.startsWith('pool') ? 2 * l.stride : l.stride)));
  }

  graph(role) {
    return this.files[this.manifest.graphs[role].file];
  }

  optimizerGraph(kind, role) {
    return this.files[this.manifest.optimizers[kind][role]];
  }

  summary() {
    const m = this.manifest;
    return {
      backbone: m.backbone, label: this.source.label, trainGraph: m.graphs[this.trainRole].file,
      contentLayers: m.content_layers, styleLayers: m.style_layers, defaults: m.defaults, layers: m.layers,
      minSize: this.minSize, gradient: m.gradient || 'autograd',
      tiling: m.tiling?.format === 1 && m.tiling.grams ? { align: m.tiling.align, halo: m.tiling.halo } : null,
    };
  }
}
