"""Does a tiled picture show its tiles? The step across each tile boundary against the other steps.

For every column boundary x = k * tile (and row boundary y = k * tile) the mean absolute step between
the pixels either side of it, over the whole height (width) and the three channels, is compared with
the steps across the other columns (rows) at the same position in the model's grid (x mod align): a
seam would put the boundary's step at the top of that distribution; the network's own pooling grid
gives every column a small periodic pattern, which comparing within one phase of the grid removes.

    python benchmarks/seams.py print.png --tile 1056

Prints one line per boundary (ratio to the median of its phase, and its percentile) and, with
--json, writes them. Reads any image Pillow opens; needs only numpy and Pillow.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def boundary_steps(img: np.ndarray, tile: int, align: int = 16) -> list[dict]:
    """One row per tile boundary: axis, position, step, ratio to its phase's median, percentile."""
    rows = []
    for axis, name in ((1, "x"), (0, "y")):
        step = np.abs(np.diff(img.astype(np.float64), axis=axis)).mean(axis=tuple(a for a in range(3) if a != axis))
        pos = np.arange(1, len(step) + 1)  # step[i] is between pixel i and i + 1: the boundary at i + 1
        for b in range(tile, img.shape[axis], tile):
            same = step[(pos % align == b % align) & (pos != b)]
            s = step[b - 1]
            rows.append({"axis": name, "at": b, "step": round(float(s), 4), "ratio": round(float(s / np.median(same)), 3),
                         "percentile": round(float((same < s).mean() * 100), 1), "compared_with": int(same.size)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("image", type=Path)
    p.add_argument("--tile", type=int, required=True, help="the run's tile in px (the report's runtime.tiling)")
    p.add_argument("--align", type=int, default=16, help="the model's grid (16 for VGG16)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # a print is larger than Pillow's decompression-bomb guard
    img = np.asarray(Image.open(args.image).convert("RGB"))
    rows = boundary_steps(img, args.tile, args.align)
    for r in rows:
        print(f"{r['axis']} = {r['at']}: step {r['step']:.3f}, {r['ratio']:.3f}x the median of the {r['compared_with']} "
              f"other steps at the same grid phase (percentile {r['percentile']})")
    if args.json:
        args.json.write_text(json.dumps({"image": str(args.image), "size": [img.shape[1], img.shape[0]],
                                         "tile": args.tile, "align": args.align, "boundaries": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
