"""Temporal consistency of `nst-ort video`: warping error and losses, per-frame mode against warm start
and temporal mode (at one or more temporal weights).

    python benchmarks/video_consistency.py [--size 128] [--frames 6] [--iterations 80] [--threads 2]
        [--temporal-weights 1e7,3e7,1e8,3e8] [--model MODEL_WITH_TEMPORAL_ONNX]

The clip is synthetic (nst_ort/media/video_synthetic.py: a pan and zoom over examples/tuebingen_neckarfront.jpg
with a square cut from chelsea_cat.jpg sliding over it), so the true flow and the true visibility are
known. Each mode runs through the CLI's pipeline (nst_ort.commands.video.main) with the same iterations per
frame; then for every output frame:

- the warping error of Lai et al. 2018 against the previous output frame, with the flow and mask the
  tool estimates from the input frames (what the tool reports) and with the true flow and visibility;
- the style and content losses of the frame as written (the training graph evaluated at that image:
  a Stylizer started from the frame, first record), so that modes are compared at their outputs.

Writes benchmarks/results/video_consistency.json, a markdown table (.md) and a strip of frames
(_strip.png: input, then per-frame, warm and temporal mode at the default weight; below each mode the
per-pixel warping error, brighter = worse).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from nst_ort import Config, StyleInput, Stylizer
from nst_ort.media import flow as F
from nst_ort.media.images import load_image, save_image
from nst_ort.commands.video import TEMPORAL_WEIGHT
from nst_ort.commands.video import main as video_main
from nst_ort.media.video_synthetic import camera_clip

HERE = Path(__file__).resolve().parent
EX = HERE.parent / "examples"


def frame_losses(frame: Path, content: Path, style: Path, threads: int | None, model=None) -> dict:
    cfg = Config(content=content, styles=[StyleInput(style)], size=max(load_image(content).shape[:2]),
                 init=str(frame), threads=threads, model=Path(model) if model else None)
    cfg.optim.iterations = 1
    rec = next(iter(Stylizer(cfg).run()))  # evaluated at the init image, before the update
    return {"loss": rec.loss, "style": rec.style, "content": rec.content, "tv": rec.tv}


def warping_errors(outs: list[np.ndarray], clip, inputs: list[np.ndarray]) -> dict:
    est, true = [], []
    for t in range(1, len(outs)):
        back = F.optical_flow(inputs[t], inputs[t - 1])
        fwd = F.optical_flow(inputs[t - 1], inputs[t])
        est.append(F.warping_error(outs[t], outs[t - 1], back, F.consistency(back, fwd) >= 0.5))
        true.append(F.warping_error(outs[t], outs[t - 1], clip.backward[t], clip.visible[t]))
    return {"estimated_flow": est, "true_flow": true}


def error_map(cur, prev, flow, mask) -> np.ndarray:
    warped, inside = F.warp(prev, flow)
    d = ((cur - warped) ** 2).sum(-1) * (mask & inside)
    return np.repeat(np.clip(d / 0.1, 0, 1)[..., None], 3, axis=2)  # 0.1 (sum over RGB) = white


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128, help="long side (frames are 4:3)")
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--iterations", type=int, default=80)
    ap.add_argument("--temporal-weights", default="1e8", help="comma-separated lambda_t values for temporal mode")
    ap.add_argument("--modes", default="per-frame,warm,temporal")
    ap.add_argument("--model", help="artifact folder with temporal.onnx (default: the embedded model)")
    ap.add_argument("--style", default="starry_night.jpg")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "video_consistency")
    args = ap.parse_args()
    w = args.size - args.size % 2
    h = (args.size * 3 // 4) - (args.size * 3 // 4) % 2
    clip = camera_clip(load_image(EX / "tuebingen_neckarfront.jpg"), (w, h), frames=args.frames, pan=(2.5, 1.0),
                       zoom=1.01, obj=load_image(EX / "chelsea_cat.jpg"), obj_size=w // 5)
    style = EX / args.style
    results = {"clip": {"size": [w, h], "frames": args.frames, "pan_px_per_frame": [2.5, 1.0], "zoom_per_frame": 1.01,
                        "object_px": w // 5, "object_velocity": [-3.0, 2.0]},
               "iterations_per_frame": args.iterations, "style": args.style, "threads": args.threads,
               "machine": {"cpu": _cpu(), "python": platform.python_version()}, "modes": {}}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        seq = tmp / "input"
        seq.mkdir()
        for i, f in enumerate(clip.frames):
            save_image(f, seq / f"{i:04d}.png")
        inputs = [load_image(seq / f"{i:04d}.png") for i in range(args.frames)]  # 8-bit, as the tool reads them
        results["input_warping_error"] = warping_errors(inputs, clip, inputs)
        outs_by_mode = {}
        runs = []
        for mode in args.modes.split(","):
            if mode == "temporal":
                runs += [(f"temporal {w}", ["--mode", "temporal", "--temporal-weight", w])
                         for w in args.temporal_weights.split(",")]
            else:
                runs.append((mode, ["--mode", mode]))
        for mode, flags in runs:
            out = tmp / mode.replace(" ", "_")
            t0 = time.perf_counter()
            model = ["--model", args.model] if args.model else []
            rc = video_main([str(seq), str(style), "-o", str(out), *flags, "--size", str(args.size),
                             "--iterations", str(args.iterations), "--threads", str(args.threads), *model,
                             "--report", str(tmp / f"{mode}.json"), "-q"])
            assert rc == 0, rc
            seconds = time.perf_counter() - t0
            report = json.loads((tmp / f"{mode}.json").read_text())
            paths = [out / f"{i:06d}.png" for i in range(1, args.frames + 1)]
            outs = [load_image(p) for p in paths]
            outs_by_mode[mode] = outs
            losses = [frame_losses(p, seq / f"{i:04d}.png", style, args.threads, args.model) for i, p in enumerate(paths)]
            werr = warping_errors(outs, clip, inputs)
            assert np.allclose(werr["estimated_flow"], [f["warping_error"] for f in report["frames"][1:]])
            results["modes"][mode] = {
                "seconds": seconds, "warping_error": werr, "losses": losses,
                "temporal_loss": [f.get("temporal") for f in report["frames"]],
                "mean": {"warping_error_estimated": float(np.mean(werr["estimated_flow"])),
                         "warping_error_true": float(np.mean(werr["true_flow"])),
                         "style": float(np.mean([x["style"] for x in losses])),
                         "content": float(np.mean([x["content"] for x in losses])),
                         "style_frames_2on": float(np.mean([x["style"] for x in losses[1:]]))},
            }
        # the strip: per-frame, warm and temporal mode at the default weight (or the first one run)
        temporal = [m for m in outs_by_mode if m.startswith("temporal")]
        default = [m for m in temporal if float(m.split()[1]) == TEMPORAL_WEIGHT] or temporal[:1]
        shown = [m for m in outs_by_mode if not m.startswith("temporal")] + default
        _strip(args.out.with_name(args.out.name + "_strip.png"), inputs, {m: outs_by_mode[m] for m in shown}, clip)
    pf = results["modes"]["per-frame"]["mean"]
    results["ratios_over_per_frame"] = {mode: {k: m["mean"][k] / pf[k] for k in pf}
                                        for mode, m in results["modes"].items() if mode != "per-frame"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    table = _table(results)
    args.out.with_suffix(".md").write_text(table)
    print(table)


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def _table(r: dict) -> str:
    c = r["clip"]
    rows = [f"Synthetic clip {c['size'][0]}x{c['size'][1]}, {c['frames']} frames (pan {c['pan_px_per_frame']} px/frame, "
            f"zoom {c['zoom_per_frame']}/frame, a {c['object_px']} px square moving {c['object_velocity']} px/frame); "
            f"style {r['style']}; {r['iterations_per_frame']} L-BFGS iterations per frame; {r['threads']} threads; "
            f"{r['machine']['cpu']}.", "",
            "| mode | warping error (estimated flow) | warping error (true flow) | style loss | content loss | "
            "style, frames 2.. | seconds |", "| --- | --- | --- | --- | --- | --- | --- |"]
    inp = r["input_warping_error"]
    rows.append(f"| input frames (floor) | {np.mean(inp['estimated_flow']):.2e} | {np.mean(inp['true_flow']):.2e} "
                "| | | | |")
    for mode, m in r["modes"].items():
        x = m["mean"]
        rows.append(f"| {mode} | {x['warping_error_estimated']:.3e} | {x['warping_error_true']:.3e} | {x['style']:.4g} | "
                    f"{x['content']:.4g} | {x['style_frames_2on']:.4g} | {m['seconds']:.0f} |")
    for mode, q in r["ratios_over_per_frame"].items():
        rows.append(f"| {mode} / per-frame | {q['warping_error_estimated']:.2f}x | {q['warping_error_true']:.2f}x | "
                    f"{q['style']:.2f}x | {q['content']:.2f}x | {q['style_frames_2on']:.2f}x | |")
    return "\n".join(rows) + "\n"


def _strip(path: Path, inputs, outs_by_mode, clip) -> None:
    rows = [np.concatenate(inputs, 1)]
    for mode, outs in outs_by_mode.items():
        rows.append(np.concatenate(outs, 1))
        maps = [np.zeros_like(outs[0])] + [error_map(outs[t], outs[t - 1], clip.backward[t], clip.visible[t])
                                           for t in range(1, len(outs))]
        rows.append(np.concatenate(maps, 1))
    from PIL import Image

    from nst_ort.media.images import to_uint8

    # a 256-colour palette: a third of the bytes, and the error maps are grey anyway
    Image.fromarray(to_uint8(np.concatenate(rows, 0))).quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)


if __name__ == "__main__":
    main()
