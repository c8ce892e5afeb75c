"""Where a backbone's weights come from: torchvision downloads, state-dict files, random (tests).

Each loader returns the state dict (or None for random weights) and the manifest's `weights`
entry (source, license, the file's sha256 where there is a file).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

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


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def torchvision_download(arch: str) -> str:
    """--list's description of `--weights imagenet` for this architecture."""
    return f"torchvision download {TORCHVISION_URLS[arch].rsplit('/', 1)[1]}"


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
                                        "file_sha256": sha256(path)}
