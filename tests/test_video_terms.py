"""The extra-term seam of both loops (terms.py): a temporal term through the Stylizer, checked against
Ruder et al.'s formula written here in float64 (not the graph's code), host loop against device loop,
several terms chained through the device loop's scratch buffers, and restart() on a new content image
with the sessions kept. Default model (a copy with temporal.onnx added where it lacks it), CPU, 64 px."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import EXAMPLES
from nst_ort import Config, OptimConfig, StyleInput, Stylizer
from nst_ort.media.images import load_image, resize
from nst_ort.engine.session import TrainStep
from nst_ort.engine.targets import chw
from nst_ort.engine.temporal import TemporalTerm
from video_clips import temporal_model  # noqa: F401 (fixture)

LOOPS = ["host", "device"]
W = 3e8  # lambda_t: large enough that its gradient is a good part of the total at the content image (checked)


def _config(model, loop, iterations=3, optimizer="lbfgs"):
    return Config(content=EXAMPLES / "chelsea_cat.jpg", styles=[StyleInput(EXAMPLES / "starry_night.jpg")],
                  size=64, device="cpu", threads=1, loop=loop, model=model,
                  optim=OptimConfig(name=optimizer, iterations=iterations))


def _target_mask(shape, seed=0):
    rng = np.random.default_rng(seed)
    _, _, h, w = shape
    target = rng.uniform(0, 1, (1, 3, h, w)).astype(np.float32)
    mask = rng.uniform(0, 1, (h, w)).astype(np.float32)
    mask[: h // 4] = 0.0  # disoccluded rows: no pull
    return target, mask


def _reference(x, target, mask, weight):
    """Ruder et al.'s short-term loss in our units and its gradient, float64: weight * mean over the
    3*H*W values of c (x - t)^2."""
    x, t = x.astype(np.float64), target.astype(np.float64)
    c = np.broadcast_to(mask.astype(np.float64)[None, None], x.shape)
    n = x.size
    return weight * float(np.sum(c * (x - t) ** 2)) / n, 2.0 * weight * c * (x - t) / n


@pytest.mark.parametrize("loop", LOOPS)
def test_temporal_term_enters_loss_and_gradient(temporal_model, loop):
    """With a temporal term: the record's `terms` and `loss` hold the formula's value at the image the
    step evaluated, and the first L-BFGS update (a steepest-descent step, x1 = x0 - t g) moves along
    the training graph's gradient plus the formula's gradient; not along the training gradient alone."""
    plain = Stylizer(_config(temporal_model, loop))
    plain_records = list(plain.run())
    s = Stylizer(_config(temporal_model, loop))
    size = s.targets.size_at(64)
    x0 = chw(s.targets.content_at(size))
    target, mask = _target_mask(x0.shape)
    s.set_terms([TemporalTerm(s.graphs).term(target, mask, W)])
    first = s.step()
    x1 = s.image().astype(np.float64)
    ref_loss, ref_grad = _reference(x0, target, mask, W)
    assert first.terms.keys() == {"temporal"}
    assert abs(first.terms["temporal"] - ref_loss) <= 1e-5 * ref_loss
    assert abs(first.loss - (plain_records[0].loss + ref_loss)) <= 1e-5 * first.loss
    assert first.style == plain_records[0].style  # the training graph's own terms are untouched

    *_, g_train = TrainStep(s.graphs, s.targets.feeds(size, x0), x0.shape)(x0)
    cos = lambda a, b: float(a.ravel() @ b.ravel() / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    step = x0.astype(np.float64) - x1
    assert 1 - cos(step, g_train.astype(np.float64) + ref_grad) < 1e-5
    assert 1 - cos(step, g_train.astype(np.float64)) > 1e-2  # the term's share is not negligible
    rest = [s.step() for _ in range(2)]
    assert all(r.terms["temporal"] > 0 and r.loss > r.terms["temporal"] for r in rest)
    with pytest.raises(Exception, match="before the first step"):
        s.set_terms([])


def test_host_and_device_loops_agree_with_three_terms(temporal_model):
    """Three terms chained (the device loop ping-pongs two scratch buffers, the last term writes the
    optimizer's buffer): both loops give the same losses and images up to rounding, each term's loss
    is the formula's, and the total is the sum."""
    out = {}
    for loop in LOOPS:
        s = Stylizer(_config(temporal_model, loop, iterations=4))
        shape = (1, 3, *s.targets.content_at(s.targets.size_at(64)).shape[:2])
        temporal = TemporalTerm(s.graphs)
        terms = [temporal.term(*_target_mask(shape, seed), W / (seed + 1)) for seed in range(3)]
        for i, t in enumerate(terms):
            t.name = f"t{i}"
        s.set_terms(terms)
        first = s.step()
        x0 = chw(s.targets.content_at(s.targets.size_at(64)))
        for i in range(3):
            ref, _ = _reference(x0, *_target_mask(shape, i), W / (i + 1))
            assert abs(first.terms[f"t{i}"] - ref) <= 1e-5 * ref
        records = [first, *(s.step() for _ in range(3))]
        out[loop] = (records, s.result())
    (hr, himg), (dr, dimg) = out["host"], out["device"]
    for a, b in zip(hr, dr):
        assert abs(a.loss - b.loss) <= 1e-4 * a.loss
        assert all(abs(a.terms[k] - b.terms[k]) <= 1e-4 * a.terms[k] for k in a.terms)
    assert np.abs(himg - dimg).max() < 2e-3


@pytest.mark.parametrize("loop", LOOPS)
def test_restart_on_a_new_content_keeps_sessions(temporal_model, loop):
    """restart(content) on a frame given as an array == a fresh Stylizer on that array, byte for byte,
    with the same ONNX sessions (no rebuild); a term given before restart does not carry over."""
    cat = resize(load_image(EXAMPLES / "chelsea_cat.jpg"), (64, 48))
    wave = resize(load_image(EXAMPLES / "great_wave.jpg"), (64, 48))
    fresh = Stylizer(_config(temporal_model, loop), content=wave)
    expected = [r.loss for r in fresh.run()]
    s = Stylizer(_config(temporal_model, loop, iterations=5), content=cat)
    sessions = (s.graphs.train, s.graphs.eval)
    s.set_terms([TemporalTerm(s.graphs).term(*_target_mask((1, 3, 48, 64)), W)])
    list(s.run())
    s.restart(content=wave, iterations=3)
    assert [r.loss for r in s.run()] == expected
    assert np.array_equal(s.result(), fresh.result())
    assert (s.graphs.train, s.graphs.eval) == sessions
