"""Scale-out over Ray (the `[ray]` extra): a batch folder's images, or a video's shards, as Ray tasks.

    nst-ort photos/ style.jpg -o out/ --workers 2                 # starts a local Ray by itself
    nst-ort photos/ style.jpg -o out/ --ray-address HOST:6379     # an existing cluster
    nst-ort video clip.mp4 style.jpg -o out.mp4 --workers 2

Everything a task needs travels through Ray's object store, so a cluster needs no shared storage:
the model folder's files (put once per run; each worker process writes them to a local cache folder
named by the manifest's sha256, once), the input images' bytes or a shard's content frames, and back
the written PNG bytes. nst-ort itself writes every output (atomically, as the sequential path does).

Units of work:
- batch: one task per image. A task runs the same Stylizer as the sequential batch, with the same
  Config (its paths remapped to the worker's copies), so a seeded batch on the CPU gives the same
  bytes through Ray as without it (at the same --threads).
- video: contiguous shards of `--shard-frames` frames, in two passes. Pass 1: shard s keeps frames
  [a, b] but starts `--overlap` frames earlier, from content, and discards those (a warm-up: a
  chain's first frames are its least converged). The seam pass: frames a..a+overlap-1 again,
  continuing shard s-1's chain from frame a-1 as written and blended step by step into shard s's
  own frames (docs/video.md), so that the seam is not one jump. Shard boundaries are fixed by frame
  number (not by where a resumed run starts), so a resumed run writes the same frames.

The Ray connection itself (a local Ray of the run's own, or --ray-address; a child process that
holds it) is ray_cluster.py's. A worker killed mid-task: Ray runs the task again (max_retries), on
another worker process; the output is complete. More often than that, an error on the worker, or
the cluster gone: a batch names the images (by the user's paths), a video the frames, not done, and
writes the rest (exit 9). Tasks do not retry on application errors (a bad image): those come back
as messages, as in the sequential batch (skipped, exit 9).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..base.atomic import atomic_write
from ..base.errors import EXIT_BATCH_PARTIAL, NstError, OutputError, UsageError
from ..engine import memory
from ..engine.artifacts import Artifacts
from ..engine.config import StyleInput
from ..engine.stylize import Stylizer
from ..media.images import load_image, save_image
from ..media.outputs import Source, Target, batch_files, batch_outputs, check_writes, image_bytes
from .ray_cluster import run_driver
from .sources import run_sources
from .video_frames import FrameStylizer

RETRIES = 3  # a task whose worker dies is run again, up to this many times


def retries() -> int:
    """RETRIES, or NST_ORT_RAY_RETRIES (the tests use 0: one kill then exhausts them)."""
    try:
        return max(0, int(os.environ.get("NST_ORT_RAY_RETRIES", RETRIES)))
    except ValueError:
        return RETRIES


def wanted(args) -> bool:
    return getattr(args, "workers", None) is not None or bool(getattr(args, "ray_address", None))


def default_threads(workers: int) -> int:
    """Intra-op threads per task on a local Ray: the machine's cores shared by the workers."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


# -- the model through the object store -----------------------------------------------------------
def model_blob(folder: Path) -> dict:
    """Every file of an artifact folder (a few tens of MB), keyed by name, and the manifest's sha256."""
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
    return {"sha256": hashlib.sha256(files["manifest.json"]).hexdigest(), "files": files}


_MODELS: dict[str, Path] = {}


def materialize_model(sha256: str, ref_box: list) -> Path:
    """The model folder on this worker: written once per worker process (the object is fetched only
    then), into a cache folder named by the manifest's sha256. ref_box: [ObjectRef] (boxed so that
    Ray does not fetch it for every task)."""
    if sha256 in _MODELS and (_MODELS[sha256] / "manifest.json").is_file():
        return _MODELS[sha256]
    import ray  # the [ray] extra: needed only here, on a Ray run

    blob = ray.get(ref_box[0])
    folder = Path(tempfile.mkdtemp(prefix=f"nst-ort-model-{sha256[:12]}-"))
    for name, data in blob["files"].items():
        (folder / name).write_bytes(data)
    _MODELS[sha256] = folder
    return folder


def _write_inputs(files: dict[str, bytes]) -> dict[str, Path]:
    """Input files (original path -> bytes) into a fresh folder on the worker: original path -> copy."""
    folder = Path(tempfile.mkdtemp(prefix="nst-ort-inputs-"))
    out = {}
    for i, (orig, data) in enumerate(files.items()):
        p = folder / f"{i}{Path(orig).suffix}"
        p.write_bytes(data)
        out[orig] = p
    return out


def _remap(cfg, paths: dict[str, Path], model: Path):
    """The Config with every input path replaced by the worker's copy, and the worker's model."""
    def m(p):
        return paths[str(p)] if p is not None else None

    styles = [StyleInput(m(s.path), s.weight, m(s.mask)) for s in cfg.styles]
    init = str(paths[cfg.init]) if cfg.init not in ("content", "noise") else cfg.init
    return dataclasses.replace(cfg, content=m(cfg.content), styles=styles, init=init, model=model)


# -- batch ------------------------------------------------------------------------------------------
def _user_message(message: str, copies: dict[str, Path], model: Path | None, user_model) -> str:
    """A worker's error names its own copies of the inputs; the user knows their files."""
    for orig, copy in copies.items():
        message = message.replace(str(copy), orig)
    return message if model is None else message.replace(str(model), str(user_model))


def stylize_image(sha256: str, model_box: list, cfg, files: dict[str, bytes]) -> dict:
    """One batch image on a worker: {"png": bytes} or {"error": message, "code": exit code}."""
    workdir = model = None
    paths: dict[str, Path] = {}
    try:
        model = materialize_model(sha256, model_box)
        paths = _write_inputs(files)
        workdir = next(iter(paths.values())).parent
        stylizer = Stylizer(_remap(cfg, paths, model))
        memory.check(stylizer.memory_plan())
        for _ in stylizer.run():
            pass
        out = workdir / "result.png"
        save_image(stylizer.result(), out)
        return {"png": out.read_bytes(), "pid": os.getpid()}
    except NstError as e:
        return {"error": _user_message(str(e), paths, model, cfg.model or "the model folder"),
                "code": e.exit_code}
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def batch_items(folder: Path, out_dir: Path, exts) -> list[tuple[Path, Path]]:
    """(content file, output file) for each image of a batch folder, named as cli._batch names them
    (cat.jpg -> cat.png; cat.jpg and cat.png -> cat-jpg.png and cat-png.png); every entry that is not
    processed is named, as in the sequential batch."""
    if not out_dir.is_dir():
        raise OutputError(f"{out_dir}: batch output must be an existing folder")

    files = batch_files(folder, exts, _warn)
    return batch_outputs(files, out_dir)  # the sequential batch's names and its clash check


def _warn(msg: str) -> None:
    print(f"nst-ort: warning: {msg}", file=sys.stderr)


def task_failure(e: BaseException, tries: int) -> str:
    """Why a Ray task gave no result, in a few words (not Ray's multi-line report)."""
    import ray.exceptions as rx  # the [ray] extra, as in materialize_model

    if isinstance(e, rx.WorkerCrashedError):
        return f"its Ray worker died {tries} time(s) (killed, or out of memory)"
    if isinstance(e, rx.RayTaskError):
        cause = getattr(e, "cause", None)
        text = f"{type(cause).__name__}: {cause}" if cause is not None else str(e)
        return f"failed on its Ray worker ({text.splitlines()[0][:200] if text else type(e).__name__})"
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return f"lost by Ray ({type(e).__name__}: {first})"


def _plan_batch(args, artifacts, items, build_config):
    """Each image's Config and output target, and the sequential batch's checks over the whole batch
    before any work: every output against every file any image reads (the content images of the
    batch included) and each other, regular files only, folders writable with room (exit 8).
    A bad image is skipped with its line, as in the sequential batch. -> (jobs, skipped count)."""
    jobs, skipped = [], 0
    sources = {(str(p), "content image"): Source(p, "content image") for p, _ in items}
    for content, out_path in items:
        one = argparse.Namespace(**{**vars(args), "images": [str(content), *args.images[1:]],
                                    "output": str(out_path)})
        try:
            cfg, out = build_config(one, artifacts)
            final = Stylizer(cfg, artifacts=artifacts).sizes()[-1]  # header only: the written size
        except NstError as e:
            skipped += 1
            print(f"nst-ort: error: {e} (skipped)", file=sys.stderr)
            continue
        for s in run_sources(cfg, artifacts, None):
            sources.setdefault((str(s.path), s.what), s)
        jobs.append((content, cfg, Target(Path(out), "-o", image_bytes(*final), image=True)))
    check_writes([t for _, _, t in jobs], sources.values())
    return jobs, skipped


def batch(args, artifacts, exts, build_config) -> int:
    """The images of a batch folder (args.images[0]) as Ray tasks, written to args.output;
    build_config(namespace, artifacts) -> (Config, out) as the sequential batch uses it.
    Images whose task failed (a bad image, a worker killed more often than the retries) are named
    and the others written: exit 9; if the cluster itself goes, what did not finish is named (exit 9)."""
    if not args.output:
        raise UsageError("batch: give -o OUTPUT_FOLDER")
    items = batch_items(Path(args.images[0]), Path(args.output), exts)
    jobs, failed = _plan_batch(args, artifacts, items, build_config)
    if not jobs:
        print(f"nst-ort: {failed} of {len(items)} image(s) failed", file=sys.stderr)
        return EXIT_BATCH_PARTIAL
    outcome = {k: None for k in range(len(jobs))}
    count = {"done": failed, "failed": failed}
    t0 = time.perf_counter()

    def on_message(kind, *data):
        if kind != "result":
            return
        k, workers, result = data
        content, _, target = jobs[k]
        outcome[k] = result
        count["done"] += 1
        if "error" in result:
            count["failed"] += 1
            print(f"nst-ort: error: {result['error']} (skipped)", file=sys.stderr)
        else:
            atomic_write(target.path, lambda f: f.write(result["png"]))
            if not args.quiet:
                print(f"wrote {target.path}", file=sys.stderr)
        if not args.quiet:
            print(f"nst-ort: {count['done']}/{len(items)} images done on {workers} Ray worker(s), "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)

    payload = {"model": artifacts.path, "threads": args.threads,
               "jobs": [(str(content), cfg) for content, cfg, _ in jobs]}
    lost = run_driver(_batch_body, payload, args.workers, args.ray_address, on_message, args.debug)
    if lost is not None:
        left = [str(jobs[k][0]) for k, r in outcome.items() if r is None]
        count["failed"] += len(left)
        print(f"nst-ort: error: {lost}; not done: {', '.join(left)}", file=sys.stderr)
    if count["failed"]:
        print(f"nst-ort: {count['failed']} of {len(items)} image(s) failed", file=sys.stderr)
        return EXIT_BATCH_PARTIAL
    return 0


def _batch_body(cluster, send, payload) -> None:
    """In the driver process: each image a task, at most `workers` in flight; every result sent back."""
    ray = cluster.ray
    threads = payload["threads"] or (default_threads(cluster.workers) if cluster.local else None)
    blob = model_blob(payload["model"])
    box = [ray.put(blob)]
    task = ray.remote(num_cpus=1, max_retries=retries())(stylize_image)
    queue = list(enumerate(payload["jobs"]))
    pending: dict = {}
    while pending or queue:
        while queue and len(pending) < cluster.workers:
            k, (content, cfg) = queue.pop(0)
            try:
                files = {str(p): p.read_bytes() for p in cfg.input_paths()}
            except OSError as e:
                send("result", k, cluster.workers, {"error": f"{content}: cannot read ({e.strerror or e})"})
                continue
            pending[task.remote(blob["sha256"], box, dataclasses.replace(cfg, threads=threads), files)] = (k, content)
        if not pending:
            continue
        ready, _ = ray.wait(list(pending), num_returns=1)
        k, content = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except Exception as e:  # noqa: BLE001 - ray.exceptions.*: a worker killed too often, a lost node
            result = {"error": f"{content}: {task_failure(e, retries() + 1)}"}
        send("result", k, cluster.workers, result)


# -- video shards ----------------------------------------------------------------------------------
class Partial(NstError):
    """Some images or frames did not finish (their tasks failed, or the cluster stopped); the others
    were written (docs/errors.md, exit 9)."""

    exit_code = EXIT_BATCH_PARTIAL


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int  # 0-based
    first_run: int  # 1-based frame where its pass-1 chain starts (the frames before `first`: warm-up, discarded)
    first: int  # its first frame
    last: int  # its last frame
    seam_last: int  # frames first..seam_last are stylized again by the seam pass (first - 1: none)

    @property
    def seam(self) -> range:
        return range(self.first, self.seam_last + 1)


def plan_shards(count: int, shard_frames: int, overlap: int) -> list[Shard]:
    """Frames 1..count in shards of shard_frames (fixed by frame number). Each shard but the first
    starts its chain `overlap` frames early (a chain's first frames are its least converged: each
    frame adds iterations to a warm start) and its first `overlap` kept frames are seam frames,
    stylized again after the shard before it."""
    if shard_frames < 1 or overlap < 0:
        raise UsageError("--shard-frames must be at least 1 and --overlap at least 0")
    shards = []
    for s, first in enumerate(range(1, count + 1, shard_frames)):
        last = min(count, first + shard_frames - 1)
        shards.append(Shard(s, max(1, first - overlap), first, last,
                            first - 1 if s == 0 else min(last, first + overlap - 1)))
    return shards


def default_shard_frames(count: int, workers: int) -> int:
    return max(1, math.ceil(count / max(1, workers)))


class _Progress:
    """Frames done per task, reported by the tasks as they go (a retried task starts over)."""

    def __init__(self):
        self.done: dict = {}

    def report(self, key, frames: int) -> None:
        self.done[key] = frames

    def total(self) -> int:
        return sum(self.done.values())


def _frame_stylizer(sha256, model_box, args, styles: dict[str, bytes], size):
    model = materialize_model(sha256, model_box)
    paths = _write_inputs(styles)
    a = argparse.Namespace(**vars(args))
    frames = FrameStylizer(a, Artifacts(model), size, [paths[s] for s in styles], a.style_weight_list, Path(a.input))
    return frames, paths, model


def _shard_task(work, name: str):
    """Run work(frames, workdir) -> list on a worker with its FrameStylizer; a worker's error names the
    user's files, not its copies."""
    def run(sha256, model_box, args, styles, size, *rest):
        paths, model = {}, None
        try:
            frames, paths, model = _frame_stylizer(sha256, model_box, args, styles, size)
            return work(frames, next(iter(paths.values())).parent, *rest)
        except NstError as e:
            raise type(e)(_user_message(str(e), paths, model, getattr(args, "model", None) or "the model folder")) from None
        finally:
            if paths:
                shutil.rmtree(next(iter(paths.values())).parent, ignore_errors=True)
    run.__name__ = run.__qualname__ = name  # the worker's process title: ray::NAME
    return run


def _save_as_written(path: Path):
    return lambda img: (save_image(img, path), load_image(path))[1]


def _shard_frames(frames, workdir: Path, shard: Shard, contents: list[np.ndarray], progress) -> list:
    """Pass 1, one shard: frames shard.first_run..shard.last as one chain from content. Returns
    (frame number, PNG bytes, record) per frame from shard.first on (the warm-up frames before it are
    discarded); the seam frames' results are the seam pass's targets, not written."""
    out, previous = [], None
    args = frames.args
    for i, content in enumerate(contents):
        index = shard.first_run + i
        iterations = args.first_iterations if previous is None and args.first_iterations else args.iterations
        path = workdir / f"{index:06d}.png"
        rec, written = frames.frame(content, previous, iterations, _save_as_written(path))
        previous = (content, written)
        if index < shard.first:
            continue
        rec = {**rec, "shard": shard.index, "seam": False}
        if shard.index > 0 and index == shard.seam_last + 1:
            # the first frame after the seam frames: its previous frame is the seam pass's, so its
            # warping error is measured again by nst-ort against the frame as written
            rec.update(seam=True, recheck=True)
        out.append((index, path.read_bytes(), rec))
        if progress is not None and index > shard.seam_last:
            progress.report.remote(("shard", shard.index), index - shard.seam_last)
    return out


def _seam_frames(frames, workdir: Path, shard: Shard, start: int, previous: tuple[np.ndarray, bytes],
                 contents: list[np.ndarray], targets: list[bytes], progress) -> list:
    """The seam pass: frames start..shard.seam_last again, continuing the chain of the frame before
    (previous: its content and PNG as written), each blended toward this shard's own pass-1 result
    (video.FrameStylizer.frame) with alpha 1 / (n + 1 - j), j its place among the n seam frames.
    Each frame blends its (already blended) previous one, so these alphas put seam frame j at
    (j + 1) / (n + 1) of the way from the previous shard's strokes to this shard's: n + 1 equal steps.
    (alpha (j + 1) / (n + 1) instead, measured at n = 2: steps of 1/3, 4/9 and 2/9 of the way, the
    middle one 2.8x the clip's median warping error.)"""
    def image(png: bytes, name: str) -> np.ndarray:
        p = workdir / name
        p.write_bytes(png)
        return load_image(p)

    n = len(shard.seam)
    prev = (previous[0], image(previous[1], "previous.png"))
    out = []
    for i, content in enumerate(contents):
        index = start + i
        alpha = 1.0 / (n + 1 - (index - shard.first))
        path = workdir / f"{index:06d}.png"
        rec, written = frames.frame(content, prev, frames.args.iterations, _save_as_written(path),
                                    blend=(image(targets[i], f"target-{index}.png"), alpha))
        out.append((index, path.read_bytes(), {**rec, "shard": shard.index, "seam": True, "seam_alpha": alpha}))
        if progress is not None:
            progress.report.remote(("seam", shard.index), i + 1)
        prev = (content, written)
    return out


stylize_shard = _shard_task(_shard_frames, "stylize_shard")
stylize_seam = _shard_task(_seam_frames, "stylize_seam")


def video_shards(args, artifacts, job, contents: list[np.ndarray], styles: list[Path], weights: list[float],
                 on_frame) -> None:
    """Stylize frames job.done+1..len(contents) in shards on Ray. contents: every frame's content at
    the output size (1-based frame i is contents[i - 1]). on_frame(index, png bytes, record) is
    called in frame order as soon as a frame and all before it are final. Raises Partial (exit 9)
    naming the frames not done when a task fails for good or the cluster stops; the frames before
    them are written (the same command resumes)."""
    count = len(contents)
    if not [s for s in plan_shards(count, args.shard_frames, args.overlap) if s.last > job.done]:
        return
    a = argparse.Namespace(**vars(args))
    a.style_weight_list = weights
    payload = {"args": a, "model": artifacts.path, "contents": contents, "done": job.done,
               "done_png": job.frame_path(job.done).read_bytes() if job.done else None,
               "styles": {str(p): p.read_bytes() for p in styles}}
    t0, said = time.perf_counter(), [-1]

    def on_message(kind, *data):
        if kind == "frame":
            on_frame(*data)
        elif kind == "failed":
            raise Partial(data[0])
        elif kind == "progress" and not args.quiet:
            frames_done, todo, workers, shards = data
            if frames_done != said[0]:
                said[0] = frames_done
                print(f"nst-ort video: {frames_done}/{todo} frames done on {workers} Ray worker(s) "
                      f"({shards} shards), {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    lost = run_driver(_video_body, payload, args.workers, args.ray_address, on_message, args.debug)
    if lost is not None:
        raise Partial(f"frames {job.done + 1}-{count} not done: {lost}; frames 1-{job.done} are written: "
                      "run the same command again to resume")


def _video_body(cluster, send, payload) -> None:
    """In the driver process: pass 1 (every shard as a chain of its own, in parallel), then each
    seam pass as soon as the frame before its seam is final and its shard's pass 1 is back; frames
    sent in order."""
    ray = cluster.ray
    a, contents, done = payload["args"], payload["contents"], payload["done"]
    count = len(contents)
    size = (contents[0].shape[1], contents[0].shape[0])
    a.threads = a.threads or (default_threads(cluster.workers) if cluster.local else None)
    shards = [s for s in plan_shards(count, a.shard_frames, a.overlap) if s.last > done]
    blob = model_blob(payload["model"])
    box = [ray.put(blob)]
    progress = ray.remote(num_cpus=0)(_Progress).remote()
    pass1 = ray.remote(num_cpus=1, max_retries=retries())(stylize_shard)
    seam = ray.remote(num_cpus=1, max_retries=retries())(stylize_seam)
    common = (blob["sha256"], box, a, payload["styles"], size)
    final: dict[int, tuple[bytes, dict]] = {}  # frame -> (PNG, record) as it will be written
    if done:
        final[done] = (payload["done_png"], {})
    targets: dict[int, bytes] = {}  # seam frames' pass-1 results
    back, seams_started, refs = set(), set(), {}
    queue = list(shards)
    next_out, todo, said = done + 1, count - done, -1

    def failed(what: str) -> None:
        send("failed", f"frames {next_out}-{count} not done: {what}; frames 1-{next_out - 1} are written: "
                       "run the same command again to resume")

    broken = None  # why a task failed for good: no new task then; those in flight finish and are written
    while refs or ((queue or next_out <= count) and broken is None):
        for s in shards:  # seam passes whose inputs are there
            start = max(s.first, done + 1)
            if (broken is None and s.index in back and s.index not in seams_started and s.seam_last >= start
                    and start - 1 in final):
                seams_started.add(s.index)
                refs[seam.remote(*common, s, start, (contents[start - 2], final[start - 1][0]),
                                 contents[start - 1:s.seam_last], [targets[i] for i in range(start, s.seam_last + 1)],
                                 progress)] = ("seam", s)
        while broken is None and queue and sum(1 for k, _ in refs.values() if k == "shard") < cluster.workers:
            s = queue.pop(0)
            refs[pass1.remote(*common, s, contents[s.first_run - 1:s.last], progress)] = ("shard", s)
        if not refs:
            failed("nothing left to run (a bug)")
            return
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
        for ref in ready:
            kind, s = refs.pop(ref)
            try:
                frames = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - ray.exceptions.*: a worker killed too often, an error
                what = f"frames {s.first}-{s.last}" if kind == "shard" else f"the seam frames {s.first}-{s.seam_last}"
                broken = broken or f"{what} (shard {s.index + 1}) {task_failure(e, retries() + 1)}"
                continue
            if kind == "shard":
                back.add(s.index)
            for index, png, rec in frames:
                if kind == "shard" and index in s.seam:
                    targets[index] = png
                elif index > done:
                    final[index] = (png, rec)
        while next_out in final:
            png, rec = final[next_out]
            send("frame", next_out, png, rec)
            final.pop(next_out - 2, None)  # keep the frame before the next seam's start
            next_out += 1
        frames_done = min(todo, ray.get(progress.total.remote()))
        if frames_done != said:
            said = frames_done
            send("progress", frames_done, todo, cluster.workers, len(shards))
    if broken is not None:
        failed(broken)
