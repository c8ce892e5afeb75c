"""nst-ort's flags: the parser, and which flags go together. Values are checked here, at parse time,
by config.py's checkers (the ones Config.validate() uses), so a bad one is refused (exit 2, naming
the flag) before anything is loaded."""
from __future__ import annotations

import argparse
from typing import Callable

from ..base.errors import UsageError
from ..base.version import __version__
from ..engine.config import Invalid, check_int, check_number, max_threads
from .presets import PRESETS


# -- flag parsers: the syntax here, the ranges from config.py's checkers (the ones Config.validate
# uses), so that a bad value is refused at parse time (exit 2, naming the flag) before anything loads.
def _typed(parse: Callable[[str], object]) -> Callable[[str], object]:
    def run(text: str):
        try:
            return parse(text)
        except Invalid as e:
            raise argparse.ArgumentTypeError(e.problem) from None
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    run.__name__ = parse.__name__
    return run


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None


def _items(text: str) -> list[str]:
    """Comma-separated items; an empty one (`256,,512`, a trailing comma) is refused, not skipped."""
    items = [v.strip() for v in text.split(",")]
    if any(not v for v in items):
        raise ValueError(f"an empty item in {text!r}")
    return items


def int_flag(field: str, minimum: int = 1, maximum: Callable[[], int] | None = None):
    return _typed(lambda t: check_int(field, _int(t), minimum, maximum() if maximum else None))


def number_flag(field: str, positive: bool = False):
    return _typed(lambda t: check_number(field, _float(t), positive))


def int_list_flag(field: str, minimum: int = 1):
    return _typed(lambda t: [check_int(field, _int(v), minimum) for v in _items(t)])


def number_list_flag(field: str):
    return _typed(lambda t: [check_number(field, _float(v)) for v in _items(t)])


def _size_pair(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2:
        raise ValueError(f"expected WxH, e.g. 512x256, got {text!r}")
    w, h = (check_int("texture_size", _int(v)) for v in parts)
    return w, h


def _tile(text: str) -> int | None:
    """--tile N (px) or auto (None)."""
    if text.strip().lower() == "auto":
        return None
    return check_int("tile", _int(text))


tile_flag = _typed(_tile)  # nst-ort's and nst-ort video's --tile


def _layer_weights(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in _items(text):
        name, sep, w = item.partition(":")
        name = name.strip()
        if not name:
            raise ValueError(f"a weight without a layer name in {item!r} (use relu1_1:0.2,relu2_1:0.2)")
        if name in out:
            raise ValueError(f"layer {name} given twice")
        out[name] = check_number("loss.style_layer_weights", _float(w)) if sep else 1.0
    return out


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one to show (not None/False, not already in the text)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # argparse prints the whole usage (a dozen lines here) first: one line, like every other error.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="nst-ort",
        description="Neural style transfer (Gatys et al.) on ONNX Runtime. "
        "nst-ort CONTENT STYLE [STYLE ...] -o OUT; CONTENT may be a folder (batch); --texture for no content.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("images", nargs="*", help="content image (or folder) then style image(s); with --texture, style image(s) only")
    p.add_argument("-o", "--output", required=False, help="output image (or folder for a batch)")
    g = p.add_argument_group("size and schedule")
    g.add_argument("--size", type=int_flag("size"), help="long side of the output in pixels (default 512; with "
                   "--scales, their last one)")
    g.add_argument("--iterations", type=int_flag("optim.iterations", minimum=0),
                   help="iterations per scale (default 500, or the preset's); 0 writes the start image")
    g.add_argument("--scales", type=int_list_flag("scales"),
                   help="coarse-to-fine long sides, e.g. 256,512,1024 (each warm-starts the next; the last is the "
                   "output size)")
    g.add_argument("--scale-iterations", type=int_list_flag("scale_iterations", minimum=0),
                   help="iterations per scale, one per --scales entry, e.g. 300,200,100")
    g.add_argument("--texture", action="store_true", help="texture synthesis: no content image, style loss only, from noise")
    g.add_argument("--texture-size", type=_typed(_size_pair), help="WxH of the texture (--texture only; default SIZExSIZE)")
    w = p.add_argument_group("loss (weights in the documented normalization; default: the model's)")
    w.add_argument("--preset", choices=list(PRESETS), default="default",
                   help="weight presets: default (the model's, chosen by looking), neural-style, paper")
    w.add_argument("--content-weight", type=number_flag("loss.content_weight"), help="alpha: weight of the content term")
    w.add_argument("--style-weight", type=number_flag("loss.style_weight"), help="beta: weight of the style term")
    w.add_argument("--tv-weight", type=number_flag("loss.tv_weight"), help="weight of the total-variation term (0 disables)")
    w.add_argument("--content-layer", help="content layer among the model's (see --info)")
    w.add_argument("--style-layers", type=_typed(_layer_weights),
                   help="per-layer style weights, e.g. relu1_1:1,relu3_1:0.5 (others 0)")
    s = p.add_argument_group("styles and color")
    s.add_argument("--style-weights", type=number_list_flag("styles.weight"),
                   help="blend weights of several styles, e.g. 0.7,0.3")
    s.add_argument("--style-masks", type=_typed(_items),
                   help="one mask image per style (white = region of that style), comma-separated")
    s.add_argument("--style-scale", type=number_flag("style_scale", positive=True), default=1.0,
                   help="style image size relative to the output")
    s.add_argument("--color", choices=["none", "luminance", "histogram"], default="none",
                   help="keep the content's colors: luminance-only transfer or histogram matching of the style")
    o = p.add_argument_group("optimizer")
    o.add_argument("--optimizer", choices=["lbfgs", "adam"], default=None, help="default lbfgs")
    o.add_argument("--lr", type=number_flag("optim.lr", positive=True),
                   help="learning rate (lbfgs 1.0, adam 0.02 on [0,1] pixels)")
    o.add_argument("--history", type=int_flag("optim.history"), default=None, help="L-BFGS history size (default 100)")
    o.add_argument("--init", default="content", help="content, noise, or an image path")
    o.add_argument("--seed", type=int_flag("seed", minimum=0), default=None,
                   help="seed of the noise start image (--init noise, --texture; default 0)")
    o.add_argument("--average", action="store_true",
                   help="output a running average of the iterates (EMA, decay 0.9); off by default: "
                        "no gain measured at 256 px (benchmarks/RESULTS.md)")
    g.add_argument("--tile", type=tile_flag, default=None,
                   help="N: compute the loss and gradient exactly in tiles of N px (a multiple of the model's "
                   "grid, 16 for VGG16), for sizes beyond memory; auto (default): untiled where the whole image "
                   "fits in memory, else the largest tile that fits (docs/tiling.md)")
    r = p.add_argument_group("runtime")
    r.add_argument("--model", help="artifact folder (default: the embedded VGG16)")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda")
    r.add_argument("--provider", help="any onnxruntime execution provider by name, e.g. TensorrtExecutionProvider")
    r.add_argument("--threads", type=int_flag("threads", maximum=max_threads),
                   help=f"intra-op threads, at most the CPUs this process may use ({max_threads()} here; "
                   "default: the usable physical cores on the CPU provider, onnxruntime's own elsewhere)")
    r.add_argument("--provider-option", action="append", metavar="KEY=VALUE",
                   help="an option of the chosen provider (repeatable), e.g. device_type=GPU for OpenVINO, "
                   "gpu_mem_limit=8589934592 for CUDA; see onnxruntime's page for that provider")
    r.add_argument("--precision", choices=["fp32", "tf32", "fp16"], default="fp32",
                   help="fp32 (TF32 off on CUDA, f32 inference on OpenVINO), tf32 (CUDA: TensorFloat-32 "
                   "convolutions), fp16 (the model's mixed-precision graph: convolutions in fp16, Gram "
                   "matrices and losses in fp32; for GPUs)")
    r.add_argument("--loop", choices=["auto", "device", "host"], default="auto",
                   help="device: image, gradient and optimizer state stay in device buffers (needs the model's "
                   "optimizer graphs); host: optimizer in numpy; auto: device when the model has them")
    r.add_argument("--no-cache", action="store_true",
                   help="do not use or fill the cache of optimized graphs (see NST_ORT_CACHE_DIR in docs/performance.md)")
    out = p.add_argument_group("progress and results")
    out.add_argument("--save-every", type=int_flag("save_every"),
                     help="every N iterations write the current image to OUT (and --checkpoint)")
    out.add_argument("--snapshots", action="store_true",
                     help="with --save-every: also keep each of those images as OUT_0050.png, OUT_0100.png, ...")
    out.add_argument("--report", help="write a JSON report (settings, weights used, what ran, per-iteration losses, "
                     "timings); in a batch: a folder, one NAME.json per image")
    out.add_argument("--checkpoint", help="write a checkpoint here (every --save-every and at the end or on Ctrl-C); "
                     "in a batch: a folder, one NAME.npz per image")
    out.add_argument("--resume", help="resume from this checkpoint (same inputs and settings)")
    out.add_argument("--dry-run", action="store_true",
                     help="check every flag, input and output path, print the schedule, where it would run and the "
                     "memory estimate, then exit without computing")
    out.add_argument("--info", action="store_true", help="print the model's layers and defaults, then exit")
    out.add_argument("--json", action="store_true", help="--info and --dry-run print JSON instead")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    out.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"nst-ort {__version__}")
    add_scaleout_flags(p)  # --workers, --ray-address (batch folders)
    return p


def add_scaleout_flags(parser: argparse.ArgumentParser) -> None:
    """--workers, --ray-address (nst-ort's batch and nst-ort video; distributed.py runs them)."""
    g = parser.add_argument_group("scale-out (Ray, the [ray] extra)")
    g.add_argument("--workers", type=int_flag("workers"),
                   help="run on N Ray workers; without --ray-address a local Ray is started")
    g.add_argument("--ray-address", help="an existing Ray cluster (e.g. HOST:6379 or auto); --workers then caps "
                   "the tasks in flight")


def check_modes(args) -> None:
    """Flags that apply to one mode only are refused in the others (exit 2), instead of being
    ignored or changing something else (issue #10: --texture-size changed a normal run's size)."""
    def given(name: str) -> bool:
        value = getattr(args, name)
        return value is not None and value is not False

    if args.json and not (args.info or args.dry_run):
        raise UsageError("--json applies to --info and --dry-run")
    if args.texture:
        for name, flag in (("content_weight", "--content-weight"), ("content_layer", "--content-layer")):
            if given(name):
                raise UsageError(f"{flag}: a texture has no content term (--texture)")
        if args.color != "none":
            raise UsageError("--color: keeps the content's colors, and a texture has no content image (--texture)")
        if given("texture_size") and given("size"):
            raise UsageError("--size: --texture-size sets the texture's size; give one of them")
    elif given("texture_size"):
        raise UsageError("--texture-size: applies to texture synthesis only (--texture); use --size")
    if given("scale_iterations"):
        if not given("scales"):
            raise UsageError("--scale-iterations: needs --scales (one count per scale); for one scale use --iterations")
        if given("iterations"):
            raise UsageError("--iterations: --scale-iterations gives the iterations of every scale; give one of them")
        if len(args.scale_iterations) != len(args.scales):
            raise UsageError(f"--scale-iterations: {len(args.scale_iterations)} iteration counts for "
                             f"{len(args.scales)} scales (--scales {','.join(map(str, args.scales))})")
    if given("scales"):
        last = args.scales[-1]
        size = max(args.texture_size) if given("texture_size") else args.size
        if size is not None and size != last:
            flag = "--texture-size" if given("texture_size") else "--size"
            raise UsageError(f"--scales: the last scale is the output size: --scales ends at {last} but {flag} says "
                             f"{size} (leave out {flag}, or end --scales with {size})")
    if given("history") and args.optimizer == "adam":
        raise UsageError("--history: the L-BFGS history; --optimizer adam keeps none")
    if given("seed"):
        init = "noise" if args.texture and args.init == "content" else args.init
        if init != "noise":
            raise UsageError("--seed: seeds the noise start image; it applies with --init noise or --texture")
    if args.snapshots and not given("save_every"):
        raise UsageError("--snapshots: keeps the images --save-every N writes; give --save-every")
