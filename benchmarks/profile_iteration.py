"""Where one iteration's time goes: training graph, each optimizer graph, host work, copies.

    python benchmarks/profile_iteration.py --sizes 256 512 --loops host device --iterations 10 --repeats 3

Each (size, loop) runs in its own process (the thread pools are per process), alternating
host/device/host/device when --repeats > 1. Every run resumes from the same L-BFGS state taken after
--fill iterations (default 110: the history of 100 is full, as it is for 400 of the default 500
iterations), made once per size by a first process and kept in a temporary folder, so that what is
timed is the steady state users wait through. Timers wrap each session run (perf_counter) and the
host loop's numpy optimizer and copies; "host, other" is the rest of `loop.step()`. Process CPU seconds
per iteration are reported beside the wall seconds: CPU well above threads x wall would mean threads
spinning against each other.

Also printed once: the convolution FLOPs of one iteration (forward to the deepest tapped layer plus
the input gradient, counted from eval.onnx's Conv nodes at the run's size) against this CPU's peak.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_info, peak_gflops  # noqa: E402

EXAMPLES = ROOT / "examples"


def _config(spec: dict):
    from nst_ort import Config, OptimConfig, StyleInput

    return Config(content=Path(spec["content"]), styles=[StyleInput(Path(spec["style"]))], size=spec["size"],
                  model=Path(spec["model"]), device="cpu", threads=spec["threads"], loop=spec["loop"],
                  optim=OptimConfig(name=spec["optimizer"], iterations=spec["fill"] + spec["iterations"] + 1))


class Timers:
    """Named sums over one iteration: wall seconds and process CPU seconds (every thread's)."""

    def __init__(self):
        self.now: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def add(self, name: str, wall: float, cpu: float) -> None:
        self.now[name] = self.now.get(name, 0.0) + wall
        self.cpu[name] = self.cpu.get(name, 0.0) + cpu

    def wrap(self, name_of, fn):
        def timed(*a, **kw):
            c0, t0 = time.process_time(), time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.add(name_of(*a, **kw), time.perf_counter() - t0, time.process_time() - c0)
        return timed

    def take(self) -> tuple[dict[str, float], dict[str, float]]:
        out, self.now, cpu, self.cpu = self.now, {}, self.cpu, {}
        return out, cpu


def instrument(timers: Timers) -> None:
    """Timers around every session run and the host loop's numpy work (benchmark only)."""
    import numpy as np

    from nst_ort.engine import device_loop
    from nst_ort.engine import loop
    from nst_ort.engine import optim
    from nst_ort.engine import session

    session.TrainingGraph.run = timers.wrap(lambda *a, **k: "training graph", session.TrainingGraph.run)
    labels = {"L-BFGS pair graph": "lbfgs_pair", "L-BFGS projection graph": "lbfgs_project",
              "L-BFGS direction graph": "lbfgs_direction", "Adam graph": "adam"}
    device_loop.Runner.__call__ = timers.wrap(lambda self, dev, host, out, what: labels.get(what, what),
                                              device_loop.Runner.__call__)
    for cls in (optim.LBFGS, optim.Adam):
        cls.step = timers.wrap(lambda *a, **k: "optimizer (numpy)", cls.step)

    def train_step(self, x):  # session.TrainStep.__call__ with its copies timed apart
        c0, t0 = time.process_time(), time.perf_counter()
        self.image.update_inplace(np.ascontiguousarray(x, dtype=np.float32))
        timers.add("copy in", time.perf_counter() - t0, time.process_time() - c0)
        losses = self.graph.run(self.binding)
        c0, t0 = time.process_time(), time.perf_counter()
        g = self.grad.numpy()
        timers.add("copy out", time.perf_counter() - t0, time.process_time() - c0)
        return (*losses, g)

    session.TrainStep.__call__ = train_step
    loop.TrainStep = session.TrainStep


def child(spec: dict) -> dict:
    from nst_ort import Stylizer
    from nst_ort.engine import checkpoint

    timers = Timers()
    cfg = _config(spec)
    st = Stylizer(cfg)
    state = Path(spec["state"])
    # One state for both loops (their states have one format); the fingerprint would tell them apart.
    if state.exists():
        st.load_state_dict(checkpoint.load(state, "profile"))
    else:  # the first process of this size makes the state every other one starts from
        for _ in range(spec["fill"]):
            st.step()
        checkpoint.save(state, st.state_dict(), "profile")
    st.step()  # builds the loop and binds (not timed)
    instrument(timers)
    timers.take()
    rows = []
    for _ in range(spec["iterations"]):
        c0, m0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
        rec = st.step()
        wall, cpu, main_cpu = time.perf_counter() - t0, time.process_time() - c0, time.thread_time() - m0
        parts, parts_cpu = timers.take()
        parts["host, other"] = rec.seconds - sum(parts.values())
        parts_cpu["host, other"] = cpu - sum(parts_cpu.values())
        rows.append({"wall": wall, "cpu": cpu, "main_cpu": main_cpu, "parts": parts, "parts_cpu": parts_cpu,
                     "loss": rec.loss})
    rt = st.runtime()
    return {"rows": rows, "loop": rt["loop"], "train_graph": rt["train_graph"], "shape": [rec.height, rec.width],
            "history": len(st.loop.state_dict().get("rho", [])) if spec["optimizer"] == "lbfgs" else None}


def op_child(spec: dict) -> dict:
    """onnxruntime's profiler on every session for a few iterations: time per operator type (the
    training graph's kernels and the optimizer graphs'), ms per iteration."""
    from nst_ort import Stylizer
    from nst_ort.engine import checkpoint, providers

    folder = Path(spec["profile_dir"])
    plain = providers.Placement.session_options

    def profiled(self):
        so = plain(self)
        so.enable_profiling = True
        so.profile_file_prefix = str(folder / "ort")
        return so

    providers.Placement.session_options = profiled
    st = Stylizer(_config(spec))
    if Path(spec["state"]).exists():
        st.load_state_dict(checkpoint.load(spec["state"], "profile"))
    for _ in range(spec["iterations"] + 1):
        st.step()
    files = [st.graphs.train.end_profiling()]
    for sessions in st.graphs._optimizers.values():
        files += [sess.end_profiling() for sess in (sessions or {}).values()]
    ops: dict[str, float] = {}
    for f in files:
        graph = "training" if f == files[0] else "optimizer"
        events = json.loads(Path(f).read_text())
        runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
        skip = runs[0]["ts"] + runs[0]["dur"] if runs else 0  # the first run binds and warms up
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= skip:
                key = f"{graph}: {e['args'].get('op_name', '?')}"
                ops[key] = ops.get(key, 0.0) + e["dur"] / 1e3 / spec["iterations"]
    return {"ops_ms": dict(sorted(ops.items(), key=lambda kv: -kv[1])), "loop": spec["loop"]}


def run_child(spec: dict, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    which = "--op-child" if "profile_dir" in spec else "--child"
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), which, json.dumps(spec)],
                       capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"profile: child failed ({spec['loop']}, {spec['size']} px):\n{p.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def conv_flops(model: Path, height: int, width: int) -> float:
    """FLOPs of one iteration's convolutions: forward to the deepest tapped layer plus the input
    gradient (the same count again), 2 per multiply-add, from eval.onnx's Conv nodes (3x3, pad 1,
    stride 1; pooling halves the size between blocks)."""
    import onnx

    g = onnx.load(str(model / "eval.onnx"), load_external_data=False).graph
    shapes = {t.name: list(t.dims) for t in g.initializer}
    h, w, total = height, width, 0.0
    for node in g.node:
        if node.op_type == "Cast" and node.input[0] in shapes:  # fp16 weights stored, cast at load
            shapes[node.output[0]] = shapes[node.input[0]]
        elif node.op_type == "Conv":
            wshape = shapes.get(node.input[1])
            if wshape is None:
                continue
            cout, cin, kh, kw = wshape
            total += 2.0 * h * w * cout * cin * kh * kw
        elif node.op_type in ("MaxPool", "AveragePool"):
            h, w = h // 2, w // 2
    return 2 * total


def summarize(runs: list[dict]) -> dict:
    """Per part: wall and CPU ms, the median over iterations within a run, then the median (and range)
    over runs."""
    per_run = []
    for r in runs:
        rows = r["rows"]
        parts = sorted({k for row in rows for k in row["parts"]})
        d = {"iteration": (statistics.median(x["wall"] for x in rows), statistics.median(x["cpu"] for x in rows)),
             "main thread": (None, statistics.median(x["main_cpu"] for x in rows))}
        for k in parts:
            d[k] = (statistics.median(x["parts"].get(k, 0.0) for x in rows),
                    statistics.median(x["parts_cpu"].get(k, 0.0) for x in rows))
        per_run.append(d)
    out = {}
    for k in per_run[0]:
        walls = [p[k][0] for p in per_run if p[k][0] is not None]
        cpus = [p[k][1] for p in per_run]
        out[k] = {"wall": statistics.median(walls) if walls else None, "wall_min": min(walls, default=None),
                  "wall_max": max(walls, default=None), "cpu": statistics.median(cpus), "cpu_min": min(cpus),
                  "cpu_max": max(cpus)}
    return out


ORDER = ["training graph", "copy in", "copy out", "optimizer (numpy)", "lbfgs_pair", "lbfgs_project",
         "lbfgs_direction", "adam", "host, other", "iteration", "main thread"]


def _cell(v: dict | None, key: str) -> str:
    if v is None or v[key] is None:
        return "-"
    return f"{1e3 * v[key]:.1f} ({1e3 * v[key + '_min']:.0f}-{1e3 * v[key + '_max']:.0f})"


def format_table(size: int, entry: dict, peak: float | None) -> str:
    loops, (h, w) = entry["loops"], entry["shape"]
    lines = [f"{w}x{h} ({size} px), L-BFGS history {next(iter(loops.values()))['history']}: ms per iteration, "
             "median over runs (range); CPU = process CPU time, every thread",
             "",
             "| part | " + " | ".join(f"{lp} loop wall | {lp} loop CPU" for lp in loops) + " |",
             "| --- |" + " --- | --- |" * len(loops)]
    for k in ORDER:
        if not any(k in s["summary"] for s in loops.values()):
            continue
        cells = [f"{_cell(s['summary'].get(k), 'wall')} | {_cell(s['summary'].get(k), 'cpu')}" for s in loops.values()]
        lines.append(f"| {'**iteration**' if k == 'iteration' else k} | " + " | ".join(cells) + " |")
    flops = entry["conv_gflop"]
    train_wall = min(s["summary"]["training graph"]["wall"] for s in loops.values())
    train_cpu = min(s["summary"]["training graph"]["cpu"] for s in loops.values())
    lines += ["", f"Convolutions: {flops:.1f} GFLOP per iteration (forward to the deepest tapped layer + input "
              f"gradient, counted as direct 3x3 convolutions). The training graph does them at {flops / train_wall:.0f} "
              f"GFLOP/s of wall time, {flops / train_cpu:.0f} GFLOP/s per CPU-second"]
    if peak:
        cores = entry.get("cores") or 1
        lines[-1] += (f"; this CPU's peak is {peak:.0f} GFLOP/s ({peak / cores:.0f} per core): "
                      f"{100 * flops / train_wall / peak:.0f}% of the whole CPU's peak in wall time, "
                      f"{100 * flops / train_cpu / (peak / cores):.0f}% of a core's per CPU-second; at peak the "
                      f"convolutions would take {1e3 * flops / peak:.0f} ms.")
    if entry.get("ops_ms"):
        total = sum(entry["ops_ms"].values())
        lines += ["", "Operators (onnxruntime's profiler, device loop; kernel time summed over threads' "
                  "parallel sections as the profiler reports it):", "",
                  "| graph: operator | ms per iteration | share |", "| --- | --- | --- |"]
        for k, v in list(entry["ops_ms"].items())[:12]:
            lines.append(f"| {k} | {v:.1f} | {100 * v / total:.0f}% |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=ROOT / "models" / "vgg16")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--loops", nargs="+", default=["host", "device"], choices=["host", "device"])
    p.add_argument("--optimizer", choices=["lbfgs", "adam"], default="lbfgs")
    p.add_argument("--iterations", type=int, default=10, help="timed iterations per run")
    p.add_argument("--fill", type=int, default=110, help="iterations run once per size before the timed ones")
    p.add_argument("--repeats", type=int, default=3, help="runs per (size, loop), alternating loops")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: nst-ort's default)")
    p.add_argument("--content", type=Path, default=EXAMPLES / "chelsea_cat.jpg")
    p.add_argument("--style", type=Path, default=EXAMPLES / "starry_night.jpg")
    p.add_argument("--state-dir", type=Path, help="keep the filled states here (default: a temporary folder)")
    p.add_argument("--json", type=Path)
    p.add_argument("--ops", action="store_true",
                   help="also onnxruntime's profiler per operator type (device loop, one run per size)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--op-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child or args.op_child:
        result = child(json.loads(args.child)) if args.child else op_child(json.loads(args.op_child))
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    info = cpu_info()
    peak = peak_gflops(info)
    print(f"cpu: {info['model']}; {info['cpus']} cpus; peak {peak or '?'} GFLOP/s fp32 ({info['peak_basis']}); "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    results = {"machine": info, "peak_gflops": peak, "loadavg_start": os.getloadavg(), "sizes": {},
               "args": {k: str(v) for k, v in vars(args).items() if k != "child"}}
    with tempfile.TemporaryDirectory(prefix="nst-profile-") as tmp:
        state_dir = args.state_dir or Path(tmp)
        state_dir.mkdir(parents=True, exist_ok=True)
        for size in args.sizes:
            spec = {"model": str(args.model.resolve()), "size": size, "threads": args.threads,
                    "optimizer": args.optimizer, "iterations": args.iterations, "fill": args.fill,
                    "content": str(args.content.resolve()), "style": str(args.style.resolve()),
                    "state": str(state_dir / f"state_{args.optimizer}_{size}_{args.fill}.npz")}
            runs = {lp: [] for lp in args.loops}
            for _ in range(args.repeats):
                for lp in args.loops:
                    runs[lp].append(run_child({**spec, "loop": lp}, timeout=3600))
            loops = {lp: {"summary": summarize(rs), "history": rs[0]["history"], "runs": rs,
                          "train_graph": rs[0]["train_graph"]} for lp, rs in runs.items()}
            shape = runs[args.loops[0]][0]["shape"]
            flops = conv_flops(args.model, *shape)
            entry = {"shape": shape, "conv_gflop": flops / 1e9, "cores": info["cores"], "loops": loops}
            if args.ops:
                with tempfile.TemporaryDirectory(prefix="nst-ops-") as ops_dir:
                    entry["ops_ms"] = run_child({**spec, "loop": "device", "profile_dir": ops_dir,
                                                 "iterations": min(args.iterations, 5)}, timeout=3600)["ops_ms"]
            results["sizes"][str(size)] = entry
            print("\n" + format_table(size, entry, peak), flush=True)
    results["loadavg_end"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        args.json.with_suffix(".md").write_text(
            "\n\n".join(format_table(int(k), e, peak) for k, e in results["sizes"].items()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
