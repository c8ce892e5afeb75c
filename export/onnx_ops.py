"""The ONNX ops the interpreter runs, each as a torch module built from its node (weights as
parameters, constants as buffers), so that the traced network differentiates like any other."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .network import fold_bn
from .onnx_graph import SUPPORTED, OnnxGraph, UnsupportedOp, attrs

def _spatial_pads(pads: list[int]) -> tuple[int, int, int, int]:
    """ONNX [h_begin, w_begin, h_end, w_end] -> (top, bottom, left, right)."""
    return pads[0], pads[2], pads[1], pads[3]


def _window(node, a: dict, kind: str):
    k = list(a.get("kernel_shape") or [])
    if len(k) != 2:
        raise UnsupportedOp(f"{kind} node {node.name!r}: only 2-D windows are supported (kernel {k})")
    strides = list(a.get("strides") or [1, 1])
    dil = list(a.get("dilations") or [1, 1])
    pads = list(a.get("pads") or [0, 0, 0, 0])
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if strides != [1, 1]:
            raise UnsupportedOp(f"{kind} node {node.name!r}: auto_pad={auto} with stride {strides} pads by the input "
                                "size's parity, which one graph for all sizes cannot do; re-export the ONNX file "
                                "with explicit pads (tf2onnx does when the input shape is known)")
        pads = []
        for kk, d in zip(k, dil):
            total = (kk - 1) * d
            small = total // 2
            pads.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
        pads = [pads[0][0], pads[1][0], pads[0][1], pads[1][1]]
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    return k, strides, dil, pads


class ConvOp(nn.Module):
    def __init__(self, node, g: OnnxGraph, bn=None):
        super().__init__()
        a = attrs(node)
        w = g.const(node.input[1])
        if w is None:
            raise UnsupportedOp(f"Conv node {node.name!r}: weight {node.input[1]!r} is computed, not a constant")
        if w.ndim != 4:
            raise UnsupportedOp(f"Conv node {node.name!r}: {w.ndim - 2}-D convolution (only 2-D is supported)")
        b = g.const(node.input[2]) if len(node.input) > 2 else None
        self.kernel, self.stride, self.dilation, pads = _window(node, {"kernel_shape": list(w.shape[2:]), **a}, "Conv")
        self.groups = int(a.get("group", 1))
        weight = torch.from_numpy(np.array(w, np.float32))
        bias = None if b is None else torch.from_numpy(np.array(b, np.float32))
        if bn is not None:
            gamma, beta, mean, var = (torch.from_numpy(np.array(g.const(i), np.float32)) for i in bn.input[1:5])
            eps = float(attrs(bn).get("epsilon", 1e-5))
            weight, bias = fold_bn(weight, bias, gamma, beta, mean, var, eps)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        t, bo, l, r = _spatial_pads(pads)
        self.symmetric = (t == bo and l == r)
        self.padding = (t, l) if self.symmetric else (0, 0)
        self.pad = None if self.symmetric else (l, r, t, bo)

    def forward(self, x):
        if self.pad is not None:
            x = F.pad(x, self.pad)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class BatchNormOp(nn.Module):
    """Inference batch norm not right after a conv: a per-channel affine map (weights: parameters)."""

    def __init__(self, node, g: OnnxGraph):
        super().__init__()
        a = attrs(node)
        if a.get("training_mode", 0):
            raise UnsupportedOp(f"BatchNormalization node {node.name!r} in training mode")
        consts = [g.const(i) for i in node.input[1:5]]
        if any(c is None for c in consts):
            raise UnsupportedOp(f"BatchNormalization node {node.name!r}: statistics are computed, not constants")
        gamma, beta, mean, var = (np.asarray(c, np.float64) for c in consts)
        scale = gamma / np.sqrt(var + float(a.get("epsilon", 1e-5)))
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float32).reshape(1, -1, 1, 1), requires_grad=False)
        self.shift = nn.Parameter(torch.tensor(beta - mean * scale, dtype=torch.float32).reshape(1, -1, 1, 1),
                                  requires_grad=False)

    def forward(self, x):
        return x * self.scale + self.shift


class MaxPoolOp(nn.Module):
    def __init__(self, node, g: OnnxGraph):
        super().__init__()
        a = attrs(node)
        if len(node.output) > 1 and node.output[1] and g.consumers.get(node.output[1]):
            raise UnsupportedOp(f"MaxPool node {node.name!r}: its Indices output is used")
        self.kernel, self.stride, self.dilation, pads = _window(node, a, "MaxPool")
        self.ceil = bool(a.get("ceil_mode", 0))
        t, b, l, r = _spatial_pads(pads)
        fits = t == b and l == r and 2 * t <= self.kernel[0] and 2 * l <= self.kernel[1]
        self.padding = (t, l) if fits else (0, 0)
        self.pad = None if fits else (l, r, t, b)

    def forward(self, x):
        if self.pad is not None:
            x = F.pad(x, self.pad, value=-math.inf)
        return F.max_pool2d(x, self.kernel, self.stride, self.padding, self.dilation, self.ceil)


class AvgPoolOp(nn.Module):
    def __init__(self, node, g: OnnxGraph):
        super().__init__()
        a = attrs(node)
        self.kernel, self.stride, dil, pads = _window(node, a, "AveragePool")
        if dil != [1, 1]:
            raise UnsupportedOp(f"AveragePool node {node.name!r} with dilations {dil}")
        if a.get("ceil_mode", 0):
            raise UnsupportedOp(f"AveragePool node {node.name!r} with ceil_mode=1")
        t, b, l, r = _spatial_pads(pads)
        self.pad = (l, r, t, b) if any(pads) else None
        # ONNX's default excludes the padding from the divisor (torch's default includes it).
        self.exclude = self.pad is not None and not a.get("count_include_pad", 0)

    def forward(self, x):
        if self.pad is None:
            return F.avg_pool2d(x, self.kernel, self.stride)
        y = F.avg_pool2d(F.pad(x, self.pad), self.kernel, self.stride)
        if self.exclude:
            # Divide by the fraction of each window inside the image (a constant of the shape).
            ones = F.pad(torch.ones_like(x[:, :1]), self.pad)
            y = y / F.avg_pool2d(ones, self.kernel, self.stride)
        return y


class PadOp(nn.Module):
    def __init__(self, node, g: OnnxGraph):
        super().__init__()
        a = attrs(node)
        mode = a.get("mode", b"constant")
        self.mode = mode.decode() if isinstance(mode, bytes) else mode
        if len(node.input) > 1 and node.input[1]:
            pads = g.const(node.input[1])
            if pads is None:
                raise UnsupportedOp(f"Pad node {node.name!r}: pads are computed, not a constant")
            pads = [int(p) for p in np.asarray(pads).reshape(-1)]
            value = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            self.value = 0.0 if value is None else float(np.asarray(value).reshape(-1)[0])
            if len(node.input) > 3 and node.input[3]:
                axes = [int(v) % 4 for v in np.asarray(g.const(node.input[3])).reshape(-1)]
                full = [0] * 8
                for i, ax in enumerate(axes):
                    full[ax], full[ax + 4] = pads[i], pads[i + len(axes)]
                pads = full
        else:
            pads = [int(p) for p in a.get("pads", [])]
            self.value = float(a.get("value", 0.0))
        if len(pads) != 8:
            raise UnsupportedOp(f"Pad node {node.name!r}: pads {pads} (only 4-D tensors)")
        if any(p < 0 for p in pads):
            raise UnsupportedOp(f"Pad node {node.name!r}: negative pads {pads}")
        if self.mode not in ("constant", "reflect", "edge"):
            raise UnsupportedOp(f"Pad node {node.name!r}: mode {self.mode!r}")
        if self.mode != "constant" and (pads[0] or pads[1] or pads[4] or pads[5]):
            raise UnsupportedOp(f"Pad node {node.name!r}: {self.mode} padding of the first two axes")
        # F.pad order: last axis first, (begin, end) each.
        self.pad = tuple(v for ax in (3, 2, 1, 0) for v in (pads[ax], pads[ax + 4]))

    def forward(self, x):
        if self.mode == "constant":
            return F.pad(x, self.pad, value=self.value)
        if self.mode == "reflect":
            return F.pad(x, self.pad[:4], mode="reflect")
        # edge: repeat the border rows and columns (concatenations, whose gradient is plain slicing).
        left, right, top, bottom = self.pad[:4]
        x = torch.cat([x[:, :, :1].expand(-1, -1, top, -1), x, x[:, :, -1:].expand(-1, -1, bottom, -1)], dim=2)
        return torch.cat([x[..., :1].expand(-1, -1, -1, left), x, x[..., -1:].expand(-1, -1, -1, right)], dim=3)


class ElementwiseOp(nn.Module):
    """Add/Sub/Mul/Div/Sum with runtime tensors and constants (buffers: stored fp32)."""

    FUNCS = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div, "Sum": torch.add}

    def __init__(self, node, g: OnnxGraph):
        super().__init__()
        self.func = self.FUNCS[node.op_type]
        self.slots = []  # ("x", k) runtime input k, or ("c", buffer name)
        k = 0
        for i, name in enumerate(node.input):
            c = g.const(name)
            if c is None:
                self.slots.append(("x", k))
                k += 1
            else:
                self.register_buffer(f"const{i}", torch.tensor(np.asarray(c, np.float32)))
                self.slots.append(("c", f"const{i}"))

    def forward(self, *xs):
        vals = [xs[k] if kind == "x" else getattr(self, k) for kind, k in self.slots]
        out = vals[0]
        for v in vals[1:]:
            out = self.func(out, v)
        return out


class UnaryOp(nn.Module):
    def __init__(self, node, g: OnnxGraph):
        super().__init__()
        a, op = attrs(node), node.op_type
        self.op = op
        if op == "LeakyRelu":
            self.alpha = float(a.get("alpha", 0.01))
        elif op == "HardSigmoid":
            self.alpha, self.beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
        elif op == "Clip":
            if "min" in a or "max" in a:
                lo, hi = a.get("min"), a.get("max")
            else:
                lo = g.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
                hi = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
                for which, name in ((lo, 1), (hi, 2)):
                    if which is None and len(node.input) > name and node.input[name]:
                        raise UnsupportedOp(f"Clip node {node.name!r}: computed bounds")
            self.lo = None if lo is None else float(np.asarray(lo).reshape(-1)[0])
            self.hi = None if hi is None else float(np.asarray(hi).reshape(-1)[0])
        elif op == "PRelu":
            slope = g.const(node.input[1])
            if slope is None:
                raise UnsupportedOp(f"PRelu node {node.name!r}: computed slope")
            self.slope = nn.Parameter(torch.tensor(np.asarray(slope, np.float32)), requires_grad=False)
        elif op == "Cast":
            from onnx import TensorProto

            if a.get("to") not in (TensorProto.FLOAT,):
                raise UnsupportedOp(f"Cast node {node.name!r} to type {a.get('to')} (only float)")

    def forward(self, x):
        op = self.op
        if op == "Relu":
            return F.relu(x)
        if op == "LeakyRelu":
            return F.leaky_relu(x, self.alpha)
        if op == "PRelu":
            return torch.where(x >= 0, x, x * self.slope)
        if op == "Clip":
            return torch.clamp(x, self.lo, self.hi)
        if op == "Sigmoid":
            return torch.sigmoid(x)
        if op == "Tanh":
            return torch.tanh(x)
        if op == "HardSigmoid":
            return torch.clamp(self.alpha * x + self.beta, 0.0, 1.0)
        if op == "HardSwish":
            return x * torch.clamp(x / 6.0 + 0.5, 0.0, 1.0)
        if op == "GlobalAveragePool":
            return x.mean(dim=(2, 3), keepdim=True)
        return x  # Identity, Dropout (inference), Cast to float


class TransposeOp(nn.Module):
    def __init__(self, node, g: OnnxGraph):
        super().__init__()
        self.perm = tuple(attrs(node).get("perm") or (3, 2, 1, 0))

    def forward(self, x):
        return x.permute(self.perm)


class ConcatOp(nn.Module):
    def __init__(self, node, g: OnnxGraph):
        super().__init__()
        self.axis = int(attrs(node)["axis"])
        if any(g.const(i) is not None for i in node.input):
            raise UnsupportedOp(f"Concat node {node.name!r} with a constant input")

    def forward(self, *xs):
        return torch.cat(xs, dim=self.axis)


OP_MODULES = {
    "Conv": ConvOp, "BatchNormalization": BatchNormOp, "MaxPool": MaxPoolOp, "AveragePool": AvgPoolOp,
    "Pad": PadOp, "Transpose": TransposeOp, "Concat": ConcatOp,
    **{op: ElementwiseOp for op in ("Add", "Sub", "Mul", "Div", "Sum")},
    **{op: UnaryOp for op in ("Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish",
                              "Identity", "Dropout", "Cast", "GlobalAveragePool")},
}
assert set(OP_MODULES) == set(SUPPORTED)
