"""The tiled training step against the untiled one, and the memory plans of print sizes.

    python benchmarks/tiling_bench.py --sizes 1024 2048 --tiles 1232 1024 --repeats 2   # timings (CPU)
    python benchmarks/tiling_bench.py --plan-only                                    # memory plans only

Timing: one process, the CPU provider, the default model, a 4:3 random image with a random content
target and one style: per size the median of `repeats` evaluations (loss + gradient, no optimizer
update), after one warm-up run each, wall and CPU time (all threads), of train_cpu.onnx (TrainStep),
and per tile of the tiled step (TiledTrainStep) with tile_grams_cpu + tile_train_cpu (pass 2 runs
the forward again) and with tile_grams_keep_cpu + tile_train_kept_cpu (pass 1's activations kept):
the tiles given (every crop kept), and the tile memory.plan_tiling picks with --plan-gib GiB available
(as many crops kept as it plans). Each variant's sessions are made, timed and dropped before the next,
with its peak RSS over the RSS before it. Plans: memory.plan_tiling for 8192x6144 against this
machine's available memory, and for 2048 and 4096 px (4:3) on a 4 GB and an 8 GB GPU, where one
crop's activations must fit the GPU's memory (the host keeps the image-sized vectors: the tiled step
runs the host loop). Writes benchmarks/results/cpu_tiling.{md,json} with the CPU's model, flags and
the load average before and after.
"""
from __future__ import annotations

import argparse
import gc
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

from benchmarks.machine import cpu_info  # noqa: E402
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


def _rss_mib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in MiB (Linux; (0, 0) elsewhere)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]) >> 10, int(fields["VmHWM"].split()[0]) >> 10
    except (OSError, KeyError, ValueError):
        return 0, 0


def _reset_peak() -> None:
    """Start a fresh VmHWM (Linux: writing 5 to clear_refs), so that each variant's peak is its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _measure(make, x, repeats: int) -> dict:
    """Sessions made, timed, and dropped again (each variant's arenas are freed before the next is
    made: the three of them at 2048x1536 would not fit beside each other)."""
    gc.collect()
    _reset_peak()
    base = _rss_mib()[0]
    step = make()
    wall, cpu = median_time(step, x, repeats)
    peak = _rss_mib()[1] - base
    del step
    gc.collect()
    return {"s": round(wall, 3), "cpu_s": round(cpu, 3), "peak_mib": peak}


def host_plan(a: Artifacts, size: tuple[int, int], gib: int) -> tuple[int | None, int]:
    """(tile, kept crops) memory.plan_tiling picks for one scale of `size` with `gib` GiB available:
    L-BFGS history 100, 10 iterations at that scale, the default content layers."""
    entry = a.manifest["tiling"]
    content = sum(a.layer_info[n]["channels"] / a.layer_info[n]["stride"] ** 2
                  for n in a.content_layers if a.defaults["content_layer_weights"][n])
    plan = memory.Plan("bench", a.manifest["layers"], [size], history=100, factor=memory.MANUAL_GRAPH_FACTOR,
                       align=entry["align"], halo=entry["halo"], content_floats=content, iterations=(10,),
                       kept_bytes=float(entry.get("kept_bytes_per_pixel", 0.0)))
    t = memory.plan_tiling(plan, memory.Available(gib << 30, None))
    return t.tiles[0], t.kept_at(0)


def timings(sizes: list[int], tiles: list[int], repeats: int, threads: int | None, plan_gib: int) -> list[dict]:
    """Per size: the untiled step; per tile, the tiled step (tile_grams + tile_train: two forwards per
    crop) and the tiled step keeping pass 1's activations (tile_grams_keep + tile_train_kept: one
    forward per kept crop), for every crop, or, for the tile the memory plan picks with `plan_gib` GiB
    available, for as many crops as it keeps."""
    a = Artifacts(ROOT / "models" / "vgg16")
    entry = a.manifest["tiling"]
    placement = choose("cpu", threads=threads)
    rows = []
    for side in sizes:
        W, H = side, side * 3 // 4
        rng = np.random.default_rng(side)
        feeds = feeds_for(a, H, W, rng)
        x = rng.random((1, 3, H, W), dtype=np.float32)
        untiled = _measure(lambda: TrainStep(Graphs(a, placement), feeds, x.shape), x, repeats)
        planned, planned_kept = host_plan(a, (W, H), plan_gib)
        runs = ([(planned, planned_kept, f"the plan's for {plan_gib} GiB")] if planned else []) + [
            (tile, None, "given") for tile in tiles]
        for tile, keep, why in runs:
            layout = Layout.of(H, W, tile, entry["align"], entry["halo"])
            step = lambda keep_graphs, k=keep, tile=tile: TiledTrainStep(  # noqa: E731
                TiledGraphs(a, placement, keep_graphs=keep_graphs), feeds, x.shape, tile, k)
            row = {"width": W, "height": H, "tile": tile, "tile_is": why, "layout": layout.describe(),
                   "kept": len(layout.tiles) if keep is None else keep,
                   "estimated_work": round(memory.tiled_work((W, H), tile, entry["halo"], len(layout.tiles)
                                                             if keep is None else keep), 3),
                   "untiled": untiled}
            row["tiled"] = _measure(lambda: step(False), x, repeats)
            row["tiled_keep"] = _measure(lambda: step(True), x, repeats)
            for k in ("tiled", "tiled_keep"):
                row[k]["ratio"] = round(row[k]["s"] / untiled["s"], 2)
                row[k]["cpu_ratio"] = round(row[k]["cpu_s"] / untiled["cpu_s"], 2)
            rows.append(row)
            print(row, flush=True)
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
    # 1232: the tile that fits an 8 GB GPU at 2048x1536 (the plans below); 1024: a round one
    p.add_argument("--tiles", type=int, nargs="*", default=[1232, 1024])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--plan-gib", type=int, default=8, help="also time the tile the memory plan picks with this much")
    p.add_argument("--plan-only", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cpu_tiling"))
    args = p.parse_args()
    info = cpu_info()
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu": info["model"],
                          "simd": info["simd"], "flags": " ".join(info["flags"]), "load_average": os.getloadavg()},
              "plans": plans(), "timings": [] if args.plan_only else timings(args.sizes, args.tiles, args.repeats,
                                                                               args.threads, args.plan_gib)}
    result["machine"]["load_average_after"] = os.getloadavg()
    Path(args.out + ".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["| size | tile layout (why this tile); crops kept | untiled s (CPU s) | tiled s (CPU s) | "
             "tiled, kept s (CPU s) | tiled / untiled: wall (CPU) | kept / untiled: wall (CPU) | "
             "peak RSS MiB: untiled, tiled, kept |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["timings"]:
        u, t, k = r["untiled"], r["tiled"], r["tiled_keep"]
        lines.append(f"| {r['width']}x{r['height']} | {r['layout']} ({r['tile_is']}); {r['kept']} kept | "
                     f"{u['s']} ({u['cpu_s']}) | {t['s']} ({t['cpu_s']}) | "
                     f"{k['s']} ({k['cpu_s']}) | {t['ratio']} ({t['cpu_ratio']}) | {k['ratio']} ({k['cpu_ratio']}) | "
                     f"{u['peak_mib']}, {t['peak_mib']}, {k['peak_mib']} |")
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
