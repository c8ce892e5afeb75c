"""Every feature of a run, tiled (issue 19): each runs with small tiles against the same run untiled
(the reference: the untiled training and eval graphs, which tests/test_gradient.py checks against
float64 torch) and must give the same losses and image within float32 rounding carried through a few
L-BFGS iterations. tests/test_tiling.py has the step itself, two masked styles and both loops;
tests/test_video_cli.py the video frames; tests/test_providers.py `nst-ort check`'s tile rows."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import run_cli
from nst_ort import Config, OptimConfig, StyleInput, Stylizer
from nst_ort.engine import checkpoint
from nst_ort.media.images import load_image

FAST = ["--device", "cpu", "--threads", "2", "-q"]


def _cfg(examples, **kw) -> Config:
    base = dict(content=examples / "chelsea_cat.jpg", styles=[StyleInput(examples / "starry_night.jpg")], size=64,
                device="cpu", threads=2, optim=OptimConfig(iterations=3))
    return Config(**{**base, **kw})


def _run(cfg: Config) -> tuple[list[float], np.ndarray, Stylizer]:
    st = Stylizer(cfg)
    losses = [r.loss for r in st.run()]
    return losses, st.result(), st


def _same_run(tiled, untiled) -> None:
    (lt, it, st), (lu, iu, su) = tiled, untiled
    assert [t["tile"] for t in st.tiling_info()["scales"]] == [st.config.tile] * len(st.schedule)
    assert all(t["tile"] is None for t in su.tiling_info()["scales"])
    assert len(lt) == len(lu) and np.allclose(lt, lu, rtol=1e-4), (lt, lu)
    # Rounding grows through L-BFGS's curvature steps: the untiled run on train.onnx instead of
    # train_cpu.onnx (the same function, other rounding) moved the multiscale case's image by 3.0e-3
    # at most and 9.8e-5 on average, the tiled run by 3.0e-3 and 9.5e-5.
    d = np.abs(it - iu)
    assert it.shape == iu.shape and d.max() < 6e-3 and d.mean() < 3e-4, (d.max(), d.mean())


CASES = {
    # two scales (the second scale's start is the first's result, upsampled); the style image at 1.5x
    # the content's size, so its Gram targets come from tiles too; the content's colors kept
    "multiscale, style scale 1.5, luminance": dict(scales=[48, 80], scale_iterations=[2, 2], size=80,
                                                   style_scale=1.5, color="luminance"),
    "histogram colors": dict(color="histogram"),
    # no content: the style term alone, from noise (content targets of weight 0 never assembled)
    "texture": dict(content=None, texture_size=(64, 48), init="noise", seed=3),
    "host loop, Adam": dict(loop="host", optim=OptimConfig(name="adam", iterations=3)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_feature_runs_tiled_as_untiled(examples, case):
    kw = CASES[case]
    _same_run(_run(_cfg(examples, tile=16, **kw)), _run(_cfg(examples, **kw)))


@pytest.mark.parametrize("loop", ["device", "host"])
def test_tiled_checkpoint_resumes_exactly(tmp_path, examples, loop):
    """A tiled run stopped mid-way through its second scale and resumed from the checkpoint file (a new
    Stylizer) writes the same bytes as the same run uninterrupted (the L-BFGS history included); and
    that run follows the untiled one."""
    cfg = _cfg(examples, scales=[48, 64], scale_iterations=[2, 3], tile=16, loop=loop)
    whole = _run(cfg)
    first = Stylizer(cfg)
    for _ in range(3):
        first.step()
    assert first.scale == 1 and first.iteration == 1
    path = tmp_path / "ck.npz"
    checkpoint.save(path, first.state_dict(), checkpoint.fingerprint(cfg))
    again = Stylizer(cfg)
    again.load_state_dict(checkpoint.load(path, checkpoint.fingerprint(cfg)))
    rest = [r.loss for r in again.run()]
    assert rest == whole[0][3:]
    assert np.array_equal(again.result(), whole[1])
    _same_run(whole, _run(dataclasses.replace(cfg, tile=None)))


def test_batch_runs_tiled(tmp_path, examples):
    """A content folder with --tile 32: each image as the untiled batch makes it (8-bit PNGs: a value
    near a rounding boundary may flip one level)."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("chelsea_cat.jpg", "coffee.jpg"):
        (src / name).write_bytes((examples / name).read_bytes())
    outs = {}
    for tile in ("auto", "32"):
        dst = tmp_path / tile
        dst.mkdir()
        r = run_cli([src, examples / "starry_night.jpg", "-o", dst, "--size", "80", "--iterations", "3",
                     "--tile", tile, *FAST])
        assert r.returncode == 0, r.stderr
        outs[tile] = {p.name: load_image(p) for p in sorted(dst.iterdir())}
    assert sorted(outs["32"]) == ["chelsea_cat.png", "coffee.png"]
    for name, img in outs["32"].items():
        assert np.abs(img - outs["auto"][name]).max() <= 2 / 255 + 1e-6, name
