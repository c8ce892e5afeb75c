// The page: inputs (file pickers, drag and drop), settings, buttons, progress and the image. The loop
// runs in worker.js; this thread decodes images, checks the memory a run needs, and draws.
// window.nstApp is the page's state (tests and the benchmark read it): state, records, message.
import { ImageInputError, decodeImage } from './images.js';
import { plan as memoryPlan } from './memory.js';

const $ = (id) => document.getElementById(id);
const app = {
  state: 'starting', // starting | loading | ready | preparing | running | stopped | done | error | model-error
  records: [], message: '', messageKind: '', backend: null, model: null, heap: null,
  content: null, styles: [], hasImage: false, hasRun: false, started: null, resultSize: null,
  decoded: 0, // image files read so far, good or bad
};
window.nstApp = app;

let worker = null;
// the worker resolves URLs against its own script's folder: give it an absolute one
let modelSpec = { modelUrl: new URL(new URLSearchParams(location.search).get('model') || 'model/', location.href).href };
let pendingStart = null;

// source: what the message is about ('input' for an image the user gave), so that a good image
// clears only the complaint about a bad one
function setMessage(text, kind = 'info', source = '') {
  const el = $('message');
  el.textContent = text;
  el.className = 'message' + (text ? ' ' + kind : '');
  app.message = text;
  app.messageKind = text ? kind : '';
  app.messageSource = source;
}

function setState(state) {
  app.state = state;
  const busy = ['loading', 'preparing', 'running'].includes(state);
  $('start').disabled = busy || !app.model || !app.content || !app.styles.length || state === 'model-error';
  $('stop').disabled = state !== 'running';
  $('resume').disabled = !(app.hasRun && (state === 'stopped' || state === 'done'));
  $('download').disabled = !app.hasImage;
  $('model-folder').disabled = busy;
  $('model-choose').disabled = busy;
  $('backend-pref').disabled = busy;
  // why Start is greyed out, where the inputs are the reason (a refused model has its own message)
  const missing = [!app.content && 'a content image', !app.styles.length && 'a style image'].filter(Boolean);
  $('start-hint').textContent = state === 'loading' ? 'loading the model…'
    : missing.length && !['model-error', 'error'].includes(state) ? `add ${missing.join(' and ')} to start` : '';
}

function fmt(x) {
  if (x === undefined || x === null || Number.isNaN(x)) return '';
  if (x === 0) return '0';
  const a = Math.abs(x);
  return a >= 1e5 || a < 1e-2 ? x.toExponential(3) : x.toPrecision(4);
}

function duration(s) {
  if (!Number.isFinite(s)) return '';
  if (s < 60) return `${Math.round(s)} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min ${Math.round(s - 60 * m)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

// -- the worker -------------------------------------------------------------------------------
function startWorker() {
  if (worker) worker.terminate();
  app.model = null;
  app.backend = null;
  worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  worker.onmessage = (ev) => onWorker(ev.data);
  worker.onerror = (ev) => {
    ev.preventDefault();
    setMessage(`internal error in the worker: ${ev.message || 'it could not start'} (please report it)`, 'error');
    setState('error');
  };
  $('backend').textContent = 'starting…';
  $('backend').className = 'badge';
  $('model').textContent = 'loading model…';
  $('model').className = 'badge';
  setState('loading');
  const q = new URLSearchParams(location.search);
  // ?graph=train|train_cpu and ?threads=N: for comparisons (benchmarks/web_bench.py); the default picks
  // the CPU variant on wasm and all the cores there are
  worker.postMessage({ type: 'init', backendPref: $('backend-pref').value, threads: Number(q.get('threads')) || 0, graph: q.get('graph'), ...modelSpec });
}

function onWorker(msg) {
  switch (msg.type) {
    case 'status':
      $('progress-text').textContent = msg.text + '…';
      break;
    case 'backend':
      showBackend(msg.backend);
      break;
    case 'ready': {
      app.backend = msg.backend;
      app.model = msg.model;
      app.heap = msg.heap;
      showBackend(msg.backend);
      const m = $('model');
      m.textContent = `model ${msg.model.backbone} (${msg.model.label}) · sha256 checked`;
      m.className = 'badge ok';
      const d = msg.model.defaults;
      $('content-weight').placeholder = d.content_weight;
      $('style-weight').placeholder = d.style_weight;
      $('tv-weight').placeholder = d.tv_weight;
      $('size').min = msg.model.minSize;
      $('progress-text').innerHTML = '&nbsp;';
      if (app.state === 'loading') setMessage('');
      setState('ready');
      if (pendingStart) {
        const p = pendingStart;
        pendingStart = null;
        send(p);
      }
      break;
    }
    case 'started':
      app.resultSize = [msg.width, msg.height];
      app.initDigest = msg.initDigest;
      setState('running');
      $('progress-text').textContent = `optimizing ${msg.width}x${msg.height}…`;
      break;
    case 'record':
      onRecord(msg.record);
      break;
    case 'image':
      drawImage(msg);
      break;
    case 'stopped':
      setState('stopped');
      showProgress();
      setMessage(`stopped after iteration ${msg.iteration}; Resume continues from here, Start begins anew`, 'info');
      break;
    case 'done': {
      setState('done');
      showProgress();
      const secs = app.records.reduce((a, r) => a + r.seconds, 0);
      setMessage(`done: ${msg.iteration} iteration${msg.iteration === 1 ? '' : 's'} in ${duration(secs)}; raise the iterations and Resume to continue`, 'info');
      break;
    }
    case 'error':
      onError(msg);
      break;
    default:
      break;
  }
}

function showBackend(backend) {
  const b = $('backend');
  b.textContent = `${backend.label} · onnxruntime-web ${backend.version || ''}`.trim();
  b.className = 'badge ok';
  b.title = backend.ep === 'webgpu' ? 'the graphs run on the GPU through WebGPU' : 'this browser offers no WebGPU adapter (or wasm was chosen): the graphs run on the CPU in WebAssembly';
  app.backend = backend;
}

function onError(msg) {
  if (!app.model) {
    const m = $('model');
    m.textContent = msg.kind === 'model' ? 'model rejected' : 'model not loaded';
    m.className = 'badge bad';
    m.title = msg.message;
    // the backend badge is 'starting…' only if the backend itself never opened ('backend' message)
    if (!app.backend || msg.kind !== 'model') {
      $('backend').textContent = 'no backend';
      $('backend').className = 'badge bad';
    }
    const next = 'pick another model folder (model folder…), or reload the page for the one `nst-ort web` serves';
    setMessage(`${msg.message}\n${msg.kind === 'model' ? 'No model is loaded: ' + next : 'Nothing can run: reload the page'}.`, 'error');
    $('progress-text').textContent = msg.kind === 'model' ? 'no model loaded' : 'not started';
    setState('model-error');
    return;
  }
  setMessage(msg.message, 'error');
  // After running out of memory (or a failed graph) onnxruntime's heap may be unusable: the next
  // Start gets a fresh worker.
  if (msg.kind === 'memory' || msg.kind === 'device' || msg.kind === 'internal') app.restart = true;
  setState('error');
  showProgress();
}

// -- progress -----------------------------------------------------------------------------------
function onRecord(r) {
  app.records.push(r);
  const first = app.records[0];
  $('bar').style.width = `${(100 * r.iteration) / r.iterations}%`;
  showProgress();
  for (const [k, key] of [['total', 'loss'], ['content', 'content'], ['style', 'style'], ['tv', 'tv']]) {
    $(`l0-${k}`).textContent = fmt(first[key]);
    $(`l-${k}`).textContent = fmt(r[key]);
  }
  drawChart();
}

// The line under the bar: where the run is; the time left only while it runs.
function showProgress() {
  const r = app.records[app.records.length - 1];
  if (!r) {
    if (app.state !== 'running' && app.state !== 'preparing') $('progress-text').innerHTML = '&nbsp;';
    return;
  }
  const recent = app.records.slice(-5);
  const per = recent.reduce((a, x) => a + x.seconds, 0) / recent.length;
  const where = { stopped: 'stopped at', error: 'failed after', done: 'done:' }[app.state] || '';
  let text = `${where ? where + ' ' : ''}iteration ${r.iteration} / ${r.iterations} · ${r.width}x${r.height}${r.tile ? ` in ${r.tile} px tiles` : ''} · ${per.toFixed(2)} s per iteration`;
  if (app.state === 'running' && r.iteration < r.iterations) text += ` · about ${duration((r.iterations - r.iteration) * per)} left`;
  $('progress-text').textContent = text;
}

function drawChart() {
  const c = $('chart');
  const ctx = c.getContext('2d');
  const W = c.width, H = c.height, pad = { l: 46, r: 96, t: 10, b: 22 };
  ctx.clearRect(0, 0, W, H);
  const series = [['total', 'loss', '#1d232b'], ['style', 'style', '#2b5fab'], ['content', 'content', '#1f8a52'], ['TV', 'tv', '#9a7b1c']];
  const recs = app.records;
  if (!recs.length) return;
  // terms below a millionth of the total (the content term at the content image: rounding noise) are not drawn
  const shown = (r, k) => r[k] > 0 && r[k] >= 1e-6 * r.loss;
  let lo = Infinity, hi = -Infinity;
  for (const r of recs) for (const [, k] of series) if (shown(r, k)) { lo = Math.min(lo, Math.log10(r[k])); hi = Math.max(hi, Math.log10(r[k])); }
  if (!Number.isFinite(lo)) return;
  lo = Math.floor(lo); hi = Math.ceil(hi); if (hi === lo) hi = lo + 1;
  const n = Math.max(recs[recs.length - 1].iterations, recs.length);
  const X = (i) => pad.l + ((W - pad.l - pad.r) * i) / Math.max(1, n - 1);
  const Y = (v) => pad.t + ((H - pad.t - pad.b) * (hi - v)) / (hi - lo);
  ctx.font = '11px system-ui, sans-serif';
  ctx.fillStyle = '#5e6a78';
  ctx.strokeStyle = '#e3e7ec';
  const every = Math.max(1, Math.ceil((hi - lo) / 5));
  for (let e = lo; e <= hi; e++) {
    ctx.beginPath(); ctx.moveTo(pad.l, Y(e)); ctx.lineTo(W - pad.r, Y(e)); ctx.stroke();
    if ((e - lo) % every === 0) ctx.fillText(`1e${e}`, 6, Y(e) + 4);
  }
  ctx.fillText(`iteration ${recs.length} / ${n}`, W - pad.r - 90, H - 6);
  series.forEach(([label, k, color], j) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.6;
    ctx.beginPath();
    let started = false;
    recs.forEach((r, i) => {
      if (!shown(r, k)) { started = false; return; }
      const x = X(i), y = Y(Math.log10(r[k]));
      if (started) ctx.lineTo(x, y); else { ctx.moveTo(x, y); started = true; }
    });
    ctx.stroke();
    ctx.fillStyle = color;
    ctx.fillRect(W - pad.r + 14, pad.t + 7 + j * 17, 14, 3);
    ctx.fillText(label, W - pad.r + 34, pad.t + 11 + j * 17);
  });
}

function drawImage({ width, height, rgba }) {
  const c = $('result');
  if (c.width !== width || c.height !== height) {
    c.width = width;
    c.height = height;
  }
  c.getContext('2d').putImageData(new ImageData(rgba, width, height), 0, 0);
  // small results are shown enlarged (without blurring) so that they can be looked at
  c.style.width = width < 384 ? `${Math.min(2, Math.floor(512 / width)) * width}px` : '';
  c.classList.toggle('pixelated', width < 256);
  $('placeholder').hidden = true;
  app.hasImage = true;
  $('download').disabled = false;
}

// -- inputs -------------------------------------------------------------------------------------
function thumb(name, file, extra, size = '') {
  const div = document.createElement('div');
  div.className = 'thumb';
  const img = document.createElement('img');
  img.src = URL.createObjectURL(file);
  img.alt = name;
  const label = document.createElement('span');
  label.className = 'name';
  label.textContent = name;
  label.title = name;
  div.append(img, label);
  if (size) {
    const dims = document.createElement('span');
    dims.className = 'size';
    dims.textContent = size;
    div.append(dims);
  }
  if (extra) extra(div);
  return div;
}

// Several files picked or dropped at once: each bad one is named with what is wrong with it (a good
// one after it in the same pick must not hide that), and the message says how many were added.
function reportFiles(problems, count) {
  if (!problems.length) {
    if (app.messageSource === 'input') setMessage('');
    return;
  }
  const internal = problems.find((e) => !(e instanceof ImageInputError));
  if (internal) {
    setMessage(`internal error: ${internal.message} (please report it)`, 'error');
    return;
  }
  const lines = problems.map((e) => e.message);
  if (count > 1) lines.unshift(`${problems.length} of the ${count} files chosen ${problems.length === 1 ? 'was' : 'were'} not added:`);
  setMessage(lines.join('\n'), 'error', 'input');
}

async function setContent(files) {
  const [file, ...rest] = files;
  const problems = [];
  try {
    const image = await decodeImage(file);
    app.content = { name: file.name, image };
    $('content-thumb').replaceChildren(thumb(file.name, file, null, `${image.width}x${image.height}`));
  } catch (e) {
    problems.push(e);
  }
  // one content image: the others are named, not silently dropped
  for (const f of rest) problems.push(new ImageInputError(`${f.name}: not used, the content is one image (${file.name}); style images go in the box below`));
  app.decoded += files.length;
  reportFiles(problems, files.length);
  setState(app.state);
}

async function addStyles(files) {
  const problems = [];
  for (const file of files) {
    try {
      const image = await decodeImage(file);
      const style = { name: file.name, image, weight: 1 };
      app.styles.push(style);
      const el = thumb(file.name, file, (div) => {
        const w = document.createElement('input');
        w.type = 'number'; w.min = '0'; w.step = 'any'; w.value = '1'; w.className = 'style-weight';
        w.title = 'weight of this style in the blend';
        w.setAttribute('aria-label', `weight of ${file.name} in the blend`);
        w.addEventListener('change', () => { style.weight = Math.max(0, Number(w.value) || 0); });
        const x = document.createElement('button');
        x.type = 'button'; x.className = 'remove'; x.textContent = '×'; x.title = 'remove';
        x.setAttribute('aria-label', `remove ${file.name}`);
        x.addEventListener('click', () => {
          app.styles = app.styles.filter((s) => s !== style);
          div.remove();
          setState(app.state);
          $('style-choose').focus(); // the removed button had the focus
        });
        div.append(w, x);
      }, `${image.width}x${image.height}`);
      $('style-thumbs').append(el);
    } catch (e) {
      problems.push(e);
    }
    app.decoded += 1;
  }
  reportFiles(problems, files.length);
  setState(app.state);
}

// A drop zone: files dropped on it, and a click on its empty part opens the same chooser as its
// "choose…" button (the button is what the keyboard reaches: Tab, then Enter or Space).
function dropZone(zone, input, button, onFiles) {
  button.addEventListener('click', () => input.click());
  zone.addEventListener('click', (e) => {
    if (e.target.closest('button, input, .thumb')) return;
    input.click();
  });
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    const files = [...(e.dataTransfer?.files || [])];
    if (files.length) onFiles(files);
  });
}

// -- settings and buttons -------------------------------------------------------------------------
function readSettings() {
  const num = (id) => { const v = $(id).value.trim(); return v === '' ? null : Number(v); };
  const s = {
    size: num('size'), iterations: num('iterations'), optimizer: $('optimizer').value, lr: num('lr'), history: num('history'),
    contentWeight: num('content-weight'), styleWeight: num('style-weight'), tvWeight: num('tv-weight'),
    color: $('color').value, init: $('init').value, seed: 0, styleScale: 1,
    // ?tile=N: tiles of N px whatever the memory plan says (comparisons: the tiled parity test)
    tile: Number(new URLSearchParams(location.search).get('tile')) || 0,
  };
  const bad = [];
  if (!Number.isInteger(s.size) || s.size < app.model.minSize) bad.push(`size: a whole number of pixels, at least ${app.model.minSize}`);
  if (!Number.isInteger(s.iterations) || s.iterations < 1) bad.push('iterations: a whole number, at least 1');
  if (s.optimizer === 'lbfgs' && (!Number.isInteger(s.history) || s.history < 1)) bad.push('history: a whole number, at least 1');
  if (s.lr !== null && !(s.lr > 0)) bad.push('learning rate: a positive number (or empty for the default)');
  for (const [k, label] of [['contentWeight', 'content weight'], ['styleWeight', 'style weight'], ['tvWeight', 'TV weight']]) {
    if (s[k] !== null && !(s[k] >= 0)) bad.push(`${label}: a number, 0 or more (or empty for the model's default)`);
  }
  if (!(app.styles.reduce((a, x) => a + x.weight, 0) > 0)) bad.push('style weights: they must sum to a positive number');
  return { settings: s, bad };
}

function send(payload) {
  app.records = [];
  drawChart();
  app.hasRun = true;
  app.started = performance.now();
  $('bar').style.width = '0';
  setState('preparing');
  setMessage('');
  worker.postMessage(payload);
}

function start() {
  const { settings, bad } = readSettings();
  if (bad.length) {
    setMessage(bad.join('\n'), 'error');
    return;
  }
  const c = app.content.image;
  const fit = memoryPlan({
    layers: app.model.layers, gradient: app.model.gradient, optimizer: settings.optimizer, history: settings.history || 100,
    ep: app.backend.ep, heapLimit: app.heap.limit, gpuLimits: app.backend.gpuLimits, minSize: app.model.minSize, tiling: app.model.tiling,
    // the page's own arrays count too, against a budget for the tab (memory.js tabBudget); ?device-memory=N
    // stands for what the browser reports (tests: the plan on a small machine)
    contentLayers: app.model.contentLayers, contentLayerWeights: app.model.defaults?.content_layer_weights,
    deviceMemory: Number(new URLSearchParams(location.search).get('device-memory')) || navigator.deviceMemory,
  }, settings.size, c.width, c.height, app.styles.map((s) => [s.image.width, s.image.height]), settings.styleScale);
  if (fit.refusal) {
    setMessage(`refused before starting: ${fit.refusal}`, 'error');
    return;
  }
  // as the form says (Resume compares the form with it), before the plan lowers the history
  app.runSettings = { ...settings, styles: app.styles.map((x) => `${x.name}:${x.weight}`).join(', '), content: app.content.name };
  // tiles where the whole image does not fit (a ?tile=N in the URL overrides the size the plan chose)
  if (!settings.tile) settings.tile = fit.tile;
  if (settings.optimizer === 'lbfgs') settings.history = fit.history; // lowered where the heap or the tab needs it
  app.plan = fit;
  const payload = {
    type: 'start', settings,
    content: app.content.image,
    styles: app.styles.map((s) => ({ name: s.name, weight: s.weight, image: s.image })),
  };
  if (app.restart) {
    app.restart = false;
    pendingStart = payload;
    startWorker();
    return;
  }
  send(payload);
  if (fit.note) setMessage(fit.note, 'info');
}

function resume() {
  const iterations = Number($('iterations').value);
  const done = app.records.length ? app.records[app.records.length - 1].iteration : 0;
  if (app.state === 'done' && !(iterations > done)) {
    setMessage(`the run is done (${done} iterations): raise the iterations to continue it`, 'error');
    return;
  }
  setState('running');
  setMessage('');
  showProgress();
  worker.postMessage({ type: 'resume', iterations });
  // Resume goes on with the run's own image, inputs and settings: say so where the form now differs
  const changed = changedSince(app.runSettings);
  if (changed.length) setMessage(`resumed with the settings the run started with; changed since, and used at the next Start: ${changed.join(', ')}`, 'info');
}

const SETTING_LABELS = {
  size: 'size', optimizer: 'optimizer', lr: 'learning rate', history: 'history', contentWeight: 'content weight', styleWeight: 'style weight',
  tvWeight: 'TV weight', color: 'color', init: 'start from', styles: 'style images or weights', content: 'content image',
};

function changedSince(run) {
  if (!run || !app.model || !app.content) return [];
  const now = { ...readSettings().settings, styles: app.styles.map((x) => `${x.name}:${x.weight}`).join(', '), content: app.content.name };
  return Object.keys(SETTING_LABELS).filter((k) => now[k] !== run[k] && !(Number.isNaN(now[k]) && Number.isNaN(run[k]))).map((k) => SETTING_LABELS[k]);
}

function download() {
  const name = [app.content?.name, ...app.styles.map((s) => s.name)].map((n) => (n || '').replace(/\.[^.]*$/, '')).filter(Boolean).join('_');
  $('result').toBlob((blob) => {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = `${name || 'nst-ort'}_${app.resultSize ? app.resultSize.join('x') : ''}.png`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }, 'image/png');
}

function init() {
  $('content-file').addEventListener('change', (e) => { if (e.target.files.length) setContent([...e.target.files]); e.target.value = ''; });
  $('style-files').addEventListener('change', (e) => { addStyles([...e.target.files]); e.target.value = ''; });
  dropZone($('content-drop'), $('content-file'), $('content-choose'), setContent);
  dropZone($('style-drop'), $('style-files'), $('style-choose'), addStyles);
  $('model-choose').addEventListener('click', () => $('model-folder').click());
  // a file dropped next to the zones must not make the browser leave the page
  window.addEventListener('dragover', (e) => e.preventDefault());
  window.addEventListener('drop', (e) => e.preventDefault());
  $('model-folder').addEventListener('change', (e) => {
    const all = [...e.target.files];
    const own = all.filter((f) => (f.webkitRelativePath || '').split('/').length === 2);
    if (!own.length) {
      const folder = (all[0]?.webkitRelativePath || '').split('/')[0];
      setMessage(`${folder ? folder + '/' : 'that folder'}: no files directly in it; pick the model folder itself (the one holding manifest.json)`, 'error');
      e.target.value = '';
      return;
    }
    modelSpec = { modelFiles: own, modelLabel: own[0].webkitRelativePath.split('/')[0] };
    e.target.value = '';
    startWorker();
  });
  $('backend-pref').addEventListener('change', startWorker);
  $('optimizer').addEventListener('change', () => {
    $('lr').placeholder = $('optimizer').value === 'lbfgs' ? '1 (L-BFGS)' : '0.02 (Adam)';
    $('history').disabled = $('optimizer').value !== 'lbfgs';
  });
  const pref = new URLSearchParams(location.search).get('backend');
  if (['auto', 'webgpu', 'wasm'].includes(pref)) $('backend-pref').value = pref;
  $('start').addEventListener('click', start);
  $('stop').addEventListener('click', () => { if (app.state === 'running') worker.postMessage({ type: 'stop' }); });
  $('resume').addEventListener('click', resume);
  $('download').addEventListener('click', download);
  startWorker();
}

init();
