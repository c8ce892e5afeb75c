"""Fuzz the image loader and the artifact (manifest + ONNX external-data) reader with hypothesis.

    python benchmarks/fuzz.py                     # default budget, a couple of minutes on one core
    python benchmarks/fuzz.py --examples 200      # per target, for a quick look

The property: for any bytes, `load_image` returns a float32 [H, W, 3] array in [0, 1] or raises an
NstError (one line for the user), and lets no Python warning through (stray lines on stderr); `Artifacts(folder)` plus everything the runtime then reads
(min_size, layer_info, resolve_weights) succeeds or raises an NstError. Anything else (a KeyError, a
struct.error from a decoder, a RecursionError) is a bug: hypothesis shrinks it and this script
exits non-zero. Inputs: random bytes; mutations (byte flips, cuts, splices) of small valid images in
nine formats with EXIF and ICC blocks; JSON mutations of the real manifest (values swapped for
random JSON, keys dropped); mutations of a real ONNX graph for the protobuf scanner.

The process runs under RLIMIT_AS (--memory-gib) so that a header asking for a huge image fails
with MemoryError (which must become OutOfMemory) instead of swapping. Prints the inputs tried per
target and in total; docs/errors.md records the last full run.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image, ImageCms  # noqa: E402

from nst_ort.errors import NstError  # noqa: E402

COUNTS: dict[str, int] = {}


def _settings(n: int):
    return settings(max_examples=n, deadline=None, database=None, derandomize=False,
                    suppress_health_check=list(HealthCheck))


# -- seeds ----------------------------------------------------------------------------------------
def image_seeds() -> list[bytes]:
    """Small valid files in the formats people send, with the metadata blocks the loader reads."""
    base = Image.open(ROOT / "examples" / "chelsea_cat.jpg").convert("RGB")
    base.thumbnail((24, 24))
    exif = Image.Exif()
    exif[0x0112] = 6
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = []
    for fmt, mode, kw in [("PNG", "RGB", {"icc_profile": icc}), ("PNG", "RGBA", {}), ("PNG", "P", {"transparency": 0}),
                          ("PNG", "I;16", {}), ("PNG", "LA", {}), ("JPEG", "RGB", {"exif": exif.tobytes()}),
                          ("JPEG", "CMYK", {}), ("JPEG", "L", {"icc_profile": icc}), ("GIF", "P", {}),
                          ("BMP", "RGB", {}), ("TIFF", "RGB", {}), ("TIFF", "I;16", {}), ("WEBP", "RGBA", {}),
                          ("ICO", "RGBA", {}), ("PPM", "RGB", {})]:
        img = base.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)
        buf = io.BytesIO()
        try:
            img.save(buf, format=fmt, **kw)
        except (OSError, KeyError, ValueError):  # a format this Pillow build lacks
            continue
        out.append(buf.getvalue())
    return out


def mutated(seeds: list[bytes]):
    """A seed with a few byte edits, possibly cut short or spliced with another seed."""
    @st.composite
    def build(draw):
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(0, 8))):
            kind = draw(st.sampled_from(["set", "insert", "delete", "cut", "splice", "big"]))
            if not data:
                break
            at = draw(st.integers(0, len(data) - 1))
            if kind == "set":
                data[at] = draw(st.integers(0, 255))
            elif kind == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=16))
            elif kind == "delete":
                del data[at:at + draw(st.integers(1, 16))]
            elif kind == "cut":
                del data[at:]
            elif kind == "splice":
                other = draw(st.sampled_from(seeds))
                data[at:] = other[draw(st.integers(0, len(other) - 1)):]
            else:  # a large number where sizes and lengths live
                data[at:at + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\xff\xff",
                                                        b"\x00\x01\x00\x00"]))
        return bytes(data)
    return build()


# -- targets --------------------------------------------------------------------------------------
def fuzz_images(n: int, folder: Path) -> None:
    from nst_ort.images import load_image

    seeds = image_seeds()
    path = folder / "input"

    @_settings(n)
    @given(st.one_of(st.binary(max_size=512), mutated(seeds)), st.sampled_from([".png", ".jpg", ".gif", ".tif"]))
    def prop(data: bytes, suffix: str) -> None:
        COUNTS["images"] = COUNTS.get("images", 0) + 1
        p = path.with_suffix(suffix)
        p.write_bytes(data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # a warning would be stray lines on the CLI's stderr
            try:
                arr = load_image(p)
            except NstError:
                arr = None
        assert not caught, [str(w.message) for w in caught]
        if arr is None:
            return
        assert arr.dtype == np.float32 and arr.ndim == 3 and arr.shape[2] == 3, arr.shape
        assert np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0

    prop()


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


def _model_folder(folder: Path) -> tuple[Path, dict]:
    """A copy of the default model with weights.bin cut to 1 MiB (hashes fixed), so that verify is quick."""
    model = folder / "model"
    shutil.copytree(ROOT / "models" / "vgg16", model)
    import hashlib

    data = (model / "weights.bin").read_bytes()[: 1 << 20]
    (model / "weights.bin").write_bytes(data)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["files"]["weights.bin"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    return model, manifest


def _paths(obj, prefix=()):
    """Every (path) into a JSON value, for picking what to replace."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def fuzz_manifest(n: int, folder: Path) -> None:
    from nst_ort.artifacts import Artifacts
    from nst_ort.config import Config, StyleInput
    from nst_ort.stylize import resolve_weights

    model, manifest = _model_folder(folder)
    paths = [p for p in _paths(manifest) if p]

    @st.composite
    def edited(draw):
        m = json.loads(json.dumps(manifest))
        for _ in range(draw(st.integers(1, 4))):
            path = draw(st.sampled_from(paths))
            parent = m
            try:
                for key in path[:-1]:
                    parent = parent[key]
                if draw(st.booleans()) and isinstance(parent, dict):
                    parent.pop(path[-1], None)
                else:
                    parent[path[-1]] = draw(JSON)
            except (KeyError, IndexError, TypeError):
                pass
        return json.dumps(m)

    text = st.one_of(edited(), JSON.map(json.dumps), st.text(max_size=64), st.just("[" * 5000))

    @_settings(n)
    @given(text)
    def prop(manifest_text: str) -> None:
        COUNTS["manifest"] = COUNTS.get("manifest", 0) + 1
        (model / "manifest.json").write_text(manifest_text)
        try:
            a = Artifacts(model)
            _ = a.min_size, a.max_stride, a.layer_info, a.content_layers, a.style_layers
            resolve_weights(Config(content=Path("c.png"), styles=[StyleInput(Path("s.png"))]), a)
        except NstError:
            return

    prop()


def fuzz_onnx(n: int, folder: Path) -> None:
    from nst_ort.onnx_scan import ScanError, external_data

    seed = (ROOT / "models" / "vgg16" / "eval.onnx").read_bytes()

    @_settings(n)
    @given(st.one_of(st.binary(max_size=256), mutated([seed])))
    def prop(data: bytes) -> None:
        COUNTS["onnx"] = COUNTS.get("onnx", 0) + 1
        try:
            entries = external_data(data)
        except ScanError:
            return
        assert all(isinstance(e["location"], str) for e in entries)

    prop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=3000, help="inputs per target")
    p.add_argument("--targets", nargs="+", default=["images", "manifest", "onnx"])
    p.add_argument("--memory-gib", type=float, default=4.0, help="RLIMIT_AS for this process")
    args = p.parse_args()
    limit = int(args.memory_gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    targets = {"images": fuzz_images, "manifest": fuzz_manifest, "onnx": fuzz_onnx}
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.targets:
            try:
                targets[name](args.examples, Path(tmp))
            except Exception as e:  # noqa: BLE001 - hypothesis re-raises the shrunk failure
                failed.append(name)
                print(f"{name}: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            print(f"{name}: {COUNTS.get(name, 0)} inputs tried", flush=True)
    print(f"total: {sum(COUNTS.values())} inputs tried, {len(failed)} target(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
