"""nst-ort: flags -> Config -> Stylizer -> progress, report, outputs."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Callable

from . import __version__, memory
from .config import Config, Invalid, LossConfig, OptimConfig, StyleInput, check_int, check_number, max_threads
from .errors import (EXIT_BATCH_PARTIAL, EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, ImageError, Interrupted, NstError, NumericalError,
                     OutOfMemory, OutputError, UsageError)
from .outputs import Snapshots, Source, Target, check_writes, image_bytes, same_file
from .presets import PRESETS

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


class _Interrupted(BaseException):
    """SIGTERM, raised like KeyboardInterrupt: no `except Exception` on the way may swallow it."""


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
    r = p.add_argument_group("runtime")
    r.add_argument("--model", help="artifact folder (default: the embedded VGG16)")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda")
    r.add_argument("--provider", help="any onnxruntime execution provider by name, e.g. TensorrtExecutionProvider")
    r.add_argument("--threads", type=int_flag("threads", maximum=max_threads),
                   help=f"intra-op threads, at most the CPUs this process may use ({max_threads()} here; "
                   "default: onnxruntime's)")
    r.add_argument("--precision", choices=["fp32", "tf32", "fp16"], default="fp32",
                   help="CUDA: fp32 (TF32 off, the default) or tf32 (TensorFloat-32 convolutions); the CPU "
                   "computes in fp32; fp16 needs an fp16 export (not yet)")
    r.add_argument("--loop", choices=["auto", "device", "host"], default="auto",
                   help="device: image, gradient and optimizer state stay in device buffers (needs the model's "
                   "optimizer graphs); host: optimizer in numpy; auto: device when the model has them")
    r.add_argument("--no-cache", action="store_true",
                   help="do not use or fill the cache of optimized graphs (see NST_ORT_CACHE_DIR in the README)")
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
    return p


_said: set[str] = set()


def _warn(msg: str) -> None:
    # Once per message: a batch reloads the same style image for every content image.
    if msg not in _said:
        _said.add(msg)
        print(f"nst-ort: warning: {msg}", file=sys.stderr)


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


def build_config(args, artifacts) -> tuple[Config, Path | None]:
    images = [Path(p) for p in args.images]
    if args.texture:
        if not images:
            raise UsageError("--texture needs at least one style image: nst-ort --texture STYLE -o OUT")
        content, style_paths = None, images
    else:
        if len(images) < 2:
            raise UsageError("need a content image and at least one style image (or --texture STYLE)")
        content, style_paths = images[0], images[1:]
    if not args.output:
        raise UsageError("no output: give -o OUT")
    weights = args.style_weights if args.style_weights else [1.0] * len(style_paths)
    masks = [Path(m) for m in args.style_masks] if args.style_masks else [None] * len(style_paths)
    if len(weights) != len(style_paths) or len(masks) != len(style_paths):
        raise UsageError(f"{len(style_paths)} style image(s) but {len(weights)} weight(s) and {len(masks)} mask(s)")
    preset = PRESETS[args.preset]
    loss = preset.loss(artifacts, LossConfig(
        content_weight=args.content_weight, style_weight=args.style_weight, tv_weight=args.tv_weight,
        content_layer=args.content_layer, style_layer_weights=args.style_layers))
    optim_cfg = OptimConfig(
        name=args.optimizer or OptimConfig.name,
        iterations=args.iterations if args.iterations is not None else preset.iterations,
        lr=args.lr, history=args.history or OptimConfig.history, average=args.average,
    )
    texture_size = tuple(args.texture_size) if args.texture_size else None
    # The output's size: --texture-size's long side, else the last scale, else --size (default 512).
    size = max(texture_size) if texture_size else args.scales[-1] if args.scales else args.size or Config.size
    cfg = Config(
        content=content, styles=[StyleInput(p, w, m) for p, w, m in zip(style_paths, weights, masks)],
        size=size, texture_size=texture_size, scales=args.scales, scale_iterations=args.scale_iterations,
        style_scale=args.style_scale, init=args.init, seed=args.seed or 0, color=args.color, loss=loss,
        optim=optim_cfg, model=Path(args.model) if args.model else None, device=args.device, provider=args.provider,
        threads=args.threads, precision=args.precision, loop=args.loop,
    )
    cfg.validate()
    return cfg, Path(args.output)


def checkpoint_bytes(cfg: Config, size: tuple[int, int]) -> int:
    """An upper estimate of a checkpoint's size: the image, the optimizer's vectors, the average."""
    n = 3 * size[0] * size[1]
    vectors = 2 * cfg.optim.history + 4 if cfg.optim.name == "lbfgs" else 4
    return 4 * n * (vectors + 1) + 16 * cfg.optim.history ** 2 + (64 << 10)


def _sources(cfg: Config, artifacts, resume: Path | None) -> list[Source]:
    out = []
    if cfg.content is not None:
        out.append(Source(cfg.content, "content image"))
    for st in cfg.styles:
        out.append(Source(st.path, "style image"))
        if st.mask is not None:
            out.append(Source(st.mask, "style mask"))
    if cfg.init not in ("content", "noise"):
        out.append(Source(Path(cfg.init), "--init image"))
    if resume is not None:
        out.append(Source(resume, "--resume checkpoint"))
    model = artifacts.path
    out.append(Source(model / "manifest.json", "model file"))
    out += [Source(model / name, "model file") for name in artifacts.manifest["files"]]
    return out


def _targets(cfg: Config, out: Path, args, final: tuple[int, int], largest: tuple[int, int], total: int
             ) -> tuple[list[Target], Snapshots | None]:
    targets = [Target(out, "-o", image_bytes(*final), image=True)]
    if args.report:
        targets.append(Target(Path(args.report), "--report", (64 << 10) + 600 * total))
    if args.checkpoint:
        targets.append(Target(Path(args.checkpoint), "--checkpoint", checkpoint_bytes(cfg, largest)))
    snaps = Snapshots(out, args.save_every, total) if args.snapshots else None
    if snaps is not None and snaps.count():
        # One target stands for all of them (their folder's free space); the pattern is checked apart.
        targets.append(Target(snaps.path(snaps.steps()[0]), "--snapshots", snaps.count() * image_bytes(*largest),
                              image=True))
    return targets, snaps


def _settings(args, cfg: Config, weights: dict) -> dict:
    """The report's settings: the flags as given, with the values they resolved to where unset."""
    settings = {k: v for k, v in vars(args).items()}
    settings.update({k: weights[k] for k in ("content_weight", "style_weight", "tv_weight")})
    settings.update(size=cfg.size, iterations=cfg.optim.iterations, scales=[s for s, _ in cfg.schedule()],
                    scale_iterations=[n for _, n in cfg.schedule()], optimizer=cfg.optim.name,
                    lr=cfg.optim.learning_rate(), history=cfg.optim.history, seed=cfg.seed)
    settings["nst_ort"] = __version__
    import onnxruntime

    settings["onnxruntime"] = onnxruntime.__version__
    return settings


def stylize_one(cfg: Config, out: Path, args, artifacts, label: str = "") -> str:
    """Check everything, then run (or with --dry-run print the plan). Returns what was written."""
    from . import checkpoint
    from .stylize import Stylizer

    resume = Path(args.resume) if args.resume else None
    stylizer = Stylizer(cfg, artifacts=artifacts, warn=_warn)  # validates; reads image headers only
    sizes = stylizer.sizes()
    total = cfg.total_iterations()
    largest = max(sizes, key=lambda s: s[0] * s[1])
    targets, snaps = _targets(cfg, out, args, sizes[-1], largest, total)
    check_writes(targets, _sources(cfg, artifacts, resume), snaps, resume)
    plan = stylizer.memory_plan()
    memory.check(plan)  # before any image is decoded: their headers give the sizes
    fingerprint = checkpoint.fingerprint(cfg)
    if resume is not None:
        try:
            stylizer.load_state_dict(checkpoint.load(resume, fingerprint))
        except UsageError as e:
            msg = str(e)
            raise UsageError(msg if msg.startswith(str(resume)) else f"{resume}: {msg}") from None
    stylizer.load_inputs()  # decode every image now: a damaged one is refused before the run
    if args.dry_run:
        _print_plan(stylizer, cfg, out, targets, plan, args, label)
        return "nothing (dry run)"
    return _run(stylizer, cfg, out, args, fingerprint, snaps, label)


def _run(stylizer, cfg: Config, out: Path, args, fingerprint: str, snaps: Snapshots | None, label: str) -> str:
    from . import checkpoint
    from .images import save_image
    from .report import Progress, Report

    sizes = stylizer.sizes()
    progress = Progress([(w, h, n) for (w, h), (_, n) in zip(sizes, stylizer.schedule)], enabled=not args.quiet,
                        label=label, start=(stylizer.scale, stylizer.iteration))
    weights = stylizer.weights_used()
    report = Report(_settings(args, cfg, weights), weights)
    resumed_at = stylizer.steps

    def save(image) -> None:
        save_image(image, out)
        if args.checkpoint:
            checkpoint.save(args.checkpoint, stylizer.state_dict(), fingerprint)

    def finish(status: str) -> None:
        if status == "done":
            save(stylizer.result())
        elif stylizer.image() is not None:
            save(stylizer.current())
        if args.report:
            report.runtime = stylizer.runtime()
            report.write(args.report, status)

    try:
        for record in stylizer.run():
            progress(record)
            report(record)
            if args.save_every and record.step % args.save_every == 0:
                image = stylizer.current()
                save(image)
                if snaps is not None:
                    save_image(image, snaps.path(record.step))
    except (KeyboardInterrupt, _Interrupted):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the final save short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        progress.close()
        finish("interrupted")
        done = f"wrote the current image to {out}" if stylizer.image() is not None else "nothing written"
        raise Interrupted(f"{out}: interrupted at iteration {stylizer.steps}; {done}") from None
    # Despite the estimate (other processes, a GPU) memory can run out, and the loss can stop being
    # finite: the Stylizer then holds the last finite image, which is written.
    except OutOfMemory as e:
        progress.close()
        if stylizer.image() is None:
            raise OutOfMemory(f"{cfg.content or 'texture'}: {e}") from None
        finish("out of memory")
        raise OutOfMemory(f"{out}: {e}; wrote the last image") from None
    except NumericalError:
        progress.close()
        what = f"{out}: the loss is not finite (NaN or Inf) at iteration {stylizer.steps + 1}; stopped"
        hint = "try a smaller --lr or smaller loss weights"
        if stylizer.image() is None:
            raise NumericalError(f"{what} before any finite image, nothing written; {hint}") from None
        finish("nan")
        raise NumericalError(f"{what} and wrote the last finite image; {hint}") from None
    except BaseException:
        progress.close()
        raise
    progress.close()
    finish("done")
    if stylizer.steps == resumed_at:
        return (f"{out} (no iterations: the start image)" if resumed_at == 0 else
                f"{out} (nothing left after iteration {resumed_at}: the checkpoint's image)")
    return str(out)


def _print_plan(stylizer, cfg: Config, out: Path, targets: list[Target], plan, args, label: str) -> None:
    info = stylizer.plan()
    a = memory.assess(plan)
    weights = stylizer.weights_used()
    data = {"content": str(cfg.content) if cfg.content else None,
            "styles": [{"path": str(s.path), "weight": s.weight, "mask": str(s.mask) if s.mask else None}
                       for s in cfg.styles],
            "init": cfg.resolved_init(), "output": str(out), **info,
            "total_iterations": cfg.total_iterations(), "optimizer": cfg.optim.name,
            "resume": {"path": args.resume, "step": stylizer.steps} if args.resume else None,
            "weights": weights,
            "memory": {"need_bytes": max(a.need.resident, a.decode.resident), "available_bytes": a.available.resident,
                       "limit": a.available.source if a.available.resident is not None else None,
                       "address_space_left": a.available.address},
            "writes": [{"path": str(t.path), "flag": t.flag} for t in targets]}
    if args.json:
        print(json.dumps(data, indent=1))
        return
    def row(key: str, text: str) -> None:
        print(f"  {key:<9} {text}")

    print(f"nst-ort: {label}dry run: checked, nothing computed or written")
    inputs = stylizer.inputs
    if cfg.content is not None:
        p = inputs[Path(cfg.content)]
        row("content", f"{cfg.content} ({p.width}x{p.height})")
    for st in cfg.styles:
        p = inputs[Path(st.path)]
        extra = f", weight {st.weight:g}" if len(cfg.styles) > 1 else ""
        extra += f", mask {st.mask}" if st.mask else ""
        row("style", f"{st.path} ({p.width}x{p.height}{extra})")
    row("start", {"content": "the content image", "noise": f"noise (seed {cfg.seed})"}.get(
        cfg.resolved_init(), f"{cfg.init}") + (f"; resumes after iteration {stylizer.steps}" if args.resume else ""))
    steps = info["schedule"]
    for k, sc in enumerate(steps):
        row("schedule" if k == 0 else "", f"scale {sc['scale']} of {len(steps)}: {sc['width']}x{sc['height']}, "
            f"{sc['iterations']} iteration{'s' if sc['iterations'] != 1 else ''}")
    opt = f"L-BFGS, history {cfg.optim.history}" if cfg.optim.name == "lbfgs" else "Adam"
    row("", f"{cfg.total_iterations()} in all; {opt}, lr {cfg.optim.learning_rate():g}")
    w = weights
    row("weights", f"content {_number(w['content_weight'])} on {', '.join(w['content_layers']) or '-'}; style "
        f"{_number(w['style_weight'])} on {', '.join(w['style_layers']) or '-'}; tv {_number(w['tv_weight'])}")
    threads = f"{info['threads']} threads" if info["threads"] else "onnxruntime's threads"
    row("runs on", f"{info['providers'][0]} ({info['device']}), {info['train_graph']}, {info['loop']} loop, {threads}")
    need = max(a.need.resident, a.decode.resident)
    have = (f"{memory.gib(a.available.resident)} available ({a.available.source})"
            if a.available.resident is not None else "available memory unknown")
    row("memory", f"about {memory.gib(need)} at {a.size[0]}x{a.size[1]}; {have}")
    row("writes", "; ".join(f"{t.path} ({t.flag})" for t in targets))


def _sigterm(signum, frame):
    raise _Interrupted()


# `nst-ort NAME ...` for each NAME here runs "module:function"(argv[1:]) instead of stylizing. Each
# subcommand owns its parser; the module is imported only when asked for (start-up stays small).
SUBCOMMANDS: dict[str, str] = {}


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
    if args.no_cache:
        os.environ["NST_ORT_CACHE"] = "0"
    try:
        return _main(args)
    except (KeyboardInterrupt, _Interrupted):
        print("nst-ort: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `nst-ort --info | head`: the reader has what it wanted; as SIGPIPE would
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return EXIT_BROKEN_PIPE
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

    if args.info:
        return _info(Artifacts(args.model), args.json)
    check_modes(args)
    if not args.images:
        raise UsageError("no images: nst-ort CONTENT STYLE [STYLE ...] -o OUT (or --texture STYLE -o OUT)")
    artifacts = Artifacts(args.model)
    if not args.texture and _is_dir(Path(args.images[0])):
        return _batch(args, artifacts)
    cfg, out = build_config(args, artifacts)
    wrote = stylize_one(cfg, out, args, artifacts)
    if not args.quiet and not args.dry_run:
        print(f"wrote {wrote}", file=sys.stderr)
    return 0


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # a name too long, a NUL: the image loader says what is wrong
        return False


# -- --info -----------------------------------------------------------------------------------------
def _number(v: float) -> str:
    """A weight as people read it: 100,000 rather than 100000.0 or 1e+05."""
    v = float(v)
    if v == int(v) and abs(v) < 1e9:
        return f"{int(v):,}"
    return f"{v:.4g}"


def _layer_weight(v: float) -> str:
    """Per-layer weights are mostly 1/C^2: say so."""
    if v <= 0:
        return ""
    c = round((1.0 / v) ** 0.5)
    if c > 1 and abs(v * c * c - 1.0) < 1e-6:
        return f"1/{c}^2 = {v:.3g}"
    return _number(v)


def network_order(layers: list[dict]) -> list[dict]:
    """The manifest lists layers in no particular order: sort by depth (stride), then by name with
    its numbers as numbers (relu4_1 before relu4_2 before relu10_1)."""
    import re

    def key(layer: dict):
        parts = re.split(r"(\d+)", layer["name"])
        return (int(layer["stride"]), [int(x) if x.isdigit() else x for x in parts])
    return sorted(layers, key=key)


def _info(artifacts, as_json: bool) -> int:
    import onnxruntime

    m = artifacts.manifest
    runtime = {"onnxruntime": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}
    layers = network_order(m["layers"])
    if as_json:
        print(json.dumps({"path": str(artifacts.path), "backbone": m["backbone"], "layers": layers,
                          "content_layers": m["content_layers"], "style_layers": m["style_layers"],
                          "defaults": m["defaults"], "weights": m["weights"], "runtime": runtime}, indent=1))
        return 0
    d = m["defaults"]
    clw, slw = d.get("content_layer_weights", {}), d.get("style_layer_weights", {})
    src = m["weights"] if isinstance(m["weights"], dict) else {}
    print(f"model       {artifacts.path}")
    print(f"backbone    {m['backbone']}" + (f"; weights: {src['source']}" if src.get("source") else ""))
    if src.get("license"):
        print(f"license     {src['license']}")
    print("layers      in network order; content and style: the default weight of each layer (0: not used by default)")
    print(f"            {'layer':<10} {'channels':>8} {'stride':>6}  {'content':<8} style")
    for layer in layers:
        n = layer["name"]
        content = ("-" if n not in m["content_layers"] else _number(clw.get(n, 0)))
        style = ("-" if n not in m["style_layers"] else _layer_weight(slw.get(n, 0)) or "0")
        print(f"            {n:<10} {layer['channels']:>8} {layer['stride']:>6}  {content:<8} {style}")
    content_on = [n for n in m["content_layers"] if clw.get(n)]
    print(f"defaults    content weight {_number(d['content_weight'])} (on {', '.join(content_on) or '-'}), "
          f"style weight {_number(d['style_weight'])}, tv weight {_number(d['tv_weight'])}")
    print(f"            size {Config.size} px, {OptimConfig.iterations} iterations, L-BFGS with history "
          f"{OptimConfig.history} (Adam: lr 0.02)")
    print(f"presets     {', '.join(PRESETS)} (--preset; README: Loss normalization, defaults and presets)")
    print(f"runtime     onnxruntime {runtime['onnxruntime']}; providers available: {', '.join(runtime['providers'])}")
    return 0


# -- batch ------------------------------------------------------------------------------------------
BATCH_PER_IMAGE = {"--report": "report", "--checkpoint": "checkpoint"}


def _batch(args, artifacts) -> int:
    """Many content images, one set of styles: each image is its own run (its own checks, its own
    --report and --checkpoint file in the folders those flags name); every entry of the folder that
    is not processed is named."""
    folder, out_dir = Path(args.images[0]), Path(args.output or "")
    if not args.output:
        raise UsageError("batch: give -o OUTPUT_FOLDER")
    if args.resume:
        raise UsageError("--resume: resumes one image's run; not in a batch (CONTENT is a folder)")
    if not _is_dir(out_dir):
        raise OutputError(f"{out_dir}: batch output must be an existing folder")
    for flag, name in BATCH_PER_IMAGE.items():
        value = getattr(args, name)
        if value and not _is_dir(Path(value)):
            raise UsageError(f"{flag}: in a batch it names a folder (one file per image); {value} is not an "
                             "existing folder")
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        raise ImageError(f"{folder}: cannot list this folder ({e.strerror or e})") from None
    files = []
    for p in entries:
        if p.is_dir():
            _warn(f"{p}: a folder, skipped (a batch does not descend into folders)")
        elif p.suffix.lower() not in IMAGE_EXTS:
            _warn(f"{p}: not an image file name ({', '.join(sorted(IMAGE_EXTS))}), skipped")
        elif not p.is_file():
            _warn(f"{p}: not a regular file, skipped")
        else:
            files.append(p)
    if not files:
        raise UsageError(f"{folder}: no images ({', '.join(sorted(IMAGE_EXTS))}) in this folder")
    stems = [p.stem for p in files]
    jobs = []
    for p in files:
        # cat.jpg and cat.png would both become cat.png: the second would overwrite the first result.
        stem = p.stem if stems.count(p.stem) == 1 else f"{p.stem}-{p.suffix[1:]}"
        per = {"images": [str(p), *args.images[1:]], "output": str(out_dir / f"{stem}.png")}
        if args.report:
            per["report"] = str(Path(args.report) / f"{stem}.json")
        if args.checkpoint:
            per["checkpoint"] = str(Path(args.checkpoint) / f"{stem}.npz")
        jobs.append((p, argparse.Namespace(**{**vars(args), **per})))
    # Every image's outputs against every input of the batch (and each other) before any work: an
    # output that would replace a content image still to be read is refused up front.
    everything = [Source(p, "content image") for p in files]
    planned = [Target(Path(getattr(one, a)), f) for _, one in jobs
               for a, f in (("output", "-o"), ("report", "--report"), ("checkpoint", "--checkpoint"))
               if getattr(one, a)]
    for t in planned:
        for src in everything:
            if same_file(t.path, src.path):
                raise OutputError(f"{t.path}: {t.flag} would overwrite the content image {src.path} of this batch; "
                                  "refusing (write the results to another folder)")
    failed = 0
    for k, (p, one) in enumerate(jobs):
        label = f"[{k + 1}/{len(jobs)}] "
        try:
            cfg, out = build_config(one, artifacts)
            wrote = stylize_one(cfg, out, one, artifacts, label=label)
            if not args.quiet and not args.dry_run:
                print(f"wrote {wrote}", file=sys.stderr)
        except Interrupted:
            raise
        except NstError as e:
            failed += 1
            print(f"nst-ort: error: {e} (skipped)", file=sys.stderr)
    if failed:
        print(f"nst-ort: {failed} of {len(files)} image(s) failed", file=sys.stderr)
        return EXIT_BATCH_PARTIAL
    return 0
