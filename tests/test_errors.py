"""Bad input and faults, through the real CLI in a subprocess (torch blocked there).

Each case: the exit code (nst_ort/base/errors.py, docs/errors.md), one line on stderr that names the
file and the problem, no traceback, and every file that was in the folder before is still there,
unchanged (only the declared output may change; no temporary files are left behind).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import time
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image, ImageCms

from conftest import DEFAULT_MODEL, EXAMPLES, cli_command, cli_env, run_cli

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
# Small and quick: 64 px, two iterations, one thread, no progress line (stderr holds only our lines).
FAST = ["--size", "64", "--iterations", "2", "--threads", "1", "-q"]
MIN_SIDE = 16  # VGG16's four poolings (Artifacts.min_size)


# -- inputs ---------------------------------------------------------------------------------------
def _photo(name: str = "chelsea_cat.jpg", long_side: int = 96) -> Image.Image:
    img = Image.open(EXAMPLES / name).convert("RGB")
    img.thumbnail((long_side, long_side))
    return img


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, depth: int, color: int, rows: bytes) -> bytes:
    """A PNG by hand: for headers Pillow would refuse to write (bombs, 16-bit RGB)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(rows))
            + _png_chunk(b"IEND", b""))


def _rgb16_png(img: Image.Image) -> bytes:
    arr = np.asarray(img, dtype=np.uint16) * 257
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in arr)
    return _png(img.width, img.height, 16, 2, rows)


def _swapped_profile() -> bytes:
    """A valid RGB ICC profile that is not sRGB: sRGB with red and blue primaries swapped, renamed."""
    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    count = struct.unpack(">I", data[128:132])[0]
    tags = {bytes(data[132 + 12 * i:136 + 12 * i]): 132 + 12 * i for i in range(count)}
    r, b = tags[b"rXYZ"], tags[b"bXYZ"]
    data[r + 4:r + 12], data[b + 4:b + 12] = data[b + 4:b + 12], data[r + 4:r + 12]
    data[84:100] = bytes(16)  # profile ID (MD5) now unknown
    name = "sRGB".encode("utf-16-be")
    at = data.index(name)
    data[at:at + len(name)] = "Swap".encode("utf-16-be")
    return bytes(data)


def _hash_tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _model_copy(d: Path) -> Path:
    model = d / "model"
    shutil.copytree(DEFAULT_MODEL, model)  # real copies: tampering must never reach the repo's model
    return model


def _rehash(model: Path, name: str) -> None:
    """Make manifest.json agree with a changed file, so the check under test is not the sha256 one."""
    mpath = model / "manifest.json"
    m = json.loads(mpath.read_text())
    data = (model / name).read_bytes()
    m["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    mpath.write_text(json.dumps(m, indent=1))


def _edit_manifest(model: Path, edit: Callable[[dict], None]) -> None:
    mpath = model / "manifest.json"
    m = json.loads(mpath.read_text())
    edit(m)
    mpath.write_text(json.dumps(m, indent=1))


def _valid_image(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return im.copy()


# -- the table ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    name: str
    setup: Callable[[Path], list]  # builds files in the folder; returns the CLI arguments
    code: int
    message: str  # regex searched in the error line
    names: str | None = "{content}"  # the file the line must name ({d}, {content}, {style}, {out}, {model})
    changes: tuple[str, ...] = ()  # files that may change (relative to the folder)
    check: Callable[[Path, subprocess.CompletedProcess], None] | None = None
    preexec: Callable[[], None] | None = None
    prelude: str = ""
    env: dict | None = None


def _args(d: Path, content="content.jpg", style="style.jpg", out="out.png", *extra) -> list:
    return [d / content, d / style, "-o", d / out, *FAST, *extra]


def _with(name: str, data: bytes | Callable[[Path], None], *, role: str = "content") -> Callable[[Path], list]:
    """Setup: write `name` (bytes, or a function that writes d/name) and use it as content or style."""
    def setup(d: Path) -> list:
        if callable(data):
            data(d / name)
        else:
            (d / name).write_bytes(data)
        return _args(d, content=name) if role == "content" else _args(d, style=name)
    return setup


def _save(mode: str | None = None, fmt: str | None = None, **kw) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        img = _photo()
        img = img.convert(mode) if mode else img
        img.save(path, format=fmt, **kw)
    return write


def _rgba(path: Path) -> None:
    img = _photo().convert("RGBA")
    img.putalpha(Image.linear_gradient("L").resize(img.size))
    img.save(path)


def _palette(path: Path) -> None:
    img = _photo().convert("P")
    img.save(path, transparency=0)


def _gray16(path: Path) -> None:
    Image.fromarray(np.asarray(_photo().convert("L"), np.uint16) * 257).save(path)


def _exif_rotated(path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    _photo().save(path, exif=exif.tobytes())  # stored landscape 96x64


def _icc(path: Path) -> None:
    _photo().save(path, icc_profile=_swapped_profile())


def _output_is(width: int, height: int):
    def check(d: Path, r) -> None:
        img = _valid_image(d / "out.png")
        assert img.size == (width, height)
    return check


def _output_srgb(d: Path, r) -> None:
    img = _valid_image(d / "out.png")
    desc = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(__import__("io").BytesIO(img.info["icc_profile"])))
    assert "sRGB" in desc


def _one_warning(pattern: str):
    def check(d: Path, r) -> None:
        warnings = [line for line in r.stderr.splitlines() if "warning" in line]
        assert len(warnings) == 1 and re.search(pattern, warnings[0]), r.stderr
        _valid_image(d / "out.png")
    return check


def _no_warning(d: Path, r) -> None:
    assert r.stderr.strip() == "", r.stderr
    _valid_image(d / "out.png")


def _unwritable(d: Path) -> list:
    folder = d / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root writes through permission bits: make the folder immutable instead
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr: cannot make an unwritable folder")
    return _args(d, out="locked/out.png")


def _same_as_content(d: Path) -> list:
    return _args(d, out="content.jpg")


def _hardlink_to_style(d: Path) -> list:
    os.link(d / "style.jpg", d / "style-link.jpg")
    return _args(d, out="style-link.jpg")


AS_LIMIT = 1400 << 20  # room for Python + onnxruntime + the sessions (~550 MB) and a small run


def _address_space_limit():
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def _file_size_limit():
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))  # a disk with no room: the probe before the run fails


def _file_size_limit_100k():
    # The probe before the run (64 KiB) fits, the 384 px PNG (~95 KB) does not: a disk that fills mid-write.
    resource.setrlimit(resource.RLIMIT_FSIZE, (80 << 10, 80 << 10))


def _artifact(tamper: Callable[[Path], None]) -> Callable[[Path], list]:
    def setup(d: Path) -> list:
        model = _model_copy(d)
        tamper(model)
        return [*_args(d), "--model", model]
    return setup


def _truncate(model: Path) -> None:
    data = (model / "weights.bin").read_bytes()
    (model / "weights.bin").write_bytes(data[: len(data) // 2])


def _flip_byte(model: Path) -> None:
    data = bytearray((model / "weights.bin").read_bytes())
    data[1000] ^= 0xFF
    (model / "weights.bin").write_bytes(bytes(data))


def _external_data(location: bytes) -> Callable[[Path], None]:
    def tamper(model: Path) -> None:
        graph = (model / "train.onnx").read_bytes()
        assert len(location) == len(b"weights.bin") and b"weights.bin" in graph  # same length: protobuf stays valid
        (model / "train.onnx").write_bytes(graph.replace(b"weights.bin", location))
        _rehash(model, "train.onnx")
    return tamper


def _other_backbone(model: Path) -> None:
    # tests/data/vgg11_relu2_1_train.onnx: `python -m nst_ort_export --backbone vgg11 --weights random
    # --style-layers relu1_1,relu2_1 --content-layers relu2_1`, its train.onnx only.
    shutil.copyfile(DATA / "vgg11_relu2_1_train.onnx", model / "train.onnx")
    _rehash(model, "train.onnx")


def _other_weights(model: Path) -> None:
    data = (model / "weights.bin").read_bytes()
    (model / "weights.bin").write_bytes(data[: len(data) // 3])  # a smaller network's weights, hashes fixed
    _rehash(model, "weights.bin")


def _drop_project(m: dict) -> None:
    del m["optimizers"]["lbfgs"]["project"]


def _schema(m: dict) -> None:
    m["schema_version"] = 99


def _batch(d: Path) -> list:
    folder = d / "batch"
    folder.mkdir()
    _photo().save(folder / "a.jpg")
    (folder / "b.jpg").write_text("not an image\n")
    _photo("coffee.jpg").save(folder / "c.png")
    (d / "results").mkdir()
    return [folder, d / "style.jpg", "-o", d / "results", *FAST]


def _batch_results(d: Path, r) -> None:
    assert sorted(p.name for p in (d / "results").iterdir()) == ["a.png", "c.png"]
    skipped = [line for line in r.stderr.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and str(d / "batch" / "b.jpg") in skipped[0]
    assert r.stderr.strip().splitlines()[-1] == "nst-ort: 1 of 3 image(s) failed"


def _finite_then_nan_written(d: Path, r) -> None:
    _valid_image(d / "out.png")


# Stand-ins for hardware this machine lacks: an NVIDIA driver without a CUDA build of onnxruntime,
# and onnxruntime-gpu whose CUDA provider is listed but cannot be used (no driver or cuDNN): the CPU
# build then places the sessions on the CPU, as the GPU build does when its provider fails.
FAKE_GPU = "import nst_ort.engine.providers as _p; _p._gpu_present = lambda: True; "
FAKE_CUDA = ("import onnxruntime as _o; "
             "_o.get_available_providers = lambda: ['CUDAExecutionProvider', 'CPUExecutionProvider']; ")

CASES = [
    # images: refused (3)
    Case("missing-content", lambda d: _args(d, content="nope.jpg"), 3, "no such file", "{d}/nope.jpg"),
    Case("missing-style", lambda d: _args(d, style="nope.png"), 3, "no such file", "{d}/nope.png"),
    Case("directory-style", lambda d: (d / "dir.jpg").mkdir() or _args(d, style="dir.jpg"), 3, "is a directory",
         "{d}/dir.jpg"),
    Case("empty-file", _with("empty.jpg", b""), 3, "empty file", "{d}/empty.jpg"),
    Case("truncated-jpeg", _with("cut.jpg", (EXAMPLES / "chelsea_cat.jpg").read_bytes()[:20000]), 3, "truncated",
         "{d}/cut.jpg"),
    Case("text-named-jpg", _with("notes.jpg", b"shopping list: eggs\n"), 3, "not an image", "{d}/notes.jpg"),
    Case("image-bomb", _with("bomb.png", _png(50000, 50000, 8, 2, b"\0" * 64)), 3, "image bomb", "{d}/bomb.png"),
    Case("too-small", _with("strip.png", lambda p: Image.new("RGB", (400, 10), "gray").save(p)), 3,
         f"at least {MIN_SIDE} px", "{d}/strip.png"),
    Case("style-too-small", lambda d: _args(d, "content.jpg", "style.jpg", "out.png", "--style-scale", "0.1"), 3,
         f"minimum of {MIN_SIDE} px", "{style}"),
    # images: converted (0)
    Case("cmyk", _with("cmyk.jpg", _save("CMYK")), 0, "", None, ("out.png",), _no_warning),
    Case("rgba-said-once", lambda d: _rgba(d / "a.png") or _args(d, "a.png", "a.png"), 0, "", None, ("out.png",),
         _one_warning(r"a\.png: transparent pixels composited on white")),
    Case("la", _with("la.png", _save("LA")), 0, "", None, ("out.png",), _no_warning),
    Case("palette-alpha", _with("p.png", _palette), 0, "", None, ("out.png",), _one_warning("composited on white")),
    Case("gray", _with("gray.jpg", _save("L")), 0, "", None, ("out.png",), _no_warning),
    Case("gray-16-bit", _with("g16.png", _gray16), 0, "", None, ("out.png",), _no_warning),
    Case("rgb-16-bit", _with("rgb16.png", _rgb16_png(_photo())), 0, "", None, ("out.png",), _no_warning),
    Case("exif-orientation", _with("exif.jpg", _exif_rotated), 0, "", None, ("out.png",), _output_is(43, 64)),
    Case("icc-profile", _with("icc.jpg", _icc), 0, "", None, ("out.png",),
         lambda d, r: (_one_warning(r"icc\.jpg: converted from ICC profile 'Swap")(d, r), _output_srgb(d, r))),
    # output (8)
    Case("unwritable-folder", _unwritable, 8, "not writable", "{d}/locked/out.png"),
    Case("missing-folder", lambda d: _args(d, out="no/such/out.png"), 8, "does not exist", "{d}/no/such/out.png"),
    Case("output-is-content", _same_as_content, 8, "also an input", "{content}"),
    Case("output-is-style-hardlink", _hardlink_to_style, 8, "also an input", "{d}/style-link.jpg"),
    Case("unknown-extension", lambda d: _args(d, out="out.xyz"), 8, "unknown image extension", "{d}/out.xyz"),
    Case("disk-full-before-the-run", _args, 8, "cannot write", "{out}", preexec=_file_size_limit),
    Case("disk-full-while-writing", lambda d: [*_args(d), "--size", "384", "--iterations", "1"], 8, "cannot write",
         "{out}", preexec=_file_size_limit_100k),
    # artifacts (4)
    Case("model-missing", lambda d: [*_args(d), "--model", d / "nomodel"], 4, "does not exist", "{d}/nomodel"),
    Case("weights-missing", _artifact(lambda m: (m / "weights.bin").unlink()), 4, "missing",
         "{model}/weights.bin"),
    Case("weights-truncated", _artifact(_truncate), 4, "sha256 mismatch", "{model}/weights.bin"),
    Case("weights-tampered", _artifact(_flip_byte), 4, "sha256 mismatch", "{model}/weights.bin"),
    Case("manifest-not-json", _artifact(lambda m: (m / "manifest.json").write_text("{oops")), 4, "not valid JSON",
         "{model}/manifest.json"),
    Case("schema-version", _artifact(lambda m: _edit_manifest(m, _schema)), 4, "unknown schema_version 99",
         "{model}/manifest.json"),
    Case("external-data-parent", _artifact(_external_data(b"../../x.bin")), 4, "outside the model folder; refused",
         "{model}/train.onnx"),
    Case("external-data-absolute", _artifact(_external_data(b"/etc/passwd")), 4, "outside the model folder; refused",
         "{model}/train.onnx"),
    Case("graph-from-other-backbone", _artifact(_other_backbone), 4, "another backbone", "{model}/train.onnx"),
    Case("weights-from-other-export", _artifact(_other_weights), 4, "another export", "{model}/"),
    Case("optimizer-graph-missing", _artifact(lambda m: _edit_manifest(m, _drop_project)), 4,
         "optimizers.lbfgs must name the graphs pair, project, direction", "{model}/manifest.json"),
    Case("loop-device-without-optimizer-graphs",
         lambda d: [*_artifact(lambda m: _edit_manifest(m, lambda x: x.pop("optimizers")))(d), "--loop", "device"],
         2, "no lbfgs optimizer graphs.*use --loop host", "{model}"),
    # device (5)
    Case("cuda-unavailable", lambda d: [*_args(d), "--device", "cuda"], 5, "CUDA was asked for", None),
    Case("unknown-provider", lambda d: [*_args(d), "--provider", "NoSuchExecutionProvider"], 5, "not available",
         None),
    Case("auto-falls-back-once", lambda d: [*_args(d), "--device", "auto"], 0, "", None, ("out.png",),
         _one_warning("running on the CPU"), prelude=FAKE_GPU),
    Case("cuda-listed-but-unusable", lambda d: [*_args(d), "--device", "cuda"], 5, "could not be used",
         "eval.onnx", prelude=FAKE_CUDA),
    Case("auto-falls-back-when-cuda-unusable", lambda d: [*_args(d), "--device", "auto"], 0, "", None,
         ("out.png",), _one_warning("could not be used.*; running on the CPU"), prelude=FAKE_CUDA),
    # out of memory (6): host memory, estimated before the run
    Case("size-beyond-memory", lambda d: [*_args(d), "--size", "40000"], 6, r"the largest size that fits is about "
         r"--size \d+", "{content}"),
    Case("allocation-fails-without-estimate", lambda d: [*_args(d), "--size", "1024"], 6, "out of memory",
         "{content}", preexec=_address_space_limit, env={"NST_ORT_MEMORY_CHECK": "0"}),
    # numerical (7)
    Case("nan-keeps-last-finite", lambda d: [*_args(d), "--optimizer", "adam", "--lr", "1e30", "--iterations", "5"],
         7, "not finite .* at iteration 2; stopped and wrote the last finite image", "{out}", ("out.png",),
         _finite_then_nan_written),
    Case("inf-at-first-iteration", lambda d: [*_args(d), "--style-weight", "1e38"], 7,
         "at iteration 1; stopped before any finite image, nothing written", "{out}"),
    # batch (9)
    Case("batch-skips-bad-file", _batch, 9, "", None, check=_batch_results),
    # usage (2)
    Case("no-style", lambda d: [d / "content.jpg", "-o", d / "out.png", *FAST], 2, "at least one style image", None),
    Case("bad-flag-value", lambda d: [*_args(d), "--size", "big"], 2, "argument --size: expected an integer, got .big.", None),
]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    _photo().save(d / "content.jpg")
    _photo("starry_night.jpg").save(d / "style.jpg")
    Image.new("RGB", (20, 20), "red").save(d / "out.png")  # a previous result that must survive failures
    yield d
    for p in d.rglob("*"):  # undo chattr/chmod so that pytest can clean up
        if p.is_dir():
            subprocess.run(["chattr", "-i", str(p)], capture_output=True)
            p.chmod(0o755)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_error_case(case: Case, folder: Path) -> None:
    d = folder
    args = case.setup(d)
    before = _hash_tree(d)
    r = run_cli(args, prelude=case.prelude, preexec_fn=case.preexec, env=case.env, timeout=120)
    after = _hash_tree(d)

    assert r.returncode == case.code, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    if case.code not in (0, 9):
        assert len(lines) == 1, r.stderr
        line = lines[0]
        assert line.startswith("nst-ort: error: ") and re.search(case.message, line), line
        if case.names:
            named = case.names.format(d=d, content=d / "content.jpg", style=d / "style.jpg", out=d / "out.png",
                                      model=d / "model")
            assert named in line, line
    for name, digest in before.items():
        assert name in after, f"{name} was removed"
        assert name in case.changes or after[name] == digest, f"{name} was changed"
    assert not [n for n in after if n.endswith(".tmp")], "temporary files left behind"
    if case.check:
        case.check(d, r)


def test_debug_shows_traceback(folder: Path) -> None:
    r = run_cli([*_args(folder, content="nope.jpg"), "--debug"], timeout=120)
    assert r.returncode == 3 and "Traceback" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("nst-ort: error: ")


# -- out of memory under an address-space limit (ulimit -v) ---------------------------------------
def test_out_of_memory_under_rlimit_as_names_a_size_that_fits(folder: Path) -> None:
    d = folder
    before = _hash_tree(d)
    r = run_cli([*_args(d), "--size", "2048"], preexec_fn=_address_space_limit, timeout=120)
    assert r.returncode == 6, r.stderr
    line, = r.stderr.strip().splitlines()
    assert str(d / "content.jpg") in line and "RLIMIT_AS" in line and "Traceback" not in r.stderr
    fits = int(re.search(r"--size (\d+)", line).group(1))
    assert MIN_SIDE <= fits < 2048
    assert _hash_tree(d) == before

    # The size it names does fit under the same limit (and the default L-BFGS history).
    r = run_cli([*_args(d), "--size", str(fits)], preexec_fn=_address_space_limit, timeout=300)
    assert r.returncode == 0, r.stderr
    assert max(_valid_image(d / "out.png").size) == fits


# -- signals: Ctrl-C, SIGTERM, SIGKILL ------------------------------------------------------------
def _start_long_run(d: Path, out: Path) -> subprocess.Popen:
    args = [d / "content.jpg", d / "style.jpg", "-o", out, "--size", "64", "--iterations", "100000",
            "--threads", "1", "-q", "--save-every", "1"]
    # Ctrl-C reaches Python only if SIGINT is not ignored, as it is for background jobs of a script.
    return subprocess.Popen(cli_command(args), cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() - t0 < timeout, "no intermediate image written"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_writes_current_image(folder: Path, sig) -> None:
    out = folder / "live.png"
    proc = _start_long_run(folder, out)
    try:
        _wait_for(out, proc)
        time.sleep(0.3)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    line, = err.strip().splitlines()
    assert re.match(rf"nst-ort: {re.escape(str(out))}: interrupted at iteration \d+; wrote the current image", line)
    assert _valid_image(out).size == (64, 43)


def test_kill_while_saving_leaves_a_whole_image(folder: Path) -> None:
    """Saves are write-temporary-then-rename: a reader (or a kill) never sees half a file."""
    out = folder / "live.png"
    proc = _start_long_run(folder, out)
    try:
        _wait_for(out, proc)
        for _ in range(40):  # the file is replaced at every iteration while we read it
            _valid_image(out)
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert _valid_image(out).size == (64, 43)


# -- the loader itself --------------------------------------------------------------------------
def test_icc_profile_is_converted_not_just_dropped(tmp_path: Path) -> None:
    from nst_ort.media.images import load_image

    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "red.png", icc_profile=_swapped_profile())
    notes: list[str] = []
    r, g, b = load_image(tmp_path / "red.png", notes)[0, 0]
    assert b > 0.9 and r < 0.1, "red in a red/blue-swapped profile is sRGB blue"
    assert len(notes) == 1


def test_dark_16_bit_image_keeps_its_range(tmp_path: Path) -> None:
    from nst_ort.media.images import load_image

    Image.fromarray(np.full((8, 8), 200, np.uint16)).save(tmp_path / "dark.png")  # 200 / 65535: nearly black
    assert load_image(tmp_path / "dark.png").max() == pytest.approx(200 / 65535, rel=1e-3)
