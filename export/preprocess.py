"""How a network wants its input (channel order, scale, mean, std): torch-free, so the CLI can say
what is missing before torch is imported. The module that applies it is `PreprocessLayer`."""
from __future__ import annotations

import dataclasses


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
# A network trained on RGB in [0, 1] as it is.
RAW = Preprocess("RGB", 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
# --preprocess NAME
NAMED = {"torchvision": IMAGENET_TORCHVISION, "caffe": CAFFE, "raw": RAW}


def describe_preprocess(p: Preprocess) -> str:
    name = next((k for k, v in NAMED.items() if v == p), None)
    detail = f"{p.order}, scale {p.scale:g}, mean {', '.join(f'{m:g}' for m in p.mean)}, std {', '.join(f'{s:g}' for s in p.std)}"
    return f"{name} ({detail})" if name else detail
