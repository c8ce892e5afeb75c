"""Typed configuration: what the CLI builds from flags and the Python API takes directly.

`Config.validate()` is the one place that says which values make sense (the CLI's flag parsers call
the same checkers, so that a bad value is refused at parse time, naming the flag); `Stylizer`
calls it too, so a Python caller gets the same refusals (`Invalid`, a UsageError: exit 2).
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

from ..base.errors import UsageError

# Config field -> the flag that sets it: messages name the flag (a Python caller has Invalid.field).
FLAGS = {
    "size": "--size", "texture_size": "--texture-size", "scales": "--scales",
    "scale_iterations": "--scale-iterations", "style_scale": "--style-scale", "init": "--init", "seed": "--seed",
    "color": "--color", "loss.content_weight": "--content-weight", "loss.style_weight": "--style-weight",
    "loss.tv_weight": "--tv-weight", "loss.style_layer_weights": "--style-layers",
    "loss.content_layer": "--content-layer", "styles.weight": "--style-weights", "styles": "STYLE",
    "optim.name": "--optimizer", "optim.iterations": "--iterations", "optim.lr": "--lr",
    "optim.history": "--history", "threads": "--threads", "device": "--device", "loop": "--loop",
    "precision": "--precision", "save_every": "--save-every", "tile": "--tile",
}


class Invalid(UsageError):
    """A value that makes no sense for a field; the message names the flag that sets it."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"{FLAGS.get(field, field)}: {problem}")


def max_threads() -> int:
    """The most intra-op threads worth asking for: the CPUs this process may run on. More threads
    than CPUs only take turns (onnxruntime's pool threads spin while they wait), and thousands of
    them made a 2-core machine unresponsive (issue #10: `--threads 1000` hung and ignored Ctrl-C)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _describe(value) -> str:
    return repr(value) if not isinstance(value, float) else f"{value:g}"


def check_int(field: str, value, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer in [minimum, maximum] (bools are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(field, f"expected an integer, got {_describe(value)}")
    if value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise Invalid(field, f"must be {what}, got {value}")
    if maximum is not None and value > maximum:
        raise Invalid(field, f"must be at most {maximum}, got {value}")
    return value


def check_number(field: str, value, positive: bool = False) -> float:
    """A finite float, >= 0 (weights: 0 turns a term off) or > 0 (positive=True: rates, scales)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(field, f"expected a number, got {_describe(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise Invalid(field, f"must be a finite number, got {value}")
    if value < 0 or (positive and value == 0):
        raise Invalid(field, f"must be {'positive' if positive else 'zero or positive'}, got {value:g}")
    return value


@dataclasses.dataclass
class LossConfig:
    """Weights in the documented normalization (README, "Loss normalization").

    None means "the model's defaults" (manifest.json -> defaults), chosen per backbone by looking.
    """

    content_weight: float | None = None
    style_weight: float | None = None
    tv_weight: float | None = None
    content_layer: str | None = None  # one of the artifact's content layers
    style_layer_weights: dict[str, float] | None = None  # layer -> weight; others 0

    def validate(self) -> None:
        for name in ("content_weight", "style_weight", "tv_weight"):
            if getattr(self, name) is not None:
                check_number(f"loss.{name}", getattr(self, name))
        if self.style_layer_weights is not None:
            if not self.style_layer_weights:
                raise Invalid("loss.style_layer_weights", "no layers given")
            for layer, w in self.style_layer_weights.items():
                if not isinstance(layer, str) or not layer:
                    raise Invalid("loss.style_layer_weights", f"bad layer name {layer!r}")
                check_number("loss.style_layer_weights", w)


@dataclasses.dataclass
class OptimConfig:
    name: str = "lbfgs"  # lbfgs | adam
    iterations: int = 500  # per scale (the last scale); see Config.scale_iterations
    lr: float | None = None  # lbfgs: 1.0; adam: 0.02 (image in [0, 1])
    history: int = 100  # L-BFGS memory, as neural-style
    average: bool = False  # iterate averaging (EMA of the image) for the output

    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1.0 if self.name == "lbfgs" else 0.02

    def validate(self) -> None:
        if self.name not in ("lbfgs", "adam"):
            raise Invalid("optim.name", f"unknown optimizer {self.name!r}: use lbfgs or adam")
        check_int("optim.iterations", self.iterations, minimum=0)
        if self.lr is not None:
            check_number("optim.lr", self.lr, positive=True)
        check_int("optim.history", self.history)


@dataclasses.dataclass
class StyleInput:
    path: Path
    weight: float = 1.0
    mask: Path | None = None  # grayscale, white = this style's region


@dataclasses.dataclass
class Config:
    content: Path | None  # None: texture synthesis (style loss only, from noise)
    styles: list[StyleInput]
    size: int = 512  # long side of the output (or of the texture); with scales, their last one
    texture_size: tuple[int, int] | None = None  # (width, height) for texture synthesis
    scales: list[int] | None = None  # multi-scale long sides, coarse to fine, the last = `size`; None = single scale
    scale_iterations: list[int] | None = None  # per scale; None = optim.iterations each
    style_scale: float = 1.0  # style image long side = style_scale * current long side
    init: str = "content"  # content | noise | PATH
    seed: int = 0
    color: str = "none"  # none | luminance | histogram (Gatys et al. 2017)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    model: Path | None = None
    device: str = "auto"
    provider: str | None = None
    threads: int | None = None
    loop: str = "auto"  # device (image, gradient, optimizer state in device buffers) | host | auto (device if the model has optimizer graphs)
    precision: str = "fp32"  # fp32 | tf32 (CUDA: TensorFloat-32 convolutions and matmuls) | fp16 (the model's train_fp16.onnx)
    provider_options: dict[str, str] | None = None  # options of the chosen provider (--provider-option KEY=VALUE)
    # --tile: a tile's own size in px (a multiple of the model's pool grid, manifest "tiling"), the
    # exact tiled loss and gradient at every scale (nst_ort/engine/tiling.py, docs/tiling.md); None: auto
    # (untiled where the memory estimate of the whole image fits, else the largest tile that fits).
    tile: int | None = None

    def resolved_init(self) -> str:
        """init as it applies: a texture (no content image) starts from noise where init says content."""
        return "noise" if self.content is None and self.init == "content" else self.init

    def input_paths(self) -> list[Path]:
        """Every file the run reads: content, styles, masks, the init image."""
        paths = [self.content, *[s.path for s in self.styles], *[s.mask for s in self.styles if s.mask]]
        if self.init not in ("content", "noise"):
            paths.append(Path(self.init))
        return [Path(p) for p in paths if p is not None]

    def schedule(self) -> list[tuple[int, int]]:
        """[(long side, iterations)] from coarse to fine; the last scale is the output's size."""
        self.validate()
        sizes = list(self.scales) if self.scales else [self.size]
        iters = list(self.scale_iterations) if self.scale_iterations is not None else [self.optim.iterations] * len(sizes)
        return list(zip(sizes, iters))

    def total_iterations(self) -> int:
        return sum(n for _, n in self.schedule())

    def validate(self) -> None:
        """Refuse values that make no sense (Invalid names the flag), before anything is loaded."""
        check_int("size", self.size)
        if self.texture_size is not None:
            if self.content is not None:
                raise Invalid("texture_size", "applies to texture synthesis only (--texture)")
            if not isinstance(self.texture_size, (tuple, list)) or len(self.texture_size) != 2:
                raise Invalid("texture_size", f"expected (width, height), got {self.texture_size!r}")
            for v in self.texture_size:
                check_int("texture_size", v)
            if max(self.texture_size) != self.size:
                raise Invalid("texture_size", f"its long side {max(self.texture_size)} must be the size "
                              f"({self.size})")
        if self.scales is not None:
            if not self.scales:
                raise Invalid("scales", "no scales given")
            for v in self.scales:
                check_int("scales", v)
            if self.scales[-1] != self.size:
                raise Invalid("scales", f"the last scale is the output size: the scales end at {self.scales[-1]} "
                              f"but the size is {self.size} (leave out --size, or end --scales with it)")
        if self.scale_iterations is not None:
            n = len(self.scales) if self.scales else 1
            if len(self.scale_iterations) != n:
                raise Invalid("scale_iterations", f"{len(self.scale_iterations)} iteration counts for {n} "
                              f"scale{'s' if n != 1 else ''}")
            for v in self.scale_iterations:
                check_int("scale_iterations", v, minimum=0)
        check_number("style_scale", self.style_scale, positive=True)
        if not isinstance(self.init, str) or not self.init:
            raise Invalid("init", f"expected content, noise or an image path, got {self.init!r}")
        check_int("seed", self.seed, minimum=0)
        if self.color not in ("none", "luminance", "histogram"):
            raise Invalid("color", f"unknown {self.color!r}: use none, luminance or histogram")
        if self.color != "none" and self.content is None:
            raise Invalid("color", "keeps the content's colors, and a texture has no content image")
        if not self.styles:
            raise Invalid("styles", "at least one style image is needed")
        for s in self.styles:
            check_number("styles.weight", s.weight)
        if sum(float(s.weight) for s in self.styles) <= 0:
            raise Invalid("styles.weight", "the style weights must not all be zero")
        self.loss.validate()
        self.optim.validate()
        if self.threads is not None:
            check_int("threads", self.threads, maximum=max_threads())
        if self.tile is not None:
            check_int("tile", self.tile)
        if self.loop not in ("auto", "device", "host"):
            raise Invalid("loop", f"unknown loop {self.loop!r}: use auto, device or host")
        if self.loop == "device" and self.optim.average:
            raise Invalid("loop", "--average needs the image at every iteration, which the host loop has; "
                          "use --loop host or auto")
