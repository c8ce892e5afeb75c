"""Where a run writes: checked before any work, so that a bad path costs nothing and loses nothing."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

from PIL import Image

from .errors import OutputError


def same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # also catches hard links and symlinks
    except OSError:
        return False


def probe_writable(out: Path, folder: Path) -> None:
    """Create and remove a file where the output will go: os.access says yes to root on read-only mounts."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OutputError(f"{out}: output folder {folder} is not writable ({e.strerror or e})") from None


def check_image_output(out: Path, reads: Iterable[Path]) -> None:
    """The output image must be writable and must not be one of the files the run reads."""
    for p in reads:
        if out.exists() and same_file(out, p):
            raise OutputError(f"{out}: output path is also an input ({p}); refusing to overwrite it")
    if out.exists() and out.is_dir():
        raise OutputError(f"{out}: is a directory; give an image file name")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{out}: output folder {folder} does not exist")
    if Image.registered_extensions().get(out.suffix.lower()) is None:
        raise OutputError(f"{out}: unknown image extension {out.suffix!r} (use .png, .jpg, .webp, .tif)")
    probe_writable(out, folder)
