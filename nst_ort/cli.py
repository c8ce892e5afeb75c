"""nst-ort: flags -> Config -> Stylizer -> progress, report, outputs."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import traceback
from pathlib import Path

from . import __version__, checkpoint, memory
from .config import Config, LossConfig, OptimConfig, StyleInput
from .errors import (EXIT_BATCH_PARTIAL, EXIT_INTERRUPTED, Interrupted, NstError, NumericalError, OutOfMemory,
                     OutputError, UsageError)
from .images import save_image
from .outputs import check_image_output
from .presets import PRESETS
from .report import Progress, Report

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


class _Interrupted(BaseException):
    """SIGTERM, raised like KeyboardInterrupt: no `except Exception` on the way may swallow it."""


def _csv_floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def _layer_weights(text: str) -> dict[str, float]:
    out = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, w = item.partition(":")
        try:
            out[name] = float(w) if w else 1.0
        except ValueError:
            raise UsageError(f"--style-layers: bad weight in {item!r} (use relu1_1:0.2,relu2_1:0.2)") from None
    return out


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one to show (not None/False, not already in the text)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # argparse prints the whole usage (a dozen lines here) first: one line, like every other error.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="nst-ort",
        description="Neural style transfer (Gatys et al.) on ONNX Runtime. "
        "nst-ort CONTENT STYLE [STYLE ...] -o OUT; CONTENT may be a folder (batch); --texture for no content.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("images", nargs="*", help="content image (or folder) then style image(s); with --texture, style image(s) only")
    p.add_argument("-o", "--output", required=False, help="output image (or folder for a batch)")
    g = p.add_argument_group("size and schedule")
    g.add_argument("--size", type=int, default=512, help="long side of the output in pixels")
    g.add_argument("--iterations", type=int, default=None, help="iterations per scale (default 500, or the preset's)")
    g.add_argument("--scales", help="coarse-to-fine long sides, e.g. 256,512,1024 (each warm-starts the next)")
    g.add_argument("--scale-iterations", help="iterations per scale, e.g. 300,200,100")
    g.add_argument("--texture", action="store_true", help="texture synthesis: no content image, style loss only, from noise")
    g.add_argument("--texture-size", help="WxH of the texture (default SIZExSIZE)")
    w = p.add_argument_group("loss (weights in the documented normalization; default: the model's)")
    w.add_argument("--preset", choices=list(PRESETS), default="default",
                   help="weight presets: default (the model's, chosen by looking), neural-style, paper")
    w.add_argument("--content-weight", type=float, help="alpha: weight of the content term")
    w.add_argument("--style-weight", type=float, help="beta: weight of the style term")
    w.add_argument("--tv-weight", type=float, help="weight of the total-variation term (0 disables)")
    w.add_argument("--content-layer", help="content layer among the model's (see --info)")
    w.add_argument("--style-layers", help="per-layer style weights, e.g. relu1_1:1,relu3_1:0.5 (others 0)")
    s = p.add_argument_group("styles and color")
    s.add_argument("--style-weights", help="blend weights of several styles, e.g. 0.7,0.3")
    s.add_argument("--style-masks", help="one mask image per style (white = region of that style), comma-separated")
    s.add_argument("--style-scale", type=float, default=1.0, help="style image size relative to the output")
    s.add_argument("--color", choices=["none", "luminance", "histogram"], default="none",
                   help="keep the content's colors: luminance-only transfer or histogram matching of the style")
    o = p.add_argument_group("optimizer")
    o.add_argument("--optimizer", choices=["lbfgs", "adam"], default=None, help="default lbfgs")
    o.add_argument("--lr", type=float, help="learning rate (lbfgs 1.0, adam 0.02 on [0,1] pixels)")
    o.add_argument("--history", type=int, default=None, help="L-BFGS history size (default 100)")
    o.add_argument("--init", default="content", help="content, noise, or an image path")
    o.add_argument("--seed", type=int, default=0, help="seed for noise init")
    o.add_argument("--average", action="store_true",
                   help="output a running average of the iterates (EMA, decay 0.9); off by default: "
                        "no gain measured at 256 px (benchmarks/RESULTS.md)")
    r = p.add_argument_group("runtime")
    r.add_argument("--model", help="artifact folder (default: the embedded VGG16)")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda")
    r.add_argument("--provider", help="any onnxruntime execution provider by name, e.g. TensorrtExecutionProvider")
    r.add_argument("--threads", type=int, help="intra-op threads (default: onnxruntime's)")
    r.add_argument("--precision", choices=["fp32", "tf32", "fp16"], default="fp32",
                   help="CUDA: fp32 (TF32 off, the default) or tf32 (TensorFloat-32 convolutions); the CPU "
                   "computes in fp32; fp16 needs an fp16 export (not yet)")
    r.add_argument("--loop", choices=["auto", "device", "host"], default="auto",
                   help="device: image, gradient and optimizer state stay in device buffers (needs the model's "
                   "optimizer graphs); host: optimizer in numpy; auto: device when the model has them")
    out = p.add_argument_group("progress and results")
    out.add_argument("--save-every", type=int, default=0, help="write the current image every N iterations")
    out.add_argument("--report", help="write a JSON report (settings, what ran, per-iteration losses, timings)")
    out.add_argument("--checkpoint", help="write a checkpoint here (every --save-every and at the end or on Ctrl-C)")
    out.add_argument("--resume", help="resume from this checkpoint (same inputs and settings)")
    out.add_argument("--info", action="store_true", help="print the model's layers and defaults, then exit")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    out.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"nst-ort {__version__}")
    from .distributed import add_arguments  # --workers, --ray-address (batch folders)

    add_arguments(p)
    return p


_said: set[str] = set()


def _warn(msg: str) -> None:
    # Once per message: a batch reloads the same style image for every content image.
    if msg not in _said:
        _said.add(msg)
        print(f"nst-ort: warning: {msg}", file=sys.stderr)


def build_config(args, artifacts) -> tuple[Config, Path | None]:
    images = [Path(p) for p in args.images]
    if args.texture:
        content, style_paths = None, images
    else:
        if len(images) < 2:
            raise UsageError("need a content image and at least one style image (or --texture STYLE)")
        content, style_paths = images[0], images[1:]
    if not args.output:
        raise UsageError("no output: give -o OUT")
    weights = _csv_floats(args.style_weights, "--style-weights") if args.style_weights else [1.0] * len(style_paths)
    masks = [Path(m) for m in args.style_masks.split(",")] if args.style_masks else [None] * len(style_paths)
    if len(weights) != len(style_paths) or len(masks) != len(style_paths):
        raise UsageError(f"{len(style_paths)} style image(s) but {len(weights)} weight(s) and {len(masks)} mask(s)")
    preset = PRESETS[args.preset]
    loss = preset.loss(artifacts, LossConfig(
        content_weight=args.content_weight, style_weight=args.style_weight, tv_weight=args.tv_weight,
        content_layer=args.content_layer,
        style_layer_weights=_layer_weights(args.style_layers) if args.style_layers else None))
    optim_cfg = OptimConfig(
        name=args.optimizer or OptimConfig.name,
        iterations=args.iterations if args.iterations is not None else preset.iterations,
        lr=args.lr, history=args.history or OptimConfig.history, average=args.average,
    )
    texture_size = None
    if args.texture_size:
        try:
            tw, th = (int(v) for v in args.texture_size.lower().split("x"))
        except ValueError:
            raise UsageError(f"--texture-size: expected WxH, got {args.texture_size!r}") from None
        texture_size = (tw, th)
    size = max(texture_size) if texture_size else args.size
    scales = [int(v) for v in _csv_floats(args.scales, "--scales")] if args.scales else None
    scale_iters = [int(v) for v in _csv_floats(args.scale_iterations, "--scale-iterations")] if args.scale_iterations else None
    cfg = Config(
        content=content, styles=[StyleInput(p, w, m) for p, w, m in zip(style_paths, weights, masks)],
        size=size, texture_size=texture_size, scales=scales, scale_iterations=scale_iters,
        style_scale=args.style_scale, init=args.init, seed=args.seed, color=args.color, loss=loss, optim=optim_cfg,
        model=Path(args.model) if args.model else None, device=args.device, provider=args.provider,
        threads=args.threads, precision=args.precision, loop=args.loop,
    )
    try:
        cfg.schedule()
    except ValueError as e:
        raise UsageError(f"--scale-iterations: {e}") from None
    return cfg, Path(args.output)


def stylize_one(cfg: Config, out: Path, args, artifacts, settings: dict) -> None:
    from .stylize import Stylizer

    check_image_output(out, cfg.input_paths())
    stylizer = Stylizer(cfg, artifacts=artifacts, warn=_warn)
    memory.check(stylizer.memory_plan())
    fingerprint = checkpoint.fingerprint(cfg)
    if args.resume:
        stylizer.load_state_dict(checkpoint.load(args.resume, fingerprint))
    progress = Progress(enabled=not args.quiet)
    report = Report(settings)

    def save() -> None:
        save_image(stylizer.result(), out)
        if args.checkpoint:
            checkpoint.save(args.checkpoint, stylizer.state_dict(), fingerprint)

    def finish(status: str) -> None:
        if stylizer.image() is not None:
            save()
        if args.report:
            report.runtime = stylizer.runtime()
            report.write(args.report, status)

    try:
        for record in stylizer.run():
            progress(record)
            report(record)
            if args.save_every and record.step % args.save_every == 0:
                save()
    except (KeyboardInterrupt, _Interrupted):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the final save short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        finish("interrupted")
        if progress.tty and progress.last:
            print(file=sys.stderr)  # end the progress line
        done = f"wrote the current image to {out}" if stylizer.image() is not None else "nothing written"
        raise Interrupted(f"{out}: interrupted at iteration {stylizer.steps}; {done}") from None
    # Despite the estimate (other processes, a GPU) memory can run out, and the loss can stop being
    # finite: the Stylizer then holds the last finite image, which is written.
    except OutOfMemory as e:
        if stylizer.image() is None:
            raise OutOfMemory(f"{cfg.content or 'texture'}: {e}") from None
        finish("out of memory")
        raise OutOfMemory(f"{out}: {e}; wrote the last image") from None
    except NumericalError:
        what = f"{out}: the loss is not finite (NaN or Inf) at iteration {stylizer.steps + 1}; stopped"
        hint = "try a smaller --lr or smaller loss weights"
        if stylizer.image() is None:
            raise NumericalError(f"{what} before any finite image, nothing written; {hint}") from None
        finish("nan")
        raise NumericalError(f"{what} and wrote the last finite image; {hint}") from None
    finish("done")


def _sigterm(signum, frame):
    raise _Interrupted()


# `nst-ort NAME ...` for each NAME here runs "module:function"(argv[1:]) instead of stylizing. Each
# subcommand owns its parser; the module is imported only when asked for (start-up stays small).
SUBCOMMANDS: dict[str, str] = {
    "video": "nst_ort.video:main",
}


def _subcommand(argv: list[str]) -> int:
    import importlib

    module, _, func = SUBCOMMANDS[argv[0]].partition(":")
    return getattr(importlib.import_module(module), func)(argv[1:])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        return _subcommand(argv)
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        return _main(args)
    except (KeyboardInterrupt, _Interrupted):
        print("nst-ort: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:  # numpy or Python itself; onnxruntime's failures are mapped in session.py
        if args.debug:
            traceback.print_exc()
        print("nst-ort: error: out of memory (MemoryError); try a smaller --size", file=sys.stderr)
        return OutOfMemory.exit_code
    except NstError as e:
        if args.debug:
            traceback.print_exc()
        print(f"nst-ort: {'' if isinstance(e, Interrupted) else 'error: '}{e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - last resort: still one line unless --debug
        if args.debug:
            traceback.print_exc()
        print(f"nst-ort: internal error: {type(e).__name__}: {e} (rerun with --debug for a traceback)", file=sys.stderr)
        return 1


def _main(args) -> int:
    from .artifacts import Artifacts

    artifacts = Artifacts(args.model)
    if args.info:
        m = artifacts.manifest
        print(json.dumps({"path": str(artifacts.path), "backbone": m["backbone"], "layers": m["layers"],
                          "content_layers": m["content_layers"], "style_layers": m["style_layers"],
                          "defaults": m["defaults"], "weights": m["weights"]}, indent=1))
        return 0
    settings = {k: v for k, v in vars(args).items()}
    settings["nst_ort"] = __version__
    import onnxruntime

    settings["onnxruntime"] = onnxruntime.__version__
    if not args.images:
        raise UsageError("no images: nst-ort CONTENT STYLE [STYLE ...] -o OUT (or --texture STYLE -o OUT)")
    first = Path(args.images[0])
    from . import distributed

    if distributed.wanted(args) and (args.texture or not first.is_dir()):
        raise UsageError("--workers and --ray-address are for a folder of content images (or nst-ort video)")
    if not args.texture and first.is_dir():
        if distributed.wanted(args):
            return distributed.batch(args, artifacts, settings, IMAGE_EXTS, build_config)
        return _batch(args, artifacts, settings)
    cfg, out = build_config(args, artifacts)
    stylize_one(cfg, out, args, artifacts, settings)
    if not args.quiet:
        print(f"wrote {out}", file=sys.stderr)
    return 0


def _batch(args, artifacts, settings) -> int:
    """Many content images, one style: style targets are rebuilt per image size (cached by size)."""
    folder, out_dir = Path(args.images[0]), Path(args.output or "")
    if not args.output:
        raise UsageError("batch: give -o OUTPUT_FOLDER")
    if not out_dir.is_dir():
        raise OutputError(f"{out_dir}: batch output must be an existing folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise UsageError(f"{folder}: no images ({', '.join(sorted(IMAGE_EXTS))}) in this folder")
    stems = [p.stem for p in files]
    failed = 0
    for p in files:
        # cat.jpg and cat.png would both become cat.png: the second would overwrite the first result.
        name = p.stem + ".png" if stems.count(p.stem) == 1 else f"{p.stem}-{p.suffix[1:]}.png"
        one = argparse.Namespace(**{**vars(args), "images": [str(p), *args.images[1:]],
                                    "output": str(out_dir / name), "report": None, "checkpoint": None})
        try:
            cfg, out = build_config(one, artifacts)
            stylize_one(cfg, out, one, artifacts, settings)
            if not args.quiet:
                print(f"wrote {out}", file=sys.stderr)
        except Interrupted:
            raise
        except NstError as e:
            failed += 1
            print(f"nst-ort: error: {e} (skipped)", file=sys.stderr)
    if failed:
        print(f"nst-ort: {failed} of {len(files)} image(s) failed", file=sys.stderr)
        return EXIT_BATCH_PARTIAL
    return 0
