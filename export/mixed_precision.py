"""Mixed-precision training graph for GPUs: convolutions in fp16, everything else in fp32.

    python -m nst_ort_export.mixed_precision MODEL      # adds train_fp16.onnx to an artifact folder, in place
    nst-ort ... --precision fp16                # runs it (CUDA, TensorRT; see nst-ort check)

A graph pass over train.onnx (any backbone, any of its convolutions: forward and input-gradient Conv
and ConvTranspose alike). A whole-fp16 graph overflowed (NaN) in the Gram matrices on an H200
(shared/device/README.md): the Gram, the losses, the masks, the pooling and ReLU bookkeeping and the
gradient's accumulation stay fp32 here, and only the convolutions, where the FLOPs are, run in fp16.
Each convolution y = conv(x, w, b) becomes

    s   = 2^floor(log2(LIMIT / (W1 * max|x| + max|b|)))      a power of two per call (exact scaling)
    y   = Cast(conv(Cast(x * s, fp16), w16, Cast(b * s, fp16)), fp32) / s

W1 is the largest L1 norm of one output channel's kernel (computed here from the stored weights), so
every output and partial sum is at most LIMIT = 2^15 < 65504: no overflow for any input or loss
weight (the gradient's scale follows --style-weight; activations of 0..255 networks reach 1e4). Inputs
scaled to that range keep fp16's 11-bit relative precision down to 1e-7 of their maximum. The weights
are the stored fp16 values (weights.bin, shared with the other graphs; stored_as fp16), so the only
new rounding is of each convolution's input and output.

Deviation (from the fp32 graphs): the loss and gradient carry fp16 rounding of every convolution's
input and output; measured on the CPU by emulating it (`emulate=True`: the same graph with each fp16
convolution computed in fp32 on fp16-rounded values, as tensor cores accumulate): see
tests/test_providers.py and README "Providers". Cost not measured (no GPU here): per convolution one
max-reduction, a scaling and two casts of its input and output, elementwise passes that are cheap
beside a deep layer's convolution and not beside the first layers' at large sizes.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LIMIT = 2.0 ** 15
FILE = "train_fp16.onnx"
CONVS = ("Conv", "ConvTranspose")


def _constant_values(model: onnx.ModelProto, names: list[str], folder: Path) -> dict[str, np.ndarray]:
    """Values of tensors computed from initializers only (the convolutions' weights: stored fp16,
    cast, transposed, flipped), evaluated once with onnxruntime."""
    import onnxruntime as ort

    prod = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    need, stack = {}, list(names)
    while stack:
        t = stack.pop()
        if t in inits or not t:
            continue
        if t in graph_inputs:
            raise ValueError(f"convolution weight {t} depends on a graph input; cannot bound it at export time")
        node = prod[t]
        if id(node) not in need:
            need[id(node)] = node
            stack += list(node.input)
    nodes = [n for n in model.graph.node if id(n) in need]
    used = {i for n in nodes for i in n.input} | set(names)
    sub = helper.make_graph(nodes, "weights", [], [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names],
                            [i for i in model.graph.initializer if i.name in used])
    m = helper.make_model(sub, opset_imports=model.opset_import)
    m.ir_version = model.ir_version
    onnx.external_data_helper.load_external_data_for_model(m, str(folder))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(None, {})))


def _l1_bound(op: str, w: np.ndarray, group: int) -> float:
    """max over output channels of sum |w| over what feeds that channel (a bound on |y| / max|x|)."""
    w = np.abs(w.astype(np.float64))
    if op == "Conv":  # [C_out, C_in / g, kh, kw]
        return float(w.reshape(w.shape[0], -1).sum(1).max())
    c_in, c_out_g = w.shape[0], w.shape[1]  # ConvTranspose: [C_in, C_out / g, kh, kw]
    w = w.reshape(group, c_in // group, c_out_g, -1)
    return float(w.sum(axis=(1, 3)).max())


def mixed_precision(model: onnx.ModelProto, folder: Path, emulate: bool = False) -> onnx.ModelProto:
    """train.onnx -> the same function with every convolution in fp16 (emulate: in fp32 on
    fp16-rounded inputs, weights and outputs, for CPUs without fp16 convolutions)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    convs = [n for n in g.node if n.op_type in CONVS]
    weights = _constant_values(model, [n.input[1] for n in convs], folder)
    biases = _constant_values(model, [n.input[2] for n in convs if len(n.input) > 2 and n.input[2]], folder)
    out_nodes, new_inits = [], []
    c = lambda name, v: new_inits.append(numpy_helper.from_array(np.asarray(v, np.float32), name)) or name  # noqa: E731
    one, ln2inv = c("mp.one", 1.0), c("mp.inv_ln2", 1.0 / np.log(2.0))
    lo, hi, two = c("mp.exp_lo", -100.0), c("mp.exp_hi", 100.0), c("mp.two", 2.0)
    tiny = c("mp.tiny", 1e-30)
    half = TensorProto.FLOAT16
    for node in g.node:
        if node.op_type not in CONVS:
            out_nodes.append(node)
            continue
        p = f"mp.{node.name or node.output[0]}"
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        w1 = _l1_bound(node.op_type, weights[node.input[1]], group)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        bmax = float(np.abs(biases[bias]).max()) if bias else 0.0
        x, y = node.input[0], node.output[0]
        nodes = [
            # s = 2^clip(floor(log2(LIMIT / (W1 max|x| + max|b|))), -100, 100)
            helper.make_node("Abs", [x], [f"{p}.abs"]),
            helper.make_node("ReduceMax", [f"{p}.abs"], [f"{p}.max"], keepdims=0),
            helper.make_node("Mul", [f"{p}.max", c(f"{p}.w1", w1)], [f"{p}.bound0"]),
            helper.make_node("Add", [f"{p}.bound0", c(f"{p}.bmax", bmax)], [f"{p}.bound1"]),
            helper.make_node("Max", [f"{p}.bound1", tiny], [f"{p}.bound"]),
            helper.make_node("Div", [c(f"{p}.limit", LIMIT), f"{p}.bound"], [f"{p}.q"]),
            helper.make_node("Log", [f"{p}.q"], [f"{p}.lnq"]),
            helper.make_node("Mul", [f"{p}.lnq", ln2inv], [f"{p}.log2q"]),
            helper.make_node("Floor", [f"{p}.log2q"], [f"{p}.e0"]),
            helper.make_node("Clip", [f"{p}.e0", lo, hi], [f"{p}.e"]),
            helper.make_node("Pow", [two, f"{p}.e"], [f"{p}.s"]),
            helper.make_node("Div", [one, f"{p}.s"], [f"{p}.inv_s"]),
            helper.make_node("Mul", [x, f"{p}.s"], [f"{p}.xs"]),
            helper.make_node("Cast", [f"{p}.xs"], [f"{p}.x16"], to=half),
            helper.make_node("Cast", [node.input[1]], [f"{p}.w16"], to=half),  # folded at load: the stored fp16
        ]
        ins = [f"{p}.x16", f"{p}.w16"]
        if bias:
            nodes += [helper.make_node("Mul", [bias, f"{p}.s"], [f"{p}.bs"]),
                      helper.make_node("Cast", [f"{p}.bs"], [f"{p}.b16"], to=half)]
            ins.append(f"{p}.b16")
        if emulate:
            # fp16 values, fp32 arithmetic, output rounded to fp16: what tensor cores do.
            nodes += [helper.make_node("Cast", [i], [f"{i}.up"], to=TensorProto.FLOAT) for i in ins]
            conv = helper.make_node(node.op_type, [f"{i}.up" for i in ins], [f"{p}.y32"], name=node.name)
            conv.attribute.extend(node.attribute)
            nodes += [conv, helper.make_node("Cast", [f"{p}.y32"], [f"{p}.y16"], to=half)]
        else:
            conv = helper.make_node(node.op_type, ins, [f"{p}.y16"], name=node.name)
            conv.attribute.extend(node.attribute)
            nodes.append(conv)
        nodes += [helper.make_node("Cast", [f"{p}.y16"], [f"{p}.ys"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", [f"{p}.ys", f"{p}.inv_s"], [y])]
        out_nodes += nodes
    del g.node[:]
    g.node.extend(out_nodes)
    g.initializer.extend(new_inits)
    g.doc_string = (g.doc_string + "\n" if g.doc_string else "") + \
        "nst-ort mixed precision: convolutions in fp16 with a per-call power-of-two scale; the rest fp32"
    # Value infos of the convolutions' outputs, if any, still say float: they are (after the Mul).
    return model


def add_to_folder(folder: str | Path, emulate: bool = False) -> dict:
    """Write train_fp16.onnx next to train.onnx (sharing weights.bin) and list it in manifest.json.
    emulate: the CPU emulation instead (tests: onnxruntime's CPU provider and OpenVINO's CPU device
    compute fp16 convolutions in fp32 without the rounding, so only the emulation shows its effect)."""
    from .in_place import update_manifest

    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    train = folder / manifest["graphs"]["train"]["file"]
    model = onnx.load(str(train), load_external_data=False)
    out = mixed_precision(model, folder, emulate=emulate)
    tmp = folder / (FILE + ".tmp")
    onnx.save(out, str(tmp))  # the initializers keep their external-data entries: weights.bin, same offsets
    onnx.checker.check_model(str(tmp), full_check=True)
    tmp.replace(folder / FILE)

    def edit(m: dict) -> None:
        m["graphs"]["train_fp16"] = {**m["graphs"]["train"], "file": FILE,
                                     "precision": "convolutions fp16 (scaled per call), the rest fp32"}

    return update_manifest(folder, [FILE], edit)["graphs"]["train_fp16"]


if __name__ == "__main__":
    import sys

    from .in_place import main

    sys.exit(main("nst_ort_export.mixed_precision", "train_fp16.onnx (convolutions in fp16, for --precision fp16)", add_to_folder))
