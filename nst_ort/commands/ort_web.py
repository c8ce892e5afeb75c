"""The onnxruntime-web files the page loads: where they come from, checked against SOURCES.json.

They are 41 MB (the wasm build and the WebGPU build), too big to commit or to ship in the wheel, so
only their list is tracked: web/vendor/onnxruntime-web/SOURCES.json (package, version, the npm
tarball's URL and sha512 integrity, each file's sha256 and size). `nst-ort web` takes each file from
the first of these that holds it with the right sha256:
  1. `--ort-web DIR`, when given (and then nothing else);
  2. web/vendor/onnxruntime-web/ (a checkout after `npm ci && npm run vendor`; a wheel built from one);
  3. the user cache, $XDG_CACHE_HOME/nst-ort/onnxruntime-web-VERSION/ (else ~/.cache/...);
  4. otherwise it fetches the pinned npm tarball once (its sha512 checked against the integrity), takes
     the listed dist/ files out of it (each one's sha256 checked) and writes them into the cache.
The server fetches, not the browser: the page loads nothing from anywhere but this server. The
verified bytes are what the server hands out (held in memory), so a file changed later is not served.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..base.atomic import atomic_write
from ..base.errors import ArtifactError

SOURCES_NAME = "SOURCES.json"
NPM_REGISTRY = "https://registry.npmjs.org/"
MAX_TARBALL = 512 << 20  # refuse a download past this many bytes (the 1.30.0 tarball is 33 MB)
CHUNK = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Sources:
    """SOURCES.json: which files the page needs, from which npm package, with their digests."""

    path: Path
    package: str
    version: str
    resolved: str
    integrity: str
    files: dict[str, FileEntry]

    @classmethod
    def read(cls, path: Path) -> Sources:
        try:
            raw = json.loads(Path(path).read_text())
            files = {name: FileEntry(str(e["sha256"]), int(e["bytes"])) for name, e in raw["files"].items()}
            sources = cls(Path(path), str(raw["package"]), str(raw["version"]), str(raw["resolved"]),
                          str(raw["integrity"]), files)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ArtifactError(f"{path}: cannot read the onnxruntime-web file list ({e}); reinstall nst-ort") from None
        if not files or any("/" in n or "\\" in n or n.startswith(".") for n in files):
            raise ArtifactError(f"{path}: 'files' must list plain file names")
        return sources

    def url(self) -> str:
        """The tarball's URL: `resolved`, on the registry npm is configured with (npm_config_registry,
        as npm itself reads it) when that is not npmjs.org; the integrity check is the same."""
        registry = os.environ.get("npm_config_registry") or os.environ.get("NPM_CONFIG_REGISTRY")
        if registry and self.resolved.startswith(NPM_REGISTRY):
            return registry.rstrip("/") + "/" + self.resolved[len(NPM_REGISTRY):]
        return self.resolved

    def check(self, name: str, data: bytes) -> str | None:
        """None when data is this file's content, else what is wrong with it."""
        entry = self.files[name]
        if len(data) != entry.bytes:
            return f"{len(data)} bytes, SOURCES.json says {entry.bytes}"
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            return "sha256 mismatch"
        return None


def cache_dir(version: str) -> Path:
    """$XDG_CACHE_HOME/nst-ort/onnxruntime-web-VERSION, else ~/.cache/nst-ort/... (XDG base directories)."""
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    return root / "nst-ort" / f"onnxruntime-web-{version}"


@dataclass
class Runtime:
    """The verified files (name -> bytes) and, for each, the folder it was read from."""

    sources: Sources
    data: dict[str, bytes]
    origin: dict[str, Path]


def _read_verified(sources: Sources, folder: Path, names, problems: dict[str, str]) -> dict[str, bytes]:
    found = {}
    for name in names:
        path = folder / name
        try:
            # O_NONBLOCK: a FIFO in its place must not hang the start-up; read only a regular file of
            # the listed size (not a multi-GB file, nor a device, whole into memory)
            with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)), "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    problems[name] = f"{path}: not a regular file"
                    continue
                if st.st_size != sources.files[name].bytes:
                    problems[name] = f"{path}: {st.st_size} bytes, SOURCES.json says {sources.files[name].bytes}"
                    continue
                data = f.read()
        except FileNotFoundError:
            continue
        except OSError as e:
            problems[name] = f"{path}: {e.strerror or e}"
            continue
        wrong = sources.check(name, data)
        if wrong:
            problems[name] = f"{path}: {wrong}"
        else:
            found[name] = data
    return found


def _integrity(spec: str) -> tuple[str, bytes]:
    algo, _, digest = spec.strip().partition("-")
    if algo != "sha512" or not digest:
        raise ArtifactError(f"SOURCES.json: integrity {spec!r} is not an npm sha512 integrity")
    return algo, base64.b64decode(digest)


def fetch(sources: Sources, dest: Path, names, log: Callable[[str], None] = lambda s: None,
          timeout: float = 60.0) -> dict[str, bytes]:
    """Download the package tarball, check its sha512, take `names` out of its dist/, check each one's
    sha256, write them atomically into dest; returns them. Nothing is written unless all check out."""
    url = sources.url()
    _, want = _integrity(sources.integrity)
    tarname = url.rsplit("/", 1)[-1] or "package.tgz"
    try:
        dest.mkdir(parents=True, exist_ok=True)
        # The tarball goes to a temporary folder beside the cache (same disk), gone afterwards.
        tmp = tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest.parent)
    except OSError as e:
        raise ArtifactError(f"{dest}: cannot create the cache folder ({e.strerror or e}); set XDG_CACHE_HOME to a "
                            "writable folder, or pass --ort-web DIR") from None
    size = sum(sources.files[n].bytes for n in names)
    shown = f"{size / 1e6:.0f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"
    count = f"{len(names)} file" + ("s" if len(names) > 1 else "")
    log(f"fetching {sources.package} {sources.version} (the page's runtime: {count}, {shown}) once from {url} into {dest}")
    with tmp as tmpdir:
        tgz = Path(tmpdir) / "package.tgz"
        h = hashlib.sha512()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(tgz, "wb") as f:
                total = 0
                while chunk := r.read(CHUNK):
                    total += len(chunk)
                    if total > MAX_TARBALL:
                        raise ArtifactError(f"{url}: larger than {MAX_TARBALL >> 20} MiB; not the pinned package")
                    h.update(chunk)
                    f.write(chunk)
        except urllib.error.HTTPError as e:
            raise FetchFailed(f"fetching {url} failed (HTTP {e.code} {e.reason})") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
            raise FetchFailed(f"fetching {url} failed ({reason})") from None
        if h.digest() != want:
            got = "sha512-" + base64.b64encode(h.digest()).decode()
            raise ArtifactError(f"{tarname} from {url}: sha512 mismatch ({total} bytes, {got[:24]}..., SOURCES.json "
                                f"says {sources.integrity[:24]}...): refused, nothing written")
        out = {}
        try:
            with tarfile.open(tgz, "r:gz") as tar:
                members = {m.name: m for m in tar.getmembers() if m.isfile()}
                for name in names:
                    member = members.get(f"package/dist/{name}")
                    if member is None:
                        raise ArtifactError(f"{tarname}: has no package/dist/{name} (SOURCES.json lists it)")
                    data = tar.extractfile(member).read()
                    wrong = sources.check(name, data)
                    if wrong:
                        raise ArtifactError(f"{tarname}: package/dist/{name}: {wrong} (SOURCES.json does not "
                                            "match its own package)")
                    out[name] = data
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ArtifactError(f"{tarname} from {url}: cannot read the tarball ({e})") from None
    for name, data in out.items():
        try:
            atomic_write(dest / name, lambda f, d=data: f.write(d))
        except OSError as e:
            raise ArtifactError(f"{dest / name}: cannot write the cache ({e.strerror or e}); set XDG_CACHE_HOME to "
                                "a writable folder, or pass --ort-web DIR") from None
    return out


class FetchFailed(Exception):
    """The tarball could not be downloaded (no network, no such host, HTTP error)."""


def load(sources: Sources, vendor: Path | None, cache: Path, explicit: Path | None = None,
         log: Callable[[str], None] = lambda s: None) -> Runtime:
    """Each file from the first place that holds it verified (see the module's docstring)."""
    problems: dict[str, str] = {}
    names = list(sources.files)
    if explicit is not None:
        if not explicit.is_dir():
            raise ArtifactError(f"--ort-web {explicit}: not a folder")
        data = _read_verified(sources, explicit, names, problems)
        missing = [n for n in names if n not in data]
        if missing:
            detail = "; ".join(problems[n] if n in problems else f"{n} missing" for n in missing)
            raise ArtifactError(f"--ort-web {explicit}: {detail} ({sources.package} {sources.version}'s dist/ "
                                "files, as SOURCES.json lists them)")
        return Runtime(sources, data, dict.fromkeys(names, explicit))
    data, origin = {}, {}
    for folder in (vendor, cache):
        if folder is None or not folder.is_dir():
            continue
        got = _read_verified(sources, folder, [n for n in names if n not in data], problems)
        data.update(got)
        origin.update(dict.fromkeys(got, folder))
    for problem in problems.values():
        log(f"warning: {problem}; not used")
    missing = [n for n in names if n not in data]
    if missing:
        try:
            got = fetch(sources, cache, missing, log=log)
        except FetchFailed as e:
            shown = ", ".join(missing) if len(missing) < len(names) else f"all {len(names)} files"
            places = f"in neither {vendor} nor {cache}" if vendor is not None else f"not in {cache}"
            raise ArtifactError(
                f"{sources.package} {sources.version} ({shown}) is {places}, and {e}: in a checkout run "
                "`npm ci && npm run vendor`, or pass --ort-web DIR (a folder with the files, e.g. "
                "node_modules/onnxruntime-web/dist)") from None
        data.update(got)
        origin.update(dict.fromkeys(got, cache))
    return Runtime(sources, data, origin)
