"""The browser app (web/) and `nst-ort web`, checked in a real browser: headless Chromium driven by
puppeteer-core (tests/web/drive.mjs) through the page's own controls, against `nst-ort web`.

The browser tests skip (saying why) where Chromium or node is missing; `.ci/run` installs both, so CI
runs them. The server, where onnxruntime-web's files come from (a fake npm registry on 127.0.0.1 for
the one-time fetch) and the image code need less.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from nst_ort.media.images import fit_size, load_image, resize

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "web"
VENDOR = WEB / "vendor" / "onnxruntime-web"
NPM_DIST = ROOT / "node_modules" / "onnxruntime-web" / "dist"
DRIVER = ROOT / "tests" / "web" / "drive.mjs"
MODEL = ROOT / "models" / "vgg16"
EXAMPLES = ROOT / "examples"

NODE = shutil.which("node")
CHROMIUM = next((p for p in (os.environ.get("NST_ORT_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser"), "/usr/bin/chromium") if p and Path(p).is_file()), None)

needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed (apt-get install nodejs npm)")
needs_browser = pytest.mark.skipif(NODE is None or CHROMIUM is None,
                                   reason="needs node and Chromium (apt-get install chromium nodejs npm; .ci/run does)")


@pytest.fixture(scope="session")
def puppeteer():
    """puppeteer-core from package-lock.json (npm ci, as .ci/run does), installed here if missing."""
    if not (ROOT / "node_modules" / "puppeteer-core").is_dir():
        npm = shutil.which("npm")
        r = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=ROOT,
                           capture_output=True, text=True) if npm else None
        if r is None or r.returncode != 0:
            pytest.skip("puppeteer-core is not installed and `npm ci` failed (no npm or no registry): "
                        + (r.stderr.strip().splitlines()[-1] if r is not None and r.stderr.strip() else "npm missing"))
    return ROOT / "node_modules" / "puppeteer-core"


def ort_web_args() -> list[str]:
    """`--ort-web` the npm-installed copy (`npm ci`, as CI runs) when it is the pinned version; else
    nothing: nst-ort web then takes web/vendor/, the user cache, or fetches them once."""
    installed = NPM_DIST.parent / "package.json"
    if installed.is_file() and json.loads(installed.read_text())["version"] == json.loads(
            (VENDOR / "SOURCES.json").read_text())["version"]:
        return ["--ort-web", str(NPM_DIST)]
    return []


@contextlib.contextmanager
def serve(model: Path | None = None, *extra: str):
    """`nst-ort web --port 0` in a subprocess; yields the URL it prints."""
    with serve_process(model, *extra) as (url, _):
        yield url


@contextlib.contextmanager
def serve_process(model: Path | None = None, *extra: str, env: dict | None = None):
    """As serve(), yielding (URL, the process): its stderr is read after it ends (p.stderr)."""
    # the README's command, `nst-ort web`, where the console script is installed beside this Python
    script = Path(sys.executable).with_name("nst-ort")
    prog = [str(script)] if script.is_file() else [sys.executable, "-m", "nst_ort"]
    cmd = [*prog, "web", "--port", "0", *ort_web_args(), *extra] + (["--model", str(model)] if model else [])
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=None if env is None else {**os.environ, **env})
    try:
        line = p.stdout.readline()
        found = re.search(r"http://[^\s]+/", line)
        if not found:
            p.kill()
            raise AssertionError(f"nst-ort web printed {line!r}; stderr: {p.stderr.read()[-2000:]}")
        yield found.group(0), p
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def drive(job: dict, timeout: int = 420) -> dict:
    job = {"chromium": CHROMIUM, "timeout_s": timeout - 30, **job}
    r = subprocess.run([NODE, str(DRIVER), json.dumps(job)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0 and r.stdout.strip(), f"driver failed ({r.returncode}): {r.stderr[-3000:]}"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert "error" not in out, (f"{out['error']}; page state {out.get('state')!r}, message {out.get('message')!r}, "
                                f"progress {out.get('progress')!r}, page errors {out.get('pageErrors')}")
    return out


def save_png(src: Path, long_side: int, out: Path) -> Path:
    """A PNG made with the runtime's own loader and Lanczos resize: exact pixels on both sides."""
    from PIL import Image

    img = load_image(src)
    w, h = fit_size(img.shape[1], img.shape[0], long_side)
    Image.fromarray((np.clip(resize(img, (w, h)), 0, 1) * 255 + 0.5).astype(np.uint8)).save(out)
    return out


def rel(a, b) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


# -- the server ------------------------------------------------------------------------------------
def _get(url: str, headers: dict | None = None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, b""


def test_server_types_isolation_and_what_it_serves(tmp_path):
    with serve() as url:
        status, headers, body = _get(url)
        assert status == 200 and headers["Content-Type"].startswith("text/html") and b"nst-ort" in body
        # wasm threads need cross-origin isolation: both headers on every response
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        status, headers, body = _get(url + "vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm")
        assert status == 200 and headers["Content-Type"] == "application/wasm" and body[:4] == b"\0asm"
        sources = json.loads((VENDOR / "SOURCES.json").read_text())["files"]
        assert hashlib.sha256(body).hexdigest() == sources["ort-wasm-simd-threaded.wasm"]["sha256"]
        # a reload is not another 14 MB: the ETag is the file's sha256
        assert headers["ETag"] == f'"{sources["ort-wasm-simd-threaded.wasm"]["sha256"]}"'
        status, _, body = _get(url + "vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm", {"If-None-Match": headers["ETag"]})
        assert status == 304 and body == b""
        status, headers, _ = _get(url + "vendor/onnxruntime-web/ort.wasm.min.mjs")
        assert status == 200 and headers["Content-Type"].startswith("text/javascript")
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        status, headers, body = _get(url + "model/manifest.json")
        assert status == 200 and json.loads(body)["backbone"] == "vgg16"
        status, _, body = _get(url + "model/weights.bin")
        assert status == 200 and hashlib.sha256(body).hexdigest() == json.loads(
            (MODEL / "manifest.json").read_text())["files"]["weights.bin"]["sha256"]
        # only the manifest's files from the model folder, nothing above the app folder, no listings
        for path in ("model/MODEL_CARD.md", "model/../pyproject.toml", "model/%2e%2e/manifest.json", "..%2fpyproject.toml",
                     "%2e%2e/README.md", "vendor/", ".gitignore", "js/%2e%2e/%2e%2e/pyproject.toml",
                     "vendor/onnxruntime-web/SOURCES.json", "vendor/onnxruntime-web/ort-wasm.wasm"):
            status, _, _ = _get(url + path)
            assert status == 404, path


def test_server_bad_model_and_busy_port(tmp_path):
    r = subprocess.run([sys.executable, "-m", "nst_ort", "web", "--model", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 4 and r.stderr.count("\n") == 1 and "nope: model folder does not exist" in r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "nst_ort", "web", "--port", str(port)],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and f"--port {port}: address already in use" in r.stderr


def test_sources_json_is_the_locked_package_and_the_binaries_are_not_tracked():
    """SOURCES.json (the only tracked file of web/vendor/onnxruntime-web/) names the package
    package-lock.json pins, at its registry URL, and the files web/vendor.mjs copies; any copy there is
    (web/vendor after `npm run vendor`, node_modules after `npm ci`) has those sha256."""
    sources = json.loads((VENDOR / "SOURCES.json").read_text())
    lock = json.loads((ROOT / "package-lock.json").read_text())["packages"]["node_modules/onnxruntime-web"]
    assert sources["version"] == lock["version"] and sources["integrity"] == lock["integrity"]
    name, version = sources["package"], sources["version"]
    # npm omits `resolved` from the lockfile with omit-lockfile-registry-resolved; it is then this URL
    assert sources["resolved"] == lock.get("resolved", f"https://registry.npmjs.org/{name}/-/{name}-{version}.tgz")
    listed = re.search(r"FILES = \[(.*?)\];", (WEB / "vendor.mjs").read_text(), re.S).group(1)
    assert sorted(sources["files"]) == sorted(re.findall(r"'([^']+)'", listed))
    for folder in (VENDOR, NPM_DIST):
        for fname, entry in sources["files"].items():
            if (folder / fname).is_file() and (folder != NPM_DIST or ort_web_args()):
                assert hashlib.sha256((folder / fname).read_bytes()).hexdigest() == entry["sha256"], folder / fname
    if (ROOT / ".git").exists() and shutil.which("git"):
        tracked = subprocess.run(["git", "ls-files", "web/vendor"], cwd=ROOT, capture_output=True, text=True, check=True)
        assert tracked.stdout.split() == ["web/vendor/onnxruntime-web/SOURCES.json"]
        ignored = subprocess.run(["git", "check-ignore", *(f"web/vendor/onnxruntime-web/{f}" for f in sources["files"])],
                                 cwd=ROOT, capture_output=True, text=True)
        assert len(ignored.stdout.split()) == len(sources["files"]), ignored.stdout


# -- onnxruntime-web's files: vendor folder, user cache, the one-time fetch (a fake npm registry) ------
class FakeRegistry:
    """An npm registry on 127.0.0.1 serving one tarball (bytes swappable), counting requests."""

    def __init__(self, tarball: bytes):
        import http.server
        import threading

        self.tarball, self.requests = tarball, []
        registry = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                registry.requests.append(self.path)
                if self.path.endswith(".tgz"):
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(registry.tarball)))
                    self.end_headers()
                    self.wfile.write(registry.tarball)
                else:
                    self.send_error(404)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _fake_package(version: str = "9.9.9") -> tuple[bytes, dict[str, bytes]]:
    """An npm-style tarball (package/...) holding stand-ins for the six files and others beside them."""
    import io
    import tarfile

    rng = np.random.default_rng(1)
    files = {"ort.wasm.min.mjs": b"export const ort = 1;\n", "ort-wasm-simd-threaded.wasm": b"\0asm" + rng.bytes(3000),
             "ort-wasm-simd-threaded.mjs": b"// loader\n", "ort.webgpu.min.mjs": b"export const gpu = 1;\n",
             "ort-wasm-simd-threaded.asyncify.mjs": b"// asyncify loader\n",
             "ort-wasm-simd-threaded.asyncify.wasm": b"\0asm" + rng.bytes(5000)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in [("package/package.json", json.dumps({"version": version}).encode()),
                           *((f"package/dist/{n}", d) for n, d in files.items()),
                           ("package/dist/ort.all.min.mjs", b"// not needed\n")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), files


def _integrity(data: bytes) -> str:
    import base64

    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def _write_sources(folder: Path, files: dict[str, bytes], resolved: str, integrity: str, version="9.9.9") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "SOURCES.json").write_text(json.dumps({
        "package": "onnxruntime-web", "version": version, "resolved": resolved, "integrity": integrity,
        "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)} for n, d in files.items()}}))
    return folder / "SOURCES.json"


@pytest.fixture
def registry():
    tarball, files = _fake_package()
    reg = FakeRegistry(tarball)
    yield reg, tarball, files
    reg.close()


def test_fetch_refuses_a_tarball_whose_sha512_differs(tmp_path, registry):
    from nst_ort.commands import ort_web
    from nst_ort.base.errors import ArtifactError

    reg, tarball, files = registry
    url = reg.url + "onnxruntime-web/-/onnxruntime-web-9.9.9.tgz"
    sources = ort_web.Sources.read(_write_sources(tmp_path / "app", files, url, _integrity(tarball + b"x")))
    cache = tmp_path / "cache" / "nst-ort" / "onnxruntime-web-9.9.9"
    with pytest.raises(ArtifactError, match=r"onnxruntime-web-9\.9\.9\.tgz from http://127\.0\.0\.1:\d+/.*: sha512 "
                       r"mismatch .*refused, nothing written"):
        ort_web.load(sources, None, cache)
    assert reg.requests == ["/onnxruntime-web/-/onnxruntime-web-9.9.9.tgz"]
    assert list(cache.iterdir()) == [] and [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temporary files


def test_fetch_fills_the_cache_once_and_refetches_a_tampered_file(tmp_path, registry):
    from nst_ort.commands import ort_web

    reg, tarball, files = registry
    url = reg.url + "onnxruntime-web/-/onnxruntime-web-9.9.9.tgz"
    sources = ort_web.Sources.read(_write_sources(tmp_path / "vendor", files, url, _integrity(tarball)))
    cache = tmp_path / "cache" / "nst-ort" / "onnxruntime-web-9.9.9"
    log = []
    rt = ort_web.load(sources, tmp_path / "vendor", cache, log=log.append)
    assert rt.data == files and set(rt.origin.values()) == {cache} and len(reg.requests) == 1
    assert log == [f"fetching onnxruntime-web 9.9.9 (the page's runtime: 6 files, 8 kB) once from {url} into {cache}"]
    assert sorted(p.name for p in cache.iterdir()) == sorted(files)  # only the six, no temporary files
    assert all((cache / n).read_bytes() == d for n, d in files.items())
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]

    # verified in the cache: no second request
    assert ort_web.load(sources, tmp_path / "vendor", cache).data == files and len(reg.requests) == 1

    # a tampered and a truncated cache entry: fetched again, never served
    wasm = cache / "ort-wasm-simd-threaded.wasm"
    data = bytearray(wasm.read_bytes())
    data[100] ^= 1
    wasm.write_bytes(bytes(data))
    (cache / "ort.wasm.min.mjs").write_bytes(files["ort.wasm.min.mjs"][:5])
    log.clear()
    rt = ort_web.load(sources, tmp_path / "vendor", cache, log=log.append)
    assert rt.data == files and len(reg.requests) == 2
    assert wasm.read_bytes() == files["ort-wasm-simd-threaded.wasm"]
    assert set(log[:2]) == {f"warning: {wasm}: sha256 mismatch; not used",
                            f"warning: {cache / 'ort.wasm.min.mjs'}: 5 bytes, SOURCES.json says 22; not used"}
    assert log[2].startswith("fetching onnxruntime-web 9.9.9 (the page's runtime: 2 files, 3 kB) once")

    # a populated vendor folder comes first: what is there and verified is taken from it
    (tmp_path / "vendor" / "ort.webgpu.min.mjs").write_bytes(files["ort.webgpu.min.mjs"])
    rt = ort_web.load(sources, tmp_path / "vendor", cache)
    assert rt.origin["ort.webgpu.min.mjs"] == tmp_path / "vendor" and rt.origin["ort.wasm.min.mjs"] == cache

    # --ort-web DIR: only that folder, every file checked
    other = tmp_path / "other"
    shutil.copytree(cache, other)
    (other / "ort-wasm-simd-threaded.wasm").write_bytes(bytes(data))
    with pytest.raises(ort_web.ArtifactError, match=rf"^--ort-web {other}: {other}/ort-wasm-simd-threaded\.wasm: sha256 "
                       r"mismatch \(onnxruntime-web 9\.9\.9's dist/ files, as SOURCES\.json lists them\)$"):
        ort_web.load(sources, None, cache, explicit=other)


def test_nst_ort_web_fetches_serves_and_without_network_says_what_is_missing(tmp_path, registry, monkeypatch, capsys):
    """The command end to end on an app folder whose vendor/ holds only SOURCES.json (as a clean clone
    or a wheel): the runtime comes from the (fake) registry once, the page gets exactly those bytes;
    with no registry and an empty cache: one line naming what is missing and both ways to provide it,
    exit 4."""
    import threading

    from nst_ort.commands import web

    reg, tarball, files = registry
    app = tmp_path / "app"
    shutil.copytree(WEB, app, ignore=shutil.ignore_patterns("vendor"))
    resolved = "https://registry.npmjs.org/onnxruntime-web/-/onnxruntime-web-9.9.9.tgz"
    _write_sources(app / "vendor" / "onnxruntime-web", files, resolved, _integrity(tarball))
    monkeypatch.setattr(web, "app_dir", lambda: app)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("npm_config_registry", reg.url)  # npm's own setting: a mirror of registry.npmjs.org

    server = web.make_server(MODEL, port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        url = web.url_of(server)
        for name, data in files.items():
            status, headers, body = _get(url + "vendor/onnxruntime-web/" + name)
            assert status == 200 and body == data, name
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    finally:
        server.shutdown()
        server.server_close()
    assert reg.requests == ["/onnxruntime-web/-/onnxruntime-web-9.9.9.tgz"]
    assert (tmp_path / "cache" / "nst-ort" / "onnxruntime-web-9.9.9" / "ort.wasm.min.mjs").read_bytes() == files["ort.wasm.min.mjs"]

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("npm_config_registry", f"http://127.0.0.1:{s.getsockname()[1]}/")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    capsys.readouterr()
    assert web.main(["--port", "0"]) == 4
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and len(lines) == 2 and lines[0].startswith("nst-ort web: fetching onnxruntime-web 9.9.9")
    assert re.fullmatch(
        r"nst-ort web: error: onnxruntime-web 9\.9\.9 \(all 6 files\) is in neither \S+/app/vendor/onnxruntime-web "
        r"nor \S+/empty-cache/nst-ort/onnxruntime-web-9\.9\.9, and fetching http://127\.0\.0\.1:\d+/onnxruntime-web/-/"
        r"onnxruntime-web-9\.9\.9\.tgz failed \(.*\): in a checkout run `npm ci && npm run vendor`, or pass --ort-web "
        r"DIR \(a folder with the files, e\.g\. node_modules/onnxruntime-web/dist\)", lines[1]), lines[1]


def test_ort_web_dir_missing_files_exit_4(tmp_path):
    (tmp_path / "ort.wasm.min.mjs").write_text("not it")
    r = subprocess.run([sys.executable, "-m", "nst_ort", "web", "--port", "0", "--ort-web", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 4 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"nst-ort web: error: --ort-web {tmp_path}: {tmp_path / 'ort.wasm.min.mjs'}: 6 bytes, "
                               "SOURCES.json says 50126; ort-wasm-simd-threaded.mjs missing;"), r.stderr


@pytest.mark.slow
def test_fetch_from_the_real_registry(tmp_path):
    """The pinned URL and integrity against registry.npmjs.org itself (33 MB; needs the network)."""
    from nst_ort.commands import ort_web

    sources = ort_web.Sources.read(VENDOR / "SOURCES.json")
    try:
        rt = ort_web.load(sources, None, tmp_path / "cache")
    except ort_web.ArtifactError as e:
        if "fetching" in str(e) and "failed" in str(e):
            pytest.skip(f"no network: {e}")
        raise
    assert sorted(rt.data) == sorted(sources.files) and set(rt.origin.values()) == {tmp_path / "cache"}


# -- image code (node, no browser) -------------------------------------------------------------------
@needs_node
def test_resize_and_fit_size_match_the_runtime(tmp_path):
    """web/js/images.js resizes as nst_ort.media.images.resize (Pillow's float Lanczos) bit for bit, and sizes
    as fit_size (Python's round: halves to even); so PNG inputs give both sides the same pixels."""
    src = load_image(EXAMPLES / "starry_night.jpg")[:77, :101]
    (tmp_path / "src.bin").write_bytes(np.ascontiguousarray(src, np.float32).tobytes())
    sizes = [(50, 33), (101, 40), (60, 77), (203, 150), (37, 77), (101, 77), (13, 200)]
    rng = np.random.default_rng(0)
    fits = [(int(w), int(h), int(L)) for w, h, L in rng.integers(1, 700, (300, 3))] + [(5, 3, 5), (3, 5, 7), (640, 427, 256), (1, 9, 3)]
    script = tmp_path / "resize.mjs"
    script.write_text(f"""
import {{ resize, fitSize }} from {json.dumps((WEB / 'js' / 'images.js').as_uri())};
import {{ readFileSync, writeFileSync }} from 'node:fs';
const buf = readFileSync({json.dumps(str(tmp_path / 'src.bin'))});
const data = new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4);
const out = {json.dumps([list(s) for s in sizes])}.map(([w, h]) => Array.from(resize({{ width: 101, height: 77, data }}, w, h).data));
const fits = {json.dumps(fits)}.map(([w, h, l]) => fitSize(w, h, l));
writeFileSync({json.dumps(str(tmp_path / 'out.json'))}, JSON.stringify({{ out, fits }}));
""")
    subprocess.run([NODE, str(script)], check=True, timeout=120)
    got = json.loads((tmp_path / "out.json").read_text())
    for (w, h), arr in zip(sizes, got["out"]):
        np.testing.assert_array_equal(np.array(arr, np.float32).reshape(h, w, 3), resize(src, (w, h)), err_msg=f"{w}x{h}")
    assert [tuple(f) for f in got["fits"]] == [fit_size(w, h, L) for w, h, L in fits]


@needs_node
def test_memory_refusal_adds_up_and_its_advice_fits(tmp_path):
    """web/js/memory.js's refusal: the parts it lists add up to the need it states, the need is over
    what a run may use (90% of the heap), and each size it says fits is accepted by the same check
    while 8 px more is not (at the history it names)."""
    manifest = json.loads((MODEL / "manifest.json").read_text())
    script = tmp_path / "memory.mjs"
    script.write_text(f"""
import {{ check }} from {json.dumps((WEB / 'js' / 'memory.js').as_uri())};
const info = {{ layers: {json.dumps(manifest['layers'])}, gradient: {json.dumps(manifest.get('gradient', 'autograd'))},
  ep: 'wasm', heapLimit: 4 * 2 ** 30, minSize: 16 }};
const out = [];
for (const optimizer of ['lbfgs', 'adam']) for (const size of [700, 960, 1000, 1500, 3000]) {{
  const i = {{ ...info, optimizer, history: 100 }};
  const msg = check(i, size, 640, 427, [[512, 512]]);
  const fits = (history, s) => check({{ ...i, history }}, s, 640, 427, [[512, 512]]) === null;
  const best = msg && Number((msg.match(/fits is about (\\d+) px/) || [])[1]);
  const low = msg && msg.match(/history of 20 \\(now 100\\), (?:about )?(\\d+) px fits/);
  out.push({{ optimizer, size, msg, best: best ? [fits(100, best), fits(100, best + 8)] : null,
    low: low ? [Number(low[1]), fits(20, Number(low[1])), fits(20, Number(low[1]) + 8)] : null }});
}}
console.log(JSON.stringify(out));
""")
    r = subprocess.run([NODE, str(script)], capture_output=True, text=True, timeout=60, check=True)
    cases = json.loads(r.stdout)
    accepted = {(c["optimizer"], c["size"]) for c in cases if c["msg"] is None}
    assert accepted == {("lbfgs", 700), ("adam", 700), ("adam", 960), ("adam", 1000)}, accepted
    gib = {"GiB": 1.0, "MiB": 1 / 1024}
    for c in cases:
        if c["msg"] is None:
            continue
        need = float(re.search(r"needs about ([\d.]+) GiB", c["msg"]).group(1))
        assert need > 0.9 * 4 and "more than the 3.60 GiB a run may use" in c["msg"], c
        parts = re.findall(r"([\d.]+) (GiB|MiB) for ", c["msg"])
        assert len(parts) == 3 and abs(sum(float(v) * gib[u] for v, u in parts) - need) < 0.02, c["msg"]
        assert c["best"] == [True, False], c  # the size it names fits, 8 px more does not
        if c["optimizer"] == "lbfgs":
            low, fits_low, fits_more = c["low"]
            assert fits_low and (low == c["size"] or not fits_more), c
        else:
            assert c["low"] is None and "history" not in c["msg"], c


@needs_node
def test_tiling_layout_tv_and_the_memory_plan(tmp_path):
    """web/js/tiling.js lays tiles out as nst_ort.engine.tiling.Layout and computes TV and its gradient as
    nst_ort.engine.tiling.tv_term; web/js/memory.js plans a 2048 px run in tiles within the wasm heap (the
    history lowered, said in the note), leaves a run that fits whole untiled, and without the tile
    graphs still refuses, and never tiles on WebGPU."""
    from nst_ort.engine.tiling import Layout, tv_term

    manifest = json.loads((MODEL / "manifest.json").read_text())
    if not isinstance(manifest.get("tiling"), dict):
        pytest.skip("models/vgg16 has no tiled graphs (python -m nst_ort_export.tiled models/vgg16)")
    rng = np.random.default_rng(3)
    x = rng.random((1, 3, 23, 31), dtype=np.float32)
    (tmp_path / "x.bin").write_bytes(x.tobytes())
    shapes = [(100, 66, 32), (66, 100, 48), (1536, 2048, 256), (17, 50, 16), (64, 64, 64)]
    script = tmp_path / "tiling.mjs"
    script.write_text(f"""
import {{ layout, tvTerm }} from {json.dumps((WEB / 'js' / 'tiling.js').as_uri())};
import {{ plan }} from {json.dumps((WEB / 'js' / 'memory.js').as_uri())};
import {{ readFileSync }} from 'node:fs';
const buf = readFileSync({json.dumps(str(tmp_path / 'x.bin'))});
const x = new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4);
const tv = tvTerm(x, 23, 31, 1e5);
const info = {{ layers: {json.dumps(manifest['layers'])}, gradient: 'manual', optimizer: 'lbfgs', history: 100, ep: 'wasm',
  heapLimit: 4 * 2 ** 30, minSize: 16, tiling: {{ align: 16, halo: 64 }} }};
console.log(JSON.stringify({{
  layouts: {json.dumps(shapes)}.map(([h, w, t]) => layout(h, w, t, 16, 64).tiles),
  tv: tv.tv, grad: Array.from(tv.grad),
  p2048: plan(info, 2048, 1024, 768), p512: plan(info, 512, 1024, 768),
  adam: plan({{ ...info, optimizer: 'adam' }}, 2048, 1024, 768),
  none: plan({{ ...info, tiling: null }}, 2048, 1024, 768), gpu: plan({{ ...info, ep: 'webgpu' }}, 2048, 1024, 768),
}}));
""")
    r = subprocess.run([NODE, str(script)], capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(r.stdout)
    for (h, w, t), tiles in zip(shapes, got["layouts"]):
        want = [{"own": list(tl.own), "crop": list(tl.crop)} for tl in Layout.of(h, w, t, 16, 64).tiles]
        assert tiles == want, (h, w, t)
    tv, grad = tv_term(x, 1e5)
    assert abs(got["tv"] - tv) <= 1e-12 * tv
    np.testing.assert_array_equal(np.array(got["grad"], np.float32), grad.ravel())  # numpy's float32 order, bit for bit

    p = got["p2048"]
    assert p["refusal"] is None and p["tile"] % 16 == 0 and p["tile"] >= 128 and 1 <= p["history"] < 100, p
    assert re.fullmatch(rf"2048x1536 does not fit the wasm heap whole: it runs in \d+x\d+ tiles of {p['tile']} px .*, [\d.]+ GiB "
                        rf"of the heap; the L-BFGS history is lowered from 100 to {p['history']} .*", p["note"]), p["note"]
    assert float(re.search(r"([\d.]+) GiB of the heap", p["note"]).group(1)) <= 3.60
    assert got["p512"] == {"refusal": None, "tile": 0, "history": 100, "note": ""}
    assert got["adam"]["tile"] > p["tile"] and got["adam"]["history"] == 100  # no history to lower: larger tiles
    assert got["none"]["refusal"] and got["none"]["tile"] == 0
    assert got["gpu"]["tile"] == 0  # WebGPU keeps activations in GPU memory: never tiled (the page's tiled loop is wasm only)


@needs_node
def test_memory_plan_counts_the_page_arrays_against_the_tab(tmp_path):
    """web/js/memory.js counts the page's own arrays outside the wasm heap (L-BFGS's history among
    them: 2 x (history + 1) copies of the image) with the heap against the tab's budget (75% of
    navigator.deviceMemory, 8 GB where the browser does not say): where they pass it the history is
    lowered to the largest that fits (said in the note, with the figures), a run that fits at no
    history is refused naming the budget and parts that add up, and runs well inside it are as before."""
    manifest = json.loads((MODEL / "manifest.json").read_text())
    if not isinstance(manifest.get("tiling"), dict):
        pytest.skip("models/vgg16 has no tiled graphs (python -m nst_ort_export.tiled models/vgg16)")
    script = tmp_path / "tab.mjs"
    script.write_text(f"""
import {{ plan, heapParts, tiledHeapParts, jsParts, tabBudget }} from {json.dumps((WEB / 'js' / 'memory.js').as_uri())};
const info = {{ layers: {json.dumps(manifest['layers'])}, gradient: 'manual', optimizer: 'lbfgs', history: 100, ep: 'wasm',
  heapLimit: 4 * 2 ** 30, minSize: 16, tiling: {{ align: 16, halo: 64 }}, contentLayers: {json.dumps(manifest['content_layers'])},
  contentLayerWeights: {json.dumps(manifest['defaults']['content_layer_weights'])} }};
const cases = {{ p2048: [info, 2048, 1024, 768], small: [{{ ...info, deviceMemory: 4 }}, 2048, 1024, 768],
  untiled: [{{ ...info, deviceMemory: 4, tiling: null }}, 900, 640, 427], tabTiled: [{{ ...info, deviceMemory: 2 }}, 900, 640, 427], tiny: [{{ ...info, deviceMemory: 0.5 }}, 512, 640, 427],
  adam: [{{ ...info, optimizer: 'adam' }}, 2048, 1024, 768], p512: [info, 512, 1024, 768] }};
const out = {{}};
for (const [name, [inf, size, cw, ch]] of Object.entries(cases)) {{
  const p = plan(inf, size, cw, ch, [[cw, ch]]);
  const w = size, h = Math.round(size * ch / cw);
  const inputs = [[cw, ch], [cw, ch]];
  const heap = (tile, hst) => (tile ? tiledHeapParts(inf, w, h, tile, hst) : heapParts({{ ...inf, history: hst }}, w, h, [[w, h]])).total;
  const tab = (tile, hst) => heap(tile, hst) + jsParts(inf, w, h, tile, hst, inputs).total;
  out[name] = {{ ...p, budget: tabBudget(inf).bytes, tab: p.refusal ? null : tab(p.tile, p.history),
    tabMore: p.refusal ? null : tab(p.tile, p.history + 1) }};
}}
console.log(JSON.stringify(out));
""")
    r = subprocess.run([NODE, str(script)], capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(r.stdout)
    gib = 2 ** 30
    p = got["p2048"]  # the heap alone fits history 33 in tiles; with the page's arrays the tab does not
    assert p["budget"] == 6 * gib and p["refusal"] is None and p["tile"] >= 128 and 1 <= p["history"] < 33, p
    assert p["tab"] <= p["budget"] < p["tabMore"], p  # the largest history that fits
    assert re.fullmatch(rf"2048x1536 does not fit the wasm heap whole: .*; the L-BFGS history is lowered from 100 to {p['history']} "
                        rf"\(the heap alone fits 33; the page keeps its own {2 * (p['history'] + 1)} copies of the image for it besides "
                        r"the heap's, [\d.]+ GiB with the loop's, and at 33 the heap and the page's arrays would need [\d.]+ GiB, more than "
                        r"the 6\.00 GiB this page allows a tab \(75% of the 8 GB of memory assumed where the browser does not say\)\)", p["note"]), p["note"]
    s = got["small"]  # a 4 GB machine as the browser reports it: less history
    assert s["budget"] == 3 * gib and s["refusal"] is None and s["history"] < p["history"] and s["tab"] <= s["budget"], s
    assert "75% of the 4 GB of memory the browser reports" in s["note"]
    u = got["untiled"]  # the heap fits 900 px whole at history 100, a 4 GB machine's tab does not (no tile graphs)
    assert u["refusal"] is None and u["tile"] == 0 and u["history"] < 100 and u["tab"] <= u["budget"] < u["tabMore"], u
    assert u["note"].startswith(f"the L-BFGS history is lowered from 100 to {u['history']} (the page keeps its own"), u["note"]
    v = got["tabTiled"]  # with the tile graphs a 2 GB machine's tab takes tiles (less heap) and a lower history
    assert v["refusal"] is None and v["tile"] and v["tab"] <= v["budget"] < v["tabMore"], v
    assert v["note"].startswith("900x600 does not fit this tab's memory budget whole: it runs in"), v["note"]
    t = got["tiny"]["refusal"]  # nothing fits a 0.5 GB machine's budget: refused, the parts add up
    m = re.fullmatch(r"512x342 needs about ([\d.]+) (GiB|MiB) in this tab, even at an L-BFGS history of 1 in 128 px tiles: "
                     r"([\d.]+) (GiB|MiB) of WebAssembly memory and ([\d.]+) (GiB|MiB) of the page's own arrays \(16 copies of the image, .*\), "
                     r"more than the 384 MiB this page allows a tab \(75% of the 0\.5 GB of memory the browser reports\); "
                     r"not even the smallest size fits\.", t or "")
    assert m, t
    mib = [float(m.group(i)) * (1024 if m.group(i + 1) == "GiB" else 1) for i in (1, 3, 5)]
    assert abs(mib[1] + mib[2] - mib[0]) < 6 and mib[0] > 384, t  # 1.08 GiB: rounded to 10 MiB
    assert got["adam"]["refusal"] is None and got["adam"]["history"] == 100 and got["adam"]["tab"] <= 6 * gib
    assert (got["p512"]["refusal"], got["p512"]["tile"], got["p512"]["history"], got["p512"]["note"]) == (None, 0, 100, "")


# -- in the browser ------------------------------------------------------------------------------------
def _python_records(content: Path, styles: list, size: int, iterations: int, optimizer: str = "lbfgs",
                    color: str = "none", loop: str = "device", tv_weight: float | None = None) -> list:
    """The Python runtime (public API), CPU provider, on the same files the page loads."""
    from nst_ort import Config, StyleInput, Stylizer
    from nst_ort.engine.config import LossConfig, OptimConfig

    cfg = Config(content=content, styles=[StyleInput(p, w) for p, w in styles], size=size, model=MODEL, device="cpu",
                 threads=2, loop=loop, color=color, loss=LossConfig(tv_weight=tv_weight),
                 optim=OptimConfig(name=optimizer, iterations=iterations))
    return list(Stylizer(cfg).run())


@needs_browser
def test_parity_with_the_python_runtime(tmp_path, puppeteer):
    """(1) The page and the Python runtime (CPU provider, device loop) on the same pixels, weights and
    settings: the first 10 L-BFGS iterations' losses agree within 1e-3 relative. Then, in the same
    page, the rest of what the page computes itself: luminance-only transfer and histogram matching
    (color.js; the first evaluation), two blended style images, and the first 10 Adam iterations.

    Same pixels: PNGs (decoded exactly by both) that both sides Lanczos-resize to 64x42 with the same
    arithmetic; the page reports the sha256 of its starting image's float32 bytes, which must equal
    Python's. 64 px: L-BFGS's first curvature pair comes from a step of L1 norm 1 (torch's first step),
    so float32 rounding enters it, and how much later iterations amplify it depends on the settings: at
    128 px with the default weights the runtime's own host and device loops differ by 1-2% by
    iteration 10, the page by 4-10% (its float32 kernels differ from the native ones by ~2e-5 per
    evaluation; benchmarks/RESULTS.md, "In the browser"). This pair at 64 px is the best conditioned of
    those measured there: the runtime's loops agree to 9e-5 and the page to 1.3e-4. Adam has no
    curvature pairs: its trajectory agrees to ~5e-5 (measured), as do the color modes and the blend."""
    from concurrent.futures import ThreadPoolExecutor

    content = save_png(EXAMPLES / "chelsea_cat.jpg", 80, tmp_path / "content.png")
    wave = save_png(EXAMPLES / "great_wave.jpg", 76, tmp_path / "wave.png")
    starry = save_png(EXAMPLES / "starry_night.jpg", 90, tmp_path / "starry.png")
    one = [(wave, 1.0)]
    cases = {  # name: page settings, Python reference
        "lbfgs": ({"optimizer": "lbfgs", "history": 100, "iterations": 10}, dict(styles=one, iterations=10)),
        "luminance": ({"color": "luminance", "iterations": 1}, dict(styles=one, iterations=1, color="luminance")),
        "histogram": ({"color": "histogram", "iterations": 1}, dict(styles=one, iterations=1, color="histogram")),
        "adam": ({"color": "none", "optimizer": "adam", "iterations": 10}, dict(styles=one, iterations=10, optimizer="adam")),
        "blend": ({"optimizer": "lbfgs", "iterations": 1}, dict(styles=[(wave, 1.0), (starry, 1.0)], iterations=1)),
    }
    steps = [{"upload": "#content-file", "files": [str(content)]}, {"upload": "#style-files", "files": [str(wave)]}]
    for name, (settings, _) in cases.items():
        if name == "blend":
            steps.append({"upload": "#style-files", "files": [str(starry)]})
        # TV 1e5 on both sides (the default before issue 21's 3e6), where this parity was measured:
        # at 3e6 the page's 10-iteration L-BFGS trajectory came within 3.2e-3 (iteration 9; the
        # runtime's own loops 3.9e-5), rounding that L-BFGS amplifies more on those settings.
        steps += [{"set": {"size": 64, "tv-weight": 100000, **settings}}, {"click": "#start"},
                  {"until": "['done', 'error'].includes(a.state)"}, {"snapshot": name}]
    # The references are computed while the browser runs (session creation is mostly one thread).
    with ThreadPoolExecutor(1) as pool:
        refs = pool.submit(lambda: {name: _python_records(content, size=64, tv_weight=1e5, **kw)
                                    for name, (_, kw) in cases.items()})
        with serve() as url:
            out = drive({"url": url + "?backend=wasm", "steps": steps})
        refs = refs.result()
    snaps = out["snapshots"]
    for name, snap in snaps.items():
        assert snap["state"] == "done", (name, snap["message"])
    assert out["pageErrors"] == [] and out["consoleErrors"] == []
    assert out["backend"]["ep"] == "wasm" and out["model"]["trainGraph"] == "train_cpu.onnx"

    lb, ref = snaps["lbfgs"], refs["lbfgs"]
    img = load_image(content)
    size = fit_size(img.shape[1], img.shape[0], 64)
    x0 = np.ascontiguousarray(resize(img, size).transpose(2, 0, 1), np.float32)
    assert lb["initDigest"] == hashlib.sha256(x0.tobytes()).hexdigest(), "the page did not start from the same pixels"
    web = lb["records"]
    assert [r["iteration"] for r in web] == list(range(1, 11)) and (web[0]["width"], web[0]["height"]) == size
    # The first evaluation, term by term (the same image: the graphs, targets and weights agree).
    for i, name in enumerate(("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")):
        assert rel(web[0]["style_layers"][i], ref[0].style_layers[i]) < 1e-3, name
    # The trajectory: total loss, and each weighted term to 1e-3 of the total.
    diffs = [rel(w["loss"], r.loss) for w, r in zip(web, ref)]
    terms = [max(abs(w[k] - getattr(r, k)) / r.loss for k in ("content", "style", "tv")) for w, r in zip(web, ref)]
    print(f"\nparity: browser vs Python device loop, max relative difference of the loss over 10 L-BFGS iterations "
          f"{max(diffs):.2e} (per iteration {' '.join(f'{d:.0e}' for d in diffs)}); weighted terms {max(terms):.2e}")
    if not (max(diffs) < 1e-3 and max(terms) < 1e-3):
        host = _python_records(content, one, 64, 10, loop="host")
        spread = max(rel(h.loss, r.loss) for h, r in zip(host, ref))
        pytest.fail(f"browser vs Python: {max(diffs):.2e} (per iteration {diffs}); the runtime's own host vs device "
                    f"loops differ by {spread:.2e} on these settings (if that is large too, the settings amplify "
                    "float32 rounding: see benchmarks/web_parity.py)")
    for name in ("luminance", "histogram", "adam", "blend"):
        web, ref = snaps[name]["records"], refs[name]
        assert len(web) == len(ref), name
        worst = max(rel(w["loss"], r.loss) for w, r in zip(web, ref))
        print(f"{name}: browser vs Python, max relative difference of the loss {worst:.1e} over {len(web)} iteration(s)")
        assert worst < 1e-3, (name, [w["loss"] for w in web], [r.loss for r in ref])


@needs_browser
def test_tiled_page_matches_the_python_tiled_loop(tmp_path, puppeteer):
    """(1b) The page's tiled loop (web/js/tiling.js: 32 px tiles with their 64 px halos, the Gram parts
    summed and dL/dG made in float64 in JS, the crops' gradients added into the whole) against the
    Python runtime's tiled host loop (nst_ort/engine/tiling.py) on the same pixels: 3 L-BFGS iterations at
    100x66 (3x4 tiles, crops clipped at every border), each loss within 1e-4 relative (measured
    3.8e-6; 3.0e-7 with Python's side on the keep graphs, the page on the plain ones), each style
    layer's term and TV within 1e-4 at the first evaluation."""
    from concurrent.futures import ThreadPoolExecutor

    from nst_ort import Config, StyleInput, Stylizer
    from nst_ort.engine.config import OptimConfig

    if not isinstance(json.loads((MODEL / "manifest.json").read_text()).get("tiling"), dict):
        pytest.skip("models/vgg16 has no tiled graphs (python -m nst_ort_export.tiled models/vgg16)")
    content = save_png(EXAMPLES / "chelsea_cat.jpg", 110, tmp_path / "content.png")
    wave = save_png(EXAMPLES / "great_wave.jpg", 100, tmp_path / "wave.png")
    cfg = Config(content=content, styles=[StyleInput(wave, 1.0)], size=100, model=MODEL, device="cpu", threads=2,
                 loop="host", tile=32, optim=OptimConfig(name="lbfgs", iterations=3))
    st = Stylizer(cfg)
    with ThreadPoolExecutor(1) as pool:
        refs = pool.submit(lambda: list(st.run()))
        with serve() as url:
            out = drive({"url": url + "?backend=wasm&tile=32", "steps": [
                {"upload": "#content-file", "files": [str(content)]}, {"upload": "#style-files", "files": [str(wave)]},
                {"set": {"size": 100, "iterations": 3}}, {"click": "#start"}, {"until": "['done', 'error'].includes(a.state)"}]},
                timeout=900)
        ref = refs.result()
    assert out["state"] == "done", out["message"]
    assert out["pageErrors"] == [] and out["consoleErrors"] == []
    web = out["records"]
    assert [r["iteration"] for r in web] == [1, 2, 3] and all(r["tile"] == 32 for r in web)
    assert (web[0]["width"], web[0]["height"]) == (100, 66)
    img = load_image(content)
    x0 = np.ascontiguousarray(resize(img, fit_size(img.shape[1], img.shape[0], 100)).transpose(2, 0, 1), np.float32)
    assert out["initDigest"] == hashlib.sha256(x0.tobytes()).hexdigest()
    for i in range(5):
        assert rel(web[0]["style_layers"][i], ref[0].style_layers[i]) < 1e-4, i
    assert rel(web[0]["tv"], ref[0].tv) < 1e-4
    diffs = [rel(w["loss"], r.loss) for w, r in zip(web, ref)]
    print(f"\ntiled page vs Python tiled host loop (32 px tiles, 100x66): loss per iteration {' '.join(f'{d:.1e}' for d in diffs)}")
    assert max(diffs) < 1e-4, diffs
    # Python's side keeps pass 1's arrays (tile_grams_keep + tile_train_kept, what a run uses where the
    # folder has them); the page runs tile_grams + tile_train: the same function, two families
    tiling = st.runtime()["tiling"]
    if "grams_keep" in json.loads((MODEL / "manifest.json").read_text())["tiling"]:
        assert st.tiled_graphs.keeps and tiling["scales"][0]["kept"] == 12, tiling


@needs_browser
def test_page_run_128px_50_iterations_stop_resume_download(tmp_path, puppeteer):
    """(2) A 128 px, 50-iteration run started from the page's own controls (JPEGs, default weights,
    L-BFGS), stopped at iteration 20 (the status line then shows no time left) and resumed (the page
    names the setting changed in between, which Resume does not apply), finishes; its style loss falls at least 10x; the
    image is drawn as it goes and downloads as a 128x96 PNG."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with serve() as url:
        out = drive({"url": url, "steps": [
            {"upload": "#content-file", "files": [str(EXAMPLES / "tuebingen_neckarfront.jpg")]},
            {"upload": "#style-files", "files": [str(EXAMPLES / "starry_night.jpg")]},
            {"set": {"size": 128, "iterations": 50}},
            {"click": "#start"},
            {"until": "a.records.length >= 20 || ['done', 'error'].includes(a.state)"},
            {"click": "#stop"},
            {"until": "['stopped', 'done', 'error'].includes(a.state)"},
            {"snapshot": "stopped"},
            {"set": {"tv-weight": 1}},
            {"click": "#resume"},
            {"snapshot": "resumed"},
            {"until": "['done', 'error'].includes(a.state)"},
            {"download": str(downloads)}]}, timeout=900)
    stopped = out["snapshots"]["stopped"]
    assert stopped["state"] == "stopped" and 20 <= len(stopped["records"]) < 50 and stopped["hasImage"], stopped["message"]
    # a stopped run has no time left to show: the line says where it stopped
    n = stopped["records"][-1]["iteration"]
    assert stopped["progress"].startswith(f"stopped at iteration {n} / 50 · 128x96 · ") and "left" not in stopped["progress"], stopped["progress"]
    assert out["progress"].startswith("done: iteration 50 / 50") and "left" not in out["progress"], out["progress"]
    # Resume goes on with the run's settings; the page says which ones the form changed since
    assert out["snapshots"]["resumed"]["message"] == ("resumed with the settings the run started with; changed since, and "
                                                      "used at the next Start: TV weight")
    assert out["state"] == "done", out["message"]
    recs = out["records"]
    assert [r["iteration"] for r in recs] == list(range(1, 51)) and (recs[0]["width"], recs[0]["height"]) == (128, 96)
    assert all(np.isfinite(r["loss"]) for r in recs)
    print(f"\n128 px, 50 iterations in the page ({out['backend']['label']}): style {recs[0]['style']:.3g} -> "
          f"{recs[-1]['style']:.3g} ({recs[0]['style'] / recs[-1]['style']:.1f}x), "
          f"{np.mean([r['seconds'] for r in recs]):.2f} s per iteration")
    assert recs[-1]["style"] * 10 <= recs[0]["style"]
    assert out["download"] == "completed"
    (png,) = downloads.iterdir()
    result = load_image(png)
    assert result.shape == (96, 128, 3) and result.std() > 0.05


@needs_browser
def test_bad_input_gets_a_message_in_the_page(tmp_path, puppeteer):
    """(3) Not an image, an empty file, a size that cannot fit in the browser's memory (a model without
    the tile graphs; one whose need
    is below the heap's maximum: the message says what else takes the heap and what fits), and a model
    folder with a tampered file (served by `nst-ort web --model`, and picked from disk in the page):
    each gets a clear message in the page naming the file, no error in the console, no uncaught
    exception; a rejected model leaves no badge or status line saying it is still loading."""
    notes = tmp_path / "notes.jpg"
    notes.write_text("this is not a picture\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    tampered = tmp_path / "tampered"
    shutil.copytree(MODEL, tampered)
    data = bytearray((tampered / "weights.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tampered / "weights.bin").write_bytes(bytes(data))
    # A model without the tile graphs: there a size too large for the heap is refused (with them it is
    # tiled; test_tiling_layout_tv_and_the_memory_plan)
    untiled = tmp_path / "untiled"
    shutil.copytree(MODEL, untiled)
    manifest = json.loads((untiled / "manifest.json").read_text())
    manifest.pop("tiling", None)
    (untiled / "manifest.json").write_text(json.dumps(manifest))
    with serve(untiled) as url:
        out = drive({"url": url + "?backend=wasm", "steps": [
            {"upload": "#content-file", "files": [str(notes)]}, {"snapshot": "not an image"},
            {"upload": "#style-files", "files": [str(empty)]}, {"snapshot": "empty"},
            {"upload": "#content-file", "files": [str(EXAMPLES / "chelsea_cat.jpg")]},
            {"upload": "#style-files", "files": [str(EXAMPLES / "great_wave.jpg")]},
            {"set": {"size": 3000}}, {"click": "#start"}, {"until": "a.messageKind === 'error'"}, {"snapshot": "too big"},
            {"set": {"size": 1000}}, {"click": "#start"}, {"until": "a.message.includes('1000x')"}, {"snapshot": "below the maximum"},
            {"upload": "#model-folder", "files": [str(tampered)], "images": False},
            {"until": "a.state === 'model-error'"}, {"snapshot": "picked tampered"}]})
    s = out["snapshots"]
    assert s["not an image"]["messageKind"] == "error"
    assert re.fullmatch(r"notes\.jpg: not an image this browser can decode \(.*22 bytes\)", s["not an image"]["message"])
    assert s["empty"]["message"] == "empty.png: empty file"
    big = s["too big"]
    assert big["state"] == "ready" and not big["records"]  # refused before anything ran
    assert re.fullmatch(r"refused before starting: 3000x1996 needs about [\d.]+ GiB of WebAssembly memory, more than the "
                        r"3\.60 GiB a run may use; the largest size that fits is about \d+ px; with an L-BFGS history of 20 "
                        r"\(now 100\), about \d+ px fits\.\nWhat takes it: .*", big["message"]), big["message"]
    fits = int(re.search(r"fits is about (\d+) px", big["message"]).group(1))
    assert 600 <= fits <= 1200
    # Below the heap's 4 GiB and still refused: the message says why, with figures that add up.
    below = s["below the maximum"]["message"]
    need = float(re.search(r"1000x665 needs about ([\d.]+) GiB", below).group(1))
    assert 3.6 < need < 4.0 and "more than the 3.60 GiB a run may use" in below, below
    parts = re.search(r"What takes it: ([\d.]+) (MiB|GiB) for onnxruntime-web's wasm module, its sessions and the model's weights; "
                      r"([\d.]+) GiB for the training graph's activations; ([\d.]+) GiB for 208 copies of the image \(the L-BFGS "
                      r"history of 100 keeps 202\)\. A page's wasm heap holds at most 4\.00 GiB, and 10% of it \(410 MiB\) is kept "
                      r"free because the heap only grows and fragments\.$", below)
    assert parts, below
    fixed = float(parts.group(1)) / (1024 if parts.group(2) == "MiB" else 1)
    assert abs(fixed + float(parts.group(3)) + float(parts.group(4)) - need) < 0.02, below
    assert "with an L-BFGS history of 20 (now 100), 1000 px fits." in below
    size = (tampered / "weights.bin").stat().st_size  # same size: one byte flipped
    mismatch = (f"weights.bin: sha256 mismatch (file changed or truncated: {size} bytes, manifest says {size}); "
                "re-export or re-download the model")
    then = "\nNo model is loaded: pick another model folder (model folder…), or reload the page for the one `nst-ort web` serves."
    picked = s["picked tampered"]
    assert picked["message"] == "tampered/" + mismatch + then
    b = picked["backend"]  # the worker's backend, reported before the model was read
    assert b["label"].startswith("wasm (SIMD") and picked["badges"] == {
        "backend": f"{b['label']} · onnxruntime-web {b['version']}", "model": "model rejected"}, picked["badges"]
    assert picked["progress"] == "no model loaded"
    assert out["pageErrors"] == [] and out["consoleErrors"] == []

    with serve(tampered) as url:
        out = drive({"url": url})
    assert out["state"] == "model-error"
    assert out["message"] == "/model/" + mismatch + then
    # the backend opened before the model was refused: the badges say so, and nothing says "loading"
    assert out["badges"]["model"] == "model rejected" and out["badges"]["backend"].startswith("wasm (SIMD"), out["badges"]
    assert out["progress"] == "no model loaded"
    assert out["pageErrors"] == [] and out["consoleErrors"] == []


@needs_browser
def test_page_counts_its_own_arrays_against_the_tab(tmp_path, puppeteer):
    """?device-memory=1 stands for a browser reporting navigator.deviceMemory 1 (GB), a tab budget of
    768 MiB (web/js/memory.js tabBudget): at 256 px the wasm heap and the page's own arrays do not fit
    at any L-BFGS history, and the page refuses before anything runs, naming the budget; at 160 px the
    page lowers the history to what fits, says so, and runs with it."""
    content = save_png(EXAMPLES / "chelsea_cat.jpg", 80, tmp_path / "content.png")
    wave = save_png(EXAMPLES / "great_wave.jpg", 76, tmp_path / "wave.png")
    with serve() as url:
        out = drive({"url": url + "?backend=wasm&device-memory=1", "steps": [
            {"upload": "#content-file", "files": [str(content)]}, {"upload": "#style-files", "files": [str(wave)]},
            {"set": {"size": 256, "iterations": 1, "optimizer": "lbfgs", "history": 100}}, {"click": "#start"},
            {"until": "a.messageKind === 'error'"}, {"snapshot": "refused"},
            {"set": {"size": 160}}, {"click": "#start"}, {"until": "a.message.includes('L-BFGS history is lowered')"},
            {"snapshot": "lowered"}, {"until": "['done', 'error'].includes(a.state)"}, {"snapshot": "ran"}]})
    s = out["snapshots"]
    assert out["pageErrors"] == [] and out["consoleErrors"] == []
    refused = s["refused"]
    assert refused["state"] == "ready" and not refused["records"], refused
    assert re.fullmatch(r"refused before starting: 256x170 needs about \d+ MiB in this tab, even at an L-BFGS history of 1: "
                        r"\d+ MiB of WebAssembly memory and \d+ MiB of the page's own arrays \(.*\), more than the 768 MiB this "
                        r"page allows a tab \(75% of the 1 GB of memory the browser reports\); the largest size that fits is about "
                        r"\d+ px\.", refused["message"]), refused["message"]
    low = s["lowered"]
    assert low["messageKind"] == "info" and low["plan"]["tile"] == 0 and 1 <= low["plan"]["history"] < 100, low
    assert low["message"].startswith(f"the L-BFGS history is lowered from 100 to {low['plan']['history']} (the page keeps its own "
                                     f"{2 * (low['plan']['history'] + 1)} copies of the image"), low["message"]
    assert s["ran"]["state"] == "done" and [r["iteration"] for r in s["ran"]["records"]] == [1], s["ran"]["message"]


@needs_browser
def test_keyboard_opens_the_file_choosers_and_each_bad_file_of_several_is_named(tmp_path, puppeteer):
    """(4) With the keyboard alone (Tab, then Enter or Space) each file chooser opens: the model
    folder's, the content's and the styles'; a click on a drop zone's empty part opens its chooser too.
    Four style files chosen at once, two of them bad: the two good ones are added, and the message names
    each bad one with what is wrong (the good file after them does not clear it). A folder with no files
    of its own picked as the model: a message, the served model stays loaded."""
    notes = tmp_path / "notes.jpg"
    notes.write_text("this is not a picture\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    nested = tmp_path / "models"
    (nested / "vgg16").mkdir(parents=True)
    (nested / "vgg16" / "manifest.json").write_text("{}")
    wave, starry, cat = (str(EXAMPLES / n) for n in ("great_wave.jpg", "starry_night.jpg", "chelsea_cat.jpg"))
    with serve() as url:
        out = drive({"url": url + "?backend=wasm", "steps": [
            {"snapshot": "empty"},
            {"tabTo": "#content-choose"}, {"press": "Enter", "chooser": [cat]}, {"snapshot": "content"},
            {"tabTo": "#style-choose"}, {"press": "Space", "chooser": [wave, str(notes), str(empty), starry]},
            {"snapshot": "styles"},
            {"click": "#content-drop .drop-title", "chooser": [wave]}, {"snapshot": "clicked"},
            {"tabTo": "#model-choose"}, {"press": "Enter", "chooser": [str(nested)], "images": False},
            {"until": "a.message.startsWith('models/')"}, {"snapshot": "folder"}]})
    s = out["snapshots"]
    # the header's button first, then each zone's: nothing else to Tab through before them
    assert out["tabs"]["#content-choose"] == 2 and out["tabs"]["#style-choose"] == 1, out["tabs"]
    folder = s["folder"]
    assert folder["message"] == "models/: no files directly in it; pick the model folder itself (the one holding manifest.json)"
    assert folder["state"] == "ready" and folder["badges"]["model"].endswith("sha256 checked")  # the served model stays
    # why Start is greyed out
    assert s["empty"]["hint"] == "add a content image and a style image to start"
    assert s["content"]["content"] == "chelsea_cat.jpg" and s["content"]["messageKind"] == ""
    assert s["content"]["hint"] == "add a style image to start"
    st = s["styles"]
    assert st["styles"] == ["great_wave.jpg", "starry_night.jpg"] and st["messageKind"] == "error" and st["hint"] == ""
    lines = st["message"].split("\n")
    assert lines[0] == "2 of the 4 files chosen were not added:" and len(lines) == 3, lines
    assert re.fullmatch(r"notes\.jpg: not an image this browser can decode \(.*22 bytes\)", lines[1]), lines
    assert lines[2] == "empty.png: empty file"
    assert s["clicked"]["content"] == "great_wave.jpg" and s["clicked"]["messageKind"] == ""
    assert out["pageErrors"] == [] and out["consoleErrors"] == []


@pytest.mark.slow
@needs_browser
def test_webgpu_parity_on_swiftshader(tmp_path, puppeteer):
    """The WebGPU path (graphs on the GPU, image, gradient and L-BFGS history in GPU buffers) on Chromium's
    software Vulkan (SwiftShader): slow (about 10 s per iteration at 32 px), so not in CI. A real GPU is
    not tested."""
    content = save_png(EXAMPLES / "chelsea_cat.jpg", 40, tmp_path / "content.png")
    style = save_png(EXAMPLES / "great_wave.jpg", 38, tmp_path / "style.png")
    ref = _python_records(content, [(style, 1.0)], 32, 10)
    with serve() as url:
        out = drive({"url": url + "?backend=webgpu", "chromium_args": [
            "--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-angle=swiftshader",
            "--use-webgpu-adapter=swiftshader", "--enable-unsafe-swiftshader"], "steps": [
            {"upload": "#content-file", "files": [str(content)]}, {"upload": "#style-files", "files": [str(style)]},
            {"set": {"size": 32, "iterations": 10}}, {"click": "#start"}, {"until": "['done', 'error'].includes(a.state)"}]},
            timeout=1200)
    assert out["state"] == "done" and out["backend"]["ep"] == "webgpu", out["message"]
    diffs = [rel(w["loss"], r.loss) for w, r in zip(out["records"], ref)]
    print(f"\nWebGPU (SwiftShader) vs Python device loop: max relative difference {max(diffs):.2e}")
    assert len(diffs) == 10 and max(diffs) < 1e-3
