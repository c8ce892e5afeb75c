"""The artifact contract as data: the names the graphs take and give, once for the whole runtime.

artifacts.py checks a folder against it, session.py and device_loop.py bind by it, targets.py feeds
it; docs/architecture.md describes it (shapes, meaning). The build step (export/) writes graphs that
follow it; a graph that does not is refused when the folder is read.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

IMAGE = "image"  # [1, 3, H, W] RGB in [0, 1]: the input of the eval and training graphs


# -- eval graph: image -> the targets' features --------------------------------------------------
def content_feature(layer: str) -> str:
    """Output [1, C, h, w]: the layer's activations."""
    return f"content.{layer}"


def gram(layer: str) -> str:
    """Output [C, C]: the layer's Gram matrix F F^T / (h w)."""
    return f"gram.{layer}"


def layer_of(output: str) -> str:
    """The layer an eval-graph output is named after."""
    return output.split(".", 1)[1]


# -- training graph: image, targets, weights -> loss terms and the image's gradient ---------------
def content_target(layer: str) -> str:
    """Input [1, C, h, w]."""
    return f"content_target.{layer}"


def style_target(layer: str) -> str:
    """Input [K, C, C]: one Gram per style (K = 1 when the styles are blended into one target)."""
    return f"style_target.{layer}"


STYLE_MASKS = "style_masks"  # [K, 1, H, W]: where each style applies
CONTENT_LAYER_WEIGHTS = "content_layer_weights"  # [nc], in the manifest's content_layers order
STYLE_LAYER_WEIGHTS = "style_layer_weights"  # [ns], in style_layers order
STYLE_WEIGHTS = "style_weights"  # [K]
TERM_WEIGHTS = "term_weights"  # [3]: content, style, tv


class Losses(NamedTuple):
    """The training graph's loss outputs, by name and in its output order (fetched every iteration),
    and the losses of the extra terms (terms.py) that a loop ran after it."""

    loss: float  # the weighted total, extra terms included
    content_losses: np.ndarray  # [nc], unweighted, float64 on the host
    style_losses: np.ndarray  # [ns], unweighted
    tv_loss: float  # unweighted
    terms: tuple = ()  # (name, weighted loss) per extra term, in the order they ran

    @classmethod
    def from_outputs(cls, values) -> "Losses":
        """From the graph's float32 outputs, in LOSS_OUTPUTS order."""
        total, closs, sloss, tv = values
        return cls(float(total), closs.astype(np.float64), sloss.astype(np.float64), float(tv))


LOSS_OUTPUTS = ("loss", "content_losses", "style_losses", "tv_loss")  # the training graph's, in order
GRADIENT_OUTPUT = "image_grad"  # [1, 3, H, W]; stays in a device buffer in the device loop
TRAIN_OUTPUTS = (*LOSS_OUTPUTS, GRADIENT_OUTPUT)

# -- extra loss term graphs (terms.py; manifest "terms"): image, gradient so far, fixed feeds -> -----
# [their loss [], TERM_GRADIENT_OUT [1, 3, H, W] = TERM_GRADIENT_IN + their gradient]
TERM_GRADIENT_IN = "image_grad_in"
TERM_GRADIENT_OUT = "image_grad_out"

# -- optimizer graphs (manifest "optimizers": kind -> role -> file), on flat float32 vectors --------
# export/optim_graphs.py writes them; device_loop.py binds their inputs and outputs.
OPTIMIZER_ROLES = {
    "adam": ("update",),
    "lbfgs": ("pair", "project", "direction"),
}
# Their inputs and outputs (device_loop.py binds them by name): kind -> role -> (inputs, outputs).
OPTIMIZER_IO = {
    "adam": {"update": (("x", "g", "m1", "m2", "lr_c1", "beta1", "beta2", "c2", "eps"), ("x_new", "m1_new", "m2_new"))},
    "lbfgs": {"pair": (("g", "g_prev", "d", "t"), ("s", "y", "ys", "yy", "gg", "g_l1", "g_max")),
              "project": (("S", "Y", "g", "y"), ("SP", "YP")),
              "direction": (("S", "Y", "g", "x", "a", "b", "c", "t"), ("d", "x_new", "gd"))},
}
