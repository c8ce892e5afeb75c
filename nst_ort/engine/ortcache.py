"""A cache of onnxruntime's optimized graphs: most of a CPU run's start-up, made once.

Creating the CPU training session (train_cpu.onnx) spends seconds in onnxruntime's graph optimizer
(constant folding fp16 -> fp32 weights and the Winograd filter transforms, layout changes): measured
2.6-3.6 s of a ~5 s start-up at 64 px. onnxruntime can save the graph it ends up with
(SessionOptions.optimized_model_filepath); a session loaded from that file with optimizations off
starts in ~0.2 s and computes the same bytes (tests/test_cache.py compares loss terms and gradients,
and whole runs, byte for byte).

An optimized graph at ORT_ENABLE_ALL is specific to the machine and the onnxruntime that made it
(layout transforms pick kernels by CPU features), so an entry's key is the sha256 of: the source
graph's and its external weights' sha256 (from the verified manifest), onnxruntime's version, the
providers, the optimization level and session options that shape the graph, the machine and the
CPU's model and flags, and this format's version. Each entry is a folder (model.onnx, weights.bin,
meta.json with every file's sha256 and size) made in a temporary folder and renamed into place (two
runs filling the same entry at once both succeed). An entry is checked like an artifact every time
it is used: meta.json must match the key's fields and every file its sha256; anything else (a
truncated or edited file, another version's entry) is removed and made again, never loaded.
An entry is damaged data, never a reason to fail: files are opened only when they are regular files
(O_NONBLOCK | O_NOFOLLOW, then fstat: a FIFO or a device is never read, so never blocks), meta.json
is bounded in size and depth, and a loaded entry must declare the source graph's inputs and outputs
(an entry re-signed over another graph: its sha256 fixed in meta.json). A damaged entry gives one
warning line, is removed and made again; the model is never blamed for it.

Only sessions on the CPU provider alone are cached (no GPU to verify other providers' optimized
graphs here), and only with onnxruntime 1.21 or later (MIN_ONNXRUNTIME: older ones load their own
saved graphs wrongly). Where: NST_ORT_CACHE_DIR, else $XDG_CACHE_HOME/nst-ort (an absolute path only: the XDG base
directory spec says to ignore a relative one), else ~/.cache/nst-ort.
Off: NST_ORT_CACHE=0 or `nst-ort --no-cache`. Size: entries beyond NST_ORT_CACHE_MAX_MB (default
2048; the default model's training graph takes 341 MB) are removed, least recently used first.
A cache folder that cannot be written is no error: one warning, and the session is made as without
a cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import onnxruntime as ort

from ..base.errors import NstError, OutOfMemory
from .onnx_scan import ScanError, external_data, graph_signature

FORMAT = 1
MODEL, WEIGHTS, META = "model.onnx", "weights.bin", "meta.json"
META_MAX_BYTES = 1 << 20  # ours are ~1 KB: a bigger one is not ours, and is not parsed

_said: set[str] = set()


def warn(msg: str) -> None:
    """One line on stderr, once per process (the eval and training graphs share a cache)."""
    if msg not in _said:
        _said.add(msg)
        print(f"nst-ort: warning: {msg}", file=sys.stderr)


class Damaged(Exception):
    """An entry that must not be loaded: the message says why (the warning's reason)."""


# onnxruntime 1.18.0 to 1.20.1 save optimized CPU graphs that compute other numbers once loaded
# (tests/test_cache.py on the default model: the content term of train_cpu.onnx off by 9x); 1.21.0,
# 1.21.1, 1.22.1, 1.23.2, 1.24.4, 1.28.0 and 1.32.0 give the same bytes. Older versions run uncached.
MIN_ONNXRUNTIME = (1, 21)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for p in text.split(".")[:3]:
        digits = "".join(c for c in p if c.isdigit()) or "0"
        parts.append(int(digits))
    return tuple(parts)


def enabled() -> bool:
    return os.environ.get("NST_ORT_CACHE", "1") != "0" and _version(ort.__version__) >= MIN_ONNXRUNTIME


def cache_dir() -> Path:
    explicit = os.environ.get("NST_ORT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"  # XDG: relative is invalid
    return root / "nst-ort"


def cpu_signature() -> str:
    """The CPU's model name and feature flags (Linux /proc/cpuinfo), else what platform knows."""
    model = flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = " ".join(sorted(value.split()))
    except OSError:
        pass
    return f"{platform.machine()}|{model or platform.processor()}|{flags}"


def _open_regular(path: Path):
    """A regular file opened for reading, or Damaged: never a FIFO (opening one blocks until a writer
    comes), a device, a folder or a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise Damaged(f"{path.name} is missing") from None
    except OSError as e:
        raise Damaged(f"{path.name} cannot be read ({e.strerror or e})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Damaged(f"{path.name} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with _open_regular(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def key_fields(graph_sha256: str, data_sha256: dict[str, str], providers: list, so: ort.SessionOptions) -> dict:
    return {"format": FORMAT, "graph_sha256": graph_sha256, "data_sha256": dict(sorted(data_sha256.items())),
            "onnxruntime": ort.__version__, "providers": repr(providers),
            "optimization_level": int(so.graph_optimization_level), "cpu": cpu_signature()}


def _key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:40]


def _check(entry: Path, fields: dict) -> None:
    """Raise Damaged unless `entry` is a whole entry for `fields`: meta.json (regular, bounded) must
    name these fields and every file its size and sha256."""
    try:
        with _open_regular(entry / META) as f:
            text = f.read(META_MAX_BYTES + 1)
        if len(text) > META_MAX_BYTES:
            raise Damaged(f"{META} is larger than {META_MAX_BYTES} bytes")
        meta = json.loads(text)
    except RecursionError:
        raise Damaged(f"{META} is nested too deeply") from None
    except (ValueError, MemoryError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise Damaged(f"{META} is not JSON ({str(e)[:80]})") from None
    except OSError as e:
        raise Damaged(f"{META} cannot be read ({e.strerror or e})") from None
    if not isinstance(meta, dict) or meta.get("fields") != fields:
        raise Damaged(f"{META} names other settings than its key")
    files = meta.get("files")
    if not isinstance(files, dict) or set(files) != {MODEL, WEIGHTS}:
        raise Damaged(f"{META} does not list {MODEL} and {WEIGHTS}")
    for name, info in files.items():
        if not isinstance(info, dict) or not isinstance(info.get("bytes"), int) or not isinstance(info.get("sha256"), str):
            raise Damaged(f"{META}: malformed entry for {name}")
        try:
            with _open_regular(entry / name) as f:
                size = os.fstat(f.fileno()).st_size
        except OSError as e:
            raise Damaged(f"{name} cannot be read ({e.strerror or e})") from None
        if size != info["bytes"]:
            raise Damaged(f"{name} has {size} bytes, {META} says {info['bytes']}")
        try:
            digest = _sha256(entry / name)
        except OSError as e:
            raise Damaged(f"{name} cannot be read ({e.strerror or e})") from None
        if digest != info["sha256"]:
            raise Damaged(f"{name}: sha256 mismatch")
    # onnxruntime opens whatever external data a graph names: only the entry's own weights file
    # (a re-signed model.onnx could name a FIFO, a device or a file outside the entry).

    try:
        with _open_regular(entry / MODEL) as f:
            tensors = external_data(f.read())
    except (ScanError, RecursionError) as e:
        raise Damaged(f"{MODEL} is not an ONNX graph ({e or 'nested too deeply'})") from None
    except OSError as e:
        raise Damaged(f"{MODEL} cannot be read ({e.strerror or e})") from None
    locations = {t["location"] for t in tensors}
    if locations - {WEIGHTS}:
        raise Damaged(f"{MODEL} names external data other than {WEIGHTS}: {sorted(locations - {WEIGHTS})[:3]}")
    for t in tensors:  # a length past the file's end would have onnxruntime allocate or read what is not there
        try:
            end = int(t.get("offset", 0)) + int(t.get("length", 0))
        except ValueError:
            raise Damaged(f"{MODEL}: an external tensor has a bad offset or length") from None
        if end > files[WEIGHTS]["bytes"]:
            raise Damaged(f"{MODEL} reads bytes up to {end} of {WEIGHTS}, which has {files[WEIGHTS]['bytes']}")


def _valid(entry: Path, fields: dict) -> bool:
    try:
        _check(entry, fields)
        return True
    except Damaged:
        return False


def _declared_io(graph: Path) -> tuple[list, list] | None:
    """The source graph's inputs and outputs as (name, static dims) lists; None if it cannot be
    scanned (then a loaded entry is not compared: the model's own checks speak for the model)."""
    try:
        return graph_signature(graph.read_bytes())
    except (OSError, ScanError, RecursionError):
        return None


def _session_io(sess) -> tuple[list, list]:
    def sig(args):
        return [(a.name, [d if isinstance(d, int) else None for d in (a.shape or [])]) for a in args]

    return sig(sess.get_inputs()), sig(sess.get_outputs())


def _same_io(declared: tuple[list, list], loaded: tuple[list, list]) -> bool:
    """Names in order, ranks, and every dimension both give as a number (onnxruntime may leave a
    symbolic one unnamed)."""
    for want, got in zip(declared, loaded):
        if [n for n, _ in want] != [n for n, _ in got]:
            return False
        for (_, a), (_, b) in zip(want, got):
            if len(a) != len(b) or any(x is not None and y is not None and x != y for x, y in zip(a, b)):
                return False
    return True


def _remove(path: Path) -> bool:
    """Remove an entry (or whatever took its name: a file, a FIFO, a symlink); True if it is gone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        if stat.S_ISDIR(st.st_mode):
            if not st.st_mode & stat.S_IRWXU == stat.S_IRWXU:
                os.chmod(path, 0o700)  # an entry made unreadable: ours to remove all the same
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)  # a symlink is removed, never followed
    except OSError:
        pass
    return not os.path.lexists(path)


def _evict(root: Path, keep: Path) -> None:
    try:
        limit = int(float(os.environ.get("NST_ORT_CACHE_MAX_MB", "2048")) * (1 << 20))
    except (ValueError, OverflowError):  # nan, inf, a word
        warn(f"NST_ORT_CACHE_MAX_MB={os.environ['NST_ORT_CACHE_MAX_MB']!r} is not a number of MB; using 2048")
        limit = 2048 << 20
    entries = []
    for e in root.iterdir():
        try:
            st = os.lstat(e)
            if e.name.startswith(".new-") and time.time() - st.st_mtime > 86400:
                _remove(e)  # left by a run killed while filling its entry
                continue
            if not stat.S_ISDIR(st.st_mode) or e.name.startswith(".") or e == keep:
                continue
            size = sum(f.lstat().st_size for f in e.iterdir())
            used = (e / META).lstat().st_mtime
        except OSError:
            continue
        entries.append((used, size, e))
    try:
        total = sum(size for _, size, _ in entries) + sum(f.lstat().st_size for f in keep.iterdir())
    except OSError:
        return
    for _, size, e in sorted(entries, key=lambda t: t[:2]):  # least recently used first
        if total <= limit:
            break
        _remove(e)
        total -= size


def session(graph: Path, graph_sha256: str, data_sha256: dict[str, str], options: Callable[[], ort.SessionOptions],
            providers: list, create: Callable[[str, ort.SessionOptions], ort.InferenceSession]
            ) -> tuple[ort.InferenceSession, str]:
    """A session of `graph` through the cache: (session, "hit" | "miss" | "off"). `options()` makes
    fresh SessionOptions, `create(path, so)` a session (make_session's error mapping stays the
    caller's). Whatever goes wrong with the cache itself, the session is made as without one."""
    if not enabled():
        return create(str(graph), options()), "off"

    so = options()
    fields = key_fields(graph_sha256, data_sha256, providers, so)
    root = cache_dir() / "optimized"
    entry = root / _key(fields)
    if os.path.lexists(entry):
        try:
            if not stat.S_ISDIR(os.lstat(entry).st_mode):
                raise Damaged("not a folder")
            _check(entry, fields)
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # already optimized
            try:
                sess = create(str(entry / MODEL), so)
            except OutOfMemory:
                raise
            except NstError:  # the entry's fault, not the model's (the model's files were verified)
                raise Damaged("onnxruntime cannot load it") from None
            declared = _declared_io(graph)
            if declared is not None and not _same_io(declared, _session_io(sess)):
                del sess
                raise Damaged(f"its inputs and outputs are not those of {graph.name}: another graph")
            try:
                os.utime(entry / META)  # recently used (eviction order)
            except OSError:
                pass
            return sess, "hit"
        except Damaged as e:
            gone = _remove(entry)  # tampered, truncated, re-signed or not ours: made again, never loaded
            warn(f"{entry}: damaged start-up cache entry ({e}); "
                 + ("removed, made again" if gone else "cannot remove it: running without the cache"))
            if not gone:
                return create(str(graph), options()), "off"
            so = options()  # the hit path turned optimizations off
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=root))
    except OSError as e:
        warn(f"{root}: cannot write the start-up cache ({e.strerror or e}); running without it "
             "(set NST_ORT_CACHE_DIR to a writable folder, or NST_ORT_CACHE=0)")
        return create(str(graph), so), "off"
    try:
        sess = None
        so.optimized_model_filepath = str(tmp / MODEL)
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", WEIGHTS)
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        sess = create(str(graph), so)
        if not (tmp / WEIGHTS).exists():  # a graph without large initializers: still one layout
            (tmp / WEIGHTS).write_bytes(b"")
        files = {name: {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
                 for name in (MODEL, WEIGHTS)}
        (tmp / META).write_text(json.dumps({"fields": fields, "files": files, "source": str(graph),
                                            "made": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
        try:
            os.rename(tmp, entry)
        except OSError:  # another run made it first (or a race): theirs stays, ours goes
            _remove(tmp)
        else:
            _evict(root, entry)
        return sess, "miss"
    except Exception as e:  # noqa: BLE001 - a full cache disk fails onnxruntime's save: run without it
        _remove(tmp)
        if sess is not None:
            warn(f"{root}: cannot fill the start-up cache ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); "
                 "running without it")
            return sess, "off"
        return create(str(graph), options()), "off"
    except BaseException:  # Ctrl-C, SIGTERM (errors.Terminated): no half-made entry is left
        _remove(tmp)
        raise
