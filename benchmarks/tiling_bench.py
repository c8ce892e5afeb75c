"""The tiled training step against the untiled one, and the memory plans of print sizes.

    python benchmarks/tiling_bench.py --sizes 1024 2048 --tile 1024 --repeats 2     # timings (CPU)
    python benchmarks/tiling_bench.py --plan-only                                    # memory plans only

Timing: one process, the CPU provider, the default model, a 4:3 random image with a random content
target and one style: per size the median of `repeats` evaluations (loss + gradient, no optimizer
update) of train_cpu.onnx (TrainStep) and of the tiled step (TiledTrainStep, tile_*_cpu.onnx),
after one warm-up run each, wall and CPU time (all threads). Plans: memory.plan_tiling for 8192x6144 against this machine's available
memory, and for 2048 and 4096 px (4:3) on a 4 GB and an 8 GB GPU, where one crop's activations
must fit the GPU's memory (the host keeps the image-sized vectors: the tiled step runs the host loop).
Writes benchmarks/results/cpu_tiling.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nst_ort.engine import contract, memory  # noqa: E402
from nst_ort.engine.artifacts import Artifacts  # noqa: E402
from nst_ort.engine.providers import choose  # noqa: E402
from nst_ort.engine.session import Graphs, TrainStep  # noqa: E402
from nst_ort.engine.tiling import Layout, TiledGraphs, TiledTrainStep  # noqa: E402


def feeds_for(a: Artifacts, H: int, W: int, rng) -> dict:
    strides = {layer["name"]: layer["stride"] for layer in a.manifest["layers"]}
    info = a.layer_info
    f = {contract.content_target(n): rng.random((1, info[n]["channels"], H // strides[n], W // strides[n]),
                                                dtype=np.float32) for n in a.content_layers}
    for n in a.style_layers:
        c = info[n]["channels"]
        f[contract.style_target(n)] = rng.random((1, c, c), dtype=np.float32)
    d = a.defaults
    f[contract.STYLE_MASKS] = np.ones((1, 1, H, W), np.float32)
    f[contract.STYLE_WEIGHTS] = np.ones(1, np.float32)
    f[contract.CONTENT_LAYER_WEIGHTS] = np.array([d["content_layer_weights"][n] for n in a.content_layers], np.float32)
    f[contract.STYLE_LAYER_WEIGHTS] = np.array([d["style_layer_weights"][n] for n in a.style_layers], np.float32)
    f[contract.TERM_WEIGHTS] = np.array([d["content_weight"], d["style_weight"], d["tv_weight"]], np.float32)
    return f


def median_time(fn, x, repeats: int) -> tuple[float, float]:
    """(wall s, CPU s of this process, all threads): on a loaded shared machine the CPU time is the
    steadier figure (the wall time waits for other processes)."""
    fn(x)  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn(x)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def timings(sizes: list[int], tile: int, repeats: int, threads: int | None) -> list[dict]:
    a = Artifacts(ROOT / "models" / "vgg16")
    placement = choose("cpu", threads=threads)
    graphs, tiled = Graphs(a, placement), TiledGraphs(a, placement)
    rows = []
    for side in sizes:
        W, H = side, side * 3 // 4
        rng = np.random.default_rng(side)
        feeds = feeds_for(a, H, W, rng)
        x = rng.random((1, 3, H, W), dtype=np.float32)
        untiled, untiled_cpu = median_time(TrainStep(graphs, feeds, x.shape), x, repeats)
        step = TiledTrainStep(tiled, feeds, x.shape, tile)
        t, t_cpu = median_time(step, x, repeats)
        rows.append({"width": W, "height": H, "tile": tile, "layout": step.layout.describe(),
                     "untiled_s": round(untiled, 3), "tiled_s": round(t, 3), "ratio": round(t / untiled, 2),
                     "untiled_cpu_s": round(untiled_cpu, 3), "tiled_cpu_s": round(t_cpu, 3),
                     "cpu_ratio": round(t_cpu / untiled_cpu, 2)})
        print(rows[-1], flush=True)
    return rows


def gpu_tile(a: Artifacts, size: tuple[int, int], gpu_bytes: int, halo: int, align: int) -> int | None:
    """The largest tile whose crop's activations fit 85% of a GPU's memory (manual backward factor)."""
    per_px = memory._per_pixel(a.manifest["layers"]) * memory.FLOAT * memory.MANUAL_GRAPH_FACTOR
    best = None
    for k in range(1, -(-max(size) // align) + 1):
        t = k * align
        cw, ch = min(size[0], t + 2 * halo), min(size[1], t + 2 * halo)
        if memory.FIXED + per_px * cw * ch <= 0.85 * gpu_bytes:
            best = t
    return best


def plans() -> dict:
    a = Artifacts(ROOT / "models" / "vgg16")
    entry = a.manifest["tiling"]
    layers = a.manifest["layers"]
    kept = sum(a.layer_info[n]["channels"] / a.layer_info[n]["stride"] ** 2
               for n in a.content_layers if a.defaults["content_layer_weights"][n])
    out = {}
    avail = memory.available()
    plan = memory.Plan("print", layers, [(8192, 6144)], history=100, factor=memory.MANUAL_GRAPH_FACTOR,
                       align=entry["align"], halo=entry["halo"], content_floats=kept, iterations=(100,))
    t = memory.plan_tiling(plan, avail)
    need = memory.assess(plan, avail, t).need
    out["8192x6144 here"] = {"available_bytes": avail.resident, "tile": t.tiles[0], "history": t.history,
                             "need_bytes": need.resident, "notes": list(t.notes),
                             "layout": Layout.of(6144, 8192, t.tiles[0], entry["align"], entry["halo"]).describe()
                             if t.tiles[0] else "untiled"}
    for gb in (4, 8):
        for side in (2048, 4096):
            size = (side, side * 3 // 4)
            tile = gpu_tile(a, size, gb * 10**9, entry["halo"], entry["align"])
            untiled = memory.estimate(layers, size, "lbfgs", 0, None, True, memory.MANUAL_GRAPH_FACTOR).resident
            out[f"{size[0]}x{size[1]} on a {gb} GB GPU"] = {
                "untiled_activations_bytes": untiled, "fits_untiled": untiled <= 0.85 * gb * 10**9, "tile": tile,
                "layout": Layout.of(size[1], size[0], tile, entry["align"], entry["halo"]).describe() if tile else None}
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="*", default=[1024, 2048])
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--plan-only", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cpu_tiling"))
    args = p.parse_args()
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "load_average": os.getloadavg()},
              "plans": plans(), "timings": [] if args.plan_only else timings(args.sizes, args.tile, args.repeats,
                                                                               args.threads)}
    result["machine"]["load_average_after"] = os.getloadavg()
    Path(args.out + ".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["| size | tile layout | untiled s (CPU s) | tiled s (CPU s) | tiled / untiled: wall (CPU) |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['width']}x{r['height']} | {r['layout']} | {r['untiled_s']} ({r['untiled_cpu_s']}) | "
              f"{r['tiled_s']} ({r['tiled_cpu_s']}) | {r['ratio']} ({r['cpu_ratio']}) |" for r in result["timings"]]
    lines += ["", "| plan | tile | layout / notes |", "| --- | --- | --- |"]
    for k, v in result["plans"].items():
        extra = "; ".join(v.get("notes", [])) if "notes" in v else (
            "fits untiled" if v["fits_untiled"] else f"untiled activations {memory.gib(v['untiled_activations_bytes'])}")
        lines.append(f"| {k} | {v['tile']} | {v['layout']}; {extra} |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
