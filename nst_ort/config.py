"""Typed configuration: what the CLI builds from flags and the Python API takes directly."""
from __future__ import annotations

import dataclasses
from pathlib import Path


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


@dataclasses.dataclass
class StyleInput:
    path: Path
    weight: float = 1.0
    mask: Path | None = None  # grayscale, white = this style's region


@dataclasses.dataclass
class Config:
    content: Path | None  # None: texture synthesis (style loss only, from noise)
    styles: list[StyleInput]
    size: int = 512  # long side of the output (or of the texture)
    texture_size: tuple[int, int] | None = None  # (width, height) for texture synthesis
    scales: list[int] | None = None  # multi-scale long sides, ending at `size`; None = single scale
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
        """[(long side, iterations)] from coarse to fine."""
        sizes = list(self.scales) if self.scales else [self.size]
        if sizes[-1] != self.size:
            sizes.append(self.size)
        iters = self.scale_iterations or [self.optim.iterations] * len(sizes)
        if len(iters) != len(sizes):
            raise ValueError(f"{len(iters)} iteration counts for {len(sizes)} scales")
        return list(zip(sizes, iters))
