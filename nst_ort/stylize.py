"""The loop: targets per scale, iterations, one record per iteration.

    stylizer = Stylizer(config)
    for record in stylizer.run():   # IterationRecord: losses, timing, scale
        ...
    stylizer.result()               # float RGB [H, W, 3] in [0, 1]

Everything the progress bar, the JSON report, intermediate saves and checkpoints need comes
from the records and from `state()`.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import color, optim
from .artifacts import Artifacts
from .config import Config
from .errors import ImageError, NumericalError, UsageError
from .images import fit_size, load_image, load_mask, resize
from .providers import choose
from .session import Graphs, TrainStep


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

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Weights:
    """Resolved loss weights, in the graph's input order."""

    content_layers: np.ndarray
    style_layers: np.ndarray
    terms: np.ndarray  # content, style, tv


def resolve_weights(config: Config, artifacts: Artifacts) -> Weights:
    d, lc = artifacts.defaults, config.loss
    content_layer = lc.content_layer
    clw = d.get("content_layer_weights", {})
    if content_layer is not None:
        if content_layer not in artifacts.content_layers:
            raise UsageError(f"content layer {content_layer!r} is not in this model; it has "
                             f"{', '.join(artifacts.content_layers)}")
        clw = {content_layer: 1.0}
    slw = lc.style_layer_weights if lc.style_layer_weights is not None else d.get("style_layer_weights", {})
    unknown = [n for n in slw if n not in artifacts.style_layers]
    if unknown:
        raise UsageError(f"style layer(s) {', '.join(unknown)} not in this model; it has "
                         f"{', '.join(artifacts.style_layers)}")
    cw = d["content_weight"] if lc.content_weight is None else lc.content_weight
    sw = d["style_weight"] if lc.style_weight is None else lc.style_weight
    tw = d["tv_weight"] if lc.tv_weight is None else lc.tv_weight
    if config.content is None:
        cw = 0.0  # texture synthesis: style loss only (Gatys et al. 2015)
    return Weights(
        np.array([float(clw.get(n, 0.0)) for n in artifacts.content_layers], np.float32),
        np.array([float(slw.get(n, 0.0)) for n in artifacts.style_layers], np.float32),
        np.array([cw, sw, tw], np.float32),
    )


def _chw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)


def _hwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x[0].transpose(1, 2, 0))


class Stylizer:
    """Runs a Config against an artifact folder; `run()` yields an IterationRecord per iteration."""

    def __init__(self, config: Config, artifacts: Artifacts | None = None, warn: Callable[[str], None] | None = None):
        self.config = config
        self.warn = warn or (lambda msg: None)
        self.artifacts = artifacts or Artifacts(config.model)
        self.placement = choose(config.device, config.provider, config.threads, warn=self.warn,
                                precision=getattr(config, "precision", "fp32"), options=config.provider_options)
        self.graphs = Graphs(self.artifacts, self.placement)
        self.weights = resolve_weights(config, self.artifacts)
        self.schedule = config.schedule()
        notes: list[str] = []
        self.content = load_image(config.content, notes) if config.content is not None else None
        if not config.styles:
            raise UsageError("at least one style image is needed")
        self.styles = [load_image(s.path, notes) for s in config.styles]
        for n in notes:
            self.warn(n)
        self.rng = np.random.default_rng(config.seed)
        self.init_image = None
        if config.init not in ("content", "noise"):
            self.init_image = load_image(config.init)
        if config.content is None and config.init == "content":
            config.init = "noise"
        self._check_sizes()
        # Current state: what a checkpoint saves.
        self.scale = 0
        self.iteration = 0
        self.step = 0
        self.x: np.ndarray | None = None  # [1, 3, H, W]
        self.best: np.ndarray | None = None  # last finite image
        self.optimizer = None
        # A checkpoint's optimizer state, until the loop that resumes it (host or device) takes it
        # whole: the device L-BFGS's dict carries what the host optimizer keeps no copy of (its dot
        # products and buffer slots), without which a resumed run rounds differently.
        self._optimizer_state: dict | None = None
        self.average: np.ndarray | None = None

    # -- sizes and targets -------------------------------------------------------------------
    def _size_at(self, long_side: int) -> tuple[int, int]:
        if self.content is None:
            tw, th = self.config.texture_size or (self.config.size, self.config.size)
            return fit_size(tw, th, long_side)
        return fit_size(self.content.shape[1], self.content.shape[0], long_side)

    def _check_sizes(self) -> None:
        minimum = self.artifacts.min_size
        for long_side, _ in self.schedule:
            w, h = self._size_at(long_side)
            if min(w, h) < minimum:
                what = str(self.config.content) if self.content is not None else "texture"
                raise ImageError(f"{what}: {w}x{h} at long side {long_side} is too small for this network; "
                                 f"the short side must be at least {minimum} px")

    def _content_at(self, size: tuple[int, int]) -> np.ndarray | None:
        if self.content is None:
            return None
        img = resize(self.content, size)
        if self.config.color == "luminance":
            img = color.luminance(img)
        return img

    def _style_at(self, k: int, size: tuple[int, int]) -> np.ndarray:
        style = self.styles[k]
        long_side = max(1, round(max(size) * self.config.style_scale))
        img = resize(style, fit_size(style.shape[1], style.shape[0], long_side))
        min_side = self.artifacts.min_size
        if min(img.shape[:2]) < min_side:
            raise ImageError(f"{self.config.styles[k].path}: {img.shape[1]}x{img.shape[0]} after --style-scale is "
                             f"smaller than the network's minimum of {min_side} px")
        ref = resize(self.content, size) if self.content is not None else None
        if ref is not None and self.config.color == "histogram":
            img = color.match_histogram(img, ref)
        elif ref is not None and self.config.color == "luminance":
            img = color.match_luminance(img, ref)
        return img

    def _feeds(self, size: tuple[int, int], init: np.ndarray) -> dict[str, np.ndarray]:
        a, w = self.artifacts, self.weights
        content = self._content_at(size)
        if content is not None:
            feats = self.graphs.features(content)
        else:
            # Texture synthesis: content terms have weight 0; targets only need the right shapes.
            feats = {k: np.zeros_like(v) for k, v in self.graphs.features(_hwc(init)).items()}
        weights = np.array([s.weight for s in self.config.styles], np.float32)
        if weights.sum() <= 0:
            raise UsageError("style weights must sum to a positive number")
        weights = weights / weights.sum()
        grams = [self.graphs.features(self._style_at(k, size)) for k in range(len(self.styles))]
        masked = any(s.mask is not None for s in self.config.styles)
        feeds = {f"content_target.{n}": feats[f"content.{n}"] for n in a.content_layers}
        if masked:
            masks = np.stack([
                load_mask(s.mask, size) if s.mask is not None else np.ones(size[::-1], np.float32)
                for s in self.config.styles])[:, None]
            for n in a.style_layers:
                feeds[f"style_target.{n}"] = np.stack([g[f"gram.{n}"] for g in grams])
            feeds["style_masks"] = masks.astype(np.float32)
            feeds["style_weights"] = weights
        else:
            # Blending Grams (as neural-style does) has the same minimizer as weighting the K style
            # losses, at one Gram per layer instead of K.
            for n in a.style_layers:
                feeds[f"style_target.{n}"] = sum(wk * g[f"gram.{n}"] for wk, g in zip(weights, grams))[None]
            feeds["style_masks"] = np.ones((1, 1, size[1], size[0]), np.float32)
            feeds["style_weights"] = np.ones(1, np.float32)
        feeds["content_layer_weights"] = w.content_layers
        feeds["style_layer_weights"] = w.style_layers
        feeds["term_weights"] = w.terms
        return feeds

    def _initial(self, size: tuple[int, int]) -> np.ndarray:
        init = self.config.init
        if self.x is not None:  # coarse-to-fine: warm start from the previous scale's result
            return _chw(resize(_hwc(self.x), size))
        if init == "content":
            return _chw(self._content_at(size))
        if init == "noise":
            return self.rng.uniform(0.0, 1.0, (1, 3, size[1], size[0])).astype(np.float32)
        img = resize(self.init_image, size)
        if self.config.color == "luminance":
            img = color.luminance(img)
        return _chw(img)

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> Iterator[IterationRecord]:
        cfg = self.config
        while True:
            long_side, iterations = self.schedule[self.scale]
            if self.iteration >= iterations:
                # The scale is done. Moving on happens here, not after its last iteration, so that a
                # checkpoint taken at the end can be resumed with more iterations at the same scale.
                if self.scale + 1 >= len(self.schedule):
                    return
                self.scale, self.iteration = self.scale + 1, 0
                # each scale starts a fresh L-BFGS history (as neural-style's multires)
                self.optimizer = self._optimizer_state = None
                self.average = None
                continue
            size = self._size_at(long_side)
            if self.x is None or self.x.shape[2:] != (size[1], size[0]):
                self.x = self._initial(size)
            feeds = self._feeds(size, self.x)
            loop = self._device_loop(feeds)
            if loop is None:
                step_fn = TrainStep(self.graphs, feeds, self.x.shape)
                o = self._optimizer_state
                if self.optimizer is None and o is None:
                    self.optimizer = optim.make(cfg.optim.name, self.x.size, cfg.optim.learning_rate(), cfg.optim.history)
                elif self.optimizer is None:  # resumed from a checkpoint
                    self.optimizer = optim.make(o["kind"], self.x.size, float(o["lr"]), int(o.get("m", 100)))
                    self.optimizer.load_state_dict(o)
                    self._optimizer_state = None
            del feeds
            tw = self.weights.terms
            while self.iteration < iterations:
                t0 = time.perf_counter()
                if loop is not None:
                    # Image, gradient and optimizer state stay on the device; x and best are fetched
                    # only when asked for (current(), state()).
                    total, closs, sloss, tv, finite = loop.step()
                    if not finite:
                        self._stale = False
                        self._x = loop.image()
                        if loop.opt.k:
                            self._best = loop.previous()
                        raise NumericalError(f"loss became {total} at iteration {self.step + 1}; stopped and kept "
                                             "the last finite image (try a smaller learning rate or weights)")
                    self._stale = True
                else:
                    total, closs, sloss, tv, grad = step_fn(self.x)
                    if not (np.isfinite(total) and np.isfinite(grad).all()):
                        raise NumericalError(f"loss became {total} at iteration {self.step + 1}; stopped and kept "
                                             "the last finite image (try a smaller learning rate or weights)")
                    self.best = self.x
                    self.x = self.optimizer.step(self.x.reshape(-1), grad.reshape(-1)).reshape(self.x.shape)
                if cfg.optim.average:
                    # Iterate averaging (EMA of the image, as style-transfer-pytorch): the output is the
                    # average, which smooths L-BFGS's last jumps.
                    self.average = self.x.copy() if self.average is None else 0.9 * self.average + 0.1 * self.x
                self.iteration += 1
                self.step += 1
                yield IterationRecord(
                    step=self.step, scale=self.scale, iteration=self.iteration, iterations=iterations,
                    width=size[0], height=size[1], loss=total,
                    content=float(tw[0] * (closs * self.weights.content_layers).sum()),
                    style=float(tw[1] * (sloss * self.weights.style_layers).sum()),
                    tv=float(tw[2] * tv), style_layers=[float(v) for v in sloss],
                    seconds=time.perf_counter() - t0,
                )

    # -- the device loop ----------------------------------------------------------------------
    _loop = None  # DeviceLoop of the scale being run, if any
    _stale = False  # x and best are on the device, newer than _x and _best
    _x = None
    _best = None

    @property
    def x(self) -> np.ndarray | None:
        """The current image [1, 3, H, W] (fetched from the device loop when it has moved on)."""
        if self._stale:
            self._sync()
        return self._x

    @x.setter
    def x(self, value) -> None:
        if self._stale:
            self._sync()
        self._x, self._loop = value, None

    @property
    def best(self) -> np.ndarray | None:
        if self._stale:
            self._sync()
        return self._best

    @best.setter
    def best(self, value) -> None:
        if self._stale:
            self._sync()
        self._best = value

    def _sync(self) -> None:
        self._stale = False
        self._x, self._best = self._loop.image(), self._loop.previous()

    def _device_loop(self, feeds):
        """A DeviceLoop for this scale, or None for the host loop (config.loop, no optimizer graphs in
        the model, or iterate averaging, which the device loop does not do)."""
        cfg = self.config
        mode = getattr(cfg, "loop", "auto")
        if mode == "host" or cfg.optim.average:
            return None
        from .device_loop import DeviceLoop, optimizer_runners

        runners = optimizer_runners(self.graphs, cfg.optim.name)
        if runners is None:
            if mode == "device":
                raise UsageError(f"{self.artifacts.path}: this model has no {cfg.optim.name} optimizer graphs "
                                 "(re-export it, or: python -m nst_ort_export.optim_graphs MODEL); use --loop host")
            return None
        state = self._optimizer_state if self._optimizer_state is not None else (
            self.optimizer.state_dict() if self.optimizer is not None else None)
        self._optimizer_state = None
        loop = DeviceLoop(self.graphs, feeds, self.x, cfg.optim.name, cfg.optim.learning_rate(),
                          cfg.optim.history, runners=runners, state=state)
        self.optimizer, self._loop = loop, loop  # state() asks it for the optimizer's state_dict
        return loop

    # -- results and state -------------------------------------------------------------------
    def current(self) -> np.ndarray:
        """The image as it would be saved now: float RGB [H, W, 3], clipped to [0, 1]."""
        x = self.average if self.average is not None else self.x
        if x is None or not np.isfinite(x).all():
            x = self.best
        img = np.clip(_hwc(x), 0.0, 1.0)
        if self.config.color == "luminance" and self.content is not None:
            img = np.clip(color.recombine(img, resize(self.content, (img.shape[1], img.shape[0]))), 0.0, 1.0)
        return img

    result = current

    def runtime(self) -> dict:
        """What runs, where the config says "auto": providers, training graph, loop (for the report)."""
        return {"providers": self.graphs.train.get_providers(), "device": self.graphs.placement.device,
                "train_graph": self.graphs.train_path.name, "loop": "device" if self._loop is not None else "host",
                "provider_options": dict(self.graphs.placement.options)}

    def state(self) -> dict:
        """Everything needed to resume: the CheckpointState (checkpoint.py writes it)."""
        s = {"scale": self.scale, "iteration": self.iteration, "step": self.step, "x": self.x,
             "rng": self.rng.bit_generator.state}
        if self.optimizer is not None:
            s["optimizer"] = self.optimizer.state_dict()
        elif self._optimizer_state is not None:  # resumed, not stepped since
            s["optimizer"] = self._optimizer_state
        if self.average is not None:
            s["average"] = self.average
        return s

    def load_state(self, s: dict) -> None:
        self.scale, self.iteration, self.step = int(s["scale"]), int(s["iteration"]), int(s["step"])
        self.x = s["x"]
        self.best = self.x
        self.rng.bit_generator.state = s["rng"]
        self.average = s.get("average")
        self.optimizer, self._optimizer_state = None, s.get("optimizer")
