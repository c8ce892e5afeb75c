"""Image I/O: load (EXIF, ICC, alpha, bombs, odd modes), resize, save atomically, sRGB-tagged.

Images inside the runtime are float32 arrays [H, W, 3], RGB in [0, 1], sRGB.
"""
from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from .errors import ImageError, OutputError

# Pillow's own guard against decompression bombs, made an error (it only warns below 2x).
MAX_PIXELS = 16384 * 16384
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

_SRGB = ImageCms.createProfile("sRGB")
_SRGB_BYTES = ImageCms.ImageCmsProfile(_SRGB).tobytes()


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
    except (OSError, ImageCms.PyCMSError, ValueError) as e:
        notes.append(f"{path}: ignored an unreadable ICC profile ({e})")
    return img


def load_image(path: str | Path, notes: list[str] | None = None) -> np.ndarray:
    """Read any Pillow-readable image as float32 RGB [H, W, 3] in [0, 1], sRGB, upright."""
    path = Path(path)
    notes = notes if notes is not None else []
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image")
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: empty file")
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise ImageError(f"{path}: {w}x{h} pixels is over the limit of {MAX_PIXELS} (possible image bomb)")
                im.load()
                img = im.copy()
                img.info = dict(im.info)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: refused as a possible image bomb ({e})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower() or isinstance(e, EOFError):
            raise ImageError(f"{path}: truncated or damaged image ({msg})") from None
        raise ImageError(f"{path}: cannot decode ({msg})") from None
    if img.width < 1 or img.height < 1:
        raise ImageError(f"{path}: image has no pixels")

    img = ImageOps.exif_transpose(img) or img  # phones store rotation in EXIF
    img = _to_srgb(img, path, notes)

    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        arr = arr / (65535.0 if arr.max() > 255 else 255.0)
        arr = np.repeat(arr[..., None], 3, axis=2)
        return np.clip(arr, 0.0, 1.0)
    if img.mode == "F":
        arr = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        if rgba.getchannel("A").getextrema()[0] < 255:
            notes.append(f"{path}: transparent pixels composited on white")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    img = img.convert("RGB")
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            kwargs = {"icc_profile": _SRGB_BYTES}
            if fmt == "JPEG":
                kwargs.update(quality=95, subsampling=0)
            img.save(f, format=fmt, **kwargs)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None
        raise
    return path
