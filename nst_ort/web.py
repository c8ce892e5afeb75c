"""`nst-ort web`: serve the browser app (web/) and a model folder on this machine.

The page runs the whole loop itself (onnxruntime-web, wasm or WebGPU); this server only hands out
files. Two things a plain `python -m http.server` gets wrong for it:
- MIME types: browsers refuse `.mjs` modules served as text/plain and stream-compile `.wasm` only
  when it is application/wasm;
- cross-origin isolation (COOP/COEP): without it there is no SharedArrayBuffer, so onnxruntime-web
  runs its wasm backend on one thread.
The page checks every model file against the manifest's sha256 itself (it must, for a folder picked
from disk as well), so the server does not hash them; it only refuses a folder without a readable
manifest and serves nothing but manifest.json and the files the manifest lists.
onnxruntime-web's files (/vendor/onnxruntime-web/) are not in the repository or the wheel (41 MB):
ort_web.py finds them, or fetches them once, and checks each against SOURCES.json before the server
starts; the server hands out those checked bytes.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import io
import json
import sys
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from . import ort_web
from .errors import EXIT_INTERRUPTED, ArtifactError, NstError, UsageError

DEFAULT_PORT = 8765
MODEL_PREFIX = "/model/"

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".bin": "application/octet-stream",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".svg": "image/svg+xml",
    ".md": "text/markdown; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}

# Cross-origin isolation: SharedArrayBuffer (wasm threads) needs both. CORP lets the isolated page
# load its own files (same origin) and nothing else.
ISOLATION = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def app_dir() -> Path:
    """The web app: package data when installed (nst_ort/webapp), ./web in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "webapp", here.parent / "web"):
        if (candidate / "index.html").is_file():
            return candidate
    raise ArtifactError("the web app is not installed (looked in the package and ./web); reinstall nst-ort")


def model_files(model: Path) -> set[str]:
    """The names the server may hand out from the model folder: manifest.json and what it lists."""
    from .artifacts import Artifacts

    art = Artifacts(model, verify=False)  # one-line errors for a missing folder or a broken manifest
    files = art.manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{art.path / 'manifest.json'}: 'files' must map names to sha256 entries")
    names = {"manifest.json"}
    for name in files:
        # Only plain names in the folder itself: the manifest is data, not a list of paths to serve.
        if isinstance(name, str) and name and "/" not in name and "\\" not in name and name not in (".", ".."):
            names.add(name)
    return names


def runtime(app: Path, explicit: Path | None, log=lambda s: None) -> ort_web.Runtime:
    """onnxruntime-web's files, each checked against the app's SOURCES.json (ort_web.load)."""
    vendor = app / "vendor" / "onnxruntime-web"
    sources = ort_web.Sources.read(vendor / ort_web.SOURCES_NAME)
    return ort_web.load(sources, vendor, ort_web.cache_dir(sources.version), explicit, log=log)


class Handler(SimpleHTTPRequestHandler):
    server_version = "nst-ort-web"

    def __init__(self, *args, app: Path, model: Path, allowed: set[str], ort: dict[str, tuple[bytes, str]],
                 quiet: bool, **kwargs):
        self.app, self.model, self.allowed, self.ort, self.quiet = app, model, allowed, ort, quiet
        super().__init__(*args, directory=str(app), **kwargs)

    def end_headers(self):
        for k, v in ISOLATION.items():
            self.send_header(k, v)
        # The page and the model change between runs of a developer's checkout: always revalidate.
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def guess_type(self, path):
        return TYPES.get(Path(str(path)).suffix.lower(), "application/octet-stream")

    def _target(self, path: str) -> Path | None:
        """URL path -> file, or None for anything outside the app folder and for model files the
        manifest does not list."""
        url = unquote(urlsplit(path).path)
        if url.startswith(MODEL_PREFIX):
            name = url[len(MODEL_PREFIX):]
            return self.model / name if name in self.allowed else None
        parts = [p for p in url.split("/") if p]
        if any(p in (".", "..") or p.startswith(".") or "\\" in p or "\0" in p for p in parts):
            return None  # no dot-files, no way up
        target = self.app.joinpath(*parts) if parts else self.app
        try:
            target.resolve().relative_to(self.app.resolve())
        except (ValueError, OSError):
            return None  # a symlink out of the app folder
        return target

    def send_head(self):
        parts = [p for p in unquote(urlsplit(self.path).path).split("/") if p]
        if parts[:1] == ["vendor"]:  # only the checked bytes, never the folder on disk
            return self._send_ort(parts[2] if len(parts) == 3 and parts[1] == "onnxruntime-web" else "")
        if self._target(self.path) is None:
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        return super().send_head()

    def _send_ort(self, name: str):
        """onnxruntime-web's checked bytes, from memory; the ETag (their sha256) spares the browser the
        14-27 MB download on a reload (Cache-Control: no-cache makes it ask every time)."""
        if name not in self.ort:
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        data, digest = self.ort[name]
        etag = f'"{digest}"'
        if etag in [t.strip() for t in self.headers.get("If-None-Match", "").split(",")]:
            self.send_response(HTTPStatus.NOT_MODIFIED)
            self.send_header("ETag", etag)
            self.end_headers()
            return None
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", self.guess_type(name))
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", etag)
        self.end_headers()
        return io.BytesIO(data)

    def translate_path(self, path: str) -> str:
        return str(self._target(path))

    def list_directory(self, path):
        self.send_error(HTTPStatus.NOT_FOUND, "File not found")
        return None

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        if not self.quiet:
            sys.stderr.write("nst-ort web: %s %s\n" % (self.address_string(), format % args))


def make_server(model: Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT, quiet: bool = True,
                ort_web_dir: Path | None = None, log=lambda s: None) -> ThreadingHTTPServer:
    app = app_dir()
    allowed = model_files(model)
    rt = runtime(app, ort_web_dir, log=log)
    ort = {name: (data, hashlib.sha256(data).hexdigest()) for name, data in rt.data.items()}
    handler = partial(Handler, app=app, model=Path(model), allowed=allowed, ort=ort, quiet=quiet)
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UsageError(f"--port {port}: address already in use (another server? try --port 0 for a free one)") from None
        raise UsageError(f"--host {host} --port {port}: cannot listen ({e.strerror or e})") from None
    server.daemon_threads = True
    return server


def url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nst-ort web",
        description="Serve the browser app and a model folder; the style transfer runs in the page "
        "(onnxruntime-web: WebGPU where the browser has it, else wasm). Ctrl-C stops the server.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the built-in model)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port; 0 picks a free one")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; other machines reach it only with e.g. 0.0.0.0, and then "
                   "browsers treat the page as insecure (no wasm threads, no sha256 check)")
    p.add_argument("--ort-web", type=Path, default=None, metavar="DIR",
                   help="a folder with onnxruntime-web's files (e.g. node_modules/onnxruntime-web/dist); by "
                   "default web/vendor/onnxruntime-web, else the user cache, else fetched once from npm into it")
    p.add_argument("--verbose", action="store_true", help="log every request on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()

    def one_line_error(message):
        parser.exit(2, f"nst-ort web: error: {message} (see --help)\n")

    parser.error = one_line_error
    args = parser.parse_args(argv)
    try:
        if not 0 <= args.port <= 65535:
            raise UsageError(f"--port {args.port}: must be 0..65535")
        from .artifacts import default_model_dir

        model = args.model if args.model is not None else default_model_dir()
        server = make_server(model, args.host, args.port, quiet=not args.verbose, ort_web_dir=args.ort_web,
                             log=lambda line: print(f"nst-ort web: {line}", file=sys.stderr, flush=True))
    except NstError as e:
        print(f"nst-ort web: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # during the one-time fetch: nothing half-written stays (temporary files)
        print("nst-ort web: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    name = json.dumps(str(Path(model).resolve()))
    print(f"nst-ort web: serving the app with model {name} at {url_of(server)} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a server is stopped: not an error
    finally:
        server.server_close()
    return 0
