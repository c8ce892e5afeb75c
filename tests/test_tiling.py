"""The tiled loss and gradient (nst_ort/engine/tiling.py, export/tiled.py) against the untiled graphs, which
tests/test_gradient.py and tests/test_providers.py check against float64 torch: equal within 1e-4
relative L2 at sizes that are not multiples of 16, with masks and two styles, tiles smaller than the
halo, tiles at every border and corner, on both training graphs (train.onnx and train_cpu.onnx)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import DEFAULT_MODEL, needs_torch
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
def graphs(request, artifacts):
    """(untiled Graphs, TiledGraphs) on the same training graph variant."""
    mp = pytest.MonkeyPatch()
    if request.param == "train":
        mp.setenv("NST_ORT_TRAIN_GRAPH", "train")
    placement = choose("cpu", threads=2)
    pair = Graphs(artifacts, placement), TiledGraphs(artifacts, placement)
    mp.undo()
    assert pair[0].train_path.name == f"{request.param}.onnx"
    assert pair[1].variant == ("cpu" if request.param == "train_cpu" else "plain")
    return pair


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


@pytest.mark.parametrize("H, W, tile, styles", [
    (83, 109, 48, 2),  # not multiples of 16; 2x3 tiles smaller than the 64 px halo; masks, two styles
    (50, 70, 16, 1),  # the smallest tile: 4x5 tiles, crops clipped at every border and corner
])
def test_tiled_step_equals_untiled(artifacts, graphs, H, W, tile, styles):
    g, tg = graphs
    rng = np.random.default_rng(H)
    feeds = _feeds(artifacts, g, H, W, styles, rng)
    x = rng.uniform(0, 1, (1, 3, H, W)).astype(np.float32)
    ref = TrainStep(g, feeds, x.shape)(x)
    step = TiledTrainStep(tg, feeds, x.shape, tile)
    assert len(step.layout.tiles) > 1
    got = step(x)
    assert abs(got[0] - ref[0]) <= TOL * abs(ref[0])
    for i in (1, 2, 4):  # content losses, style losses, image gradient
        assert rel(got[i], ref[i]) < TOL, (i, rel(got[i], ref[i]))
    assert abs(got[3] - ref[3]) <= TOL * abs(ref[3])
    if styles == 2:  # the check can fail: a halo of one grid step (not the receptive field) is off
        bad = TiledTrainStep(tg, feeds, x.shape, tile)
        bad.layout = Layout.of(H, W, tile, tg.align, tg.align)
        assert rel(bad(x)[4], ref[4]) > 10 * TOL


def test_tiled_features_equal_eval(artifacts, graphs):
    g, tg = graphs
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
    from nst_ort import Config, StyleInput, Stylizer

    mask = tmp_path / "mask.png"
    from PIL import Image

    Image.fromarray((np.arange(72)[None, :].repeat(48, 0) > 30).astype(np.uint8) * 255).save(mask)
    styles = [StyleInput(examples / "starry_night.jpg", 1.0, mask), StyleInput(examples / "the_scream.jpg", 1.0, None)]
    out = {}
    for tile, loop in ((None, "host"), (16, "host"), ("16d", "device")):
        cfg = Config(content=examples / "chelsea_cat.jpg", styles=styles, size=72, loop=loop,
                     tile=tile if tile is None else 16,
                     threads=2, optim=__import__("nst_ort").OptimConfig(iterations=3))
        st = Stylizer(cfg)
        losses = [st.step().loss for _ in range(3)]
        out[tile] = (losses, st.result(), st.runtime()["tiling"])
        # a run with a tiled scale keeps no CPU arena for the whole-image training graph: an arena
        # would hold an untiled scale's peak beside the tiles' (a 4096 px print was killed by it)
        assert st.graphs.train_arena is (tile is None)
    assert out[None][2]["scales"][0]["tile"] is None and out[16][2]["scales"][0]["tile"] == 16
    assert np.allclose(out[16][0], out[None][0], rtol=1e-4)
    assert np.abs(out[16][1] - out[None][1]).max() < 2e-3
    # the device loop's tiled step (gradient assembled on the host, the optimizer graphs unchanged)
    assert out["16d"][2]["scales"][0]["tile"] == 16
    assert np.allclose(out["16d"][0], out[16][0], rtol=1e-4)
    assert np.abs(out["16d"][1] - out[16][1]).max() < 1e-3


def test_tile_refusals_and_plan(tmp_path, examples):
    import json
    import shutil

    from nst_ort import Config, StyleInput, Stylizer

    def cfg(**kw):
        return Config(content=examples / "chelsea_cat.jpg", styles=[StyleInput(examples / "starry_night.jpg")],
                      size=80, **kw)

    with pytest.raises(UsageError, match=r"--tile 40: must be a multiple of 16"):
        Stylizer(cfg(tile=40))
    tiling = Stylizer(cfg(tile=32)).plan()["tiling"]  # what --dry-run prints, no session made
    assert tiling["scales"][0]["layout"].startswith("2x3 tiles of 32 px (halo 64 px")
    # a folder without the tiled graphs: --tile says why (one line, exit 2); without --tile it runs untiled
    bare = tmp_path / "bare"
    shutil.copytree(DEFAULT_MODEL, bare, ignore=shutil.ignore_patterns("tile_*"))
    manifest = json.loads((bare / "manifest.json").read_text())
    del manifest["tiling"]
    manifest["files"] = {f: v for f, v in manifest["files"].items() if not f.startswith("tile_")}
    (bare / "manifest.json").write_text(json.dumps(manifest))
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
