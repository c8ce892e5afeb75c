"""Any onnxruntime, any provider: the graphs against a float64 reference, `nst-ort check`, provider
options, a short stylize, the mixed-precision graph.

Runs on whatever onnxruntime is installed, without torch unless marked: CI runs this file in the main
venv and again in torch-free venvs with the oldest onnxruntime pyproject.toml allows and with
onnxruntime-openvino (.ci/run). Every test that names a provider runs once per provider this build has
among CPU and OpenVINO (the ones this machine can execute).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest

import cpu_features
from conftest import DEFAULT_MODEL, EXAMPLES, ROOT, needs_torch, run_cli, without_keep_graphs, without_tile_graphs

CPU, OPENVINO = "CPUExecutionProvider", "OpenVINOExecutionProvider"
# NST_ORT_TEST_PROVIDERS (comma-separated) narrows the providers tested: .ci/run's OpenVINO venv tests
# only OpenVINO (the main venv tests the CPU provider).
_ONLY = [p for p in os.environ.get("NST_ORT_TEST_PROVIDERS", "").split(",") if p]
PROVIDERS = [p for p in (CPU, OPENVINO) if p in ort.get_available_providers() and (not _ONLY or p in _ONLY)]
REFERENCE = ROOT / "tests" / "data" / "vgg16_reference.npz"
needs_onnx = pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="needs the [export] extra (onnx)")
needs_openvino = pytest.mark.skipif(OPENVINO not in PROVIDERS, reason="needs onnxruntime-openvino")


def _placement(provider: str):
    from nst_ort.engine.providers import choose

    return choose("cpu") if provider == CPU else choose(provider=provider)


def _evaluate(sess, device: str, feeds: dict, x: np.ndarray):
    from nst_ort.engine.session import TrainStep

    return TrainStep(SimpleNamespace(train=sess, placement=SimpleNamespace(device=device)), feeds, x.shape)(x)


def _isolating(art, feeds: dict, term: str) -> dict:
    """The feeds with every weight 0 but the one of `term` ("content.relu4_2", "style.relu1_1", "tv")."""
    f = dict(feeds)
    f["content_layer_weights"] = np.array([term == f"content.{n}" for n in art.content_layers], np.float32)
    f["style_layer_weights"] = np.array([term == f"style.{n}" for n in art.style_layers], np.float32)
    f["term_weights"] = np.array([term.startswith("content"), term.startswith("style"), term == "tv"], np.float32)
    return f


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(REFERENCE))


def _reference_feeds(art, graphs, reference) -> tuple[dict, np.ndarray]:
    """The training graph's target feeds for the stored reference's images (targets from eval.onnx on
    `graphs`' provider, one unmasked style), and the reference's image x."""
    fc, fs = graphs.features(reference["content"]), graphs.features(reference["style"])
    x = reference["x"]
    h, w = x.shape[2:]
    feeds = {f"content_target.{n}": fc[f"content.{n}"] for n in art.content_layers}
    feeds.update({f"style_target.{n}": fs[f"gram.{n}"][None] for n in art.style_layers})
    feeds.update(style_masks=np.ones((1, 1, h, w), np.float32), style_weights=np.ones(1, np.float32))
    return feeds, x


# Each training graph on the CPU provider (train.onnx is what CUDA and OpenVINO run); on other
# providers the graph they run.
@pytest.mark.parametrize("provider,graph", [(p, g) for p in PROVIDERS for g in (("train", "train_cpu") if p == CPU
                                                                              else ("train",))])
def test_each_term_matches_the_float64_reference(provider, graph, reference):
    """Each loss term alone, at the weights users run (the default model), against float64 torch
    autograd written from the papers (tests/reference_vgg16.py; stored, so no torch here): loss within
    1e-4, gradient within 1e-4 of its largest entry (measured: at most 2.4e-5 and 4.7e-6, CPU provider
    1.32 and 1.18, OpenVINO 1.18 to 1.24). The targets come from eval.onnx on the same provider."""
    from nst_ort import Artifacts
    from nst_ort.engine.session import Graphs, make_session as _session

    art = Artifacts(DEFAULT_MODEL)
    placement = _placement(provider)
    graphs = Graphs(art, placement)
    feeds, x = _reference_feeds(art, graphs, reference)
    sess = _session(art.graph_path(graph), placement)
    terms = [k[5:] for k in reference if k.startswith("loss.")]
    assert len(terms) == len(art.content_layers) + len(art.style_layers) + 1
    for term in terms:
        total, _, _, _, grad = _evaluate(sess, placement.device, _isolating(art, feeds, term), x)
        ref = reference[f"grad.{term}"].astype(np.float64)
        loss_err = abs(total / float(reference[f"loss.{term}"]) - 1)
        grad_err = np.abs(grad - ref).max() / np.abs(ref).max()
        assert loss_err <= 1e-4, f"{provider} {graph} {term}: loss off by {loss_err:.1e}"
        assert grad_err <= 1e-4, f"{provider} {graph} {term}: gradient off by {grad_err:.1e} of its largest entry"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_check_passes_and_names_every_graph(provider, tmp_path):
    out = tmp_path / "check.json"
    r = run_cli(["check", "--provider", provider, "--time-size", "0", "--json", out])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("PASS: ")
    rep = json.loads(out.read_text())
    manifest = json.loads((DEFAULT_MODEL / "manifest.json").read_text())
    files = {g["file"] for role, g in manifest["graphs"].items() if role != "train_fp16"}
    files |= {f for roles in manifest["optimizers"].values() if isinstance(roles, dict) for f in roles.values()}
    tiles = {v["file"] for v in manifest["tiling"].values() if isinstance(v, dict) and "file" in v}
    # the tiled step and the tiled features, of both convolution variants, plain and keeping pass 1's arrays
    assert len(tiles) == 8
    checked = {row["graph"] for row in rep["rows"] if row["ok"]}
    assert files | tiles <= checked, (files | tiles) - checked
    kept = [row["what"] for row in rep["rows"] if row["graph"] == "tile_train_kept.onnx" and row["ok"]]
    assert [w.split(":")[0] for w in kept] == ["all 4 kept"] * 2 + ["2 of 4 kept"] * 2, kept  # loss, gradient
    assert {"L-BFGS, 3 steps: loss reached", "Adam, 3 steps: loss reached"} <= {row["what"] for row in rep["rows"] if row["ok"]}
    assert rep["provider"] == provider and rep["onnxruntime"] == ort.__version__ and rep["passed"]


@pytest.mark.skipif(bool(_ONLY), reason="check's own logic: tested in the main venv")
def test_check_fails_with_exit_10_and_says_where(tmp_path):
    """The verdict's logic: with the loss limit below any difference, the loss rows fail (and only
    they), the verdict says FAIL, the exit code is 10. (A provider fault: the perturbed-provider and
    OpenVINO bf16 tests below.)"""
    r = run_cli(["check", "--device", "cpu", "--time-size", "0"],
                prelude="import nst_ort.commands.check as _c; _c.LIMITS['fp32']['loss'] = -1.0; ")
    assert r.returncode == 10, r.stdout + r.stderr
    rows = [line for line in r.stdout.splitlines() if line.rstrip().endswith(" FAIL")]
    assert rows and all("loss and each term" in line for line in rows), r.stdout
    assert r.stdout.strip().splitlines()[-1].startswith("FAIL: ")


@pytest.mark.skipif(bool(_ONLY), reason="check's own logic: tested in the main venv")
def test_check_says_when_a_model_has_no_tile_graphs(tmp_path):
    """A model exported before the tile graphs: check says so in a row and passes (nothing to compare)."""
    bare = without_tile_graphs(DEFAULT_MODEL, tmp_path / "bare")
    r = run_cli(["check", "--model", bare, "--device", "cpu", "--time-size", "0", "--json", tmp_path / "c.json"])
    assert r.returncode == 0, r.stdout + r.stderr
    row = [line for line in r.stdout.splitlines() if line.startswith("tile graphs")]
    assert len(row) == 1 and "none in this model" in row[0] and "nst_ort_export.tiled" in row[0], r.stdout
    assert not any(row["graph"].startswith("tile_") for row in json.loads((tmp_path / "c.json").read_text())["rows"])


@pytest.mark.skipif(bool(_ONLY), reason="check's own logic: tested in the main venv")
def test_check_says_when_a_model_has_no_keep_graphs(tmp_path):
    """A model exported before the keep graphs: the plain tile rows as before, one row saying the keep
    graphs are missing, and a pass."""
    old = without_keep_graphs(DEFAULT_MODEL, tmp_path / "old")
    r = run_cli(["check", "--model", old, "--device", "cpu", "--time-size", "0", "--json", tmp_path / "c.json"])
    assert r.returncode == 0, r.stdout + r.stderr
    row = [line for line in r.stdout.splitlines() if line.startswith("tile keep graphs")]
    assert len(row) == 1 and "none in this model" in row[0] and "nst_ort_export.tiled" in row[0], r.stdout
    graphs = {row["graph"] for row in json.loads((tmp_path / "c.json").read_text())["rows"] if row["ok"]}
    assert {"tile_train.onnx", "tile_grams.onnx"} <= graphs and not any("_kept" in g or "_keep" in g for g in graphs)


def _failed_graphs(stdout: str) -> set[str]:
    return {line.split()[0] for line in stdout.splitlines() if line.rstrip().endswith("FAIL")}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_check_catches_a_provider_whose_numbers_are_off(provider, tmp_path):
    """A provider perturbed by 1e-2 relative (tests/perturbed_provider.py: the size of OpenVINO's
    bf16 errors), on any CPU: check fails with exit 10 at the eval graph, the training graph, the tile
    graphs of both families (all crops kept and half of them) and the device loop, and still passes
    the row that runs only on the unperturbed reference."""
    import perturbed_provider

    threads = ["--threads", "2"] if provider == CPU else []  # the reference has 1 thread: left as is
    r = run_cli(["check", "--provider", provider, "--time-size", "0", *threads],
                prelude=perturbed_provider.prelude(provider))
    assert r.returncode == 10, r.stdout + r.stderr
    assert {"eval.onnx", "train.onnx", "device", "tile_train.onnx", "tile_grams.onnx", "tile_train_kept.onnx",
            "tile_grams_keep.onnx"} <= _failed_graphs(r.stdout), r.stdout
    # both ways of keeping fail (their rows name how many crops were kept)
    kept = {line.split(":")[0].split(None, 1)[1] for line in r.stdout.splitlines()
            if line.startswith("tile_train_kept.onnx") and line.rstrip().endswith("FAIL")}
    assert kept == {"all 4 kept", "2 of 4 kept"}, r.stdout
    both_on_cpu = [line for line in r.stdout.splitlines() if "both on CPU" in line]
    assert not both_on_cpu or both_on_cpu[0].rstrip().endswith(" ok"), r.stdout
    assert r.stdout.strip().splitlines()[-1].startswith("FAIL: ")


@needs_openvino
@pytest.mark.skipif(cpu_features.bf16_missing() is not None,
                    reason=f"{cpu_features.bf16_missing()}: OpenVINO ignores the bf16 hint here (computes in f32); "
                           "test_check_catches_a_provider_whose_numbers_are_off proves the check's failure path")
def test_check_catches_openvino_in_bf16(tmp_path):
    """OpenVINO asked for bf16 inference (what it picks by itself on CPUs with AMX): check fails."""
    r = run_cli(["check", "--provider", OPENVINO, "--time-size", "0", "--provider-option",
                 'load_config={"CPU": {"INFERENCE_PRECISION_HINT": "bf16"}}'])
    assert r.returncode == 10, r.stdout + r.stderr
    assert {"eval.onnx", "train.onnx", "device"} <= _failed_graphs(r.stdout), r.stdout


@needs_openvino
def test_openvino_runs_the_whole_loop_in_fp32(tmp_path):
    """The device loop on OpenVINO (it failed with exit 5 before), in f32 (the hint is set), and its
    losses against the CPU provider's: Adam, a stable optimizer, within 1e-3 after 10 iterations;
    L-BFGS's first two iterations within 1e-5 (later its trajectory amplifies rounding: README)."""
    from nst_ort import Config, OptimConfig, StyleInput, Stylizer
    from nst_ort.engine.providers import choose

    opts = dict(choose(provider=OPENVINO).options)
    assert "f32" in opts.get("load_config", "") or opts.get("precision") == "FP32", opts

    def run(provider, optimizer, iterations=10):
        s = Stylizer(Config(content=EXAMPLES / "chelsea_cat.jpg", styles=[StyleInput(EXAMPLES / "great_wave.jpg")],
                            size=64, provider=provider, optim=OptimConfig(name=optimizer, iterations=iterations)))
        losses = [r.loss for r in s.run()]
        assert s.runtime()["loop"] == "device"
        return losses, s.runtime()

    ov, rt = run(OPENVINO, "adam")
    assert rt["providers"][0] == OPENVINO and rt["train_graph"] == "train.onnx"
    cpu, _ = run(CPU, "adam")
    np.testing.assert_allclose(ov, cpu, rtol=1e-3)
    ov, _ = run(OPENVINO, "lbfgs", 2)
    cpu, _ = run(CPU, "lbfgs", 2)
    np.testing.assert_allclose(ov[:2], cpu[:2], rtol=1e-5)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_short_stylize(provider, tmp_path):
    """The CLI end to end on each provider at 64 px: the device and host loops agree (Adam, 12
    iterations: within 1e-3), the style loss falls at least 5x, and the two pictures are the same."""
    from PIL import Image

    out = {}
    for loop in ("device", "host"):
        png, report = tmp_path / f"{loop}.png", tmp_path / f"{loop}.json"
        r = run_cli([EXAMPLES / "chelsea_cat.jpg", EXAMPLES / "great_wave.jpg", "-o", png, "--size", "64",
                     "--iterations", "12", "--optimizer", "adam", "--lr", "0.05", "--provider", provider,
                     "--loop", loop, "--report", report, "-q"])
        assert r.returncode == 0, r.stderr
        rep = json.loads(report.read_text())
        assert rep["runtime"]["providers"][0] == provider and rep["runtime"]["loop"] == loop
        out[loop] = (rep["records"], np.asarray(Image.open(png).convert("RGB"), np.float32))
    (dev, img_d), (host, img_h) = out["device"], out["host"]
    assert dev[0]["style"] / dev[-1]["style"] >= 5, (dev[0]["style"], dev[-1]["style"])
    np.testing.assert_allclose([r["loss"] for r in dev], [r["loss"] for r in host], rtol=1e-3)
    assert np.abs(img_d - img_h).mean() <= 1.0  # 0..255


def test_provider_option_errors_name_the_flag(tmp_path):
    base = [EXAMPLES / "chelsea_cat.jpg", EXAMPLES / "great_wave.jpg", "-o", tmp_path / "o.png", "--size", "32",
            "--iterations", "1", "-q"]
    r = run_cli([*base, "--provider-option", "noequals"])
    assert r.returncode == 2 and "--provider-option: expected KEY=VALUE, got 'noequals'" in r.stderr, r.stderr
    r = run_cli([*base, "--device", "cpu", "--provider-option", "a=b"])
    assert r.returncode == 2 and "--provider-option" in r.stderr and "--provider" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.png").exists()


@needs_openvino
def test_openvino_refusing_an_option_is_exit_2_with_its_reason(tmp_path):
    base = [EXAMPLES / "chelsea_cat.jpg", EXAMPLES / "great_wave.jpg", "-o", tmp_path / "o.png", "--size", "32",
            "--iterations", "1", "-q", "--provider", OPENVINO]
    for option, reason in (("bogus=1", "bogus"), ("precision=FP16", "FP32"), ("device_type=NPU", "NPU")):
        r = run_cli([*base, "--provider-option", option])
        assert r.returncode == 2, (option, r.stderr)
        line = r.stderr.strip().splitlines()
        assert len(line) == 1 and line[0].startswith(f"nst-ort: error: --provider-option: {OPENVINO} did not "
                                                     f"accept {option}") and reason in line[0], r.stderr
    r = run_cli([*base, "--provider-option", "num_of_threads=1", "--report", tmp_path / "r.json"])
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["runtime"]["provider_options"]["num_of_threads"] == "1"


def test_info_lists_this_onnxruntime():
    r = run_cli(["--info", "--json"])  # --info is for people since issue #10; --json for machines
    assert r.returncode == 0, r.stderr
    rt = json.loads(r.stdout)["runtime"]
    assert rt["onnxruntime"] == ort.__version__ and rt["providers"] == ort.get_available_providers()


def test_precision_fp16_without_the_graph_is_refused(tmp_path):
    r = run_cli([EXAMPLES / "chelsea_cat.jpg", EXAMPLES / "great_wave.jpg", "-o", tmp_path / "o.png", "--size", "32",
                 "--precision", "fp16", "--device", "cpu", "-q"])
    assert r.returncode == 2, r.stderr
    assert "--precision fp16" in r.stderr and "train_fp16.onnx" in r.stderr and len(r.stderr.splitlines()) == 1


@needs_onnx
def test_probe_model_is_the_onnx_it_claims():
    import onnx

    from nst_ort.engine.providers import PROBE_MODEL

    m = onnx.load_from_string(PROBE_MODEL)
    onnx.checker.check_model(m)
    assert [n.op_type for n in m.graph.node] == ["Relu"] and [i.name for i in m.graph.input] == ["x"]


# -- the mixed-precision graph (needs onnx for the pass) -------------------------------------------------

@pytest.fixture(scope="module")
def fp16_models(tmp_path_factory):
    """Copies of the default model with train_fp16.onnx: the real one and its CPU emulation."""
    if importlib.util.find_spec("onnx") is None:
        pytest.skip("needs onnx")
    from nst_ort_export.mixed_precision import add_to_folder

    out = {}
    for kind in ("real", "emulated"):
        folder = tmp_path_factory.mktemp(kind) / "vgg16"
        shutil.copytree(DEFAULT_MODEL, folder)
        add_to_folder(folder, emulate=kind == "emulated")
        out[kind] = folder
    return out


@needs_onnx
def test_mixed_graph_has_only_its_convolutions_in_fp16(fp16_models):
    import onnx

    m = onnx.load(str(fp16_models["real"] / "train_fp16.onnx"), load_external_data=False)
    casts = {n.output[0]: n for n in m.graph.node if n.op_type == "Cast"}
    convs = [n for n in m.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert len(convs) == 22
    for n in convs:
        assert all(casts[i].attribute[0].i == onnx.TensorProto.FLOAT16 for i in n.input if i), n.name
    fp16 = {c for c, n in casts.items() if n.attribute[0].i == onnx.TensorProto.FLOAT16}
    fp16 |= {n.output[0] for n in convs}
    users = [n for n in m.graph.node if set(n.input) & fp16]
    assert {n.op_type for n in users} == {"Conv", "ConvTranspose", "Cast"}  # Gram, loss, masks: fp32
    manifest = json.loads((fp16_models["real"] / "manifest.json").read_text())
    assert manifest["graphs"]["train_fp16"]["file"] == "train_fp16.onnx"


@needs_onnx
def test_mixed_graph_against_fp32_and_float64(fp16_models, reference):
    """fp16 rounding of every convolution (emulated on the CPU) against the fp32 graph and the float64
    reference: loss within 5e-3, gradient within 5e-2 relative L2 (measured 9e-4 and 3e-2: ReLU and
    max-pool decisions within fp16's 5e-4 of a tie flip); no overflow with every weight 1e8x (the
    per-call scale), where a plain fp16 cast of the gradient overflows."""
    from nst_ort import Artifacts
    from nst_ort.engine.providers import choose
    from nst_ort.engine.session import Graphs, make_session as _session

    art = Artifacts(fp16_models["emulated"])
    cpu = choose("cpu")
    graphs = Graphs(art, cpu)
    feeds, x = _reference_feeds(art, graphs, reference)
    fp16, fp32 = _session(art.graph_path("train_fp16"), cpu), _session(art.graph_path("train"), cpu)
    for term in [k[5:] for k in reference if k.startswith("loss.")]:
        f = _isolating(art, feeds, term)
        a, b = _evaluate(fp16, "cpu", f, x), _evaluate(fp32, "cpu", f, x)
        assert abs(a[0] / b[0] - 1) <= 5e-3, term
        rel = np.linalg.norm(a[4] - b[4]) / np.linalg.norm(b[4])
        assert rel <= 5e-2, f"{term}: fp16 gradient {rel:.1e} from fp32's"
        ref = reference[f"grad.{term}"]
        assert np.linalg.norm(a[4] - ref) / np.linalg.norm(ref) <= 5e-2, term
    f = dict(feeds, content_layer_weights=np.ones(len(art.content_layers), np.float32) * 1e8,
             style_layer_weights=np.ones(len(art.style_layers), np.float32) * 1e8)
    f["term_weights"] = np.array([1.0, 1.0, 1.0], np.float32)
    a, b = _evaluate(fp16, "cpu", f, x), _evaluate(fp32, "cpu", f, x)
    assert np.isfinite(a[4]).all() and np.abs(b[4]).max() > 65504
    assert np.linalg.norm(a[4] - b[4]) / np.linalg.norm(b[4]) <= 5e-2


@needs_onnx
def test_check_and_stylize_with_precision_fp16(fp16_models, tmp_path):
    """`check --precision fp16` compares train_fp16.onnx (emulated here) with train.onnx and passes
    with the fp16 limits; `--precision fp16` runs it (the report names it); the real fp16 graph loads
    and runs on the CPU provider too (which computes its fp16 convolutions in fp32)."""
    r = run_cli(["check", "--model", fp16_models["emulated"], "--device", "cpu", "--precision", "fp16",
                 "--time-size", "0"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "train_fp16.onnx" in r.stdout and "vs train.onnx" in r.stdout
    for kind in ("real", "emulated"):
        report = tmp_path / f"{kind}.json"
        r = run_cli([EXAMPLES / "chelsea_cat.jpg", EXAMPLES / "great_wave.jpg", "-o", tmp_path / f"{kind}.png",
                     "--size", "64", "--iterations", "5", "--precision", "fp16", "--device", "cpu",
                     "--model", fp16_models[kind], "--report", report, "-q"])
        assert r.returncode == 0, r.stderr
        assert json.loads(report.read_text())["runtime"]["train_graph"] == "train_fp16.onnx"


@needs_torch
@needs_onnx
def test_reference_data_is_current(reference):
    """tests/data/vgg16_reference.npz is what tests/reference_vgg16.py computes from the committed
    model's weights now (regenerate it with that script if the weights change)."""
    import reference_vgg16

    fresh = reference_vgg16.make(seeds=[int(reference["seed"])])
    for key, value in reference.items():
        np.testing.assert_allclose(fresh[key], value, rtol=1e-6, atol=0, err_msg=key)
