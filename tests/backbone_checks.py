"""Checks shared by the backbone and ONNX-import tests: an exported artifact against torch.

- `gradient_errors`: the training graph's loss and image gradient against the same loss in float64
  torch autograd on the backbone's module with the stored (fp16-rounded) weights; the error is
  max |g - g_ref| / max |g_ref| (as tests/test_gradient.py).
- `finite_difference`: a directional derivative of the graph's loss against central differences.
- `stylize`: a short run of the real runtime (Stylizer, CPU provider) on an example pair.
"""
from __future__ import annotations

import copy

import numpy as np

from conftest import EXAMPLES


def feeds_for(art, rng, h: int, w: int) -> tuple[object, dict]:
    """Graphs on the CPU provider and training-graph feeds with targets from two random images."""
    from nst_ort.providers import choose
    from nst_ort.session import Graphs

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


def torch_loss64(backbone, feeds: dict, x: np.ndarray) -> tuple[float, np.ndarray]:
    import torch

    from export.loss import content_loss, masked_grams, style_loss, tv_loss

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


def gradient_errors(backbone, path, sizes, seed: int = 0) -> dict[tuple[int, int], tuple[float, float]]:
    """{(h, w): (relative gradient error, relative loss error)}."""
    from nst_ort import Artifacts
    from nst_ort.session import TrainStep

    art = Artifacts(path)
    rng = np.random.default_rng(seed)
    out = {}
    for h, w in sizes:
        graphs, feeds = feeds_for(art, rng, h, w)
        x = rng.random((1, 3, h, w), dtype=np.float32)
        total, _, _, _, grad = TrainStep(graphs, feeds, x.shape)(x)
        ref_total, ref = torch_loss64(backbone, feeds, x)
        out[(h, w)] = (float(np.abs(grad - ref).max() / np.abs(ref).max()),
                       abs(total - ref_total) / abs(ref_total))
    return out


def finite_difference(path, h: int = 67, w: int = 75, seed: int = 2, eps: float = 1e-2) -> tuple[float, float]:
    """(central difference, analytic directional derivative) along half the gradient's direction,
    half a random one.

    Along a purely random direction the derivative is ~|g|/sqrt(pixels), which the float32 loss of
    a deep network resolves to a few percent only; with the gradient's own direction in the mix the
    difference quotient agrees to ~1e-4, and a gradient wrong by more than a few percent of its norm
    (in any direction) still shows.
    """
    from nst_ort import Artifacts
    from nst_ort.session import TrainStep

    art = Artifacts(path)
    rng = np.random.default_rng(seed)
    graphs, feeds = feeds_for(art, rng, h, w)
    x = rng.random((1, 3, h, w), dtype=np.float32)
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


def assert_stylizes(path, size: int = 128, iterations: int = 4) -> None:
    records, img = stylize(path, size, iterations)
    assert len(records) == iterations
    assert all(np.isfinite(r.loss) for r in records)
    assert records[-1].loss < records[0].loss, [r.loss for r in records]
    assert max(img.shape[:2]) == size and img.shape[2] == 3
    assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0
