"""Seconds per iteration of `nst-ort` as users run it, against PyTorch eager, in one command.

    python benchmarks/cli_bench.py --json benchmarks/results/cpu_cli_speed.json

For each size, each side runs as a whole process twice, with N1 and N2 iterations, and the time per
iteration is the slope (t(N2) - t(N1)) / (N2 - N1) of the process's wall time: start-up (imports,
session creation, targets) cancels, and everything the CLI does per iteration (progress line, report
record) is in it. Sides:

- `nst-ort CONTENT STYLE -o OUT --size S --iterations N --report R`: default flags (so --loop auto and
  nst-ort's default thread count);
- the same with `--loop host` and `--loop device` (the one that equals the default is not run again),
  and with `--threads 1` (is the default thread count the faster one?);
- PyTorch eager: benchmarks/bench.py's torch side (the same network, stored weights, loss and L-BFGS
  without line search, history 100) with nst-ort's default thread count, timed the same way.

Beside the slope, the inner loop: the median of nst-ort's per-iteration `seconds` in the N2 run's
report (torch: the median interval between closure calls), after 2 warm-up iterations. Quality: the
loss after N2 iterations of each side (same start, same function, same optimizer: within 2%).

The runs alternate (for each repeat: every side at N1, then every side at N2), so that a change in
the machine's load hits every side alike; the spread over repeats is reported. Every row carries
`lscpu`'s model and flags. The L-BFGS history fills during a run (N2 - 1 pairs at the end); the
steady state with a full history is benchmarks/profile_iteration.py's table (--profile runs it too).

Runtime on the 2-core machine with the defaults (sizes 256 512, 3 repeats): about 18 minutes with
--profile (measured: see benchmarks/RESULTS.md).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_info, peak_gflops, row_stamp  # noqa: E402

EXAMPLES = ROOT / "examples"
# N1, N2 per size (larger sizes: the 512 pair). At 512 px 4 -> 20 left the slope's spread over three
# repeats at +-0.1 s (1.07-1.26 s/it on a quiet machine): 32 iterations between the runs halve it.
ITERATIONS = {256: (5, 35), 512: (4, 36)}
FLAGS = {"default": [], "host": ["--loop", "host"], "device": ["--loop", "device"], "threads1": ["--threads", "1"]}


def nst_ort_command() -> list[str]:
    exe = shutil.which("nst-ort")
    if exe and Path(exe).resolve().parent == Path(sys.executable).resolve().parent:
        return [exe]
    return [sys.executable, "-m", "nst_ort"]  # this checkout's, with this interpreter


def default_threads() -> int | None:
    """The intra-op thread count nst-ort uses on the CPU provider without --threads."""
    from nst_ort.engine.threads import default_threads as nst_default

    return nst_default("CPUExecutionProvider")


def timed(cmd: list[str], env: dict, timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=timeout)
    return time.perf_counter() - t0, p


def run_nst_ort(flags: list[str], size: int, n: int, tmp: Path, args, env) -> dict:
    out, report = tmp / f"out_{size}_{n}.png", tmp / f"report_{size}_{n}.json"
    cmd = [*nst_ort_command(), str(args.content), str(args.style), "-o", str(out), "--size", str(size),
           "--iterations", str(n), "--report", str(report), *flags]
    if args.model:
        cmd += ["--model", str(args.model)]
    wall, p = timed(cmd, env, args.timeout)
    if p.returncode != 0:
        raise SystemExit(f"cli_bench: {' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    r = json.loads(report.read_text())
    secs = [rec["seconds"] for rec in r["records"]]
    return {"wall": wall, "iterations": len(secs), "inner": statistics.median(secs[2:] or secs),
            "loss": r["records"][-1]["loss"], "loop": r["runtime"].get("loop"),
            "shape": [r["records"][-1]["height"], r["records"][-1]["width"]]}


def run_torch(size: int, n: int, threads: int, arrays: Path, args, env) -> dict:
    spec = {"model": str((args.model or ROOT / "models" / "vgg16").resolve()), "size": size, "iterations": n,
            "threads": threads, "device": "cpu", "precision": None, "content": str(args.content),
            "style": str(args.style), "init": "content", "seed": 0, "arrays": str(arrays)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--child", "torch", "--spec", json.dumps(spec)]
    wall, p = timed(cmd, {**env, "OMP_NUM_THREADS": str(threads)}, args.timeout)
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"cli_bench: torch side exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    r = json.loads(lines[-1][len("RESULT "):])
    return {"wall": wall, "iterations": len(r["losses"]), "inner": statistics.median(r["times"][2:] or r["times"]),
            "loss": r["losses"][-1], "torch": r.get("torch"), "shape": r["shape"]}


def slope(a: dict, b: dict) -> float:
    return (b["wall"] - a["wall"]) / (b["iterations"] - a["iterations"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--iterations", type=int, nargs=2, metavar=("N1", "N2"),
                   help="iteration counts of the two runs, every size (default: " +
                        ", ".join(f"{a} {b} at {k} px" for k, (a, b) in ITERATIONS.items()) + ")")
    p.add_argument("--model", type=Path, help="artifact folder (default: nst-ort's default model)")
    p.add_argument("--content", type=Path, default=EXAMPLES / "tuebingen_neckarfront.jpg")
    p.add_argument("--style", type=Path, default=EXAMPLES / "starry_night.jpg")
    p.add_argument("--sides", default="default,host,device,threads1,torch",
                   help="comma-separated: default (nst-ort's flags), host, device (--loop), threads1 (--threads 1), "
                        "torch")
    p.add_argument("--profile", action="store_true",
                   help="then run benchmarks/profile_iteration.py (the per-part table at a full history)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--json", type=Path, help="write everything here, and the table beside it (.md)")
    args = p.parse_args(argv)
    args.content, args.style = args.content.resolve(), args.style.resolve()

    from benchmarks.bench import prepare_arrays

    info = cpu_info()
    peak = peak_gflops(info)
    threads = default_threads()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    t_start = time.perf_counter()
    results = {"machine": info, "peak_gflops": peak, "nst_ort_default_threads": threads,
               "date": time.strftime("%Y-%m-%d %H:%M"), "loadavg_start": os.getloadavg(), "sizes": {}}
    print(f"cpu: {info['model']} ({info['simd']}, {info['cores']} cores); nst-ort default threads: {threads} "
          f"(torch runs with the same); load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="nst-cli-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for size in args.sizes:
            n1, n2 = args.iterations or ITERATIONS.get(size, ITERATIONS[512])
            bench_args = argparse.Namespace(content=args.content, style=args.style, init="content", seed=0)
            arrays = prepare_arrays(bench_args, size, tmp)
            runs: dict[str, list] = {s: [] for s in sides}
            auto_loop = None
            for rep in range(args.repeats):
                pair: dict[str, dict] = {}
                for n in (n1, n2):
                    for s in sides:
                        if s in ("host", "device") and s == auto_loop:
                            continue  # the default run is this loop already
                        if s == "torch":
                            pair.setdefault(s, {})[n] = run_torch(size, n, threads, arrays, args, env)
                        else:
                            r = run_nst_ort(FLAGS[s], size, n, tmp, args, env)
                            pair.setdefault(s, {})[n] = r
                            if s == "default":
                                auto_loop = r["loop"]
                for s, by_n in pair.items():
                    runs[s].append({"n1": by_n[n1], "n2": by_n[n2], "slope": slope(by_n[n1], by_n[n2])})
                print(f"  {size} px repeat {rep + 1}: " + ", ".join(
                    f"{s} {1e3 * runs[s][-1]['slope']:.0f} ms" for s in runs if runs[s]), flush=True)
            results["sizes"][str(size)] = summarize(runs, auto_loop, n1, n2, info)
    results["loadavg_end"] = os.getloadavg()
    results["minutes"] = (time.perf_counter() - t_start) / 60
    table = format_table(results)
    print("\n" + table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        args.json.with_suffix(".md").write_text(table + "\n")
    if args.profile:
        cmd = [sys.executable, str(ROOT / "benchmarks" / "profile_iteration.py"), "--sizes", *map(str, args.sizes),
               "--content", str(args.content), "--style", str(args.style), "--ops"]
        if args.model:
            cmd += ["--model", str(args.model)]
        if args.json:
            cmd += ["--json", str(args.json.with_name(args.json.stem + "_profile.json"))]
        subprocess.run(cmd, cwd=str(ROOT), env=env, check=True)
    print(f"cli_bench: {(time.perf_counter() - t_start) / 60:.1f} minutes", flush=True)
    return 0


def summarize(runs: dict, auto_loop: str | None, n1: int, n2: int, info: dict) -> dict:
    out = {"n1": n1, "n2": n2, "auto_loop": auto_loop, "sides": {}}
    for s, rs in runs.items():
        if not rs:
            continue
        slopes = [r["slope"] for r in rs]
        inner = [r["n2"]["inner"] for r in rs]
        out["sides"][s] = {"slope": statistics.median(slopes), "slope_each": slopes,
                           "inner": statistics.median(inner), "inner_each": inner,
                           "loss_n2": rs[0]["n2"]["loss"], "shape": rs[0]["n2"]["shape"],
                           "loop": rs[0]["n2"].get("loop"), "runs": rs, **row_stamp(info)}
    torch = out["sides"].get("torch")
    for s, v in out["sides"].items():
        if torch and s != "torch":
            v["speedup"] = torch["slope"] / v["slope"]
            v["speedup_each"] = [t["slope"] / o["slope"] for o, t in zip(runs[s], runs["torch"])]
            v["loss_vs_torch"] = (v["loss_n2"] - torch["loss_n2"]) / abs(torch["loss_n2"])
    return out


def format_table(results: dict) -> str:
    info = results["machine"]
    lines = [f"CPU: {info['model']}, {info['simd']}, {info['cores']} cores ({info['mhz']} MHz); "
             f"nst-ort default threads {results['nst_ort_default_threads']}, torch the same; "
             f"load average {results['loadavg_start'][0]:.1f} at the start, {results['loadavg_end'][0]:.1f} at "
             f"the end; {results['minutes']:.0f} min",
             "",
             "| size | side | s/iteration, CLI slope (each repeat) | inner loop s/it | vs torch (each) "
             "| loss after N2 vs torch | CPU |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    names = {"default": "nst-ort (default flags: --loop {loop})", "host": "nst-ort --loop host",
             "device": "nst-ort --loop device", "threads1": "nst-ort --threads 1", "torch": "PyTorch eager {torch}"}
    for size, e in results["sizes"].items():
        for s, v in e["sides"].items():
            h, w = v["shape"]
            name = names[s].format(loop=v.get("loop"), torch=v["runs"][0]["n2"].get("torch", ""))
            each = ", ".join(f"{x:.3f}" for x in v["slope_each"])
            speed = ("-" if "speedup" not in v else
                     f"**{v['speedup']:.2f}x** ({', '.join(f'{x:.2f}' for x in v['speedup_each'])})")
            loss = "-" if "loss_vs_torch" not in v else f"{100 * v['loss_vs_torch']:+.2f}%"
            lines.append(f"| {w}x{h} (N {e['n1']}->{e['n2']}) | {name} | {v['slope']:.3f} ({each}) | "
                         f"{v['inner']:.3f} | {speed} | {loss} | {v['cpu']}, {v['simd']} |")
    lines.append("")
    for size, e in results["sizes"].items():
        lines.append(f"{size} px: {verdict(e)}")
    return "\n".join(lines)


def verdict(e: dict) -> str:
    """Is the default the fastest nst-ort side? (Overlapping ranges over the repeats: a tie.)"""
    ours = {s: v for s, v in e["sides"].items() if s != "torch"}
    if "default" not in ours:
        return "no default run"
    best = min(ours, key=lambda s: ours[s]["slope"])
    d = ours["default"]
    parts = [f"fastest nst-ort side: {best} ({ours[best]['slope']:.3f} s/it)"]
    if best != "default":
        tie = min(d["slope_each"]) <= max(ours[best]["slope_each"])
        parts.append("the default's runs overlap it (a tie within the spread)" if tie else
                     f"the default is {d['slope'] / ours[best]['slope']:.2f}x slower: change the default")
    t = e["sides"].get("torch")
    if t:
        parts.append(f"default vs torch eager {t['slope'] / d['slope']:.2f}x (target >= 1.3x), "
                     f"loss after {e['n2']} {100 * d['loss_vs_torch']:+.2f}% (target within 2%)")
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
