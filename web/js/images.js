// Images inside the app: { width, height, data: Float32Array [H * W * 3] }, RGB in [0, 1], sRGB,
// the layout nst_ort/media/images.py uses ([H, W, 3] float32). Decoding needs the DOM (main thread);
// sizes and resizing are plain functions that the worker uses too.

export const MAX_PIXELS = 16384 * 16384; // as nst_ort/media/images.py: larger is refused as a possible image bomb

export class ImageInputError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ImageInputError';
  }
}

// Python's round() on a float: halves go to the even neighbour (fit_size uses it).
export function pyRound(x) {
  const f = Math.floor(x);
  const diff = x - f;
  if (diff > 0.5) return f + 1;
  if (diff < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

// (w, h) with the long side set to longSide, aspect kept: nst_ort.media.images.fit_size.
export function fitSize(width, height, longSide) {
  const scale = longSide / Math.max(width, height);
  return [Math.max(1, pyRound(width * scale)), Math.max(1, pyRound(height * scale))];
}

function lanczos(x) {
  const sinc = (v) => (v === 0 ? 1 : Math.sin(v * Math.PI) / (v * Math.PI));
  return x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0;
}

// Filter taps for one axis, as Pillow computes them for Image.resize(..., LANCZOS) (support 3,
// widened by the scale when shrinking, each row of weights normalized to sum 1).
function taps(inSize, outSize) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = 3 * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const weights = new Float64Array(outSize * ksize);
  const first = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  for (let o = 0; o < outSize; o++) {
    const center = (o + 0.5) * scale;
    let lo = Math.trunc(center - support + 0.5);
    if (lo < 0) lo = 0;
    let hi = Math.trunc(center + support + 0.5);
    if (hi > inSize) hi = inSize;
    const n = hi - lo;
    let sum = 0;
    for (let i = 0; i < n; i++) {
      const w = lanczos((i + lo - center + 0.5) / filterScale);
      weights[o * ksize + i] = w;
      sum += w;
    }
    if (sum !== 0) for (let i = 0; i < n; i++) weights[o * ksize + i] /= sum;
    first[o] = lo;
    count[o] = n;
  }
  return { ksize, weights, first, count };
}

// Resize an image to (width, height) with Lanczos per channel in float, the way nst_ort.media.images.resize
// does it (Pillow, mode "F"): horizontal pass into a float32 buffer over the rows the vertical pass
// needs, then the vertical pass; sums in float64, results rounded to float32. Same size: a copy.
export function resize(img, width, height) {
  const { width: w0, height: h0, data } = img;
  if (w0 === width && h0 === height) return { width, height, data: Float32Array.from(data) };
  const vert = taps(h0, height);
  const rowFirst = vert.first[0];
  const rowLast = vert.first[height - 1] + vert.count[height - 1];
  let src = data, srcW = w0, rowOffset = 0;
  if (width !== w0) {
    const hor = taps(w0, width);
    const rows = rowLast - rowFirst;
    const tmp = new Float32Array(rows * width * 3);
    for (let y = 0; y < rows; y++) {
      const inRow = (y + rowFirst) * w0 * 3;
      for (let x = 0; x < width; x++) {
        const k = x * hor.ksize, lo = hor.first[x], n = hor.count[x];
        let r = 0, g = 0, b = 0;
        for (let i = 0; i < n; i++) {
          const p = inRow + (lo + i) * 3, wt = hor.weights[k + i];
          r += data[p] * wt;
          g += data[p + 1] * wt;
          b += data[p + 2] * wt;
        }
        const q = (y * width + x) * 3;
        tmp[q] = r;
        tmp[q + 1] = g;
        tmp[q + 2] = b;
      }
    }
    src = tmp;
    srcW = width;
    rowOffset = rowFirst;
  }
  if (height === h0) {
    // Pillow skips the vertical pass; the horizontal pass covered every row.
    return { width, height, data: src === data ? Float32Array.from(data) : src };
  }
  const out = new Float32Array(height * width * 3);
  for (let y = 0; y < height; y++) {
    const k = y * vert.ksize, lo = vert.first[y] - rowOffset, n = vert.count[y];
    for (let x = 0; x < width; x++) {
      let r = 0, g = 0, b = 0;
      for (let i = 0; i < n; i++) {
        const p = ((lo + i) * srcW + x) * 3, wt = vert.weights[k + i];
        r += src[p] * wt;
        g += src[p + 1] * wt;
        b += src[p + 2] * wt;
      }
      const q = (y * width + x) * 3;
      out[q] = r;
      out[q + 1] = g;
      out[q + 2] = b;
    }
  }
  return { width, height, data: out };
}

// [H, W, 3] -> [1, 3, H, W] (what the graphs take)
export function toCHW(img) {
  const { width: w, height: h, data } = img;
  const n = w * h;
  const out = new Float32Array(3 * n);
  for (let i = 0; i < n; i++) {
    out[i] = data[i * 3];
    out[n + i] = data[i * 3 + 1];
    out[2 * n + i] = data[i * 3 + 2];
  }
  return out;
}

export function fromCHW(chw, width, height) {
  const n = width * height;
  const data = new Float32Array(3 * n);
  for (let i = 0; i < n; i++) {
    data[i * 3] = chw[i];
    data[i * 3 + 1] = chw[n + i];
    data[i * 3 + 2] = chw[2 * n + i];
  }
  return { width, height, data };
}

// Clipped and rounded as nst_ort.media.images.to_uint8 does, as RGBA for a canvas.
export function toRGBA(img) {
  const n = img.width * img.height;
  const out = new Uint8ClampedArray(n * 4);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < 3; c++) {
      const v = Math.min(1, Math.max(0, img.data[i * 3 + c]));
      out[i * 4 + c] = Math.floor(Math.fround(Math.fround(v * 255) + 0.5));
    }
    out[i * 4 + 3] = 255;
  }
  return out;
}

// uint8 RGBA (a canvas's pixels, already composited on white) -> float RGB in [0, 1], divided in
// float32 as numpy does (asarray(uint8, float32) / 255.0).
export function fromRGBA(rgba, width, height) {
  const n = width * height;
  const data = new Float32Array(n * 3);
  for (let i = 0; i < n; i++) {
    data[i * 3] = rgba[i * 4] / 255;
    data[i * 3 + 1] = rgba[i * 4 + 1] / 255;
    data[i * 3 + 2] = rgba[i * 4 + 2] / 255;
  }
  return { width, height, data };
}

// A File or Blob -> image, in the browser. Upright (EXIF orientation applied), converted to sRGB
// (the canvas's color space), transparency composited on white: as nst_ort.media.images.load_image.
// Every failure is an ImageInputError whose message names the file.
export async function decodeImage(file) {
  const name = file.name || 'image';
  if (file.size === 0) throw new ImageInputError(`${name}: empty file`);
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: 'from-image', premultiplyAlpha: 'none' });
  } catch (e) {
    throw new ImageInputError(`${name}: not an image this browser can decode (${file.type || 'unknown type'}, ${file.size} bytes)`);
  }
  const { width, height } = bitmap;
  if (width < 1 || height < 1) throw new ImageInputError(`${name}: image has no pixels`);
  if (width * height > MAX_PIXELS) {
    bitmap.close();
    throw new ImageInputError(`${name}: ${width}x${height} is over the limit of ${MAX_PIXELS.toLocaleString('en')} pixels (possible image bomb); refused`);
  }
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext('2d', { willReadFrequently: true, colorSpace: 'srgb' });
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, width, height);
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const pixels = ctx.getImageData(0, 0, width, height, { colorSpace: 'srgb' }).data;
  return fromRGBA(pixels, width, height);
}
