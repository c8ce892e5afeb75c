// Where the loop keeps its float32 vectors (image, gradient, L-BFGS history, Adam moments): the
// browser's counterpart of device_loop.py's _Buffer. On wasm they are typed arrays that onnxruntime
// copies into its heap per run; on WebGPU they are GPU buffers bound by reference (the IOBinding
// analogue), so per iteration only scalars and the image for display cross to the host.

const F32 = 4;

export class CpuVectors {
  constructor(ort) {
    this.ort = ort;
    this.kind = 'cpu';
  }

  tensor(data, dims) {
    return new this.ort.Tensor('float32', data, dims);
  }

  scalar(v) {
    return new this.ort.Tensor('float32', Float32Array.of(v), []);
  }

  // rows x n, zero-filled
  history(rows, n) {
    return { data: new Float32Array(rows * n), rows, n };
  }

  // The first `count` rows as one [count, n] input.
  rows(h, count) {
    return this.tensor(h.data.subarray(0, count * h.n), [count, h.n]);
  }

  setRow(h, i, t) {
    h.data.set(t.data, i * h.n);
  }

  async read(t) {
    return t.data;
  }

  release() {}

  releaseHistory() {}
}

export class GpuVectors {
  constructor(ort, device) {
    this.ort = ort;
    this.device = device;
    this.kind = 'gpu';
    this.usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  }

  tensor(data, dims) {
    const size = Math.max(16, Math.ceil(data.byteLength / 16) * 16);
    const buffer = this.device.createBuffer({ size, usage: this.usage });
    this.device.queue.writeBuffer(buffer, 0, data.buffer, data.byteOffset, data.byteLength);
    return this.ort.Tensor.fromGpuBuffer(buffer, { dataType: 'float32', dims, dispose: () => buffer.destroy() });
  }

  scalar(v) {
    return new this.ort.Tensor('float32', Float32Array.of(v), []); // scalars go in from the host
  }

  history(rows, n) {
    const buffer = this.device.createBuffer({ size: rows * n * F32, usage: this.usage });
    return { buffer, rows, n }; // createBuffer zero-fills
  }

  rows(h, count) {
    return this.ort.Tensor.fromGpuBuffer(h.buffer, { dataType: 'float32', dims: [count, h.n] });
  }

  setRow(h, i, t) {
    const enc = this.device.createCommandEncoder();
    enc.copyBufferToBuffer(t.gpuBuffer, 0, h.buffer, i * h.n * F32, h.n * F32);
    this.device.queue.submit([enc.finish()]);
  }

  async read(t) {
    return t.location === 'gpu-buffer' ? await t.getData() : t.data;
  }

  release(t) {
    if (t && t.location === 'gpu-buffer') t.dispose();
  }

  releaseHistory(h) {
    h.buffer.destroy();
  }
}
