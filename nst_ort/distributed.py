"""Scale-out over Ray (the `[ray]` extra): a batch folder's images, or a video's shards, as Ray tasks.

    nst-ort photos/ style.jpg -o out/ --workers 2                 # starts a local Ray by itself
    nst-ort photos/ style.jpg -o out/ --ray-address HOST:6379     # an existing cluster
    nst-ort video clip.mp4 style.jpg -o out.mp4 --workers 2

Everything a task needs travels through Ray's object store, so a cluster needs no shared storage:
the model folder's files (put once per run; each worker process writes them to a local cache folder
named by the manifest's sha256, once), the input images' bytes or a shard's content frames, and back
the written PNG bytes. The driver writes every output (atomically, as the sequential path does).

Units of work:
- batch: one task per image. A task runs the same Stylizer as the sequential batch, with the same
  Config (its paths remapped to the worker's copies), so a seeded batch on the CPU gives the same
  bytes through Ray as without it (at the same --threads).
- video: contiguous shards of `--shard-frames` frames. Shard s keeps frames [a, b] but starts
  `--overlap` frames earlier, from content (as frame 1 does), and discards those: the chain of warm
  starts and temporal terms has run a few frames by the time it reaches frame a, so frame a is not a
  fresh per-frame result beside shard s-1's frame a-1. Shard boundaries are fixed by frame number
  (not by where a resumed run starts), so a resumed run writes the same frames.

A worker killed mid-task: Ray runs the task again (max_retries), on another worker process; the
output is complete. Tasks do not retry on application errors (a bad image): those come back as
messages, as in the sequential batch (skipped, exit 9).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .errors import EXIT_BATCH_PARTIAL, NstError, UsageError

RETRIES = 3  # a task whose worker dies is run again, up to this many times


# -- Ray itself ------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--workers, --ray-address (nst-ort's batch and nst-ort video)."""
    g = parser.add_argument_group("scale-out (Ray, the [ray] extra)")
    g.add_argument("--workers", type=int, help="run on N Ray workers; without --ray-address a local Ray is started")
    g.add_argument("--ray-address", help="an existing Ray cluster (e.g. HOST:6379 or auto); --workers then caps "
                   "the tasks in flight")


def wanted(args) -> bool:
    return bool(getattr(args, "workers", None)) or bool(getattr(args, "ray_address", None))


class Cluster:
    """A Ray connection for one run: a local Ray with `workers` CPUs, or an existing cluster."""

    def __init__(self, workers: int | None, address: str | None):
        from .extras import require

        self.ray = require("ray", "--workers / --ray-address")
        if workers is not None and workers < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from a local run
        # Ray runs its workers at niceness 15 by default: on a machine where anything else runs they
        # then get a sliver of the CPU (measured: a 4-image batch 3.6x slower on 1 worker than without
        # Ray, on a busy 2-core machine). A local Ray's workers run at nst-ort's own priority.
        if not address:
            os.environ.setdefault("RAY_worker_niceness", "0")
        import logging

        # Ray's own notices (e.g. "Token authentication is enabled for this Ray cluster", a warning on
        # every local start since Ray 2.5x) go through the "ray" logger, which configure_logging=False
        # leaves at its import-time level: errors only. Workers' output stays off (log_to_driver); a
        # task's failure comes back as its exception, which nst-ort reports.
        logging.getLogger("ray").setLevel(logging.ERROR)
        kw = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR, configure_logging=False)
        try:
            if address:
                self.ray.init(address=address, **kw)
            else:
                self.ray.init(num_cpus=workers, **kw)
        except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
            where = f"Ray at {address}" if address else "a local Ray"
            raise UsageError(f"cannot start {where} ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
        cpus = int(self.ray.cluster_resources().get("CPU", 1))
        self.workers = min(workers or cpus, cpus) if address else workers
        self.local = not address

    def close(self) -> None:
        self.ray.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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
    import ray

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
    from .config import StyleInput

    def m(p):
        return paths[str(p)] if p is not None else None

    styles = [StyleInput(m(s.path), s.weight, m(s.mask)) for s in cfg.styles]
    init = str(paths[cfg.init]) if cfg.init not in ("content", "noise") else cfg.init
    return dataclasses.replace(cfg, content=m(cfg.content), styles=styles, init=init, model=model)


# -- batch ------------------------------------------------------------------------------------------
def stylize_image(sha256: str, model_box: list, cfg, files: dict[str, bytes]) -> dict:
    """One batch image on a worker: {"png": bytes} or {"error": message, "code": exit code}."""
    from .images import save_image
    from .stylize import Stylizer
    from . import memory

    workdir = None
    try:
        model = materialize_model(sha256, model_box)
        paths = _write_inputs(files)
        workdir = next(iter(paths.values())).parent
        cfg = _remap(cfg, paths, model)
        stylizer = Stylizer(cfg)
        memory.check(stylizer.memory_plan())
        for _ in stylizer.run():
            pass
        out = workdir / "result.png"
        save_image(stylizer.result(), out)
        return {"png": out.read_bytes(), "pid": os.getpid()}
    except NstError as e:
        return {"error": str(e), "code": e.exit_code}
    finally:
        if workdir is not None:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


def batch_items(folder: Path, out_dir: Path, exts) -> list[tuple[Path, Path]]:
    """(content file, output file) for each image of a batch folder, named as cli._batch names them
    (cat.jpg -> cat.png; cat.jpg and cat.png -> cat-jpg.png and cat-png.png)."""
    from .errors import OutputError

    if not out_dir.is_dir():
        raise OutputError(f"{out_dir}: batch output must be an existing folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in exts and p.is_file())
    if not files:
        raise UsageError(f"{folder}: no images ({', '.join(sorted(exts))}) in this folder")
    stems = [p.stem for p in files]
    return [(p, out_dir / (p.stem + ".png" if stems.count(p.stem) == 1 else f"{p.stem}-{p.suffix[1:]}.png"))
            for p in files]


def batch(args, artifacts, exts, build_config) -> int:
    """The images of a batch folder (args.images[0]) as Ray tasks, written to args.output;
    build_config(namespace, artifacts) -> (Config, out) as the sequential batch uses it."""
    from .atomic import atomic_write
    from .outputs import check_image_output

    if not args.output:
        raise UsageError("batch: give -o OUTPUT_FOLDER")
    items = batch_items(Path(args.images[0]), Path(args.output), exts)

    with Cluster(args.workers, args.ray_address) as cluster:
        ray = cluster.ray
        threads = args.threads or (default_threads(cluster.workers) if cluster.local else None)
        blob = model_blob(artifacts.path)
        box = [ray.put(blob)]
        task = ray.remote(num_cpus=1, max_retries=RETRIES)(stylize_image)
        pending, queue, failed = {}, [], 0
        for content, out_path in items:
            one = argparse.Namespace(**{**vars(args), "images": [str(content), *args.images[1:]],
                                        "output": str(out_path), "threads": threads})
            try:
                cfg, out = build_config(one, artifacts)
                check_image_output(out, cfg.input_paths())
                files = {str(p): p.read_bytes() for p in cfg.input_paths()}
            except NstError as e:
                failed += 1
                print(f"nst-ort: error: {e} (skipped)", file=sys.stderr)
                continue
            except OSError as e:
                failed += 1
                print(f"nst-ort: error: {content}: cannot read ({e.strerror or e}) (skipped)", file=sys.stderr)
                continue
            queue.append(((cfg, files), out))
        total, done = len(items), failed
        t0 = time.perf_counter()
        while pending or queue:
            while queue and len(pending) < cluster.workers:  # at most `workers` tasks in flight
                (cfg, files), out = queue.pop(0)
                pending[task.remote(blob["sha256"], box, cfg, files)] = out
            ready, _ = ray.wait(list(pending), num_returns=1)
            out = pending.pop(ready[0])
            result = ray.get(ready[0])
            done += 1
            if "error" in result:
                failed += 1
                print(f"nst-ort: error: {result['error']} (skipped)", file=sys.stderr)
            else:
                atomic_write(out, lambda f, data=result["png"]: f.write(data))
                if not args.quiet:
                    print(f"wrote {out}", file=sys.stderr)
            if not args.quiet:
                print(f"nst-ort: {done}/{total} images done on {cluster.workers} Ray worker(s), "
                      f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if failed:
        print(f"nst-ort: {failed} of {len(items)} image(s) failed", file=sys.stderr)
        return EXIT_BATCH_PARTIAL
    return 0


# -- video shards ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Shard:
    index: int  # 0-based
    first_run: int  # 1-based frame where its chain starts (overlap frames before `first` are discarded)
    first: int  # first frame it keeps
    last: int  # last frame it keeps


def plan_shards(count: int, shard_frames: int, overlap: int) -> list[Shard]:
    """Frames 1..count in shards of shard_frames (fixed by frame number), each but the first starting
    `overlap` frames early."""
    if shard_frames < 1 or overlap < 0:
        raise UsageError("--shard-frames must be at least 1 and --overlap at least 0")
    shards = []
    for s, first in enumerate(range(1, count + 1, shard_frames)):
        shards.append(Shard(s, max(1, first - overlap), first, min(count, first + shard_frames - 1)))
    return shards


def default_shard_frames(count: int, workers: int) -> int:
    return max(1, math.ceil(count / max(1, workers)))


class _Progress:
    """Frames done per shard, reported by the shard tasks as they go (a retried shard starts over)."""

    def __init__(self):
        self.done: dict[int, int] = {}

    def report(self, shard: int, frames: int) -> None:
        self.done[shard] = frames

    def total(self) -> int:
        return sum(self.done.values())


def stylize_shard(sha256: str, model_box: list, args: argparse.Namespace, styles: dict[str, bytes], shard: Shard,
                  contents: list[np.ndarray], progress) -> list[tuple[int, bytes, dict]]:
    """One shard on a worker: frames shard.first_run..shard.last from their content (at the output
    size), the overlap frames discarded. Returns (frame number, PNG bytes, record) per kept frame."""
    import shutil

    from .artifacts import Artifacts
    from .images import load_image, save_image
    from .video import FrameStylizer

    model = materialize_model(sha256, model_box)
    paths = _write_inputs(styles)
    workdir = next(iter(paths.values())).parent
    try:
        a = argparse.Namespace(**vars(args))
        size = (contents[0].shape[1], contents[0].shape[0])
        frames = FrameStylizer(a, Artifacts(model), size, [paths[s] for s in styles], a.style_weight_list,
                               Path(a.input))
        out, previous = [], None
        for i, content in enumerate(contents):
            index = shard.first_run + i
            chain_start = previous is None
            iterations = a.first_iterations if chain_start and a.first_iterations else a.iterations
            path = workdir / f"{index:06d}.png"
            rec, written = frames.frame(content, previous, iterations,
                                        lambda img, p=path: (save_image(img, p), load_image(p))[1])
            if index >= shard.first:
                # the first kept frame of shards after the first is a seam: its warping error is measured
                # again by the driver against the frame the previous shard wrote
                seam = index == shard.first and shard.index > 0
                out.append((index, path.read_bytes(), {**rec, "shard": shard.index, "seam": seam}))
                if progress is not None:
                    progress.report.remote(shard.index, len(out))
            previous = (content, written)
        return out
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def video_shards(args, artifacts, job, contents: list[np.ndarray], styles: list[Path], weights: list[float],
                 on_frame) -> None:
    """Stylize frames job.done+1..len(contents) in shards on Ray. contents: every frame's content at
    the output size (1-based frame i is contents[i - 1]). on_frame(index, png bytes, record) is
    called in frame order as soon as a frame and all before it are back."""
    count = len(contents)
    shards = [s for s in plan_shards(count, args.shard_frames, args.overlap) if s.last > job.done]
    if not shards:
        return
    with Cluster(args.workers, args.ray_address) as cluster:
        ray = cluster.ray
        a = argparse.Namespace(**vars(args))
        a.threads = args.threads or (default_threads(cluster.workers) if cluster.local else None)
        a.style_weight_list = weights
        blob = model_blob(artifacts.path)
        box = [ray.put(blob)]
        style_bytes = {str(p): p.read_bytes() for p in styles}
        progress = ray.remote(num_cpus=0)(_Progress).remote()
        task = ray.remote(num_cpus=1, max_retries=RETRIES)(stylize_shard)
        queue, refs = list(shards), {}
        ready_frames: dict[int, tuple[bytes, dict]] = {}
        todo = count - job.done
        t0, said = time.perf_counter(), -1
        while refs or queue:
            while queue and len(refs) < cluster.workers:  # at most `workers` shards in flight, in order
                s = queue.pop(0)
                refs[task.remote(blob["sha256"], box, a, style_bytes, s,
                                 [contents[i - 1] for i in range(s.first_run, s.last + 1)], progress)] = s
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
            for ref in ready:
                refs.pop(ref)
                for index, png, rec in ray.get(ref):
                    if index > job.done:
                        ready_frames[index] = (png, rec)
                while job.done + 1 in ready_frames:
                    png, rec = ready_frames.pop(job.done + 1)
                    on_frame(job.done + 1, png, rec)
            if not args.quiet:
                frames_done = min(todo, ray.get(progress.total.remote()))
                if frames_done != said:
                    said = frames_done
                    print(f"nst-ort video: {frames_done}/{todo} frames done on {cluster.workers} Ray worker(s) "
                          f"({len(shards)} shards), {time.perf_counter() - t0:.0f} s", file=sys.stderr)
