"""Video in and out: video files through PyAV (its wheels carry FFmpeg), image-sequence folders.

    src = open_source(path, fps=None)     # Source: kind, fps, size, audio; every failure a VideoError
    for frame in src.frames():            # float32 RGB [H, W, 3] in [0, 1]
        ...
    write_video(out, frame_paths, fps, audio_from=path)   # atomic; audio copied or re-encoded
    write_video(...) then check_video(out, count, fps)    # what was written is read back

Frames inside the runtime are what images are (nst_ort/media/images.py). A bad input (missing, not a video,
no video stream, no frames, a codec this FFmpeg cannot decode, damage mid-stream) is a VideoError
(exit code 3, like an unreadable image) naming the file and, mid-stream, the frame.
"""
from __future__ import annotations

import dataclasses
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..base.atomic import atomic_write
from ..base.errors import ImageError, OutOfMemory, OutputError
from ..base.extras import require
from .images import load_image
from .outputs import folder_entries, special_kind

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
DEFAULT_FPS = Fraction(25)

# output extension -> (FFmpeg muxer, video encoder, encoder options, audio codecs it can carry as they are,
#                      audio encoder when the input's cannot be copied)
CONTAINERS = {
    ".mp4": ("mp4", "libx264", {"crf": "18", "preset": "medium"}, {"aac", "mp3", "alac", "flac", "opus", "ac3", "eac3"}, "aac"),
    ".mov": ("mov", "libx264", {"crf": "18", "preset": "medium"}, {"aac", "mp3", "alac", "pcm_s16le", "pcm_s24le", "ac3"}, "aac"),
    ".mkv": ("matroska", "libx264", {"crf": "18", "preset": "medium"}, None, "libopus"),  # None: any codec
    ".webm": ("webm", "libvpx-vp9", {"crf": "30", "b": "0", "row-mt": "1"}, {"opus", "vorbis"}, "libopus"),
}


class VideoError(ImageError):
    """A video input that cannot be used; exit code 3 like an unreadable image (docs/errors.md)."""


def _av():
    return require("av", "video")


def _first_line(e: Exception) -> str:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return msg[:200]


@dataclasses.dataclass
class Source:
    path: Path
    kind: str  # "video" | "folder"
    fps: Fraction
    fps_known: bool  # False: a folder, or a video stream without a rate (DEFAULT_FPS or --fps used)
    width: int
    height: int
    count: int | None  # frames, when the container says (a folder: always)
    audio: str | None  # codec of the first audio stream, if any
    files: list[Path] = dataclasses.field(default_factory=list)  # a folder's frames, in order

    def frames(self) -> Iterator[np.ndarray]:
        """Every frame in order, float32 RGB [H, W, 3] in [0, 1]."""
        if self.kind == "folder":
            for p in self.files:
                img = load_image(p)
                if img.shape[:2] != (self.height, self.width):
                    raise VideoError(f"{p}: frame is {img.shape[1]}x{img.shape[0]}, the first frame of "
                                     f"{self.path} is {self.width}x{self.height}; all frames need one size")
                yield img
            return
        yield from _decode(self.path)


def _open_input(path: Path):
    av = _av()
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")
    refuse_special(path)
    if path.is_file() and path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file")
    try:
        return av.open(str(path))
    except PermissionError:
        raise VideoError(f"{path}: permission denied") from None
    except MemoryError as e:  # av.error.MemoryError is an FFmpegError too: a resource limit, not damage
        raise _out_of_memory(path, "opening it", e) from None
    except av.FFmpegError as e:
        raise VideoError(f"{path}: not a video FFmpeg can read ({_first_line(e)})") from None
    except (OSError, ValueError) as e:
        raise VideoError(f"{path}: cannot open ({_first_line(e)})") from None


def refuse_special(path: Path) -> None:
    """A FIFO, socket or device as the input: refused by stat, never opened (opening a FIFO blocks
    until a writer comes; a device is no video)."""
    kind = special_kind(path)
    if kind is not None:
        raise VideoError(f"{path}: is a {kind}, not a video file or a folder of frames; refusing to read it")


def _out_of_memory(path: Path, doing: str, e: BaseException) -> OutOfMemory:
    return OutOfMemory(f"{path}: out of memory {doing} ({_first_line(e) if isinstance(e, Exception) else e}); "
                       "this is a memory or address-space limit, not damage to the file")


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise VideoError(f"{path}: has no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise VideoError(f"{path}: its video codec is not supported (this FFmpeg build has no decoder for it); "
                         "convert it first, e.g. to H.264 or VP9")
    return stream


def _decode(path: Path) -> Iterator[np.ndarray]:
    av = _av()
    container = _open_input(path)
    try:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        i = 0
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24").astype(np.float32) / 255.0
                i += 1
        except MemoryError as e:
            raise _out_of_memory(path, f"decoding frame {i + 1}", e) from None
        except av.FFmpegError as e:
            raise VideoError(f"{path}: damaged at frame {i + 1} ({_first_line(e)})") from None
        if i == 0:
            raise VideoError(f"{path}: has no frames")
    finally:
        container.close()


def frame_rate(value: float | str | Fraction) -> Fraction:
    """A frame rate from 25, 29.97, "30000/1001", ...: the NTSC decimals 23.976, 29.97 and 59.94 mean
    24000/1001, 30000/1001 and 60000/1001, as in FFmpeg."""
    try:
        rate = Fraction(value)
    except (ValueError, ZeroDivisionError, TypeError):
        raise ValueError(f"not a frame rate: {value!r}") from None
    if rate <= 0 or rate > 1000:
        raise ValueError(f"frame rate {value} is out of range")
    for base in (24, 30, 48, 60, 120):
        ntsc = Fraction(base * 1000, 1001)
        if rate != ntsc and abs(rate - ntsc) < Fraction(6, 1000):
            return ntsc
    return rate.limit_denominator(1001)


def _image_files(folder: Path, warn=None) -> list[Path]:
    """The frames of a folder: its image files, sorted by name. Hidden files are not frames; every
    other entry that is not one (another extension, a subfolder, a FIFO, a dangling link) is named
    in a warning (`warn`), never dropped without a word."""
    why = {"folder": "a folder", "extension": f"not a frame ({', '.join(sorted(IMAGE_EXTS))})",
           "special": "not a regular file"}
    files = []
    for p, skipped in folder_entries(folder, IMAGE_EXTS, VideoError):
        if p.name.startswith("."):
            continue
        if not skipped:
            files.append(p)
        elif warn is not None:
            warn(f"{p}: {why[skipped]}, skipped (not one of the frames of {folder})")
    return files


def open_source(path: str | Path, fps: float | str | Fraction | None = None, warn=None) -> Source:
    """Probe a video file or an image-sequence folder (sorted by name). fps: the rate of a folder's
    frames, or an override for a video (default: the video's own rate). warn(line): called for each
    entry of a folder that is not a frame."""
    path = Path(path)
    if path.is_dir():
        files = _image_files(path, warn)
        if not files:
            raise VideoError(f"{path}: no frames (no {', '.join(sorted(IMAGE_EXTS))} files in this folder)")
        first = load_image(files[0])
        rate = frame_rate(fps) if fps else DEFAULT_FPS
        return Source(path, "folder", rate, fps is not None, first.shape[1], first.shape[0], len(files), None, files)
    container = _open_input(path)
    try:
        stream = _video_stream(container, path)
        rate = stream.average_rate or stream.guessed_rate
        known = bool(rate) and rate > 0
        if fps:
            rate, known = frame_rate(fps), True
        elif not known:
            rate = DEFAULT_FPS
        audio = container.streams.audio[0].codec_context.name if (
            container.streams.audio and container.streams.audio[0].codec_context is not None) else None
        w, h = stream.codec_context.width, stream.codec_context.height
        count = stream.frames or None
    finally:
        container.close()
    if not w or not h:
        raise VideoError(f"{path}: the video stream has no frame size")
    return Source(path, "video", Fraction(rate), known, w, h, count, audio)


def frame_times(path: Path) -> list[Fraction] | None:
    """Each frame's presentation time in seconds from the first (the video stream's packet
    timestamps, pts x time_base, sorted), where they are not evenly spaced: a variable-frame-rate
    video, whose timing the output keeps. None for a constant rate (steps equal within one tick of
    the stream's time base) or a stream without timestamps: the frames are then written at the
    source's rate."""
    times, tick = _packet_times(path)
    if len(times) < 3:
        return None
    steps = [b - a for a, b in zip(times, times[1:])]
    if min(steps) <= 0 or max(steps) - min(steps) <= tick:
        return None
    return times


def _packet_times(path: Path) -> tuple[list[Fraction], Fraction]:
    """The video stream's packet times in seconds from the first, sorted (presentation order), and
    its time base."""
    container = _open_input(path)
    try:
        stream = _video_stream(container, path)
        tb = stream.time_base
        try:
            pts = sorted(packet.pts for packet in container.demux(stream) if packet.pts is not None)
        except MemoryError as e:
            raise _out_of_memory(path, "reading its timestamps", e) from None
        except _av().FFmpegError as e:
            raise VideoError(f"{path}: damaged ({_first_line(e)})") from None
    finally:
        container.close()
    if not pts or tb is None:
        return [], Fraction(0)
    return [Fraction(int(v - pts[0])) * Fraction(tb) for v in pts], Fraction(tb)


# -- writing ------------------------------------------------------------------------------------------

def container_for(path: Path):
    return CONTAINERS.get(path.suffix.lower())


def _audio_packets(container, stream, start: float, end: float):
    """(time in the output, packet) of an input audio stream from `start` (the video's first frame)
    to `end` seconds after it."""
    for packet in container.demux(stream):
        if packet.dts is None or packet.pts is None:
            continue  # the demuxer's end-of-stream marker
        t = float(packet.pts * packet.time_base) - start
        if t >= end:
            break
        if t < 0:
            continue
        yield t, packet


def _time_base(times: list[Fraction]) -> Fraction:
    """A time base in which every one of `times` is a whole number of ticks (at most 1/90000 s, the
    MPEG clock, when they need finer)."""
    den = 1
    for t in times:
        den = den * t.denominator // np.gcd(den, t.denominator)
    return Fraction(1, den) if den <= 90000 else Fraction(1, 90000)


def _encode(f, muxer: str, frames: Iterable[np.ndarray], size: tuple[int, int], fps: Fraction, spec,
            audio_from: Path | None, duration: float, times: list[Fraction] | None = None) -> str | None:
    av = _av()
    _, codec, options, copyable, audio_codec = spec
    out = av.open(f, "w", format=muxer)
    audio_note = None
    try:
        v = out.add_stream(codec, rate=fps, options=dict(options))
        v.width, v.height, v.pix_fmt = size[0], size[1], "yuv420p"
        tb = Fraction(fps.denominator, fps.numerator)
        if times is not None:  # variable rate: each frame at its own time, in a base that holds them all
            tb = _time_base(times)
            v.codec_context.time_base = tb
            v.time_base = tb
        src = a_in = a_out = resampler = None
        pending = iter(())
        if audio_from is not None:
            src = av.open(str(audio_from))
            if src.streams.audio and src.streams.audio[0].codec_context is not None:
                a_in = src.streams.audio[0]
                start = src.streams.video[0].start_time if src.streams.video else None
                start_s = float(start * src.streams.video[0].time_base) if start is not None else 0.0
                if copyable is None or a_in.codec_context.name in copyable:
                    a_out = out.add_stream_from_template(a_in)
                    audio_note = f"audio copied ({a_in.codec_context.name})"
                else:
                    rate = 48000 if audio_codec == "libopus" else (a_in.codec_context.sample_rate or 48000)
                    a_out = out.add_stream(audio_codec, rate=rate)
                    layout = a_in.codec_context.layout.name if a_in.codec_context.layout else "stereo"
                    if a_in.codec_context.channels > 2 or layout not in ("mono", "stereo"):
                        layout = "stereo"
                    a_out.codec_context.layout = layout
                    resampler = av.AudioResampler(format=a_out.codec_context.format, layout=layout, rate=rate)
                    audio_note = f"audio re-encoded ({a_in.codec_context.name} -> {audio_codec})"
                pending = _audio_packets(src, a_in, start_s, duration)
        nxt = next(pending, None)

        def audio_until(t_limit: float) -> None:
            nonlocal nxt
            while nxt is not None and nxt[0] <= t_limit:
                t, packet = nxt
                if resampler is None:  # copy: shift onto the output's time line
                    shift = round(Fraction(t) / packet.time_base) - packet.pts
                    packet.pts += shift
                    packet.dts += shift
                    packet.stream = a_out
                    out.mux(packet)
                else:
                    for frame in packet.decode():
                        frame.pts = None  # the encoder counts samples
                        for rf in resampler.resample(frame):
                            out.mux(a_out.encode(rf))
                nxt = next(pending, None)

        for i, img in enumerate(frames):
            pts = i if times is None else round(times[i] / tb)
            audio_until(float(pts * tb))
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = pts, tb
            out.mux(v.encode(frame))
        out.mux(v.encode())
        audio_until(float("inf"))
        if resampler is not None:
            for rf in resampler.resample(None):
                out.mux(a_out.encode(rf))
            out.mux(a_out.encode())
        if src is not None:
            src.close()
    finally:
        out.close()
    return audio_note


def video_duration(count: int, fps: Fraction, times: list[Fraction] | None = None) -> float:
    """Seconds the video lasts: count / fps, or (variable rate) the last frame's time plus the
    interval before it."""
    if times is None or count < 2:
        return count * float(Fraction(fps.denominator, fps.numerator))
    times = times[:count]
    return float(times[-1] + (times[-1] - times[-2]))


def write_video(out: Path, frames: Iterable[np.ndarray], count: int, size: tuple[int, int], fps: Fraction,
                audio_from: Path | None = None, times: list[Fraction] | None = None) -> str | None:
    """Encode uint8 RGB frames [H, W, 3] (even width and height, for yuv420p) into `out`, atomically
    (temporary file, fsync, rename). With audio_from, its first audio stream is carried over for the
    video's duration: copied when the container takes its codec, re-encoded otherwise. times: each
    frame's time in seconds (a variable-rate source, frame_times), else frame i is at i / fps.
    Returns a note saying what happened to the audio (None: there was none)."""
    spec = container_for(out)
    if spec is None:
        raise OutputError(f"{out}: unknown video extension {out.suffix!r} (use {', '.join(CONTAINERS)}, "
                          "or a folder for PNG frames)")
    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"frame size {size} must be even for yuv420p")
    av = _av()
    times = times[:count] if times is not None else None
    duration = video_duration(count, fps, times)
    note: list = [None]
    try:
        atomic_write(out, lambda f: note.__setitem__(0, _encode(f, spec[0], frames, size, fps, spec, audio_from,
                                                                duration, times)))
    except av.FFmpegError as e:
        raise OutputError(f"{out}: encoding failed ({_first_line(e)})") from None
    except OSError as e:
        raise OutputError(f"{out}: cannot write ({e.strerror or e})") from None
    return note[0]


def check_video(path: Path, count: int, size: tuple[int, int], fps: Fraction,
                times: list[Fraction] | None = None) -> None:
    """Read back what was written: frame count, size and rate (variable rate: each frame's time,
    within a millisecond) must be what was asked for."""
    src = open_source(path)
    n = sum(1 for _ in src.frames())
    if n != count or (src.width, src.height) != tuple(size) or (times is None and src.fps != fps):
        raise OutputError(f"{path}: wrote {count} frames {size[0]}x{size[1]} at {fps} fps but read back {n} "
                          f"frames {src.width}x{src.height} at {src.fps} fps")
    if times is not None:
        got, _ = _packet_times(path)
        want = times[:count]
        if len(got) != len(want) or max(abs(float(a - b)) for a, b in zip(got, want)) > 1e-3:
            raise OutputError(f"{path}: the frames' times read back differ from the input's")


def remove_stray_temporaries(folder: Path, names: tuple[str, ...] = ("[0-9]*.png", "nst-ort-video.json")) -> None:
    """Leftovers of our writes killed midway (.NAME.XXXX.tmp, from atomic_write); others' files stay."""
    for p in (q for name in names for q in folder.glob(f".{name}.*.tmp")):
        try:
            os.unlink(p)
        except OSError:
            pass
