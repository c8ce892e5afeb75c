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

Extra loss terms (terms.py; a video's temporal term) are given with `set_terms` before a run's first
step; `restart(content)` starts a new run on another content image with the same sessions and style
targets (a video's next frame).

Everything the progress line, the JSON report, intermediate saves and checkpoints need comes from the
records and from `state_dict()`. When the loss stops being finite or memory runs out, `step()` keeps
the last finite image as the current one and raises (NumericalError, OutOfMemory): `result()` and
`state_dict()` then hold that image.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterator

import numpy as np

from . import color, memory
from .artifacts import Artifacts
from .config import Config
from .errors import NumericalError, OutOfMemory, UsageError
from .images import resize
from .loop import Loop, choose_loop, make_loop
from .providers import choose
from .session import Graphs
from .targets import Targets, chw, hwc
from .terms import Term
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
        config.content (which still names it in messages)."""
        self.config = config
        self.warn = warn or (lambda msg: None)
        self.artifacts = artifacts or Artifacts(config.model)
        self.placement = choose(config.device, config.provider, config.threads, warn=self.warn,
                                precision=config.precision)
        self.graphs = Graphs(self.artifacts, self.placement)
        self.weights = resolve_weights(config, self.artifacts)
        self.schedule = config.schedule()
        self.targets = Targets(config, self.artifacts, self.graphs, self.weights, self.warn, content=content)
        self.targets.check_sizes(self.schedule)
        self.loop_kind = choose_loop(config, self.graphs)  # host or device, for the whole run
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
        size = self.targets.size_at(long_side)
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
        self.loop = make_loop(self.loop_kind, self.graphs, feeds, x0, self.config.optim, self._optimizer_state,
                              self.terms)
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
            self.targets.content = np.asarray(content, np.float32)
        if iterations is not None:
            if len(self.schedule) != 1:
                raise UsageError("restart(iterations=...) is for single-scale runs")
            self.schedule = [(self.schedule[0][0], int(iterations))]
        self.targets.check_sizes(self.schedule)
        self._reset()

    def warm_start(self, image: np.ndarray) -> None:
        """Start from `image` (float RGB [H, W, 3] in [0, 1]) instead of config.init, resized to the
        first scale as a previous scale's result would be. Before the first step."""
        if self.loop is not None or self.steps:
            raise UsageError("warm_start comes before the first step")
        self._x = chw(image)

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
        img = np.clip(hwc(x), 0.0, 1.0)
        content = self.targets.content
        if self.config.color == "luminance" and content is not None:
            img = np.clip(color.recombine(img, resize(content, (img.shape[1], img.shape[0]))), 0.0, 1.0)
        return img

    result = current

    # -- what ran, what it needs, where it is --------------------------------------------------
    def runtime(self) -> dict:
        """What runs, where the config says "auto": providers, training graph, loop (for the report)."""
        return {"providers": self.graphs.train.get_providers(), "device": self.graphs.placement.device,
                "train_graph": self.graphs.train_path.name, "loop": self.loop_kind}

    def memory_plan(self) -> memory.Plan:
        """What memory.check needs to know about this run."""
        cfg, art = self.config, self.artifacts
        return memory.Plan(
            what=str(cfg.content) if cfg.content is not None else "texture", layers=art.manifest["layers"],
            sizes=[self.targets.size_at(long_side) for long_side, _ in self.schedule], optimizer=cfg.optim.name,
            history=cfg.optim.history, min_side=art.min_size, style_scale=cfg.style_scale,
            on_host=self.graphs.placement.device == "cpu", factor=memory.graph_factor(art.manifest))

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
        self.scale, self.iteration, self.steps = int(s["scale"]), int(s["iteration"]), int(s["step"])
        self.loop = None
        self._x = self._best = s["x"]
        self.rng.bit_generator.state = s["rng"]
        self.average = s.get("average")
        self._optimizer_state = s.get("optimizer")
