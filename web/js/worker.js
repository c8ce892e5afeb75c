// The page's worker: loads onnxruntime-web and the model, runs the loop, and reports to the page.
// Running here keeps the page responsive while a graph runs (wasm threads block the thread that calls
// them). Messages in: init, start, stop, resume. Messages out: status, backend, ready, record, image,
// stopped, done, error ({ kind, message }: the page shows the message).
import { openBackend, wasmHeap } from './backend.js';
import { toRGBA } from './images.js';
import { Model, ModelError, ModelSource } from './model.js';
import { RunError, Sessions, Stylizer } from './stylizer.js';

let backend = null, model = null, sessions = null, stylizer = null;
let stopRequested = false, running = false;
const IMAGE_EVERY_MS = 200; // the page's preview: at most five frames a second, and always the last one

const post = (type, payload = {}, transfer = []) => postMessage({ type, ...payload }, transfer);
const status = (text) => post('status', { text });

function fail(e) {
  let kind = 'internal';
  if (e instanceof ModelError) kind = 'model';
  else if (e instanceof RunError) kind = e.kind;
  else if (e?.name === 'BackendError') kind = 'device';
  const message = kind === 'internal' ? `internal error: ${e?.message || e} (please report it)` : e.message;
  if (kind === 'internal') console.error(e);
  post('error', { kind, message });
}

async function init({ backendPref, threads, graph, modelUrl, modelFiles, modelLabel }) {
  if (!backend) {
    status('loading onnxruntime-web');
    backend = await openBackend(backendPref, threads);
  }
  // the page shows where the graphs run even if the model is then refused
  post('backend', { backend: { ep: backend.ep, label: backend.label, threads: backend.threads, isolated: backend.isolated, version: backend.version } });
  const source = modelFiles ? ModelSource.files(modelFiles, modelLabel) : ModelSource.url(modelUrl);
  // as Artifacts.train_graph_path: the CPU variant (Winograd convolutions) on a CPU, if the model has it
  const wantTrain = graph || (backend.ep === 'wasm' ? 'train_cpu' : 'train');
  const m = await Model.load(source, { wantTrain, progress: status });
  const s = await Sessions.create(backend, m, status);
  if (stylizer) stylizer.dispose();
  stylizer = null;
  model = m;
  sessions = s;
  // onnxruntime holds its own copies now; the tile graphs and the weights stay (in JS memory, not the
  // wasm heap) for the first tiled run, which makes their sessions
  const keep = new Set(m.manifest.tiling?.format === 1 ? [m.weightsFile, ...['grams', 'train', 'grams_cpu', 'train_cpu'].map((r) => m.manifest.tiling[r]?.file)] : []);
  for (const k of Object.keys(m.files)) if (!keep.has(k)) delete m.files[k];
  post('ready', {
    backend: { ep: backend.ep, label: backend.label, threads: backend.threads, isolated: backend.isolated, version: backend.version,
      gpuLimits: sessions.vectors.device ? { maxBufferSize: sessions.vectors.device.limits.maxBufferSize, maxStorageBufferBindingSize: sessions.vectors.device.limits.maxStorageBufferBindingSize } : null },
    heap: wasmHeap(),
    model: m.summary(),
  });
}

async function sendImage() {
  const img = await stylizer.current();
  const rgba = toRGBA(img);
  post('image', { width: img.width, height: img.height, rgba }, [rgba.buffer]);
}

async function loop() {
  running = true;
  let last = 0;
  try {
    while (stylizer.iteration < stylizer.iterations && !stopRequested) {
      // onnxruntime-web's wasm runs return promises that are already resolved: without a macrotask
      // turn here the 'stop' message would wait until the whole run is over
      await new Promise((resolve) => setTimeout(resolve, 0));
      if (stopRequested) break;
      const rec = await stylizer.step();
      rec.heap = wasmHeap().bytes;
      post('record', { record: rec });
      if (performance.now() - last > IMAGE_EVERY_MS) {
        await sendImage();
        last = performance.now();
      }
    }
    await sendImage();
    post(stopRequested ? 'stopped' : 'done', { iteration: stylizer.iteration });
  } catch (e) {
    try {
      await sendImage(); // the last finite image stays on the page
    } catch { /* the heap may be gone after an abort */ }
    fail(e);
  } finally {
    running = false;
    stopRequested = false;
  }
}

async function start({ settings, content, styles }) {
  if (!sessions) throw new RunError('usage', 'no model is loaded');
  if (stylizer) stylizer.dispose();
  stylizer = null;
  const st = new Stylizer(sessions, model, settings, content, styles);
  await st.prepare(status);
  stylizer = st;
  post('started', { width: st.width, height: st.height, initDigest: st.initDigest });
  await loop();
}

onmessage = async (ev) => {
  const msg = ev.data;
  try {
    if (msg.type === 'init') await init(msg);
    else if (msg.type === 'start') {
      if (running) return;
      await start(msg);
    } else if (msg.type === 'stop') {
      if (running) stopRequested = true;
    } else if (msg.type === 'resume') {
      if (running || !stylizer) return;
      if (msg.iterations) stylizer.iterations = Math.max(stylizer.iterations, msg.iterations);
      await loop();
    }
  } catch (e) {
    fail(e);
  }
};
