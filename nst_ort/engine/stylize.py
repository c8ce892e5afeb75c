"""The run: a schedule of scales, one loop per scale, one IterationRecord per iteration.

    stylizer = Stylizer(config)
    for record in stylizer.run():   # IterationRecord: losses, timing, scale
        ...
    stylizer.result()               # float RGB [H, W, 3] in [0, 1]

`run()` is this loop, which a caller may also drive itself:

    while not stylizer.done():
        record = stylizer.step()
    state = stylizer.state_dict()     # CheckpointState: checkpoint.save(path, state, checkpoint.fingerprint(config))
    again = Stylizer(config)
    again.load_state_dict(state)      # ... and goes on where the first stopped, with the same bytes

Everything the progress line, the JSON report, intermediate saves and checkpoints need comes from the
records and from `state_dict()`. When the loss stops being finite or memory runs out, `step()` keeps
the last finite image as the current one and raises (NumericalError, OutOfMemory): `result()` and
`state_dict()` then hold that image.

Extra loss terms (terms.py; a video's temporal term) are given with `set_terms` before a run's first
step; `restart(content)` starts a new run on another content image with the same sessions and style
targets (a video's next frame).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..base.errors import ImageError, NumericalError, OutOfMemory, UsageError
from ..media import color
from ..media.images import fit_size, load_image, probe_image, resize
from . import memory
from .artifacts import Artifacts
from .config import Config
from .loop import Loop, choose_loop, make_loop
from .optim import check_state
from .providers import choose
from .session import Graphs
from .targets import Targets, chw, hwc
from .terms import Term
from .tiling import (Layout, TiledGraphs, TiledTrainStep, graph_family, kept_bytes, no_tiling_reason, tiled_features,
                     tiling_entry)
from .weights import resolve_weights


@dataclasses.dataclass
class IterationRecord:
    step: int  # iterations done in the whole run
    scale: int  # index into the schedule
    iteration: int  # iterations done at this scale
    iterations: int  # planned at this scale
    width: int
    height: int
    loss: float  # weighted total
    content: float  # weighted content term
    style: float  # weighted style term
    tv: float  # weighted tv term
    style_layers: list[float]  # unweighted per style layer
    seconds: float  # wall time of this iteration (evaluation + update)
    terms: dict[str, float] = dataclasses.field(default_factory=dict)  # weighted extra terms (in `loss`)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


class Stylizer:
    """Runs a Config against an artifact folder; `run()` yields an IterationRecord per iteration."""

    def __init__(self, config: Config, artifacts: Artifacts | None = None, warn: Callable[[str], None] | None = None,
                 content: np.ndarray | None = None):
        """content: the content image as float RGB [H, W, 3] in [0, 1], instead of reading
        config.content (which still names it in messages: a video's frames)."""
        config.validate()
        self.config = config
        self.warn = warn or (lambda msg: None)
        self.artifacts = artifacts or Artifacts(config.model)
        self.placement = choose(config.device, config.provider, config.threads, warn=self.warn,
                                precision=config.precision, options=config.provider_options)
        self.weights = resolve_weights(config, self.artifacts)
        self.schedule = config.schedule()
        # The inputs as their headers declare them: sizes and memory are known before anything is
        # decoded (a small file can declare a huge image). Decoding waits for `targets`, sessions
        # for `graphs`: both are made on first use, so that memory.check and --dry-run come first.
        self._content = None if content is None else np.asarray(content, np.float32)
        self.inputs = {p: probe_image(p) for p in dict.fromkeys(config.input_paths())
                       if content is None or p != Path(config.content)}
        self._graphs: Graphs | None = None
        self._targets: Targets | None = None
        self.check_sizes()
        self.loop_kind = choose_loop(config, self.artifacts)  # host or device, for the whole run
        self._tiled = None  # tiling.TiledGraphs, made on first use
        self.tiling: memory.Tiling | None = None  # set by plan_tiling (the CLI's memory plan) or on first use
        if config.tile is not None:
            entry = tiling_entry(self.artifacts)
            if entry is None:
                raise UsageError(no_tiling_reason(self.artifacts))
            if config.tile % int(entry["align"]):
                raise UsageError(f"--tile {config.tile}: must be a multiple of {entry['align']} px for this model "
                                 "(its pooling grid)")
        self._reset()

    def _reset(self) -> None:
        self.rng = np.random.default_rng(self.config.seed)
        self.terms: list[Term] = []
        # Where the run is: what a checkpoint saves.
        self.scale = 0
        self.iteration = 0  # done at this scale
        self.steps = 0  # done in the whole run
        self.loop: Loop | None = None  # the current scale's, from its first step on
        self.average: np.ndarray | None = None  # --average: EMA of the iterates, the output
        # While no loop holds the image: the start image (warm start, resume), a finished scale's result,
        # or after a failure the last finite image; with the optimizer state the next loop takes whole.
        self._x: np.ndarray | None = None
        self._optimizer_state: dict | None = None
        self._best: np.ndarray | None = None  # the last finite image before the current loop

    # -- made on first use -------------------------------------------------------------------
    @property
    def graphs(self) -> Graphs:
        """The ONNX Runtime sessions (made on first use: 0.2-4 s on a CPU)."""
        if self._graphs is None:
            self._graphs = Graphs(self.artifacts, self.placement)
            self.placement = self._graphs.placement  # `auto` may have fallen back to the CPU
        return self._graphs

    @property
    def tiled_graphs(self) -> TiledGraphs:
        """The tile graphs' sessions (made on first use, by a tiled scale)."""
        if self._tiled is None:
            self._tiled = TiledGraphs(self.artifacts, self.graphs.placement, keep_graphs=True)
        return self._tiled

    def plan_tiling(self, avail: memory.Available | None = None) -> memory.Tiling:
        """The memory plan's tiling (memory.plan_tiling): a tile per scale, the L-BFGS history (lowered
        where the image-sized history does not fit). Decided once per run; the CLI calls it before its
        memory check, a library caller gets it at the first scale."""
        if self.tiling is None:
            self.tiling = memory.plan_tiling(self.memory_plan(), avail)
            if self.tiling.history != self.config.optim.history:
                self.config = dataclasses.replace(
                    self.config, optim=dataclasses.replace(self.config.optim, history=self.tiling.history))
            for note in self.tiling.notes:
                if "history" in note:  # changes the optimization; a tiling changes only the speed (exact)
                    self.warn(note)
        return self.tiling

    def tile_at(self, scale: int) -> int | None:
        """The tile of a scale (None: untiled)."""
        return self.plan_tiling().tiles[scale]

    def _features(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """The eval graph's outputs for an image: tiled where the current scale is (a print-size style
        image), with the content features of layers of weight 0 as zeros that take no memory."""
        tile = self.tile_at(self.scale)
        if tile is None:
            return self.graphs.features(image)
        keep = {n for n, w in zip(self.artifacts.content_layers, self.weights.content_layers) if w}
        return tiled_features(self.tiled_graphs, image, tile, keep)

    @property
    def targets(self) -> Targets:
        """The decoded input images and what they become at each scale (decoded on first use)."""
        if self._targets is None:
            self._targets = Targets(self.config, self.artifacts, self._features,
                                    self.weights, self.warn, content=self._content)
        return self._targets

    def load_inputs(self) -> None:
        """Decode every input image now (a damaged one raises ImageError here, not mid-run)."""
        self.targets  # content, styles, the init image
        for s in self.config.styles:
            if s.mask is not None:
                load_image(s.mask)  # masks are decoded per scale: once now, so that damage shows now
        self.check_sizes()

    def size_at(self, long_side: int) -> tuple[int, int]:
        """(width, height) of the image at a scale's long side: the content's aspect (as decoded, or
        as its header declares before that), or the texture's."""
        if self.config.content is None:
            tw, th = self.config.texture_size or (self.config.size, self.config.size)
            return fit_size(tw, th, long_side)
        if self._targets is not None:
            return self._targets.size_at(long_side)
        if self._content is not None:
            return fit_size(self._content.shape[1], self._content.shape[0], long_side)
        p = self.inputs[Path(self.config.content)]
        return fit_size(p.width, p.height, long_side)

    def sizes(self) -> list[tuple[int, int]]:
        """(width, height) of every scale of the schedule."""
        return [self.size_at(long_side) for long_side, _ in self.schedule]

    def check_sizes(self) -> None:
        minimum = self.artifacts.min_size
        for long_side, _ in self.schedule:
            w, h = self.size_at(long_side)
            if min(w, h) < minimum:
                what = str(self.config.content) if self.config.content is not None else "texture"
                raise ImageError(f"{what}: {w}x{h} at long side {long_side} is too small for this network; "
                                 f"the short side must be at least {minimum} px")
            for style in self.config.styles:  # as Targets.style_at will resize it
                p = self.inputs[Path(style.path)]
                sw, sh = fit_size(p.width, p.height, max(1, round(max(w, h) * self.config.style_scale)))
                if min(sw, sh) < minimum:
                    raise ImageError(f"{style.path}: {sw}x{sh} after --style-scale is smaller than the network's "
                                     f"minimum of {minimum} px")

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> Iterator[IterationRecord]:
        while not self.done():
            yield self.step()

    def done(self) -> bool:
        """Whether the schedule is done. Moving on to the next scale happens here, not after a scale's
        last iteration, so that a checkpoint taken at the end can be resumed with more iterations at
        the same scale."""
        while self.iteration >= self.schedule[self.scale][1]:
            if self.scale + 1 >= len(self.schedule):
                return True
            self._end_scale()
            self.scale, self.iteration = self.scale + 1, 0
        return False

    def step(self) -> IterationRecord:
        """One iteration: evaluate the current image, update it (at a scale's start, build its targets
        and loop first). On a non-finite loss or out of memory, the last finite image becomes the
        current one and NumericalError or OutOfMemory is raised."""
        if self.done():
            raise UsageError("no iterations left in the schedule")
        long_side, iterations = self.schedule[self.scale]
        size = self.size_at(long_side)
        try:
            if self.loop is None:
                self._start_scale(size)
            t0 = time.perf_counter()
            losses = self.loop.step()
        except NumericalError as e:
            self._keep_last_finite()
            kept = "and kept the last finite image" if self._x is not None else "before any finite image"
            raise NumericalError(f"{e} at iteration {self.steps + 1}; stopped {kept} (try a smaller learning "
                                 "rate or weights)") from None
        except (OutOfMemory, MemoryError) as e:
            self._keep_last_finite()
            if isinstance(e, OutOfMemory):
                raise
            raise OutOfMemory("out of memory (MemoryError); try a smaller --size") from None
        if self.config.optim.average:
            # Iterate averaging (EMA of the image, as style-transfer-pytorch): the output is the
            # average, which smooths L-BFGS's last jumps.
            x = self.loop.image()
            self.average = x.copy() if self.average is None else 0.9 * self.average + 0.1 * x
        self.iteration += 1
        self.steps += 1
        content, style, tv = self.weights.weighted(losses)
        return IterationRecord(
            step=self.steps, scale=self.scale, iteration=self.iteration, iterations=iterations,
            width=size[0], height=size[1], loss=losses.loss, content=content, style=style, tv=tv,
            style_layers=[float(v) for v in losses.style_losses], seconds=time.perf_counter() - t0,
            terms=dict(losses.terms))

    def _start_scale(self, size: tuple[int, int]) -> None:
        x0 = self._x
        if x0 is None or x0.shape[2:] != (size[1], size[0]):
            x0 = self._x = self.targets.initial(size, x0, self.rng)
        feeds = self.targets.feeds(size, x0)
        for term in self.terms:
            for name, a in term.feeds.items():
                if np.ndim(a) == 4 and tuple(np.shape(a)[2:]) != (size[1], size[0]):
                    raise UsageError(f"term {term.name!r}: input {name} is {np.shape(a)[3]}x{np.shape(a)[2]}, "
                                     f"the image at this scale {size[0]}x{size[1]}")
        tile = self.tile_at(self.scale)
        train = None
        if tile is not None:
            # the whole-image training session's arena holds an untiled scale's peak: not beside the tiles'
            self.graphs.drop_train()
            train = TiledTrainStep(self.tiled_graphs, feeds, x0.shape, tile, self.plan_tiling().kept_at(self.scale))
        self.loop = make_loop(self.loop_kind, self.graphs, feeds, x0, self.config.optim, self._optimizer_state,
                              self.terms, train)
        self._x = self._optimizer_state = None

    def _end_scale(self) -> None:
        """Each scale starts a fresh optimizer (a fresh L-BFGS history, as neural-style's multires)
        from the previous scale's result."""
        if self.loop is not None:
            self._best = self.best()
            self._x, self.loop = self.loop.image(), None
        self._optimizer_state = None
        self.average = None

    def _keep_last_finite(self) -> None:
        """After a failure the loop stops; its last finite image and its optimizer state stay (a
        checkpoint saves them; another step would go on from them)."""
        best = self.best()
        if self.loop is not None:
            self._optimizer_state, self.loop = self.loop.state_dict(), None
        self._x, self.average = best, None

    def warm_start(self, image: np.ndarray) -> None:
        """Start from `image` (float RGB [H, W, 3] in [0, 1]) instead of config.init, resized to the
        first scale as a previous scale's result would be. Before the first step."""
        if self.loop is not None or self.steps:
            raise UsageError("warm_start comes before the first step")
        self._x = chw(image)

    def set_terms(self, terms: list[Term]) -> None:
        """Extra loss terms (terms.Term: a graph and its fixed feeds at the image's size) that every
        step runs after the training graph; their weighted losses are in IterationRecord.terms and
        in its `loss`. Before the first step. Not part of state_dict: a caller that resumes gives
        them again, as it gives the images."""
        if self.loop is not None or self.steps:
            raise UsageError("set_terms comes before the first step")
        self.terms = list(terms)

    def restart(self, content: np.ndarray | None = None, iterations: int | None = None) -> None:
        """A new run from the start of the schedule with the same sessions, weights and style images:
        on another content image (float RGB [H, W, 3] in [0, 1], e.g. a video's next frame) and, if
        given, another iteration count (single scale). Terms, warm start and the noise generator
        start afresh (so each run repeats on its own)."""
        if content is not None:
            self._content = np.asarray(content, np.float32)
            if self._targets is not None:
                self._targets.content = self._content
        if iterations is not None:
            if len(self.schedule) != 1:
                raise UsageError("restart(iterations=...) is for single-scale runs")
            self.schedule = [(self.schedule[0][0], int(iterations))]
        self.check_sizes()
        self._reset()

    # -- images ------------------------------------------------------------------------------
    def image(self) -> np.ndarray | None:
        """The current image [1, 3, H, W] (None before the first scale starts, unless given one)."""
        return self.loop.image() if self.loop is not None else self._x

    def best(self) -> np.ndarray | None:
        """The last image whose loss was finite [1, 3, H, W] (None before the first step)."""
        best = self.loop.best() if self.loop is not None else None
        return best if best is not None else self._best

    def current(self) -> np.ndarray:
        """The image as it would be saved now: float RGB [H, W, 3], clipped to [0, 1]."""
        x = self.average if self.average is not None else self.image()
        if x is None or not np.isfinite(x).all():
            x = self.best()
        return self._finish(x)

    def result(self) -> np.ndarray:
        """The output image once the schedule is done: float RGB [H, W, 3] at the last scale's size.
        With no iterations at all (--iterations 0) that is the start image (content, noise or the
        init image; a resumed run's image), and where the last scales had none, the image as
        the last iteration left it, resized to the output size (as a next scale would start)."""
        if self.remaining() == 0 and self.loop is None and self.average is None:
            size = self.size_at(self.schedule[-1][0])
            x = self._x
            if x is None or x.shape[2:] != (size[1], size[0]):
                self._x = self.targets.initial(size, x, self.rng)
            return self._finish(self._x)
        return self.current()

    def remaining(self) -> int:
        """Iterations left in the schedule."""
        return max(0, self.schedule[self.scale][1] - self.iteration) + sum(n for _, n in self.schedule[self.scale + 1:])

    def _finish(self, x: np.ndarray | None) -> np.ndarray:
        if x is None:
            raise UsageError("no image yet: nothing has run")
        img = np.clip(hwc(x), 0.0, 1.0)
        if self.config.color == "luminance" and self.config.content is not None:
            content = self.targets.content
            img = np.clip(color.recombine(img, resize(content, (img.shape[1], img.shape[0]))), 0.0, 1.0)
        return img

    # -- what ran, what it needs, where it is --------------------------------------------------
    def runtime(self) -> dict:
        """What runs, where the config says "auto": providers, training graph, loop (for the report)."""
        # the eval session's providers: the same placement, and it is never dropped (drop_train)
        return {"providers": self.graphs.eval.get_providers(), "device": self.graphs.placement.device,
                "train_graph": self.graphs.train_path.name, "loop": self.loop_kind,
                "provider_options": dict(self.graphs.placement.options), "tiling": self.tiling_info()}

    def tiling_info(self) -> dict:
        """How the run is tiled (report, --dry-run): per scale its tile (None: untiled) and layout."""
        t = self.plan_tiling()
        entry = tiling_entry(self.artifacts) or {}
        scales = []
        for i, (tile, (w, h)) in enumerate(zip(t.tiles, self.sizes())):
            layout = None if tile is None else Layout.of(h, w, tile, int(entry["align"]), int(entry["halo"]))
            scales.append({"width": w, "height": h, "tile": tile,
                           "layout": None if layout is None else layout.describe(),
                           "crops": None if layout is None else len(layout.tiles),
                           # crops whose pass-1 activations are kept for pass 2 (their forward runs once)
                           "kept": None if layout is None else t.kept_at(i)})
        graphs = None
        if any(t.tiles):
            cpu, keeps = graph_family(entry, self.placement)
            c = "_cpu" if cpu else ""
            graphs = (f"tile_grams_keep{c}.onnx, tile_train_kept{c}.onnx" if keeps
                      else f"tile_grams{c}.onnx, tile_train{c}.onnx")
        return {"align": entry.get("align"), "halo": entry.get("halo"), "history": t.history,
                "notes": list(t.notes), "scales": scales, "graphs": graphs}

    def weights_used(self) -> dict:
        """The loss weights this run uses (the model's defaults where the config left them unset)."""
        w, a = self.weights, self.artifacts
        return {"content_weight": float(w.terms[0]), "style_weight": float(w.terms[1]), "tv_weight": float(w.terms[2]),
                "content_layers": {n: float(v) for n, v in zip(a.content_layers, w.content_layers) if v},
                "style_layers": {n: float(v) for n, v in zip(a.style_layers, w.style_layers) if v},
                "style_weights": [float(s.weight) for s in self.config.styles]}

    def plan(self) -> dict:
        """What would run, without making sessions (--dry-run): the providers placement asks for, the
        training graph for its device, the loop, the schedule with sizes."""
        return {"providers": list(self.placement.providers), "device": self.placement.device,
                "train_graph": self.artifacts.train_graph_path(self.placement.train_variant).name, "loop": self.loop_kind,
                "provider_options": dict(self.placement.options),
                "threads": self.placement.threads, "tiling": self.tiling_info(),
                "schedule": [{"scale": k + 1, "long_side": side, "width": w, "height": h, "iterations": n}
                             for k, ((side, n), (w, h)) in enumerate(zip(self.schedule, self.sizes()))]}

    def memory_plan(self) -> memory.Plan:
        """What memory.check needs to know about this run (before the inputs are decoded: their
        declared sizes)."""
        cfg, art = self.config, self.artifacts
        masks = {s.mask for s in cfg.styles if s.mask is not None}
        images = tuple(memory.ImageInput(str(p), pr.width, pr.height, kept=p not in masks)
                       for p, pr in self.inputs.items())
        if self._content is not None:  # given as an array (a video frame): it stays for the whole run
            h, w = self._content.shape[:2]
            images += (memory.ImageInput(str(cfg.content), w, h, kept=True),)
        return memory.Plan(
            what=str(cfg.content) if cfg.content is not None else "texture", layers=art.manifest["layers"],
            sizes=self.sizes(), optimizer=cfg.optim.name, history=cfg.optim.history, min_side=art.min_size,
            style_scale=cfg.style_scale, on_host=self.placement.device == "cpu", factor=memory.graph_factor(art.manifest),
            images=images, **self._tiling_plan())

    def _tiling_plan(self) -> dict:
        entry = tiling_entry(self.artifacts)
        if entry is None:
            return {}
        info = self.artifacts.layer_info
        kept = sum(info[n]["channels"] / info[n]["stride"] ** 2
                   for n, w in zip(self.artifacts.content_layers, self.weights.content_layers) if w)
        return {"align": int(entry["align"]), "halo": int(entry["halo"]), "tile": self.config.tile,
                "content_floats": kept, "styles": len(self.config.styles),
                "kept_bytes": kept_bytes(self.artifacts, self.placement),
                "iterations": tuple(n for _, n in self.schedule)}

    def state_dict(self) -> dict:
        """Everything needed to resume: the CheckpointState (checkpoint.py writes it)."""
        s = {"scale": self.scale, "iteration": self.iteration, "step": self.steps, "x": self.image(),
             "rng": self.rng.bit_generator.state}
        optimizer = self.loop.state_dict() if self.loop is not None else self._optimizer_state
        if optimizer is not None:
            s["optimizer"] = optimizer
        if self.average is not None:
            s["average"] = self.average
        return s

    def load_state_dict(self, s: dict) -> None:
        """Go on from a state_dict (a checkpoint's). A state that does not fit this run's schedule is
        refused (UsageError naming the field), before anything is changed."""
        scale, iteration, steps = (_field_int(s, k) for k in ("scale", "iteration", "step"))
        if scale >= len(self.schedule):
            raise UsageError(f"checkpoint: scale {scale} is out of range (this run has {len(self.schedule)} "
                             f"scale{'s' if len(self.schedule) > 1 else ''})")
        x = s.get("x")
        optimizer = s.get("optimizer")
        if x is not None:
            x = np.asarray(x)
            if x.dtype != np.float32 or x.ndim != 4 or x.shape[:2] != (1, 3) or min(x.shape[2:]) < 1:
                raise UsageError(f"checkpoint: the image is {x.dtype} {list(x.shape)}, expected float32 [1, 3, H, W]")
            if not np.isfinite(x).all():
                raise UsageError("checkpoint: the image has NaN or Inf pixels")
        if optimizer is not None:
            w, h = self.size_at(self.schedule[scale][0])
            if x is None or x.shape[2:] != (h, w):
                raise UsageError(f"checkpoint: an optimizer state needs the image at scale {scale + 1}'s size "
                                 f"{w}x{h}")
            check_state(optimizer, x.size, self.config.optim.name, self.config.optim.history)
        average = s.get("average")
        if average is not None and (x is None or np.shape(average) != x.shape
                                    or np.asarray(average).dtype != np.float32):
            raise UsageError("checkpoint: the average does not match the image")
        rng = np.random.default_rng(0)
        try:
            rng.bit_generator.state = s["rng"]
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise UsageError(f"checkpoint: bad noise generator state ({type(e).__name__}: {e})"[:300]) from None
        self.scale, self.iteration, self.steps = scale, iteration, steps
        self.loop = None
        self._x = self._best = x
        self.rng = rng
        self.average = average
        self._optimizer_state = optimizer


def _field_int(s: dict, key: str) -> int:
    v = s.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 or v > 2**53:
        raise UsageError(f"checkpoint: {key} must be a non-negative integer, got {v!r}"[:300])
    return int(v)
