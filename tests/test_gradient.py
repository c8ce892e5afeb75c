"""The exported gradient against torch autograd in float64, and against finite differences."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from conftest import needs_torch

pytestmark = needs_torch

SIZES = [(64, 64), (67, 75), (100, 108)]  # 100x108: not divisible by 16 (four poolings)


def _feeds(art, rng, h, w, styles=1):
    from nst_ort.providers import choose
    from nst_ort.session import Graphs

    graphs = Graphs(art, choose("cpu"))
    xc = rng.random((h, w, 3), dtype=np.float32)
    xs = rng.random((h + 5, w - 3, 3), dtype=np.float32)
    fc, fs = graphs.features(xc), graphs.features(xs)
    feeds = {
        "style_masks": np.ones((styles, 1, h, w), np.float32),
        "content_layer_weights": np.linspace(1.0, 0.5, len(art.content_layers)).astype(np.float32),
        "style_layer_weights": np.linspace(0.2, 0.1, len(art.style_layers)).astype(np.float32),
        "style_weights": np.ones(styles, np.float32),
        "term_weights": np.array([1.0, 1e2, 10.0], np.float32),
    }
    for n in art.content_layers:
        feeds[f"content_target.{n}"] = fc[f"content.{n}"]
    for n in art.style_layers:
        feeds[f"style_target.{n}"] = np.repeat(fs[f"gram.{n}"][None], styles, 0)
    return graphs, feeds


def _torch_loss64(backbone, feeds, x):
    """The same loss in float64 torch with the stored (fp16-rounded) weights."""
    import torch

    from nst_ort_export.loss import content_loss, masked_grams, style_loss, tv_loss

    net = copy.deepcopy(backbone.module).double()
    for p in net.parameters():
        p.data = p.data.half().double()
    taps = [layer.name for layer in backbone.layers]
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in feeds.items()}
    xx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    f = dict(zip(taps, net(xx)))
    c = torch.stack([content_loss(f[n], t[f"content_target.{n}"]) for n in backbone.content_layers])
    s = torch.stack([style_loss(masked_grams(f[n], t["style_masks"]), t[f"style_target.{n}"], t["style_weights"])
                     for n in backbone.style_layers])
    tw = t["term_weights"]
    total = tw[0] * (c * t["content_layer_weights"]).sum() + tw[1] * (s * t["style_layer_weights"]).sum() \
        + tw[2] * tv_loss(xx)
    total.backward()
    return float(total.detach()), xx.grad.numpy()


@pytest.mark.parametrize("model", ["vgg16_random", "vgg19_avg_random"])
def test_gradient_matches_torch_float64(model, request):
    from nst_ort import Artifacts
    from nst_ort.session import TrainStep

    backbone, path = request.getfixturevalue(model)
    art = Artifacts(path)
    rng = np.random.default_rng(0)
    for h, w in SIZES:
        graphs, feeds = _feeds(art, rng, h, w)
        x = rng.random((1, 3, h, w), dtype=np.float32)
        step = TrainStep(graphs, feeds, x.shape)
        total, _, _, _, grad = step(x)
        ref_total, ref = _torch_loss64(backbone, feeds, x)
        err = np.abs(grad - ref).max() / np.abs(ref).max()
        assert err <= 1e-4, f"{model} {h}x{w}: gradient off by {err:.2e} of its largest entry"
        assert abs(total - ref_total) <= 1e-4 * abs(ref_total)


def test_masked_two_styles_gradient(vgg16_random):
    """K=2 styles with masks (spatial control) through the same graph."""
    from nst_ort import Artifacts
    from nst_ort.session import TrainStep

    backbone, path = vgg16_random
    art = Artifacts(path)
    rng = np.random.default_rng(1)
    h, w = 72, 80
    graphs, feeds = _feeds(art, rng, h, w, styles=2)
    m = np.zeros((2, 1, h, w), np.float32)
    m[0, :, :, : w // 2] = 1
    m[1, :, :, w // 2:] = 1
    feeds["style_masks"] = m
    feeds["style_weights"] = np.array([0.7, 0.3], np.float32)
    x = rng.random((1, 3, h, w), dtype=np.float32)
    _, _, _, _, grad = TrainStep(graphs, feeds, x.shape)(x)
    _, ref = _torch_loss64(backbone, feeds, x)
    assert np.abs(grad - ref).max() / np.abs(ref).max() <= 1e-4


def test_central_finite_difference(vgg16_random):
    from nst_ort import Artifacts
    from nst_ort.session import TrainStep

    _, path = vgg16_random
    art = Artifacts(path)
    rng = np.random.default_rng(2)
    h, w = 67, 75
    graphs, feeds = _feeds(art, rng, h, w)
    x = rng.random((1, 3, h, w), dtype=np.float32)
    step = TrainStep(graphs, feeds, x.shape)
    _, _, _, _, grad = step(x)
    v = rng.standard_normal(x.shape).astype(np.float32)
    v /= np.linalg.norm(v)
    analytic = float((grad.astype(np.float64) * v).sum())
    eps = 1e-2
    fd = (step(x + eps * v)[0] - step(x - eps * v)[0]) / (2 * eps)
    assert abs(fd - analytic) <= 1e-2 * abs(analytic), (fd, analytic)
