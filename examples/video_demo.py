"""The README's video figure: a clip stylized per frame and in temporal mode, side by side.

    python examples/video_demo.py [--model MODEL] [--size 192] [--frames 8] [--iterations 60]

runs, in a temporary folder:

    python -m nst_ort.media.video_synthetic examples/tuebingen_neckarfront.jpg clip --size 192x144 --frames 8 --object examples/chelsea_cat.jpg
    nst-ort video clip examples/starry_night.jpg -o per_frame --mode per-frame --size 192 --iterations 60 --first-iterations 120
    nst-ort video clip examples/starry_night.jpg -o temporal --mode temporal --size 192 --iterations 60 --first-iterations 120

and writes docs/images/video_temporal.gif (input | per-frame | temporal, looping) and
docs/images/video_strip.png (the same frames as rows, with each mode's warping error per frame).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"


def run(argv: list) -> None:
    done = subprocess.run([sys.executable, "-m", "nst_ort", *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise SystemExit(f"{argv}: {done.stderr}")


def frames_of(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]


def label(img: np.ndarray, text: str) -> np.ndarray:
    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, 6 * len(text) + 4, 12], fill=(0, 0, 0))
    d.text((2, 0), text, fill=(255, 255, 255))
    return np.asarray(im)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="artifact folder with temporal.onnx (default: the embedded model)")
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    model = ["--model", args.model] if args.model else []
    h = args.size * 3 // 4
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        subprocess.run([sys.executable, "-m", "nst_ort.media.video_synthetic", ROOT / "examples" / "tuebingen_neckarfront.jpg",
                        tmp / "clip", "--size", f"{args.size}x{h}", "--frames", str(args.frames),
                        "--object", ROOT / "examples" / "chelsea_cat.jpg"], check=True, cwd=ROOT, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        outs, werr = {}, {}
        for mode in ("per-frame", "temporal"):
            out = tmp / mode
            run(["video", tmp / "clip", ROOT / "examples" / "starry_night.jpg", "-o", out, "--mode", mode,
                 "--size", args.size, "--iterations", args.iterations, "--first-iterations", 2 * args.iterations,
                 "--threads", args.threads, "--report", tmp / f"{mode}.json", "-q", *model])
            outs[mode] = frames_of(out)
            werr[mode] = [f["warping_error"] for f in json.loads((tmp / f"{mode}.json").read_text())["frames"]]
        inputs = frames_of(tmp / "clip")
    gif = [np.concatenate([label(i, "input"), label(p, "per-frame"), label(t, "temporal")], 1)
           for i, p, t in zip(inputs, outs["per-frame"], outs["temporal"])]
    IMAGES.mkdir(parents=True, exist_ok=True)
    ims = [Image.fromarray(g) for g in gif]
    ims[0].save(IMAGES / "video_temporal.gif", save_all=True, append_images=ims[1:], duration=250, loop=0,
                optimize=True)
    rows = [np.concatenate(inputs, 1)]
    for mode in ("per-frame", "temporal"):
        rows.append(np.concatenate([label(f, f"{mode} {e:.4f}" if e is not None else mode)
                                    for f, e in zip(outs[mode], werr[mode])], 1))
    # a 256-colour palette keeps the strip a few hundred KB
    Image.fromarray(np.concatenate(rows, 0)).quantize(256, dither=Image.Dither.NONE).save(IMAGES / "video_strip.png",
                                                                                           optimize=True)
    print(json.dumps({m: float(np.mean([e for e in v if e is not None])) for m, v in werr.items()}))


if __name__ == "__main__":
    main()
