"""The graphs' contract on the export side: input and output names of the eval and training graphs
(docs/architecture.md, "The artifact contract"), and the constant tensors that become weights."""
from __future__ import annotations

import dataclasses

import torch

from .network import Backbone

TRAIN_OUTPUTS = ("loss", "content_losses", "style_losses", "tv_loss", "image_grad")
# Inputs besides the targets, in order; term_weights = (content, style, tv).
TRAIN_INPUTS = ("image", "style_masks", "content_layer_weights", "style_layer_weights", "style_weights", "term_weights")


def graph_tensors(backbone: Backbone) -> dict[str, torch.Tensor]:
    """Every constant tensor of the network (parameters, then buffers), by name."""
    m = backbone.module
    return {**{n: p.detach() for n, p in m.named_parameters()}, **{n: b for n, b in m.named_buffers()}}


@dataclasses.dataclass(frozen=True)
class GraphSpec:
    """Input and output names of the eval and training graphs, shared with the manifest."""

    taps: list[str]  # what backbone.module returns, in order
    content: list[str]  # content layers
    style: list[str]  # style layers
    # Parameters, then buffers (the preprocessing constants): graph inputs while tracing, then
    # initializers in weights.bin.
    param_names: list[str]
    eval_inputs: list[str]
    eval_outputs: list[str]
    train_inputs: list[str]
    train_outputs: list[str]

    @classmethod
    def of(cls, backbone: Backbone) -> GraphSpec:
        content, style = list(backbone.content_layers), list(backbone.style_layers)
        return cls(
            taps=[layer.name for layer in backbone.layers], content=content, style=style,
            param_names=list(graph_tensors(backbone)),
            eval_inputs=["image"],
            eval_outputs=[f"content.{n}" for n in content] + [f"gram.{n}" for n in style],
            train_inputs=[*TRAIN_INPUTS, *(f"content_target.{n}" for n in content), *(f"style_target.{n}" for n in style)],
            train_outputs=list(TRAIN_OUTPUTS),
        )
