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
  (winograd.py): 4x fewer multiplications in the channel-mixing GEMMs, measured
  1.45-2.4x per layer on AVX2; the transformed weights (36/9 of the layer's) cost memory.
- what the backward keeps from the forward: one bool per ReLU activation (pools: one bool per pool
  input and a float per window), the tapped features, the content differences. Conv inputs are not
  kept: only the image is differentiated, so no weight gradient is needed.

The steps, one function each: `forward` (keeping what the backward needs), `content_terms` and
`style_terms` (each loss and its gradient at the tapped layers), `backward` (through the body to the
preprocessed image), `tv_term` (on the RGB image itself). Everything else (the loss definition,
weights as inputs, dynamic sizes, the graph's names) is exactly the traced path's;
tests/test_gradient.py checks each term against float64 torch autograd.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .manual_ops import maxpool2, up2
from .network import Backbone, SequentialTaps
from .spec import GraphSpec
from .winograd import conv3x3_winograd, use_winograd

_TINY = float(torch.finfo(torch.float32).tiny)  # smallest normal float: a max-pool mask sentinel


# --- which networks this covers --------------------------------------------------------------------


class Step(NamedTuple):
    name: str  # the layer (conv1_1, relu1_1, pool1, ...)
    kind: str  # conv | relu | maxpool | avgpool
    module: nn.Module


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


def plan(backbone: Backbone) -> list[Step] | None:
    """The body's layers as steps, or None if this module cannot do the network."""
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
            steps.append(Step(name, "conv", m))
        elif isinstance(m, nn.ReLU):
            steps.append(Step(name, "relu", m))
        elif isinstance(m, nn.MaxPool2d) and _pool_ok(m):
            steps.append(Step(name, "maxpool", m))
        elif isinstance(m, nn.AvgPool2d) and _pool_ok(m):
            steps.append(Step(name, "avgpool", m))
        else:
            return None
    return steps


# --- the steps of the training function ----------------------------------------------------------


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


def pool_share(hit: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """1 / the number of maxima in each 2x2 window (ties share the gradient), from the hit mask."""
    count = F.avg_pool2d(hit.to(dtype), 2, 2) * 4.0
    return 1.0 / torch.clamp_min(count, 1.0)


def _add(grads: dict[str, torch.Tensor], name: str, g: torch.Tensor) -> None:
    grads[name] = g if name not in grads else grads[name] + g


def content_terms(feats: dict, layers: list[str], targets, clw, weight, grads: dict) -> torch.Tensor:
    """[nc] content losses mean((F - P)^2); adds weight * c_l * dL/dF to grads at each layer."""
    losses = []
    for j, (name, target) in enumerate(zip(layers, targets)):
        d = feats[name] - target
        losses.append((d * d).mean())
        _add(grads, name, d * (weight * clw[j] * (2.0 / d.numel())))
    return torch.stack(losses)


def style_terms(feats: dict, layers: list[str], targets, masks, slw, sw, weight, grads: dict) -> torch.Tensor:
    """[ns] style losses sum_k w_k mean((G_k - A_k)^2) with masked Grams G_k = (F m_k)(F m_k)^T / sum(m_k);
    adds weight * w_l * dL/dF to grads at each layer."""
    losses = []
    for j, (name, target) in enumerate(zip(layers, targets)):
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
        losses.append(_sum1(per_style * sw))
        # dL/dG_k = coef * w_k * (G_k - A_k); dL/dF = sum_k sym(dL/dG_k) / a_k @ (F * m_k^2)
        e = diff * (sw * (weight * slw[j] * (2.0 / (c * c)))).reshape(-1, 1, 1)
        e = (e + e.transpose(1, 2)) / area  # [K, C, C]
        k = e.shape[0]
        lhs = e.transpose(0, 1).reshape(c, k * c)  # [C, K*C]
        rhs = (f2 * (m * m)).reshape(k * c, hh * ww)  # [K*C, M]
        _add(grads, name, torch.mm(lhs, rhs).reshape(1, c, hh, ww))
    return torch.stack(losses)


def tv_term(image: torch.Tensor, weight) -> tuple[torch.Tensor, torch.Tensor]:
    """(tv, weight * dtv/dimage): mean squared neighbour differences of the RGB image itself.

    Not of the network's (for BGR networks channel-flipped) input: this gradient is added to the
    image gradient after the flip back (the two once disagreed: red and blue swapped)."""
    dx = image[:, :, :, 1:] - image[:, :, :, :-1]
    dy = image[:, :, 1:, :] - image[:, :, :-1, :]
    tv = (dx * dx).mean() + (dy * dy).mean()
    tvx = dx * (weight * 2.0 / dx.numel())
    tvy = dy * (weight * 2.0 / dy.numel())
    grad = (F.pad(tvx, (1, 0)) - F.pad(tvx, (0, 1))) + (F.pad(tvy, (0, 0, 1, 0)) - F.pad(tvy, (0, 0, 0, 1)))
    return tv, grad


class ManualGradient:
    """The training function for one network: (image, masks, clw, slw, sw, tw, *content_targets,
    *style_targets, *params) -> (total, content_losses, style_losses, tv, image_grad), in torch ops
    that make_fx traces as they are (no autograd)."""

    def __init__(self, backbone: Backbone, spec: GraphSpec, steps: list[Step], winograd: bool):
        self.spec, self.steps, self.winograd = spec, steps, winograd
        self.flip = backbone.module.pre.flip
        self.taps = set(spec.taps)
        # A ReLU whose output only feeds a max pool (not tapped) gets its mask from the pool's.
        self.fused_relu = {i for i, s in enumerate(steps) if s.kind == "relu" and s.name not in self.taps
                           and i + 1 < len(steps) and steps[i + 1].kind == "maxpool"}

    def conv(self, P: dict, name: str, m: nn.Conv2d, h: torch.Tensor) -> torch.Tensor:
        """One forward convolution (Winograd where the CPU graph takes it)."""
        w, b = P[f"body.{name}.weight"], P[f"body.{name}.bias"]
        if self.winograd and _wino_ok(m.in_channels, m.out_channels, m):
            return conv3x3_winograd(h, w, b, False)
        return F.conv2d(h, w, b, padding=tuple(m.padding))

    def forward(self, P: dict, h: torch.Tensor) -> tuple[dict, dict]:
        """The body on the preprocessed image: (tapped features, what the backward needs per step)."""
        saved: dict[int, tuple] = {}
        feats: dict[str, torch.Tensor] = {}
        for i, (name, kind, m) in enumerate(self.steps):
            if kind == "conv":
                h = self.conv(P, name, m, h)
            elif kind == "relu":
                h = torch.relu(h)
                if i not in self.fused_relu:
                    saved[i] = (h > 0,)
            elif kind == "maxpool":
                p = maxpool2(h)
                # after a ReLU, zero windows must get no gradient: compare with max(p, tiny) so
                # that y == 0 never matches (the ReLU's own mask is then not needed).
                ref = torch.clamp_min(p, _TINY) if (i - 1) in self.fused_relu else p
                hit = h == _pad_to(up2(ref), h.shape[2:], float("nan"))  # [1, C, H, W], kept as 1-byte bool
                saved[i] = (hit, pool_share(hit, h.dtype))
                h = p
            else:  # avgpool
                saved[i] = (h.shape[2:],)  # only the size: the backward needs no activation
                h = F.avg_pool2d(h, 2, 2)
            if name in self.taps:
                feats[name] = h
        return feats, saved

    def backward(self, P: dict, tap_grads: dict, saved: dict) -> torch.Tensor:
        """From the gradients at the tapped layers back through the body to its input."""
        g = None
        for i in reversed(range(len(self.steps))):
            name, kind, m = self.steps[i]
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
                elif self.winograd and _wino_ok(m.out_channels, m.in_channels, m):
                    g = conv3x3_winograd(g, w, None, True)
                else:
                    # A plain Conv on the transposed, flipped kernel (constant: ORT folds it at load).
                    wt = w.transpose(0, 1).flip(2, 3)
                    g = F.conv2d(g, wt, padding=(kh - 1 - m.padding[0], kw - 1 - m.padding[1]))
            elif kind == "relu":
                if i not in self.fused_relu:
                    g = g * saved[i][0].to(g.dtype)
            elif kind == "maxpool":
                hit, inv = saved[i]
                g = _pad_to(up2(g * inv), hit.shape[2:]) * hit.to(g.dtype)
            else:
                (hw,) = saved[i]
                g = _pad_to(up2(g * 0.25), hw)
        return g

    def __call__(self, image, masks, clw, slw, sw, tw, *rest):
        spec = self.spec
        nc, ns = len(spec.content), len(spec.style)
        ct, st, params = rest[:nc], rest[nc:nc + ns], rest[nc + ns:]
        P = dict(zip(spec.param_names, params))
        scale = P["pre.scale"]
        x = image.flip(1) if self.flip else image
        feats, saved = self.forward(P, x * scale + P["pre.shift"])
        tap_grads: dict[str, torch.Tensor] = {}
        closs = content_terms(feats, spec.content, ct, clw, tw[0], tap_grads)
        sloss = style_terms(feats, spec.style, st, masks, slw, sw, tw[1], tap_grads)
        tv, tv_grad = tv_term(image, tw[2])
        total = tw[0] * _sum1(closs * clw) + tw[1] * _sum1(sloss * slw) + tw[2] * tv
        g = self.backward(P, tap_grads, saved) * scale
        if self.flip:
            g = g.flip(1)
        return total, closs, sloss, tv, g + tv_grad


def make_train_fn(backbone: Backbone, spec: GraphSpec, winograd: bool = False):
    """The manual training function, or None if `plan` refuses the network.

    winograd: 3x3 convolutions where `use_winograd` says so as Winograd F(4x4, 3x3) (the CPU graph;
    on CUDA, cuDNN's own convolutions are the better choice)."""
    steps = plan(backbone)
    if steps is None:
        return None
    fn = ManualGradient(backbone, spec, steps, winograd)

    def train_fn(image, masks, clw, slw, sw, tw, *rest):
        return fn(image, masks, clw, slw, sw, tw, *rest)

    return train_fn
