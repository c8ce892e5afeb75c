"""Which ONNX nodes run for the chosen layers, in which layout, and the torch module that runs them
(`OnnxTaps`: image -> the tapped layers, NCHW)."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from .network import PreprocessLayer
from .onnx_graph import ACTIVATIONS, IDENTITY, SUPPORTED, OnnxGraph, UnsupportedOp, attrs
from .onnx_ops import OP_MODULES, ConvOp
from .preprocess import Preprocess

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
                        and all(g.const(i) is not None for i in n.input[1:5]) and not attrs(n).get("training_mode", 0)):
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
            p = tuple(attrs(n).get("perm") or (3, 2, 1, 0))
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


def nchw_shape(shape: tuple, perm: tuple) -> tuple:
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


