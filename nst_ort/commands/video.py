"""nst-ort video IN STYLE [STYLE ...] -o OUT: a video or an image-sequence folder, frame by frame.

Each frame is one run of a Stylizer kept across frames (the public API: Config, Stylizer,
IterationRecords; `restart` on each new frame keeps the sessions). Modes:

- `per-frame`: every frame starts from its own content (flickers: each frame finds its own optimum);
- `warm` (Ruder et al. 2016's "prevWarped" initialization): frame t starts from the stylized frame
  t-1 warped onto frame t by the optical flow of the input frames;
- `temporal` (the default): warm, plus Ruder et al.'s short-term temporal loss
  lambda_t * mean(c (x - warp(prev))^2) through the model's temporal.onnx, an extra term that both
  loops run after the training graph (terms.py).

Frames are written as they finish into a frames folder with a small JSON state (video_job.py): the
same command run again after a kill resumes at the next frame. Each frame's record holds its losses
and the warping error of Lai et al. 2018 against the previous output frame (flow.py).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ..base.atomic import atomic_write
from ..base.errors import (EXIT_INTERRUPTED, Interrupted, NstError, OutputError, Terminated, UsageError, exit_for,
                           on_sigterm)
from ..base.extras import require
from ..engine.artifacts import Artifacts, sha256_file
from ..engine.config import max_threads
from ..engine.temporal import temporal_graph_path
from ..media import flow as F
from ..media.images import fit_size, load_image, resize, save_image
from ..media.outputs import Source, Target, check_writes, file_arg, image_bytes, resolved, special_kind
from ..media.video_io import (CONTAINERS, check_video, container_for, frame_rate, frame_times, open_source,
                              remove_stray_temporaries, video_duration, write_video)
from .distributed import default_shard_frames, video_shards, wanted
from .flags import HelpFormatter, Parser, add_scaleout_flags, int_flag, number_flag, tile_flag
from .video_frames import FrameStylizer, warn_once
from .video_job import STATE, Job, fingerprint, frame_name

MODES = ("per-frame", "warm", "temporal")
# lambda_t of --mode temporal in our normalization (weight * mean over 3*H*W of c (x - warp(prev))^2,
# pixels in [0, 1]; README "Loss normalization"), chosen by measuring (benchmarks/RESULTS.md, video).
TEMPORAL_WEIGHT = 1e8





def _fps(text: str):
    try:
        return frame_rate(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="nst-ort video", formatter_class=HelpFormatter,
                description="Stylize a video (mp4, webm, mkv, mov) or a folder of frames, frame by frame. "
                "Frames are written as they finish; run the same command again to resume after a kill.")
    p.add_argument("input", help="video file, or a folder of frames (sorted by name)")
    p.add_argument("styles", nargs="+", help="style image(s)")
    p.add_argument("-o", "--output", required=True,
                   help="video file (.mp4, .webm, .mkv, .mov: frame rate kept, audio carried over) or a folder (PNG frames)")
    p.add_argument("--mode", choices=MODES, default="temporal",
                   help="per-frame: each frame from its content; warm: from the previous stylized frame warped by "
                   "the flow; temporal: warm plus Ruder et al.'s short-term temporal loss (needs the model's temporal.onnx)")
    p.add_argument("--temporal-weight", type=float,
                   help=f"lambda_t of --mode temporal (default {TEMPORAL_WEIGHT:g}; pixels in [0, 1], mean over the "
                   "frame: docs/video.md)")
    p.add_argument("--size", type=int, default=384, help="long side of the output frames (rounded down to even)")
    p.add_argument("--iterations", type=int, default=100, help="iterations per frame")
    p.add_argument("--first-iterations", type=int,
                   help="iterations of the first frame (default: --iterations; Ruder et al. use twice as many)")
    p.add_argument("--frames", type=int, help="only the first N frames")
    p.add_argument("--fps", type=_fps, help="frame rate of a folder of frames (default 25), or override a video's; "
                   "e.g. 24, 29.97 or 30000/1001")
    p.add_argument("--flow", choices=["dis", "farneback"], default="dis", help="optical flow (OpenCV)")
    # Values checked at parse time by the still-image command's checkers (exit 2 naming the flag).
    p.add_argument("--content-weight", type=number_flag("loss.content_weight"), help="default: the model's")
    p.add_argument("--style-weight", type=number_flag("loss.style_weight"), help="default: the model's")
    p.add_argument("--tv-weight", type=number_flag("loss.tv_weight"), help="default: the model's")
    p.add_argument("--style-weights", help="blend weights of several styles, e.g. 0.7,0.3")
    p.add_argument("--optimizer", choices=["lbfgs", "adam"], default="lbfgs", help="optimizer per frame")
    p.add_argument("--lr", type=number_flag("optim.lr", positive=True), help="learning rate (lbfgs 1.0, adam 0.02)")
    p.add_argument("--seed", type=int_flag("seed", minimum=0), default=0,
                   help="random seed (kept per frame, so runs repeat)")
    p.add_argument("--model", help="artifact folder (default: the embedded VGG16)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--provider", help="an onnxruntime execution provider by name")
    p.add_argument("--threads", type=int_flag("threads", maximum=max_threads),
                   help="intra-op threads (at most the CPUs this process may use)")
    p.add_argument("--loop", choices=["auto", "device", "host"], default="auto",
                   help="device: image, gradient and optimizer state in device buffers; host: optimizer in numpy")
    p.add_argument("--tile", type=tile_flag, default=None,
                   help="N: each frame's loss and gradient exactly in tiles of N px (a multiple of the model's grid, "
                   "16 for VGG16); auto (default): untiled where a frame fits in memory, else the largest tile that "
                   "fits (docs/tiling.md)")
    p.add_argument("--report", help="write a JSON report: settings and every frame's losses, time and warping error")
    p.add_argument("--keep-frames", action="store_true", help="keep the frames folder (OUT.frames) after writing a video")
    p.add_argument("--restart", action="store_true", help="discard the frames of an earlier run of this output")
    add_scaleout_flags(p)
    p.add_argument("--shard-frames", type=int, help="with --workers: frames per shard (default: the frames "
                   "divided evenly among the workers)")
    p.add_argument("--overlap", type=int, default=2, help="with --workers: seam frames: the first N frames of each "
                   "shard but the first are stylized again after the shard before it, continuing its last frame and "
                   "blending into the shard's own (docs/video.md)")
    p.add_argument("-q", "--quiet", action="store_true", help="no line per frame")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    old = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return run(args)
    except (KeyboardInterrupt, Terminated):
        print("nst-ort: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - MemoryError, NstError, anything else: one line (errors.exit_for)
        return exit_for(e, args.debug)
    finally:
        signal.signal(signal.SIGTERM, old)


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _even_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """Frame size at `long_side`, rounded down to even (yuv420p video needs it; folders get the same)."""
    w, h = fit_size(width, height, long_side)
    return max(2, w - w % 2), max(2, h - h % 2)


def _plan_output(out: Path, inputs: list[Path], folder: bool = False) -> tuple[str, Path]:
    """('video', frames folder OUT.frames) or ('folder', OUT); refuses outputs that are inputs.
    folder: -o was typed with a trailing slash (`out.mp4/`), a folder of frames whatever its name."""
    for p in inputs:
        if out.exists() and _same(out, p):
            raise OutputError(f"{out}: output path is also an input ({p}); refusing to overwrite it")
    kind = special_kind(out)
    if kind is not None:
        raise OutputError(f"{out}: -o names a {kind}, not a regular file or folder; refusing to replace it")
    if folder:
        return "folder", out
    if container_for(out) is not None:
        if out.is_dir():
            raise OutputError(f"{out}: is a folder; give a video file name or a folder without a video extension")
        if not (out.parent if str(out.parent) else Path(".")).is_dir():
            raise OutputError(f"{out}: output folder {out.parent} does not exist")
        return "video", out.with_name(out.name + ".frames")
    if out.suffix and not out.is_dir():
        raise OutputError(f"{out}: unknown video extension {out.suffix!r} (use {', '.join(CONTAINERS)}, "
                          "or a folder for PNG frames)")
    return "folder", out


def _settings(args, size, styles, weights) -> dict:
    """What shapes the frames (the resume fingerprint); not --frames, so a run can be extended (a
    sharded run: its shard plan is part of it, so extending it means --shard-frames as before)."""
    keys = ("mode", "temporal_weight", "iterations", "first_iterations", "flow", "content_weight", "style_weight",
            "tv_weight", "optimizer", "lr", "seed", "device", "provider", "loop")
    # "seams": how shards meet (2: the seam pass); a run of another version's shards is not resumed
    shards = {"shard_frames": args.shard_frames, "overlap": args.overlap, "seams": 2} if args.shard_frames else None
    settings = {**{k: getattr(args, k) for k in keys}, "size": list(size), "style_weights": weights,
                "styles": [str(s) for s in styles], "model": args.model, "shards": shards, "format": 1}
    # --tile N changes the frames' float32 rounding (the sums run in another order), so a resume keeps
    # it; auto is left out, so the fingerprints of runs made before --tile existed still resume.
    if getattr(args, "tile", None) is not None:
        settings["tile"] = args.tile
    return settings


def _check_args(args) -> None:
    if (args.iterations < 1 or args.size < 16 or (args.frames is not None and args.frames < 1)
            or (args.first_iterations is not None and args.first_iterations < 1)):
        raise UsageError("--iterations, --first-iterations and --frames must be at least 1, --size at least 16")
    if args.temporal_weight is not None and not (np.isfinite(args.temporal_weight) and args.temporal_weight >= 0):
        raise UsageError(f"--temporal-weight must be a finite number >= 0, got {args.temporal_weight}")
    if args.temporal_weight is not None and args.mode != "temporal":
        raise UsageError(f"--temporal-weight is for --mode temporal (this run: --mode {args.mode})")
    if args.temporal_weight is None:
        args.temporal_weight = TEMPORAL_WEIGHT if args.mode == "temporal" else None
    if args.overlap < 0 or (args.shard_frames is not None and args.shard_frames < 1):
        raise UsageError("--overlap must be at least 0 and --shard-frames at least 1")


def run(args) -> int:
    require("av", "nst-ort video")
    require("cv2", "nst-ort video")

    _check_args(args)

    if wanted(args):
        require("ray", "--workers / --ray-address")
    src = open_source(Path(args.input), args.fps, warn=warn_once)
    styles = [Path(s) for s in args.styles]
    for s in styles:
        load_image(s)  # a bad style image fails now, not after the frames folder is made
    weights = [float(v) for v in args.style_weights.split(",")] if args.style_weights else [1.0] * len(styles)
    if len(weights) != len(styles):
        raise UsageError(f"{len(styles)} style image(s) but {len(weights)} --style-weights")
    out = Path(args.output)
    kind, folder = _plan_output(out, [src.path, *styles], folder=args.output.endswith(("/", os.sep)))
    if kind == "folder" and folder.exists() and _same(folder, src.path):
        raise OutputError(f"{out}: output folder is the input folder; give another")
    size = _even_size(src.width, src.height, args.size)
    artifacts = Artifacts(args.model)
    check_paths(args, src, styles, artifacts, kind, out, folder, size)
    sharded = wanted(args)
    contents = None
    if sharded:
        # The shard plan depends on the frame count: decode first (shards get their frames through Ray).
        contents = [resize(f, size) for i, f in enumerate(src.frames()) if args.frames is None or i < args.frames]
        if not contents:
            raise UsageError(f"{src.path}: no frames to stylize")
        args.shard_frames = args.shard_frames or _default_shard_frames(len(contents), args)
    if args.mode == "temporal":
        temporal_graph_path(artifacts)  # a model without temporal.onnx: one line, exit 4, before any work
    settings = _settings(args, size, styles, weights)
    settings["model_manifest"] = sha256_file(artifacts.path / "manifest.json")
    fp = fingerprint([src.files if src.kind == "folder" else src.path, *styles], settings)
    job = Job(folder, fp, {"input": str(src.path), "fps": str(src.fps), "size": list(size), "settings": settings},
              restart=args.restart, warn=warn_once)
    remove_stray_temporaries(folder)
    if job.done and not args.quiet:
        print(f"nst-ort: resuming {folder} after frame {job.done}", file=sys.stderr)
    limit = min(n for n in (args.frames, src.count) if n) if (args.frames or src.count) else None
    if sharded:
        return _run_sharded(args, artifacts, job, contents, styles, weights, kind, out, folder, size, src, settings)
    frames = FrameStylizer(args, artifacts, size, styles, weights, src.path)
    index = 0
    with _stops(job, out, folder, in_order=True):
        prev_content = None
        for frame in src.frames():
            if args.frames is not None and index >= args.frames:
                break
            index += 1
            content = resize(frame, size)
            if index <= job.done:
                prev_content = content
                continue
            # frame t-1 as written (read back from disk, also after a resume): the same bytes either way
            previous = (prev_content, load_image(job.frame_path(index - 1))) if prev_content is not None else None
            iterations = args.first_iterations if index == 1 and args.first_iterations else args.iterations
            path = job.frame_path(index)
            rec, _ = frames.frame(content, previous, iterations, lambda img, p=path: (save_image(img, p), load_image(p))[1])
            job.finish_frame(index, rec)
            prev_content = content
            _say_frame(index, limit, size, rec, args.quiet)
    # A run resumed with a smaller --frames than before stops at it (the frames past it stay on disk).
    count = min(job.done, index)
    return _finish(args, job, count, kind, out, size, src, settings)


def check_paths(args, src, styles: list[Path], artifacts, kind: str, out: Path, folder: Path,
                size: tuple[int, int]) -> None:
    """The still-image rule for a video run, before any work (outputs.check_writes): -o, --report
    and the frames folder's files against every file the run reads (the input video or each frame of
    the input folder, the styles, the model's files) and against each other; special files and
    symlinks refused; every folder written to present, writable, with room. The frames folder is the
    tool's: nothing the run reads may be in it, and --report may not be written into it; nothing is
    written into an input folder (its files are the frames, and the resume fingerprint)."""
    sources = [Source(src.path, "input video")] if src.kind == "video" else [Source(p, "input frame")
                                                                             for p in src.files]
    sources += [Source(s, "style image") for s in styles]
    sources.append(Source(artifacts.path / "manifest.json", "model file"))
    sources += [Source(artifacts.path / name, "model file") for name in artifacts.manifest["files"]]
    count = args.frames or src.count or 1
    if args.frames and src.count:
        count = min(args.frames, src.count)
    frame_bytes = image_bytes(*size)
    targets = []
    if kind == "video":
        targets.append(Target(out, "-o", count * 3 * size[0] * size[1] // 4 + (64 << 10)))
    report = file_arg(args.report, "--report") if args.report else None
    if report is not None:
        targets.append(Target(report, "--report", (64 << 10) + 600 * count))
    frames_dir = resolved(folder)
    for s in sources:
        r = resolved(s.path)
        if frames_dir == r or frames_dir in r.parents:
            raise OutputError(f"{s.path}: the {s.what} is inside the frames folder {folder}, which this run "
                              "writes; move it out or give another -o")
    if src.kind == "folder":
        inside = resolved(src.path)
        for t in [*targets, Target(folder, "-o")]:
            r = resolved(t.path)
            if inside in r.parents or (r == inside and t.flag != "-o"):
                raise OutputError(f"{t.path}: {t.flag} is inside the input folder {src.path}, whose files are "
                                  "the frames; write elsewhere")
    if report is not None and frames_dir == resolved(report).parent:
        raise OutputError(f"{report}: --report is inside the frames folder {folder}, which the run writes and "
                          "removes; write it elsewhere")
    if folder.is_dir():
        # The files the run writes there as they stand (a resume): never special files or links.
        # The first frame's target carries the frames' bytes (the folder's free space).
        there = lambda q: q.exists() or q.is_symlink()  # noqa: E731
        names = [STATE] + [frame_name(i) for i in range(2, count + 1) if there(folder / frame_name(i))]
        targets += [Target(folder / n, "-o") for n in names if there(folder / n)]
        targets.append(Target(folder / frame_name(1), "-o", count * frame_bytes))
    else:
        targets.append(Target(folder, "-o", count * frame_bytes))  # made by Job in its parent: probed there
    check_writes(targets, sources)


def _default_shard_frames(count: int, args) -> int:
    return default_shard_frames(count, args.workers or 1)


def _run_sharded(args, artifacts, job, contents, styles, weights, kind, out, folder, size, src, settings) -> int:
    """--workers / --ray-address: shards on Ray (distributed.py); frames are written here in order."""
    def on_frame(index: int, png: bytes, rec: dict) -> None:
        path = job.frame_path(index)
        atomic_write(path, lambda f: f.write(png))
        if rec.pop("recheck", False):
            # its task's previous frame is not the one written before it (the seam pass's, or the
            # previous shard's): measured again against the frame as written
            cur, prev = contents[index - 1], contents[index - 2]
            back, fwd = F.optical_flow(cur, prev, args.flow), F.optical_flow(prev, cur, args.flow)
            rec = {**rec, "warping_error": F.warping_error(load_image(path), load_image(job.frame_path(index - 1)),
                                                           back, F.consistency(back, fwd) >= 0.5)}
        job.finish_frame(index, rec)
        _say_frame(index, len(contents), size, rec, args.quiet)

    with _stops(job, out, folder, in_order=False):
        video_shards(args, artifacts, job, contents, styles, weights, on_frame)
    return _finish(args, job, min(job.done, len(contents)), kind, out, size, src, settings)


@contextlib.contextmanager
def _stops(job, out: Path, folder: Path, in_order: bool):
    """A run that stops: an error leaves no empty frames folder behind; Ctrl-C or SIGTERM is one line
    saying what is kept and how to go on (in_order: frames were made one by one, not in shards)."""
    try:
        yield
    except NstError:
        if job.done == 0 and job.created:
            job.remove()  # nothing done: leave no empty frames folder behind
        raise
    except (KeyboardInterrupt, Terminated):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        at = f" at frame {job.done + 1}" if in_order else ""
        raise Interrupted(f"{out}: interrupted{at}; {job.done} frame(s) done in {folder}; "
                          "run the same command again to resume") from None


def _say_frame(index: int, limit, size, rec: dict, quiet: bool) -> None:
    if rec.get("stopped"):
        warn_once(f"frame {index}: {rec['stopped']}")
    if quiet:
        return
    total = f"/{limit}" if limit else ""
    werr = rec.get("warping_error")
    we = f", warping error {werr:.5f}" if werr is not None else ""
    tl = f", temporal {rec['temporal']:.4g}" if rec.get("temporal") is not None else ""
    print(f"nst-ort video: frame {index}{total} {size[0]}x{size[1]}: loss {rec['loss']:.4g} "
          f"(style {rec['style']:.4g}, content {rec['content']:.4g}{tl}){we}, {rec['seconds']:.1f} s", file=sys.stderr)


def _finish(args, job, count: int, kind: str, out: Path, size, src, settings) -> int:
    """Encode (a video output), check, report, tidy up."""
    if count == 0:
        raise UsageError(f"{src.path}: no frames to stylize")
    job.state["total"] = count
    job.save()
    audio = None
    rate = f"{src.fps} fps"
    if kind == "video":
        # A variable-rate input keeps each frame's time (and so its audio's length); --fps retimes.
        times = frame_times(src.path) if src.kind == "video" and not args.fps else None
        if times is not None and len(times) < count:
            times = None  # fewer timestamps than decoded frames: no timing to keep, the constant rate
        if times is not None:
            times = times[:count]
            rate = f"variable frame rate, {video_duration(count, src.fps, times):.3f} s as the input"
        frames = (np.asarray(_read_rgb8(p)) for p in job.frame_paths()[:count])
        audio = write_video(out, frames, count, size, src.fps, audio_from=src.path if src.kind == "video" else None,
                            times=times)
        check_video(out, count, size, src.fps, times)
    if args.report:
        _write_report(Path(args.report), job, settings, out, audio)
    if kind == "video" and not args.keep_frames:
        job.remove()
    if not args.quiet:
        extra = f"; {audio}" if audio else ""
        print(f"wrote {out} ({count} frames, {size[0]}x{size[1]}, {rate}{extra})", file=sys.stderr)
    return 0


def _read_rgb8(path: Path) -> np.ndarray:
    """A stored frame for the encoder. A damaged one is blamed on itself, not on the video being
    written (exit 8); the next run redoes it (video_job.Job checks every stored frame)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - any decoder failure
        why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise OutputError(f"{path}: stored frame is damaged or missing ({why}); nothing was encoded; run the same "
                          "command again to redo it") from None


def summary(frames: list[dict]) -> dict:
    """Means over the frames: losses over all, the warping error over frames 2.. (it needs a previous)."""
    werr = [f["warping_error"] for f in frames if f.get("warping_error") is not None]
    mean = lambda k: float(np.mean([f[k] for f in frames])) if frames else None  # noqa: E731
    out = {"frames": len(frames), "warping_error": float(np.mean(werr)) if werr else None,
           "style": mean("style"), "content": mean("content"), "loss": mean("loss"), "seconds": mean("seconds")}
    if any("shard" in f for f in frames):  # a sharded run: the seams against the inside of the shards
        seams = [f["warping_error"] for f in frames if f.get("seam") and f.get("warping_error") is not None]
        inside = [f["warping_error"] for f in frames if not f.get("seam") and f.get("warping_error") is not None]
        out["warping_error_seams"] = float(np.mean(seams)) if seams else None
        out["warping_error_seams_max"] = float(np.max(seams)) if seams else None
        out["warping_error_inside_shards"] = float(np.mean(inside)) if inside else None
        out["warping_error_median"] = float(np.median(werr)) if werr else None
    return out


def _write_report(path: Path, job, settings: dict, out: Path, audio: str | None) -> None:
    body = {"output": str(out), "input": job.state["input"], "fps": job.state["fps"], "size": job.state["size"],
            "settings": settings, "audio": audio}
    frames = [f for f in job.state["frames"] if f["frame"] <= job.state["total"]]
    body.update(summary=summary(frames), frames=frames)
    text = json.dumps(body, indent=1, default=str) + "\n"
    try:
        atomic_write(path, lambda f: f.write(text), mode="w")
    except OSError as e:
        raise OutputError(f"{path}: cannot write the report ({e.strerror or e})") from None


