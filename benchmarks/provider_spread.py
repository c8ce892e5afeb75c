"""How far L-BFGS's loss after N iterations moves with float32 rounding alone, beside another provider's (issue 12).

    python benchmarks/provider_spread.py --openvino-python .venv-openvino/bin/python --size 128 --iterations 20 \
        --json benchmarks/results/provider_spread.json --md benchmarks/results/provider_spread.md

For each image pair, L-BFGS from the content image (deterministic) runs on these sides, each with one
intra-op thread unless said otherwise, and every iteration's loss is compared with the reference's:

- reference: the CPU provider, train_cpu.onnx (its Winograd graph), device loop;
- the CPU provider with 2 threads; with train.onnx (NST_ORT_TRAIN_GRAPH=train); with the host loop
  (optim.py in numpy instead of the optimizer graphs); with 1e-7 relative noise on each gradient (host
  loop, two seeds): the CPU provider's own rounding-order spread;
- OpenVINO (CPU device, f32), train.onnx, device loop, in --openvino-python's onnxruntime-openvino.

Each side runs twice: as the runtime steps (quasi-Newton steps capped per pixel,
optim.quasi_newton_length) and uncapped, as torch.optim.LBFGS steps (MAX_QN_STEP set to infinity in
the side's process). Then, at the start image, the gradient of each loss term alone on OpenVINO and on
the CPU provider with train.onnx is compared with the reference's (relative L2; the content term is
measured against the whole gradient, since at the content image its own gradient is rounding noise).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PAIRS = "chelsea_cat:great_wave,tuebingen_neckarfront:starry_night,astronaut:the_scream"

# One side's run, in the side's interpreter: argv = root, json spec. Prints the losses as JSON.
_TRAJECTORY = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
spec = json.loads(sys.argv[2])
import numpy as np
import nst_ort.engine.config as config
import nst_ort.engine.device_loop as device_loop
import nst_ort.engine.optim as optim
# The CLI refuses more threads than this process's CPUs (issue #10); here the count only sets
# onnxruntime's reduction order, which is what is measured, so a pinned run may still ask for 2.
config.max_threads = lambda: 64
if spec["uncapped"]:
    optim.MAX_QN_STEP = device_loop.MAX_QN_STEP = float("inf")
if spec["noise"]:
    import nst_ort.engine.session as session
    rng = np.random.default_rng(spec["seed"])
    plain = session.TrainStep.__call__
    def noisy(self, x):
        out = plain(self, x)
        g = out[-1] * (1 + spec["noise"] * rng.standard_normal(out[-1].shape).astype(np.float32))
        return (*out[:-1], g.astype(np.float32))
    session.TrainStep.__call__ = noisy
from pathlib import Path
from nst_ort.engine.config import Config, OptimConfig, StyleInput
from nst_ort.engine.stylize import Stylizer
ov = spec["provider"].startswith("OpenVINO")
cfg = Config(content=Path(spec["content"]), styles=[StyleInput(Path(spec["style"]))], size=spec["size"],
             provider=spec["provider"], threads=None if ov else spec["threads"], loop=spec["loop"],
             provider_options={"num_of_threads": str(spec["threads"])} if ov else None,
             optim=OptimConfig(name="lbfgs", iterations=spec["iterations"]))
st = Stylizer(cfg)
losses = [r.loss for r in st.run()]
print(json.dumps({"loss": losses, "train_graph": st.graphs.train_path.name, "loop": st.loop_kind}))
"""

# Per-term gradients at the start image, in the OpenVINO interpreter (which has both providers).
_GRADIENT = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
spec = json.loads(sys.argv[2])
import numpy as np
from pathlib import Path
from nst_ort.engine.config import Config, OptimConfig, StyleInput
from nst_ort.engine.providers import choose
from nst_ort.engine.session import Graphs, TrainStep
from nst_ort.engine.stylize import Stylizer
cfg = Config(content=Path(spec["content"]), styles=[StyleInput(Path(spec["style"]))], size=spec["size"],
             provider="CPUExecutionProvider", threads=1, optim=OptimConfig(iterations=1))
st = Stylizer(cfg)
size = st.sizes()[-1]
x0 = st.targets.initial(size, None, st.rng)
feeds = st.targets.feeds(size, x0)
w = feeds["term_weights"].copy()
def grads(provider, graph):
    if graph:
        os.environ["NST_ORT_TRAIN_GRAPH"] = graph
    ov = provider.startswith("OpenVINO")
    g = Graphs(st.artifacts, choose(provider=provider, threads=None if ov else 1,
                                    options={"num_of_threads": "1"} if ov else None))
    os.environ.pop("NST_ORT_TRAIN_GRAPH", None)
    out = {}
    for term, mask in (("total", [1, 1, 1]), ("content", [1, 0, 0]), ("style", [0, 1, 0]), ("tv", [0, 0, 1])):
        f = dict(feeds, term_weights=(w * np.array(mask, np.float32)).astype(np.float32))
        out[term] = TrainStep(g, f, x0.shape)(x0)[-1].astype(np.float64)
    return out
ref = grads("CPUExecutionProvider", None)
rows = {}
for name, provider, graph in (("cpu train.onnx", "CPUExecutionProvider", "train"),
                              ("openvino", "OpenVINOExecutionProvider", None)):
    g = grads(provider, graph)
    total = np.linalg.norm(ref["total"])
    rows[name] = {t: float(np.linalg.norm(g[t] - ref[t]) / (total if t == "content" else np.linalg.norm(ref[t])))
                  for t in g}
print(json.dumps(rows))
"""


def sides(python: str, ov_python: str | None) -> list[dict]:
    cpu = {"python": python, "provider": "CPUExecutionProvider", "threads": 1, "loop": "device"}
    s = [{**cpu, "name": "CPU, 1 thread (reference)"},
         {**cpu, "name": "CPU, 2 threads", "threads": 2},
         {**cpu, "name": "CPU, train.onnx", "env": {"NST_ORT_TRAIN_GRAPH": "train"}},
         {**cpu, "name": "CPU, host loop", "loop": "host"},
         {**cpu, "name": "CPU, host loop, 1e-7 gradient noise (seed 1)", "loop": "host", "noise": 1e-7, "seed": 1},
         {**cpu, "name": "CPU, host loop, 1e-7 gradient noise (seed 2)", "loop": "host", "noise": 1e-7, "seed": 2}]
    if ov_python:
        s.append({**cpu, "name": "OpenVINO (CPU device, f32)", "python": ov_python, "provider": "OpenVINOExecutionProvider"})
    return s


def _run(python: str, code: str, spec: dict, env: dict | None = None) -> dict:
    done = subprocess.run([python, "-c", code, str(ROOT), json.dumps(spec)], check=False, capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise SystemExit(f"{spec}: exit {done.returncode}: {done.stderr.strip()[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", default=PAIRS, help=f"CONTENT:STYLE names in examples/, comma-separated (default {PAIRS})")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--python", default=sys.executable, help="interpreter with onnxruntime (the CPU sides)")
    p.add_argument("--openvino-python", help="interpreter with onnxruntime-openvino (omit: no OpenVINO side)")
    p.add_argument("--json")
    p.add_argument("--md")
    args = p.parse_args(argv)
    pairs = [tuple(x.split(":")) for x in args.pairs.split(",")]
    result: dict = {"size": args.size, "iterations": args.iterations, "pairs": {}}
    for content, style in pairs:
        key = f"{content}/{style}"
        base = {"content": str(EXAMPLES / f"{content}.jpg"), "style": str(EXAMPLES / f"{style}.jpg"),
                "size": args.size, "iterations": args.iterations}
        runs: dict = {}
        for mode in ("capped", "uncapped"):
            runs[mode] = {}
            for s in sides(args.python, args.openvino_python):
                spec = {**base, "provider": s["provider"], "threads": s["threads"], "loop": s["loop"],
                        "noise": s.get("noise", 0.0), "seed": s.get("seed", 0), "uncapped": mode == "uncapped"}
                r = _run(s["python"], _TRAJECTORY, spec, s.get("env"))
                runs[mode][s["name"]] = r
                print(f"{key} {mode:8s} {s['name']:48s} {r['loss'][-1]:.8g}", file=sys.stderr)
            ref = runs[mode]["CPU, 1 thread (reference)"]["loss"]
            for r in runs[mode].values():
                r["vs_reference"] = [a / b - 1 for a, b in zip(r["loss"], ref)]
        entry = {"runs": runs}
        if args.openvino_python:
            entry["gradient_at_start"] = _run(args.openvino_python, _GRADIENT, base)
        result["pairs"][key] = entry
    md = render(result)
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.md:
        Path(args.md).write_text(md + "\n")
    return 0


def render(result: dict) -> str:
    pairs = list(result["pairs"])
    n = result["iterations"]
    lines = [(f"L-BFGS, {result['size']} px, {n} iterations from the content image; loss after {n} iterations "
              "relative to the CPU provider's (1 thread, train_cpu.onnx, device loop). uncapped: as torch.optim.LBFGS "
              "steps; capped: as the runtime steps (optim.quasi_newton_length)"), "",
             "| side | " + " | ".join(f"{p} uncapped | {p} capped" for p in pairs) + " |",
             "| --- |" + " --- | --- |" * len(pairs)]
    first = result["pairs"][pairs[0]]["runs"]["capped"]
    for side in first:
        cells = []
        for p in pairs:
            for mode in ("uncapped", "capped"):
                r = result["pairs"][p]["runs"][mode][side]
                cells.append(f"{r['loss'][-1]:.6g}" if side.endswith("(reference)") else f"{r['vs_reference'][-1]:+.2%}")
        lines.append(f"| {side} | " + " | ".join(cells) + " |")
    for mode in ("uncapped", "capped"):
        cells = []
        for p in pairs:
            own = [abs(r["vs_reference"][-1]) for s, r in result["pairs"][p]["runs"][mode].items()
                   if s.startswith("CPU") and not s.endswith("(reference)")]
            cells.append(f"{max(own):.2%}")
        lines.append(f"\nCPU provider's own spread ({mode}, largest |difference| of its rows): " + ", ".join(
            f"{p} {c}" for p, c in zip(pairs, cells)))
    grads = {p: e["gradient_at_start"] for p, e in result["pairs"].items() if "gradient_at_start" in e}
    if grads:
        lines += ["", ("Gradient of each term alone at the start image against the reference's (relative L2; "
                       "content: against the whole gradient)"), "", "| pair | side | total | content | style | tv |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for p, rows in grads.items():
            for side, r in rows.items():
                lines.append(f"| {p} | {side} | " + " | ".join(f"{r[t]:.1e}" for t in ("total", "content", "style", "tv")) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
