"""Where a run writes: checked before any work, so that a bad path costs nothing and loses nothing.

Every file a run writes (the output image, --report, --checkpoint, numbered snapshots) is a Target;
every file it reads (content, styles, masks, the --init image, the --resume checkpoint, the model's
files) a Source. `check_writes` refuses, before anything is computed:
- a target that is a source or another target: the same file by inode (hard links, symlinks), or
  for targets that do not exist yet the same resolved path (relative spellings, `..`, symlinked
  folders). The one pair allowed: --checkpoint may be the --resume file (the run goes on from it
  and saves where it came from; the file is read whole before anything is written);
- an existing target that is not a regular file (a folder, FIFO, socket, device node like
  /dev/null): it would be replaced by a regular file or block;
- a target that is a symbolic link: the atomic rename would replace the link itself by a regular
  file (a link to /dev/stdout, as root, would replace the system's); the user gives the link's
  target instead, which is then checked like any other path;
- a target whose folder is missing or not writable, or whose file system has less free space than
  the run will write there (statvfs, plus a probe write: a full disk, a read-only mount, a quota
  or a file-size limit shows here, not after the run).
Every refusal is an OutputError (exit 8) naming the file and the flag.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from ..base.errors import ImageError, NstError, OutputError, UsageError

PROBE_BYTES = 64 << 10  # written and removed in each folder a run writes to


@dataclasses.dataclass(frozen=True)
class Target:
    path: Path
    flag: str  # how the user named it: "-o", "--report", "--checkpoint", "--snapshots"
    bytes: int = 0  # how much the run will write there (an upper estimate), for the free-space check
    image: bool = False  # needs an image extension


@dataclasses.dataclass(frozen=True)
class Source:
    path: Path
    what: str  # "content image", "style image", "mask", "--init image", "--resume checkpoint", "model file"


@dataclasses.dataclass(frozen=True)
class Snapshots:
    """--snapshots: the image every --save-every N iterations as OUT_0050.png ... (zero-padded to at
    least 4 digits, more when the run is longer), beside OUT."""

    out: Path
    every: int
    total: int  # the run's iterations: snapshots at every, 2 * every, ... <= total

    @property
    def digits(self) -> int:
        return max(4, len(str(self.total)))

    def path(self, step: int) -> Path:
        return self.out.with_name(f"{self.out.stem}_{step:0{self.digits}d}{self.out.suffix}")

    def steps(self) -> range:
        return range(self.every, self.total + 1, self.every)

    def count(self) -> int:
        return len(self.steps())

    def matches(self, name: str) -> bool:
        """Whether a file name in OUT's folder is one of this run's snapshots."""
        m = re.fullmatch(re.escape(self.out.stem) + r"_(\d+)" + re.escape(self.out.suffix), name)
        if not m or len(m.group(1)) != self.digits:
            return False
        step = int(m.group(1))
        return 0 < step <= self.total and step % self.every == 0


def image_bytes(width: int, height: int) -> int:
    """An upper estimate of an image file's size (PNG of noise: about the raw pixels)."""
    return 3 * width * height + height + (64 << 10)


def _kind(mode: int) -> str | None:
    for test, name in ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "special file"


def _stat(path: Path, flag: str) -> os.stat_result | None:
    """stat through symlinks; None if nothing is there (a dangling symlink counts as nothing)."""
    try:
        return path.stat()
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise OutputError(f"{path}: {flag}: file name too long") from None
        if e.errno in (errno.ENOTDIR, errno.ELOOP):
            raise OutputError(f"{path}: {flag}: not a usable path ({e.strerror})") from None
        raise OutputError(f"{path}: {flag}: cannot check this path ({e.strerror or e})") from None


def resolved(path: Path) -> Path:
    """The path with its links resolved (what two names for one file compare by); made absolute
    instead where it cannot be resolved (a link loop, a folder that cannot be read)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def same_file(a: Path, b: Path) -> bool:
    """The same file: by inode where both exist (hard links, symlinks), else by resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        pass
    except ValueError:  # an embedded NUL
        return False
    return resolved(a) == resolved(b)


def _folder(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def probe_writable(path: Path, folder: Path, flag: str = "-o", size: int = PROBE_BYTES) -> None:
    """Create a file where the output will go and write to it: os.access says yes to root on
    read-only mounts, and creating an empty file still works on a full disk."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * max(1, min(size, PROBE_BYTES)))
            f.flush()
    except OSError as e:
        where = "output folder" if flag == "-o" else f"{flag} folder"
        reason = e.strerror or str(e)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            reason = f"no space left: {reason}"
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise OutputError(f"{path}: {where} {folder} is not writable ({reason})") from None
        raise OutputError(f"{path}: cannot write in {where} {folder} ({reason})") from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    blocks = st.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else st.f_bavail
    return blocks * st.f_frsize


def _mib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{max(n, 0) / (1 << 20):.1f} MiB"


def check_writes(targets: Iterable[Target], sources: Iterable[Source], snapshots: Snapshots | None = None,
                 resume: Path | None = None) -> None:
    """Refuse (OutputError) any target that would lose a file or fail to be written; see the module's
    docstring. `resume`: the --resume file, which --checkpoint may name."""
    targets, sources = list(targets), list(sources)
    for t in targets:
        st = _stat(t.path, t.flag)
        if st is not None:
            kind = _kind(st.st_mode)
            if kind == "folder" and t.flag == "-o":
                raise OutputError(f"{t.path}: is a directory; give an image file name")
            if kind is not None:
                raise OutputError(f"{t.path}: {t.flag} names a {kind}, not a regular file; refusing to replace it")
        for s in sources:
            if same_file(t.path, s.path):
                if t.flag == "--checkpoint" and resume is not None and s.what == "--resume checkpoint":
                    continue  # read whole before the run; the run goes on saving where it came from
                if t.flag == "-o":
                    raise OutputError(f"{t.path}: output path is also an input (the {s.what} {s.path}); "
                                      "refusing to overwrite it")
                raise OutputError(f"{t.path}: {t.flag} would overwrite the {s.what} ({s.path}); refusing")
        _refuse_link(t.path, t.flag)
    for i, a in enumerate(targets):
        for b in targets[i + 1:]:
            if same_file(a.path, b.path):
                raise OutputError(f"{a.path}: {a.flag} and {b.flag} name the same file; give each its own")
    if snapshots is not None and snapshots.count():
        _check_snapshots(snapshots, targets, sources)
    from PIL import Image  # start-up: outputs is loaded for --help, Pillow (~12 ms) only when checking

    for t in targets:
        if t.image and Image.registered_extensions().get(t.path.suffix.lower()) is None:
            raise OutputError(f"{t.path}: unknown image extension {t.path.suffix!r} (use .png, .jpg, .webp, .tif)")
    # Folders: present, writable, with room for everything the run writes there.
    need: dict[Path, tuple[Target, int]] = {}
    for t in targets:
        folder = _folder(t.path)
        if not folder.is_dir():
            where = "output folder" if t.flag == "-o" else f"{t.flag} folder"
            raise OutputError(f"{t.path}: {where} {folder} does not exist")
        key = resolved(folder)
        first, total = need.get(key, (t, 0))
        need[key] = (first, total + t.bytes)
    by_device: dict[int, list[tuple[Path, Target, int]]] = {}
    for folder, (t, total) in need.items():
        probe_writable(t.path, _folder(t.path), t.flag, total)
        try:
            dev = os.stat(folder).st_dev
        except OSError:
            continue
        by_device.setdefault(dev, []).append((folder, t, total))
    for entries in by_device.values():
        total = sum(n for _, _, n in entries)
        free = _free_bytes(entries[0][0])
        if free is not None and total > free:
            folder, t, _ = max(entries, key=lambda e: e[2])
            raise OutputError(f"{t.path}: this run writes about {_mib(total)} to {folder}, which has "
                              f"{_mib(free)} free; free some space or write elsewhere")


def _refuse_link(path: Path, flag: str) -> None:
    try:
        link = os.readlink(path)
    except (OSError, ValueError):
        return  # not a link (or nothing there)
    raise OutputError(f"{path}: {flag} is a symbolic link (to {link}); writing would replace the link, not "
                      "its target: give the target's path instead")


def file_arg(text: str, flag: str) -> Path:
    """A flag's file name as typed: one that ends in a slash names a folder (Path would drop the
    slash and write a file of that name), refused."""
    if text.endswith(("/", os.sep)):
        raise OutputError(f"{text}: {flag} ends in '/', which names a folder; give a file name")
    return Path(text)


def special_kind(path: Path) -> str | None:
    """What a path is when it exists and is neither a regular file nor a folder (through symlinks):
    "FIFO", "socket", "character device", ...; None otherwise. stat only: a FIFO is never opened
    (opening one for reading blocks until a writer comes)."""
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    kind = _kind(st.st_mode)
    return None if kind == "folder" else kind


def folder_entries(folder: Path, exts: Iterable[str], error: type[NstError]) -> Iterator[tuple[Path, str | None]]:
    """Each entry of a folder of images, sorted by name, with why it is not taken: "folder",
    "extension" (not one of exts) or "special" (not a regular file: a FIFO, a dangling link); None
    when it is. A folder that cannot be listed is `error` naming it. Batches and frame folders."""
    exts = set(exts)
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        raise error(f"{folder}: cannot list this folder ({e.strerror or e})") from None
    for p in entries:
        yield p, ("folder" if p.is_dir() else "extension" if p.suffix.lower() not in exts else
                  "special" if not p.is_file() else None)


def batch_files(folder: Path, exts: Iterable[str], warn) -> list[Path]:
    """The images of a batch folder, sorted; every entry that is not taken (a folder: batches do not
    descend; another extension; not a regular file) is named through warn. The sequential and the
    Ray batch both list their inputs here."""
    exts = sorted(exts)
    why = {"folder": "a folder, skipped (a batch does not descend into folders)",
           "extension": f"not an image file name ({', '.join(exts)}), skipped", "special": "not a regular file, skipped"}
    files = []
    for p, skipped in folder_entries(folder, exts, ImageError):
        if skipped:
            warn(f"{p}: {why[skipped]}")
        else:
            files.append(p)
    if not files:
        raise UsageError(f"{folder}: no images ({', '.join(exts)}) in this folder")
    return files


def batch_outputs(files: list[Path], out_dir: Path, suffix: str = ".png") -> list[tuple[Path, Path]]:
    """(content file, output file) for each image of a batch: cat.jpg -> cat.png; when two share a
    stem, each keeps its extension in the name (cat.jpg, cat.png -> cat-jpg.png, cat-png.png). A
    name that two inputs still map to (x.png, x.jpg and x-jpg.png) is refused before any work,
    naming both: one result would silently replace the other. The sequential and the Ray batch
    both name their outputs here."""
    stems = [p.stem for p in files]
    pairs = [(p, out_dir / (f"{p.stem}{suffix}" if stems.count(p.stem) == 1 else f"{p.stem}-{p.suffix[1:]}{suffix}"))
             for p in files]
    seen: dict[str, Path] = {}
    for p, out in pairs:
        other = seen.setdefault(out.name, p)
        if other is not p:
            raise OutputError(f"{out}: both {other} and {p} would be written here; rename one of them "
                              "(nothing was run)")
    return pairs


def _check_snapshots(snap: Snapshots, targets: list[Target], sources: list[Source]) -> None:
    """Snapshots are many paths with one pattern: compare names in OUT's folder (and what is there)."""
    folder = resolved(_folder(snap.out))
    for other in [*sources, *[t for t in targets if t.flag != "--snapshots"]]:
        p = resolved(other.path)
        if p.parent == folder and snap.matches(p.name):
            what = getattr(other, "what", None) or getattr(other, "flag")
            raise OutputError(f"{other.path}: --snapshots would overwrite the {what} ({other.path}); "
                              "refusing")
    try:
        existing = [e for e in os.scandir(folder) if snap.matches(e.name)]
    except OSError:
        existing = []
    for e in existing:
        p = Path(_folder(snap.out)) / e.name
        st = _stat(p, "--snapshots")
        if st is not None and _kind(st.st_mode) is not None:
            raise OutputError(f"{p}: --snapshots names a {_kind(st.st_mode)}, not a regular file; refusing to "
                              "replace it")
        _refuse_link(p, "--snapshots")
        for s in sources:
            if same_file(p, s.path):
                raise OutputError(f"{p}: --snapshots would overwrite the {s.what} ({s.path}); refusing")


def check_image_output(out: Path, reads: Iterable[Path]) -> None:
    """The output image must be writable and must not be one of the files the run reads (the
    single-target form of check_writes, for callers with one image to write)."""
    check_writes([Target(Path(out), "-o", image=True)], [Source(Path(p), "input") for p in reads])
