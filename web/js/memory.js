// Refuse, before a run, sizes whose memory cannot fit in the browser, and name the size that would:
// the idea of nst_ort/engine/memory.py (an estimate linear in the pixel count, from the manifest's layers)
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
// Outside the heap, the page's own arrays (jsParts: L-BFGS's history among them) count with the heap
// against a budget for the whole tab (tabBudget); plan lowers the history, or refuses, to stay in it.

import { fitSize, pyRound } from './images.js';

const FLOAT = 4;
// bytes of wasm heap per tapped float by how the training graph's backward was made (manifest
// "gradient"): manual measured 5.0-5.5 (above), 6 keeps ~10% headroom; autograd graphs keep their
// activations (nst_ort/engine/memory.py measured 6-12.6 natively) and are not measured in the browser.
export const FACTORS = { manual: 6.0, autograd: 13.0 };
export const EVAL_FACTOR = 4.0;
export const FIXED = 420 * 2 ** 20; // onnxruntime-web, the sessions and their weights: the intercept above
export const HEADROOM = 0.9; // a run that needs 90% of the heap's maximum is refused (fragmentation)
const LOW_HISTORY = 20; // the shorter L-BFGS memory the refusal offers (L-BFGS usually does well with 5-20 pairs)

export function perPixel(layers) {
  return layers.reduce((a, l) => a + l.channels / l.stride ** 2, 0);
}

function gib(n) {
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : `${Math.round(n / 2 ** 20)} MiB`;
}

// The wasm heap a run at (w, h) needs, by what takes it (bytes); styleSizes: [w, h] of the style
// images at that size. total = fixed + graph + vectors.
export function heapParts({ layers, gradient, optimizer, history, ep }, w, h, styleSizes = []) {
  const px = perPixel(layers) * FLOAT;
  let graph = (FACTORS[gradient] ?? FACTORS.autograd) * px * w * h;
  let graphWhat = 'the training graph\'s activations';
  for (const [sw, sh] of styleSizes) {
    const evalBytes = EVAL_FACTOR * px * sw * sh;
    if (evalBytes > graph) {
      graph = evalBytes;
      graphWhat = `the style targets' activations (a ${sw}x${sh} style image)`;
    }
  }
  if (ep === 'webgpu') graph = 0; // activations on the GPU
  const copies = optimizer === 'lbfgs' ? 2 * (history + 1) + 6 : 6;
  const vectors = ep === 'webgpu' ? 0 : copies * 3 * w * h * FLOAT;
  return { fixed: FIXED, graph, graphWhat, vectors, copies, total: FIXED + graph + vectors };
}

export function heapNeed(info, w, h, styleSizes = []) {
  return heapParts(info, w, h, styleSizes).total;
}

// Tiled runs (docs/tiling.md; web/js/tiling.js): the heap holds one crop's activations (a tile and its
// halo on each side, the training graph's bytes per pixel), the two tile graphs' sessions, and the
// optimizer's copies of the whole image, which tiling does not shrink: at 2048 px an image copy is
// 34 MB, so an L-BFGS history of 100 (208 copies) cannot fit and the plan lowers it.
export const TILE_SESSIONS = 160 * 2 ** 20; // tile_grams_cpu + tile_train_cpu sessions: an estimate, not measured in the browser
export const MIN_TILE = 128; // smaller tiles are mostly halo: (N + 128)^2 px read for N^2 owned
const LOWERED_TILE = 256; // the tile a lowered history is sized for (crop 384 px: 2.3x the pixels owned)

export function tiledHeapParts(info, w, h, tile, history) {
  const px = perPixel(info.layers) * FLOAT;
  const halo = info.tiling.halo;
  const crop = Math.min(h, tile + 2 * halo) * Math.min(w, tile + 2 * halo);
  const graph = (FACTORS[info.gradient] ?? FACTORS.autograd) * px * crop;
  const copies = info.optimizer === 'lbfgs' ? 2 * (history + 1) + 6 : 6;
  const vectors = copies * 3 * w * h * FLOAT;
  return { fixed: FIXED + TILE_SESSIONS, graph, vectors, copies, total: FIXED + TILE_SESSIONS + graph + vectors };
}

// The page's own arrays, outside the wasm heap. On wasm every vector of the loop is a typed array that
// onnxruntime copies into its heap for each graph run (heapParts counts those copies); the page keeps
// its own besides: L-BFGS's history (2 x (history + 1) rows of the image, optim.js), the image, the
// gradients and the optimizer's outputs, the content at the run's size and its colors, the content
// targets, and the decoded inputs (the page's copy and the worker's). At 2048x1536 an image is 36 MiB,
// so a history of 33 alone is 2.4 GiB here, besides the heap's 4 GiB. On WebGPU the loop's vectors
// are GPU buffers: only the images stay.
export const JS_FIXED = 256 * 2 ** 20; // the page, onnxruntime-web's JavaScript, the model files the worker keeps for the tile graphs (VGG16's weights: 59 MB): an estimate, not measured
// x and the previous x, the gradient and the previous one, L-BFGS's direction, its s and y and the
// next x (Adam: its two moments and the next x), the start image, the content at the run's size and
// its colors (kept for luminance transfer)
const LOOP_COPIES = { lbfgs: 10, adam: 9 };
const TILED_COPIES = 2; // a tiled step's assembled gradient and TV's (web/js/tiling.js TiledStep)

export function jsParts(info, w, h, tile, history, inputs = []) {
  const image = 3 * w * h * FLOAT;
  const gpu = info.ep === 'webgpu';
  const lbfgs = info.optimizer === 'lbfgs';
  const historyCopies = !gpu && lbfgs ? 2 * (history + 1) : 0;
  const copies = historyCopies + (gpu ? 3 : (LOOP_COPIES[info.optimizer] ?? LOOP_COPIES.lbfgs) + (tile ? TILED_COPIES : 0));
  // content targets: every content layer untiled (the eval graph's outputs), only the weighted ones tiled
  const byName = Object.fromEntries(info.layers.map((l) => [l.name, l]));
  const weight = info.contentLayerWeights || {};
  const names = (info.contentLayers || []).filter((n) => byName[n] && (!tile || weight[n] !== 0));
  const targets = perPixel(names.map((n) => byName[n])) * FLOAT * w * h;
  const decoded = 2 * inputs.reduce((a, [iw, ih]) => a + 3 * iw * ih * FLOAT, 0);
  const vectors = copies * image;
  return { fixed: JS_FIXED, vectors, copies, historyCopies, targets, decoded, total: JS_FIXED + vectors + targets + decoded };
}

// The tab's budget, a choice (no browser fixes one for a 64-bit tab's ArrayBuffers): the wasm heap's
// planned use plus the page's own arrays at most TAB_SHARE of the machine's memory, as
// navigator.deviceMemory reports it (Chromium: GB, rounded down to a power of two; 16 from Chromium 156
// on a 24 GiB machine, at most 8 in older versions), else DEVICE_GB. What ends a tab that takes more
// is the machine running out (the OS or the browser kills it and the run is lost), and the browser,
// the OS and the other tabs need the rest. 0.75 x 8 GB =
// 6 GiB: a full 4 GiB heap leaves 2 GiB for the page's arrays.
export const TAB_SHARE = 0.75;
export const DEVICE_GB = 8;

export function tabBudget(info) {
  const gb = info.deviceMemory > 0 ? info.deviceMemory : DEVICE_GB;
  return { bytes: TAB_SHARE * gb * 2 ** 30, gb, reported: info.deviceMemory > 0 };
}

function budgetText(b) {
  return `the ${gib(b.bytes)} this page allows a tab (${Math.round(100 * TAB_SHARE)}% of the ${b.gb} GB of memory `
    + `${b.reported ? 'the browser reports' : 'assumed where the browser does not say'})`;
}

// How a run at `size` uses the heap and the tab: { refusal (null if it runs), tile (0: untiled),
// history (maybe lowered), note (what the page tells the user about tiling and the history) }.
// Untiled where the heap fits; else, on wasm with a model that has the tile graphs, the largest tile
// that fits at the history asked for (at least MIN_TILE px), else the largest history that fits with
// LOWERED_TILE px tiles. Then the tab: where the heap's use and the page's own arrays pass its budget,
// the L-BFGS history is lowered until they fit; a run that fits at no history is refused.
export function plan(info, size, width, height, styles = [], styleScale = 1) {
  const got = decide(info, size, width, height, styles, styleScale);
  if (!got.tabRefusal) return got.result;
  const runs = (long) => !decide(info, long, width, height, styles, styleScale).result.refusal;
  let lo = info.minSize, hi = size - 1;
  if (!runs(lo)) lo = 0;
  else {
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      if (runs(mid)) lo = mid;
      else hi = mid - 1;
    }
  }
  const best = lo >= 16 ? lo - (lo % 8) : lo;
  const advice = lo ? `the largest size that fits is about ${best} px` : 'not even the smallest size fits';
  return { ...got.result, refusal: `${got.tabRefusal}; ${advice}.` };
}

function decide(info, size, width, height, styles, styleScale) {
  const heap = heapFit(info, size, width, height, styles, styleScale);
  if (heap.refusal) return { result: heap }; // the heap's own refusal (check's message)
  const [w, h] = fitSize(width, height, size);
  const st = styles.map(([a, b]) => fitSize(a, b, Math.max(1, pyRound(Math.max(w, h) * styleScale))));
  const inputs = [[width, height], ...styles];
  const budget = tabBudget(info);
  const usable = HEADROOM * info.heapLimit;
  const heapAt = (tile, history) => (tile ? tiledHeapParts(info, w, h, tile, history) : heapParts({ ...info, history }, w, h, st));
  const tabAt = (tile, history) => heapAt(tile, history).total + jsParts(info, w, h, tile, history, inputs).total;
  const inTab = (tile, history) => tabAt(tile, history) <= budget.bytes;
  const untiled = (history) => check({ ...info, history }, size, width, height, styles, styleScale) === null && inTab(0, history);
  const canTile = Boolean(info.tiling) && info.ep === 'wasm';
  const tiled = (tile, history) => canTile && tiledHeapParts(info, w, h, tile, history).total <= usable && inTab(tile, history);
  const largestTile = (history) => {
    let best = 0;
    for (let t = MIN_TILE; t <= Math.max(w, h) + info.tiling.align; t += info.tiling.align) if (tiled(t, history)) best = t;
    return best;
  };
  // as heapFit, with the tab's budget too: untiled, else the largest tile, at the history asked for;
  // else the largest history that fits untiled or in LOWERED_TILE px tiles; else in any tile
  let tile = 0, history = info.history, found = untiled(history);
  if (!found && canTile) found = Boolean(tile = largestTile(history));
  for (const least of [LOWERED_TILE, MIN_TILE]) {
    for (let hst = info.history - 1; !found && info.optimizer === 'lbfgs' && hst >= 1; hst--) {
      if (untiled(hst)) [found, history] = [true, hst];
      else if (tiled(least, hst)) [found, history, tile] = [true, hst, largestTile(hst)];
    }
  }
  if (!found) {
    // the least it could take: history 1, untiled or in the smallest tiles (whichever is less)
    const least = info.optimizer === 'lbfgs' ? 1 : info.history;
    const wholeFits = check({ ...info, history: least }, size, width, height, styles, styleScale) === null;
    const t = canTile && (!wholeFits || tabAt(MIN_TILE, least) < tabAt(0, least)) ? MIN_TILE : 0;
    const js = jsParts(info, w, h, t, least, inputs);
    const lbfgs = info.optimizer === 'lbfgs' ? `, even at an L-BFGS history of 1${t ? ` in ${t} px tiles` : ''}` : t ? `, even in ${t} px tiles` : '';
    return {
      result: { refusal: 'tab', tile: 0, history: info.history, note: '' },
      tabRefusal: `${w}x${h} needs about ${gib(tabAt(t, least))} in this tab${lbfgs}: ${gib(heapAt(t, least).total)} of WebAssembly memory `
        + `and ${gib(js.total)} of the page's own arrays (${js.copies} copies of the image, ${gib(js.vectors)}; the decoded images `
        + `${gib(js.decoded)}; the content targets ${gib(js.targets)}; the page and the model ${gib(js.fixed)}), more than ${budgetText(budget)}`,
    };
  }
  const notes = [];
  if (tile) {
    const why = check(info, size, width, height, styles, styleScale) ? 'the wasm heap' : 'this tab\'s memory budget';
    notes.push(`${w}x${h} does not fit ${why} whole: it runs in ${Math.ceil(h / tile)}x${Math.ceil(w / tile)} tiles of ${tile} px (each read `
      + `with a ${info.tiling.halo} px halo, two graph runs per tile per iteration: slower, the same result), ${gib(heapAt(tile, history).total)} of the heap`);
  }
  if (history < heap.history) {
    const js = jsParts(info, w, h, tile, history, inputs);
    notes.push(`the L-BFGS history is lowered from ${info.history} to ${history} (${heap.history < info.history ? `the heap alone fits ${heap.history}; ` : ''}`
      + `the page keeps its own ${js.historyCopies} copies of the image for it besides the heap's, ${gib(js.vectors)} with the loop's, `
      + `and at ${heap.history} the heap and the page's arrays would need ${gib(tabAt(heap.tile, heap.history))}, more than ${budgetText(budget)})`);
  } else if (history < info.history) {
    notes.push(`the L-BFGS history is lowered from ${info.history} to ${history} (its copies of the image in the heap: ${gib(heapAt(tile, history).vectors)})`);
  }
  return { result: { refusal: null, tile, history, note: notes.join('; ') } };
}

// The heap's plan alone (the plan before the tab's budget).
function heapFit(info, size, width, height, styles, styleScale) {
  const refusal = check(info, size, width, height, styles, styleScale);
  if (!refusal) return { refusal: null, tile: 0, history: info.history, note: '' };
  if (!info.tiling || info.ep !== 'wasm') return { refusal, tile: 0, history: info.history, note: '' };
  const [w, h] = fitSize(width, height, size);
  const usable = HEADROOM * info.heapLimit;
  const align = info.tiling.align;
  const fits = (tile, history) => tiledHeapParts(info, w, h, tile, history).total <= usable;
  const largestTile = (history) => {
    let best = 0;
    for (let t = MIN_TILE; t <= Math.max(w, h) + align; t += align) if (fits(t, history)) best = t;
    return best;
  };
  let history = info.history;
  let tile = largestTile(history);
  if (!tile && info.optimizer === 'lbfgs') {
    for (let hst = info.history - 1; hst >= 1 && !tile; hst--) {
      if (fits(LOWERED_TILE, hst)) {
        history = hst;
        tile = largestTile(hst);
      }
    }
  }
  if (!tile) return { refusal: `${refusal} Tiled, it does not fit either: the optimizer's copies of the whole image alone need ${gib(tiledHeapParts(info, w, h, MIN_TILE, 1).vectors)}.`, tile: 0, history, note: '' };
  const cols = Math.ceil(w / tile), rows = Math.ceil(h / tile);
  const parts = tiledHeapParts(info, w, h, tile, history);
  const note = `${w}x${h} does not fit the wasm heap whole: it runs in ${rows}x${cols} tiles of ${tile} px (each read with a ${info.tiling.halo} px halo, `
    + `two graph runs per tile per iteration: slower, the same result), ${gib(parts.total)} of the heap`;
  return { refusal: null, tile, history, note, heapVectors: parts.vectors };
}

// null if the run fits; otherwise a message that says what takes the heap and names the size that
// would fit.
//   info: { layers, gradient, optimizer, history, ep, heapLimit, gpuLimits, minSize } (plan also reads
//   tiling, contentLayers, contentLayerWeights and deviceMemory: navigator.deviceMemory, if any)
//   size: the long side asked for; width, height: the content's; styles: [[w, h]] of the style images
export function check(info, size, width, height, styles = [], styleScale = 1) {
  const at = (inf, long) => {
    const [w, h] = fitSize(width, height, long);
    const st = styles.map(([a, b]) => fitSize(a, b, Math.max(1, pyRound(Math.max(w, h) * styleScale))));
    return { w, h, parts: heapParts(inf, w, h, st) };
  };
  const bufferLimit = () => Math.min(info.gpuLimits.maxBufferSize, info.gpuLimits.maxStorageBufferBindingSize);
  const fits = (inf, long) => {
    const { w, h, parts } = at(inf, long);
    if (parts.total > HEADROOM * inf.heapLimit) return false;
    if (inf.ep === 'webgpu' && inf.gpuLimits && inf.optimizer === 'lbfgs') {
      if ((inf.history + 1) * 3 * w * h * FLOAT > bufferLimit()) return false;
    }
    return true;
  };
  // the largest long side that fits (below the size asked for: a multiple of 8 from 16 px), or null
  const largest = (inf) => {
    if (fits(inf, size)) return size;
    let lo = inf.minSize, hi = size;
    if (!fits(inf, lo)) return null;
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      if (fits(inf, mid)) lo = mid;
      else hi = mid - 1;
    }
    return lo >= 16 ? lo - (lo % 8) : lo;
  };
  if (fits(info, size)) return null;
  const { w, h, parts } = at(info, size);
  const usable = HEADROOM * info.heapLimit;
  const best = largest(info);
  let advice = best ? `the largest size that fits is about ${best} px` : 'not even the smallest size fits';
  if (info.optimizer === 'lbfgs' && info.history > LOW_HISTORY) {
    const low = largest({ ...info, history: LOW_HISTORY });
    const then = low === size ? `${size} px fits` : low && low !== best ? `about ${low} px fits` : '';
    advice += then ? `; with an L-BFGS history of ${LOW_HISTORY} (now ${info.history}), ${then}` : ` (or lower the L-BFGS history, now ${info.history}: it keeps 2 x history copies of the image)`;
  }
  if (info.ep === 'webgpu' && parts.total <= usable) {
    return `${w}x${h} with L-BFGS history ${info.history} needs one GPU buffer of ${gib((info.history + 1) * 3 * w * h * FLOAT)}, more than this GPU allows (${gib(bufferLimit())}); ${advice}.`;
  }
  // Why a need below the heap's maximum is refused: the heap also holds onnxruntime-web and the
  // weights, and it only grows (freed blocks fragment it), so part of it is kept free.
  const items = [`${gib(parts.fixed)} for onnxruntime-web's wasm module, its sessions and the model's weights`];
  if (parts.graph) items.push(`${gib(parts.graph)} for ${parts.graphWhat}`);
  const lbfgs = info.optimizer === 'lbfgs' ? ` (the L-BFGS history of ${info.history} keeps ${2 * (info.history + 1)})` : '';
  items.push(`${gib(parts.vectors)} for ${parts.copies} copies of the image${lbfgs}`);
  return `${w}x${h} needs about ${gib(parts.total)} of WebAssembly memory, more than the ${gib(usable)} a run may use; ${advice}.\n`
    + `What takes it: ${items.join('; ')}. A page's wasm heap holds at most ${gib(info.heapLimit)}, and ${Math.round(100 * (1 - HEADROOM))}% of it `
    + `(${gib(info.heapLimit - usable)}) is kept free because the heap only grows and fragments.`;
}
