"""Video in and out (nst_ort/media/video_io.py): probing, decoding, encoding with the frame rate kept and the
audio carried over (copied or re-encoded), checked by reading the written files back with PyAV."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from nst_ort.base.errors import OutputError
from nst_ort.media.images import to_uint8
from nst_ort.media.video_io import VideoError, check_video, open_source, write_video
from video_clips import NTSC, frames, needs, read_video, write_clip, write_folder

needs("av")


@pytest.fixture(scope="module")
def clip_frames():
    return frames((64, 48), 4)


def test_probe_and_decode_a_video(tmp_path, clip_frames):
    path = write_clip(tmp_path / "in.mp4", clip_frames)
    src = open_source(path)
    assert (src.kind, src.fps, src.fps_known, src.width, src.height, src.count, src.audio) == \
        ("video", NTSC, True, 64, 48, 4, "aac")
    decoded = list(src.frames())
    assert len(decoded) == 4 and decoded[0].dtype == np.float32 and decoded[0].shape == (48, 64, 3)
    # crf 4: near-lossless (yuv420p chroma subsampling is what remains)
    for ours, theirs in zip(decoded, clip_frames):
        assert np.abs(ours - theirs).mean() < 0.02
    assert open_source(path, fps=12).fps == 12  # --fps overrides


def test_probe_a_folder(tmp_path, clip_frames):
    folder = write_folder(tmp_path / "seq", clip_frames)
    (folder / "notes.txt").write_text("not a frame")
    src = open_source(folder)
    assert (src.kind, src.fps, src.fps_known, src.count) == ("folder", 25, False, 4)
    assert [p.name for p in src.files] == [f"frame_{i:03d}.png" for i in range(4)]
    assert open_source(folder, fps=29.97).fps == NTSC
    got = list(src.frames())
    assert all(np.abs(a - b).max() <= 0.5 / 255 + 1e-6 for a, b in zip(got, clip_frames))  # PNG: 8-bit exact


@pytest.mark.parametrize("ext,audio_in,audio_out", [
    (".mp4", "aac", "aac"),  # copied as it is
    (".webm", "aac", "opus"),  # webm takes no AAC: re-encoded
    (".mkv", "aac", "aac"),  # matroska takes anything
])
def test_write_video_keeps_rate_and_audio(tmp_path, clip_frames, ext, audio_in, audio_out):
    src = write_clip(tmp_path / "in.mp4", clip_frames, audio=audio_in, audio_seconds=3.0)  # audio longer than video
    out = tmp_path / f"out{ext}"
    note = write_video(out, (to_uint8(f) for f in clip_frames), 4, (64, 48), NTSC, audio_from=src)
    assert note.startswith("audio copied" if audio_in == audio_out else "audio re-encoded")
    check_video(out, 4, (64, 48), NTSC)
    imgs, fps, audio = read_video(out)
    assert len(imgs) == 4 and fps == NTSC
    assert np.abs(imgs[1] / 255.0 - clip_frames[1]).mean() < 0.03
    assert audio["codec"] == audio_out
    video_seconds = 4 / float(NTSC)
    # cut to the video's length (one audio frame of slack: 1024 samples at 44.1 kHz, 20 ms for opus)
    assert video_seconds - 0.05 <= audio["seconds"] <= video_seconds + 0.05, audio
    assert not list(tmp_path.glob(".*.tmp"))


def test_write_video_without_audio_and_from_a_folder_rate(tmp_path, clip_frames):
    out = tmp_path / "out.mp4"
    assert write_video(out, (to_uint8(f) for f in clip_frames), 4, (64, 48), Fraction(25)) is None
    imgs, fps, audio = read_video(out)
    assert (len(imgs), fps, audio) == (4, 25, None)
    with pytest.raises(OutputError, match="wrote 5 frames"):
        check_video(out, 5, (64, 48), Fraction(25))


def test_bad_inputs(tmp_path, clip_frames):
    text = tmp_path / "notes.mp4"
    text.write_text("hello, not a video\n" * 10)
    with pytest.raises(VideoError, match="not a video FFmpeg can read"):
        open_source(text)
    good = write_clip(tmp_path / "in.mp4", clip_frames)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # the index (moov) is at the end
    with pytest.raises(VideoError, match="not a video FFmpeg can read"):
        open_source(cut)
    empty = tmp_path / "empty.y4m"  # a valid header and no frame
    empty.write_text("YUV4MPEG2 W64 H48 F25:1 Ip A1:1 C420jpeg\n")
    src = open_source(empty)
    with pytest.raises(VideoError, match="has no frames"):
        list(src.frames())
    with pytest.raises(VideoError, match="no such file"):
        open_source(tmp_path / "missing.mp4")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(VideoError, match="no frames"):
        open_source(tmp_path / "nothing")
    (tmp_path / "zero.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match="empty file"):
        open_source(tmp_path / "zero.mp4")


def unsupported_codec_avi(path, imgs):
    """An AVI whose video codec tag no FFmpeg knows: an MPEG-4 AVI with its FourCC changed."""
    avi = write_clip(path.with_name("mpeg4.avi"), imgs, codec="mpeg4", audio=None)
    data = avi.read_bytes()
    assert data.count(b"FMP4") >= 1
    path.write_bytes(data.replace(b"FMP4", b"ZZZZ"))
    return path


def test_unsupported_codec(tmp_path, clip_frames):
    with pytest.raises(VideoError, match="codec is not supported"):
        open_source(unsupported_codec_avi(tmp_path / "zzzz.avi", clip_frames))


def test_mixed_frame_sizes_in_a_folder(tmp_path, clip_frames):
    from nst_ort.media.images import save_image

    folder = write_folder(tmp_path / "seq", clip_frames[:2])
    save_image(np.zeros((30, 40, 3), np.float32), folder / "frame_009.png")
    with pytest.raises(VideoError, match="frame_009.png: frame is 40x30"):
        list(open_source(folder).frames())
