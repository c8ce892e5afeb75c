"""Trace the Gatys loss and its image gradient, lower both graphs to standard ONNX ops.

The training function is the hand-written backward of manual_grad.py where it applies (plain
conv/ReLU/2x2-pool stacks: every VGG), else torch autograd: `torch.func.grad_and_value` + `make_fx`
(core ATen decompositions, symbolic shapes) turn the loss into a flat graph of forward and backward
ATen ops. `torch.onnx.export(dynamo=True)` lowers either, with translations for the ops it lacks
(backward_ops.py, manual_ops.py, winograd.py), so plain `onnxruntime` / `onnxruntime-gpu` can run
the result (no com.microsoft training ops). Weights are graph inputs while tracing (so nothing is
specialized on them) and become initializers afterwards (artifacts.py).
"""
from __future__ import annotations

import dataclasses
import warnings

import onnx
import torch
from torch._decomp import core_aten_decompositions
from torch.export import Dim
from torch.fx.experimental.proxy_tensor import make_fx

from . import backward_ops, manual_grad, manual_ops, winograd
from .loss import content_loss, gram, masked_grams, style_loss, tv_loss
from .network import Backbone
from .spec import GraphSpec, graph_tensors

OPSET = 18
TRANSLATIONS = {**backward_ops.TRANSLATIONS, **manual_ops.TRANSLATIONS, **winograd.TRANSLATIONS}
GRADIENTS = ("auto", "manual", "autograd")


@dataclasses.dataclass
class ExportedGraphs:
    """The lowered graphs of one backbone, weights still as inputs (artifacts.py binds them)."""

    spec: GraphSpec
    eval: onnx.ModelProto
    train: onnx.ModelProto
    gradient: str  # how train's backward was made: "manual" or "autograd"
    # The training graph the CPU provider runs (Winograd convolutions), when asked for and the
    # manual gradient applies; same inputs, outputs and weights as train.
    train_cpu: onnx.ModelProto | None = None

    def roles(self) -> dict[str, onnx.ModelProto]:
        """role (eval, train, train_cpu) -> graph, for the graphs there are."""
        graphs = {"eval": self.eval, "train": self.train, "train_cpu": self.train_cpu}
        return {role: g for role, g in graphs.items() if g is not None}


# --- the two functions that become graphs -------------------------------------------------------

def make_functions(backbone: Backbone):
    """(eval_fn, train_fn) over flat tensor arguments, parameters last."""
    spec = GraphSpec.of(backbone)
    net = backbone.module
    nc, ns = len(spec.content), len(spec.style)

    def taps(image, params):
        feats = torch.func.functional_call(net, dict(zip(spec.param_names, params)), (image,))
        return dict(zip(spec.taps, feats))

    def eval_fn(image, *params):
        f = taps(image, params)
        return tuple(f[n] for n in spec.content) + tuple(gram(f[n]) for n in spec.style)

    def loss(image, masks, clw, slw, sw, tw, ctargets, stargets, params):
        f = taps(image, params)
        closs = torch.stack([content_loss(f[n], t) for n, t in zip(spec.content, ctargets)])
        sloss = torch.stack([style_loss(masked_grams(f[n], masks), t, sw) for n, t in zip(spec.style, stargets)])
        tv = tv_loss(image)
        total = tw[0] * (closs * clw).sum() + tw[1] * (sloss * slw).sum() + tw[2] * tv
        return total, (closs, sloss, tv)

    def train_fn(image, masks, clw, slw, sw, tw, *rest):
        ct, st, params = rest[:nc], rest[nc:nc + ns], rest[nc + ns:]
        grad, (total, (closs, sloss, tv)) = torch.func.grad_and_value(loss, argnums=0, has_aux=True)(
            image, masks, clw, slw, sw, tw, ct, st, params)
        return total, closs, sloss, tv, grad

    return spec, eval_fn, train_fn


def example_inputs(backbone: Backbone, height: int = 67, width: int = 75, styles: int = 2, seed: int = 0):
    """Inputs of the right shapes for tracing; odd sizes so nothing specializes on even ones."""
    spec = GraphSpec.of(backbone)
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, height, width, generator=gen)
    with torch.no_grad():
        feats = dict(zip(spec.taps, backbone.module(image)))
    masks = torch.ones(styles, 1, height, width)
    ct = [feats[n].clone() for n in spec.content]
    st = [gram(feats[n]).expand(styles, -1, -1).clone() for n in spec.style]
    weights = [torch.ones(len(spec.content)), torch.ones(len(spec.style)), torch.ones(styles), torch.ones(3)]
    params = list(graph_tensors(backbone).values())
    return image, masks, weights, ct, st, params


def training_functions(backbone: Backbone, spec: GraphSpec, autograd_fn, gradient: str, cpu_variant: bool):
    """(train_fn, train_cpu_fn or None, "manual" | "autograd") for --gradient auto | manual | autograd."""
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be auto, manual or autograd, not {gradient!r}")
    manual = None if gradient == "autograd" else manual_grad.make_train_fn(backbone, spec)
    if manual is None:
        if gradient == "manual":
            raise ValueError(f"{backbone.name}: the manual gradient covers only conv/ReLU/2x2-pool stacks")
        return autograd_fn, None, "autograd"
    cpu_fn = manual_grad.make_train_fn(backbone, spec, winograd=True) if cpu_variant else None
    return manual, cpu_fn, "manual"


def lower(fn, args: tuple, dynamic_shapes: tuple, input_names: list[str], output_names: list[str],
          verbose: bool = False) -> onnx.ModelProto:
    """One function over flat tensors -> ONNX: make_fx (core ATen decompositions, symbolic shapes),
    then torch.onnx.export with TRANSLATIONS."""
    # No duck sizing: by default make_fx gives input dims that happen to be equal in the example
    # one symbol, e.g. the 2 example styles and the [2] weights of 2 style (or content) layers;
    # the static one then pins the other, and the training graph takes exactly 2 styles.
    with torch.fx.experimental._config.patch(use_duck_shape=False):
        gm = make_fx(fn, decomposition_table=core_aten_decompositions(), tracing_mode="symbolic")(*args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            gm, args, dynamo=True, custom_translation_table=TRANSLATIONS, dynamic_shapes=dynamic_shapes,
            input_names=input_names, output_names=output_names, opset_version=OPSET, optimize=True, verbose=verbose,
        )
    return program.model_proto


def export_graphs(backbone: Backbone, verbose: bool = False, gradient: str = "auto",
                  cpu_variant: bool = False) -> ExportedGraphs:
    """Lower the eval and training graphs (and the CPU training graph), weights as inputs.

    gradient: "manual" (manual_grad.py: a hand-derived backward chosen for ONNX Runtime; plain
    conv/ReLU/2x2-pool stacks only), "autograd" (traced torch autograd: any network), or "auto" (manual
    where it applies, else autograd).
    cpu_variant: also lower the manual training graph with Winograd F(4x4, 3x3) convolutions where they
    are faster on the CPU provider (`train_cpu`; None when the manual gradient does not apply).
    """
    spec, eval_fn, autograd_fn = make_functions(backbone)
    train_fn, cpu_fn, how = training_functions(backbone, spec, autograd_fn, gradient, cpu_variant)
    image, masks, weights, ct, st, params = example_inputs(backbone)
    hw = {2: Dim.AUTO, 3: Dim.AUTO}
    eval_args = (image, *params)
    eval_dyn = (hw,) + (None,) * len(params)
    train_args = (image, masks, *weights, *ct, *st, *params)
    train_dyn = (hw, {0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO}, None, None, {0: Dim.AUTO}, None) \
        + tuple(hw for _ in ct) + tuple({0: Dim.AUTO} for _ in st) + (None,) * len(params)
    eval_names = (spec.eval_inputs + spec.param_names, spec.eval_outputs)
    train_names = (spec.train_inputs + spec.param_names, spec.train_outputs)
    return ExportedGraphs(
        spec=spec,
        eval=lower(eval_fn, eval_args, eval_dyn, *eval_names, verbose=verbose),
        train=lower(train_fn, train_args, train_dyn, *train_names, verbose=verbose),
        gradient=how,
        train_cpu=None if cpu_fn is None else lower(cpu_fn, train_args, train_dyn, *train_names, verbose=verbose),
    )
