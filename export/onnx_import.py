"""Import a CNN classifier from an ONNX file: list its layers (`inspect`), cut it and run it as a
torch module (`build_onnx_backbone`), checked against onnxruntime.

The parts: onnx_graph.py reads the file (nodes, constants, input layout, layer names), onnx_ops.py
has one torch module per supported ONNX op, onnx_plan.py picks the nodes a set of layers needs and
runs them (`OnnxTaps`). `OnnxTaps` is a small interpreter: it executes the ONNX nodes up to the tapped layers with torch
ops, the weights as `nn.Parameter`s, so the exporter (gradient.py) traces it like any other
backbone: `torch.func.functional_call` swaps the parameters, autograd gives the image gradient.

Supported ops (enough for VGG-, ResNet- and most plain CNN classifiers, in the layout tf2onnx or
torch.onnx write them): see `SUPPORTED`. Batch norms right after a conv are folded into it. The
input may be NCHW or NHWC (tf2onnx: a Transpose follows the input); `Transpose`s are tracked, so
every tapped layer comes out NCHW. Anything else on the way to a chosen layer is an
`UnsupportedOp` naming the op and the node; nodes after the deepest tap (the classifier head:
Flatten, Gemm, Softmax, ...) are never looked at.

`build_onnx_backbone` checks the interpreter against onnxruntime running the original file on a random
image (every tapped layer within 1e-4 of its largest value), so a misread attribute cannot slip
through silently.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from .network import Backbone, Layer, frozen, untuned_defaults
from .onnx_graph import ACTIVATIONS, FEATURE_OPS, IDENTITY, OnnxGraph
from .onnx_plan import OnnxTaps, Plan, Value, nchw_shape
from .preprocess import RAW, Preprocess
from .weights import sha256


class ImportCheckError(ValueError):
    """The interpreter disagrees with onnxruntime on the original model."""


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
        shape = nchw_shape(tuple(t.shape), v.perm)
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
    module = frozen(OnnxTaps(g, preprocess, plan, values))
    if verify:
        check_against_onnxruntime(g, module, values, preprocess)
    layers = [Layer(t, by_name[t].channels, by_name[t].stride) for t in taps]
    return Backbone(
        name=name or f"onnx:{Path(path).stem}",
        module=module,
        layers=layers,
        content_layers=content_layers,
        style_layers=style_layers,
        preprocess=preprocess,
        weights={"source": f"ONNX file {Path(path).name} ({info.producer}), cut after "
                 f"{max(taps, key=lambda t: by_name[t].index)}", "license": license, "file_sha256": sha256(Path(path))},
        defaults=untuned_defaults(content_layers, style_layers),
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

