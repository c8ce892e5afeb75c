"""Checks shared by the backbone and ONNX-import tests: an exported artifact against torch.

- `gradient_errors`: the training graph's loss and image gradient against the same loss in float64
  torch autograd on the backbone's module with the stored (fp16-rounded) weights; the error is
  max |g - g_ref| / max |g_ref|. The three terms are weighted to equal gradient norms, so none
  hides behind the others (tests/test_gradient.py checks each term alone, against a reference
  independent of the build step). Optionally torch's own float32 error on
  the same inputs: deep random networks at small sizes can be so ill-conditioned that float32 itself
  is far from float64 (random ResNet50, default layers, 67x75: ~6e-3), and then that is the yardstick.
- `finite_difference`: a directional derivative of the graph's loss against central differences.
- `stylize`: a short run of the real runtime (Stylizer, CPU provider) on an example pair.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np

from conftest import EXAMPLES


def feeds_for(art, rng, h: int, w: int) -> tuple[object, dict]:
    """Graphs on the CPU provider and training-graph feeds with targets from two random images."""
    from nst_ort.engine.providers import choose
    from nst_ort.engine.session import Graphs

    graphs = Graphs(art, choose("cpu", threads=1))
    xc = rng.random((h, w, 3), dtype=np.float32)
    xs = rng.random((h + 5, w - 3, 3), dtype=np.float32)
    fc, fs = graphs.features(xc), graphs.features(xs)
    feeds = {
        "style_masks": np.ones((1, 1, h, w), np.float32),
        "content_layer_weights": np.linspace(1.0, 0.5, len(art.content_layers)).astype(np.float32),
        "style_layer_weights": np.linspace(0.2, 0.1, len(art.style_layers)).astype(np.float32),
        "style_weights": np.ones(1, np.float32),
        "term_weights": np.array([1.0, 1e2, 10.0], np.float32),
    }
    for n in art.content_layers:
        feeds[f"content_target.{n}"] = fc[f"content.{n}"]
    for n in art.style_layers:
        feeds[f"style_target.{n}"] = fs[f"gram.{n}"][None]
    return graphs, feeds


def torch_loss(backbone, feeds: dict, x: np.ndarray, dtype=None) -> tuple[float, np.ndarray]:
    """The loss and image gradient in torch (float64 by default) with the stored fp16-rounded weights."""
    import torch

    from nst_ort_export.loss import content_loss, masked_grams, style_loss, tv_loss

    dtype = dtype or torch.float64
    net = copy.deepcopy(backbone.module).to(dtype)
    for p in net.parameters():
        p.data = p.data.half().to(dtype)
    taps = [layer.name for layer in backbone.layers]
    t = {k: torch.tensor(v, dtype=dtype) for k, v in feeds.items()}
    xx = torch.tensor(x, dtype=dtype, requires_grad=True)
    f = dict(zip(taps, net(xx)))
    c = torch.stack([content_loss(f[n], t[f"content_target.{n}"]) for n in backbone.content_layers])
    s = torch.stack([style_loss(masked_grams(f[n], t["style_masks"]), t[f"style_target.{n}"], t["style_weights"])
                     for n in backbone.style_layers])
    tw = t["term_weights"]
    total = tw[0] * (c * t["content_layer_weights"]).sum() + tw[1] * (s * t["style_layer_weights"]).sum() \
        + tw[2] * tv_loss(xx)
    total.backward()
    return float(total.detach()), xx.grad.double().numpy()


def balanced_term_weights(backbone, feeds: dict, x: np.ndarray) -> np.ndarray:
    """Term weights that give the content, style and TV gradients the same norm at x, so that each
    term shows in the total's error (a term whose weight makes it negligible proves nothing)."""
    norms = [np.linalg.norm(torch_loss(backbone, {**feeds, "term_weights": np.eye(3)[i]}, x)[1]) for i in range(3)]
    return np.array([1.0 / n for n in norms], np.float32)


@dataclasses.dataclass
class GradCheck:
    grad: float  # max |g - g64| / max |g64|, g from the training graph
    loss: float  # |L - L64| / |L64|
    grad_f32: float | None = None  # the same for torch's own float32 (how well-conditioned the case is)
    loss_f32: float | None = None
    images: int = 1  # random images tried (see gradient_errors)


def gradient_errors(backbone, path, sizes, seed: int = 0, float32: bool = False, accept=None,
                    tries: int = 5) -> dict[tuple[int, int], GradCheck]:
    """{(h, w): GradCheck}; with float32, also torch float32 against float64 on the same inputs.

    The loss is piecewise smooth: where a ReLU input sits within float32 rounding of zero, or a
    max-pool window's two largest values are that close, float32 and float64 may take different
    (equally valid) branches, and the gradients then differ by one unit's whole contribution over
    its receptive field (seen: 1e-2 of the largest entry, 1 image in ~7 for a random ResNet50 at
    67x75, with torch float32 itself as often as with the export). So each size tries up to
    `tries` random images and reports the first that `accept`s (default: gradient and loss within
    1e-4), or the last: a systematic error (a wrong crop, stride or padding) fails on every image.
    """
    import torch

    from nst_ort import Artifacts
    from nst_ort.engine.session import TrainStep

    accept = accept or (lambda r: r.grad <= 1e-4 and r.loss <= 1e-4)
    art = Artifacts(path)
    rng = np.random.default_rng(seed)
    out = {}
    term_weights = None
    for h, w in sizes:
        graphs, feeds = feeds_for(art, rng, h, w)
        if term_weights is None:
            term_weights = balanced_term_weights(backbone, feeds, rng.random((1, 3, h, w), dtype=np.float32))
        feeds["term_weights"] = term_weights
        for attempt in range(1, tries + 1):
            x = rng.random((1, 3, h, w), dtype=np.float32)
            total, _, _, _, grad = TrainStep(graphs, feeds, x.shape)(x)
            ref_total, ref = torch_loss(backbone, feeds, x)
            scale = np.abs(ref).max()
            r = GradCheck(float(np.abs(grad - ref).max() / scale), abs(total - ref_total) / abs(ref_total),
                          images=attempt)
            if float32:
                t32, g32 = torch_loss(backbone, feeds, x, torch.float32)
                r.grad_f32, r.loss_f32 = float(np.abs(g32 - ref).max() / scale), abs(t32 - ref_total) / abs(ref_total)
            if accept(r):
                break
        out[(h, w)] = r
    return out


def finite_difference(path, h: int = 67, w: int = 75, seed: int = 2, eps: float = 1e-2,
                      backbone=None) -> tuple[float, float]:
    """(central difference, analytic directional derivative) along half the gradient's direction,
    half a random one.

    Along a purely random direction the derivative is ~|g|/sqrt(pixels), which the float32 loss of
    a deep network resolves to a few percent only; with the gradient's own direction in the mix the
    difference quotient agrees to ~1e-4, and a gradient wrong by more than a few percent of its norm
    (in any direction) still shows. With the backbone, the terms are weighted to equal gradient norms.
    """
    from nst_ort import Artifacts
    from nst_ort.engine.session import TrainStep

    art = Artifacts(path)
    rng = np.random.default_rng(seed)
    graphs, feeds = feeds_for(art, rng, h, w)
    x = rng.random((1, 3, h, w), dtype=np.float32)
    if backbone is not None:
        feeds["term_weights"] = balanced_term_weights(backbone, feeds, x)
    step = TrainStep(graphs, feeds, x.shape)
    grad = step(x)[4].astype(np.float64)
    v = rng.standard_normal(x.shape)
    v = v / np.linalg.norm(v) + grad / np.linalg.norm(grad)
    v = (v / np.linalg.norm(v)).astype(np.float32)
    analytic = float((grad * v).sum())
    fd = (step(x + eps * v)[0] - step(x - eps * v)[0]) / (2 * eps)
    return fd, analytic


def stylize(path, size: int = 128, iterations: int = 4, content="chelsea_cat.jpg", style="starry_night.jpg"):
    """(records, result image) of a short run of the runtime on the CPU provider."""
    from nst_ort import Config, OptimConfig, StyleInput, Stylizer

    cfg = Config(content=EXAMPLES / content, styles=[StyleInput(EXAMPLES / style)], size=size,
                 optim=OptimConfig(iterations=iterations), model=path, device="cpu", threads=1)
    stylizer = Stylizer(cfg)
    records = list(stylizer.run())
    return records, stylizer.result()


def assert_stylizes(path, size: int = 128, iterations: int = 6) -> None:
    records, img = stylize(path, size, iterations)
    assert len(records) == iterations
    assert all(np.isfinite(r.loss) for r in records)
    # L-BFGS without line search may overshoot once on a random network before it settles.
    assert min(r.loss for r in records[1:]) < records[0].loss, [r.loss for r in records]
    assert max(img.shape[:2]) == size and img.shape[2] == 3
    assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0
