"""3x3 convolutions (and their input gradients) as Winograd F(4x4, 3x3) in standard ONNX ops: the
training graph the CPU provider runs (train_cpu.onnx) uses it from 256 channels up (`use_winograd`)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from onnxscript import opset18 as op


@torch.library.custom_op("nst::conv3x3_winograd", mutates_args=())
def conv3x3_winograd(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, transposed: bool) -> torch.Tensor:
    """3x3 / stride 1 / pad 1 convolution (+ bias), lowered as Winograd F(4x4, 3x3).
    transposed: the input gradient of the convolution with weight w (a conv with w^T, flipped)."""
    if transposed:
        w = w.transpose(0, 1).flip(2, 3)
    return F.conv2d(x, w, b, padding=1)


@conv3x3_winograd.register_fake
def _(x, w, b, transposed):
    return x.new_empty(x.shape[0], w.shape[1] if transposed else w.shape[0], x.shape[2], x.shape[3])


# Winograd F(4x4, 3x3) (Lavin & Gray 2016, points 0, +-1, +-2, inf): Y = A^T [(G g G^T) * (B^T d B)] A
# on 6x6 input tiles at stride 4. 2D forms as Kronecker products, row-major (i, j) -> 6 i + j.
_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)


def _const(a: np.ndarray):
    a = np.asarray(a, np.float32)
    return op.Reshape(op.Constant(value_floats=a.reshape(-1).tolist()), op.Constant(value_ints=list(a.shape)))


def _ints(*v):
    return op.Constant(value_ints=list(v))


def _onnx_conv3x3_winograd(x, w, b, transposed):
    """Standard ops only, five big steps:

    1. input transform B^T d B of every 6x6 tile (stride 4) as one grouped Conv: 36 fixed 6x6 filters
       per channel, stride 4, auto_pad SAME_UPPER (no Pad copy; the tile grid it gives starts one row
       and column early when H or W mod 4 is 1 or 2, which step 5 undoes) -> [1, 36 C, th, tw];
    2. Reshape + Transpose -> V [36, C, T];
    3. the channel mixing: 36 GEMMs, MatMul(U [36, K, C], V) -> [36, K, T];
    4. Transpose -> [K, 36, T], and the output transform A^T m A, the tiles' placement (depth to space)
       and the bias as one grouped ConvTranspose (36 fixed 4x4 filters per output channel, stride 4);
    5. Slice to [H, W].

    U = G g G^T depends only on the weights (initializers) and the filter banks are constants: ORT
    folds them at load time. For the input gradient the kernel's flip goes into the transform matrix
    and its transpose into the Einsum, so that folding makes no flipped copy. Per layer shape on AVX2
    (2 threads) this was 1.5-2.4x faster than a SpaceToDepth/Slice/Concat/MatMul/DepthToSpace form."""
    gg = np.kron(_G, _G)  # [36, 9], column 3 a + b for tap (a, b)
    if transposed:
        # w [C_fwd_out, C_fwd_in] and this conv maps C_fwd_out -> C_fwd_in; tap (a, b) of the flipped
        # kernel is tap (2 - a, 2 - b): column 8 - (3 a + b)
        c, k = int(w.shape[0]), int(w.shape[1])
        gg, equation = gg[:, ::-1], "ckab,xab->xkc"
    else:
        k, c = int(w.shape[0]), int(w.shape[1])
        equation = "kcab,xab->xkc"
    # One Einsum straight from the weights: folding it materializes U [36, K, C] and nothing else
    # (a Transpose/Reshape/MatMul chain left ~1 GB of intermediate initializers at load, VGG19).
    u = op.Einsum(w, _const(gg.reshape(36, 3, 3)), equation=equation)  # [36, K, C]
    bank_in = op.Reshape(op.Expand(_const(np.kron(_BT, _BT).reshape(1, 36, 1, 6, 6)), _ints(c, 36, 1, 6, 6)),
                         _ints(36 * c, 1, 6, 6))
    bank_out = op.Reshape(op.Expand(_const(np.kron(_AT, _AT).T.reshape(1, 36, 1, 4, 4)), _ints(k, 36, 1, 4, 4)),
                          _ints(36 * k, 1, 4, 4))
    hw = op.Slice(op.Shape(x), _ints(2), _ints(4))  # [H, W]
    tiles = op.Div(op.Add(hw, _ints(3, 3)), _ints(4, 4))  # ceil(hw / 4)
    v = op.Conv(x, bank_in, group=c, strides=[4, 4], kernel_shape=[6, 6], auto_pad="SAME_UPPER")
    v = op.Transpose(op.Reshape(v, _ints(c, 36, -1)), perm=[1, 0, 2])  # [36, C, T]
    m = op.Transpose(op.MatMul(u, v), perm=[1, 0, 2])  # [K, 36, T]
    m = op.Reshape(m, op.Concat(_ints(1, 36 * k), tiles, axis=0))
    y = op.ConvTranspose(m, bank_out, b, group=k, strides=[4, 4], kernel_shape=[4, 4]) if b is not None else \
        op.ConvTranspose(m, bank_out, group=k, strides=[4, 4], kernel_shape=[4, 4])  # [1, K, 4 th, 4 tw]
    # SAME_UPPER padded floor((4 t + 2 - H) / 2) in front: the first output row is at (4 t - H) // 2
    start = op.Div(op.Sub(op.Mul(tiles, _ints(4, 4)), hw), _ints(2, 2))
    return op.Slice(y, start, op.Add(start, hw), _ints(2, 3))


TRANSLATIONS = {torch.ops.nst.conv3x3_winograd.default: _onnx_conv3x3_winograd}


def use_winograd(cin: int, cout: int) -> bool:
    """Where F(4x4, 3x3) (`_onnx_conv3x3_winograd`) beat ORT's direct NCHWc convolution on AVX2, 2
    threads, per layer shape (cin -> cout at h x w): 256->128 @64 2.1x, 256->256 @64 1.45x, @128 1.55x,
    256->512 @32 2.4x, 512->256 @32 1.8x, 512->512 @32 1.8x, @64 2.3x, @16 ~1.0x; slower at
    128->256 @64 (0.86x) and 128->128 @128 (0.95x): the input transform grows with cin."""
    return cin >= 256 and cout >= 128
