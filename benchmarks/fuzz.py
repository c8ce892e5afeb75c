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

Two more targets hold the CLI to "no input reaches exit 1" (issue #10): `cli`, random command lines
over every flag (edge values, paths that are inputs, folders, FIFOs, /dev/null, names too long; most
with --dry-run, which runs every check, some for real at 48 px), and `checkpoint`, real checkpoints
with any field but the fingerprint changed, or their bytes damaged, resumed. Both call nst-ort's
main() in this process and also check that no input file changed.

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

from nst_ort.base.errors import NstError  # noqa: E402

COUNTS: dict[str, int] = {}
FAILURES: list[str] = []  # every failing call as first seen (before hypothesis shrinks or calls it flaky)


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
    from nst_ort.media.images import load_image

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
    from nst_ort.engine.artifacts import Artifacts
    from nst_ort.engine.config import Config, StyleInput
    from nst_ort.engine.stylize import resolve_weights

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
    from nst_ort.engine.onnx_scan import ScanError, external_data

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


# -- the CLI's flags and the checkpoint reader: the property is "never exit 1" ---------------------------
def _cli_call(argv: list[str]) -> tuple[int | str, str]:
    """nst-ort's main(argv) in this process: (exit code, stderr). Anything escaping main is a bug."""
    import contextlib

    from nst_ort.commands import cli

    import signal

    cli._said.clear()
    err = io.StringIO()
    env = dict(os.environ)
    sigterm = signal.getsignal(signal.SIGTERM)  # main() installs its own: a SIGTERM must still stop the fuzzer
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse: usage errors
            code = e.code if isinstance(e.code, int) else 2
        except BaseException as e:  # noqa: BLE001 - reported as the failure
            code = f"escaped {type(e).__name__}: {e}"
    os.environ.clear()
    os.environ.update(env)
    signal.signal(signal.SIGTERM, sigterm)
    return code, err.getvalue()


def _check_cli(argv: list[str], code, stderr: str, inputs: dict[Path, str]) -> None:
    assert code != 1 and not isinstance(code, str), (argv, code, stderr[-2000:])
    assert "Traceback" not in stderr and "internal error" not in stderr, (argv, stderr[-2000:])
    if code not in (0, 9, 141):
        assert stderr.strip().splitlines()[-1].startswith("nst-ort: error: "), (argv, stderr[-2000:])
    for path, digest in inputs.items():  # nothing the run reads is ever changed
        assert _digest(path) == digest, (argv, f"{path} changed")


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "-"


def _cli_folder(folder: Path) -> Path:
    d = folder / "cli"
    d.mkdir(exist_ok=True)
    for name, src in (("content.jpg", "chelsea_cat.jpg"), ("style.jpg", "starry_night.jpg"), ("b.png", "great_wave.jpg")):
        img = Image.open(ROOT / "examples" / src).convert("RGB")
        img.thumbnail((96, 96))
        img.save(d / name)
    Image.new("L", (96, 64), 255).save(d / "mask.png")
    (d / "dir").mkdir(exist_ok=True)
    (d / "notes.txt").write_text("not an image")
    (d / "photos").mkdir(exist_ok=True)
    shutil.copyfile(d / "content.jpg", d / "photos" / "a.jpg")
    (d / "photos" / "x.txt").write_text("x")
    if not (d / "fifo").exists():
        os.mkfifo(d / "fifo")
    if not (d / "link.png").exists():
        (d / "link.png").symlink_to(d / "content.jpg")
    (d / "ck.npz").write_bytes(b"PK\x03\x04 not really")
    return d


NUMBERS = ["0", "1", "2", "-1", "0.5", "nan", "inf", "-inf", "1e309", "1e-320", "3", "99999999999999999999", "",
           " ", "1,2", "abc", "0x10", "1e3", "-0"]
LISTS = ["32,48", "48", "32,,48", "48,", ",", "0,48", "48,32", "1,2,3", "nan,1", "-1,2", "2,0", "0"]
FLAG_VALUES = {
    "--size": NUMBERS + ["16", "48", "64", "100000"], "--iterations": NUMBERS, "--scales": LISTS,
    "--scale-iterations": LISTS, "--texture-size": ["48x32", "0x0", "64", "x", "64x", "-1x5", "1e3x2", "48X48"],
    "--content-weight": NUMBERS, "--style-weight": NUMBERS, "--tv-weight": NUMBERS, "--lr": NUMBERS,
    "--history": NUMBERS, "--seed": NUMBERS, "--style-scale": NUMBERS + ["0.01", "10"],
    "--threads": NUMBERS + ["1000"], "--save-every": NUMBERS,
    "--style-weights": LISTS + ["0,0", "1,1"], "--style-layers": ["relu1_1:1", "relu1_1:nan", "relu9_9:1", ":1",
                                                                 "relu1_1:1,relu1_1:2", "relu1_1", ",", "relu2_1:-1"],
    "--content-layer": ["relu4_2", "relu9_9", ""], "--init": ["content", "noise", "content.jpg", "missing.png",
                                                             "dir", "fifo", "notes.txt", ""],
    "--style-masks": ["mask.png", "mask.png,mask.png", ",", "missing.png", "fifo"],
    "--color": ["none", "luminance", "histogram", "x"], "--optimizer": ["lbfgs", "adam", "sgd"],
    "--preset": ["default", "neural-style", "paper", "x"], "--loop": ["auto", "host", "device", "x"],
    "--device": ["auto", "cpu", "cuda", "tpu"], "--precision": ["fp32", "tf32", "fp16"],
    "--provider": ["CPUExecutionProvider", "NoSuch"], "--model": ["dir", "missing", "notes.txt"],
}
PATHS = ["content.jpg", "style.jpg", "b.png", "mask.png", "out.png", "o.jpg", "x.xyz", "dir", "dir/o.png",
         "missing/o.png", "notes.txt", "fifo", "link.png", "/dev/null", "ck.npz", "a" * 300 + ".png", "photos",
         "photos/a.png", "r.json", "./content.jpg", "dir/../style.jpg", ""]
SWITCHES = ["--texture", "--average", "--snapshots", "--json", "--no-cache", "-q", "--info"]


def fuzz_cli(n: int, folder: Path, real_share: float = 0.1) -> None:
    """Random command lines over every flag (values at and past their edges, paths that are inputs,
    folders, FIFOs, device nodes, too long), most with --dry-run (which runs every check), a share
    for real at a tiny size: nst-ort must never reach exit 1, never print a traceback, and never
    change a file it reads."""
    d = _cli_folder(folder)
    home = os.getcwd()
    originals = {p: p.read_bytes() for p in d.rglob("*") if p.is_file() and not p.is_symlink() and p.suffix != ".npz"}
    flag = st.sampled_from(sorted(FLAG_VALUES)).flatmap(lambda f: st.tuples(st.just(f), st.sampled_from(FLAG_VALUES[f])))
    path_flag = st.tuples(st.sampled_from(["--report", "--checkpoint", "--resume", "-o"]), st.sampled_from(PATHS))

    def reads(images: list[str], pairs: list[tuple[str, str]]) -> dict[Path, str]:
        """The files this call reads (positional images, --init, --style-masks, --resume), resolved
        through links: what it must leave as it found them. Other files it may be asked to write."""
        named = list(images)
        for f, v in pairs:
            if f in ("--init", "--resume"):
                named.append(v)
            elif f == "--style-masks":
                named += v.split(",")
        out = {}
        for name in named:
            p = Path(name) if name.startswith("/") else d / name  # "" is the folder itself, as in the call
            try:
                if p.is_dir():
                    out.update({q.resolve(): _digest(q) for q in p.iterdir() if q.is_file()})
                elif p.is_file():
                    out[p.resolve()] = _digest(p)
            except OSError:
                pass
        return out

    @_settings(n)
    @given(st.lists(st.sampled_from(PATHS), min_size=0, max_size=3), st.lists(flag, max_size=6),
           st.lists(path_flag, max_size=3), st.lists(st.sampled_from(SWITCHES), max_size=2), st.floats(0, 1))
    def prop(images, flags, paths, switches, dice) -> None:
        COUNTS["cli"] = COUNTS.get("cli", 0) + 1
        argv = [*images, *[x for pair in flags + paths for x in pair], *switches]
        if "-o" not in argv and dice > 0.2:
            argv += ["-o", "out.png"]
        if dice > real_share:
            argv.append("--dry-run")
        else:  # for real, but small and short: the last value of a flag wins
            argv += ["--size", "48", "--iterations", "1", "--threads", "1", "-q"]
            argv = [a for a in argv if a not in ("--scales", "--scale-iterations", "--texture-size")] if "--scales" in argv else argv
        inputs = reads(images, flags + paths)
        os.chdir(d)
        try:
            code, err = _cli_call(argv)
        finally:
            os.chdir(home)
            for leftover in ("out.png", "o.jpg", "r.json"):
                (d / leftover).unlink(missing_ok=True)
        try:
            _check_cli(argv, code, err, inputs)
        except AssertionError as e:
            FAILURES.append(repr(e.args)[:3000])  # hypothesis may call it flaky and hide it: keep it
            raise
        finally:  # files a call was allowed to write (not its inputs) go back as they were for the next
            for path, data in originals.items():
                if not path.is_file() or path.is_symlink() or path.read_bytes() != data:
                    path.unlink(missing_ok=True)
                    path.write_bytes(data)
            if not (d / "link.png").is_symlink():
                (d / "link.png").unlink(missing_ok=True)
                (d / "link.png").symlink_to(d / "content.jpg")

    prop()


def _real_checkpoints(folder: Path) -> tuple[Path, list[tuple[list[str], Path]]]:
    """A folder with inputs and an L-BFGS and an Adam checkpoint made by the CLI (relative paths: the
    fingerprint holds them)."""
    d = _cli_folder(folder)
    made = []
    home = os.getcwd()
    os.chdir(d)
    try:
        for name, extra in (("lbfgs.npz", []), ("adam.npz", ["--optimizer", "adam"]), ("ms.npz", ["--scales", "32,48"])):
            argv = ["content.jpg", "style.jpg", "-o", "out.png", "--size", "48", "--iterations", "2", "--threads", "1",
                    "-q", *extra]
            code, err = _cli_call([*argv, "--checkpoint", name])
            assert code == 0, err
            made.append((argv, d / name))
    finally:
        os.chdir(home)
    return d, made


def _npz_parts(path: Path) -> tuple[dict, dict]:
    with np.load(path, allow_pickle=False) as z:
        return json.loads(bytes(z["__meta__"]).decode()), {k: z[k] for k in z.files if k != "__meta__"}


def fuzz_checkpoint(n: int, folder: Path, real_share: float = 0.15) -> None:
    """Checkpoints with their fingerprint kept and any other field changed (random JSON for settings,
    arrays of other shapes, dtypes and values, keys dropped), or their bytes damaged: --resume must
    give exit 0 or 2 (or 7 for a state that computes NaN), never 1."""
    d, made = _real_checkpoints(folder)
    inputs = {p: _digest(p) for p in (d / "content.jpg", d / "style.jpg")}
    target = d / "fuzzed.npz"
    ARRAY = st.one_of(
        st.sampled_from([np.zeros(0, np.float32), np.zeros((1, 3, 32, 48), np.float32), np.full(5, np.nan, np.float32),
                         np.zeros((2, 2), np.float64), np.arange(6, dtype=np.int64), np.array(["x"]),
                         np.zeros((1, 3, 48, 32), np.float32), np.ones((100, 3), np.float32)]),
        st.builds(lambda shape, v: np.full(shape, v, np.float32), st.lists(st.integers(0, 5), max_size=3).map(tuple),
                  st.floats(allow_nan=True, allow_infinity=True, width=32)))

    @st.composite
    def edited(draw):
        argv, source = draw(st.sampled_from(made))
        meta, arrays = _npz_parts(source)
        for _ in range(draw(st.integers(1, 3))):
            kind = draw(st.sampled_from(["meta", "array", "drop", "scalar"]))
            if kind == "meta":
                keys = [k for k in meta if k not in ("fingerprint",)]
                meta[draw(st.sampled_from(keys))] = draw(JSON)
            elif kind == "array" and arrays:
                arrays[draw(st.sampled_from(sorted(arrays)))] = draw(ARRAY)
            elif kind == "drop":
                keys = sorted(k for k in [*meta, *arrays] if k != "fingerprint")
                k = draw(st.sampled_from(keys))
                meta.pop(k, None)
                arrays.pop(k, None)
            else:
                keys = sorted(k for k, v in meta.items() if isinstance(v, (int, float)) and k != "format")
                if keys:
                    meta[draw(st.sampled_from(keys))] = draw(st.sampled_from([-1, 0, 1, 2, 3, 99, 2**63, 1.5, True]))
        buf = io.BytesIO()
        np.savez(buf, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
        data = buf.getvalue()
        if draw(st.integers(0, 9)) == 0:  # byte damage as well, now and then
            data = draw(mutated([data]))
        return argv, data

    @_settings(n)
    @given(edited(), st.floats(0, 1))
    def prop(case, dice) -> None:
        COUNTS["checkpoint"] = COUNTS.get("checkpoint", 0) + 1
        argv, data = case
        target.write_bytes(data)
        argv = [a if a != "2" else "3" for a in argv]  # one iteration more than the checkpoint's
        argv = [*argv, "--resume", target.name] + (["--dry-run"] if dice > real_share else [])
        home = os.getcwd()
        os.chdir(d)
        try:
            code, err = _cli_call(argv)
        finally:
            os.chdir(home)
        try:
            _check_cli(argv, code, err, inputs)
            assert code in (0, 2, 7), (code, err)
        except AssertionError as e:
            FAILURES.append(repr(e.args)[:3000])
            raise

    prop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=3000, help="inputs per target")
    p.add_argument("--targets", nargs="+", default=["images", "manifest", "onnx", "cli", "checkpoint"])
    p.add_argument("--memory-gib", type=float, default=4.0, help="RLIMIT_AS for this process")
    args = p.parse_args()
    limit = int(args.memory_gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    targets = {"images": fuzz_images, "manifest": fuzz_manifest, "onnx": fuzz_onnx, "cli": fuzz_cli,
               "checkpoint": fuzz_checkpoint}
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.targets:
            try:
                targets[name](args.examples, Path(tmp))
            except Exception as e:  # noqa: BLE001 - hypothesis re-raises the shrunk failure
                failed.append(name)
                print(f"{name}: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
                for sub in getattr(e, "exceptions", ()):
                    print(f"  {type(sub).__name__}: {sub}"[:3000], file=sys.stderr)
                for first in FAILURES[:3]:
                    print(f"  first seen: {first}", file=sys.stderr)
            print(f"{name}: {COUNTS.get(name, 0)} inputs tried", flush=True)
    print(f"total: {sum(COUNTS.values())} inputs tried, {len(failed)} target(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
