"""What a user types, by class (issue #10), through the real CLI in a subprocess (torch blocked).

Each table row: the arguments (built in a fresh folder), the exit code, a regex the one error line
must match, and the file it must name. Every row also checks that no file in the folder changed
(unless listed) and that nothing reached exit 1 (an internal error) or printed a traceback.

Classes: --iterations 0; paths a run writes against the paths it reads and each other; flag values
(parse time); inputs that used to reach exit 1 (long names, damaged checkpoints); batch mode and
flags of one mode used in another; declared image sizes against memory before decoding (cgroup
v1 and v2 stand-ins); --info and the report's weights.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from conftest import EXAMPLES, run_cli

FAST = ["--size", "64", "--iterations", "2", "--threads", "1", "-q"]


def _photo(name: str = "chelsea_cat.jpg", long_side: int = 96) -> Image.Image:
    img = Image.open(EXAMPLES / name).convert("RGB")
    img.thumbnail((long_side, long_side))
    return img


def _hash_tree(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclasses.dataclass
class Case:
    name: str
    setup: Callable[[Path], list]  # builds files in the folder; returns the CLI arguments
    code: int
    message: str = ""  # regex searched in the (one) error line
    names: str | None = None  # what the line must name ({d} is the folder)
    changes: tuple[str, ...] = ()  # files that may change
    check: Callable[[Path, subprocess.CompletedProcess], None] | None = None
    prelude: str = ""
    env: dict | None = None
    relative: bool = False  # run in the folder with relative paths (a checkpoint's fingerprint has its paths)


def _args(d: Path, *extra, content="content.jpg", style="style.jpg", out="out.png") -> list:
    return [d / content, d / style, "-o", d / out, *FAST, *extra]


def _mkfifo(d: Path, name: str) -> Path:
    os.mkfifo(d / name)
    return d / name


def _immutable(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        folder.chmod(0o555)
        if os.geteuid() == 0:
            pytest.skip("root without chattr: cannot make an unwritable folder")


def _tiny_disk(folder: Path) -> None:
    """A 64 KiB tmpfs: a full disk (root only)."""
    folder.mkdir(exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")


def _png_header(width: int, height: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _cgroup_v1(d: Path, limit: int, usage: int = 100 << 20) -> str:
    root = d / "cgroup"
    (root / "memory").mkdir(parents=True)
    (root / "memory" / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (root / "memory" / "memory.usage_in_bytes").write_text(f"{usage}\n")
    (root / "memory" / "memory.stat").write_text("cache 0\ntotal_inactive_file 0\n")
    return (f"import nst_ort.engine.memory as _m, pathlib; _m.CGROUP_ROOT = pathlib.Path({str(root)!r}); "
            "_m._mem_available = lambda: 64 << 30; ")


def _cgroup_v2(d: Path, limit: int) -> str:
    root = d / "cgroup"
    root.mkdir()
    (root / "memory.max").write_text(f"{limit}\n")
    (root / "memory.current").write_text(f"{100 << 20}\n")
    (root / "memory.stat").write_text("inactive_file 0\n")
    return (f"import nst_ort.engine.memory as _m, pathlib; _m.CGROUP_ROOT = pathlib.Path({str(root)!r}); "
            "_m._mem_available = lambda: 64 << 30; ")


# -- checkpoints: one real one per session, edited per case ---------------------------------------------
@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ck")
    _photo().save(d / "content.jpg")
    _photo("starry_night.jpg").save(d / "style.jpg")
    r = run_cli(_relative_args("--checkpoint", "ck.npz"), cwd=d, timeout=300)
    assert r.returncode == 0, r.stderr
    return d


def _relative_args(*extra) -> list:
    return ["content.jpg", "style.jpg", "-o", "out.png", *FAST, *extra]


def _edited_checkpoint(edit: Callable[[dict, dict], None]) -> Callable[[Path], None]:
    """Write ck.npz: the real checkpoint with meta and arrays edited (fingerprint kept, so that the
    edit is what is checked)."""
    def write(d: Path) -> None:
        with np.load(CHECKPOINT["path"], allow_pickle=False) as z:
            meta = json.loads(bytes(z["__meta__"]).decode())
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
        edit(meta, arrays)
        blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with open(d / "ck.npz", "wb") as f:
            np.savez(f, __meta__=blob, **arrays)
    return write


CHECKPOINT: dict = {}


def _resume_case(write: Callable[[Path], None], *extra) -> Callable[[Path], list]:
    def setup(d: Path) -> list:
        shutil.copyfile(CHECKPOINT["dir"] / "content.jpg", d / "content.jpg")
        shutil.copyfile(CHECKPOINT["dir"] / "style.jpg", d / "style.jpg")
        write(d)
        return _relative_args("--resume", "ck.npz", *extra)
    return setup


def _truncated(d: Path) -> None:
    data = CHECKPOINT["path"].read_bytes()
    (d / "ck.npz").write_bytes(data[: len(data) // 2])


def _set(key, value):
    def edit(meta, arrays):
        if key in arrays:
            arrays[key] = value
        else:
            meta[key] = value
    return edit


# -- the table -----------------------------------------------------------------------------------------
def _link(d: Path, name: str, to: str) -> Path:
    (d / name).symlink_to(d / to)
    return d / name


def _snapshot_input(d: Path) -> list:
    shutil.copyfile(d / "content.jpg", d / "out_0002.png")
    return [d / "out_0002.png", d / "style.jpg", "-o", d / "out.png", *FAST, "--save-every", "2", "--snapshots"]


def _masked(d: Path, *extra) -> list:
    Image.new("L", (96, 64), 255).save(d / "mask.png")
    return [*_args(d, "--style-masks", d / "mask.png"), *extra]


def _init(d: Path, *extra) -> list:
    shutil.copyfile(d / "content.jpg", d / "init.jpg")
    return [*_args(d, "--init", d / "init.jpg"), *extra]


PATHS = [
    # Every file a run writes against every file it reads (exit 8, before any work).
    *[Case(f"{flag[2:]}-is-{what}", setup, 8, rf"{flag} would overwrite the {label}", "{d}/" + target)
      for flag in ("--report", "--checkpoint")
      for what, label, target, setup in [
          ("content", "content image", "content.jpg", lambda d, f=flag: _args(d, f, d / "content.jpg")),
          ("style", "style image", "style.jpg", lambda d, f=flag: _args(d, f, d / "style.jpg")),
          ("mask", "style mask", "mask.png", lambda d, f=flag: _masked(d, f, d / "mask.png")),
          ("init", "--init image", "init.jpg", lambda d, f=flag: _init(d, f, d / "init.jpg")),
          ("model-file", "model file", "model/manifest.json",
           lambda d, f=flag: (shutil.copytree(CHECKPOINT["model"], d / "model"),
                              _args(d, f, d / "model" / "manifest.json", "--model", d / "model"))[1]),
      ]],
    Case("report-is-resume", lambda d: (d.joinpath("ck.npz").write_bytes(b"x"),
                                        _args(d, "--resume", d / "ck.npz", "--report", d / "ck.npz"))[1],
         8, "--report would overwrite the --resume checkpoint", "{d}/ck.npz"),
    Case("report-is-output", lambda d: _args(d, "--report", d / "out.png"), 8,
         "-o and --report name the same file", "{d}/out.png"),
    Case("checkpoint-is-output", lambda d: _args(d, "--checkpoint", d / "out.png"), 8,
         "-o and --checkpoint name the same file", "{d}/out.png"),
    Case("report-and-checkpoint-new-same", lambda d: _args(d, "--report", d / "run.x", "--checkpoint", d / "." / "run.x"),
         8, "--report and --checkpoint name the same file", "{d}/run.x"),
    Case("report-through-symlink", lambda d: _args(d, "--report", _link(d, "link.json", "style.jpg")), 8,
         "--report would overwrite the style image", "{d}/link.json"),
    # A symlink as a written path: the atomic rename would replace the link itself (issue 20): refused.
    Case("report-symlink-to-new-file", lambda d: _args(d, "--report", _link(d, "r.json", "real.json")), 8,
         "--report is a symbolic link .*give the target's path", "{d}/r.json"),
    Case("output-symlink", lambda d: (_link(d, "o.png", "real.png"), _args(d, out="o.png"))[1], 8,
         "-o is a symbolic link", "{d}/o.png"),
    Case("snapshot-symlink", lambda d: (_link(d, "out_0002.png", "kept.png"),
                                        _args(d, "--save-every", "1", "--snapshots"))[1], 8,
         "--snapshots is a symbolic link", "{d}/out_0002.png"),
    Case("report-trailing-slash", lambda d: _args(d, "--report", f"{d}/r.json/"), 8, "--report ends in '/'",
         "{d}/r.json/"),
    Case("output-trailing-slash", lambda d: [d / "content.jpg", d / "style.jpg", "-o", f"{d}/o.png/", *FAST], 8,
         "-o ends in '/'", "{d}/o.png/"),
    Case("report-relative-spelling", lambda d: ((d / "sub").mkdir(), _args(d, "--report", d / "sub" / ".." / "content.jpg"))[1],
         8, "--report would overwrite the content image", "content.jpg"),
    Case("output-hardlink-to-content", lambda d: (os.link(d / "content.jpg", d / "hard.png"), _args(d, out="hard.png"))[1],
         8, "output path is also an input", "{d}/hard.png"),
    Case("snapshot-is-content", _snapshot_input, 8, "--snapshots would overwrite the content image", "out_0002.png"),
    Case("snapshot-is-report", lambda d: _args(d, "--save-every", "1", "--snapshots", "--report", d / "out_0002.png"),
         8, "--snapshots would overwrite the --report", "{d}/out_0002.png"),
    # Targets that are not regular files are never replaced.
    Case("report-dev-null", lambda d: _args(d, "--report", "/dev/null"), 8,
         "--report names a character device, not a regular file", "/dev/null"),
    Case("output-fifo", lambda d: (_mkfifo(d, "fifo.png"), _args(d, out="fifo.png"))[1], 8,
         "-o names a FIFO, not a regular file", "{d}/fifo.png"),
    Case("checkpoint-fifo", lambda d: _args(d, "--checkpoint", _mkfifo(d, "ck.npz")), 8, "names a FIFO", "{d}/ck.npz"),
    Case("report-is-folder", lambda d: ((d / "dir").mkdir(), _args(d, "--report", d / "dir"))[1], 8,
         "--report names a folder", "{d}/dir"),
    Case("snapshot-fifo", lambda d: (_mkfifo(d, "out_0001.png"), _args(d, "--save-every", "1", "--snapshots"))[1], 8,
         "--snapshots names a FIFO", "{d}/out_0001.png"),
    # Writable before the run starts.
    Case("report-folder-missing", lambda d: _args(d, "--report", d / "nodir" / "r.json"), 8,
         "--report folder .* does not exist", "{d}/nodir/r.json"),
    Case("checkpoint-folder-read-only", lambda d: (_immutable(d / "ro"), _args(d, "--checkpoint", d / "ro" / "ck.npz"))[1],
         8, "not writable", "{d}/ro/ck.npz"),
    Case("output-on-full-disk", lambda d: (_tiny_disk(d / "full"), _args(d, out="full/out.png"))[1], 8,
         r"writes about .* which has .* free", "{d}/full/out.png"),
    Case("report-on-full-disk", lambda d: (_tiny_disk(d / "full"), _args(d, "--report", d / "full" / "r.json",
                                                                         "--iterations", "1000"))[1], 8,
         "free", "{d}/full/r.json"),
    Case("output-name-too-long", lambda d: _args(d, out="a" * 300 + ".png"), 8, "file name too long", "aaaa.png"),
    Case("report-name-too-long", lambda d: _args(d, "--report", d / ("r" * 300 + ".json")), 8, "file name too long",
         "rrrr.json"),
]

FLAGS = [  # refused at parse time, exit 2, naming the flag
    Case(f"{flag}={value}", lambda d, f=flag, v=value: _args(d, f, v), 2, rf"argument {flag}: .*{msg}")
    for flag, value, msg in [
        ("--content-weight", "nan", "must be a finite number"), ("--style-weight", "inf", "must be a finite number"),
        ("--tv-weight", "-1", "must be zero or positive"), ("--content-weight", "-0.5", "must be zero or positive"),
        ("--lr", "0", "must be positive"), ("--lr", "nan", "finite"), ("--size", "0", "must be a positive integer"),
        ("--size", "-64", "must be a positive integer"), ("--save-every", "0", "must be a positive integer"),
        ("--threads", "0", "must be a positive integer"), ("--threads", "1000", "must be at most"),
        ("--style-scale", "0", "must be positive"), ("--style-scale", "nan", "finite"),
        ("--style-scale", "inf", "finite"), ("--history", "0", "must be a positive integer"),
        ("--scales", "256,,512", "an empty item"), ("--scales", "256,512,", "an empty item"),
        ("--scales", "0,64", "must be a positive integer"), ("--scale-iterations", "1,-1", ">= 0"),
        ("--style-weights", "1,nan", "finite"), ("--style-layers", "relu1_1:nan", "finite"),
        ("--style-layers", "relu1_1:-1", "zero or positive"), ("--seed", "-1", ">= 0"),
        ("--iterations", "-1", ">= 0"), ("--texture-size", "0x0", "must be a positive integer"),
        ("--texture-size", "64", "expected WxH"), ("--size", "1e3", "expected an integer"),
    ]
]

MODES = [  # a flag of one mode used in another: exit 2 naming it
    Case("texture-size-without-texture", lambda d: _args(d, "--texture-size", "64x48"), 2,
         "--texture-size: applies to texture synthesis only"),
    Case("color-with-texture", lambda d: ["--texture", d / "style.jpg", "-o", d / "out.png", *FAST, "--color",
                                          "luminance"], 2, "--color: .* a texture has no content image"),
    Case("content-weight-with-texture", lambda d: ["--texture", d / "style.jpg", "-o", d / "out.png", *FAST,
                                                   "--content-weight", "5"], 2, "--content-weight: a texture"),
    Case("scale-iterations-without-scales", lambda d: _args(d, "--scale-iterations", "3"), 2,
         "--scale-iterations: needs --scales"),
    Case("scales-and-size-disagree", lambda d: _args(d, "--scales", "32,48"), 2,
         "--scales: the last scale is the output size: --scales ends at 48 but --size says 64"),
    Case("scale-iterations-count", lambda d: [d / "content.jpg", d / "style.jpg", "-o", d / "out.png", "--scales",
                                              "32,64", "--scale-iterations", "1,2,3", "-q"], 2,
         "3 iteration counts for 2 scales"),
    Case("iterations-and-scale-iterations", lambda d: [d / "content.jpg", d / "style.jpg", "-o", d / "out.png",
                                                       "--scales", "32,64", "--scale-iterations", "1,2",
                                                       "--iterations", "0"], 2, "--iterations: --scale-iterations"),
    Case("history-with-adam", lambda d: _args(d, "--optimizer", "adam", "--history", "5"), 2,
         "--history: the L-BFGS history"),
    Case("seed-without-noise", lambda d: _args(d, "--seed", "3"), 2, "--seed: seeds the noise"),
    Case("snapshots-without-save-every", lambda d: _args(d, "--snapshots"), 2, "--snapshots: .* give --save-every"),
    Case("json-without-info", lambda d: _args(d, "--json"), 2, "--json applies to --info and --dry-run"),
    Case("average-with-device-loop", lambda d: _args(d, "--average", "--loop", "device"), 2,
         "--loop: --average needs the image at every iteration"),
]


def _batch_folder(d: Path) -> Path:
    folder = d / "photos"
    folder.mkdir()
    _photo().save(folder / "a.jpg")
    _photo("coffee.jpg").save(folder / "b.png")
    (folder / "notes.txt").write_text("a shopping list")
    (folder / "sub").mkdir()
    _photo().save(folder / "sub" / "deeper.jpg")
    os.mkfifo(folder / "pipe.jpg")
    (folder / "gone.jpg").symlink_to(folder / "nowhere.jpg")
    (d / "results").mkdir()
    return folder


def _batch_named_everything(d: Path, r) -> None:
    assert sorted(p.name for p in (d / "results").iterdir()) == ["a.json", "a.png", "b.json", "b.png"]
    for entry, why in (("notes.txt", "not an image file name"), ("sub", "a folder"), ("pipe.jpg", "not a regular file"),
                       ("gone.jpg", "not a regular file")):
        assert re.search(rf"photos/{re.escape(entry)}: {why}", r.stderr), (entry, r.stderr)
    assert json.loads((d / "results" / "a.json").read_text())["status"] == "done"


BATCH = [
    Case("batch-report-per-image", lambda d: [_batch_folder(d), d / "style.jpg", "-o", d / "results", *FAST,
                                              "--report", d / "results"], 0, changes=("results/a.png",),
         check=_batch_named_everything),
    Case("batch-report-file", lambda d: [_batch_folder(d), d / "style.jpg", "-o", d / "results", *FAST,
                                         "--report", d / "r.json"], 2, "--report: in a batch it names a folder"),
    Case("batch-checkpoint-file", lambda d: [_batch_folder(d), d / "style.jpg", "-o", d / "results", *FAST,
                                             "--checkpoint", d / "ck.npz"], 2, "--checkpoint: in a batch it names a folder"),
    Case("batch-resume", lambda d: [_batch_folder(d), d / "style.jpg", "-o", d / "results", *FAST, "--resume",
                                    d / "ck.npz"], 2, "--resume: .* not in a batch"),
    Case("batch-output-over-its-content", lambda d: (_photo().save(d / "in.png"), d.joinpath("b").mkdir(),
                                                     shutil.move(str(d / "in.png"), str(d / "b" / "in.png")),
                                                     [d / "b", d / "style.jpg", "-o", d / "b", *FAST])[-1],
         8, "would overwrite the content image .* of this batch", "{d}/b/in.png"),
]

def _colliding_batch(d: Path) -> list:
    folder = d / "b"
    folder.mkdir()
    for name in ("x.png", "x.jpg", "x-jpg.png"):  # x.png, x.jpg -> x-png.png, x-jpg.png; x-jpg.png -> x-jpg.png
        _photo().save(folder / name)
    (d / "results").mkdir()
    return [folder, d / "style.jpg", "-o", d / "results", *FAST]


BATCH.append(Case("batch-two-inputs-one-name", _colliding_batch, 8,
                  r"x-jpg\.png: both .*b/x-jpg\.png and .*b/x\.jpg would be written here", "{d}/results/x-jpg.png"))

INTERNAL = [  # inputs that reached exit 1 before; now each has its documented code
    Case("content-name-too-long", lambda d: _args(d, content="c" * 300 + ".jpg"), 3, "cannot read .*name too long",
         "cccc.jpg"),
    Case("resume-name-too-long", lambda d: _args(d, "--resume", d / ("k" * 300 + ".npz")), 2, "cannot read this checkpoint",
         "kkkk.npz"),
    Case("resume-truncated", _resume_case(_truncated), 2, "not an nst-ort checkpoint, or a damaged one", "ck.npz", relative=True),
    Case("resume-not-a-zip", _resume_case(lambda d: d.joinpath("ck.npz").write_text("hello")), 2,
         "not an nst-ort checkpoint", "ck.npz", relative=True),
    Case("resume-folder", _resume_case(lambda d: d.joinpath("ck.npz").mkdir()), 2, "not a checkpoint file", "ck.npz", relative=True),
    Case("resume-fifo", _resume_case(lambda d: _mkfifo(d, "ck.npz")), 2, "not a checkpoint file", "ck.npz", relative=True),
    Case("resume-scale-out-of-range", _resume_case(_edited_checkpoint(_set("scale", 99))), 2,
         "checkpoint: scale 99 is out of range", "ck.npz", relative=True),
    Case("resume-negative-step", _resume_case(_edited_checkpoint(_set("step", -1))), 2,
         "checkpoint: step must be a non-negative integer", "ck.npz", relative=True),
    Case("resume-iteration-text", _resume_case(_edited_checkpoint(_set("iteration", "2"))), 2,
         "iteration must be a non-negative integer", "ck.npz", relative=True),
    Case("resume-image-shape", _resume_case(_edited_checkpoint(_set("x", np.zeros((3, 4), np.float32)))), 2,
         r"the image is float32 \[3, 4\]", "ck.npz", relative=True),
    Case("resume-image-nan", _resume_case(_edited_checkpoint(
        lambda m, a: a.__setitem__("x", np.full_like(a["x"], np.nan)))), 2, "NaN or Inf pixels", "ck.npz", relative=True),
    Case("resume-optimizer-shape", _resume_case(_edited_checkpoint(
        lambda m, a: a.__setitem__("optimizer.S", a["optimizer.S"][:, :7]))), 2, r"optimizer state: S is", "ck.npz", relative=True),
    Case("resume-optimizer-k", _resume_case(_edited_checkpoint(_set("optimizer.k", "many"))), 2,
         "optimizer state: k is 'many'", "ck.npz", relative=True),
    Case("resume-optimizer-slots", _resume_case(_edited_checkpoint(
        lambda m, a: a.__setitem__("optimizer.slots", np.full_like(a["optimizer.slots"], 100)))), 2,
         "slots must be", "ck.npz", relative=True),
    Case("resume-rng", _resume_case(_edited_checkpoint(_set("rng", {"bit_generator": "MT19937", "state": 5}))), 2,
         "bad noise generator state", "ck.npz", relative=True),
    Case("resume-other-settings", _resume_case(lambda d: shutil.copyfile(CHECKPOINT["path"], d / "ck.npz"),
                                               "--tv-weight", "3"), 2, "other inputs or settings", "ck.npz", relative=True),
]

MEMORY = [  # declared sizes against memory before decoding; a damaged IDAT proves nothing was decoded
    Case("declared-144-mpx-cgroup-v1", lambda d: (d.joinpath("big.png").write_bytes(
        _png_header(12000, 12000, zlib.compress(b"\0" * 1000)[:-4])), _args(d, content="big.png"))[1], 6,
         r"declares 12000x12000 pixels \(144\.0 Mpx\), which needs about .* to decode, .* \(the cgroup's memory limit\)",
         "{d}/big.png", prelude="CGROUP_V1"),
    Case("declared-144-mpx-cgroup-v2", lambda d: (d.joinpath("big.png").write_bytes(
        _png_header(12000, 12000, zlib.compress(b"\0" * 1000)[:-4])), _args(d, style="big.png"))[1], 6,
         r"declares 12000x12000 .* \(the cgroup's memory limit\)", "{d}/big.png", prelude="CGROUP_V2"),
    Case("size-beyond-cgroup-v1", lambda d: _args(d, "--size", "4096"), 6,
         r"needs about .* \(the cgroup's memory limit\); the largest size that fits is about --size \d+",
         "{d}/content.jpg", prelude="CGROUP_V1"),
]


def _zero_iterations_is_the_content(d: Path, r) -> None:
    from nst_ort.media.images import load_image, resize, to_uint8

    content = load_image(d / "content.jpg")
    expected = to_uint8(resize(content, (64, 43)))
    assert np.array_equal(np.asarray(Image.open(d / "out.png").convert("RGB")), expected)
    assert re.search(r"wrote .*out\.png \(no iterations: the start image\)", r.stderr), r.stderr


def _zero_last_scale(d: Path, r) -> None:
    assert Image.open(d / "out.png").size == (96, 64)  # the last scale is the output's size


def _noise(d: Path, r) -> None:
    arr = np.asarray(Image.open(d / "out.png").convert("RGB"), np.float32)
    assert arr.shape == (48, 80, 3) and 60 < arr.std() < 90  # uniform noise: std 255/sqrt(12) = 74


ITERATIONS_ZERO = [
    Case("iterations-0-writes-the-content", lambda d: [d / "content.jpg", d / "style.jpg", "-o", d / "out.png",
                                                       "--size", "64", "--iterations", "0", "--threads", "1"], 0,
         changes=("out.png",), check=_zero_iterations_is_the_content),
    Case("iterations-0-texture-writes-noise", lambda d: ["--texture", d / "style.jpg", "-o", d / "out.png",
                                                         "--texture-size", "80x48", "--iterations", "0", "-q"], 0,
         changes=("out.png",), check=_noise),
    Case("last-scale-0-iterations", lambda d: [d / "content.jpg", d / "style.jpg", "-o", d / "out.png", "--scales",
                                               "48,96", "--scale-iterations", "2,0", "-q", "--threads", "1"], 0,
         changes=("out.png",), check=_zero_last_scale),
]

CASES = PATHS + FLAGS + MODES + BATCH + INTERNAL + MEMORY + ITERATIONS_ZERO
# Rows refused before any computing run together in one process (tests/cli_many.py); the others
# (a run, a stand-in module) each in their own.
SEPARATE = {c.name for c in MEMORY + ITERATIONS_ZERO} | {"batch-report-per-image"}


def _make_folder(d: Path) -> Path:
    d.mkdir(parents=True)
    _photo().save(d / "content.jpg")
    _photo("starry_night.jpg").save(d / "style.jpg")
    Image.new("RGB", (20, 20), "red").save(d / "out.png")  # a previous result that must survive failures
    return d


def _clean(d: Path) -> None:
    for p in d.rglob("*"):
        if p.is_dir() and not p.is_symlink():
            subprocess.run(["umount", str(p)], capture_output=True)
            subprocess.run(["chattr", "-i", str(p)], capture_output=True)
            p.chmod(0o755)


@pytest.fixture(scope="module")
def checkpoint_info(real_checkpoint: Path) -> dict:
    from conftest import DEFAULT_MODEL

    CHECKPOINT.update(dir=real_checkpoint, path=real_checkpoint / "ck.npz", model=DEFAULT_MODEL)
    return CHECKPOINT


@pytest.fixture(scope="module")
def fast_results(tmp_path_factory, checkpoint_info) -> dict:
    """name -> (folder, hashes before, Result | skip reason) for every row refused before computing."""
    root = tmp_path_factory.mktemp("fast")
    rows, calls = {}, []
    for case in CASES:
        if case.name in SEPARATE:
            continue
        d = _make_folder(root / case.name.replace("/", "_"))
        try:
            args = case.setup(d)
        except pytest.skip.Exception as e:
            rows[case.name] = (d, {}, str(e))
            continue
        rows[case.name] = (d, _hash_tree(d), len(calls))
        calls.append((args, d if case.relative else None, case.env))
    from cli_many import run_many

    results = run_many(calls)
    yield {name: (d, before, results[i] if isinstance(i, int) else i) for name, (d, before, i) in rows.items()}
    for d, _, _ in rows.values():
        _clean(d)


@pytest.fixture
def folder(tmp_path: Path, checkpoint_info) -> Path:
    d = _make_folder(tmp_path / "work")
    yield d
    _clean(d)


def _check(case: Case, d: Path, before: dict, r) -> None:
    after = _hash_tree(d)
    assert r.returncode == case.code, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    errors = [line for line in r.stderr.strip().splitlines() if line.startswith("nst-ort: error")]
    if case.code not in (0, 9):
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0] == errors[0], r.stderr
        assert re.search(case.message, errors[0]), errors[0]
        if case.names:
            assert case.names.format(d=d) in errors[0], errors[0]
    for name, digest in before.items():
        assert name in after, f"{name} was removed"
        assert name in case.changes or after[name] == digest, f"{name} was changed"
    assert not [n for n in after if n.endswith(".tmp")], "temporary files left behind"
    if case.check:
        case.check(d, r)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli_case(case: Case, request) -> None:
    if case.name not in SEPARATE:
        d, before, r = request.getfixturevalue("fast_results")[case.name]
        if isinstance(r, str):
            pytest.skip(r)
        _check(case, d, before, r)
        return
    d = request.getfixturevalue("folder")
    args = case.setup(d)
    prelude = {"CGROUP_V1": lambda: _cgroup_v1(d, 1 << 30), "CGROUP_V2": lambda: _cgroup_v2(d, 1 << 30)}.get(
        case.prelude, lambda: case.prelude)()
    before = _hash_tree(d)
    r = run_cli(args, prelude=prelude, env=case.env, timeout=300, cwd=d if case.relative else None)
    _check(case, d, before, r)


# -- allowed: --checkpoint where --resume came from -------------------------------------------------------
def test_checkpoint_may_be_the_resume_file(folder: Path) -> None:
    d = folder
    shutil.copyfile(CHECKPOINT["dir"] / "content.jpg", d / "content.jpg")
    shutil.copyfile(CHECKPOINT["dir"] / "style.jpg", d / "style.jpg")
    shutil.copyfile(CHECKPOINT["path"], d / "ck.npz")
    r = run_cli(["content.jpg", "style.jpg", "-o", "out.png", "--size", "64", "--iterations", "4", "--threads", "1",
                 "-q", "--resume", "ck.npz", "--checkpoint", "ck.npz"], cwd=d, timeout=300)
    assert r.returncode == 0, r.stderr
    with np.load(d / "ck.npz") as z:
        assert json.loads(bytes(z["__meta__"]).decode())["step"] == 4


# -- cgroup readers, on stand-in trees ------------------------------------------------------------------
def test_cgroup_v1_and_v2_limits(tmp_path, monkeypatch):
    from nst_ort.engine import memory

    monkeypatch.setattr(memory, "_own_cgroup", lambda controller: "/job")
    v1 = tmp_path / "v1"
    (v1 / "memory" / "job").mkdir(parents=True)
    for folder, limit, usage in ((v1 / "memory", 1 << 62, 5 << 30), (v1 / "memory" / "job", 4 << 30, 1 << 30)):
        (folder / "memory.limit_in_bytes").write_text(str(limit))
        (folder / "memory.usage_in_bytes").write_text(str(usage))
    (v1 / "memory" / "job" / "memory.stat").write_text("hierarchical_memory_limit 2147483648\ntotal_inactive_file 1024\n")
    assert memory._cgroup_available(v1) == (2 << 30) - (1 << 30) + 1024  # the ancestor's limit binds
    (v1 / "memory" / "job" / "memory.stat").write_text("total_inactive_file 0\n")
    assert memory._cgroup_available(v1) == 3 << 30
    (v1 / "memory" / "job" / "memory.limit_in_bytes").write_text("9223372036854771712")
    assert memory._cgroup_available(v1) is None  # v1's "no limit"

    v2 = tmp_path / "v2"
    (v2 / "job").mkdir(parents=True)
    (v2 / "memory.max").write_text("3221225472")
    (v2 / "memory.current").write_text(str(1 << 30))
    (v2 / "job" / "memory.max").write_text("max")
    (v2 / "job" / "memory.current").write_text(str(1 << 29))
    (v2 / "job" / "memory.stat").write_text("anon 1\ninactive_file 4096\n")
    assert memory._cgroup_available(v2) == 2 << 30  # the parent's limit binds its children
    (v2 / "job" / "memory.max").write_text(str(1 << 30))
    assert memory._cgroup_available(v2) == (1 << 29) + 4096


# -- messages -----------------------------------------------------------------------------------------------
def test_info_is_for_people_and_json_for_machines():
    from cli_many import run_many

    r, j = run_many([(["--info"], None, None), (["--info", "--json"], None, None)])
    assert r.returncode == 0, r.stderr
    layers = [line.split()[0] for line in r.stdout.splitlines() if re.match(r"\s+relu\d_\d\s", line)]
    assert layers == ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"]  # network order
    assert "tv weight 3,000,000" in r.stdout and "1/64^2" in r.stdout and "CPUExecutionProvider" in r.stdout
    data = json.loads(j.stdout)
    assert [x["name"] for x in data["layers"]] == layers and "CPUExecutionProvider" in data["runtime"]["providers"]


def test_report_records_the_weights_used(folder: Path) -> None:
    d = folder
    r = run_cli([*_args(d, "--report", d / "r.json", "--style-weight", "50")], timeout=300)
    assert r.returncode == 0, r.stderr
    rep = json.loads((d / "r.json").read_text())
    assert rep["weights"]["content_weight"] == 25.0 and rep["weights"]["style_weight"] == 50.0
    assert rep["weights"]["tv_weight"] == 3e6 and rep["weights"]["content_layers"] == {"relu4_2": 1.0}
    assert rep["settings"]["content_weight"] == 25.0 and rep["settings"]["iterations"] == 2


def test_snapshots_are_numbered(folder: Path) -> None:
    d = folder
    r = run_cli([*_args(d, "--iterations", "4", "--save-every", "2", "--snapshots")], timeout=300)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in d.glob("out_*.png")) == ["out_0002.png", "out_0004.png"]
    with Image.open(d / "out_0004.png") as a, Image.open(d / "out.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))  # the last snapshot is the result
    r = run_cli(_args(d, "--iterations", "2", "--save-every", "1", out="plain.png"), timeout=300)
    assert r.returncode == 0, r.stderr
    assert not list(d.glob("plain_*.png"))  # numbered only with --snapshots
