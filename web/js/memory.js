// Refuse, before a run, sizes whose memory cannot fit in the browser, and name the size that would:
// the idea of nst_ort/memory.py (an estimate linear in the pixel count, from the manifest's layers)
// applied to what limits a page. On wasm that is the heap onnxruntime-web lives in: wasm32 addresses
// at most 4 GiB (the build's maximum, read from its WebAssembly.Memory), whatever the machine has.
//
//   graph     = factor * 4 bytes * H * W * sum(channels / stride^2 over the manifest's layers)
//   optimizer = the L-BFGS history rows onnxruntime copies into its heap for the projection and
//               direction graphs: 2 * (history + 1) vectors of 3*H*W floats, plus a few (Adam: 6)
//   heap      = FIXED + graph + optimizer                 (compared with the wasm heap's maximum)
//
// Calibrated in headless Chromium (onnxruntime-web 1.30, wasm, default VGG16 with train_cpu.onnx, Adam;
// the heap's size after two iterations, read from the WebAssembly.Memory): 751, 974 and 1289 MB at
// 384x288, 512x384 and 640x480, i.e. about 413 MB plus 2600-2850 bytes per pixel (a graph factor of
// 5.0-5.5 at 520 bytes per pixel for this model's 130 tapped floats). Loading the model peaks at 614 MB
// (train_cpu.onnx's weight transforms); the heap never shrinks, and the runs below 300 px fit in it.
// On WebGPU the activations live in GPU memory, which no browser API reports; there the check covers
// what WebGPU does bound: one storage buffer must hold L-BFGS's history.

import { fitSize, pyRound } from './images.js';

const FLOAT = 4;
// bytes of wasm heap per tapped float by how the training graph's backward was made (manifest
// "gradient"): manual measured 5.0-5.5 (above), 6 keeps ~10% headroom; autograd graphs keep their
// activations (nst_ort/memory.py measured 6-12.6 natively) and are not measured in the browser.
export const FACTORS = { manual: 6.0, autograd: 13.0 };
export const EVAL_FACTOR = 4.0;
export const FIXED = 420 * 2 ** 20; // onnxruntime-web, the sessions and their weights: the intercept above
export const HEADROOM = 0.9; // a run that needs 90% of the heap's maximum is refused (fragmentation)

export function perPixel(layers) {
  return layers.reduce((a, l) => a + l.channels / l.stride ** 2, 0);
}

function gib(n) {
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : `${Math.round(n / 2 ** 20)} MiB`;
}

// Bytes of wasm heap a run at (w, h) needs; styleSizes: [w, h] of the style images at that size.
export function heapNeed({ layers, gradient, optimizer, history, ep }, w, h, styleSizes = []) {
  const px = perPixel(layers) * FLOAT;
  let graph = (FACTORS[gradient] ?? FACTORS.autograd) * px * w * h;
  for (const [sw, sh] of styleSizes) graph = Math.max(graph, EVAL_FACTOR * px * sw * sh);
  if (ep === 'webgpu') graph = 0; // activations on the GPU
  const n = 3 * w * h;
  const vectors = optimizer === 'lbfgs' ? 2 * (history + 1) + 6 : 6;
  return FIXED + graph + (ep === 'webgpu' ? 0 : vectors * n * FLOAT);
}

// null if the run fits; otherwise a message naming the size that would.
//   info: { layers, gradient, optimizer, history, ep, heapLimit, gpuLimits, minSize }
//   size: the long side asked for; width, height: the content's; styles: [[w, h]] of the style images
export function check(info, size, width, height, styles = [], styleScale = 1) {
  const at = (long) => {
    const [w, h] = fitSize(width, height, long);
    const st = styles.map(([a, b]) => fitSize(a, b, Math.max(1, pyRound(Math.max(w, h) * styleScale))));
    return { w, h, heap: heapNeed(info, w, h, st) };
  };
  const fits = (long) => {
    const { w, h, heap } = at(long);
    if (heap > HEADROOM * info.heapLimit) return false;
    if (info.ep === 'webgpu' && info.gpuLimits && info.optimizer === 'lbfgs') {
      const rows = (info.history + 1) * 3 * w * h * FLOAT;
      if (rows > Math.min(info.gpuLimits.maxBufferSize, info.gpuLimits.maxStorageBufferBindingSize)) return false;
    }
    return true;
  };
  if (fits(size)) return null;
  const { w, h, heap } = at(size);
  let lo = info.minSize, hi = size;
  let best = null;
  if (fits(lo)) {
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      if (fits(mid)) lo = mid;
      else hi = mid - 1;
    }
    best = lo >= 16 ? lo - (lo % 8) : lo;
  }
  let what;
  if (info.ep === 'webgpu' && heap <= HEADROOM * info.heapLimit) {
    what = `${w}x${h} with L-BFGS history ${info.history} needs one GPU buffer of ${gib((info.history + 1) * 3 * w * h * FLOAT)}, more than this GPU allows (${gib(Math.min(info.gpuLimits.maxBufferSize, info.gpuLimits.maxStorageBufferBindingSize))})`;
  } else {
    what = `${w}x${h} needs about ${gib(heap)} of WebAssembly memory; a page's wasm heap holds at most ${gib(info.heapLimit)}`;
  }
  let advice = best ? `the largest size that fits is about ${best} px` : 'not even the smallest size fits';
  if (info.optimizer === 'lbfgs' && info.history > 10) advice += ` (or lower the L-BFGS history, now ${info.history}: it keeps 2 x history copies of the image)`;
  return `${what}; ${advice}`;
}
