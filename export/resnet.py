"""ResNet backbones (He et al. 2016) in plain torch.nn, loading torchvision's state dicts.

`resnet_reference` is torchvision's network (batch norm unfolded, same state-dict keys: `conv1.*`,
`bn1.*`, `layer2.0.downsample.0.*`, ...); the exported network is the same with every BN folded
into the conv before it (inference statistics), cut after the last tapped layer.

Layer names follow torchvision's module paths: `conv1` (stem conv, BN folded), `relu` (stem),
`maxpool`, then one name per residual block output, `layer<stage>_<block>` (after the block's
final ReLU): layer1_0 ... layer4_1 for ResNet18.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .network import (Backbone, BuildOptions, Entry, Layer, PreprocessLayer, fold_bn, frozen, random_init,
                      untuned_defaults)
from .preprocess import IMAGENET_TORCHVISION, Preprocess
from .weights import torchvision_download, torchvision_weights

# (block kind, blocks per stage); torchvision's resnet50 weights are "v1.5" (stride on the 3x3).
RESNET_CFG = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
WIDTHS = (64, 128, 256, 512)


# --- torchvision's network, unfolded (reference and state-dict layout) ---------------------------


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _downsample(cin, width, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = _downsample(cin, width * 4, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _downsample(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNetReference(nn.Module):
    """torchvision.models.ResNet without the classifier; `taps(x)` gives every named layer."""

    def __init__(self, arch: str):
        super().__init__()
        self.arch = arch
        kind, counts = RESNET_CFG[arch]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for stage, (width, count) in enumerate(zip(WIDTHS, counts), start=1):
            blocks = []
            for j in range(count):
                blocks.append(block(cin, width, 2 if (j == 0 and stage > 1) else 1))
                cin = width * block.expansion
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))

    def taps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        x = out["conv1"] = self.bn1(self.conv1(x))
        x = out["relu"] = self.relu(x)
        x = out["maxpool"] = self.maxpool(x)
        for stage in range(1, 5):
            for j, blk in enumerate(getattr(self, f"layer{stage}")):
                x = out[f"layer{stage}_{j}"] = blk(x)
        return out


def resnet_reference(arch: str) -> ResNetReference:
    """Uninitialized (weights are always set after: random or loaded)."""
    with torch.device("meta"):
        ref = ResNetReference(arch)
    return ref.to_empty(device="cpu").eval()


def resnet_layers(arch: str) -> list[Layer]:
    kind, counts = RESNET_CFG[arch]
    expansion = 1 if kind == "basic" else 4
    layers = [Layer("conv1", 64, 2), Layer("relu", 64, 2), Layer("maxpool", 64, 4)]
    for stage, (width, count) in enumerate(zip(WIDTHS, counts), start=1):
        layers += [Layer(f"layer{stage}_{j}", width * expansion, 2 ** (stage + 1)) for j in range(count)]
    return layers


# --- the exported network: BN folded, cut after the last tap ----------------------------------------


def folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    out = nn.utils.skip_init(nn.Conv2d, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                             conv.padding, conv.dilation, conv.groups, bias=True)
    w, b = fold_bn(conv.weight.detach(), None if conv.bias is None else conv.bias.detach(), bn.weight.detach(),
                   bn.bias.detach(), bn.running_mean, bn.running_var, bn.eps)
    with torch.no_grad():
        out.weight.copy_(w)
        out.bias.copy_(b)
    return out


class FoldedBlock(nn.Module):
    """A BasicBlock or Bottleneck with its BNs folded: conv(+relu) chain, plus the shortcut, relu."""

    def __init__(self, ref: BasicBlock | Bottleneck):
        super().__init__()
        self.conv1 = folded_conv(ref.conv1, ref.bn1)
        self.conv2 = folded_conv(ref.conv2, ref.bn2)
        self.conv3 = folded_conv(ref.conv3, ref.bn3) if isinstance(ref, Bottleneck) else None
        self.downsample = None if ref.downsample is None else folded_conv(ref.downsample[0], ref.downsample[1])

    def forward(self, x):
        out = self.conv2(F.relu(self.conv1(x)))
        if self.conv3 is not None:
            out = self.conv3(F.relu(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNetTaps(nn.Module):
    """image -> the tapped layers, in tap order; only the layers up to the deepest tap exist."""

    def __init__(self, preprocess: Preprocess, ref: ResNetReference, taps: list[str]):
        super().__init__()
        order = [layer.name for layer in resnet_layers(ref.arch)]
        last = max(order.index(t) for t in taps)
        kept = set(order[: last + 1])
        self.pre = PreprocessLayer(preprocess)
        body = OrderedDict([("conv1", folded_conv(ref.conv1, ref.bn1)), ("relu", nn.ReLU()),
                            ("maxpool", nn.MaxPool2d(3, 2, 1))])
        body = OrderedDict((k, v) for k, v in body.items() if k in kept)
        for stage in range(1, 5):
            blocks = [FoldedBlock(b) for j, b in enumerate(getattr(ref, f"layer{stage}")) if f"layer{stage}_{j}" in kept]
            if blocks:
                body[f"layer{stage}"] = nn.Sequential(*blocks)
        self.body = nn.Sequential(body)
        self.taps = list(taps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.pre(x)
        found = {}
        for name, module in self.body.named_children():
            if name.startswith("layer"):
                for j, blk in enumerate(module):
                    x = found[f"{name}_{j}"] = blk(x)
            else:
                x = found[name] = module(x)
        return [found[t] for t in self.taps]


def default_layers(arch: str) -> tuple[list[str], list[str]]:
    """Style: stem relu and each stage's output; content: stage 3's output (conv4_x in the paper's
    naming, stride 16), with stages 2 and 4 as alternatives (all style taps, so free)."""
    _, counts = RESNET_CFG[arch]
    outs = [f"layer{s}_{c - 1}" for s, c in enumerate(counts, start=1)]
    return [outs[2], outs[1], outs[3]], ["relu", *outs]


def load_resnet_state(ref: ResNetReference, state: dict[str, torch.Tensor], what: str) -> None:
    own = ref.state_dict()
    needed = [k for k in own if not k.endswith("num_batches_tracked")]
    missing = [k for k in needed if k not in state]
    if missing:
        raise ValueError(f"weights {what}: not a torchvision {ref.arch} state dict; missing "
                         f"{missing[:4]}{'...' if len(missing) > 4 else ''}")
    bad = [k for k in needed if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"weights {what}: shape mismatch for {bad[:3]} (another ResNet depth?)")
    ref.load_state_dict({k: state[k].float() for k in needed}, strict=False)


def build_resnet(arch: str, options: BuildOptions) -> Backbone:
    if arch not in RESNET_CFG:
        raise ValueError(f"unknown ResNet {arch!r}; known: {sorted(RESNET_CFG)}")
    if (options.pool or "max") != "max":
        raise ValueError(f"{arch}: only max pooling (the stem's); --pool avg is for VGG")
    dc, ds = default_layers(arch)
    content_layers = list(options.content_layers or dc)
    style_layers = list(options.style_layers or ds)
    taps = list(dict.fromkeys(content_layers + style_layers))
    info = {layer.name: layer for layer in resnet_layers(arch)}
    unknown = [t for t in taps if t not in info]
    if unknown:
        raise ValueError(f"unknown layer(s) {unknown}; {arch} has {list(info)}")
    ref = resnet_reference(arch)
    state, source = torchvision_weights(arch, options.weights)
    if state is None:
        source["source"] = f"random (seed {options.seed}, kaiming normal; BN statistics measured on noise, folded)"
        random_init(ref, options.seed, forward=ref.taps)
    else:
        load_resnet_state(ref, state, options.weights)
    preprocess = options.preprocess or IMAGENET_TORCHVISION
    return Backbone(
        name=arch, module=frozen(ResNetTaps(preprocess, ref, taps)), layers=[info[t] for t in taps],
        content_layers=content_layers, style_layers=style_layers, preprocess=preprocess, weights=source,
        # Not tuned by looking: no ImageNet ResNet weights were reachable when this was written.
        defaults=untuned_defaults(content_layers, style_layers),
    )


def resnet_entries() -> dict[str, Entry]:
    entries = {}
    for arch, (kind, counts) in RESNET_CFG.items():
        content, style = default_layers(arch)
        depth = 2 + sum(counts) * (2 if kind == "basic" else 3)
        entries[arch] = Entry(
            name=arch,
            summary=f"ResNet-{depth} (He et al. 2016), torchvision layout, {kind} blocks, BN folded; "
            "layers are torchvision's module paths, one per block output",
            layers=tuple(resnet_layers(arch)), content_layers=tuple(content), style_layers=tuple(style),
            preprocess=IMAGENET_TORCHVISION,
            weights={
                "imagenet": torchvision_download(arch),
                "random": "seeded, for tests",
                "PATH": "a torchvision-layout state dict (.pth)",
            },
            build=build_resnet,
            # Stem (7x7/2 conv, 3x3/2 max pool with padding), stage 1, and the first strided
            # block of stage 2 with its 1x1/2 downsample shortcut.
            quick_layers=("layer2_0",),
        )
    return entries
