"""benchmarks/seams.py's measure on images whose answer is known: a seam added at a tile boundary is
found at the top of its phase's steps; the same image without it is not."""
from __future__ import annotations

import numpy as np

from benchmarks.seams import boundary_steps


def _texture(h=384, w=512, seed=0):
    """Noise with a period-4 pattern in x (as the pooling grid leaves one): no tile boundary in it."""
    rng = np.random.default_rng(seed)
    img = rng.uniform(110, 140, (h, w, 3))  # steps of 10 grey levels on average (the 4096 px print's: 4.2-4.9)
    img[:, ::4] += 3
    return img


def test_no_seam_sits_inside_its_phase():
    rows = boundary_steps(_texture(), tile=128)
    assert [(r["axis"], r["at"]) for r in rows] == [("x", 128), ("x", 256), ("x", 384), ("y", 128), ("y", 256)]
    assert all(0.9 < r["ratio"] < 1.1 and 2 < r["percentile"] < 98 for r in rows), rows


def test_a_seam_at_a_boundary_is_found():
    img = _texture()
    img[:, 256:] += 6  # the right half brighter: a step of 6 grey levels at x = 256 only
    img[256:, :] -= 4  # the bottom third darker at y = 256
    by = {(r["axis"], r["at"]): r for r in boundary_steps(img, tile=128)}
    assert by["x", 256]["percentile"] == 100 and by["x", 256]["ratio"] > 1.05
    assert by["y", 256]["percentile"] == 100
    assert by["x", 128]["percentile"] < 100 and by["y", 128]["percentile"] < 100
