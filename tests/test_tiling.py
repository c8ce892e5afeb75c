"""The tiled loss and gradient (nst_ort/engine/tiling.py, export/tiled.py) against the untiled graphs, which
tests/test_gradient.py and tests/test_providers.py check against float64 torch: equal within 1e-4
relative L2 at sizes that are not multiples of 16, with masks and two styles, tiles smaller than the
halo, tiles at every border and corner, on both training graphs (train.onnx and train_cpu.onnx), with
both families of tile graphs (pass 2 running the forward again; pass 1 keeping its activations for all,
one or some of the crops)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import DEFAULT_MODEL, needs_torch, without_keep_graphs, without_tile_graphs
from nst_ort.engine import contract
from nst_ort.engine.artifacts import Artifacts
from nst_ort.base.errors import UsageError
from nst_ort.engine.providers import choose
from nst_ort.engine.session import Graphs, TrainStep
from nst_ort.engine.tiling import Layout, TiledGraphs, TiledTrainStep, resize_bilinear, tiled_features

TOL = 1e-4


def rel(u, v) -> float:
    u, v = np.asarray(u, np.float64).ravel(), np.asarray(v, np.float64).ravel()
    return float(np.linalg.norm(u - v) / np.linalg.norm(v))


@pytest.fixture(scope="module")
def artifacts():
    return Artifacts(DEFAULT_MODEL)


@pytest.fixture(scope="module", params=["train_cpu", "train"])
def families(request, artifacts):
    """(untiled Graphs, {family: TiledGraphs}) on the same training graph variant; families "again"
    (tile_grams + tile_train: pass 2 runs the forward again) and "keep" (tile_grams_keep +
    tile_train_kept)."""
    mp = pytest.MonkeyPatch()
    if request.param == "train":
        mp.setenv("NST_ORT_TRAIN_GRAPH", "train")
    placement = choose("cpu", threads=2)
    g = Graphs(artifacts, placement)
    tiled = {"again": TiledGraphs(artifacts, placement), "keep": TiledGraphs(artifacts, placement, keep_graphs=True)}
    mp.undo()
    assert g.train_path.name == f"{request.param}.onnx"
    for family, tg in tiled.items():
        assert tg.variant == ("cpu" if request.param == "train_cpu" else "plain")
        assert tg.keeps is (family == "keep")
    return g, tiled


@pytest.fixture(scope="module")
def graphs(families):
    """(untiled Graphs, TiledGraphs of the keep family: what a run uses)."""
    return families[0], families[1]["keep"]


def _feeds(artifacts, g: Graphs, H: int, W: int, styles: int, rng) -> dict:
    content = rng.uniform(0, 1, (H, W, 3)).astype(np.float32)
    f = g.features(content)
    grams = [g.features(rng.uniform(0, 1, (H, W, 3)).astype(np.float32)) for _ in range(styles)]
    feeds = {contract.content_target(n): f[contract.content_feature(n)] for n in artifacts.content_layers}
    for n in artifacts.style_layers:
        feeds[contract.style_target(n)] = np.stack([s[contract.gram(n)] for s in grams])
    if styles == 2:  # a soft left/right split: the bilinear resize at each layer matters
        ramp = np.clip((np.arange(W) - 0.4 * W) / (0.2 * W), 0, 1).astype(np.float32)
        masks = np.stack([np.broadcast_to(1 - ramp, (H, W)), np.broadcast_to(ramp, (H, W))])[:, None]
    else:
        masks = np.ones((1, 1, H, W), np.float32)
    feeds[contract.STYLE_MASKS] = np.ascontiguousarray(masks, np.float32)
    feeds[contract.STYLE_WEIGHTS] = np.array([0.3, 0.7][:styles] if styles == 2 else [1.0], np.float32)
    # every content layer weighted (the defaults weight three of four with 0)
    feeds[contract.CONTENT_LAYER_WEIGHTS] = np.array([1.0, 0.5, 0.25, 0.125], np.float32)
    feeds[contract.STYLE_LAYER_WEIGHTS] = np.array([1 / c ** 2 for c in (64, 128, 256, 512, 512)], np.float32)
    feeds[contract.TERM_WEIGHTS] = np.array([25.0, 100.0, 1e5], np.float32)
    return feeds


def _close(got, ref) -> None:
    assert abs(got[0] - ref[0]) <= TOL * abs(ref[0])
    for i in (1, 2, 4):  # content losses, style losses, image gradient
        assert rel(got[i], ref[i]) < TOL, (i, rel(got[i], ref[i]))
    assert abs(got[3] - ref[3]) <= TOL * abs(ref[3])


@pytest.mark.parametrize("H, W, tile, styles", [
    (83, 109, 48, 2),  # not multiples of 16; 2x3 tiles smaller than the 64 px halo; masks, two styles
    (50, 70, 16, 1),  # the smallest tile: 4x5 tiles, crops clipped at every border and corner
])
@pytest.mark.parametrize("family, keep", [("again", None), ("keep", None), ("keep", 1), ("keep", 4)])
def test_tiled_step_equals_untiled(artifacts, families, H, W, tile, styles, family, keep):
    """keep: how many crops keep pass 1's activations (None: all); 1: only the last crop of pass 1
    (the others run tile_grams_keep again in pass 2); 4: some, border crops among both kinds."""
    g, tiled = families
    tg = tiled[family]
    rng = np.random.default_rng(H)
    feeds = _feeds(artifacts, g, H, W, styles, rng)
    x = rng.uniform(0, 1, (1, 3, H, W)).astype(np.float32)
    ref = TrainStep(g, feeds, x.shape)(x)
    step = TiledTrainStep(tg, feeds, x.shape, tile, keep)
    n = len(step.layout.tiles)
    assert n > 4 and step.keep == (0 if family == "again" else n if keep is None else keep)
    _close(step(x), ref)
    if styles == 2:  # the check can fail: a halo of one grid step (not the receptive field) is off
        bad = TiledTrainStep(tg, feeds, x.shape, tile, keep)
        bad.layout = Layout.of(H, W, tile, tg.align, tg.align)
        assert rel(bad(x)[4], ref[4]) > 10 * TOL


class _Swapped:
    """A pass-1 session whose kept array `name` of two crops of one size trades places (what a
    bookkeeping slip would do)."""

    def __init__(self, sess, name: str):
        self.sess, self.name, self.held = sess, name, None

    def run(self, outputs, feeds):
        outs = self.sess.run(outputs, feeds)
        if any(o.startswith("kept.") for o in outputs):
            i = outputs.index(self.name) if self.name in outputs else None
            if i is not None and self.held is not None and self.held.shape == outs[i].shape:
                outs[i], self.held = self.held, outs[i]
            elif i is not None:
                self.held = outs[i]
        return outs

    def __getattr__(self, name):
        return getattr(self.sess, name)


@pytest.mark.parametrize("name", ["kept.pool1.hit", "feature.relu4_2"])
def test_wrong_kept_arrays_are_caught(artifacts, graphs, monkeypatch, name):
    """The comparison above fails when pass 2 gets another crop's kept arrays (those of two crops of
    one size swapped: a max pool's hit mask, the content layer's features), so a kept path that fed the wrong
    arrays could not pass it."""
    g, tg = graphs
    H, W, tile = 40, 200, 32  # a strip: crops [0, 160) and [32, 192) have equal sizes, other pixels
    rng = np.random.default_rng(7)
    feeds = _feeds(artifacts, g, H, W, 1, rng)
    x = rng.uniform(0, 1, (1, 3, H, W)).astype(np.float32)
    ref = TrainStep(g, feeds, x.shape)(x)
    monkeypatch.setattr(tg, "grams", _Swapped(tg.grams, name))
    assert rel(TiledTrainStep(tg, feeds, x.shape, tile)(x)[4], ref[4]) > 10 * TOL


@pytest.mark.parametrize("family", ["again", "keep"])
def test_tiled_features_equal_eval(artifacts, families, family):
    g, tg = families[0], families[1][family]
    image = np.random.default_rng(1).uniform(0, 1, (77, 101, 3)).astype(np.float32)
    ref, got = g.features(image), tiled_features(tg, image, 32)
    assert set(got) == set(ref)
    for name in ref:
        assert got[name].shape == ref[name].shape
        assert rel(got[name], ref[name]) < TOL, name


def test_layout_owns_every_pixel_once():
    layout = Layout.of(83, 109, 32, 16, 64)
    owned = np.zeros((83, 109), int)
    for t in layout.tiles:
        r0, r1, c0, c1 = t.own
        owned[r0:r1, c0:c1] += 1
        assert t.crop[0] % 16 == 0 and t.crop[2] % 16 == 0  # crops start on the pool grid
        assert t.crop[1] in (83, r1 + 64) and t.crop[3] in (109, c1 + 64)
        assert t.crop[0] == max(0, r0 - 64) and t.crop[2] == max(0, c0 - 64)
    assert (owned == 1).all()
    with pytest.raises(UsageError, match="multiple of 16"):
        Layout.of(83, 109, 40, 16, 64)


@needs_torch
@pytest.mark.parametrize("src, dst", [((83, 109), (20, 27)), ((50, 70), (50, 70)), ((7, 9), (16, 20)), ((83, 109), (5, 6))])
def test_bilinear_matches_torch(src, dst):
    import torch
    import torch.nn.functional as F

    masks = np.random.default_rng(0).uniform(0, 1, (2, 1, *src)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(masks).double(), size=dst, mode="bilinear", align_corners=False).numpy()
    got = resize_bilinear(masks, dst)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-6


# --- the run: Stylizer, CLI ---------------------------------------------------------------------------


def _cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "nst_ort", *args], capture_output=True, text=True, timeout=300)


def test_tiled_run_follows_untiled(tmp_path, examples):
    """Three L-BFGS iterations tiled (16 px tiles, two masked styles; host and device loop) and
    untiled: the same images up to float32 rounding carried through the optimizer."""
    from nst_ort import Config, OptimConfig, StyleInput, Stylizer

    mask = tmp_path / "mask.png"
    from PIL import Image

    Image.fromarray((np.arange(72)[None, :].repeat(48, 0) > 30).astype(np.uint8) * 255).save(mask)
    styles = [StyleInput(examples / "starry_night.jpg", 1.0, mask), StyleInput(examples / "the_scream.jpg", 1.0, None)]
    out = {}
    for tile, loop in ((None, "host"), (16, "host"), ("16d", "device")):
        cfg = Config(content=examples / "chelsea_cat.jpg", styles=styles, size=72, loop=loop,
                     tile=tile if tile is None else 16,
                     threads=2, optim=OptimConfig(iterations=3))
        st = Stylizer(cfg)
        losses = [st.step().loss for _ in range(3)]
        out[tile] = (losses, st.result(), st.runtime()["tiling"])
        # a tiled scale lets the whole-image training session (and its arena) go: the arena would
        # hold an untiled scale's peak beside the tiles' (a 4096 px print was killed by it)
        assert st.graphs.train_open is (tile is None)
    assert out[None][2]["scales"][0]["tile"] is None and out[16][2]["scales"][0]["tile"] == 16
    assert np.allclose(out[16][0], out[None][0], rtol=1e-4)
    assert np.abs(out[16][1] - out[None][1]).max() < 2e-3
    # the device loop's tiled step (gradient assembled on the host, the optimizer graphs unchanged)
    assert out["16d"][2]["scales"][0]["tile"] == 16
    assert np.allclose(out["16d"][0], out[16][0], rtol=1e-4)
    assert np.abs(out["16d"][1] - out[16][1]).max() < 1e-3


def test_tile_refusals_and_plan(tmp_path, examples):
    from nst_ort import Config, StyleInput, Stylizer

    def cfg(**kw):
        return Config(content=examples / "chelsea_cat.jpg", styles=[StyleInput(examples / "starry_night.jpg")],
                      size=80, **kw)

    with pytest.raises(UsageError, match=r"--tile 40: must be a multiple of 16"):
        Stylizer(cfg(tile=40))
    tiling = Stylizer(cfg(tile=32)).plan()["tiling"]  # what --dry-run prints, no session made
    assert tiling["scales"][0]["layout"].startswith("2x3 tiles of 32 px (halo 64 px")
    # a folder without the tiled graphs: --tile says why (one line, exit 2); without --tile it runs untiled
    bare = without_tile_graphs(DEFAULT_MODEL, tmp_path / "bare")
    assert Stylizer(cfg(model=bare)).plan()["tiling"]["scales"][0]["tile"] is None
    r = _cli(str(examples / "chelsea_cat.jpg"), str(examples / "starry_night.jpg"), "-o", str(tmp_path / "b.png"),
             "--size", "64", "--tile", "32", "--model", str(bare))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no tiled graphs" in r.stderr, r.stderr


def test_cli_report_records_tiling(tmp_path, examples):
    import json

    r = _cli(str(examples / "chelsea_cat.jpg"), str(examples / "starry_night.jpg"), "-o", str(tmp_path / "c.png"),
             "--size", "64", "--tile", "32", "--iterations", "1", "--report", str(tmp_path / "c.json"), "--quiet")
    assert r.returncode == 0, r.stderr
    tiling = json.loads((tmp_path / "c.json").read_text())["runtime"]["tiling"]
    assert tiling["scales"][0]["tile"] == 32 and tiling["halo"] == 64


def test_memory_plan_tiles_print_sizes():
    """--tile auto at 8192x6144 in 24 GiB: tiled, with the history lowered to fit; 512 px untiled."""
    from nst_ort.engine import memory

    layers = Artifacts(DEFAULT_MODEL).manifest["layers"]
    avail = memory.Available(24 << 30, None)
    plan = memory.Plan("c.png", layers, [(512, 384), (8192, 6144)], history=100, factor=memory.MANUAL_GRAPH_FACTOR,
                       align=16, halo=64, content_floats=8.0, iterations=(100, 100))
    t = memory.plan_tiling(plan, avail)
    assert t.tiles[0] is None and t.tiles[1] is not None and t.tiles[1] % 16 == 0
    assert 1 <= t.history < 100 and any("history" in n for n in t.notes)
    memory.check(plan, avail, t)  # fits as planned
    with pytest.raises(memory.OutOfMemory, match="--size|--history"):
        memory.check(plan, memory.Available(1 << 30, None), t)
    # few iterations at the top scale hold few L-BFGS pairs: the history stays
    few = memory.plan_tiling(dataclasses_replace(plan, iterations=(100, 4)), avail)
    assert few.history == 100 and few.tiles[1] is not None


def dataclasses_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def test_memory_plan_keeps_what_fits():
    """With the keep graphs (kept_bytes): tiles and kept crops chosen for the least estimated work
    among the plans that fit; each kept crop adds its kept arrays; unknown memory keeps one crop;
    without the keep graphs, none (and the largest tile, as before)."""
    from nst_ort.engine import memory

    layers = Artifacts(DEFAULT_MODEL).manifest["layers"]
    kw = dict(history=100, factor=memory.MANUAL_GRAPH_FACTOR, align=16, halo=64, content_floats=8.0, iterations=(10,))
    keep = memory.Plan("c.png", layers, [(2048, 1536)], kept_bytes=906.0, **kw)
    again = memory.Plan("c.png", layers, [(2048, 1536)], **kw)
    avail = memory.Available(8 << 30, None)
    t_keep, t_again = memory.plan_tiling(keep, avail), memory.plan_tiling(again, avail)
    assert t_again.kept == (0,) and t_again.tiles == (memory._largest_tile(again, avail, (2048, 1536), 100),)
    tile, kept = t_keep.tiles[0], t_keep.kept[0]
    n = memory.crops((2048, 1536), tile)
    assert 1 <= kept <= n
    assert memory.tiled_work((2048, 1536), tile, 64, kept) < memory.tiled_work((2048, 1536), t_again.tiles[0], 64, 0)
    memory.check(keep, avail, t_keep)  # fits as planned, the kept crops included ...
    need = [memory.tiled_estimate(keep, (2048, 1536), tile, 10, k).resident for k in (kept, kept + 1)]
    assert need[1] - need[0] == pytest.approx(906.0 * (tile + 128) ** 2, rel=1e-6)  # ... one more crop's arrays
    if kept < n:  # and one more kept crop would not fit
        assert not avail.fits(memory._need_at(keep, 2048, tile, 10, kept + 1), memory.SUGGEST_SHARE)
    # plenty of memory and an explicit tile: every crop keeps; unknown memory: one
    explicit = memory.Plan("c.png", layers, [(2048, 1536)], kept_bytes=906.0, tile=512, **kw)
    assert memory.plan_tiling(explicit, memory.Available(64 << 30, None)).kept == (12,)
    assert memory.plan_tiling(explicit, memory.Available(None, None)).kept == (1,)


def test_dry_run_and_report_say_what_is_kept(tmp_path, examples):
    from nst_ort import Config, StyleInput, Stylizer

    cfg = Config(content=examples / "chelsea_cat.jpg", styles=[StyleInput(examples / "starry_night.jpg")], size=80,
                 tile=32)
    tiling = Stylizer(cfg).plan()["tiling"]
    assert tiling["scales"][0]["kept"] == tiling["scales"][0]["crops"] == 6  # a small run: every crop keeps
    assert tiling["graphs"] in ("tile_grams_keep_cpu.onnx, tile_train_kept_cpu.onnx",
                                "tile_grams_keep.onnx, tile_train_kept.onnx")
    r = _cli(str(examples / "chelsea_cat.jpg"), str(examples / "starry_night.jpg"), "-o", str(tmp_path / "d.png"),
             "--size", "80", "--tile", "32", "--dry-run")
    assert r.returncode == 0 and "6 of 6 crops keep pass 1's activations" in r.stdout, r.stdout + r.stderr


def test_folder_without_keep_graphs_runs_the_old_way(tmp_path, examples):
    """A model folder exported before the keep graphs: tiled runs use tile_grams + tile_train, keep
    nothing, and the memory plan counts no kept arrays."""
    from nst_ort import Config, OptimConfig, StyleInput, Stylizer

    old = without_keep_graphs(DEFAULT_MODEL, tmp_path / "old")
    cfg = Config(content=examples / "chelsea_cat.jpg", styles=[StyleInput(examples / "starry_night.jpg")], size=64,
                 tile=32, model=old, threads=2, optim=OptimConfig(iterations=1))
    st = Stylizer(cfg)
    assert st.memory_plan().kept_bytes == 0.0
    st.step()
    tiling = st.runtime()["tiling"]
    assert tiling["scales"][0]["kept"] == 0 and not st.tiled_graphs.keeps
    assert tiling["graphs"] in ("tile_grams_cpu.onnx, tile_train_cpu.onnx", "tile_grams.onnx, tile_train.onnx")


@needs_torch
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_kept_pass_equals_full_pass_in_torch(pool):
    """export/tiled.py's pass 2 from pass 1's kept arrays (train_kept) equals pass 2 from the image
    (train), as torch functions, for max- and average-pool VGGs (the average pool takes its input's
    size from the ReLU mask before it) and both convolution kinds. The default model's exported graphs
    are compared with the untiled ones above; an average-pool folder's are not exported here."""
    import torch

    from nst_ort_export import manual_grad
    from nst_ort_export.backbones import REGISTRY
    from nst_ort_export.spec import GraphSpec, graph_tensors
    from nst_ort_export.tiled import TiledGradient, example_inputs

    backbone = REGISTRY["vgg16"](weights="random", pool=pool)
    spec, steps = GraphSpec.of(backbone), manual_grad.plan(backbone)
    params = list(graph_tensors(backbone).values())
    image, smasks, terms = example_inputs(backbone, spec)
    ns, nc = len(spec.style), len(spec.content)
    # content targets halved: the content terms are not 0
    terms = (*terms[:ns + nc], *(t * 0.5 for t in terms[ns + nc:ns + 2 * nc]), *terms[ns + 2 * nc:])
    for winograd in (False, True):
        fn = TiledGradient(backbone, spec, steps, winograd)
        with torch.no_grad():
            ref = fn.train(image, *terms, *params)
            kept = fn.grams_keep(image, *smasks, *params)[len(spec.style):]
            got = fn.train_kept(*kept, *terms, *params)
        assert float(ref[0].min()) > 0
        for r, g in zip(ref, got):  # content losses, image gradient
            assert torch.allclose(g, r, rtol=1e-6, atol=1e-6 * float(r.abs().max()))
