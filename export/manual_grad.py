"""A hand-derived image gradient for plain conv / ReLU / 2x2-pool stacks (every VGG).

`gradient.py` traces torch autograd, which is general but leaves work in the graph that ONNX
Runtime's CPU provider runs slowly (profiled at 256 px, VGG19: ~36% of a training step outside the
convolutions). For the sequential backbones that nearly everyone uses, this module writes the
backward pass out by hand in torch ops (traced by make_fx without autograd), choosing each op for
the runtime:

- ReLU backward: ``g * float(y > 0)`` with the mask kept as 1-byte bool from the forward pass (autograd's
  ``where(y <= 0, 0, g)`` is a broadcast Where, ~7x slower than a Mul on ORT's CPU provider).
- 2x2 max pool: MaxPool without indices (ORT's NCHWc kernel), and a backward from an equality mask
  ``y == up(p)`` instead of int64 indices scattered into zeros (MaxPool with indices + ConstantOfShape +
  ScatterElements). Ties share the gradient equally (an average subgradient; torch gives it all to the
  first maximum: both are valid subgradients and agree wherever the maximum is unique). A ReLU right
  before the pool folds into the same mask (zero windows get no gradient), so its own Mul disappears.
- Gram: one batched MatMul forward and ONE MatMul backward (``dF = sym(dG) F``; autograd does two and
  adds them), with no Expand / Transpose copies and no ReduceSum over a single style.
- squares as Mul, not Pow (Pow is not vectorized on ORT's CPU provider); TV gradient with Pads, no
  ScatterND.
- conv input gradients: a Conv on the transposed, flipped kernel (folded at load), except for few
  output channels (the image's 3), where ORT's NCHWc Conv pads to 8 and ConvTranspose is 2.2x faster.
- with winograd=True (train_cpu.onnx, the graph the CPU provider runs): 3x3 convolutions from >= 256
  channels to >= 128, forward and backward, as Winograd F(4x4, 3x3) in standard ops
  (`_onnx_conv3x3_winograd`): 4x fewer multiplications in the channel-mixing GEMMs, measured
  1.45-2.4x per layer on AVX2; the transformed weights (36/9 of the layer's) cost memory.
- what the backward keeps from the forward: one bool per ReLU activation (pools: one bool per pool
  input and a float per window), the tapped features, the content differences. Conv inputs are not
  kept: only the image is differentiated, so no weight gradient is needed.

Everything else (the loss definition, weights as inputs, dynamic sizes, the graph's names) is exactly
the traced path's; tests/test_gradient.py checks the result against float64 torch autograd.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnxscript import opset18 as op

from .backbones import Backbone, SequentialTaps

# --- custom ops, so that each lowers to exactly the ONNX we want ------------------------------------


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


TRANSLATIONS = {
    torch.ops.nst.up2.default: _onnx_up2,
    torch.ops.nst.maxpool2.default: _onnx_maxpool2,
    torch.ops.nst.conv3x3_winograd.default: _onnx_conv3x3_winograd,
}


def use_winograd(cin: int, cout: int) -> bool:
    """Where F(4x4, 3x3) (`_onnx_conv3x3_winograd`) beat ORT's direct NCHWc convolution on AVX2, 2
    threads, per layer shape (cin -> cout at h x w): 256->128 @64 2.1x, 256->256 @64 1.45x, @128 1.55x,
    256->512 @32 2.4x, 512->256 @32 1.8x, 512->512 @32 1.8x, @64 2.3x, @16 ~1.0x; slower at
    128->256 @64 (0.86x) and 128->128 @128 (0.95x): the input transform grows with cin."""
    return cin >= 256 and cout >= 128

_TINY = float(torch.finfo(torch.float32).tiny)  # smallest normal float: a max-pool mask sentinel


# --- which networks this covers --------------------------------------------------------------------


def _pool_ok(m: nn.Module) -> bool:
    k, s = m.kernel_size, m.stride
    k = tuple(k) if isinstance(k, (tuple, list)) else (k, k)
    s = tuple(s) if isinstance(s, (tuple, list)) else (s, s)
    p = m.padding if isinstance(m.padding, (tuple, list)) else (m.padding, m.padding)
    if k != (2, 2) or s != (2, 2) or tuple(p) != (0, 0) or m.ceil_mode:
        return False
    if isinstance(m, nn.MaxPool2d):
        d = m.dilation if isinstance(m.dilation, (tuple, list)) else (m.dilation, m.dilation)
        return tuple(d) == (1, 1) and not m.return_indices
    return m.divisor_override is None


def plan(backbone: Backbone) -> list[tuple[str, str, nn.Module]] | None:
    """[(name, kind, module)] of the body, or None if this module cannot do the network."""
    net = backbone.module
    if not isinstance(net, SequentialTaps):
        return None
    steps = []
    for name, m in net.body.named_children():
        if isinstance(m, nn.Conv2d):
            pad = m.padding if isinstance(m.padding, (tuple, list)) else None
            if (m.groups != 1 or tuple(m.stride) != (1, 1) or tuple(m.dilation) != (1, 1) or pad is None
                    or m.padding_mode != "zeros" or m.bias is None):
                return None
            steps.append((name, "conv", m))
        elif isinstance(m, nn.ReLU):
            steps.append((name, "relu", m))
        elif isinstance(m, nn.MaxPool2d) and _pool_ok(m):
            steps.append((name, "maxpool", m))
        elif isinstance(m, nn.AvgPool2d) and _pool_ok(m):
            steps.append((name, "avgpool", m))
        else:
            return None
    return steps


# --- the training function -------------------------------------------------------------------------


def _wino_ok(cin: int, cout: int, m: nn.Conv2d) -> bool:
    """cin -> cout: the channels of the convolution as run (the input gradient's are swapped)."""
    return tuple(m.kernel_size) == (3, 3) and tuple(m.padding) == (1, 1) and use_winograd(cin, cout)



def _sum1(v: torch.Tensor) -> torch.Tensor:
    """Sum of a 1-D tensor as ReduceSum(keepdims=1) + Squeeze: OpenVINO's execution provider does not
    take a ReduceSum with a 0-d output, and each of those left it on the CPU provider, splitting the
    graph into 8 OpenVINO subgraphs."""
    return v.sum(0, keepdim=True).squeeze(0)


def _pad_to(t: torch.Tensor, hw, value: float = 0.0) -> torch.Tensor:
    """Pad the bottom/right of t [.., 2h, 2w] up to hw = (H, W) (odd sizes: floor-mode pools)."""
    return F.pad(t, (0, hw[1] - t.shape[3], 0, hw[0] - t.shape[2]), value=value)


def make_train_fn(backbone: Backbone, spec, winograd: bool = False):
    """train_fn(image, masks, clw, slw, sw, tw, *content_targets, *style_targets, *params) ->
    (total, content_losses, style_losses, tv, image_grad), or None if `plan` refuses the network.

    winograd: 3x3 convolutions where `use_winograd` says so as Winograd F(4x4, 3x3) (the CPU graph;
    on CUDA, cuDNN's own convolutions are the better choice)."""
    steps = plan(backbone)
    if steps is None:
        return None
    net = backbone.module
    flip = net.pre.flip
    taps = set(spec.taps)
    nc, ns = len(spec.content), len(spec.style)
    # A ReLU whose output only feeds a max pool (not tapped) gets its mask from the pool's.
    fused_relu = {i for i, (name, kind, _) in enumerate(steps)
                  if kind == "relu" and name not in taps and i + 1 < len(steps) and steps[i + 1][1] == "maxpool"}

    def train_fn(image, masks, clw, slw, sw, tw, *rest):
        ct, st, params = rest[:nc], rest[nc:nc + ns], rest[nc + ns:]
        P = dict(zip(spec.param_names, params))
        scale = P["pre.scale"]
        x = image.flip(1) if flip else image
        h = x * scale + P["pre.shift"]

        # forward: keep only what the backward needs
        saved: dict[int, tuple] = {}
        feats: dict[str, torch.Tensor] = {}
        for i, (name, kind, m) in enumerate(steps):
            if kind == "conv":
                w, b = P[f"body.{name}.weight"], P[f"body.{name}.bias"]
                if winograd and _wino_ok(m.in_channels, m.out_channels, m):
                    h = conv3x3_winograd(h, w, b, False)
                else:
                    h = F.conv2d(h, w, b, padding=tuple(m.padding))
            elif kind == "relu":
                h = torch.relu(h)
                if i not in fused_relu:
                    saved[i] = (h > 0,)
            elif kind == "maxpool":
                p = maxpool2(h)
                # after a ReLU, zero windows must get no gradient: compare with max(p, tiny) so
                # that y == 0 never matches (the ReLU's own mask is then not needed).
                ref = torch.clamp_min(p, _TINY) if (i - 1) in fused_relu else p
                hit = h == _pad_to(up2(ref), h.shape[2:], float("nan"))  # [1, C, H, W], kept as 1-byte bool
                count = F.avg_pool2d(hit.to(h.dtype), 2, 2) * 4.0  # maxima per window (ties share)
                saved[i] = (hit, 1.0 / torch.clamp_min(count, 1.0))
                h = p
            else:  # avgpool
                saved[i] = (h.shape[2:],)  # only the size: the backward needs no activation
                h = F.avg_pool2d(h, 2, 2)
            if name in taps:
                feats[name] = h

        # loss terms and their gradients at the taps
        tap_grads: dict[str, torch.Tensor] = {}

        def add_grad(name, g):
            tap_grads[name] = g if name not in tap_grads else tap_grads[name] + g

        closses = []
        for j, (name, target) in enumerate(zip(spec.content, ct)):
            d = feats[name] - target
            closses.append((d * d).mean())
            add_grad(name, d * (tw[0] * clw[j] * (2.0 / d.numel())))
        slosses = []
        for j, (name, target) in enumerate(zip(spec.style, st)):
            f = feats[name]
            c, hh, ww = f.shape[1], f.shape[2], f.shape[3]
            m = F.interpolate(masks, size=(hh, ww), mode="bilinear", align_corners=False)
            m = m.reshape(m.shape[0], 1, hh * ww)  # [K, 1, M]
            f2 = f.reshape(1, c, hh * ww)
            fm = f2 * m  # [K, C, M]
            area = m.sum(dim=2, keepdim=True).clamp_min(1e-6)  # [K, 1, 1]
            grams = torch.bmm(fm, fm.transpose(1, 2)) / area  # [K, C, C]
            diff = grams - target
            per_style = (diff * diff).mean(dim=(1, 2))  # [K]
            slosses.append(_sum1(per_style * sw))
            # dL/dG_k = coef * w_k * (G_k - A_k); dL/dF = sum_k sym(dL/dG_k) / a_k @ (F * m_k^2)
            e = diff * (sw * (tw[1] * slw[j] * (2.0 / (c * c)))).reshape(-1, 1, 1)
            e = (e + e.transpose(1, 2)) / area  # [K, C, C]
            k = e.shape[0]
            lhs = e.transpose(0, 1).reshape(c, k * c)  # [C, K*C]
            rhs = (f2 * (m * m)).reshape(k * c, hh * ww)  # [K*C, M]
            add_grad(name, torch.mm(lhs, rhs).reshape(1, c, hh, ww))
        closs = torch.stack(closses)
        sloss = torch.stack(slosses)
        dx = x[:, :, :, 1:] - x[:, :, :, :-1]
        dy = x[:, :, 1:, :] - x[:, :, :-1, :]
        tv = (dx * dx).mean() + (dy * dy).mean()
        total = tw[0] * _sum1(closs * clw) + tw[1] * _sum1(sloss * slw) + tw[2] * tv

        # backward through the body
        g = None
        for i in reversed(range(len(steps))):
            name, kind, m = steps[i]
            if name in tap_grads:
                g = tap_grads[name] if g is None else g + tap_grads[name]
            if g is None:
                continue
            if kind == "conv":
                w = P[f"body.{name}.weight"]
                kh, kw = w.shape[2], w.shape[3]
                if w.shape[1] < 8:
                    # Few output channels (the image's 3): ORT's NCHWc Conv pads them to a block of 8,
                    # ConvTranspose (a GEMM and col2im) was 2.2x faster for VGG's first layer.
                    g = F.conv_transpose2d(g, w, padding=tuple(m.padding))
                elif winograd and _wino_ok(m.out_channels, m.in_channels, m):
                    g = conv3x3_winograd(g, w, None, True)
                else:
                    # A plain Conv on the transposed, flipped kernel (constant: ORT folds it at load).
                    wt = w.transpose(0, 1).flip(2, 3)
                    g = F.conv2d(g, wt, padding=(kh - 1 - m.padding[0], kw - 1 - m.padding[1]))
            elif kind == "relu":
                if i not in fused_relu:
                    g = g * saved[i][0].to(g.dtype)
            elif kind == "maxpool":
                hit, inv = saved[i]
                g = _pad_to(up2(g * inv), hit.shape[2:]) * hit.to(g.dtype)
            else:
                (hw,) = saved[i]
                g = _pad_to(up2(g * 0.25), hw)
        g = g * scale
        if flip:
            g = g.flip(1)
        # total variation
        tvx = dx * (tw[2] * 2.0 / dx.numel())
        tvy = dy * (tw[2] * 2.0 / dy.numel())
        g = g + (F.pad(tvx, (1, 0)) - F.pad(tvx, (0, 1))) + (F.pad(tvy, (0, 0, 1, 0)) - F.pad(tvy, (0, 0, 0, 1)))
        return total, closs, sloss, tv, g

    return train_fn
