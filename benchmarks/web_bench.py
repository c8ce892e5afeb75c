"""Seconds per iteration in the browser (onnxruntime-web, wasm, threads) against the native CPU provider.

Both sides in one invocation, on the same model, the same PNG inputs (exact pixels on both sides),
the same L-BFGS settings and the same thread count, alternating native / browser per repeat:
- native: the Python runtime (Stylizer, CPU provider, device loop), in this process;
- browser: the web app in headless Chromium (tests/web/drive.mjs), served by `nst-ort web`, started
  from the page's controls; the page's own per-iteration records.
An iteration is one loss-and-gradient evaluation plus the L-BFGS update; the figure is the median
over the iterations after the first two (warm-up). Prints a markdown table and writes it with the raw
JSON to benchmarks/results/web_speed.{md,json} (or --out).

    python benchmarks/web_bench.py --sizes 128 256 --iterations 12 --repeats 2 --threads 2

Needs node, Chromium and `npm ci` (as tests/test_web.py). Timings on a shared machine are noisy:
the load average at the start of each run is recorded beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_web import CHROMIUM, EXAMPLES, MODEL, NODE, drive, save_png, serve  # noqa: E402


def lscpu() -> dict:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return {}
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = info.get("Flags", "").split()
    return {"model": info.get("Model name", "").strip(), "cpus": info.get("CPU(s)", "").strip(),
            "simd": [f for f in flags if f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile")]}


def chromium_version() -> str:
    try:
        return subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def median_after_warmup(seconds: list[float]) -> float:
    return statistics.median(seconds[2:] if len(seconds) > 3 else seconds)


def native(content: Path, style: Path, size: int, iterations: int, threads: int) -> dict:
    from nst_ort import Config, StyleInput, Stylizer
    from nst_ort.engine.config import OptimConfig

    cfg = Config(content=content, styles=[StyleInput(style)], size=size, model=MODEL, device="cpu", threads=threads,
                 loop="device", optim=OptimConfig(name="lbfgs", iterations=iterations))
    t0 = time.perf_counter()
    st = Stylizer(cfg)
    load = time.perf_counter() - t0
    recs = list(st.run())
    return {"seconds": [r.seconds for r in recs], "loss": [r.loss for r in recs], "load_s": load,
            "size": [recs[0].width, recs[0].height], "train_graph": st.runtime()["train_graph"]}


def browser(url: str, content: Path, style: Path, size: int, iterations: int, threads: int, graph: str | None) -> dict:
    q = f"?backend=wasm&threads={threads}" + (f"&graph={graph}" if graph else "")
    t0 = time.perf_counter()
    out = drive({"url": url + q, "steps": [
        {"upload": "#content-file", "files": [str(content)]}, {"upload": "#style-files", "files": [str(style)]},
        {"set": {"size": size, "iterations": iterations, "optimizer": "lbfgs", "history": 100}},
        {"click": "#start"}, {"until": "['done', 'error'].includes(a.state)"}]}, timeout=3600)
    if out["state"] != "done":
        raise SystemExit(f"browser run failed: {out['message']}")
    recs = out["records"]
    return {"seconds": [r["seconds"] for r in recs], "loss": [r["loss"] for r in recs],
            "wall_s": time.perf_counter() - t0, "size": [recs[0]["width"], recs[0]["height"]],
            "heap_bytes": recs[-1].get("heap"), "backend": out["backend"]["label"], "train_graph": out["model"]["trainGraph"],
            "onnxruntime_web": out["backend"]["version"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--repeats", type=int, default=1, help="native/browser pairs per size")
    p.add_argument("--threads", type=int, default=2, help="threads on both sides")
    p.add_argument("--graph", default=None, help="training graph in the browser (default: the page's choice, train_cpu on wasm)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "web_speed")
    args = p.parse_args(argv)
    if NODE is None or CHROMIUM is None or not (ROOT / "node_modules" / "puppeteer-core").is_dir():
        raise SystemExit("needs node, Chromium and puppeteer-core (apt-get install chromium nodejs npm; npm ci)")
    import onnxruntime

    tmp = Path(tempfile.mkdtemp(prefix="nst-ort-web-bench-"))
    content = save_png(EXAMPLES / "tuebingen_neckarfront.jpg", 512, tmp / "content.png")
    style = save_png(EXAMPLES / "starry_night.jpg", 512, tmp / "style.png")
    runs = []
    with serve() as url:
        for size in args.sizes:
            for rep in range(args.repeats):
                for side in ("native", "browser"):
                    load = os.getloadavg()[0]
                    r = (native(content, style, size, args.iterations, args.threads) if side == "native"
                         else browser(url, content, style, size, args.iterations, args.threads, args.graph))
                    r.update(side=side, size_arg=size, repeat=rep, load_average=load,
                             s_per_it=median_after_warmup(r["seconds"]))
                    runs.append(r)
                    print(f"{side:7s} {size} px (repeat {rep + 1}): {r['s_per_it']:.3f} s/it, load {load:.1f}", file=sys.stderr)
    # The lowest loss of the run rather than the last: the first L-BFGS iterations jump (steepest-descent
    # steps that double, spikes of 1e3x), and where a jump lands differs between any two float32 runs.
    rows = ["| size | native CPU provider s/it | browser wasm s/it | browser / native | lowest loss in N iterations, browser vs native | load average |",
            "| --- | --- | --- | --- | --- | --- |"]
    for size in args.sizes:
        nat = [r for r in runs if r["size_arg"] == size and r["side"] == "native"]
        web = [r for r in runs if r["size_arg"] == size and r["side"] == "browser"]
        n, w = statistics.median(r["s_per_it"] for r in nat), statistics.median(r["s_per_it"] for r in web)
        dl = min(web[0]["loss"]) / min(nat[0]["loss"]) - 1
        loads = [r["load_average"] for r in nat + web]
        rows.append(f"| {'x'.join(map(str, nat[0]['size']))} | {n:.3f} | {w:.3f} | {w / n:.1f}x | {100 * dl:+.2f}% "
                    f"(N = {args.iterations}) | {min(loads):.1f}-{max(loads):.1f} |")
    cpu = lscpu()
    conditions = {
        "cpu": cpu, "platform": platform.platform(), "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__, "onnxruntime_web": runs[-1].get("onnxruntime_web"),
        "chromium": chromium_version(), "threads": args.threads, "iterations": args.iterations,
        "browser_train_graph": next(r["train_graph"] for r in runs if r["side"] == "browser"),
        "native_train_graph": next(r["train_graph"] for r in runs if r["side"] == "native"),
        "date": time.strftime("%Y-%m-%d"),
    }
    table = "\n".join(rows)
    header = (f"{cpu.get('model', '?')} ({cpu.get('cpus', '?')} CPUs; {', '.join(cpu.get('simd', []))}); "
              f"{args.threads} threads on both sides; onnxruntime {conditions['onnxruntime']} "
              f"({conditions['native_train_graph']}), onnxruntime-web {conditions['onnxruntime_web']} "
              f"({conditions['browser_train_graph']}, wasm SIMD) in {conditions['chromium']}; median s/it after 2 "
              f"warm-up iterations of {args.iterations}, {args.repeats} native/browser pair(s) per size")
    print(header + "\n\n" + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(header + "\n\n" + table + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"conditions": conditions, "runs": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
