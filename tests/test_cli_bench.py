"""benchmarks/cli_bench.py, profile_iteration.py and machine.py: their arithmetic, without running
anything (the harness itself is exercised by running it; no timing is asserted)."""
from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT))
from benchmarks import cli_bench, machine  # noqa: E402


def test_peak_from_the_flags():
    info = {"flags": ["fma", "avx2", "avx512f"], "cores": 2, "mhz": 2300.0, "vendor": "GenuineIntel", "family": "6"}
    assert machine.peak_gflops(info) == pytest.approx(2 * 2 * 16 * 2 * 2.3)
    assert "2 cores x 2 FMA x 16 lanes" in info["peak_basis"]
    avx2 = {**info, "flags": ["fma", "avx2"]}
    assert machine.peak_gflops(avx2) == pytest.approx(2 * 2 * 8 * 2 * 2.3)
    zen4 = {**info, "vendor": "AuthenticAMD", "family": "25"}  # 512-bit on two 256-bit pipes
    assert machine.peak_gflops(zen4) == pytest.approx(2 * 1 * 16 * 2 * 2.3)
    assert machine.peak_gflops({**info, "mhz": None}) is None


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="needs onnx")
def test_conv_flops_of_the_default_model_match_vgg16_by_hand():
    """Forward to relu5_1 plus the input gradient, from the VGG paper's configuration D (not from
    the graph the function reads)."""
    from benchmarks.profile_iteration import conv_flops

    h, w = 48, 64
    layers = [(3, 64), (64, 64), "M", (64, 128), (128, 128), "M", (128, 256), (256, 256), (256, 256), "M",
              (256, 512), (512, 512), (512, 512), "M", (512, 512)]  # conv1_1 .. conv5_1
    total = 0
    for layer in layers:
        if layer == "M":
            h, w = h // 2, w // 2
        else:
            cin, cout = layer
            total += 2 * h * w * cin * cout * 9
    assert conv_flops(ROOT / "models" / "vgg16", 48, 64) == 2 * total


def _side(slopes, inner=0.1, loss=100.0):
    runs = [{"n1": {"wall": 10.0, "iterations": 5, "inner": inner, "loss": loss, "shape": [10, 20], "loop": "device"},
             "n2": {"wall": 10.0 + 30 * s, "iterations": 35, "inner": inner, "loss": loss, "shape": [10, 20],
                    "loop": "device"},
             "slope": s} for s in slopes]
    return runs


def test_slopes_speedups_and_the_verdict():
    a = {"wall": 12.0, "iterations": 5}
    b = {"wall": 21.0, "iterations": 35}
    assert cli_bench.slope(a, b) == pytest.approx(0.3)
    info = {"model": "CPU X", "simd": "AVX2", "cores": 2, "mhz": 2000.0, "flags": ["avx2"]}
    runs = {"default": _side([0.30, 0.31, 0.29]), "host": _side([0.40, 0.41, 0.39]),
            "torch": _side([0.45, 0.45, 0.46], loss=101.0)}
    e = cli_bench.summarize(runs, "device", 5, 35, info)
    assert e["sides"]["default"]["speedup"] == pytest.approx(0.45 / 0.30)
    assert e["sides"]["default"]["loss_vs_torch"] == pytest.approx(-1 / 101)
    assert e["sides"]["default"]["cpu"] == "CPU X"
    v = cli_bench.verdict(e)
    assert v.startswith("fastest nst-ort side: default") and "1.50x" in v
    runs["host"] = _side([0.20, 0.21, 0.19])  # clearly faster than the default
    assert "change the default" in cli_bench.verdict(cli_bench.summarize(runs, "device", 5, 35, info))
    runs["host"] = _side([0.28, 0.35, 0.29])  # overlapping: a tie
    assert "tie" in cli_bench.verdict(cli_bench.summarize(runs, "device", 5, 35, info))
