"""An ONNX classifier as the interpreter reads it: nodes, constants, the image input, friendly layer
names, and the op categories it knows (see onnx_import.py for the whole import)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

# Ops whose outputs are offered as layers (they carry features, not layout or padding).
FEATURE_OPS = {"Conv", "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish",
               "MaxPool", "AveragePool", "BatchNormalization", "Add", "Sub", "Mul", "Div", "Sum", "Concat"}
ACTIVATIONS = {"Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish"}
LAYOUT_OPS = {"Transpose", "Pad", "Identity", "Dropout", "Cast", "GlobalAveragePool"}
SUPPORTED = sorted(FEATURE_OPS | LAYOUT_OPS)
IDENTITY = (0, 1, 2, 3)


class UnsupportedOp(ValueError):
    """A node on the way to a requested layer that the interpreter cannot run."""


# --- reading the file -----------------------------------------------------------------------------


def attrs(node) -> dict:
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
                    and attrs(node).get("to") == onnx.TensorProto.FLOAT:
                # Weights stored in fp16 and cast at load (nst-ort's own graphs do this): a constant.
                self.consts[node.output[0]] = self.consts[node.input[0]].astype(np.float32)
                continue
            if node.op_type == "Constant" and not node.domain:
                a = attrs(node)
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
                if n.op_type == "Transpose" and list(attrs(n).get("perm", [])) == [0, 3, 1, 2]:
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


