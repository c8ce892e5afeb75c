"""Weight presets (--preset), translated into nst-ort's normalization (README, "Presets").

A preset fills in what the user left unset: loss weights and the iteration count. Its optimizer,
history (L-BFGS, 100) and size (512) are the defaults already. Layer weights that neural-style leaves
implicit in its Gram normalization (G / (C*h*w), MSE) become 1/C_l^2 here.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from ..engine.artifacts import Artifacts
from ..engine.config import LossConfig


def _inverse_square_channels(artifacts: Artifacts) -> dict[str, float]:
    return {n: 1.0 / artifacts.layer_info[n]["channels"] ** 2 for n in artifacts.style_layers
            if n in artifacts.defaults.get("style_layer_weights", {})}


def _equal(artifacts: Artifacts) -> dict[str, float]:
    names = [n for n in artifacts.style_layers if n in artifacts.defaults.get("style_layer_weights", {})]
    return {n: 1.0 / len(names) for n in names}


def _paper_content_weight(artifacts: Artifacts) -> float:
    # alpha/beta = 1e-3 (paper Fig. 3) with its 1/2-sum content and 1/(4 N^2 M^2) style terms,
    # translated at 512 px: alpha_ours = 1e-3 * 2 * N * M / 4 for relu4_2 (N=512, M=(512/8)^2).
    layer = artifacts.layer_info[artifacts.content_layers[0]]
    n, stride = layer["channels"], layer["stride"]
    return 1e-3 * 2 * n * (512 // stride) ** 2 / 4


@dataclasses.dataclass(frozen=True)
class Preset:
    content_weight: float | Callable[[Artifacts], float] | None = None  # None: the model's default
    style_weight: float | None = None
    tv_weight: float | None = None
    style_layer_weights: Callable[[Artifacts], dict[str, float]] | None = None
    iterations: int = 500  # per scale

    def loss(self, artifacts: Artifacts, given: LossConfig) -> LossConfig:
        """The preset's weights where `given` (what the user set) has None."""
        cw = self.content_weight(artifacts) if callable(self.content_weight) else self.content_weight
        slw = self.style_layer_weights(artifacts) if self.style_layer_weights else None

        def pick(mine, theirs):
            return theirs if theirs is not None else mine

        return LossConfig(content_weight=pick(cw, given.content_weight),
                          style_weight=pick(self.style_weight, given.style_weight),
                          tv_weight=pick(self.tv_weight, given.tv_weight), content_layer=given.content_layer,
                          style_layer_weights=pick(slw, given.style_layer_weights))


PRESETS = {
    "default": Preset(),  # the model's weights (manifest.json "defaults", chosen by looking)
    # jcjohnson/neural-style's defaults; its TV (L1, 1e-3) has no exact translation into our squared TV.
    "neural-style": Preset(content_weight=5.0, style_weight=100.0, style_layer_weights=_inverse_square_channels,
                           iterations=1000),
    # the paper: equal layer weights (w_l = 1/5), no TV, alpha/beta = 1e-3.
    "paper": Preset(content_weight=_paper_content_weight, style_weight=1.0, tv_weight=0.0,
                    style_layer_weights=_equal, iterations=1000),
}
