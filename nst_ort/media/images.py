"""Image I/O: load (EXIF, ICC, alpha, bombs, odd modes), resize, save atomically, sRGB-tagged.

Images inside the runtime are float32 arrays [H, W, 3], RGB in [0, 1], sRGB.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from ..base.atomic import atomic_write
from ..base.errors import ImageError, OutOfMemory, OutputError, too_many_files

# Pillow's own guard against decompression bombs, made an error (it only warns below 2x).
MAX_PIXELS = 16384 * 16384
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

_SRGB = ImageCms.createProfile("sRGB")


def _fixed_profile_bytes(profile) -> bytes:
    """littleCMS stamps the creation time into the header: fix it (and clear the profile ID, which
    covers it) so that the same image gives the same bytes in every run."""
    b = bytearray(ImageCms.ImageCmsProfile(profile).tobytes())
    b[24:36] = bytes([0x07, 0xE6, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0])  # 2022-01-01 00:00:00
    b[84:100] = bytes(16)
    return bytes(b)


_SRGB_BYTES = _fixed_profile_bytes(_SRGB)


def _to_srgb(img: Image.Image, path: Path, notes: list[str]) -> Image.Image:
    icc = img.info.get("icc_profile")
    if not icc:
        return img
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        name = ImageCms.getProfileDescription(src).strip()
        if "srgb" in name.lower():
            return img
        mode = "RGB" if img.mode not in ("RGB", "RGBA", "CMYK", "L") else img.mode
        if img.mode != mode:
            img = img.convert(mode)
        out_mode = "RGBA" if mode == "RGBA" else "RGB"
        img = ImageCms.profileToProfile(img, src, _SRGB, outputMode=out_mode)
        notes.append(f"{path}: converted from ICC profile '{name}' to sRGB")
    except Exception as e:  # noqa: BLE001 - a broken profile must not lose the image: use the pixels as they are
        notes.append(f"{path}: ignored an unreadable ICC profile ({str(e) or type(e).__name__})")
    return img


def _bomb_error(path: Path, e: Exception) -> ImageError:
    # Pillow refuses before decoding; its message holds the pixel count.
    found = re.search(r"\((\d+) pixels\)", str(e))
    count = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return ImageError(f"{path}: {count} is over the limit of {MAX_PIXELS:,} (possible image bomb); refused")


@contextlib.contextmanager
def _pillow_errors(path: Path, decoding: bool):
    """Pillow's failures while opening `path` as one-line errors naming it (docs/errors.md): while
    decoding the pixels (load_image), or reading the header only (probe_image), where truncation
    does not show yet."""
    try:
        yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _bomb_error(path, e) from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (no format Pillow reads recognizes it)") from None
    except MemoryError:
        what = "decoding this image" if decoding else "reading this image's header"
        raise OutOfMemory(f"{path}: out of memory while {what}") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except Exception as e:  # noqa: BLE001 - damaged files make decoders raise anything (struct.error, IndexError...)
        if too_many_files(e):  # ulimit -n reached (a decoder's module imported late): not the image's fault
            raise OutOfMemory(f"{path}: {too_many_files(e)}") from None
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        if decoding and ("truncated" in msg.lower() or isinstance(e, EOFError)):
            raise ImageError(f"{path}: truncated or damaged image ({msg})") from None
        raise ImageError(f"{path}: damaged or unsupported image ({msg})") from None


def _open(path: Path) -> Image.Image:
    """Decode the whole file (so that damage shows here); every decoder failure is an ImageError."""
    with _pillow_errors(path, decoding=True), Image.open(path) as im:
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise ImageError(f"{path}: {w}x{h} = {w * h:,} pixels is over the limit of {MAX_PIXELS:,} "
                             "(possible image bomb); refused")
        im.load()
        img = im.copy()
        img.info = dict(im.info)
    if img.width < 1 or img.height < 1:
        raise ImageError(f"{path}: image has no pixels")
    return img


def _upright(img: Image.Image, path: Path, notes: list[str]) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img) or img  # phones store rotation in EXIF
    except Exception as e:  # noqa: BLE001 - a damaged EXIF block: keep the pixels as stored
        notes.append(f"{path}: ignored an unreadable EXIF orientation ({str(e) or type(e).__name__})")
        return img


def _sixteen_bit(img: Image.Image) -> np.ndarray | None:
    """Gray 16-bit (I;16*) and 32-bit integer images as float gray in [0, 1]; None for other modes."""
    if img.mode.startswith("I;16"):
        return np.asarray(img, dtype=np.float32) / 65535.0  # always the full 16-bit range, even if dark
    if img.mode == "I":
        arr = np.asarray(img, dtype=np.float32)
        # Mode I holds 16-bit PNG/TIFF samples in most files; 8-bit data only when nothing exceeds 255.
        return arr / (65535.0 if arr.max() > 255 else 255.0)
    if img.mode == "F":
        return np.asarray(img, dtype=np.float32)
    return None


def _check_file(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as e:  # ENAMETOOLONG, ELOOP, EACCES on a folder on the way
        raise ImageError(f"{path}: cannot read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{path}: is a directory, not an image")
    if not stat.S_ISREG(st.st_mode):
        # A FIFO would block the open until someone writes to it; a device node is no image file.
        raise ImageError(f"{path}: not a regular file (a FIFO, socket or device)")
    if st.st_size == 0:
        raise ImageError(f"{path}: empty file")


@dataclasses.dataclass(frozen=True)
class Probe:
    """What an image file declares, read without decoding its pixels."""

    path: Path
    width: int  # upright (EXIF orientation applied)
    height: int
    format: str

    @property
    def pixels(self) -> int:
        return self.width * self.height


def probe_image(path: str | Path) -> Probe:
    """The upright size an image declares, from its header (Pillow opens lazily): what decoding it
    will cost is known before it is decoded. The same ImageErrors as load_image for files that are
    missing, empty, not images or bombs; damage inside the pixel data shows only when decoding."""
    path = Path(path)
    _check_file(path)
    with _pillow_errors(path, decoding=False), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            w, h, fmt = im.size[0], im.size[1], im.format or "?"
            try:
                orientation = im.getexif().get(0x0112)
            except Exception:  # noqa: BLE001 - damaged EXIF: load_image ignores it too
                orientation = None
    if w < 1 or h < 1:
        raise ImageError(f"{path}: image has no pixels")
    if w * h > MAX_PIXELS:
        raise ImageError(f"{path}: {w}x{h} = {w * h:,} pixels is over the limit of {MAX_PIXELS:,} "
                         "(possible image bomb); refused")
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: load_image's exif_transpose swaps them
        w, h = h, w
    return Probe(path, w, h, fmt)


def load_image(path: str | Path, notes: list[str] | None = None) -> np.ndarray:
    """Read any Pillow-readable image as float32 RGB [H, W, 3] in [0, 1], sRGB, upright.

    Every failure is an ImageError naming the file; conversions worth knowing about are appended
    to `notes` (the CLI prints each once).
    """
    path = Path(path)
    notes = notes if notes is not None else []
    _check_file(path)
    with warnings.catch_warnings(record=True) as caught:
        # Pillow warns (on stderr, several lines) about damaged metadata it skips: one note instead.
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = _upright(_open(path), path, notes)
    if caught:
        more = f" (and {len(caught) - 1} more)" if len(caught) > 1 else ""
        notes.append(f"{path}: {str(caught[0].message).strip()}{more}")
    gray, icc = _sixteen_bit(img), img.info.get("icc_profile")
    if gray is not None and icc:
        # lcms has no 16-bit gray path here: go through 8 bits so that the profile still applies.
        img = Image.fromarray(np.clip(gray * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
        img.info["icc_profile"] = icc
        gray = None
    if gray is not None:
        return np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=2)
    img = _to_srgb(img, path, notes)
    try:
        if img.mode in ("RGBA", "LA", "PA", "RGBa") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            if rgba.getchannel("A").getextrema()[0] < 255:
                notes.append(f"{path}: transparent pixels composited on white")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(white, rgba)
        img = img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageError(f"{path}: unsupported color mode {img.mode} ({e})") from None
    return np.asarray(img, dtype=np.float32) / 255.0


def load_mask(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """A grayscale mask resized to (width, height), float32 [H, W] in [0, 1]."""
    rgb = load_image(path)
    gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return resize(gray[..., None].repeat(3, axis=2), size)[..., 0]


def fit_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(w, h) with the long side set to `long_side`, aspect kept."""
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize float RGB [H, W, 3] to (width, height) with Lanczos, per channel in float."""
    w, h = size
    if arr.shape[1] == w and arr.shape[0] == h:
        return arr.astype(np.float32, copy=True)
    chans = [np.asarray(Image.fromarray(arr[..., c].astype(np.float32), mode="F").resize((w, h), Image.Resampling.LANCZOS))
             for c in range(arr.shape[2])]
    return np.stack(chans, axis=2).astype(np.float32)


def to_uint8(arr: np.ndarray) -> np.ndarray:
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_image(arr: np.ndarray, path: str | Path) -> Path:
    """Write atomically: a temporary file in the same folder, fsync, rename. Tagged sRGB."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{path}: output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"{path}: output folder {folder} is not writable")
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise OutputError(f"{path}: unknown image extension {path.suffix!r} (use .png, .jpg, .webp, .tif)")
    img = Image.fromarray(to_uint8(arr), mode="RGB")
    kwargs = {"icc_profile": _SRGB_BYTES}
    if fmt == "JPEG":
        kwargs.update(quality=95, subsampling=0)
    try:
        atomic_write(path, lambda f: img.save(f, format=fmt, **kwargs))
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None
    return path
