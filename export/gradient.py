"""Trace the Gatys loss and its image gradient with torch autograd, lower it to standard ONNX ops.

`torch.func.grad_and_value` + `make_fx` (core ATen decompositions, symbolic shapes) turn the loss
into a flat graph of forward and backward ATen ops; `torch.onnx.export(dynamo=True)` lowers it.
The exporter has no translation for three backward ops; `TRANSLATIONS` gives them standard ones,
so plain `onnxruntime` / `onnxruntime-gpu` can run the result (no com.microsoft training ops).
Weights are graph inputs while tracing (so nothing is specialized on them) and become
initializers afterwards (artifacts.py).
"""
from __future__ import annotations

import warnings

import torch
from onnxscript import opset18 as op
from torch._decomp import core_aten_decompositions
from torch.export import Dim
from torch.fx.experimental.proxy_tensor import make_fx

from .backbones import Backbone
from .loss import content_loss, gram, masked_grams, style_loss, tv_loss

OPSET = 18
_INT_MAX = 2**62


# --- translations for the backward ops torch.onnx lacks ----------------------------------------


def _slice_to(x, like):
    """Crop the spatial dims of x to those of `like` (floor semantics of the forward op)."""
    hw = op.Slice(op.Shape(like), op.Constant(value_ints=[2]), op.Constant(value_ints=[4]))
    return op.Slice(x, op.Constant(value_ints=[0, 0]), hw, op.Constant(value_ints=[2, 3]))


def convolution_backward(grad_output, input, weight, bias_sizes, stride, padding, dilation,
                         transposed, output_padding, groups, output_mask):
    # Only the image is differentiated: weight and bias gradients are never asked for.
    if transposed or list(output_mask)[1:] != [False, False]:
        raise NotImplementedError(f"convolution_backward with transposed={transposed}, mask={output_mask}")
    k = list(weight.shape[2:]) if weight.shape is not None else None
    if list(stride) == [1, 1] and list(dilation) == [1, 1] and groups == 1 and k is not None:
        # A plain Conv on the transposed, flipped kernel: faster than ConvTranspose on ORT's CPU
        # provider (1.52 s vs 1.67 s for VGG19 at 256 px in a spike); ORT folds the kernel once.
        w = op.Transpose(weight, perm=[1, 0, 2, 3])
        w = op.Slice(w, op.Constant(value_ints=[-1, -1]), op.Constant(value_ints=[-_INT_MAX, -_INT_MAX]),
                     op.Constant(value_ints=[2, 3]), op.Constant(value_ints=[-1, -1]))
        pads = [k[0] - 1 - padding[0], k[1] - 1 - padding[1]] * 2
        gi = op.Conv(grad_output, w, pads=pads, strides=[1, 1])
    else:
        # Strided: the largest output ConvTranspose can give, cropped to the real input size,
        # because with dynamic sizes the right output_padding depends on the input's parity.
        gi = op.ConvTranspose(grad_output, weight, strides=list(stride), pads=list(padding) * 2,
                              dilations=list(dilation), group=groups,
                              output_padding=[s - 1 for s in stride])
        gi = _slice_to(gi, input)
    # The exporter wants three outputs; the unused two are pruned by the optimizer.
    return gi, op.Identity(gi), op.Identity(gi)


def max_pool2d_with_indices(self, kernel_size, stride=(), padding=(0, 0), dilation=(1, 1), ceil_mode=False):
    # ONNX flat indices (over N*C*H*W) are kept as they are: the backward below scatters into the
    # flat tensor, which saves torch-lib's per-plane index conversion (a full-size int64 tensor).
    stride = list(stride) or list(kernel_size)
    return op.MaxPool(self, kernel_shape=list(kernel_size), strides=stride, pads=list(padding) * 2,
                      dilations=list(dilation), ceil_mode=int(ceil_mode))


def max_pool2d_with_indices_backward(grad_output, self, kernel_size, stride, padding, dilation, ceil_mode, indices):
    # ScatterElements with add, not MaxUnpool: the CUDA provider has no MaxUnpool kernel.
    flat = op.Constant(value_ints=[-1])
    zeros = op.ConstantOfShape(op.Shape(op.Reshape(self, flat)))
    g = op.ScatterElements(zeros, op.Reshape(indices, flat), op.Reshape(grad_output, flat), axis=0, reduction="add")
    return op.Reshape(g, op.Shape(self))


def avg_pool2d_backward(grad_output, self, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    kernel_size = list(kernel_size)
    stride = list(stride) or kernel_size
    if any(padding) and not count_include_pad:
        raise NotImplementedError("avg_pool2d_backward with padding and count_include_pad=False")
    channels = self.shape[1]
    if not isinstance(channels, int):
        raise NotImplementedError("avg_pool2d_backward needs a static channel count")
    divisor = divisor_override or kernel_size[0] * kernel_size[1]
    kernel = op.Expand(op.Constant(value_float=1.0 / divisor),
                       op.Constant(value_ints=[channels, 1, kernel_size[0], kernel_size[1]]))
    gi = op.ConvTranspose(grad_output, kernel, strides=stride, pads=list(padding) * 2, group=channels,
                          output_padding=[s - 1 for s in stride])
    # Floor mode: rows and columns the forward never read get zero gradient.
    pad_hw = op.Sub(op.Slice(op.Shape(self), op.Constant(value_ints=[2]), op.Constant(value_ints=[4])),
                    op.Slice(op.Shape(gi), op.Constant(value_ints=[2]), op.Constant(value_ints=[4])))
    pad_hw = op.Max(pad_hw, op.Constant(value_ints=[0, 0]))
    pads = op.Concat(op.Constant(value_ints=[0, 0, 0, 0]), op.Constant(value_ints=[0, 0]), pad_hw, axis=0)
    gi = op.Pad(gi, pads)
    return _slice_to(gi, self)


TRANSLATIONS = {
    torch.ops.aten.convolution_backward.default: convolution_backward,
    torch.ops.aten.max_pool2d_with_indices.default: max_pool2d_with_indices,
    torch.ops.aten.max_pool2d_with_indices_backward.default: max_pool2d_with_indices_backward,
    torch.ops.aten.avg_pool2d_backward.default: avg_pool2d_backward,
}


def graph_tensors(backbone: Backbone) -> dict[str, torch.Tensor]:
    """Every constant tensor of the network (parameters, then buffers), by name."""
    m = backbone.module
    return {**{n: p.detach() for n, p in m.named_parameters()}, **{n: b for n, b in m.named_buffers()}}


# --- the two functions that become graphs -------------------------------------------------------


class GraphSpec:
    """Input and output names of the eval and training graphs, shared with the manifest."""

    def __init__(self, backbone: Backbone):
        self.taps = [layer.name for layer in backbone.layers]
        self.content = list(backbone.content_layers)
        self.style = list(backbone.style_layers)
        # Buffers (the preprocessing constants) travel like weights: inputs while tracing.
        self.param_names = list(graph_tensors(backbone))
        self.eval_inputs = ["image"]
        self.eval_outputs = [f"content.{n}" for n in self.content] + [f"gram.{n}" for n in self.style]
        self.train_inputs = (
            ["image", "style_masks", "content_layer_weights", "style_layer_weights", "style_weights", "term_weights"]
            + [f"content_target.{n}" for n in self.content]
            + [f"style_target.{n}" for n in self.style]
        )
        self.train_outputs = ["loss", "content_losses", "style_losses", "tv_loss", "image_grad"]


def make_functions(backbone: Backbone):
    """(eval_fn, train_fn) over flat tensor arguments, parameters last."""
    spec = GraphSpec(backbone)
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
    spec = GraphSpec(backbone)
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


def export_graphs(backbone: Backbone, verbose: bool = False, gradient: str = "auto", cpu_variant: bool = False):
    """Lower both graphs; returns (spec, eval ModelProto, train ModelProto) with weights as inputs.

    gradient: "manual" (manual_grad.py: a hand-derived backward chosen for ONNX Runtime; plain
    conv/ReLU/2x2-pool stacks only), "autograd" (traced torch autograd: any network), or "auto" (manual
    where it applies, else autograd).
    cpu_variant: also lower the manual training graph with Winograd F(4x4, 3x3) convolutions where they
    are faster on the CPU provider; it is put in `spec.train_cpu` (None when the manual gradient does
    not apply). Same inputs, outputs and weights as train.onnx.
    """
    from . import manual_grad

    spec, eval_fn, train_fn = make_functions(backbone)
    if gradient not in ("auto", "manual", "autograd"):
        raise ValueError(f"gradient must be auto, manual or autograd, not {gradient!r}")
    spec.gradient, spec.train_cpu = "autograd", None
    cpu_fn = None
    if gradient != "autograd":
        manual = manual_grad.make_train_fn(backbone, spec)
        if manual is None and gradient == "manual":
            raise ValueError(f"{backbone.name}: the manual gradient covers only conv/ReLU/2x2-pool stacks")
        if manual is not None:
            train_fn, spec.gradient = manual, "manual"
            if cpu_variant:
                cpu_fn = manual_grad.make_train_fn(backbone, spec, winograd=True)
    translations = {**TRANSLATIONS, **manual_grad.TRANSLATIONS}
    image, masks, weights, ct, st, params = example_inputs(backbone)
    hw = {2: Dim.AUTO, 3: Dim.AUTO}
    decomp = core_aten_decompositions()

    eval_args = (image, *params)
    train_args = (image, masks, *weights, *ct, *st, *params)
    eval_dyn = (hw,) + (None,) * len(params)
    train_dyn = (hw, {0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO}, None, None, {0: Dim.AUTO}, None) \
        + tuple(hw for _ in ct) + tuple({0: Dim.AUTO} for _ in st) + (None,) * len(params)

    jobs = [(eval_fn, eval_args, eval_dyn, spec.eval_inputs, spec.eval_outputs),
            (train_fn, train_args, train_dyn, spec.train_inputs, spec.train_outputs)]
    if cpu_fn is not None:
        jobs.append((cpu_fn, train_args, train_dyn, spec.train_inputs, spec.train_outputs))
    protos = []
    for fn, args, dyn, ins, outs in jobs:
        # No duck sizing: by default make_fx gives input dims that happen to be equal in the example
        # one symbol, e.g. the 2 example styles and the [2] weights of 2 style (or content) layers;
        # the static one then pins the other, and the training graph takes exactly 2 styles.
        with torch.fx.experimental._config.patch(use_duck_shape=False):
            gm = make_fx(fn, decomposition_table=decomp, tracing_mode="symbolic")(*args)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                gm, args, dynamo=True, custom_translation_table=translations, dynamic_shapes=dyn,
                input_names=ins + spec.param_names, output_names=outs, opset_version=OPSET,
                optimize=True, verbose=verbose,
            )
        protos.append(program.model_proto)
    if cpu_fn is not None:
        spec.train_cpu = protos[2]
    return spec, protos[0], protos[1]
