"""Small ONNX CNN classifiers written with onnx.helper, in the shapes tf2onnx and torch.onnx produce.

`resnet_like` has every op the importer claims (NHWC input with layout Transposes, Pad in three
modes, strided and asymmetrically padded convs, foldable and standalone batch norms, residual
Adds, max and average pooling with padding, several activations, Concat, a tap that lives in NHWC)
and a classifier head the importer must never touch (GlobalAveragePool, Flatten, Gemm, Softmax).
"""
from __future__ import annotations

import numpy as np


def _model(nodes, inits, input_shape, outputs, output_shape, opset=13):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, "test-cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, output_shape) for o in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="nst-ort-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class _Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], {}

    def init(self, name, value):
        self.inits[name] = np.asarray(value)
        return name

    def node(self, op, inputs, name, n_out=1, **attrs):
        from onnx import helper

        outs = [f"{name}:0"] + [f"{name}:{k}" for k in range(1, n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0]

    def conv(self, x, cin, cout, k, name, stride=1, pads=None, bias=True, group=1):
        fan_in = cin // group * k * k
        w = self.init(f"{name}/W", (self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2 / fan_in)).astype(np.float32))
        ins = [x, w]
        if bias:
            ins.append(self.init(f"{name}/B", (0.1 * self.rng.standard_normal(cout)).astype(np.float32)))
        pads = [k // 2] * 4 if pads is None else pads
        return self.node("Conv", ins, f"{name}/Conv", kernel_shape=[k, k], strides=[stride, stride], pads=pads, group=group)

    def bn(self, x, c, name):
        r = self.rng
        ins = [x] + [self.init(f"{name}/{p}", v.astype(np.float32)) for p, v in (
            ("gamma", 0.5 + r.random(c)), ("beta", 0.1 * r.standard_normal(c)),
            ("mean", 0.1 * r.standard_normal(c)), ("var", 0.5 + r.random(c)))]
        return self.node("BatchNormalization", ins, f"{name}/BatchNorm", epsilon=1e-3)


def resnet_like(seed: int = 0):
    """NHWC input [N, H, W, 3]; returns the ModelProto."""
    b = _Builder(seed)
    x = b.node("Transpose", ["image"], "model/input_transpose", perm=[0, 3, 1, 2])
    x = b.node("Pad", [x, b.init("stem_pads", np.array([0, 0, 3, 3, 0, 0, 3, 3], np.int64))], "model/stem/zero_pad")
    x = b.conv(x, 3, 16, 7, "model/stem/conv", stride=2, pads=[0, 0, 0, 0], bias=False)
    x = b.bn(x, 16, "model/stem/bn")  # folded into the conv
    x = b.node("Relu", [x], "model/stem/Relu")
    x = b.node("MaxPool", [x], "model/stem/pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    # Residual block, identity shortcut.
    y = b.node("Relu", [b.bn(b.conv(x, 16, 16, 3, "model/block1/conv1"), 16, "model/block1/bn1")], "model/block1/relu1")
    y = b.bn(b.conv(y, 16, 16, 3, "model/block1/conv2", bias=False), 16, "model/block1/bn2")
    x = b.node("Relu", [b.node("Add", [y, x], "model/block1/add")], "model/block1/out")
    # Strided block with a 1x1/2 projection shortcut; an asymmetrically padded grouped conv.
    y = b.conv(x, 16, 32, 3, "model/block2/conv1", stride=2)
    y = b.node("LeakyRelu", [y], "model/block2/leaky", alpha=0.1)
    y = b.conv(y, 32, 32, 3, "model/block2/conv2", pads=[0, 1, 2, 1], group=4)
    s = b.conv(x, 16, 32, 1, "model/block2/shortcut", stride=2, pads=[0, 0, 0, 0])
    x = b.node("Relu", [b.node("Add", [y, s], "model/block2/add")], "model/block2/out")
    # Average pooling that excludes the padding (ONNX's default), a standalone batch norm.
    x = b.node("AveragePool", [x], "model/pool2", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    x = b.node("HardSwish", [b.bn(x, 32, "model/pool2_bn")], "model/pool2_act")
    # Reflect and edge padding, clipped activations, a gated branch, concatenation.
    r = b.node("Pad", [x, b.init("reflect_pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))], "model/block3/reflect",
               mode="reflect")
    r = b.node("Clip", [b.conv(r, 32, 32, 3, "model/block3/conv", pads=[0, 0, 0, 0]),
                        b.init("clip_min", np.array(0.0, np.float32)), b.init("clip_max", np.array(6.0, np.float32))],
               "model/block3/relu6")
    e = b.node("Pad", [x, b.init("edge_pads", np.array([0, 0, 2, 1, 0, 0, 0, 1], np.int64))], "model/block3/edge",
               mode="edge")
    e = b.conv(e, 32, 16, 3, "model/block3/gate_conv", pads=[0, 0, 0, 0])
    e = b.node("Mul", [e, b.node("Sigmoid", [e], "model/block3/gate_sigmoid")], "model/block3/swish")
    e = b.node("Mul", [b.node("Tanh", [e], "model/block3/tanh"), b.init("gain", np.array(2.0, np.float32))],
               "model/block3/scaled")
    x = b.node("Concat", [r, e], "model/block3/concat", axis=1)
    # A tap that lives in NHWC (after a layout transpose), then the head.
    t = b.node("Transpose", [x], "model/to_nhwc", perm=[0, 2, 3, 1])
    t = b.node("Relu", [t], "model/nhwc_relu")
    t = b.node("Transpose", [t], "model/to_nchw", perm=[0, 3, 1, 2])
    h = b.node("GlobalAveragePool", [t], "model/head/gap")
    h = b.node("Flatten", [h], "model/head/flatten")
    h = b.node("Gemm", [h, b.init("fc/W", b.rng.standard_normal((48, 10)).astype(np.float32) * 0.1),
                        b.init("fc/B", np.zeros(10, np.float32))], "model/head/fc")
    h = b.node("Softmax", [h], "model/head/softmax")
    return _model(b.nodes, b.inits, ["batch", 96, 96, 3], [h], ["batch", 10], opset=14)


def with_unsupported(seed: int = 0):
    """NCHW conv net with an LRN (AlexNet-style) between two convs."""
    b = _Builder(seed)
    x = b.node("Relu", [b.conv("image", 3, 8, 3, "net/conv1")], "net/relu1")
    x = b.node("LRN", [x], "net/lrn1", size=3)
    x = b.node("Relu", [b.conv(x, 8, 8, 3, "net/conv2")], "net/relu2")
    return _model(b.nodes, b.inits, ["N", 3, "H", "W"], [x], ["N", 8, "H", "W"])


def same_padded(seed: int = 0):
    """NCHW: Conv auto_pad=SAME_UPPER (stride 1), ceil-mode MaxPool, then a strided SAME Conv."""
    b = _Builder(seed)
    w1 = b.init("c1/W", (b.rng.standard_normal((8, 3, 3, 3)) * 0.5).astype(np.float32))
    x = b.node("Conv", ["image", w1], "net/same_conv", kernel_shape=[3, 3], auto_pad="SAME_UPPER")
    x = b.node("Relu", [x], "net/same_relu")
    x = b.node("MaxPool", [x], "net/ceil_pool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    w2 = b.init("c2/W", (b.rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32))
    x = b.node("Conv", [x, w2], "net/strided_same_conv", kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")
    x = b.node("Relu", [x], "net/strided_relu")
    return _model(b.nodes, b.inits, ["N", 3, "H", "W"], [x], ["N", 8, "h", "w"])
