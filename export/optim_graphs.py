"""Optimizer update graphs in standard ONNX ops, written at export time (the runtime has no `onnx`).

With them the runtime keeps the image, its gradient and the optimizer state in device buffers: per
iteration only scalars (and L-BFGS's 2 x history projection coefficients) cross to the host.
Everything is on flat float32 vectors of dynamic length n = 3*H*W, so one export serves every size.

Adam (`adam.onnx`): the update of nst_ort/engine/optim.py's Adam, bias corrections passed as scalars.

L-BFGS, in the compact form of Byrd, Nocedal & Schnabel (1994), so that a step is two matrix-vector
passes over the history instead of 2*history dependent dot/axpy pairs (the two-loop recursion; the
same result in exact arithmetic):

    H g = gamma g + S p - gamma Y w,  w = R^-1 S^T g,  p = R^-T ((D + gamma Y^T Y) w - gamma Y^T g)

with S, Y [k, n] the stored steps and gradient changes, R the upper triangle of S Y^T, D its diagonal.
The k x k algebra is done on the host in float64 (nst_ort/engine/device_loop.py); the graphs do the O(n) work:

- `lbfgs_pair.onnx`: g, g_prev, d, t -> s = t d, y = g - g_prev (written straight into a history slot),
  and the scalars y.s, y.y, g.g, |g|_1, max|g| (curvature test, scaling, first step, finiteness).
- `lbfgs_project.onnx`: S, Y [k, n], g, y -> S [g y], Y [g y] ([k, 2] each): the new column of R and
  row of Y^T Y come from the same pass as S^T g and Y^T g.
- `lbfgs_direction.onnx`: S, Y, g, x, a, b [1, k], c, t -> d = c g + a S + b Y, x + t d, g.d.
"""
from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

OPSET = 18
F = TensorProto.FLOAT


def _vec(name: str, dim: str = "n"):
    return helper.make_tensor_value_info(name, F, [dim])


def _scalar(name: str):
    return helper.make_tensor_value_info(name, F, [])


def _model(nodes, name, inputs, outputs, doc: str) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs)
    graph.doc_string = doc
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nst-ort-export")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _axes(nodes, name: str, axes: list[int]) -> str:
    if not any(name in n.output for n in nodes):
        nodes.append(helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [len(axes)], axes)))
    return name


def _dot(nodes, a, b, out):
    """out = a . b for 1-D a, b, as MatMul(a [n], b [n, 1]) -> [1] and Squeeze -> []: a MatMul of two
    1-D vectors (the plain dot) and any op with a 0-d output other than Squeeze are not taken by
    OpenVINO's execution provider, which then splits the graph and leaves those nodes on the CPU."""
    ax0, ax1 = _axes(nodes, "ax0", [0]), _axes(nodes, "ax1", [1])
    nodes += [helper.make_node("Unsqueeze", [b, ax1], [f"{out}_col"]),
              helper.make_node("MatMul", [a, f"{out}_col"], [f"{out}_1"]),
              helper.make_node("Squeeze", [f"{out}_1", ax0], [out])]


def _reduce(nodes, op, a, out):
    """out = op(a) over a 1-D a, kept as [1] and squeezed (see _dot)."""
    ax0 = _axes(nodes, "ax0", [0])
    nodes += [helper.make_node(op, [a, ax0], [f"{out}_1"], keepdims=1),  # opset 18: axes is an input
              helper.make_node("Squeeze", [f"{out}_1", ax0], [out])]


def adam() -> onnx.ModelProto:
    n = helper.make_node
    nodes = [
        n("Constant", [], ["one"], value=helper.make_tensor("one", F, [], [1.0])),
        n("Sub", ["one", "beta1"], ["omb1"]), n("Sub", ["one", "beta2"], ["omb2"]),
        n("Mul", ["beta1", "m1"], ["a1"]), n("Mul", ["omb1", "g"], ["a2"]), n("Add", ["a1", "a2"], ["m1_new"]),
        n("Mul", ["g", "g"], ["gg"]), n("Mul", ["beta2", "m2"], ["b1"]), n("Mul", ["omb2", "gg"], ["b2"]),
        n("Add", ["b1", "b2"], ["m2_new"]),
        n("Mul", ["m2_new", "c2"], ["vhat"]), n("Sqrt", ["vhat"], ["sv"]), n("Add", ["sv", "eps"], ["den"]),
        n("Mul", ["m1_new", "lr_c1"], ["num"]), n("Div", ["num", "den"], ["step"]), n("Sub", ["x", "step"], ["x_new"]),
    ]
    return _model(nodes, "adam",
                  [_vec("x"), _vec("g"), _vec("m1"), _vec("m2"), _scalar("lr_c1"), _scalar("beta1"),
                   _scalar("beta2"), _scalar("c2"), _scalar("eps")],
                  [_vec("x_new"), _vec("m1_new"), _vec("m2_new")],
                  "Adam: m1' = b1 m1 + (1-b1) g; m2' = b2 m2 + (1-b2) g^2; "
                  "x' = x - lr_c1 m1' / (sqrt(c2 m2') + eps), lr_c1 = lr / (1 - b1^k), c2 = 1 / (1 - b2^k)")


def lbfgs_pair() -> onnx.ModelProto:
    n = helper.make_node
    nodes = [n("Mul", ["d", "t"], ["s"]), n("Sub", ["g", "g_prev"], ["y"])]
    _dot(nodes, "y", "s", "ys")
    _dot(nodes, "y", "y", "yy")
    _dot(nodes, "g", "g", "gg")
    nodes.append(n("Abs", ["g"], ["ga"]))
    _reduce(nodes, "ReduceSum", "ga", "g_l1")
    _reduce(nodes, "ReduceMax", "ga", "g_max")
    return _model(nodes, "lbfgs_pair", [_vec("g"), _vec("g_prev"), _vec("d"), _scalar("t")],
                  [_vec("s"), _vec("y"), _scalar("ys"), _scalar("yy"), _scalar("gg"), _scalar("g_l1"), _scalar("g_max")],
                  "s = t d, y = g - g_prev and the scalars of one L-BFGS step")


def lbfgs_project() -> onnx.ModelProto:
    n = helper.make_node
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
    nodes = [
        n("Constant", [], ["ax0"], value=axes),
        n("Unsqueeze", ["g", "ax0"], ["g1"]), n("Unsqueeze", ["y", "ax0"], ["y1"]),
        n("Concat", ["g1", "y1"], ["gy"], axis=0),  # [2, n]
        n("Gemm", ["S", "gy"], ["SP"], transB=1),  # [k, 2]
        n("Gemm", ["Y", "gy"], ["YP"], transB=1),
    ]
    hist = lambda name: helper.make_tensor_value_info(name, F, ["k", "n"])  # noqa: E731
    return _model(nodes, "lbfgs_project", [hist("S"), hist("Y"), _vec("g"), _vec("y")],
                  [helper.make_tensor_value_info("SP", F, ["k", 2]), helper.make_tensor_value_info("YP", F, ["k", 2])],
                  "S [g y] and Y [g y]: one pass over the history")


def lbfgs_direction() -> onnx.ModelProto:
    n = helper.make_node
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [-1])
    nodes = [
        n("Constant", [], ["flat"], value=shape),
        n("MatMul", ["a", "S"], ["as"]), n("MatMul", ["b", "Y"], ["by"]),  # [1, n]
        n("Add", ["as", "by"], ["ab"]), n("Reshape", ["ab", "flat"], ["ab1"]),
        n("Mul", ["g", "c"], ["cg"]), n("Add", ["cg", "ab1"], ["d"]),
        n("Mul", ["d", "t"], ["td"]), n("Add", ["x", "td"], ["x_new"]),
    ]
    _dot(nodes, "g", "d", "gd")
    hist = lambda name: helper.make_tensor_value_info(name, F, ["k", "n"])  # noqa: E731
    coef = lambda name: helper.make_tensor_value_info(name, F, [1, "k"])  # noqa: E731
    return _model(nodes, "lbfgs_direction",
                  [hist("S"), hist("Y"), _vec("g"), _vec("x"), coef("a"), coef("b"), _scalar("c"), _scalar("t")],
                  [_vec("d"), _vec("x_new"), _scalar("gd")],
                  "d = c g + a S + b Y; x_new = x + t d; gd = g . d")


GRAPHS = {
    "adam.onnx": adam,
    "lbfgs_pair.onnx": lbfgs_pair,
    "lbfgs_project.onnx": lbfgs_project,
    "lbfgs_direction.onnx": lbfgs_direction,
}

# manifest["optimizers"]: optimizer -> {role: file}
MANIFEST = {
    "adam": {"update": "adam.onnx"},
    "lbfgs": {"pair": "lbfgs_pair.onnx", "project": "lbfgs_project.onnx", "direction": "lbfgs_direction.onnx"},
}


def write_optimizer_graphs(folder: str | Path) -> dict:
    """Write the optimizer graphs into `folder`; returns the manifest's "optimizers" entry."""
    folder = Path(folder)
    for name, build in GRAPHS.items():
        onnx.save(build(), str(folder / name))
    return {"format": 1, "vector": "float32 [n], n = 3*H*W (the image, flattened)", **MANIFEST}


def add_to_folder(folder: str | Path) -> dict:
    """Add (or refresh) the optimizer graphs of an existing artifact folder, in place: no re-export of
    the network is needed. Updates manifest.json's "optimizers" and "files" (sha256)."""

    from .in_place import update_manifest

    folder = Path(folder)
    optimizers = write_optimizer_graphs(folder)
    update_manifest(folder, list(GRAPHS), lambda m: m.__setitem__("optimizers", optimizers))
    return optimizers


if __name__ == "__main__":
    import sys

    from .in_place import main

    sys.exit(main("nst_ort_export.optim_graphs", "the optimizer graphs (adam.onnx, lbfgs_*.onnx)", add_to_folder))
