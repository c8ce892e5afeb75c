"""The temporal term's graph (export/temporal.py) against Ruder et al.'s formula and finite differences.

Reference, written from the paper (not from the graph): L = lambda_t * mean over the 3*H*W values of
c * (x - warp(prev))^2, with c broadcast over the channels; its gradient 2 lambda_t c (x - t) / (3HW).
"""
from __future__ import annotations

import json
import shutil
import types

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from nst_ort_export import temporal as tg  # noqa: E402

# lambda_t in our [0, 1] units: Ruder et al.'s default 1e3 is 256^2 * 1e3 here (export/temporal.py),
# so the weights users will run are large; 1 is checked too.
WEIGHTS = (1.0, 6.5e7)


def _session(elem_type=onnx.TensorProto.FLOAT):
    return ort.InferenceSession(tg.temporal(elem_type).SerializeToString(), providers=["CPUExecutionProvider"])


def _inputs(rng, h, w, dtype=np.float32):
    x = rng.uniform(0, 1, (1, 3, h, w))
    g = rng.normal(0, 1e-3, (1, 3, h, w))
    t = rng.uniform(0, 1, (1, 3, h, w))
    c = rng.uniform(0, 1, (1, 1, h, w))
    c[..., : h // 3, :] = 0.0  # disoccluded rows
    c[..., -2:, :] = 1.0
    return [a.astype(dtype) for a in (x, g, t, c)]


def _reference(x, g, t, c, weight):
    x, g, t, c = (a.astype(np.float64) for a in (x, g, t, c))
    cb = np.broadcast_to(c, x.shape)
    n = x.size  # 3*H*W
    loss = weight * np.sum(cb * (x - t) ** 2) / n
    return loss, g + 2.0 * weight * cb * (x - t) / n


@pytest.mark.parametrize("h,w", [(7, 9), (48, 64)])
@pytest.mark.parametrize("weight", WEIGHTS)
def test_temporal_graph_matches_the_formula(h, w, weight):
    sess = _session()
    x, g, t, c = _inputs(np.random.default_rng(h * w), h, w)
    loss, grad = sess.run(None, {"image": x, "image_grad_in": g, "target": t, "mask": c,
                                 "weight": np.array(weight, np.float32)})
    ref_loss, ref_grad = _reference(x, g, t, c, weight)
    assert loss.shape == () and grad.shape == x.shape
    assert abs(float(loss) - ref_loss) <= 1e-5 * abs(ref_loss)
    assert np.abs(grad - ref_grad).max() <= 1e-5 * np.abs(ref_grad).max()
    # disoccluded pixels (c = 0) get no pull: the gradient there is the training graph's alone
    np.testing.assert_array_equal(grad[..., : h // 3, :], g[..., : h // 3, :])


@pytest.mark.parametrize("elem_type", ["FLOAT", "DOUBLE"])
def test_temporal_gradient_matches_finite_differences(elem_type):
    """Central differences of the graph's own loss along random directions against its gradient
    (the loss is quadratic: central differences are exact up to rounding)."""
    dtype = np.float32 if elem_type == "FLOAT" else np.float64
    sess = _session(getattr(onnx.TensorProto, elem_type))
    rng = np.random.default_rng(3)
    x, _, t, c = _inputs(rng, 11, 13, dtype)
    zero = np.zeros_like(x)
    weight = 2.5

    def run(img):
        return sess.run(None, {"image": img, "image_grad_in": zero, "target": t, "mask": c,
                               "weight": np.array(weight, dtype)})

    _, grad = run(x)
    for _ in range(4):
        v = rng.normal(size=x.shape).astype(dtype)
        h = 1e-2
        fd = (float(run(x + h * v)[0]) - float(run(x - h * v)[0])) / (2 * h)
        analytic = float(np.sum(grad.astype(np.float64) * v))
        tol = 1e-3 if dtype == np.float32 else 1e-9
        assert abs(fd - analytic) <= tol * abs(analytic), (fd, analytic)


def test_temporal_graph_is_standard_ops_with_dynamic_size():
    model = tg.temporal()
    assert {op.domain for op in model.opset_import} == {""}
    assert all(node.domain in ("", "ai.onnx") for node in model.graph.node)
    assert [i.name for i in model.graph.input] == tg.INPUTS
    assert [o.name for o in model.graph.output] == tg.OUTPUTS
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim[2:]]
    assert dims == ["H", "W"]


def test_in_place_adder_and_runtime_term(tmp_path, default_model):
    """`python -m nst_ort_export.temporal MODEL` on an existing folder: the folder still verifies (sha256 of
    every file), and the runtime's TemporalTerm gives the reference's loss and gradient."""
    from nst_ort.engine.artifacts import Artifacts
    from nst_ort.base.errors import ArtifactError
    from nst_ort.engine.providers import choose
    from nst_ort.engine.temporal import TemporalTerm

    model = tmp_path / "vgg16"
    shutil.copytree(default_model, model)
    (model / "temporal.onnx").unlink(missing_ok=True)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest.pop("terms", None)
    manifest["files"].pop("temporal.onnx", None)
    (model / "manifest.json").write_text(json.dumps(manifest))
    placement = choose("cpu", None, 1)
    with pytest.raises(ArtifactError, match="python -m nst_ort_export.temporal"):
        TemporalTerm(types.SimpleNamespace(artifacts=Artifacts(model), placement=placement))

    import subprocess
    import sys

    from conftest import ROOT

    done = subprocess.run([sys.executable, "-m", "nst_ort_export.temporal", str(model)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    after = json.loads((model / "manifest.json").read_text())
    assert after["terms"]["temporal"]["file"] == "temporal.onnx"
    assert set(after["files"]) == set(manifest["files"]) | {"temporal.onnx"}
    art = Artifacts(model)  # verifies every sha256, the new file's included
    term = TemporalTerm(types.SimpleNamespace(artifacts=art, placement=placement))
    x, g, t, c = _inputs(np.random.default_rng(0), 20, 30)
    loss, grad = term(x, g, t, c[0, 0], WEIGHTS[1])
    ref_loss, ref_grad = _reference(x, g, t, c, WEIGHTS[1])
    assert abs(loss - ref_loss) <= 1e-5 * ref_loss
    assert np.abs(grad - ref_grad).max() <= 1e-5 * np.abs(ref_grad).max()
    # tampering with the new file is caught like any other
    (model / "temporal.onnx").write_bytes((model / "temporal.onnx").read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="sha256"):
        Artifacts(model)


def test_export_writes_the_temporal_graph(vgg16_random):
    """A fresh export lists temporal.onnx under "terms" with its sha256 (the session fixture's export,
    shared with the other tests: no export of its own)."""
    from nst_ort.engine.artifacts import Artifacts
    from nst_ort.engine.providers import choose
    from nst_ort.engine.temporal import TemporalTerm

    _, folder = vgg16_random
    art = Artifacts(folder)
    assert art.manifest["terms"]["temporal"]["file"] == "temporal.onnx" and "temporal.onnx" in art.manifest["files"]
    term = TemporalTerm(types.SimpleNamespace(artifacts=art, placement=choose("cpu", None, 1)))
    x, g, t, c = _inputs(np.random.default_rng(5), 16, 16)
    loss, _ = term(x, g, t, c, 1.0)
    assert abs(loss - _reference(x, g, t, c, 1.0)[0]) <= 1e-5 * loss
