"""Loss weights: the config's (or the model's defaults) resolved into the training graph's inputs, and
the weighted terms of a loss (README, "Loss normalization"):

    total = a * sum_l c_l content_l + b * sum_l w_l style_l + t * tv
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ..base.errors import UsageError
from . import contract
from .artifacts import Artifacts
from .config import Config
from .contract import Losses


@dataclasses.dataclass
class Weights:
    """Resolved loss weights, in the graph's input order."""

    content_layers: np.ndarray  # c_l, in the manifest's content_layers order
    style_layers: np.ndarray  # w_l, in style_layers order
    terms: np.ndarray  # a, b, t: content, style, tv

    def feeds(self) -> dict[str, np.ndarray]:
        return {contract.CONTENT_LAYER_WEIGHTS: self.content_layers, contract.STYLE_LAYER_WEIGHTS: self.style_layers,
                contract.TERM_WEIGHTS: self.terms}

    def weighted(self, losses: Losses) -> tuple[float, float, float]:
        """The weighted content, style and tv terms; the graph's `loss` is their sum."""
        tw = self.terms
        return (float(tw[0] * (losses.content_losses * self.content_layers).sum()),
                float(tw[1] * (losses.style_losses * self.style_layers).sum()),
                float(tw[2] * losses.tv_loss))


def resolve_weights(config: Config, artifacts: Artifacts) -> Weights:
    d, lc = artifacts.defaults, config.loss
    content_layer = lc.content_layer
    clw = d.get("content_layer_weights", {})
    if content_layer is not None:
        if content_layer not in artifacts.content_layers:
            raise UsageError(f"content layer {content_layer!r} is not in this model; it has "
                             f"{', '.join(artifacts.content_layers)}")
        clw = {content_layer: 1.0}
    slw = lc.style_layer_weights if lc.style_layer_weights is not None else d.get("style_layer_weights", {})
    unknown = [n for n in slw if n not in artifacts.style_layers]
    if unknown:
        raise UsageError(f"style layer(s) {', '.join(unknown)} not in this model; it has "
                         f"{', '.join(artifacts.style_layers)}")
    cw = d["content_weight"] if lc.content_weight is None else lc.content_weight
    sw = d["style_weight"] if lc.style_weight is None else lc.style_weight
    tw = d["tv_weight"] if lc.tv_weight is None else lc.tv_weight
    if config.content is None:
        cw = 0.0  # texture synthesis: style loss only (Gatys et al. 2015)
    return Weights(
        np.array([float(clw.get(n, 0.0)) for n in artifacts.content_layers], np.float32),
        np.array([float(slw.get(n, 0.0)) for n in artifacts.style_layers], np.float32),
        np.array([cw, sw, tw], np.float32),
    )
