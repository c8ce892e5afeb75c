"""Measure what a run adds to memory at a few sizes; the source of nst_ort/engine/memory.py's factors.

    python benchmarks/memory_calibrate.py --sizes 256 384 512 768 1024 --model models/vgg16

Each size runs in its own process: the CLI with Adam (whose state is small and known, so the
graph's share is what remains), two iterations, one thread. The process reports its resident and
virtual size after the sessions were made (the baseline), and its peaks (VmHWM, VmPeak) at the end.
Printed per size: the growth in MB (less memory.FIXED and the Adam state), bytes per pixel, and the
GRAPH_FACTOR that growth implies
(bytes per pixel / (4 * sum(channels / stride^2)) over the manifest's layers). memory.py takes the
largest factor seen, so that its estimate is an upper bound at every measured size.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs in the child: wrap Stylizer.run to read /proc/self/status before and after.
CHILD = r"""
import json, sys
import nst_ort.engine.stylize as S
from nst_ort.commands.cli import main

def status():
    out = {}
    for line in open("/proc/self/status"):
        key, value = line.split(":", 1)
        if key in ("VmRSS", "VmSize", "VmHWM", "VmPeak"):
            out[key] = int(value.split()[0]) * 1024
    return out

run = S.Stylizer.run
def measured(self):
    base = status()
    yield from run(self)
    end = status()
    h, w = self.image().shape[2:]
    print("MEASURED " + json.dumps({"base": base, "end": end, "width": w, "height": h}), file=sys.stderr)
S.Stylizer.run = measured
sys.exit(main(sys.argv[1:]))
"""


def measure(size: int, args) -> dict:
    cmd = [sys.executable, "-c", CHILD, str(ROOT / "examples" / args.content), str(ROOT / "examples" / args.style),
           "-o", str(Path(args.out) / f"calibrate-{size}.png"), "--size", str(size), "--iterations", "2",
           "--optimizer", "adam", "--threads", "1", "-q", "--model", args.model]
    env = {"PYTHONPATH": str(ROOT), "NST_ORT_MEMORY_CHECK": "0", "PATH": "/usr/bin:/bin"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((x for x in r.stderr.splitlines() if x.startswith("MEASURED ")), None)
    if line is None:
        raise SystemExit(f"size {size} failed: {r.stderr}")
    return json.loads(line.split(" ", 1)[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 384, 512])
    p.add_argument("--model", default=str(ROOT / "models" / "vgg16"))
    p.add_argument("--content", default="chelsea_cat.jpg")
    p.add_argument("--style", default="starry_night.jpg")
    p.add_argument("--out", default="/tmp")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from nst_ort.engine.memory import FIXED, _per_pixel

    layers = json.loads((Path(args.model) / "manifest.json").read_text())["layers"]
    floats = _per_pixel(layers)
    print(f"{'size':>6} {'pixels':>9} {'RSS +MB':>8} {'VM +MB':>8} {'RSS B/px':>9} {'VM B/px':>8} {'factor':>7}")
    for size in args.sizes:
        m = measure(size, args)
        px = m["width"] * m["height"]
        adam = 5 * 4 * 3 * px  # memory.estimate's Adam term and fixed overhead, taken out
        rss = m["end"]["VmHWM"] - m["base"]["VmRSS"] - adam - FIXED
        vm = m["end"]["VmPeak"] - m["base"]["VmSize"] - adam - FIXED
        print(f"{size:>6} {px:>9} {rss / 2**20:>8.0f} {vm / 2**20:>8.0f} {rss / px:>9.0f} {vm / px:>8.0f} "
              f"{rss / px / (4 * floats):>7.1f}")


if __name__ == "__main__":
    main()
