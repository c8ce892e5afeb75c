"""Start-up: the time from a fresh process to the first iteration, with and without the cache of
onnxruntime's optimized graphs (nst_ort/engine/ortcache.py), phase by phase.

    python benchmarks/startup.py                          # 64 px, 3 repeats, table + benchmarks/results/startup.json
    python benchmarks/startup.py --size 256 --repeats 5 --threads 2 --json /tmp/startup.json

Each measurement is a fresh Python process (imports and sessions are what a user waits for), run one
after the other in the order off, cold, warm, off, cold, warm ... so that a busy machine slows all
three alike:
- off: NST_ORT_CACHE=0 (sessions made from the model's graphs, as before the cache);
- cold: an empty cache folder (the sessions are made and their optimized graphs written: the first
  run on a machine, or after an onnxruntime upgrade);
- warm: the cache filled by the cold run before it (every later run).
Phases: import (nst_ort and onnxruntime), model (reading and verifying the artifact folder),
inputs (image headers and decoding), sessions (eval and training graphs), first step (targets,
the optimizer graphs' sessions, one iteration); total = process start to the end of the first
iteration. Also the whole `nst-ort ... --iterations 1` command's wall time, per mode.
Prints a table (median over repeats) and writes everything to --json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("off", "cold", "warm")

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
sys.modules["torch"] = None
import nst_ort.commands.cli, onnxruntime
from pathlib import Path
from nst_ort import Config, StyleInput, Stylizer
from nst_ort.engine.artifacts import Artifacts
t1 = time.perf_counter()
a = Artifacts()
t2 = time.perf_counter()
cfg = Config(content=Path(sys.argv[1]), styles=[StyleInput(Path(sys.argv[2]))], size=int(sys.argv[3]),
             device="cpu", threads=int(sys.argv[4]) or None)
cfg.optim.iterations = 1
s = Stylizer(cfg, artifacts=a)
s.load_inputs()
t3 = time.perf_counter()
g = s.graphs
t4 = time.perf_counter()
s.step()
t5 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "model": t2 - t1, "inputs": t3 - t2, "sessions": t4 - t3, "first_step": t5 - t4,
                  "in_process": t5 - t0, "cache": g.cache, "train_graph": g.train_path.name}))
"""


def run_child(env: dict, content: Path, style: Path, size: int, threads: int) -> dict:
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, str(content), str(style), str(size), str(threads)],
                       capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"child failed: {r.stderr[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["total"] = wall  # process start (interpreter included) to the end of the first iteration, and exit
    return out


def run_cli(env: dict, content: Path, style: Path, size: int, threads: int, out: Path) -> float:
    argv = [sys.executable, "-m", "nst_ort", str(content), str(style), "-o", str(out), "--size", str(size),
            "--iterations", "1", "-q", "--device", "cpu"] + (["--threads", str(threads)] if threads else [])
    start = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if r.returncode != 0:
        raise SystemExit(f"nst-ort failed: {r.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="0: onnxruntime's default")
    p.add_argument("--content", type=Path, default=ROOT / "examples" / "chelsea_cat.jpg")
    p.add_argument("--style", type=Path, default=ROOT / "examples" / "starry_night.jpg")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "startup.json")
    args = p.parse_args()

    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = {**os.environ, "PYTHONPATH": str(ROOT)}
        base.pop("NST_ORT_CACHE", None)
        for k in range(args.repeats):
            cache = tmp / f"cache{k}"
            envs = {"off": {**base, "NST_ORT_CACHE": "0", "NST_ORT_CACHE_DIR": str(cache)},
                    "cold": {**base, "NST_ORT_CACHE_DIR": str(cache)},
                    "warm": {**base, "NST_ORT_CACHE_DIR": str(cache)}}
            for mode in MODES:  # cold fills the cache that warm then reads
                r = run_child(envs[mode], args.content, args.style, args.size, args.threads)
                r["cli_seconds"] = run_cli(envs[mode], args.content, args.style, args.size, args.threads,
                                           tmp / "out.png") if mode != "cold" else None
                runs[mode].append(r)
                print(f"repeat {k + 1}/{args.repeats} {mode}: total {r['total']:.2f} s, sessions {r['sessions']:.2f} s, "
                      f"cache {r['cache']}", file=sys.stderr, flush=True)
            shutil.rmtree(cache, ignore_errors=True)
        cache_bytes = None

    phases = ["import", "model", "inputs", "sessions", "first_step", "total"]
    med = {m: {ph: statistics.median(r[ph] for r in runs[m]) for ph in phases} for m in MODES}
    for m in ("off", "warm"):
        med[m]["cli_seconds"] = statistics.median(r["cli_seconds"] for r in runs[m])
    print(f"\nstart-up to the first iteration, {args.size} px, default model, CPU provider, "
          f"{args.threads or 'default'} threads, median of {args.repeats} (seconds)\n")
    print("| phase | cache off | cold (fills it) | warm |")
    print("| --- | ---: | ---: | ---: |")
    for ph in phases:
        print(f"| {ph} | {med['off'][ph]:.2f} | {med['cold'][ph]:.2f} | {med['warm'][ph]:.2f} |")
    print(f"| whole `nst-ort --iterations 1` | {med['off']['cli_seconds']:.2f} | - | {med['warm']['cli_seconds']:.2f} |")
    speed = med["off"]["sessions"] / max(med["warm"]["sessions"], 1e-9)
    print(f"\nsessions: {speed:.1f}x faster from the cache; total {med['off']['total'] / med['warm']['total']:.2f}x")
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import onnxruntime

    data = {"size": args.size, "threads": args.threads or None, "repeats": args.repeats, "cpu": cpu,
            "cpus": os.cpu_count(), "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "median": med, "runs": runs, "cache_bytes": cache_bytes}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
