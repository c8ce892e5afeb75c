"""`nst-ort video` and `nst-ort check` under the still-image rule (issue 20): every file written is
checked against every file read and against each other, special files and symlinks refused, before
any work; the frames folder's clean-up deletes only what the tool made; a variable-frame-rate video
keeps its timing (and so its audio's length); a damaged resume state is one line.

Refusals run in one process (tests/cli_many.py); each row checks the exit code, that the one error
line names what it must, and that no file in the case's folder changed or appeared (sha256 before
and after). The runs that compute stay small (64x48 frames, 1-2 iterations)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import EXAMPLES, run_cli
from video_clips import frames, needs, read_video, temporal_model, tone, write_clip, write_folder  # noqa: F401

needs("av")
needs("cv2")

FAST = ["--size", "64", "--iterations", "1", "--threads", "1", "-q"]


@pytest.fixture(autouse=True)
def _model_with_temporal(temporal_model, monkeypatch):
    monkeypatch.setenv("NST_ORT_MODEL", str(temporal_model))


@pytest.fixture(scope="module")
def material(tmp_path_factory, temporal_model):
    """One clip, a folder of frames, a small style and a model copy, copied into each case's folder."""
    from PIL import Image

    d = tmp_path_factory.mktemp("material")
    imgs = frames((64, 48), 2)
    write_clip(d / "in.mp4", imgs)
    write_folder(d / "seq", imgs)
    im = Image.open(EXAMPLES / "starry_night.jpg").convert("RGB")
    im.thumbnail((64, 64))
    im.save(d / "style.jpg")
    shutil.copytree(temporal_model, d / "model")
    return d


def _hash_tree(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink() or p.is_fifo() or p.is_char_device():
            out[str(p.relative_to(folder))] = "special:" + os.readlink(p) if p.is_symlink() else "special"
        elif p.is_file():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p.relative_to(folder)) + "/"] = "dir"
    return out


@dataclasses.dataclass
class Case:
    name: str
    setup: Callable[[Path], list]  # builds files in the folder; returns the arguments after `nst-ort`
    code: int
    message: str  # regex searched in the error line
    names: str | None = None  # what the line must name ({d}: the case's folder)
    cwd: bool = False  # run in the case's folder (relative spellings)


def _video(d: Path, *extra, src="in.mp4", out="out.mp4") -> list:
    return ["video", d / src, d / "style.jpg", "-o", d / out, *FAST, *extra]


def _fifo(d: Path, name: str) -> Path:
    os.mkfifo(d / name)
    return d / name


def _link(d: Path, name: str, to: str) -> Path:
    (d / name).symlink_to(d / to)
    return d / name


def _state(d: Path, text: str, out: str = "out") -> list:
    (d / out).mkdir()
    (d / out / "nst-ort-video.json").write_text(text)
    return _video(d, src="seq", out=out)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _state_json(**fields) -> str:
    base = {"format": 1, "fingerprint": "x", "done": 1, "frames": [{"frame": 1, "loss": 1.0, "content": 1.0,
                                                                     "style": 1.0, "tv": 0.0, "seconds": 1.0}]}
    base.update(fields)
    return json.dumps(base)


def _read_only(folder: Path) -> Path:
    folder.mkdir()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        folder.chmod(0o555)
        if os.geteuid() == 0:
            pytest.skip("root without chattr: cannot make an unwritable folder")
    return folder


def _moved(d: Path, name: str, to: str) -> Path:
    (d / to).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(d / name), str(d / to))
    return d / to


CASES = [
    # --report against everything the run reads and writes (it was written without any check)
    Case("report-is-input-video", lambda d: _video(d, "--report", d / "in.mp4"), 8,
         "--report would overwrite the input video", "{d}/in.mp4"),
    Case("report-is-input-frame", lambda d: _video(d, "--report", d / "seq" / "frame_001.png", src="seq"), 8,
         "--report is inside the input folder", "{d}/seq/frame_001.png"),
    Case("report-is-style", lambda d: _video(d, "--report", d / "style.jpg"), 8,
         "--report would overwrite the style image", "{d}/style.jpg"),
    Case("report-is-model-manifest", lambda d: _video(d, "--report", d / "model" / "manifest.json", "--model",
                                                      d / "model"), 8,
         "--report would overwrite the model file", "{d}/model/manifest.json"),
    Case("report-is-output-video", lambda d: _video(d, "--report", d / "out.mp4"), 8,
         "-o and --report name the same file", "{d}/out.mp4"),
    Case("report-is-output-frame", lambda d: ((d / "frames").mkdir(), _video(d, "--report", d / "frames" / "000001.png",
                                                                              out="frames"))[1], 8,
         "--report is inside the frames folder", "{d}/frames/000001.png"),
    Case("report-is-resume-state", lambda d: ((d / "out.mp4.frames").mkdir(),
                                              _video(d, "--report", d / "out.mp4.frames" / "nst-ort-video.json"))[1],
         8, "--report is inside the frames folder", "{d}/out.mp4.frames/nst-ort-video.json"),
    Case("report-in-input-folder", lambda d: _video(d, "--report", d / "seq" / "run.json", src="seq"), 8,
         "--report is inside the input folder", "{d}/seq/run.json"),
    Case("report-hard-link-to-style", lambda d: (os.link(d / "style.jpg", d / "h.json"),
                                                 _video(d, "--report", d / "h.json"))[1], 8,
         "--report would overwrite the style image", "{d}/h.json"),
    Case("report-is-frames-folder", lambda d: _video(d, "--report", d / "out.mp4.frames"), 8,
         "--report and -o name the same file", "{d}/out.mp4.frames"),  # -o's frames folder
    Case("report-fifo", lambda d: _video(d, "--report", _fifo(d, "r.json")), 8,
         "--report names a FIFO, not a regular file", "{d}/r.json"),
    Case("report-dev-null", lambda d: _video(d, "--report", "/dev/null"), 8, "--report names a character device",
         "/dev/null"),
    Case("report-symlink", lambda d: _video(d, "--report", _link(d, "r.json", "elsewhere.json")), 8,
         "--report is a symbolic link", "{d}/r.json"),
    Case("report-read-only-folder", lambda d: _video(d, "--report", _read_only(d / "ro") / "r.json"), 8,
         "not writable", "{d}/ro/r.json"),
    Case("report-missing-folder", lambda d: _video(d, "--report", d / "nodir" / "r.json"), 8,
         "--report folder .* does not exist", "{d}/nodir/r.json"),
    Case("report-trailing-slash", lambda d: _video(d, "--report", f"{d}/r.json/"), 8,
         "--report ends in '/'", "{d}/r.json/"),
    Case("report-relative-alias-of-input", lambda d: ((d / "sub").mkdir(),
                                                      ["video", "in.mp4", "style.jpg", "-o", "out.mp4", *FAST,
                                                       "--report", "sub/../in.mp4"])[1], 8,
         "--report would overwrite the input video", "sub/../in.mp4", cwd=True),
    # -o
    Case("output-fifo", lambda d: _video(d, out=_fifo(d, "o.mp4").name), 8, "-o names a FIFO", "{d}/o.mp4"),
    Case("output-dev-null", lambda d: ["video", d / "in.mp4", d / "style.jpg", "-o", "/dev/null", *FAST], 8,
         "-o names a character device", "/dev/null"),
    Case("output-symlink", lambda d: _video(d, out=_link(d, "o.mp4", "real.mp4").name), 8,
         "-o is a symbolic link", "{d}/o.mp4"),
    Case("output-hard-link-to-input", lambda d: (os.link(d / "in.mp4", d / "hard.mp4"), _video(d, out="hard.mp4"))[1],
         8, "also an input", "{d}/hard.mp4"),
    Case("output-is-input-absolute-vs-relative", lambda d: ["video", "in.mp4", "style.jpg", "-o", f"{d}/./in.mp4",
                                                            *FAST], 8, "also an input", "in.mp4", cwd=True),
    Case("output-inside-input-folder", lambda d: _video(d, src="seq", out="seq/out.mp4"), 8,
         "-o is inside the input folder", "{d}/seq/out.mp4"),
    Case("output-frames-folder-is-input-folder", lambda d: (_moved(d, "seq", "v.mp4.frames"),
                                                           _video(d, src="v.mp4.frames", out="v.mp4"))[1], 8,
         "inside the frames folder", "{d}/v.mp4.frames"),
    Case("style-inside-frames-folder", lambda d: (_moved(d, "style.jpg", "out.mp4.frames/.style.jpg"),
                                                 ["video", d / "in.mp4", d / "out.mp4.frames" / ".style.jpg", "-o",
                                                  d / "out.mp4", *FAST])[1], 8,
         "the style image is inside the frames folder", "{d}/out.mp4.frames/.style.jpg"),
    Case("output-unwritable-folder", lambda d: _video(d, out="ro/out.mp4") if _read_only(d / "ro") else [], 8,
         "not writable", "{d}/ro/out.mp4"),
    Case("output-frame-is-symlink", lambda d: ((d / "frames").mkdir(), _link(d, "frames/000001.png", "style.jpg"),
                                               _state_frames(d))[-1], 8, "also an input \\(the style image",
         "{d}/frames/000001.png"),
    Case("output-name-with-newline", lambda d: _video(d, out="no\ndir/out.mp4"), 8, r"does not exist", "no\\ndir"),
    # inputs that would block or are not files: refused by stat, never opened
    Case("input-fifo", lambda d: _video(d, src=_fifo(d, "in2.mp4").name), 3, "is a FIFO, not a video file",
         "{d}/in2.mp4"),
    Case("input-device", lambda d: ["video", "/dev/zero", d / "style.jpg", "-o", d / "out.mp4", *FAST], 3,
         "is a character device", "/dev/zero"),
    # damaged resume state: one line naming the file, exit 2
    Case("state-not-json", lambda d: _state(d, "{not json"), 2, "damaged resume state \\(not JSON",
         "{d}/out/nst-ort-video.json"),
    Case("state-deep", lambda d: _state(d, _nested(100000)), 2, "damaged resume state \\(nested too deeply",
         "{d}/out/nst-ort-video.json"),
    Case("state-done-text", lambda d: _state(d, _state_json(done="2")), 2, "done must be an integer",
         "{d}/out/nst-ort-video.json"),
    Case("state-frames-not-list", lambda d: _state(d, _state_json(frames={"1": {}})), 2, "frames must be a list",
         "{d}/out/nst-ort-video.json"),
    Case("state-missing-records", lambda d: _state(d, _state_json(done=3)), 2, "counts 3 frames done but has records of 1",
         "{d}/out/nst-ort-video.json"),
    Case("state-loss-text", lambda d: _state(d, _state_json(frames=[{"frame": 1, "loss": "low"}])), 2,
         "frame 1: loss must be a number", "{d}/out/nst-ort-video.json"),
    Case("state-not-object", lambda d: _state(d, "[1, 2]"), 2, "not a JSON object", "{d}/out/nst-ort-video.json"),
    Case("state-fifo", lambda d: ((d / "out").mkdir(), _fifo(d / "out", "nst-ort-video.json"),
                                  _video(d, src="seq", out="out"))[-1], 8, "not a regular file",
         "{d}/out/nst-ort-video.json"),
    # nst-ort check --json: checked before the check runs
    Case("check-json-fifo", lambda d: ["check", "--json", _fifo(d, "c.json")], 8, "--json names a FIFO", "{d}/c.json"),
    Case("check-json-missing-folder", lambda d: ["check", "--json", d / "nodir" / "c.json"], 8,
         "--json folder .* does not exist", "{d}/nodir/c.json"),
    Case("check-json-model-manifest", lambda d: ["check", "--model", d / "model", "--json",
                                                 d / "model" / "manifest.json"], 8,
         "--json would overwrite the model file", "{d}/model/manifest.json"),
    Case("check-json-symlink", lambda d: ["check", "--json", _link(d, "c.json", "style.jpg")], 8,
         "--json is a symbolic link", "{d}/c.json"),
    Case("check-json-dev-null", lambda d: ["check", "--json", "/dev/null"], 8, "character device", "/dev/null"),
    Case("check-json-name-with-newline", lambda d: ["check", "--json", d / "no\ndir" / "c.json"], 8,
         "does not exist", "no\\ndir"),
    Case("check-json-trailing-slash", lambda d: ["check", "--json", f"{d}/c/"], 8, "ends in '/'", "{d}/c/"),
    # nst-ort check: values refused at parse time, naming the flag
    *[Case(f"check{flag}={value}", lambda d, f=flag, v=value: ["check", f, v], 2, rf"argument {flag}: {msg}")
      for flag, value, msg in [("--time-iterations", "0", "must be a positive integer"),
                               ("--time-size", "-1", "must be an integer >= 0"),
                               ("--threads", "-1", "must be a positive integer"),
                               ("--threads", "100000", "must be at most"),
                               ("--size", "0", "must be a positive integer"),
                               ("--time-iterations", "x", "expected an integer")]],
    # nst-ort video: values refused at parse time too (were refused late, after the frames folder was made)
    *[Case(f"video{flag}={value}", lambda d, f=flag, v=value: _video(d, f, v), 2, rf"argument {flag}: {msg}")
      for flag, value, msg in [("--threads", "-1", "must be a positive integer"), ("--lr", "0", "must be positive"),
                               ("--seed", "-1", "must be an integer >= 0"),
                               ("--content-weight", "nan", "must be a finite number"),
                               ("--tv-weight", "-1", "must be zero or positive")]],
    Case("check-time-size-too-small", lambda d: ["check", "--time-size", "4"], 2, "--time-size 4: this model needs"),
]


def _state_frames(d: Path) -> list:
    """A folder output with a resume state (any fingerprint: the paths are checked first)."""
    (d / "frames" / "nst-ort-video.json").write_text(_state_json())
    return _video(d, src="seq", out="frames")


def _clean(d: Path) -> None:
    for p in [d, *d.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            subprocess.run(["chattr", "-i", str(p)], capture_output=True)
            p.chmod(0o755)


@pytest.fixture(scope="module")
def results(tmp_path_factory, material):
    from cli_many import run_many

    root = tmp_path_factory.mktemp("video-paths")
    rows, calls = {}, []
    for case in CASES:
        d = root / re.sub(r"[^\w.-]", "_", case.name)
        shutil.copytree(material, d, symlinks=True)
        try:
            args = case.setup(d)
        except pytest.skip.Exception as e:
            rows[case.name] = (d, {}, str(e))
            continue
        rows[case.name] = (d, _hash_tree(d), len(calls))
        # the model with temporal.onnx (the autouse fixture's variable is not set yet for a module fixture)
        calls.append((args, d if case.cwd else None, {"NST_ORT_MODEL": str(material / "model")}))
    out = run_many(calls, timeout=600)
    yield {name: (d, before, out[i] if isinstance(i, int) else i) for name, (d, before, i) in rows.items()}
    for d, _, _ in rows.values():
        _clean(d)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refused_before_any_work(case, results):
    d, before, r = results[case.name]
    if isinstance(r, str):
        pytest.skip(r)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == case.code, r.stderr
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert re.search(case.message, lines[0]), lines[0]
    if case.names:
        assert case.names.format(d=d).replace("\n", "\\n") in lines[0], lines[0]
    assert _hash_tree(d) == before  # nothing changed, nothing made (no frames folder, no report)


# -- runs -------------------------------------------------------------------------------------------------

def _vfr_clip(path: Path, imgs, times_ms: list[int], audio_seconds: float) -> Path:
    """An mp4 whose frames are at times_ms (not evenly spaced), with an AAC tone as long as it."""
    import av

    from nst_ort.media.images import to_uint8

    tb = Fraction(1, 1000)
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=10, options={"crf": "4"})
    v.width, v.height, v.pix_fmt = imgs[0].shape[1], imgs[0].shape[0], "yuv420p"
    v.codec_context.time_base = tb
    v.time_base = tb
    a = out.add_stream("aac", rate=44100)
    for img, t in zip(imgs, times_ms):
        f = av.VideoFrame.from_ndarray(to_uint8(img), format="rgb24")
        f.pts, f.time_base = t, tb
        out.mux(v.encode(f))
    out.mux(v.encode())
    samples = tone(audio_seconds, 44100)
    for n in range(0, samples.shape[1] - 1024 + 1, 1024):
        af = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, n:n + 1024]), format="fltp", layout="stereo")
        af.sample_rate, af.pts = 44100, n
        out.mux(a.encode(af))
    out.mux(a.encode())
    out.close()
    return path


def _times(path: Path) -> list[float]:
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        pts = sorted(p.pts for p in c.demux(v) if p.pts is not None)
        return [float((t - pts[0]) * v.time_base) for t in pts]


def test_variable_frame_rate_keeps_timing_and_audio_and_cleanup_keeps_foreign_files(tmp_path):
    """Frames at 0, 0.1, 0.4 and 1.0 s (a constant-rate retiming would put them 0.1-0.33 s apart and
    cut the audio to that length): the output's frames are at the input's times and its audio lasts
    as long as the video. The frames folder held a hidden file of the user's: the frames and the
    state are removed, that file and the folder stay, and a warning names it."""
    times = [0, 100, 400, 1000]
    src = _vfr_clip(tmp_path / "vfr.mp4", frames((64, 48), 4), times, audio_seconds=1.6)
    got_in = _times(src)
    assert got_in == pytest.approx([t / 1000 for t in times], abs=1e-3)
    out = tmp_path / "out.mp4"
    (tmp_path / "out.mp4.frames").mkdir()
    (tmp_path / "out.mp4.frames" / ".notes").write_text("mine")
    done = run_cli(["video", src, EXAMPLES / "starry_night.jpg", "-o", out, "--mode", "per-frame", *FAST])
    assert done.returncode == 0, done.stderr
    assert _times(out) == pytest.approx(got_in, abs=2e-3)
    imgs, _, audio = read_video(out)
    assert len(imgs) == 4
    duration = 1.0 + 0.6  # the last frame lasts as long as the interval before it
    assert audio is not None and abs(audio["seconds"] - duration) < 0.1, audio
    left = sorted(p.name for p in (tmp_path / "out.mp4.frames").iterdir())
    assert left == [".notes"] and (tmp_path / "out.mp4.frames" / ".notes").read_text() == "mine"
    assert re.search(r"out\.mp4\.frames: kept, it holds files nst-ort did not make \(\.notes\)", done.stderr)
    # --fps retimes to a constant rate, as asked
    cfr = tmp_path / "cfr.mp4"
    done = run_cli(["video", src, EXAMPLES / "starry_night.jpg", "-o", cfr, "--mode", "per-frame", "--fps", "10",
                    *FAST])
    assert done.returncode == 0, done.stderr
    assert _times(cfr) == pytest.approx([0, 0.1, 0.2, 0.3], abs=2e-3)
    assert not (tmp_path / "cfr.mp4.frames").exists()  # nothing foreign there: the folder goes


def test_damaged_stored_frame_is_redone_and_other_files_are_named(tmp_path, material):
    """A stored frame cut short (a disk that filled, a copy interrupted): the next run says which
    and redoes it and the frames after it; the frames are whole again. A file that is not a frame in
    the input folder is named in a warning, not dropped silently."""
    seq = tmp_path / "seq"
    shutil.copytree(material / "seq", seq)
    (seq / "notes.txt").write_text("not a frame")
    out = tmp_path / "out"
    args = ["video", seq, material / "style.jpg", "-o", out, "--mode", "per-frame", *FAST]
    done = run_cli(args)
    assert done.returncode == 0, done.stderr
    assert re.search(r"seq/notes\.txt: not a frame .*skipped", done.stderr), done.stderr
    first = (out / "000001.png").read_bytes()
    (out / "000001.png").write_bytes(first[: len(first) // 2])
    done = run_cli(args)
    assert done.returncode == 0, done.stderr
    assert re.search(r"out/000001\.png: stored frame damaged.*redoing frames 1 to 2", done.stderr), done.stderr
    from PIL import Image

    for name in ("000001.png", "000002.png"):
        with Image.open(out / name) as im:
            im.load()
    assert (out / "000001.png").read_bytes() == first  # the same bytes as the first time


def test_a_stored_frame_damaged_before_encoding_is_blamed_not_the_output(tmp_path):
    from nst_ort.base.errors import OutputError
    from nst_ort.commands.video import _read_rgb8

    bad = tmp_path / "000002.png"
    from PIL import Image

    Image.new("RGB", (64, 48), "red").save(bad)
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(OutputError, match=r"000002\.png: stored frame is damaged"):
        _read_rgb8(bad)


def test_batch_outputs_refuses_two_inputs_to_one_name(tmp_path):
    from nst_ort.base.errors import OutputError
    from nst_ort.media.outputs import batch_outputs

    files = [tmp_path / n for n in ("x-jpg.png", "x.jpg", "x.png", "y.webp")]
    with pytest.raises(OutputError, match=r"x-jpg\.png: both .*x-jpg\.png and .*x\.jpg would be written here"):
        batch_outputs(sorted(files), tmp_path / "out")
    pairs = batch_outputs([tmp_path / "x.jpg", tmp_path / "x.png", tmp_path / "y.webp"], tmp_path / "out")
    assert [o.name for _, o in pairs] == ["x-jpg.png", "x-png.png", "y.png"]


def test_memory_error_from_ffmpeg_is_not_damage(tmp_path, monkeypatch, material):
    """A resource limit while decoding (PyAV raises av.error.MemoryError, an FFmpegError) is exit 6
    and says so, not "damaged at frame N" (exit 3)."""
    import av

    from nst_ort.media import video_io
    from nst_ort.base.errors import OutOfMemory

    class Broken:
        def __init__(self, real):
            self.real = real
            self.streams = real.streams

        def decode(self, stream):
            raise av.error.MemoryError(12, "Cannot allocate memory")

        def close(self):
            self.real.close()

    real_open = video_io._open_input
    monkeypatch.setattr(video_io, "_open_input", lambda p: Broken(real_open(p)))
    with pytest.raises(OutOfMemory, match=r"in\.mp4: out of memory decoding frame 1 .*not damage"):
        list(video_io._decode(material / "in.mp4"))


def test_job_clean_up_and_restart_touch_only_the_tools_files(tmp_path):
    """remove(): the frames, the state and our own temporaries go; a user's files (hidden or not, a
    look-alike name) stay with the folder, and the warning names them. --restart does not read a
    damaged state (that is what it is for) and clears only the tool's files."""
    from nst_ort.commands.video_job import STATE, Job, StateError

    said = []
    folder = tmp_path / "out.mp4.frames"
    job = Job(folder, "fp", {}, warn=said.append)
    for i in (1, 2):
        (folder / f"{i:06d}.png").write_bytes(b"png")
    job.save()
    (folder / ".000003.png.abc_12.tmp").write_bytes(b"half")
    (folder / ".keep").write_text("mine")
    (folder / "0001.png").write_text("not a frame name of ours")
    left = job.remove()
    assert left == [".keep", "0001.png"] and sorted(p.name for p in folder.iterdir()) == left
    assert len(said) == 1 and ".keep" in said[0] and "kept" in said[0]
    (folder / ".keep").unlink()
    (folder / "0001.png").unlink()
    assert Job(tmp_path / "clean", "fp", {}).remove() == [] and not (tmp_path / "clean").exists()
    # a damaged state: refused without --restart (exit 2, naming it), cleared with it
    (folder / STATE).write_text('{"format": 1, "done": ')
    (folder / "000001.png").write_bytes(b"png")
    with pytest.raises(StateError, match=r"nst-ort-video\.json: damaged resume state \(not JSON") as e:
        Job(folder, "fp", {})
    assert e.value.exit_code == 2
    job = Job(folder, "fp", {"input": "x"}, restart=True)
    assert job.done == 0 and sorted(p.name for p in folder.iterdir()) == []
