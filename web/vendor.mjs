// Copies the minimal set of onnxruntime-web files the page loads from node_modules (installed from
// package-lock.json: `npm ci`) into web/vendor/onnxruntime-web/, and writes their list: SOURCES.json
// (version, the tarball's URL and sha512 integrity, each file's sha256 and size).
// Only SOURCES.json is committed (the files are 41 MB): without the copies, `nst-ort web` fetches the
// same tarball once and checks it against SOURCES.json (nst_ort/commands/ort_web.py); so a new version is
// `npm install onnxruntime-web@X`, `npm run vendor`, commit package*.json and SOURCES.json.
//   npm ci --ignore-scripts && npm run vendor
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const FILES = [
  // wasm backend (every browser): the API module, its emscripten loader and the SIMD+threads binary
  'ort.wasm.min.mjs', 'ort-wasm-simd-threaded.mjs', 'ort-wasm-simd-threaded.wasm',
  // WebGPU backend (also runs wasm kernels for ops WebGPU lacks): its own build of the same
  'ort.webgpu.min.mjs', 'ort-wasm-simd-threaded.asyncify.mjs', 'ort-wasm-simd-threaded.asyncify.wasm',
];

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const pkg = join(root, 'node_modules', 'onnxruntime-web');
const out = join(root, 'web', 'vendor', 'onnxruntime-web');

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const version = JSON.parse(readFileSync(join(pkg, 'package.json'), 'utf8')).version;
  const lock = JSON.parse(readFileSync(join(root, 'package-lock.json'), 'utf8'));
  const locked = lock.packages['node_modules/onnxruntime-web'];
  // npm leaves `resolved` out of the lockfile where omit-lockfile-registry-resolved is set; the URL is
  // then the public registry's, as npm itself derives it.
  const resolved = locked.resolved ?? `https://registry.npmjs.org/onnxruntime-web/-/onnxruntime-web-${version}.tgz`;
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  const files = {};
  for (const name of FILES) {
    copyFileSync(join(pkg, 'dist', name), join(out, name));
    const data = readFileSync(join(out, name));
    files[name] = { sha256: createHash('sha256').update(data).digest('hex'), bytes: data.length };
  }
  const sources = {
    package: 'onnxruntime-web', version, resolved, integrity: locked.integrity,
    license: 'MIT (Copyright (c) Microsoft Corporation; the notice is at the top of each .mjs file)',
    note: 'written by `npm run vendor` (web/vendor.mjs): the files the page loads, from the package\'s dist/; do not edit',
    files,
  };
  writeFileSync(join(out, 'SOURCES.json'), JSON.stringify(sources, null, 2) + '\n');
  const total = Object.values(files).reduce((a, f) => a + f.bytes, 0);
  console.log(`vendored onnxruntime-web ${version}: ${readdirSync(out).length - 1} files, ${(total / 2 ** 20).toFixed(1)} MiB`);
}
