"""`nst-ort web` against a hostile client: only 127.0.0.1, a bounded number of connections, each wait
bounded. What a file server on this machine must not do: serve a file outside the folders it was
given (symlinks, encoded paths), answer another site's page (DNS rebinding), be held by half-sent
requests, print tracebacks for clients that go away, die with its stdout, or import onnxruntime.
The page's side (CSP, `?model=` from another origin) is tested in headless Chromium at the end."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from test_web import MODEL, ROOT, drive, needs_browser, ort_web_args, serve, serve_process
from test_web import puppeteer  # noqa: F401 - the fixture, for the browser test

from nst_ort.commands import web
from nst_ort.base.errors import ArtifactError
from nst_ort.commands.web_http import host_allowed

SMALL = ("manifest.json", "eval.onnx", "adam.onnx", "lbfgs_direction.onnx", "lbfgs_pair.onnx", "lbfgs_project.onnx")


def small_model(folder: Path) -> Path:
    """A model folder with the manifest and the small files (weights.bin and the training graphs
    missing: the server starts without them; the page would name them)."""
    folder.mkdir()
    for name in SMALL:
        shutil.copyfile(MODEL / name, folder / name)
    return folder


def raw(url: str, data: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send bytes as they are to the server, read the whole answer (HTTP/1.0: it closes)."""
    host, port = re.search(r"http://([\d.]+):(\d+)/", url).groups()
    assert host.startswith("127."), "only loopback"
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else 0
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def get(url: str, path: str, method: str = "GET", host: str | None = "default", extra: str = "") -> tuple[int, dict, bytes]:
    hostport = re.search(r"http://([^/]+)/", url).group(1)
    host_line = "" if host is None else f"Host: {hostport if host == 'default' else host}\r\n"
    return raw(url, f"{method} {path} HTTP/1.1\r\n{host_line}{extra}Connection: close\r\n\r\n".encode("latin-1"))


# -- what it serves ------------------------------------------------------------------------------------
def test_security_headers_and_a_neutral_server_name_on_every_answer():
    with serve() as url:
        for path, method, want in (("/", "GET", 200), ("/model/manifest.json", "HEAD", 200), ("/nope", "GET", 404),
                                   ("/", "POST", 501), ("/", "OPTIONS", 501)):
            status, h, body = get(url, path, method)
            assert status == want, (path, method)
            csp = h["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp and "'unsafe-eval'" not in csp
            assert "default-src 'self'" in csp and "'unsafe-inline'" not in csp
            assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY"
            assert h["server"] == "nst-ort", h["server"]  # no Python version for a scanner to match
            assert "python" not in str(h).lower()
            if method == "HEAD":
                assert body == b"" and int(h["content-length"]) == (MODEL / "manifest.json").stat().st_size
        # revalidation (Cache-Control: no-cache) of an unchanged file: 304, no body
        status, h, _ = get(url, "/model/manifest.json")
        status, _, body = get(url, "/model/manifest.json", extra=f"If-Modified-Since: {h['last-modified']}\r\n")
        assert status == 304 and body == b""
        status, _, body = get(url, "/model/manifest.json", extra="If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n")
        assert status == 200 and body == (MODEL / "manifest.json").read_bytes()


def test_hostile_paths_methods_and_headers():
    secret = (ROOT / "pyproject.toml").read_bytes()[:40]
    with serve() as url:
        for path in ("/model/%2fetc%2fpasswd", "/model/..%2f..%2fpyproject.toml", "/model/%2e%2e/pyproject.toml",
                     "/%2e%2e%2f%2e%2e%2fpyproject.toml", "/%252e%252e/pyproject.toml", "/..\\pyproject.toml",
                     "/js/..%5c..%5cpyproject.toml", "//etc/passwd", "/model//manifest.json/..", "/model/manifest.json%00",
                     "/index.html%00.png", "/model/", "/model", "/js", "/js/", "/vendor/onnxruntime-web/",
                     "/vendor/onnxruntime-web/../../index.html", "/.git/HEAD", "/js/.%2e/.%2e/pyproject.toml",
                     "http://evil.example/../pyproject.toml", "/%C0%AE%C0%AE/pyproject.toml", "/model/MODEL_CARD.md",
                     "/model/train.onnx/"):
            status, h, body = get(url, path)
            assert status in (400, 404), (path, status)
            assert "location" not in h and secret not in body and b"root:" not in body, path
        # a folder is never listed nor redirected (no open redirect through //host paths)
        status, h, _ = get(url, "//evil.example/")
        assert status in (200, 404) and "location" not in h
        for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"):
            status, _, body = get(url, "/model/manifest.json", method)
            assert status == 501 and b'"backbone"' not in body, method
        # no Range support: a Range asks for part, the whole file comes (200), never a wrong part
        status, h, body = get(url, "/model/manifest.json", extra="Range: bytes=0-3\r\n")
        whole = (MODEL / "manifest.json").read_bytes()
        assert (status, body) == (200, whole) or (status, body) == (206, whole[:4])
        status, _, _ = get(url, "/", extra="X-Big: " + "a" * 70000 + "\r\n")
        assert status == 431
        status, _, _ = get(url, "/", extra="".join(f"X-{i}: 1\r\n" for i in range(150)))
        assert status == 431
        status, _, _ = get(url, "/" + "a" * 70000)
        assert status == 414
        # a TLS hello (https:// to this http server): an HTTP/0.9-style error page (no status line), no file
        status, _, body = raw(url, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64) + b"\r\n\r\n")
        assert status == 0 and b"<script" not in body
        status, _, body = get(url, "/")  # and it still serves
        assert status == 200 and b"nst-ort" in body


def test_the_host_header_must_name_this_machine():
    """DNS rebinding: a page at http://evil.example:PORT/ whose name now resolves to 127.0.0.1 sends
    Host: evil.example:PORT; it gets 403, and nothing of the page or the model."""
    with serve() as url:
        port = re.search(r":(\d+)/", url).group(1)
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", f"localhost.evil.example:{port}",
                     f"localhost@evil.example:{port}", "", f"127.0.0.1:{port}x", "[::1", "[evil]:1", f"0x7f.1:{port}"):
            for path in ("/", "/model/manifest.json", "/vendor/onnxruntime-web/ort.wasm.min.mjs"):
                status, _, body = get(url, path, host=host)
                assert status in (400, 403) and b"<script" not in body and b"backbone" not in body, (host, path, status)
        status, _, _ = get(url, "/", host=None)  # no Host at all (HTTP/1.0 tools): refused too
        assert status == 403
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"app.localhost:{port}", "127.0.0.1",
                     f"[::1]:{port}", "127.0.0.1:9000"):  # any port: an ssh -L tunnel changes it
            status, _, _ = get(url, "/", host=host)
            assert status == 200, host


def test_host_allowed_rules():
    assert host_allowed("10.1.2.3:80") and host_allowed("[fe80::1]:8765") and host_allowed("localhost.")
    assert not host_allowed(None) and not host_allowed("my-laptop:8765") and not host_allowed("10.1.2.3:http")
    assert host_allowed("my-laptop:8765", frozenset({"my-laptop"}))


# -- the model folder: only its own regular files -----------------------------------------------------
def _start(model: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nst_ort", "web", "--port", "0", "--model", str(model), *ort_web_args()],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("case", ["link out", "manifest link out", "loop", "fifo", "manifest fifo", "folder",
                                  "dangling manifest"])
def test_a_model_folder_that_leads_elsewhere_is_refused_at_start(tmp_path, case):
    """One line naming the file, exit 4, nothing served (and no hang on a FIFO)."""
    model = small_model(tmp_path / "model")
    outside = tmp_path / "secret.txt"
    outside.write_text("root:x:0:0:secret\n")
    named = "weights.bin"
    if case == "link out":
        (model / "weights.bin").symlink_to(outside)
    elif case == "manifest link out":
        named = "manifest.json"
        shutil.move(model / "manifest.json", tmp_path / "manifest.json")
        (model / "manifest.json").symlink_to(tmp_path / "manifest.json")
    elif case == "loop":
        (model / "weights.bin").symlink_to(model / "loop")
        (model / "loop").symlink_to(model / "weights.bin")
    elif case == "fifo":
        os.mkfifo(model / "weights.bin")
    elif case == "manifest fifo":
        named = "manifest.json"
        (model / "manifest.json").unlink()
        os.mkfifo(model / "manifest.json")
    elif case == "folder":
        (model / "weights.bin").mkdir()
    elif case == "dangling manifest":
        named = "manifest.json"
        (model / "manifest.json").unlink()
        (model / "manifest.json").symlink_to(tmp_path / "gone.json")
    r = _start(model)
    assert r.returncode == 4 and r.stderr.count("\n") == 1 and r.stdout == "", (r.returncode, r.stderr)
    assert r.stderr.startswith(f"nst-ort web: error: {model / named}"), r.stderr
    assert "Traceback" not in r.stderr
    want = {"link out": "leads out of the model folder", "manifest link out": "leads out of the model folder",
            "loop": "symlink loop", "fifo": "not a regular file", "manifest fifo": "not a regular file",
            "folder": "not a regular file", "dangling manifest": "missing"}[case]
    assert want in r.stderr, r.stderr


def test_links_inside_the_model_folder_are_served_and_a_later_swap_is_not(tmp_path):
    model = small_model(tmp_path / "model")
    (model / "store").mkdir()
    shutil.move(model / "eval.onnx", model / "store" / "eval.onnx")
    (model / "eval.onnx").symlink_to(Path("store") / "eval.onnx")  # inside the folder: fine
    link_to_model = tmp_path / "linked-model"
    link_to_model.symlink_to(model)  # the folder itself may be a link
    outside = tmp_path / "secret.txt"
    outside.write_text("root:x:0:0:secret\n")
    with serve(link_to_model) as url:
        status, _, body = get(url, "/model/eval.onnx")
        assert status == 200 and body == (MODEL / "eval.onnx").read_bytes()
        status, _, _ = get(url, "/model/store/eval.onnx")  # not listed under that name
        assert status == 404
        # swapped after start-up: a link out, a FIFO (would hang an open()), a folder: 404, at once
        (model / "adam.onnx").unlink()
        (model / "adam.onnx").symlink_to(outside)
        os.mkfifo(model / "weights.bin")
        (model / "train.onnx").mkdir()
        for name in ("adam.onnx", "weights.bin", "train.onnx"):
            status, _, body = get(url, f"/model/{name}")
            assert status == 404 and b"secret" not in body, name
        status, _, _ = get(url, "/model/lbfgs_pair.onnx")
        assert status == 200


def test_model_files_are_served_as_data_whatever_their_names(tmp_path):
    """A model folder that lists `page.html` and `run.js` (a downloaded model is someone else's data)
    does not get a page or a script run on this server's origin: octet-stream, and nosniff."""
    import json

    model = small_model(tmp_path / "model")
    manifest = json.loads((model / "manifest.json").read_text())
    for name, text in (("page.html", "<script src='run.js'></script>"), ("run.js", "alert(1)"), ("pic.svg", "<svg/>")):
        (model / name).write_text(text)
        manifest["files"][name] = {"sha256": "0" * 64, "bytes": len(text)}
    (model / "manifest.json").write_text(json.dumps(manifest))
    with serve(model) as url:
        for name in ("page.html", "run.js", "pic.svg", "eval.onnx"):
            status, h, _ = get(url, f"/model/{name}")
            assert status == 200 and h["content-type"] == "application/octet-stream", (name, h["content-type"])
            assert h["x-content-type-options"] == "nosniff"
        status, h, _ = get(url, "/model/manifest.json")
        assert h["content-type"] == "application/json"
        status, h, _ = get(url, "/js/app.js")
        assert h["content-type"].startswith("text/javascript")


def test_inside_model_names_what_is_wrong(tmp_path):
    model = small_model(tmp_path / "model")
    assert web.inside_model(model, "weights.bin", missing_ok=True) is None
    with pytest.raises(ArtifactError, match="weights.bin: missing"):
        web.inside_model(model, "weights.bin")
    (model / "weights.bin").symlink_to("/etc/passwd")
    with pytest.raises(ArtifactError, match=r"leads out of the model folder \(to /etc/passwd\)"):
        web.inside_model(model, "weights.bin")


def test_ort_web_files_that_are_fifos_loops_or_huge_are_refused_without_reading_them(tmp_path):
    """--ort-web DIR with a FIFO (would hang a read), a symlink loop and a sparse 4 GiB file in place of
    three of onnxruntime-web's files: one line naming the first, exit 4, at once."""
    import json

    if not ort_web_args():
        pytest.skip("needs node_modules/onnxruntime-web at the pinned version (npm ci)")
    dist = Path(ort_web_args()[1])
    names = sorted(json.loads((ROOT / "web" / "vendor" / "onnxruntime-web" / "SOURCES.json").read_text())["files"])
    folder = tmp_path / "dist"
    folder.mkdir()
    for name in names[3:]:
        (folder / name).symlink_to(dist / name)
    os.mkfifo(folder / names[0])
    (folder / names[1]).symlink_to(folder / names[1])
    with open(folder / names[2], "wb") as f:
        f.truncate(4 << 30)
    r = subprocess.run([sys.executable, "-m", "nst_ort", "web", "--port", "0", "--ort-web", str(folder)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 4 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{folder / names[0]}: not a regular file" in r.stderr
    assert f"{folder / names[1]}: Too many levels of symbolic links" in r.stderr
    assert f"{folder / names[2]}: {4 << 30} bytes, SOURCES.json says" in r.stderr


# -- connections: bounded, timed out, quiet -------------------------------------------------------------
@contextlib.contextmanager
def in_process(max_connections: int, request_timeout: float):
    server = web.make_server(MODEL, "127.0.0.1", 0, ort_web_dir=Path(ort_web_args()[1]) if ort_web_args() else None,
                             max_connections=max_connections, request_timeout=request_timeout, io_timeout=5)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        t.join(10)


def _half_open(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and never the rest
    return s


def _wait(condition, seconds: float = 10) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("not within %s s" % seconds)


def _closed_by_server(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        while s.recv(4096):
            pass
        return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def test_half_sent_requests_hold_a_bounded_number_of_threads_for_a_bounded_time():
    """With room for 6 connections and 4 s to send a request: 5 half-sent requests leave the server
    answering others; 6 fill it (the next gets 503 at once, and no seventh thread starts); each is
    closed by the server at its deadline even while it trickles bytes, and then the server answers again."""
    with in_process(max_connections=6, request_timeout=4) as (server, url):
        port = server.server_address[1]
        threads_before = threading.active_count()
        slow = [_half_open(port) for _ in range(5)]
        status, _, body = get(url, "/")
        assert status == 200 and b"nst-ort" in body
        _wait(lambda: server.active == 5)  # the answered request's thread ends just after its socket closes
        slow.append(_half_open(port))
        _wait(lambda: server.active == 6)
        status, h, body = get(url, "/")
        assert status == 503 and h["retry-after"].isdigit() and b"too many connections" in body
        assert server.refused >= 1
        more = [_half_open(port) for _ in range(20)]  # refused at once: no thread each
        assert threading.active_count() <= threads_before + 6
        # a request trickled in a byte at a time is cut off at its deadline too, not kept alive by each byte
        for s in more:
            assert _closed_by_server(s, 5)
        for s in slow:
            assert _closed_by_server(s, 10), "a half-sent request was kept past its deadline"
            s.close()
        _wait(lambda: threading.active_count() <= threads_before and server.active == 0)  # threads end after their sockets
        trickle = socket.create_connection(("127.0.0.1", port), timeout=10)
        cut = False
        for byte in b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: " + b"a" * 400:
            try:
                trickle.sendall(bytes([byte]))
            except OSError:
                cut = True
                break
            trickle.settimeout(0.05)
            try:
                if trickle.recv(4096) == b"":
                    cut = True
                    break
            except TimeoutError:
                pass
        trickle.close()
        assert cut, "400 bytes over ~20 s (0.05 s each) were all accepted: no deadline for the whole request"
        status, _, _ = get(url, "/")
        assert status == 200


def stop(p: subprocess.Popen) -> None:
    """SIGTERM, which the server takes as Ctrl-C; if it has not ended within 30 s, its threads' stacks
    (PYTHONFAULTHANDLER, as these tests start it) go into the failure."""
    p.terminate()
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGABRT)
        p.wait(10)
        raise AssertionError(f"nst-ort web did not stop on SIGTERM within 30 s: {p.stderr.read()[-6000:]}") from None


FAULTS = {"PYTHONFAULTHANDLER": "1"}


def test_an_aborted_download_prints_nothing():
    with serve_process(env=FAULTS) as (url, p):
        port = int(re.search(r":(\d+)/", url).group(1))
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            s.recv(1000)
            # RST instead of FIN: the server's next send fails with a reset or a broken pipe
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        status, _, _ = get(url, "/")
        assert status == 200
        stop(p)
        err = p.stderr.read()
    assert "Traceback" not in err and "Error" not in err, err


def test_the_verbose_log_escapes_what_a_client_sends():
    """--verbose logs request lines: a terminal escape in one is written escaped, not to the terminal."""
    with serve_process(None, "--verbose", env=FAULTS) as (url, p):
        status, _, _ = get(url, "/\x1b]0;owned\x07\x1b[2J")
        assert status == 404
        stop(p)
        err = p.stderr.read()
    assert "\x1b" not in err and "\x07" not in err and "\\x1b]0;owned" in err, err


def test_a_closed_stdout_does_not_stop_the_server():
    """`nst-ort web | true`: the start line goes nowhere; the server serves on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the server writes
    p = subprocess.Popen([sys.executable, "-m", "nst_ort", "web", "--port", str(port), *ort_web_args()], cwd=ROOT,
                         stdout=w, stderr=subprocess.PIPE, text=True, env={**os.environ, **FAULTS})
    os.close(w)
    try:
        status = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                    status = resp.status
                break
            except OSError:
                if p.poll() is not None:
                    break
                time.sleep(0.2)
        assert status == 200 and p.poll() is None, p.stderr.read() if p.poll() is not None else status
    finally:
        stop(p)
    err = p.stderr.read()
    # SIGTERM stops it as Ctrl-C does (exit 0); the unwritable start line left no complaint
    assert p.returncode == 0 and "Traceback" not in err and "Broken pipe" not in err, err


def test_web_does_not_import_onnxruntime(tmp_path):
    """`nst-ort web` needs no onnxruntime: not imported (-X importtime lists every import), and
    nothing written under the user's home."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"PYTHONPROFILEIMPORTTIME": "1", "HOME": str(home), "XDG_CACHE_HOME": "", **FAULTS}
    if not ort_web_args():  # onnxruntime-web's files would be fetched into the (empty) home's cache
        env.pop("HOME")
    with serve_process(None, env=env) as (url, p):
        status, _, _ = get(url, "/")
        assert status == 200
        stop(p)
        imports = [line.rsplit("|", 1)[-1].strip() for line in p.stderr.read().splitlines() if line.startswith("import time:")]
    assert "nst_ort.commands.web" in imports, imports[-5:]  # the profile did list the imports
    assert not [m for m in imports if m.split(".")[0] == "onnxruntime"]
    if "HOME" in env:
        assert list(home.rglob("*")) == []
    # and none needs to be installed: with `import onnxruntime` failing, `nst-ort web` still gets to its
    # own checks (here the missing model folder: exit 4), not the "no ONNX Runtime" exit 5
    code = ("import sys; sys.modules['onnxruntime'] = None; from nst_ort.commands.entry import main; "
            f"sys.exit(main(['web', '--model', {str(tmp_path / 'nope')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 4 and "nope: model folder does not exist" in r.stderr, r.stderr


# -- the address it prints, and what it says about other machines ---------------------------------------
def test_the_printed_address_is_the_bound_one_and_other_hosts_are_warned():
    with serve(None, "--host", "127.0.0.2") as url:  # all of 127/8 is loopback on Linux
        assert url.startswith("http://127.0.0.2:")
        status, _, _ = get(url, "/")
        assert status == 200

    class Bound:
        server_address = ("0.0.0.0", 8765)

    local, where = web.urls_of(Bound())
    assert local == "http://127.0.0.1:8765/" and where == "every IPv4 address of this machine, port 8765"
    assert web.is_loopback("127.0.0.1") and web.is_loopback("::1") and web.is_loopback("localhost")
    assert not web.is_loopback("0.0.0.0") and not web.is_loopback("192.168.1.5")
    r = subprocess.run([sys.executable, "-m", "nst_ort", "web", "--help"], capture_output=True, text=True, timeout=60)
    assert "SubtleCrypto" in " ".join(r.stdout.split()) and "SSH tunnel" in " ".join(r.stdout.split())
    # an address that is not this machine's: one line, exit 2 (nothing listens)
    r = subprocess.run([sys.executable, "-m", "nst_ort", "web", "--host", "192.0.2.1", "--port", "0", *ort_web_args()],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--host 192.0.2.1 --port 0: cannot listen" in r.stderr


def test_a_non_loopback_host_is_told_what_other_machines_get(monkeypatch, capsys):
    """`--host 0.0.0.0`: the line gives the address to open here and where it listens, and a warning
    says the page cannot load the model from other machines (bound here to 127.0.0.1 all the same:
    the tests listen on loopback only)."""
    real = web.make_server

    def on_loopback(model, host, port, **kw):
        server = real(model, "127.0.0.1", port, **kw)
        server.server_address = ("0.0.0.0", server.server_address[1])
        server.serve_forever = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt)
        return server

    monkeypatch.setattr(web, "make_server", on_loopback)
    assert web.main(["--host", "0.0.0.0", "--port", "0", *ort_web_args()]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"at http://127\.0\.0\.1:\d+/ \(listening on every IPv4 address of this machine, port \d+\)", out), out
    assert err.startswith("nst-ort web: warning: --host 0.0.0.0: ") and "refuses to load the model" in err
    assert "ssh -L 8765:127.0.0.1:8765" in err and err.count("\n") == 1


def test_a_model_path_that_is_a_file_is_named_as_such(tmp_path):
    (tmp_path / "model").write_text("not a folder")
    r = _start(tmp_path / "model")
    assert r.returncode == 4 and r.stderr.count("\n") == 1 and "not a folder" in r.stderr, r.stderr


# -- in the browser ----------------------------------------------------------------------------------------
@needs_browser
def test_the_page_loads_no_model_from_another_origin(tmp_path, puppeteer):
    """`?model=` naming another server (one that allows any origin, as a CDN does) is refused in the
    page, and that server gets no request: the page loads only from the server that serves it."""
    import http.server

    asked = []

    class Cors(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(MODEL), **k)

        def end_headers(self):
            self.send_header("Access-Control-Allow-Origin", "*")
            self.send_header("Cross-Origin-Resource-Policy", "cross-origin")
            super().end_headers()

        def send_head(self):
            asked.append(self.path)
            return super().send_head()

        def log_message(self, *a):
            pass

    import json

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Cors)
    threading.Thread(target=other.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    elsewhere = f"http://127.0.0.1:{other.server_address[1]}/"
    # and a model folder whose manifest names a graph on that server (the page would fetch it)
    model = small_model(tmp_path / "model")
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["files"][elsewhere + "eval.onnx"] = manifest["files"][manifest["graphs"]["eval"]["file"]]
    manifest["graphs"]["eval"]["file"] = elsewhere + "eval.onnx"
    (model / "manifest.json").write_text(json.dumps(manifest))
    try:
        with serve() as url:
            out = drive({"url": url + f"?backend=wasm&model={elsewhere}"}, timeout=300)
        with serve(model) as url:
            named = drive({"url": url + "?backend=wasm"}, timeout=300)
    finally:
        other.shutdown()
        other.server_close()
    assert out["state"] == "model-error" and "not on this server" in out["message"], out["message"]
    assert named["state"] == "model-error", named["message"]
    assert named["message"].splitlines()[0] == \
        f'/model/manifest.json: names "{elsewhere}eval.onnx", which is not a file in the model folder'
    assert asked == [] and out["pageErrors"] == [] and named["pageErrors"] == []


@needs_browser
def test_the_page_runs_under_its_content_security_policy(tmp_path, puppeteer):
    """The CSP lets the page do all it does (wasm compiled, onnxruntime-web's thread workers, the
    user's images as blob: URLs, the download): a short run ends with no CSP violation in the console."""
    examples = ROOT / "examples"
    with serve() as url:
        out = drive({"url": url + "?backend=wasm", "steps": [
            {"upload": "#content-file", "files": [str(examples / "chelsea_cat.jpg")]},
            {"upload": "#style-files", "files": [str(examples / "great_wave.jpg")]},
            {"set": {"size": 32, "iterations": 3}}, {"click": "#start"},
            {"until": "['done', 'error'].includes(a.state)"}, {"screenshot": str(tmp_path / "page.png")},
            {"download": str(tmp_path)}]}, timeout=300)
    assert out["state"] == "done" and len(out["records"]) == 3, out["message"]
    assert out["backend"]["threads"] > 1 or os.cpu_count() == 1  # isolated: wasm threads (workers) allowed
    assert out["pageErrors"] == [] and out["consoleErrors"] == [], out["consoleErrors"]
    assert out["download"] == "completed"
