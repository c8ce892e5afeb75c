"""`nst-ort video` end to end through the real CLI (torch blocked): outputs read back with PyAV, a run
killed mid-frame resumed to the same bytes as an uninterrupted run, and every bad input one line with
its documented exit code (docs/video.md, docs/errors.md)."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import EXAMPLES, ROOT, cli_command, cli_env, run_cli, without_tile_graphs
from nst_ort.media.images import load_image
from video_clips import NTSC, frames, needs, read_video, temporal_model, write_clip, write_folder  # noqa: F401

needs("av")
needs("cv2")

STYLE = EXAMPLES / "starry_night.jpg"
FAST = ["--size", "64", "--iterations", "4", "--threads", "1", "-q"]


@pytest.fixture(autouse=True)
def _model_with_temporal(temporal_model, monkeypatch):
    """The default mode (temporal) needs temporal.onnx: the default model, or a copy with it added
    where the default model lacks it (subprocesses take it from NST_ORT_MODEL)."""
    monkeypatch.setenv("NST_ORT_MODEL", str(temporal_model))


@pytest.fixture(scope="module")
def clip_frames():
    return frames((64, 48), 3)


def _one_line(done, code):
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nst-ort: error: ") and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_video_to_video_keeps_rate_and_audio(tmp_path, clip_frames):
    """mp4 with AAC in, mp4 out (warm start): 3 frames at 30000/1001 fps, the audio copied and cut to
    the video's length, the frames folder gone, a report with each frame's losses and warping error."""
    src = write_clip(tmp_path / "in.mp4", clip_frames)
    out, report = tmp_path / "out.mp4", tmp_path / "run.json"
    done = run_cli(["video", src, STYLE, "-o", out, "--report", report, *FAST])
    assert done.returncode == 0, done.stderr
    imgs, fps, audio = read_video(out)
    assert (len(imgs), imgs[0].shape, fps) == (3, (48, 64, 3), NTSC)
    assert audio["codec"] == "aac" and abs(audio["seconds"] - 3 / float(NTSC)) < 0.05
    assert not (tmp_path / "out.mp4.frames").exists()
    r = json.loads(report.read_text())
    assert [f["frame"] for f in r["frames"]] == [1, 2, 3]
    assert [f["init"] for f in r["frames"]] == ["content", "warped previous", "warped previous"]
    assert r["settings"]["mode"] == "temporal" and r["settings"]["temporal_weight"] > 0
    assert r["frames"][0]["temporal"] is None and all(f["temporal"] > 0 for f in r["frames"][1:])
    assert r["frames"][0]["warping_error"] is None and all(f["warping_error"] > 0 for f in r["frames"][1:])
    assert all(f["iterations"] == 4 and np.isfinite(f["loss"]) for f in r["frames"])
    # the frames are stylized, not the input passed through: further from the clip than the input video's
    # own encoding noise (4 iterations at 64 px: measured 2.2x; libx264 output varies in the low bits)
    decoded_input, _, _ = read_video(src)
    noise = np.abs(decoded_input[1] / 255.0 - clip_frames[1]).mean()
    assert np.abs(imgs[1] / 255.0 - clip_frames[1]).mean() > 1.5 * noise


def test_per_frame_mode_folder_to_webm(tmp_path, clip_frames):
    folder = write_folder(tmp_path / "seq", clip_frames[:2])
    out, report = tmp_path / "out.webm", tmp_path / "run.json"
    done = run_cli(["video", folder, STYLE, "-o", out, "--mode", "per-frame", "--fps", "12", "--report", report,
                    *FAST])
    assert done.returncode == 0, done.stderr
    imgs, fps, audio = read_video(out)
    assert (len(imgs), fps, audio) == (2, 12, None)
    assert [f["init"] for f in json.loads(report.read_text())["frames"]] == ["content", "content"]


def _wait_for_frames(proc, state, n, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise AssertionError(f"finished early: {proc.stderr.read()}")
        try:
            if json.loads(state.read_text())["done"] >= n:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_killed_run_resumes_at_the_next_frame(tmp_path, clip_frames):
    """SIGKILL during frame 3, then the same command: frames 1-2 are kept as they were, frame 3 is
    made, and every frame equals an uninterrupted run's byte for byte (warm start reads frame t-1
    back from disk in both). SIGTERM: exit 130 and one line saying how far it got."""
    folder = write_folder(tmp_path / "seq", clip_frames)
    out = tmp_path / "frames"
    args = ["video", folder, STYLE, "-o", out, *FAST]
    proc = subprocess.Popen(cli_command(args), env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_frames(proc, out / "nst-ort-video.json", 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    state = json.loads((out / "nst-ort-video.json").read_text())
    assert state["done"] == 2 and not (out / "000003.png").exists()
    before = {p.name: p.read_bytes() for p in out.glob("0*.png")}
    done = run_cli(args[:-1])  # not quiet: it says where it resumes
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr and "after frame 2" in done.stderr
    assert "frame 1/" not in done.stderr and "frame 3/3" in done.stderr
    after = {p.name: p.read_bytes() for p in out.glob("0*.png")}
    assert sorted(after) == ["000001.png", "000002.png", "000003.png"]
    assert all(after[k] == v for k, v in before.items())
    straight = tmp_path / "straight"
    assert run_cli(["video", folder, STYLE, "-o", straight, *FAST]).returncode == 0
    assert all((straight / k).read_bytes() == v for k, v in after.items())
    # the same output with other settings is refused, not mixed
    line = _one_line(run_cli(["video", folder, STYLE, "-o", out, *FAST[:2], "--iterations", "5", "-q"]), 2)
    assert "another run" in line and "--restart" in line
    # SIGTERM: the frames done are kept and the line says so
    term = tmp_path / "term"
    proc = subprocess.Popen(cli_command(["video", folder, STYLE, "-o", term, *FAST]), env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_frames(proc, term / "nst-ort-video.json", 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("nst-ort: ") and "interrupted at frame" in err
    assert "run the same command again to resume" in err and "Traceback" not in err


def test_bad_inputs_one_line_each(tmp_path, clip_frames):
    from test_video_io import unsupported_codec_avi

    good = write_clip(tmp_path / "in.mp4", clip_frames[:1])
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 20)
    empty = tmp_path / "empty.y4m"
    empty.write_text("YUV4MPEG2 W64 H48 F25:1 Ip A1:1 C420jpeg\n")
    (tmp_path / "nothing").mkdir()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep me")
    cases = [
        (["video", text, STYLE, "-o", tmp_path / "o1.mp4"], 3, "not a video"),
        (["video", unsupported_codec_avi(tmp_path / "zzzz.avi", clip_frames), STYLE, "-o", tmp_path / "o2.mp4"], 3,
         "codec is not supported"),
        (["video", empty, STYLE, "-o", tmp_path / "o3.mp4"], 3, "has no frames"),
        (["video", tmp_path / "nothing", STYLE, "-o", tmp_path / "o4"], 3, "no frames"),
        (["video", tmp_path / "missing.mp4", STYLE, "-o", tmp_path / "o5.mp4"], 3, "no such file"),
        (["video", good, tmp_path / "missing.jpg", "-o", tmp_path / "o6.mp4"], 3, "missing.jpg"),
        (["video", good, STYLE, "-o", good], 8, "also an input"),
        (["video", good, STYLE, "-o", tmp_path / "o7.gif"], 8, "unknown video extension"),
        (["video", good, STYLE, "-o", busy], 8, "holds other files"),
        (["video", good, STYLE, "-o", tmp_path / "no" / "o8.mp4"], 8, "does not exist"),
        (["video", good, STYLE, "-o", tmp_path / "o12.mp4", "--report", good], 8, "--report would overwrite the input video"),
        (["video", good, STYLE, "-o", tmp_path / "o9.mp4", "--fps", "fast"], 2, "--fps"),
        (["video", good, STYLE, "-o", tmp_path / "o10.mp4", "--iterations", "0"], 2, "--iterations"),
        (["video", good, STYLE, "-o", tmp_path / "o13.mp4", "--temporal-weight", "-1"], 2, "--temporal-weight"),
        (["video", good, STYLE, "-o", tmp_path / "o14.mp4", "--mode", "warm", "--temporal-weight", "1e7"], 2,
         "--temporal-weight is for --mode temporal"),
        (["video", good, STYLE, "-o", tmp_path / "o15.mp4", "--model", _without_temporal(tmp_path)], 4,
         "python -m nst_ort_export.temporal"),
    ]
    for args, code, words in cases:
        done = run_cli([*args, "-q"])
        if code == 2 and "--fps" in args:  # argparse's own line: "nst-ort video: error: ..."
            assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and words in done.stderr
            continue
        line = _one_line(done, code)
        assert words in line, (args, line)
    assert (busy / "mine.txt").read_text() == "keep me" and sorted(p.name for p in busy.iterdir()) == ["mine.txt"]
    # nothing was left behind by the failed runs
    assert not list(tmp_path.glob("o[0-9]*"))
    # without PyAV: which extra to install
    line = _one_line(run_cli(["video", good, STYLE, "-o", tmp_path / "o11.mp4"], prelude="sys.modules['av'] = None; "), 2)
    assert "pip install 'nst-ort[video]'" in line
    # --workers without Ray: which extra to install
    line = _one_line(run_cli(["video", good, STYLE, "-o", tmp_path / "o16.mp4", "--workers", "2"],
                             prelude="sys.modules['ray'] = None; "), 2)
    assert "pip install 'nst-ort[ray]'" in line


def _without_temporal(tmp_path) -> Path:
    """A copy of the default model without temporal.onnx (as the committed one was before it got it)."""
    import shutil

    model = tmp_path / "no-temporal"
    shutil.copytree(ROOT / "models" / "vgg16", model)
    (model / "temporal.onnx").unlink(missing_ok=True)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest.pop("terms", None)
    manifest["files"].pop("temporal.onnx", None)
    (model / "manifest.json").write_text(json.dumps(manifest))
    return model


def test_runtime_imports_without_the_video_extra():
    """Without PyAV and OpenCV every module imports, numpy parts work, and what needs them says
    which extra to install."""
    code = (
        "import sys; sys.modules['av'] = None; sys.modules['cv2'] = None; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "import nst_ort, nst_ort.commands.cli, nst_ort.commands.video, nst_ort.media.video_io, nst_ort.commands.video_job, nst_ort.media.flow, "
        "nst_ort.engine.temporal, nst_ort.media.video_synthetic\n"
        "from nst_ort.media import flow\n"
        "from nst_ort.base.errors import UsageError\n"
        "out, inside = flow.warp(np.ones((4, 5, 3)), np.zeros((4, 5, 2)))\n"
        "assert inside.all() and (out == 1).all()\n"
        "try:\n"
        "    flow.optical_flow(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))\n"
        "except UsageError as e:\n"
        "    print(e)\n"
    )
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=cli_env(),
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "pip install 'nst-ort[video]'" in done.stdout and "opencv-python-headless" in done.stdout


def test_docs_commands_run_as_written(tmp_path):
    """The commands of docs/video.md, as written, in a folder that has the examples (and a photos/
    folder of two of them, and an empty out_folder/, for the batch command); the Ray ones need the [ray] extra."""
    import shlex
    import shutil
    import sys

    doc = (ROOT / "docs" / "video.md").read_text()
    commands = [line.strip() for line in doc.splitlines()
                if line.startswith(("    nst-ort ", "    python -m nst_ort.media.video_synthetic "))]
    assert len(commands) == 4, commands
    (tmp_path / "examples").symlink_to(EXAMPLES)
    (tmp_path / "photos").mkdir()
    (tmp_path / "out_folder").mkdir()
    for name in ("chelsea_cat.jpg", "coffee.jpg"):
        shutil.copy(EXAMPLES / name, tmp_path / "photos" / name)
    for command in commands:
        argv = shlex.split(command)
        if "--workers" in argv:
            needs("ray")
        full = cli_command(argv[1:]) if argv[0] == "nst-ort" else [sys.executable, *argv[1:]]
        done = subprocess.run(full, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, (command, done.stderr)
    imgs, fps, _ = read_video(tmp_path / "clip_starry.mp4")
    assert (len(imgs), imgs[0].shape, fps) == (4, (96, 128, 3), 12)
    report = json.loads((tmp_path / "clip_starry.json").read_text())
    assert len(report["frames"]) == 4 and report["summary"]["warping_error"] > 0
    assert sorted(p.name for p in (tmp_path / "out_folder").iterdir()) == ["chelsea_cat.png", "coffee.png"]


def test_readme_video_commands_are_the_demo_s():
    """docs/usage.md's video commands (the README's before it was split) are the ones
    examples/video_demo.py runs (it made the figure), and they parse. (Running them takes minutes:
    the docs test above runs the same modes smaller.)"""
    import shlex

    from nst_ort.commands.video import build_parser

    usage = (ROOT / "docs" / "usage.md").read_text()
    demo = (ROOT / "examples" / "video_demo.py").read_text()
    start = usage.index("## Video")
    section = usage[start:usage.index("\n## ", start)]
    commands = [line.strip() for line in section.splitlines() if line.startswith(("    nst-ort ", "    python -m "))]
    assert len(commands) == 3 and all(c in demo for c in commands), commands
    for c in commands[1:]:
        args = build_parser().parse_args(shlex.split(c)[2:])
        assert args.mode in ("per-frame", "temporal") and args.size == 192


def test_a_diverging_frame_keeps_its_last_finite_image_and_the_run_goes_on(tmp_path, clip_frames):
    """Adam at lr 1e30: every frame's second step is not finite. Each frame keeps the image its first
    step evaluated (its content, or the warped previous frame), says so, and the video is complete."""
    folder = write_folder(tmp_path / "seq", clip_frames[:2])
    out, report = tmp_path / "out", tmp_path / "run.json"
    done = run_cli(["video", folder, STYLE, "-o", out, "--optimizer", "adam", "--lr", "1e30", "--report", report,
                    *FAST])
    assert done.returncode == 0, done.stderr
    frames_ = json.loads(report.read_text())["frames"]
    assert [f["iterations"] for f in frames_] == [1, 1]
    assert all("not finite" in f["stopped"] or "loss became" in f["stopped"] for f in frames_)
    assert "frame 1: " in done.stderr and "frame 2: " in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in out.glob("0*.png")) == ["000001.png", "000002.png"]


def test_tiled_frames_follow_untiled(tmp_path, clip_frames):
    """--tile 16 (12 tiles a frame, crops clipped at every border) on the synthetic clip, temporal mode:
    each frame's losses (the temporal term's included) and the frames written equal the untiled run's
    within float32 rounding carried through 4 L-BFGS iterations and the warm starts; the device loop
    (the default model has its optimizer graphs) and the host loop both run tiled."""
    folder = write_folder(tmp_path / "seq", clip_frames)
    runs = {}
    for name, extra in (("whole", ["--tile", "auto"]), ("tiled", ["--tile", "16"]),
                        ("host", ["--tile", "16", "--loop", "host"])):
        out, report = tmp_path / name, tmp_path / f"{name}.json"
        done = run_cli(["video", folder, STYLE, "-o", out, "--report", report, *FAST, *extra])
        assert done.returncode == 0, done.stderr
        runs[name] = (json.loads(report.read_text()), [np.asarray(load_image(p)) for p in sorted(out.glob("0*.png"))])
    whole, whole_frames = runs["whole"]
    assert [f["tile"] for f in whole["frames"]] == [None] * 3 and "tile" not in whole["settings"]
    for name in ("tiled", "host"):
        r, imgs = runs[name]
        assert [f["tile"] for f in r["frames"]] == [16] * 3 and r["settings"]["tile"] == 16
        assert all(f["temporal"] > 0 for f in r["frames"][1:])
        for key in ("loss", "content", "style", "tv", "temporal"):
            got, want = [f[key] for f in r["frames"]], [f[key] for f in whole["frames"]]
            assert np.allclose(np.array(got, float), np.array(want, float), rtol=1e-4, equal_nan=True), (name, key, got, want)
        # 8-bit frames: a value near a rounding boundary may flip one level
        assert max(np.abs(a - b).max() for a, b in zip(imgs, whole_frames)) <= 2 / 255 + 1e-6, name


def test_tile_flag_refusals(tmp_path, clip_frames, default_model):
    """--tile not on the model's grid, and --tile on a model without tile graphs: one line, exit 2."""
    folder = write_folder(tmp_path / "seq", clip_frames[:1])
    line = _one_line(run_cli(["video", folder, STYLE, "-o", tmp_path / "a", *FAST, "--tile", "40"]), 2)
    assert "--tile 40" in line and "multiple of 16" in line
    bare = without_tile_graphs(default_model, tmp_path / "bare")
    line = _one_line(run_cli(["video", folder, STYLE, "-o", tmp_path / "b", *FAST, "--mode", "per-frame",
                              "--model", bare, "--tile", "32"]), 2)
    assert "no tiled graphs" in line and not (tmp_path / "b").exists()
