"""Each user-facing control shows its effect (issue: everything users of neural-style expect)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from nst_ort import Config, StyleInput, Stylizer
from nst_ort.media.color import match_histogram, rgb_to_yiq
from nst_ort.media.images import load_image

FAST = ["--device", "cpu", "--threads", "2", "-q"]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _img(p: Path) -> np.ndarray:
    return np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255


def _cfg(examples, **kw) -> Config:
    cfg = Config(content=examples / "chelsea_cat.jpg", styles=[StyleInput(examples / "starry_night.jpg")],
                 size=96, device="cpu", threads=2)
    cfg.optim.iterations = kw.pop("iterations", 8)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_same_seed_same_bytes(tmp_path, examples):
    outs = []
    for i in range(2):
        out = tmp_path / f"o{i}.png"
        r = run_cli([examples / "chelsea_cat.jpg", examples / "starry_night.jpg", "-o", out, "--size", "96",
                     "--iterations", "6", "--init", "noise", "--seed", "7", *FAST])
        assert r.returncode == 0, r.stderr
        outs.append(_sha(out))
    assert outs[0] == outs[1]
    out = tmp_path / "o2.png"
    run_cli([examples / "chelsea_cat.jpg", examples / "starry_night.jpg", "-o", out, "--size", "96",
             "--iterations", "6", "--init", "noise", "--seed", "8", *FAST])
    assert _sha(out) != outs[0]


@pytest.mark.parametrize("loop", ["device", "host"])
def test_resume_equals_uninterrupted(tmp_path, examples, loop):
    """5 iterations + checkpoint, then resume to 10 == 10 in one go (L-BFGS history included), with
    the optimizer in device buffers (the default model's CPU path) and on the host."""
    args = [examples / "chelsea_cat.jpg", examples / "starry_night.jpg", "--size", "96", "--loop", loop, *FAST]
    full, part, ck = tmp_path / "full.png", tmp_path / "part.png", tmp_path / "ck.npz"
    assert run_cli([*args, "-o", full, "--iterations", "10"]).returncode == 0
    assert run_cli([*args, "-o", part, "--iterations", "5", "--checkpoint", ck]).returncode == 0
    r = run_cli([*args, "-o", part, "--iterations", "10", "--resume", ck])
    assert r.returncode == 0, r.stderr
    assert _sha(full) == _sha(part)
    # Other inputs: refused.
    r = run_cli([examples / "coffee.jpg", examples / "starry_night.jpg", "--size", "96", *FAST,
                 "-o", tmp_path / "x.png", "--iterations", "10", "--resume", ck])
    assert r.returncode == 2 and "other inputs" in r.stderr


def test_luminance_keeps_content_colors(examples):
    cfg = _cfg(examples, color="luminance", iterations=10)
    s = Stylizer(cfg)
    for _ in s.run():
        pass
    out = s.result()
    content = load_image(examples / "chelsea_cat.jpg")
    from nst_ort.media.images import resize

    content = resize(content, (out.shape[1], out.shape[0]))
    chroma_out, chroma_content = rgb_to_yiq(out)[..., 1:], rgb_to_yiq(content)[..., 1:]
    plain = Stylizer(_cfg(examples, iterations=10))
    for _ in plain.run():
        pass
    chroma_plain = rgb_to_yiq(plain.result())[..., 1:]
    d_lum = np.abs(chroma_out - chroma_content).mean()
    d_plain = np.abs(chroma_plain - chroma_content).mean()
    assert d_lum < 0.01 and d_lum < 0.3 * d_plain, (d_lum, d_plain)


def test_histogram_matching_moves_style_colors_to_content(examples):
    style, content = load_image(examples / "starry_night.jpg"), load_image(examples / "coffee.jpg")

    def stats(x):
        return x.reshape(-1, 3).mean(0), np.cov(x.reshape(-1, 3), rowvar=False)

    mu_c, cov_c = stats(content)
    mu_s, cov_s = stats(style)
    assert np.abs(cov_s - cov_c).max() > 0.01  # they differ to begin with
    mu_m, cov_m = stats(match_histogram(style, content))
    assert np.abs(mu_m - mu_c).max() < 1e-3 and np.abs(cov_m - cov_c).max() < 1e-4


def test_texture_synthesis(tmp_path, examples):
    out, rep = tmp_path / "tex.png", tmp_path / "r.json"
    r = run_cli(["--texture", examples / "starry_night.jpg", "-o", out, "--texture-size", "112x80",
                 "--iterations", "15", "--report", rep, *FAST])
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size == (112, 80)
    recs = json.loads(rep.read_text())["records"]
    assert recs[0]["content"] == 0.0
    assert recs[-1]["style"] < 0.2 * recs[0]["style"]


def test_multiscale_schedule(tmp_path, examples):
    out, rep = tmp_path / "ms.png", tmp_path / "r.json"
    r = run_cli([examples / "chelsea_cat.jpg", examples / "starry_night.jpg", "-o", out, "--size", "128",
                 "--scales", "64,96,128", "--scale-iterations", "4,3,2", "--report", rep, *FAST])
    assert r.returncode == 0, r.stderr
    recs = json.loads(rep.read_text())["records"]
    assert [(x["scale"], x["width"]) for x in recs] == [(0, 64)] * 4 + [(1, 96)] * 3 + [(2, 128)] * 2
    assert Image.open(out).size == (128, 85)


def test_content_layer_and_style_layers_change_the_result(tmp_path, examples):
    base = [examples / "chelsea_cat.jpg", examples / "starry_night.jpg", "--size", "96", "--iterations", "6", *FAST]
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    assert run_cli([*base, "-o", a]).returncode == 0
    assert run_cli([*base, "-o", b, "--content-layer", "relu5_1"]).returncode == 0
    assert run_cli([*base, "-o", c, "--style-layers", "relu1_1:1e-2,relu2_1:1e-3"]).returncode == 0
    assert _sha(a) != _sha(b) and _sha(a) != _sha(c)
    r = run_cli([*base, "-o", c, "--content-layer", "relu9_9"])
    assert r.returncode == 2 and "relu9_9" in r.stderr and "\n" not in r.stderr.strip()


def test_style_scale_changes_targets(examples):
    s1 = Stylizer(_cfg(examples))
    s2 = Stylizer(_cfg(examples, style_scale=0.5))
    g1 = s1.targets.feeds((96, 64), np.zeros((1, 3, 64, 96), np.float32))["style_target.relu3_1"]
    g2 = s2.targets.feeds((96, 64), np.zeros((1, 3, 64, 96), np.float32))["style_target.relu3_1"]
    assert np.abs(g1 - g2).max() > 1e-3 * np.abs(g1).max()


def test_two_style_blend_is_between(examples):
    cfg = _cfg(examples)
    cfg.styles = [StyleInput(examples / "starry_night.jpg", 0.7), StyleInput(examples / "great_wave.jpg", 0.3)]
    feeds = Stylizer(cfg).targets.feeds((96, 64), np.zeros((1, 3, 64, 96), np.float32))
    a = Stylizer(_cfg(examples)).targets.feeds((96, 64), np.zeros((1, 3, 64, 96), np.float32))
    cfg_b = _cfg(examples)
    cfg_b.styles = [StyleInput(examples / "great_wave.jpg")]
    b = Stylizer(cfg_b).targets.feeds((96, 64), np.zeros((1, 3, 64, 96), np.float32))
    n = "style_target.relu2_1"
    assert np.allclose(feeds[n], 0.7 * a[n] + 0.3 * b[n], rtol=1e-4, atol=1e-2)


def test_masks_confine_each_style_to_its_region(tmp_path, examples):
    """Left half one style, right half another: each half's Gram is closer to its own style's."""
    from nst_ort import Artifacts
    from nst_ort.media.images import save_image
    from nst_ort.engine.providers import choose
    from nst_ort.engine.session import Graphs

    w, h = 128, 96
    left = np.zeros((h, w, 3), np.float32)
    left[:, : w // 2] = 1
    save_image(left, tmp_path / "left.png")
    save_image(1 - left, tmp_path / "right.png")
    cfg = Config(content=None, styles=[StyleInput(examples / "starry_night.jpg", 1.0, tmp_path / "left.png"),
                                       StyleInput(examples / "composition_vii.jpg", 1.0, tmp_path / "right.png")],
                 size=w, texture_size=(w, h), init="noise", device="cpu", threads=2)
    cfg.optim.iterations = 40
    s = Stylizer(cfg)
    for _ in s.run():
        pass
    out = s.result()
    graphs = Graphs(Artifacts(), choose("cpu"))
    layer = "gram.relu2_1"
    gl, gr = graphs.features(out[:, : w // 2 - 8])[layer], graphs.features(out[:, w // 2 + 8:])[layer]
    ga = graphs.features(s.targets.style_at(0, (w, h)))[layer]
    gb = graphs.features(s.targets.style_at(1, (w, h)))[layer]

    def d(x, y):
        return float(np.abs(x - y).mean())

    assert d(gl, ga) < d(gl, gb) and d(gr, gb) < d(gr, ga), (d(gl, ga), d(gl, gb), d(gr, gb), d(gr, ga))


def test_batch_builds_each_and_reports_failures(tmp_path, examples):
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    dst.mkdir()
    for name in ("chelsea_cat.jpg", "coffee.jpg"):
        (src / name).write_bytes((examples / name).read_bytes())
    (src / "broken.jpg").write_text("not an image")
    r = run_cli([src, examples / "starry_night.jpg", "-o", dst, "--size", "64", "--iterations", "2", *FAST])
    assert r.returncode == 9, r.stderr
    assert sorted(p.name for p in dst.iterdir()) == ["chelsea_cat.png", "coffee.png"]
    assert "broken.jpg" in r.stderr


def test_save_every_and_report(tmp_path, examples):
    out, rep = tmp_path / "o.png", tmp_path / "r.json"
    r = run_cli([examples / "chelsea_cat.jpg", examples / "starry_night.jpg", "-o", out, "--size", "64",
                 "--iterations", "4", "--save-every", "2", "--report", rep, *FAST])
    assert r.returncode == 0, r.stderr
    data = json.loads(rep.read_text())
    assert data["status"] == "done" and len(data["records"]) == 4
    assert {"loss", "content", "style", "tv", "seconds", "style_layers"} <= set(data["records"][0])
    assert data["settings"]["size"] == 64
    # What actually ran, where the flags said "auto": the default model on the CPU runs its
    # Winograd training graph with the optimizer in device buffers, untiled (--tile auto: it fits).
    tiling = data["runtime"].pop("tiling")
    assert data["runtime"] == {"providers": ["CPUExecutionProvider"], "device": "cpu",
                               "train_graph": "train_cpu.onnx", "loop": "device",
                               "provider_options": {}}
    assert [s["tile"] for s in tiling["scales"]] == [None] and tiling["graphs"] is None
