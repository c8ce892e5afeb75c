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
It expects hostile clients and model folders (docs/web.md): only regular files inside their folder
(a model folder whose files link out is refused at start-up), a CSP that keeps the page on this
origin, model files typed as data; the connection limits and the Host check are web_http.py's.
"""
from __future__ import annotations

import argparse
import email.utils
import errno
import hashlib
import io
import ipaddress
import json
import os
import signal
import socket
import stat
import sys
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..base.errors import EXIT_INTERRUPTED, ArtifactError, NstError, UsageError
from ..engine.artifacts import Artifacts, default_model_dir
from . import ort_web
from .web_http import (IO_TIMEOUT, MAX_CONNECTIONS, REQUEST_TIMEOUT, BoundedHTTPServer, DeadlineHandlerMixin,
                       host_allowed, say)

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

# The page runs only its own code and reaches only this server (so `?model=` cannot name another
# site, and no image leaves the machine): 'wasm-unsafe-eval' lets onnxruntime-web compile its wasm
# (not JS eval); blob:/data: images are the user's own files and the favicon; no framing (clickjacking).
CSP = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; connect-src 'self'; "
       "img-src 'self' blob: data:; style-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
SECURITY = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",  # a model file is never run as a script, whatever a browser guesses
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Referrer-Policy": "no-referrer",
}
# O_NONBLOCK: a file swapped for a FIFO must not hang a thread (POSIX only: Windows has no FIFOs to
# fear, and needs O_BINARY)
READ_FLAGS = getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


def app_dir() -> Path:
    """The web app: package data when installed (nst_ort/webapp), ./web in a checkout."""
    here = Path(__file__).resolve().parent.parent  # nst_ort/
    for candidate in (here / "webapp", here.parent / "web"):
        if (candidate / "index.html").is_file():
            return candidate
    raise ArtifactError("the web app is not installed (looked in the package and ./web); reinstall nst-ort")


def model_files(model: Path) -> set[str]:
    """The names the server may hand out from the model folder: manifest.json and what it lists, each
    a regular file inside the folder (a symlink may point elsewhere in it, not out of it)."""
    # before Artifacts reads it: a FIFO would hang the read, a link out would be read from elsewhere
    inside_model(Path(model), "manifest.json", missing_ok=True)
    art = Artifacts(model, verify=False)  # one-line errors for a missing folder or a broken manifest
    files = art.manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{art.path / 'manifest.json'}: 'files' must map names to sha256 entries")
    names = {"manifest.json"}
    for name in files:
        # Only plain names in the folder itself: the manifest is data, not a list of paths to serve.
        if isinstance(name, str) and name and "/" not in name and "\\" not in name and "\0" not in name \
                and name not in (".", ".."):
            names.add(name)
    for name in sorted(names):
        # A listed file that is missing is the page's to report (it names the file); one that leads
        # out of the folder or is not a file is refused here, before anything is served.
        inside_model(Path(model), name, missing_ok=True)
    return names


def inside_model(model: Path, name: str, missing_ok: bool = False) -> Path | None:
    """model/name resolved: a regular file inside the resolved model folder, else ArtifactError
    naming it (None when it does not exist and missing_ok)."""
    path = model / name
    try:
        root = model.resolve(strict=True)
        resolved = path.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):  # no folder, no file, a link to nothing: missing
        if missing_ok:
            return None
        raise ArtifactError(f"{path}: missing") from None
    except RuntimeError:  # Python < 3.13 reports a symlink loop so
        raise ArtifactError(f"{path}: a symlink loop") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ArtifactError(f"{path}: a symlink loop") from None
        raise ArtifactError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        resolved.relative_to(root)
    except ValueError:
        raise ArtifactError(f"{path}: leads out of the model folder (to {resolved}); nst-ort web serves only files "
                            "inside it: copy the file in instead of linking it") from None
    try:
        mode = resolved.stat().st_mode
    except OSError as e:
        raise ArtifactError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        raise ArtifactError(f"{path}: not a regular file (a folder, FIFO or device); nst-ort web serves only files")
    return resolved


def runtime(app: Path, explicit: Path | None, log=lambda s: None) -> ort_web.Runtime:
    """onnxruntime-web's files, each checked against the app's SOURCES.json (ort_web.load)."""
    vendor = app / "vendor" / "onnxruntime-web"
    sources = ort_web.Sources.read(vendor / ort_web.SOURCES_NAME)
    return ort_web.load(sources, vendor, ort_web.cache_dir(sources.version), explicit, log=log)


class Handler(DeadlineHandlerMixin, SimpleHTTPRequestHandler):
    """GET and HEAD of the app's files, the model's listed files and onnxruntime-web's checked bytes;
    every other method is 501. Each file is re-checked when asked for (a regular file, inside its
    folder), so a file swapped for a link or a FIFO after start-up is 404, never followed or opened."""

    def __init__(self, *args, app: Path, model: Path, allowed: set[str], ort: dict[str, tuple[bytes, str]],
                 quiet: bool, hosts: frozenset[str], **kwargs):
        self.app, self.model, self.allowed, self.ort, self.quiet = app, model, allowed, ort, quiet
        self.hosts = hosts
        super().__init__(*args, directory=str(app), **kwargs)

    def version_string(self):
        return "nst-ort"  # not the Python version: nothing for a scanner to match

    def end_headers(self):
        for k, v in {**ISOLATION, **SECURITY}.items():
            self.send_header(k, v)
        # The page and the model change between runs of a developer's checkout: always revalidate.
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def guess_type(self, path):
        return TYPES.get(Path(str(path)).suffix.lower(), "application/octet-stream")

    def _type_of(self, target: Path) -> str:
        """The app's files by their suffix; the model's are data, whatever their names or links say:
        a model folder listing `page.html` or `x.js` does not get a page or a script run on this origin."""
        url = unquote(urlsplit(self.path).path)
        if url.startswith(MODEL_PREFIX):
            return TYPES[".json"] if url == MODEL_PREFIX + "manifest.json" else "application/octet-stream"
        return self.guess_type(target)

    def _target(self, path: str) -> Path | None:
        """URL path -> a regular file (resolved), or None for anything outside the app folder, model
        files the manifest does not list or that lead out of the model folder, folders and specials."""
        url = unquote(urlsplit(path).path)
        if "\0" in url:
            return None
        if url.startswith(MODEL_PREFIX):
            name = url[len(MODEL_PREFIX):]
            if name not in self.allowed:
                return None
            try:
                return inside_model(self.model, name)
            except ArtifactError:
                return None
        parts = [p for p in url.split("/") if p]
        if any(p in (".", "..") or p.startswith(".") or "\\" in p for p in parts):
            return None  # no dot-files, no way up
        target = self.app.joinpath(*parts) if parts else self.app / "index.html"
        try:
            resolved = target.resolve(strict=True)
            resolved.relative_to(self.app.resolve())
            if not stat.S_ISREG(resolved.stat().st_mode):
                return None  # a folder (no listings) or a special file
        except (ValueError, OSError, RuntimeError):
            return None  # missing, a symlink out of the app folder, or a loop
        return resolved

    def send_head(self):
        if not host_allowed(self.headers.get("Host"), self.hosts):
            # DNS rebinding: another site's page, its name pointed at this machine, must get nothing
            self.send_error(HTTPStatus.FORBIDDEN, "Host not allowed",
                            "nst-ort web answers only requests addressed to an IP address or localhost")
            return None
        parts = [p for p in unquote(urlsplit(self.path).path).split("/") if p]
        if parts[:1] == ["vendor"]:  # only the checked bytes, never the folder on disk
            return self._send_ort(parts[2] if len(parts) == 3 and parts[1] == "onnxruntime-web" else "")
        target = self._target(self.path)
        f = None
        if target is not None:
            try:
                # O_NONBLOCK: a file swapped for a FIFO since the check must not hang this thread
                fd = os.open(target, os.O_RDONLY | READ_FLAGS | getattr(os, "O_NOFOLLOW", 0))
                f = os.fdopen(fd, "rb")
            except OSError:
                f = None
        if f is None:
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        try:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise OSError("not a regular file")
            since = self.headers.get("If-Modified-Since")
            if since and "If-None-Match" not in self.headers:
                try:
                    when = email.utils.parsedate_to_datetime(since)
                except (TypeError, ValueError, IndexError, OverflowError):
                    when = None
                if when is not None and when.tzinfo is not None and int(st.st_mtime) <= when.timestamp():
                    self.send_response(HTTPStatus.NOT_MODIFIED)
                    self.end_headers()
                    f.close()
                    return None
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", self._type_of(target))
            self.send_header("Content-Length", str(st.st_size))
            self.send_header("Last-Modified", self.date_time_string(st.st_mtime))
            self.end_headers()
            return f
        except BaseException:
            f.close()
            raise

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
            # as the base class does: a request line's control characters (terminal escapes) escaped
            message = (format % args).translate(getattr(self, "_control_char_table", {}))
            say("nst-ort web: %s %s" % (self.address_string(), message))


LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether --host keeps the server on this machine (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower().rstrip(".") in LOOPBACK_NAMES


def make_server(model: Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT, quiet: bool = True,
                ort_web_dir: Path | None = None, log=lambda s: None, max_connections: int = MAX_CONNECTIONS,
                request_timeout: float = REQUEST_TIMEOUT, io_timeout: float = IO_TIMEOUT) -> BoundedHTTPServer:
    app = app_dir()
    allowed = model_files(model)
    rt = runtime(app, ort_web_dir, log=log)
    ort = {name: (data, hashlib.sha256(data).hexdigest()) for name, data in rt.data.items()}
    # A name of this machine's own is as safe as an address for the Host check (no other site's).
    hosts = frozenset() if is_loopback(host) else frozenset({socket.gethostname().lower(), host.lower()} - {""})
    handler = partial(Handler, app=app, model=Path(model), allowed=allowed, ort=ort, quiet=quiet, hosts=hosts)
    try:
        server = BoundedHTTPServer((host.strip("[]"), port), handler, max_connections=max_connections,
                                   request_timeout=request_timeout, io_timeout=io_timeout, verbose=not quiet)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UsageError(f"--port {port}: address already in use (another server? try --port 0 for a free one)") from None
        raise UsageError(f"--host {host} --port {port}: cannot listen ({e.strerror or e})") from None
    return server


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def urls_of(server: BoundedHTTPServer) -> tuple[str, str]:
    """(the address to open on this machine, where the server listens in words)."""
    host, port = server.server_address[:2]
    if host in ("0.0.0.0", "::", ""):
        local = "::1" if host == "::" else "127.0.0.1"
        return _url(local, port), f"every {'IPv6' if host == '::' else 'IPv4'} address of this machine, port {port}"
    return _url(host, port), _url(host, port)


def url_of(server: BoundedHTTPServer) -> str:
    return urls_of(server)[0]


REMOTE_NOTE = ("other machines reach it over plain http, which browsers do not treat as a secure context: the page "
               "opens there but refuses to load the model (no SubtleCrypto to check its sha256) and gets no wasm "
               "threads; to use it from another machine, keep the default --host and tunnel instead "
               "(ssh -L 8765:127.0.0.1:8765 THIS_MACHINE, then open http://127.0.0.1:8765/ there)")


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
                   help="address to listen on. Another address (e.g. 0.0.0.0) lets other machines connect, but "
                   "over plain http the page they get cannot load the model (browsers give SubtleCrypto, needed "
                   "for the sha256 check, and wasm threads only to https and localhost pages): from another "
                   "machine use an SSH tunnel to 127.0.0.1 instead. Requests must name the server by IP address "
                   "or localhost (or, off loopback, this machine's name): others get 403 (DNS rebinding)")
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

        model = args.model if args.model is not None else default_model_dir()
        server = make_server(model, args.host, args.port, quiet=not args.verbose, ort_web_dir=args.ort_web,
                             log=lambda line: say(f"nst-ort web: {line}"))
    except NstError as e:
        say(f"nst-ort web: error: {e}")
        return e.exit_code
    except KeyboardInterrupt:  # during the one-time fetch: nothing half-written stays (temporary files)
        say("nst-ort web: interrupted")
        return EXIT_INTERRUPTED
    name = json.dumps(str(Path(model).resolve()))
    local, where = urls_of(server)
    listening = "" if local == where else f" (listening on {where})"
    # stdout may be a closed pipe (`nst-ort web | true`): the server goes on; the line is flushed at
    # once, for whoever reads it (a script waiting for the address)
    say(f"nst-ort web: serving the app with model {name} at {local}{listening} (Ctrl-C stops)", sys.stdout)
    if not is_loopback(args.host):
        say(f"nst-ort web: warning: --host {args.host}: {REMOTE_NOTE}")
    try:
        previous = signal.signal(signal.SIGTERM, _stop)
    except ValueError:  # not the main thread (main() called by a program of its own): its signals, not ours
        previous = None
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass  # Ctrl-C (or SIGTERM) is how a server is stopped: not an error
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        _quiet_stdout()
    return 0


def _stop(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (a service manager, `kill`): stop as Ctrl-C does, exit 0


def _quiet_stdout() -> None:
    """A stdout pipe closed by its reader makes the interpreter's last flush complain; point it at
    /dev/null, as after SIGPIPE nothing more would be written."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError, AttributeError):
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
