"""Torch custom ops for the hand-written backward (manual_grad.py), each lowered to exactly the ONNX
wanted: nearest 2x upsampling as one Resize, 2x2 max pooling as a MaxPool without indices."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from onnxscript import opset18 as op


@torch.library.custom_op("nst::up2", mutates_args=())
def up2(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling of the last two dims."""
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


@up2.register_fake
def _(x):
    return x.new_empty(x.shape[0], x.shape[1], 2 * x.shape[2], 2 * x.shape[3])


@torch.library.custom_op("nst::maxpool2", mutates_args=())
def maxpool2(x: torch.Tensor) -> torch.Tensor:
    """2x2 / stride 2 max pooling (floor mode), values only."""
    return F.max_pool2d(x, 2, 2)


@maxpool2.register_fake
def _(x):
    return x.new_empty(x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2)


def _onnx_up2(x):
    return op.Resize(x, None, op.Constant(value_floats=[1.0, 1.0, 2.0, 2.0]), mode="nearest",
                     coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def _onnx_maxpool2(x):
    y, _ = op.MaxPool(x, kernel_shape=[2, 2], strides=[2, 2])  # the unused indices output is pruned
    return y


TRANSLATIONS = {
    torch.ops.nst.up2.default: _onnx_up2,
    torch.ops.nst.maxpool2.default: _onnx_maxpool2,
}
