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

Only sessions on the CPU provider alone are cached (no GPU to verify other providers' optimized
graphs here), and only with onnxruntime 1.21 or later (MIN_ONNXRUNTIME: older ones load their own
saved graphs wrongly). Where: NST_ORT_CACHE_DIR, else $XDG_CACHE_HOME/nst-ort, else ~/.cache/nst-ort.
Off: NST_ORT_CACHE=0 or `nst-ort --no-cache`. Size: entries beyond NST_ORT_CACHE_MAX_MB (default
2048; the default model's training graph takes 341 MB) are removed, least recently used first.
A cache folder that cannot be written is no error: the session is made as without a cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import onnxruntime as ort

FORMAT = 1
MODEL, WEIGHTS, META = "model.onnx", "weights.bin", "meta.json"


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
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nst-ort"


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def key_fields(graph_sha256: str, data_sha256: dict[str, str], providers: list, so: ort.SessionOptions) -> dict:
    return {"format": FORMAT, "graph_sha256": graph_sha256, "data_sha256": dict(sorted(data_sha256.items())),
            "onnxruntime": ort.__version__, "providers": repr(providers),
            "optimization_level": int(so.graph_optimization_level), "cpu": cpu_signature()}


def _key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:40]


def _valid(entry: Path, fields: dict) -> bool:
    try:
        meta = json.loads((entry / META).read_text())
        if not isinstance(meta, dict) or meta.get("fields") != fields:
            return False
        files = meta.get("files")
        if not isinstance(files, dict) or set(files) != {MODEL, WEIGHTS}:
            return False
        for name, info in files.items():
            p = entry / name
            if p.stat().st_size != info["bytes"] or _sha256(p) != info["sha256"]:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _evict(root: Path, keep: Path) -> None:
    limit = int(float(os.environ.get("NST_ORT_CACHE_MAX_MB", "2048")) * (1 << 20))
    entries = []
    for e in root.iterdir():
        if not e.is_dir() or e.name.startswith(".") or e == keep:
            continue
        try:
            size = sum(f.stat().st_size for f in e.iterdir())
            used = (e / META).stat().st_mtime
        except OSError:
            continue
        entries.append((used, size, e))
    total = sum(size for _, size, _ in entries) + sum(f.stat().st_size for f in keep.iterdir())
    for _, size, e in sorted(entries):  # least recently used first
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
    if entry.is_dir():
        if _valid(entry, fields):
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # already optimized
            sess = create(str(entry / MODEL), so)
            try:
                os.utime(entry / META)  # recently used (eviction order)
            except OSError:
                pass
            return sess, "hit"
        _remove(entry)  # tampered, truncated or stale: made again below, never loaded
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=root))
    except OSError:
        return create(str(graph), so), "off"  # no writable cache: as without one
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
    except (KeyboardInterrupt, SystemExit):
        _remove(tmp)
        raise
    except BaseException:  # noqa: BLE001 - a full cache disk fails onnxruntime's save: run without it
        _remove(tmp)
        if sess is not None:
            return sess, "off"
        return create(str(graph), options()), "off"
