"""nst-ort: flags -> Config -> Stylizer -> progress, report, outputs."""
from __future__ import annotations

import argparse
import difflib
import importlib
import os
import shlex
import signal
import sys
from pathlib import Path

import onnxruntime

from ..base.errors import (EXIT_BATCH_PARTIAL, EXIT_INTERRUPTED, Interrupted, NstError, NumericalError, OutOfMemory,
                           OutputError, Terminated, UsageError, exit_for, on_sigterm, stdout_closed)
from ..base.extras import require
from ..base.version import __version__
from ..engine import memory
from ..engine.artifacts import Artifacts
from ..engine.config import Config, LossConfig, OptimConfig, StyleInput
from ..engine.providers import parse_options
from ..media.outputs import (Snapshots, Source, Target, batch_files, batch_outputs, check_writes, file_arg, image_bytes,
                             same_file)
from . import describe
from .flags import build_parser, check_modes
from .presets import PRESETS
from .sources import run_sources

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}



_said: set[str] = set()


def _warn(msg: str) -> None:
    # Once per message: a batch reloads the same style image for every content image.
    if msg not in _said:
        _said.add(msg)
        print(f"nst-ort: warning: {msg}".replace("\n", "\\n"), file=sys.stderr)  # one line, whatever the names


def _provider_options(args) -> dict | None:
    return parse_options(args.provider_option) or None


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
    for flag, given, what in (("--style-weights", args.style_weights, "weight"), ("--style-masks", args.style_masks, "mask")):
        if given and len(given) != len(style_paths):
            raise UsageError(f"{flag}: {len(given)} {what}(s) for {len(style_paths)} style image(s); give one per "
                             f"style image, in their order (comma-separated)")
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
        provider_options=_provider_options(args), tile=getattr(args, "tile", None),
    )
    cfg.validate()
    return cfg, Path(args.output)


def checkpoint_bytes(cfg: Config, size: tuple[int, int]) -> int:
    """An upper estimate of a checkpoint's size: the image, the optimizer's vectors (L-BFGS: the
    pairs it has stored, at most one per iteration of a scale), the average."""
    n = 3 * size[0] * size[1]
    pairs = min(cfg.optim.history, max(iterations for _, iterations in cfg.schedule()))
    vectors = 2 * pairs + 4 if cfg.optim.name == "lbfgs" else 4
    return 4 * n * (vectors + 1) + 16 * pairs ** 2 + (64 << 10)


def _targets(cfg: Config, out: Path, args, final: tuple[int, int], largest: tuple[int, int], total: int
             ) -> tuple[list[Target], Snapshots | None]:
    for flag, value in (("-o", args.output), ("--report", args.report), ("--checkpoint", args.checkpoint)):
        if value:
            file_arg(str(value), flag)  # `out.png/`: a folder by its spelling, not a file to write
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
    settings["onnxruntime"] = onnxruntime.__version__
    return settings


def stylize_one(cfg: Config, out: Path, args, artifacts, label: str = "") -> str:
    """Check everything, then run (or with --dry-run print the plan). Returns what was written."""
    # Here, not at the top: the engine's run path is not loaded for --help, --version or a bad flag
    # (start-up, measured in benchmarks/results/layout_startup.md).
    from ..engine import checkpoint
    from ..engine.stylize import Stylizer

    resume = Path(args.resume) if args.resume else None
    stylizer = Stylizer(cfg, artifacts=artifacts, warn=_warn)  # validates; reads image headers only
    sizes = stylizer.sizes()
    total = cfg.total_iterations()
    largest = max(sizes, key=lambda s: s[0] * s[1])
    targets, snaps = _targets(cfg, out, args, sizes[-1], largest, total)
    check_writes(targets, run_sources(cfg, artifacts, resume), snaps, resume)
    plan = stylizer.memory_plan()
    tiling = stylizer.plan_tiling()  # --tile auto: untiled where it fits, else tiles (and the L-BFGS history)
    memory.check(plan, tiling=tiling)  # before any image is decoded: their headers give the sizes
    fingerprint = checkpoint.fingerprint(cfg)
    if resume is not None:
        try:
            stylizer.load_state_dict(checkpoint.load(resume, fingerprint))
        except UsageError as e:
            msg = str(e)
            raise UsageError(msg if msg.startswith(str(resume)) else f"{resume}: {msg}") from None
    stylizer.load_inputs()  # decode every image now: a damaged one is refused before the run
    if args.dry_run:
        describe.print_plan(stylizer, cfg, out, targets, plan, args, label)
        return "nothing (dry run)"
    return _run(stylizer, cfg, out, args, fingerprint, snaps, label)


def _run(stylizer, cfg: Config, out: Path, args, fingerprint: str, snaps: Snapshots | None, label: str) -> str:
    from ..engine import checkpoint  # start-up, as in stylize_one
    from ..media.images import save_image
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

    def stopped(status: str, nothing: NstError, wrote: NstError) -> NstError:
        """The error to raise: `nothing` without a finite image, else `wrote`, once the last is written."""
        if stylizer.image() is None:
            return nothing
        finish(status)
        return wrote

    try:
        try:
            for record in stylizer.run():
                progress(record)
                report(record)
                if args.save_every and record.step % args.save_every == 0:
                    image = stylizer.current()
                    save(image)
                    if snaps is not None:
                        save_image(image, snaps.path(record.step))
        finally:
            progress.close()
    except (KeyboardInterrupt, Terminated):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the final save short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        finish("interrupted")
        raise Interrupted(f"{out}: interrupted at iteration {stylizer.steps}; "
                          f"{_interrupted_note(stylizer.image() is not None, out, args)}") from None
    # Despite the estimate (other processes, a GPU) memory can run out, and the loss can stop being
    # finite: the Stylizer then holds the last finite image, which is written.
    except OutOfMemory as e:
        raise stopped("out of memory", OutOfMemory(f"{cfg.content or 'texture'}: {e}"),
                      OutOfMemory(f"{out}: {e}; wrote the last image")) from None
    except NumericalError:
        what = f"{out}: the loss is not finite (NaN or Inf) at iteration {stylizer.steps + 1}; stopped"
        hint = "try a smaller --lr or smaller loss weights"
        raise stopped("nan", NumericalError(f"{what} before any finite image, nothing written; {hint}"),
                      NumericalError(f"{what} and wrote the last finite image; {hint}")) from None
    finish("done")
    if stylizer.steps == resumed_at:
        return (f"{out} (no iterations: the start image)" if resumed_at == 0 else
                f"{out} (nothing left after iteration {resumed_at}: the checkpoint's image)")
    return str(out)



_command: list[str] | None = None  # the arguments of a one-image run, for the command that resumes it


def _interrupted_note(wrote: bool, out: Path, args) -> str:
    """What Ctrl-C left behind, and how to go on from it."""
    if not wrote:
        return "nothing written"
    if not args.checkpoint:
        return f"wrote the current image to {out} (no --checkpoint given: a rerun starts over)"
    done = f"wrote the current image to {out} and the checkpoint to {args.checkpoint}"
    if _command is None:  # a batch image (a batch does not resume): that image alone resumes
        return f"{done} (resume that image alone with --resume {args.checkpoint})"
    return f"{done}; resume with: {resume_command(_command, args.checkpoint)}"


def resume_command(argv: list[str], checkpoint: str) -> str:
    """The command as typed, with --resume CHECKPOINT (replacing a --resume it had)."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--resume":
            skip = True
        elif not a.startswith("--resume="):
            kept.append(a)
    return shlex.join(["nst-ort", *kept, "--resume", str(checkpoint)])


# `nst-ort NAME ...` for each NAME here runs "module:function"(argv[1:]) instead of stylizing. Each
# subcommand owns its parser; the module is imported only when asked for (start-up stays small).
SUBCOMMANDS: dict[str, str] = {
    "check": "nst_ort.commands.check:main",
    "video": "nst_ort.commands.video:main",
    "web": "nst_ort.commands.web:main",
}


# One line each for `nst-ort --help`; a subcommand missing here is still listed (by name).
SUBCOMMAND_HELP: dict[str, str] = {
    "check": "does this machine's provider compute what the CPU provider does (exit 0 or 10)",
    "video": "stylize a video, frame by frame, resumable",
    "web": "serve the browser page (the same loop in onnxruntime-web)",
}


def subcommands_epilog() -> str:
    lines = [f"nst-ort {name}: {SUBCOMMAND_HELP.get(name, 'see its --help')}" for name in SUBCOMMANDS]
    return "subcommands (each has its own --help): " + "; ".join(lines) + "."


def near_subcommand(word: str) -> str | None:
    """The subcommand `word` is a typo of, when it names no file (a file is a content image)."""
    if word.startswith("-") or Path(word).suffix or os.path.lexists(word):
        return None
    near = difflib.get_close_matches(word, list(SUBCOMMANDS), n=1, cutoff=0.6)
    return near[0] if near else None


def _subcommand(argv: list[str]) -> int:
    module, _, func = SUBCOMMANDS[argv[0]].partition(":")
    try:
        return getattr(importlib.import_module(module), func)(argv[1:])
    except BrokenPipeError:  # `nst-ort check | head -1`: the reader has what it wanted (errors.stdout_closed)
        return stdout_closed()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        return _subcommand(argv)
    near = near_subcommand(argv[0]) if argv else None
    if near is not None:
        print(f"nst-ort: error: {argv[0]}: no such subcommand or file; did you mean `nst-ort {near}`? "
              f"(subcommands: {', '.join(SUBCOMMANDS)})", file=sys.stderr)
        return 2
    parser = build_parser()
    parser.epilog = subcommands_epilog()
    args = parser.parse_args(argv)
    global _command
    _command = argv
    signal.signal(signal.SIGTERM, on_sigterm)
    if args.no_cache:
        os.environ["NST_ORT_CACHE"] = "0"
    try:
        return _main(args)
    except (KeyboardInterrupt, Terminated):
        print("nst-ort: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `nst-ort --info | head`: the reader has what it wanted; as SIGPIPE would
        return stdout_closed()
    except Exception as e:  # noqa: BLE001 - MemoryError, NstError, anything else: one line (errors.exit_for)
        return exit_for(e, args.debug)


def _main(args) -> int:
    if args.info:
        return describe.info(Artifacts(args.model), args.json)
    check_modes(args)
    if not args.images:
        raise UsageError("no images: nst-ort CONTENT STYLE [STYLE ...] -o OUT (or --texture STYLE -o OUT)")
    artifacts = Artifacts(args.model)

    from . import distributed  # start-up, as in stylize_one (it loads the engine and the Ray driver)

    batch = not args.texture and _is_dir(Path(args.images[0]))
    if distributed.wanted(args):
        if not batch:
            raise UsageError("--workers and --ray-address are for a folder of content images (or nst-ort video)")
        for flag, name in (("--report", "report"), ("--checkpoint", "checkpoint"), ("--resume", "resume"),
                           ("--save-every", "save_every")):
            if getattr(args, name, None):
                raise UsageError(f"{flag}: not with --workers / --ray-address (a Ray batch writes only the images)")
        if not args.dry_run:
            return distributed.batch(args, artifacts, IMAGE_EXTS, build_config)
        # A dry run checks what the Ray batch would run, image by image, as the sequential batch
        # does; and that Ray is there.

        require("ray", "--workers / --ray-address")
    if batch:
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


# -- batch ------------------------------------------------------------------------------------------
BATCH_PER_IMAGE = {"--report": "report", "--checkpoint": "checkpoint"}


def _batch(args, artifacts) -> int:
    """Many content images, one set of styles: each image is its own run (its own checks, its own
    --report and --checkpoint file in the folders those flags name); every entry of the folder that
    is not processed is named."""
    global _command
    _command = None  # a batch does not resume as a whole
    folder, out_dir = Path(args.images[0]), Path(args.output or "")
    if not args.output:
        raise UsageError("batch: give -o OUTPUT_FOLDER")
    if args.resume:
        raise UsageError("--resume: resumes one image's run; not in a batch (CONTENT is a folder)")
    if not _is_dir(out_dir):
        raise OutputError(f"{out_dir}: batch output must be an existing folder")
    to_create = []  # missing --report / --checkpoint folders: made after the batch-wide checks (not by a dry run)
    for flag, name in BATCH_PER_IMAGE.items():
        value = getattr(args, name)
        if not value or _is_dir(Path(value)):
            continue
        if os.path.lexists(value) or Path(value).suffix:
            what = "is not a folder" if os.path.lexists(value) else "looks like a file name"
            raise UsageError(f"{flag}: in a batch it names a folder (one file per image); {value} {what}")
        to_create.append((flag, name, Path(value)))
    files = batch_files(folder, IMAGE_EXTS, _warn)
    jobs = []
    for p, result in batch_outputs(files, out_dir):  # two images to one name: refused here, naming both
        stem = result.stem
        per = {"images": [str(p), *args.images[1:]], "output": str(result)}
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
    for flag, name, folder_path in to_create:
        if args.dry_run:
            _warn(f"{flag}: {folder_path} does not exist; the run will create it")
            for _, one in jobs:
                setattr(one, name, None)
            continue
        try:
            folder_path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{folder_path}: cannot create the {flag} folder ({e.strerror or e})") from None
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
            print(f"nst-ort: error: {e} (skipped)".replace("\n", "\\n"), file=sys.stderr)  # one line per image
    if failed:
        print(f"nst-ort: {failed} of {len(files)} image(s) failed", file=sys.stderr)
        return EXIT_BATCH_PARTIAL
    return 0
