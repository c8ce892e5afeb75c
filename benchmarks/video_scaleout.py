"""Ray scale-out: 1 vs 2 local workers on a batch folder, and the warping error at video shard seams.

    python benchmarks/video_scaleout.py --model MODEL_WITH_TEMPORAL_ONNX [--size 128] [--iterations 40]

1. Batch: 4 content images (examples/), one style, through `nst-ort FOLDER STYLE -o OUT` sequentially
   (--threads 2), then with --workers 1 (--threads 2) and --workers 2 (--threads 1 each): wall time
   of each, Ray's start included (it is part of what a user waits for).
2. Video: the synthetic clip of benchmarks/video_consistency.py (known flow), temporal mode, run
   sequentially and in shards of `--shard-frames` on 2 workers with --overlap 0 (no seam pass: a
   shard's first frame is a fresh chain beside the previous shard's last) and with the default
   overlap (warm-up and seam pass, docs/video.md): each frame's warping error (true flow), the
   seam frames' worst against the clip's median (issue 21: at most 2x), and the figure
   docs/images/video_shards.png (with --figure): the warping error per frame of each run, and the
   frames around the seam of each sharded run.

Writes benchmarks/results/video_scaleout.json and .md. Timings on a shared machine are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nst_ort.media import flow as F
from nst_ort.media.images import load_image, save_image
from nst_ort.media.video_synthetic import camera_clip

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EX = ROOT / "examples"


def nst(args: list, log: Path | None = None) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "nst_ort", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(map(str, args))}\n{done.stderr}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="artifact folder with temporal.onnx")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--shard-frames", type=int, default=4)
    ap.add_argument("--overlaps", default="0,2")
    ap.add_argument("--skip-batch", action="store_true")
    ap.add_argument("--skip-video", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "video_scaleout")
    ap.add_argument("--figure", type=Path, help="write the seam figure here (e.g. docs/images/video_shards.png)")
    args = ap.parse_args()
    style = EX / "starry_night.jpg"
    res = {"machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
                       "load_average_at_start": os.getloadavg()},
           "size": args.size, "iterations": args.iterations}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not args.skip_batch:
            photos = tmp / "photos"
            photos.mkdir()
            for n in ("chelsea_cat.jpg", "great_wave.jpg", "coffee.jpg", "astronaut.jpg"):
                shutil.copy(EX / n, photos / n)
            common = [photos, style, "--size", args.size, "--iterations", args.iterations, "--model", args.model, "-q"]
            batch = {}
            for name, extra in (("sequential, 2 threads", ["--threads", "2"]),
                                ("1 Ray worker, 2 threads", ["--workers", "1", "--threads", "2"]),
                                ("2 Ray workers, 1 thread each", ["--workers", "2", "--threads", "1"])):
                out = tmp / name.replace(" ", "_").replace(",", "")
                out.mkdir()
                batch[name] = nst([common[0], common[1], "-o", out, *common[2:], *extra])
                print(f"batch {name}: {batch[name]:.1f} s", flush=True)
            res["batch"] = {"images": 4, "seconds": batch}
        if args.skip_video:
            args.out = args.out.with_name(args.out.name + "_batch")
        # video seams
        w = args.size - args.size % 2
        h = (args.size * 3 // 4) - (args.size * 3 // 4) % 2
        clip = camera_clip(load_image(EX / "tuebingen_neckarfront.jpg"), (w, h), frames=args.frames, pan=(2.5, 1.0),
                           zoom=1.01, obj=load_image(EX / "chelsea_cat.jpg"), obj_size=w // 5)
        seq = tmp / "clip"
        seq.mkdir()
        for i, f in enumerate(clip.frames):
            save_image(f, seq / f"{i:04d}.png")
        common = [seq, style, "--size", args.size, "--iterations", args.iterations, "--model", args.model, "-q"]
        runs = {"sequential": ["--threads", "2"]}
        overlaps = {}
        for o in args.overlaps.split(","):
            name = f"2 workers, shards of {args.shard_frames}, overlap {o}"
            overlaps[name] = int(o)
            runs[name] = ["--workers", "2", "--threads", "1", "--shard-frames", args.shard_frames, "--overlap", o]
        video, frames_of = {}, {}
        starts = list(range(args.shard_frames + 1, args.frames + 1, args.shard_frames))  # each later shard's first
        for name, extra in ([] if args.skip_video else runs.items()):
            out = tmp / f"v{len(video)}"
            secs = nst(["video", common[0], common[1], "-o", out, *common[2:], *extra])
            outs = [load_image(out / f"{i:06d}.png") for i in range(1, args.frames + 1)]
            frames_of[name] = outs
            werr = [F.warping_error(outs[t], outs[t - 1], clip.backward[t], clip.visible[t])
                    for t in range(1, args.frames)]  # werr[t-1]: frame t+1 against frame t (1-based)
            # the seam: a later shard's first frame, its seam-pass frames and the one after them
            # (for the sequential run: the same frames, for comparison)
            width = overlaps.get(name, max(overlaps.values(), default=0))
            seams = sorted({f for a in starts for f in range(a, min(args.frames, a + width) + 1)})
            seam_err = [werr[f - 2] for f in seams]
            inside = [werr[t - 2] for t in range(2, args.frames + 1) if t not in seams]
            median = float(np.median(werr))
            video[name] = {"seconds": secs, "warping_error_true_flow": werr, "seam_frames": seams,
                           "seam": float(np.mean(seam_err)), "seam_max": float(np.max(seam_err)),
                           "inside": float(np.mean(inside)), "median": median,
                           "seam_max_over_median": float(np.max(seam_err)) / median}
            print(f"video {name}: seam max {video[name]['seam_max']:.3e} ({video[name]['seam_max_over_median']:.2f}x "
                  f"the median {median:.3e}), inside {video[name]['inside']:.3e}, {secs:.0f} s", flush=True)
        if args.figure and video:
            from shards_figure import draw

            draw(args.figure, video, frames_of, starts, args)
            print(f"wrote {args.figure}")
        if not args.skip_video:
            res["video"] = {"frames": args.frames, "size": [w, h], "mode": "temporal", "shard_frames": args.shard_frames,
                            "runs": video}
    res["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    table = _table(res)
    args.out.with_suffix(".md").write_text(table)
    print(table)


def _table(r: dict) -> str:
    rows = [f"{r['machine']['cpu']}, {r['machine']['cores']} cores, load average "
            f"{r['machine']['load_average_at_start'][0]:.1f} at the start (a shared machine: timings are noisy).", ""]
    if "batch" in r:
        rows += [f"Batch of {r['batch']['images']} images at {r['size']} px, {r['iterations']} iterations:", "",
                 "| run | seconds |", "| --- | --- |"]
        rows += [f"| {k} | {v:.1f} |" for k, v in r["batch"]["seconds"].items()]
        rows.append("")
    if "video" not in r:
        return "\n".join(rows) + "\n"
    v = r["video"]
    rows += [f"Video: synthetic clip {v['size'][0]}x{v['size'][1]}, {v['frames']} frames, {v['mode']} mode, "
             f"{r['iterations']} iterations per frame; warping error with the true flow:", "",
             "| run | seam frames | at the seams: mean | max | the clip's median | max / median | other frames: mean | seconds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k, x in v["runs"].items():
        rows.append(f"| {k} | {x['seam_frames']} | {x['seam']:.3e} | {x['seam_max']:.3e} | {x['median']:.3e} | "
                    f"{x['seam_max_over_median']:.2f} | {x['inside']:.3e} | {x['seconds']:.0f} |")
    return "\n".join(rows) + "\n"


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


if __name__ == "__main__":
    main()
