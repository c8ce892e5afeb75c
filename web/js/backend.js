// The one place that picks how the graphs run in this browser: onnxruntime-web's WebGPU backend where
// the browser offers a WebGPU adapter, its wasm backend (SIMD, threads when the page is cross-origin
// isolated) otherwise. Runs in the worker. Everything is loaded from the page's own server (no CDN):
// `nst-ort web` serves onnxruntime-web at vendor/onnxruntime-web/, checked against SOURCES.json
// (nst_ort/commands/ort_web.py).

const VENDOR = new URL('../vendor/onnxruntime-web/', import.meta.url).href;
const BUILDS = { wasm: 'ort.wasm.min.mjs', webgpu: 'ort.webgpu.min.mjs' };

// The WebAssembly memories emscripten makes for onnxruntime, so that the page can tell how much of
// the 4 GiB a wasm32 heap may grow to is in use (the memory check and the status line use it).
const memories = [];
if (!WebAssembly.Memory.__nstOrtTracked) {
  const Native = WebAssembly.Memory;
  const Tracked = new Proxy(Native, {
    construct(target, args, newTarget) {
      const memory = Reflect.construct(target, args, newTarget);
      memories.push({ memory, maximumPages: args[0]?.maximum ?? 65536 });
      return memory;
    },
  });
  Tracked.__nstOrtTracked = true;
  WebAssembly.Memory = Tracked;
}

export const WASM_PAGE = 65536;

export function wasmHeap() {
  const m = memories.filter((x) => x.maximumPages > 0).sort((a, b) => b.memory.buffer.byteLength - a.memory.buffer.byteLength)[0];
  return m ? { bytes: m.memory.buffer.byteLength, limit: m.maximumPages * WASM_PAGE } : { bytes: 0, limit: 4 * 2 ** 30 };
}

export class BackendError extends Error {
  constructor(message) {
    super(message);
    this.name = 'BackendError';
  }
}

async function gpuAdapter() {
  if (!globalThis.navigator?.gpu) return null;
  try {
    return await navigator.gpu.requestAdapter();
  } catch {
    return null;
  }
}

// pref: 'auto' | 'webgpu' | 'wasm'. threads: wasm threads wanted (used only when cross-origin isolated).
export async function openBackend(pref = 'auto', threads = 0) {
  let ep = 'wasm', adapter = null;
  if (pref !== 'wasm') {
    adapter = await gpuAdapter();
    // A software adapter (SwiftShader: WebGPU emulated on the CPU) is far slower than wasm: only when asked.
    const software = adapter && (adapter.info?.isFallbackAdapter || adapter.isFallbackAdapter || /swiftshader/i.test(adapter.info?.architecture || ''));
    if (adapter && (pref === 'webgpu' || !software)) ep = 'webgpu';
    else if (pref === 'webgpu') throw new BackendError('WebGPU was asked for, but this browser offers no WebGPU adapter; use wasm');
    else adapter = null;
  }
  let ort;
  try {
    ort = await import(VENDOR + BUILDS[ep]);
  } catch (e) {
    throw new BackendError(`could not load onnxruntime-web from ${VENDOR} (${e.message})`);
  }
  const isolated = !!globalThis.crossOriginIsolated;
  const cores = globalThis.navigator?.hardwareConcurrency || 1;
  const wanted = threads > 0 ? threads : Math.min(cores, 16);
  ort.env.wasm.wasmPaths = VENDOR;
  ort.env.wasm.numThreads = isolated ? wanted : 1;
  ort.env.wasm.proxy = false; // this is already a worker
  ort.env.logLevel = 'error';
  const b = { ort, ep, threads: ort.env.wasm.numThreads, isolated, adapter, device: null, version: ort.env.versions?.web };
  const info = adapter?.info;
  const gpuName = info ? [info.vendor, info.architecture, info.description].filter(Boolean).join(' ') : '';
  b.label = ep === 'webgpu'
    ? `WebGPU${gpuName ? ' (' + gpuName + ')' : ''}`
    : `wasm (SIMD, ${b.threads} thread${b.threads === 1 ? '' : 's'}${isolated ? '' : ': page not cross-origin isolated'})`;
  return b;
}

// A session over ONNX bytes; weights (Uint8Array) become the graph's external data file.
// gpuOutputs: output names that stay on the GPU (WebGPU only), as IOBinding keeps them on the device.
export async function createSession(backend, bytes, { weights = null, weightsPath = 'weights.bin', gpuOutputs = [] } = {}) {
  const opts = {
    executionProviders: [backend.ep],
    graphOptimizationLevel: 'all',
    executionMode: 'sequential',
    enableMemPattern: false, // as nst_ort/engine/providers.py: less resident memory, same speed
    logSeverityLevel: 3,
  };
  if (weights) opts.externalData = [{ path: weightsPath, data: weights }];
  if (backend.ep === 'webgpu' && gpuOutputs.length) {
    opts.preferredOutputLocation = Object.fromEntries(gpuOutputs.map((n) => [n, 'gpu-buffer']));
  }
  return backend.ort.InferenceSession.create(bytes, opts);
}
