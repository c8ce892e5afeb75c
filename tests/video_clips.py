"""Small video files for the video tests, made with PyAV from the synthetic clip (known motion)."""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from nst_ort.media.images import load_image, save_image, to_uint8
from nst_ort.media.video_synthetic import camera_clip

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NTSC = Fraction(30000, 1001)


def needs(module: str):
    """The [video] extra's module; skipped where it is not installed, but required in CI (CI=true,
    .ci/run installs the extra), so that no video test can quietly stop running there."""
    import pytest

    if os.environ.get("CI"):
        return __import__(module)
    return pytest.importorskip(module)


def frames(size=(64, 48), count=3) -> list[np.ndarray]:
    return camera_clip(load_image(EXAMPLES / "tuebingen_neckarfront.jpg"), size, frames=count, pan=(2.0, 1.0),
                       zoom=1.01, obj=load_image(EXAMPLES / "chelsea_cat.jpg"), obj_size=size[0] // 5).frames


def tone(seconds: float, rate: int = 44100) -> np.ndarray:
    """A 440 Hz stereo tone, float32 [2, n]."""
    x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
    return np.stack([x, x])


def write_clip(path: Path, imgs: list[np.ndarray], fps=NTSC, codec="libx264", audio: str | None = "aac",
               audio_seconds: float | None = None) -> Path:
    """A video with the frames (near-lossless) and, unless audio is None, a tone longer than the video."""
    import av

    out = av.open(str(path), "w")
    v = out.add_stream(codec, rate=fps, options={"crf": "4"} if codec == "libx264" else {})
    v.width, v.height, v.pix_fmt = imgs[0].shape[1], imgs[0].shape[0], "yuv420p"
    a = None
    if audio:
        a = out.add_stream(audio, rate=48000 if audio == "libopus" else 44100)
    for i, img in enumerate(imgs):
        f = av.VideoFrame.from_ndarray(to_uint8(img), format="rgb24")
        f.pts, f.time_base = i, Fraction(fps.denominator, fps.numerator)
        out.mux(v.encode(f))
    out.mux(v.encode())
    if a is not None:
        rate = a.codec_context.sample_rate
        samples = tone(audio_seconds or (len(imgs) / float(fps) + 0.5), rate)
        step = 960 if audio == "libopus" else 1024
        for n in range(0, samples.shape[1] - step + 1, step):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, n:n + step]), format="fltp", layout="stereo")
            af.sample_rate, af.pts = rate, n
            out.mux(a.encode(af))
        out.mux(a.encode())
    out.close()
    return path


def write_folder(folder: Path, imgs: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(imgs):
        save_image(img, folder / f"frame_{i:03d}.png")
    return folder


def read_video(path: Path):
    """(frames uint8 list, fps, audio stream info or None) of a video file."""
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        fps = v.average_rate
        audio = None
        if c.streams.audio:
            a = c.streams.audio[0]
            audio = {"codec": a.codec_context.name,
                     "seconds": float(a.duration * a.time_base) if a.duration else None}
        imgs = [f.to_ndarray(format="rgb24") for f in c.decode(v)]
    if audio is not None and audio["seconds"] is None:  # webm/mkv keep no per-stream duration: sum packets
        with av.open(str(path)) as c:
            a = c.streams.audio[0]
            end = max(float((p.pts + p.duration) * p.time_base) for p in c.demux(a) if p.pts is not None)
            audio["seconds"] = end
    return imgs, fps, audio


def model_with_temporal(default_model: Path, tmp: Path) -> Path:
    """The default model if it has temporal.onnx; else a copy of it with the in-place adder run
    (python -m nst_ort_export.temporal), as the project's model gets it."""
    import json
    import shutil
    import subprocess
    import sys

    manifest = json.loads((default_model / "manifest.json").read_text())
    if "temporal" in (manifest.get("terms") or {}):
        return default_model
    model = tmp / "vgg16-temporal"
    shutil.copytree(default_model, model)
    done = subprocess.run([sys.executable, "-m", "nst_ort_export.temporal", str(model)], capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    return model


def _temporal_model_fixture(tmp_path_factory):
    return model_with_temporal(EXAMPLES.parent / "models" / "vgg16", tmp_path_factory.mktemp("models"))


try:
    import pytest as _pytest

    temporal_model = _pytest.fixture(scope="session")(_temporal_model_fixture)
except ImportError:  # used outside pytest (benchmarks)
    pass
