"""benchmarks/bench.py in a tiny configuration, so that the harness cannot rot (no timing asserts)."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, needs_torch

pytestmark = needs_torch


def test_bench_harness_runs_both_sides(vgg16_random, tmp_path):
    _, model = vgg16_random
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--model", str(model), "--sizes", "64",
                        "--iterations", "3", "--warmup", "1", "--threads", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "speedup" in p.stdout  # the table's header
    r = json.loads(out.read_text())
    e = r["sizes"]["64"]
    for side in ("ort", "torch"):
        assert "error" not in e[side], e[side]
        assert e[side]["evaluations"] == 3 and e[side]["s_per_iter"] > 0 and e[side]["peak_rss_mib"] > 0
    assert e["ort"]["loop"] == "device"  # the export carries optimizer graphs
    # the same function and optimizer on both sides: the same losses after 3 iterations
    assert abs(e["loss_rel_diff"]) < 1e-3, e["loss_rel_diff"]
    assert r["conditions"]["threads"] == 1
