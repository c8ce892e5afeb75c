"""ONNX translations for the backward ATen ops torch.onnx lacks, in standard ops only, so that plain
`onnxruntime` / `onnxruntime-gpu` runs the traced autograd graph (no com.microsoft training ops)."""
from __future__ import annotations

import torch
from onnxscript import opset18 as op

_INT_MAX = 2**62


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
