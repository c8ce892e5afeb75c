"""Import a CNN classifier from an ONNX file: list its layers, cut it, run it as a torch module.

`OnnxTaps` is a small interpreter: it executes the ONNX nodes up to the tapped layers with torch
ops, the weights as `nn.Parameter`s, so the exporter (gradient.py) traces it like any other
backbone: `torch.func.functional_call` swaps the parameters, autograd gives the image gradient.

Supported ops (enough for VGG-, ResNet- and most plain CNN classifiers, in the layout tf2onnx or
torch.onnx write them): see `SUPPORTED`. Batch norms right after a conv are folded into it. The
input may be NCHW or NHWC (tf2onnx: a Transpose follows the input); `Transpose`s are tracked, so
every tapped layer comes out NCHW. Anything else on the way to a chosen layer is an
`UnsupportedOp` naming the op and the node; nodes after the deepest tap (the classifier head:
Flatten, Gemm, Softmax, ...) are never looked at.

`import_onnx` checks the interpreter against onnxruntime running the original file on a random
image (every tapped layer within 1e-4 of its largest value), so a misread attribute cannot slip
through silently.
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbones import RAW, Backbone, Layer, Preprocess, PreprocessLayer, _sha256, fold_bn

# Ops whose outputs are offered as layers (they carry features, not layout or padding).
FEATURE_OPS = {"Conv", "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish",
               "MaxPool", "AveragePool", "BatchNormalization", "Add", "Sub", "Mul", "Div", "Sum", "Concat"}
ACTIVATIONS = {"Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish"}
LAYOUT_OPS = {"Transpose", "Pad", "Identity", "Dropout", "Cast", "GlobalAveragePool"}
SUPPORTED = sorted(FEATURE_OPS | LAYOUT_OPS)
IDENTITY = (0, 1, 2, 3)


class UnsupportedOp(ValueError):
    """A node on the way to a requested layer that the interpreter cannot run."""


class ImportCheckError(ValueError):
    """The interpreter disagrees with onnxruntime on the original model."""


# --- reading the file -----------------------------------------------------------------------------


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _sanitize(text: str) -> str:
    text = re.sub(r":\d+$", "", text)
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


class OnnxGraph:
    """The parts of a ModelProto the interpreter needs: nodes, constants, the image input."""

    def __init__(self, path: str | Path, input_layout: str | None = None):
        import onnx
        from onnx import numpy_helper

        self.path = Path(path)
        try:
            self.model = onnx.load(str(self.path))
        except Exception as e:  # noqa: BLE001 - onnx raises DecodeError, OSError, ...
            raise ValueError(f"{self.path}: not a readable ONNX file ({e})") from None
        g = self.model.graph
        if not g.node:
            raise ValueError(f"{self.path}: not an ONNX model (no graph nodes; empty or another kind of file)")
        self.opset = next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 0)
        try:
            self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        except Exception as e:  # noqa: BLE001 - external data missing or malformed tensors
            raise ValueError(f"{self.path}: cannot read its weights ({str(e).splitlines()[0][:200]})") from None
        self.nodes = []
        for node in g.node:
            if node.op_type == "Cast" and not node.domain and node.input[0] in self.consts \
                    and _attrs(node).get("to") == onnx.TensorProto.FLOAT:
                # Weights stored in fp16 and cast at load (nst-ort's own graphs do this): a constant.
                self.consts[node.output[0]] = self.consts[node.input[0]].astype(np.float32)
                continue
            if node.op_type == "Constant" and not node.domain:
                a = _attrs(node)
                if "value" in a:
                    self.consts[node.output[0]] = numpy_helper.to_array(a["value"])
                    continue
                for key in ("value_float", "value_int"):
                    if key in a:
                        self.consts[node.output[0]] = np.array(a[key])
                        break
                else:
                    raise UnsupportedOp(f"{self.path}: Constant node {node.name!r} with {sorted(a)}")
                continue
            self.nodes.append(node)
        inputs = [i for i in g.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ValueError(f"{self.path}: expected one image input, found {[i.name for i in inputs]}")
        self.input = inputs[0]
        self.input_name = self.input.name
        self.input_dims = [d.dim_value if d.HasField("dim_value") else None for d in self.input.type.tensor_type.shape.dim]
        if len(self.input_dims) != 4:
            raise ValueError(f"{self.path}: input {self.input_name!r} has rank {len(self.input_dims)}; "
                             "expected an image batch [N, C, H, W] or [N, H, W, C]")
        self.layout = input_layout or self._guess_layout()
        if self.layout not in ("nchw", "nhwc"):
            raise ValueError(f"input layout must be nchw or nhwc, not {self.layout!r}")
        channels = self.input_dims[1] if self.layout == "nchw" else self.input_dims[3]
        if channels not in (None, 3):
            raise ValueError(f"{self.path}: input has {channels} channels; nst-ort needs an RGB (3-channel) network")
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.names = self._friendly_names()

    def _guess_layout(self) -> str:
        d = self.input_dims
        if d[1] == 3 and d[3] != 3:
            return "nchw"
        if d[3] == 3 and d[1] != 3:
            return "nhwc"
        for n in self.nodes:
            if self.input_name in n.input:
                if n.op_type == "Transpose" and list(_attrs(n).get("perm", [])) == [0, 3, 1, 2]:
                    return "nhwc"
                if n.op_type == "Conv":
                    return "nchw"
        raise ValueError(f"{self.path}: cannot tell whether input {self.input_name!r} {d} is NCHW or NHWC; "
                         "pass --input-layout")

    def _friendly_names(self) -> dict[str, str]:
        """node -> short, unique [a-z0-9_] name: node name minus the common path prefix."""
        raw = {id(n): (n.name or n.output[0]) for n in self.nodes}
        feature = [raw[id(n)] for n in self.nodes if n.op_type in FEATURE_OPS and "/" in raw[id(n)]]
        prefix = ""
        if feature:
            parts = [r.split("/")[:-1] for r in feature]
            common = parts[0]
            for p in parts[1:]:
                k = 0
                while k < min(len(common), len(p)) and common[k] == p[k]:
                    k += 1
                common = common[:k]
            prefix = "/".join(common) + "/" if common else ""
        names, seen = {}, set()
        for i, n in enumerate(self.nodes):
            r = raw[id(n)]
            base = _sanitize(r[len(prefix):] if prefix and r.startswith(prefix) else r) or f"node{i}"
            name, k = base, 2
            while name in seen:
                name, k = f"{base}_{k}", k + 1
            seen.add(name)
            names[id(n)] = name
        return names

    def name_of(self, node) -> str:
        return self.names[id(node)]

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None


# --- ops ----------------------------------------------------------------------------------------------


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
        a = _attrs(node)
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
            eps = float(_attrs(bn).get("epsilon", 1e-5))
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
        a = _attrs(node)
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
        a = _attrs(node)
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
        a = _attrs(node)
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
        a = _attrs(node)
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
        a, op = _attrs(node), node.op_type
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
        self.perm = tuple(_attrs(node).get("perm") or (3, 2, 1, 0))

    def forward(self, x):
        return x.permute(self.perm)


class ConcatOp(nn.Module):
    def __init__(self, node, g: OnnxGraph):
        super().__init__()
        self.axis = int(_attrs(node)["axis"])
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


# --- the plan: which nodes run, in which layout -----------------------------------------------------


@dataclasses.dataclass
class Value:
    """One tensor the interpreter computes."""

    name: str  # ONNX tensor name
    layer: str  # user-facing name (of the node that makes it)
    op: str
    node: str  # ONNX node name
    perm: tuple | None  # this tensor == nchw.permute(perm); None if not a 4-D feature map
    after_conv: bool
    block_output: bool  # an activation right after a residual Add
    label: str = ""  # op as shown by inspect ("Conv+BN" for a folded pair)


@dataclasses.dataclass
class Step:
    key: str  # module name in OnnxTaps.nodes (the node's layer name)
    module: nn.Module  # runs the node (a Conv with its batch norm folded in, where there was one)
    inputs: list[str]  # runtime inputs (constants are inside the module)
    outputs: list[str]


class Plan:
    """The nodes to run for a set of wanted tensors (or all runnable ones), with layouts."""

    def __init__(self, g: OnnxGraph, wanted: list[str] | None = None):
        self.g = g
        # Batch norms directly after a conv (its only consumer) fold into it.
        fold: dict[int, object] = {}
        folded_bn: set[int] = set()
        for n in g.nodes:
            if n.op_type == "BatchNormalization" and n.input[0] in g.producer:
                conv = g.producer[n.input[0]]
                if (conv.op_type == "Conv" and len(g.consumers.get(n.input[0], [])) == 1
                        and all(g.const(i) is not None for i in n.input[1:5]) and not _attrs(n).get("training_mode", 0)):
                    fold[id(conv)] = n
                    folded_bn.add(id(n))
        nodes = [n for n in g.nodes if id(n) not in folded_bn]

        def outs(n):
            return [fold[id(n)].output[0]] if id(n) in fold else [o for o in n.output if o]

        def runtime_inputs(n):
            return [i for i in n.input if i and g.const(i) is None]

        needed = None
        if wanted is not None:
            producer = {o: n for n in nodes for o in outs(n)}
            needed, stack = set(), list(wanted)
            while stack:
                t = stack.pop()
                if t == g.input_name or t in g.consts:
                    continue
                if t not in producer:
                    raise ValueError(f"{g.path}: no tensor {t!r}")
                n = producer[t]
                if id(n) not in needed:
                    needed.add(id(n))
                    stack.extend(runtime_inputs(n))

        self.steps: list[Step] = []
        self.values: dict[str, Value] = {}
        self.stops: list[tuple[str, str]] = []  # (op, node name) of unsupported nodes met
        self.stop_reasons: dict[str, str] = {}  # node name -> why, for supported ops it cannot run
        input_perm = IDENTITY if g.layout == "nchw" else (0, 2, 3, 1)
        self.values[g.input_name] = Value(g.input_name, "input", "input", "", input_perm, False, False)
        for n in nodes:
            if needed is not None and id(n) not in needed:
                continue
            ins = runtime_inputs(n)
            if any(i not in self.values for i in ins):
                continue  # downstream of an unsupported node
            if not ins:
                # Computed from constants only (shape arithmetic, ...): not a layer, and not run here.
                self.stops.append((n.op_type, n.name))
                self.stop_reasons[n.name] = f"{n.op_type} node {n.name!r} computes a constant from constants"
                continue
            if n.domain not in ("", "ai.onnx") or n.op_type not in OP_MODULES:
                if needed is not None:
                    raise UnsupportedOp(
                        f"{g.path.name}: node {n.name!r} (op {n.domain + '.' if n.domain else ''}{n.op_type}) is on the "
                        f"way to the chosen layers and nst-ort cannot import it; supported ops: {', '.join(SUPPORTED)}. "
                        "Choose earlier layers (`nst-ort-export inspect`) or rewrite that part of the model")
                self.stops.append((n.op_type, n.name))
                continue
            try:
                self._add(n, fold.get(id(n)), outs(n), ins)
            except UnsupportedOp as e:
                if needed is not None:
                    raise
                self.stops.append((n.op_type, n.name))
                self.stop_reasons[n.name] = str(e)

    def _add(self, n, bn, outputs: list[str], ins: list[str]) -> None:
        g, op = self.g, n.op_type
        in_vals = [self.values[i] for i in ins]
        perms = {v.perm for v in in_vals}
        perm = perms.pop() if len(perms) == 1 else None
        if op in ("Conv", "MaxPool", "AveragePool", "BatchNormalization", "GlobalAveragePool"):
            if in_vals[0].perm != IDENTITY:
                raise UnsupportedOp(f"{g.path.name}: {op} node {n.name!r} runs on a tensor in layout {in_vals[0].perm} "
                                    "(not NCHW); this layout is not supported")
            perm = IDENTITY
        elif op == "Transpose":
            p = tuple(_attrs(n).get("perm") or (3, 2, 1, 0))
            perm = None if in_vals[0].perm is None or len(p) != 4 else tuple(in_vals[0].perm[i] for i in p)
        after_conv = op == "Conv" or any(v.after_conv for v in in_vals)
        block = False
        if op in ACTIVATIONS:
            src = g.producer.get(n.input[0])
            block = src is not None and src.op_type in ("Add", "Sum") and len(ins) == 1 \
                and sum(1 for i in src.input if g.const(i) is None) >= 2
        # Built here, so that an op the interpreter cannot run (attributes, computed weights) is
        # found by `inspect` as well as by the import.
        module = ConvOp(n, g, bn=bn) if bn is not None else OP_MODULES[op](n, g)
        layer = g.name_of(bn if bn is not None else n)
        for k, o in enumerate(outputs):
            self.values[o] = Value(o, layer if k == 0 else f"{layer}_{k}", op, (bn or n).name,
                                   perm if k == 0 else None, after_conv, block, op + ("+BN" if bn is not None else ""))
        self.steps.append(Step(g.name_of(n), module, ins, outputs))


def _nchw_shape(shape: tuple, perm: tuple) -> tuple:
    inv = [perm.index(i) for i in range(4)]
    return tuple(shape[i] for i in inv)


# --- the torch module --------------------------------------------------------------------------------


class OnnxTaps(nn.Module):
    """image (RGB [0, 1], NCHW) -> the tapped layers (NCHW), by running the ONNX nodes in torch."""

    def __init__(self, g: OnnxGraph, preprocess: Preprocess, plan: Plan, taps: list[Value]):
        super().__init__()
        self.pre = PreprocessLayer(preprocess)
        self.input_name = g.input_name
        self.input_perm = plan.values[g.input_name].perm
        self.nodes = nn.ModuleDict()
        self.plan = []
        for step in plan.steps:
            key = step.key if not hasattr(self.nodes, step.key) else f"node_{step.key}"
            self.nodes[key] = step.module
            self.plan.append((key, step.inputs, step.outputs))
        self.taps = [(v.name, None if v.perm == IDENTITY else [v.perm.index(i) for i in range(4)]) for v in taps]
        self.tap_values = list(taps)
        self.graph = g

    def values(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every computed tensor, in the model's own layouts."""
        x = self.pre(x)
        if self.input_perm != IDENTITY:
            x = x.permute(self.input_perm)
        env = {self.input_name: x}
        for key, ins, outs in self.plan:
            res = self.nodes[key](*[env[i] for i in ins])
            env.update(zip(outs, res if isinstance(res, tuple) else (res,)))
        return env

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        env = self.values(x)
        return [env[name] if inv is None else env[name].permute(inv) for name, inv in self.taps]


# --- inspect ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Candidate:
    index: int
    name: str
    op: str
    node: str
    tensor: str
    channels: int
    stride: int
    shape: tuple  # NCHW at the probe size
    block_output: bool


@dataclasses.dataclass
class Inspection:
    path: Path
    producer: str
    opset: int
    input_name: str
    input_dims: list
    layout: str
    probe: tuple[int, int]
    candidates: list[Candidate]
    stops: list[tuple[str, str]]
    content_layers: list[str]
    style_layers: list[str]
    stop_reasons: dict[str, str] = dataclasses.field(default_factory=dict)

    def by_name(self) -> dict[str, Candidate]:
        return {c.name: c for c in self.candidates}

    def format(self) -> str:
        dims = "x".join("?" if d is None else str(d) for d in self.input_dims)
        lines = [f"{self.path.name}: {self.producer}, opset {self.opset}",
                 f"input {self.input_name!r} [{dims}], {self.layout.upper()}"
                 + (" (layout Transposes are followed; layers come out NCHW)" if self.layout == "nhwc" else ""),
                 f"candidate layers (probed at {self.probe[0]}x{self.probe[1]}; stride = input size / layer size):",
                 f"  {'#':>3}  {'layer':<34} {'op':<18} {'channels':>8} {'stride':>6}  onnx node"]
        for c in self.candidates:
            mark = " *" if c.name in self.style_layers or c.name in self.content_layers else ""
            lines.append(f"  {c.index:>3}  {c.name:<34} {c.op:<18} {c.channels:>8} {c.stride:>6}  {c.node}{mark}")
        if self.stops:
            ops = sorted({op for op, _ in self.stops})
            lines.append(f"not importable (the network is cut before these): {', '.join(ops)} "
                         f"(first: node {self.stops[0][1]!r})")
            for node, why in list(self.stop_reasons.items())[:3]:
                lines.append(f"  {why}")
        lines.append("suggested (* above; nst-ort-export import uses these unless told otherwise):")
        lines.append(f"  --content-layers {','.join(self.content_layers)}")
        lines.append(f"  --style-layers {','.join(self.style_layers)}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "path": str(self.path), "producer": self.producer, "opset": self.opset,
            "input": {"name": self.input_name, "dims": self.input_dims, "layout": self.layout},
            "probe": list(self.probe),
            "candidates": [{**dataclasses.asdict(c), "shape": list(c.shape)} for c in self.candidates],
            "not_importable": [{"op": op, "node": name, **({"why": self.stop_reasons[name]} if name in self.stop_reasons
                                                          else {})} for op, name in self.stops],
            "content_layers": self.content_layers, "style_layers": self.style_layers,
        }


def probe_size(g: OnnxGraph) -> tuple[int, int]:
    h, w = (g.input_dims[2], g.input_dims[3]) if g.layout == "nchw" else (g.input_dims[1], g.input_dims[2])
    if h and w and h >= 32 and w >= 32:
        return h, w
    return 224, 224


def inspect(path: str | Path, input_layout: str | None = None, size: tuple[int, int] | None = None) -> Inspection:
    """Every candidate layer with channels and stride (from one forward pass), and suggested layers."""
    g = OnnxGraph(path, input_layout)
    plan = Plan(g)
    h, w = size or probe_size(g)
    values = [v for v in plan.values.values() if v.name != g.input_name]
    module = OnnxTaps(g, RAW, plan, [])
    with torch.no_grad():
        env = module.values(torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)))
    cands = []
    for v in values:
        t = env.get(v.name)
        if v.op not in FEATURE_OPS or v.perm is None or not v.after_conv or t is None or t.dim() != 4:
            continue
        shape = _nchw_shape(tuple(t.shape), v.perm)
        if shape[2] < 2 and shape[3] < 2:
            continue  # global pooling and beyond: no spatial structure left
        stride = 2 ** round(math.log2(max(h / shape[2], 1.0)))
        cands.append(Candidate(len(cands) + 1, v.layer, v.label, v.node, v.name, shape[1], stride, shape,
                               v.block_output))
    try:
        content, style = suggest_layers(cands)
    except ValueError as e:
        stop = f"; first unsupported node: {plan.stops[0][1]!r} ({plan.stops[0][0]})" if plan.stops else ""
        raise ValueError(f"{g.path}: {e}{stop}") from None
    producer = f"{g.model.producer_name or 'unknown producer'} {g.model.producer_version}".strip()
    return Inspection(g.path, producer, g.opset, g.input_name, g.input_dims, g.layout, (h, w), cands, plan.stops,
                      content, style, plan.stop_reasons)


def suggest_layers(cands: list[Candidate]) -> tuple[list[str], list[str]]:
    """Gatys-style defaults from the layer list alone.

    Style: one layer per resolution (stride), up to five: the first activation at each stride
    (VGG: relu1_1 ... relu5_1), or, where the stride has residual blocks, the last block output
    (ResNet: the stem ReLU, then each stage's output). Content: at the fourth style layer's
    stride, the second activation for plain networks (VGG: relu4_2), the block output for
    residual ones (ResNet: stage 3); other deep style layers follow as alternatives.
    """
    acts = [c for c in cands if c.op in ACTIVATIONS] or cands
    if not acts:
        raise ValueError("no candidate layers (is there a Conv before the first unsupported op?)")
    strides = sorted({c.stride for c in acts})
    style, content_pick = [], {}
    for s in strides[:5]:
        level = [c for c in acts if c.stride == s]
        blocks = [c for c in level if c.block_output]
        style.append((blocks[-1] if blocks else level[0]).name)
        content_pick[style[-1]] = blocks[-1].name if blocks else (level[1] if len(level) > 1 else level[0]).name
    anchor = style[min(3, len(style) - 1)]
    content = content_pick[anchor]
    return [content] + [s for s in style[2:] if s != content], style


# --- import -----------------------------------------------------------------------------------------


def build_onnx_backbone(
    path: str | Path,
    preprocess: Preprocess,
    content_layers: list[str] | None = None,
    style_layers: list[str] | None = None,
    input_layout: str | None = None,
    name: str | None = None,
    license: str = "as its provider says",
    verify: bool = True,
) -> Backbone:
    """An ONNX classifier, cut after its deepest chosen layer, as a Backbone for write_artifacts."""
    info = inspect(path, input_layout)
    by_name = info.by_name()
    # Layers may also be named by their ONNX node or tensor name.
    alias = {**{c.node: c.name for c in info.candidates}, **{c.tensor: c.name for c in info.candidates}}
    content_layers = [alias.get(n, n) for n in (content_layers or info.content_layers)]
    style_layers = [alias.get(n, n) for n in (style_layers or info.style_layers)]
    unknown = [n for n in content_layers + style_layers if n not in by_name]
    if unknown:
        # A layer past an op the interpreter lacks: name that op (Plan raises UnsupportedOp).
        g = OnnxGraph(path, input_layout)
        tensor = {**{g.name_of(n): n.output[0] for n in g.nodes}, **{n.name: n.output[0] for n in g.nodes if n.name},
                  **{o: o for n in g.nodes for o in n.output}}
        for n in unknown:
            if n in tensor:
                Plan(g, wanted=[tensor[n]])
        raise ValueError(f"{Path(path).name}: unknown layer(s) {', '.join(unknown)}; "
                         f"`nst-ort-export inspect {path}` lists them ({', '.join(list(by_name)[:6])}, ...)")
    taps = list(dict.fromkeys(content_layers + style_layers))
    g = OnnxGraph(path, input_layout)
    plan = Plan(g, wanted=[by_name[t].tensor for t in taps])
    values = [plan.values[by_name[t].tensor] for t in taps]
    for v, t in zip(values, taps):
        v.layer = t
    module = OnnxTaps(g, preprocess, plan, values).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    if verify:
        check_against_onnxruntime(g, module, values, preprocess)
    layers = [Layer(t, by_name[t].channels, by_name[t].stride) for t in taps]
    n_style = len(style_layers)
    return Backbone(
        name=name or f"onnx:{Path(path).stem}",
        module=module,
        layers=layers,
        content_layers=content_layers,
        style_layers=style_layers,
        preprocess=preprocess,
        weights={"source": f"ONNX file {Path(path).name} ({info.producer}), cut after "
                 f"{max(taps, key=lambda t: by_name[t].index)}", "license": license, "file_sha256": _sha256(Path(path))},
        defaults={
            "content_weight": 1.0, "style_weight": 1.0, "tv_weight": 0.0,
            "content_layer_weights": {n: (1.0 if i == 0 else 0.0) for i, n in enumerate(content_layers)},
            "style_layer_weights": {n: 1.0 / n_style for n in style_layers},
        },
    )


def preprocess_numpy(rgb: np.ndarray, p: Preprocess) -> np.ndarray:
    """[1, 3, H, W] RGB in [0, 1] -> what the ONNX model's input expects, in NCHW."""
    x = rgb[:, ::-1] if p.order == "BGR" else rgb
    mean = np.array(p.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.array(p.std, np.float32).reshape(1, 3, 1, 1)
    return ((x * p.scale - mean) / std).astype(np.float32)


def cut_model(model, outputs: list[str]):
    """A copy of `model` with only the nodes the given tensors need, those tensors as outputs."""
    import onnx
    from onnx import TensorProto, helper

    producer = {o: n for n in model.graph.node for o in n.output}
    keep, stack = set(), list(outputs)
    while stack:
        n = producer.get(stack.pop())
        if n is not None and id(n) not in keep:
            keep.add(id(n))
            stack.extend(i for i in n.input if i)
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    g = cut.graph
    nodes = [n for n in model.graph.node if id(n) in keep]
    used = {i for n in nodes for i in n.input}
    inits = [t for t in g.initializer if t.name in used]
    del g.node[:], g.output[:], g.value_info[:], g.initializer[:]
    g.node.extend(nodes)
    g.initializer.extend(inits)
    g.output.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs)
    return cut


def check_against_onnxruntime(g: OnnxGraph, module: OnnxTaps, values: list[Value], preprocess: Preprocess,
                              size: tuple[int, int] = (99, 131), tol: float = 1e-4) -> dict[str, float]:
    """Run the original graph (cut at the taps, any input size) in onnxruntime and compare."""
    import onnx
    import onnxruntime as ort

    model = cut_model(g.model, [v.name for v in values])
    # Any input size: the file may declare a fixed one (Keras: 224x224), the cut graph needs none.
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for k in (0, *((2, 3) if g.layout == "nchw" else (1, 2))):
        dims[k].Clear()
        dims[k].dim_param = f"d{k}"
    h, w = size
    rgb = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    x = preprocess_numpy(rgb, preprocess)
    if g.layout == "nhwc":
        x = x.transpose(0, 2, 3, 1)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    try:
        ref = sess.run([v.name for v in values], {g.input_name: np.ascontiguousarray(x)})
    except Exception as e:  # noqa: BLE001 - ORT raises bare Fail/RuntimeError
        raise ImportCheckError(f"{g.path.name}: onnxruntime cannot run the network cut at the chosen layers on a "
                               f"{w}x{h} image ({str(e).splitlines()[0][:300]}); nst-ort needs a network that "
                               "takes any image size (or use --no-check if you know it does)") from None
    with torch.no_grad():
        ours = [t.numpy() for t in module(torch.from_numpy(rgb))]
    errors = {}
    for v, r, o in zip(values, ref, ours):
        r = r if v.perm == IDENTITY else r.transpose([v.perm.index(i) for i in range(4)])
        if r.shape != o.shape:
            raise ImportCheckError(f"{g.path.name}: layer {v.layer}: onnxruntime gives shape {r.shape}, "
                                   f"the import {o.shape}")
        err = float(np.abs(r - o).max() / max(np.abs(r).max(), 1e-12))
        errors[v.layer] = err
        if err > tol:
            raise ImportCheckError(f"{g.path.name}: layer {v.layer} differs from onnxruntime by {err:.2e} of its largest "
                                   f"value (> {tol:g}); the import misreads some op on the way (please report)")
    return errors
