"""The same short stylization on several onnxruntime installs and providers, side by side (issue 12).

    python benchmarks/providers_compare.py --side cpu-1.32=.venv/bin/python:CPUExecutionProvider \
        --side cpu-1.18=.venv-floor/bin/python:CPUExecutionProvider \
        --side openvino-1.24=.venv-openvino/bin/python:OpenVINOExecutionProvider --json results/providers_compare.json

Each side runs `nst-ort CONTENT STYLE -o OUT --size S --iterations N --report R --provider P` with one
intra-op thread (the CPU provider by --threads 1, OpenVINO by --provider-option num_of_threads=1: thread
counts change float32 sums), for L-BFGS and Adam, and the final loss is compared with the first side's.
For OpenVINO it also counts how its session splits train.onnx: nodes OpenVINO runs (fused into
subgraphs) and nodes left to the CPU provider, from onnxruntime's profiler.
With --strip PNG it also writes every side's two pictures side by side (README, Providers).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# Run inside the side's interpreter: which provider ran each node of one train.onnx evaluation.
_SPLIT = r"""
import json, sys, numpy as np, onnxruntime as ort
sys.path.insert(0, sys.argv[1])
from nst_ort import Artifacts
art = Artifacts(None)
so = ort.SessionOptions(); so.enable_profiling = True; so.profile_file_prefix = sys.argv[2]
sess = ort.InferenceSession(str(art.graph_path("train")), so, providers=[(sys.argv[3], {"num_of_threads": "1"}), "CPUExecutionProvider"])
feeds = {}
for i in sess.get_inputs():
    shape = [64 if isinstance(d, str) or d is None else d for d in i.shape]
    feeds[i.name] = np.random.default_rng(0).random(shape, dtype=np.float32)
sess.run(None, feeds)
events = json.load(open(sess.end_profiling()))
nodes = {}
for e in events:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
        nodes[e["name"][:-len("_kernel_time")]] = e.get("args", {}).get("provider")
ov = sorted(n for n, p in nodes.items() if p == sys.argv[3])
cpu = sorted(n for n, p in nodes.items() if p == "CPUExecutionProvider")
print(json.dumps({"subgraphs": len(ov), "cpu_nodes": len(cpu), "cpu_node_names": cpu[:20]}))
"""


def run_side(python: str, provider: str, optimizer: str, args, tmp: Path, name: str) -> dict:
    out, report = tmp / f"{name}_{optimizer}.png", tmp / f"{name}_{optimizer}.json"
    threads = ["--threads", "1"] if provider == "CPUExecutionProvider" else ["--provider-option", "num_of_threads=1"]
    cmd = [python, "-m", "nst_ort", str(args.content), str(args.style), "-o", str(out), "--size", str(args.size),
           "--iterations", str(args.iterations), "--optimizer", optimizer, "--report", str(report), "-q",
           "--provider", provider, *threads]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise SystemExit(f"{name}: exit {done.returncode}: {done.stderr.strip()[-1500:]}")
    rep = json.loads(report.read_text())
    version = subprocess.run([python, "-c", "import onnxruntime; print(onnxruntime.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    return {"loss": rep["records"][-1]["loss"], "onnxruntime": version, "runtime": rep["runtime"],
            "seconds": [r["seconds"] for r in rep["records"]]}


def write_strip(path: Path, tmp: Path, sides: dict) -> None:
    """Each side's L-BFGS (top row) and Adam (bottom row) output, labelled with the side and its loss."""
    from PIL import Image, ImageDraw

    tiles = {(name, opt): Image.open(tmp / f"{name}_{opt}.png").convert("RGB") for name in sides for opt in ("lbfgs", "adam")}
    w, h = next(iter(tiles.values())).size
    label, gap = 28, 4
    sheet = Image.new("RGB", (len(sides) * (w + gap) - gap, 2 * (h + label)), "white")
    draw = ImageDraw.Draw(sheet)
    for col, name in enumerate(sides):
        for row, opt in enumerate(("lbfgs", "adam")):
            x, y = col * (w + gap), row * (h + label)
            sheet.paste(tiles[name, opt], (x, y + label))
            draw.text((x + 2, y + 2), f"{name} {'L-BFGS' if opt == 'lbfgs' else 'Adam'}", fill="black")
            draw.text((x + 2, y + 14), f"loss {sides[name][opt]['loss']:.6g}", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", action="append", required=True, metavar="NAME=PYTHON:PROVIDER")
    p.add_argument("--content", default=EXAMPLES / "chelsea_cat.jpg")
    p.add_argument("--style", default=EXAMPLES / "great_wave.jpg")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--json")
    p.add_argument("--strip", help="also write the outputs side by side (L-BFGS above, Adam below) to this PNG")
    args = p.parse_args(argv)
    sides = []
    for s in args.side:
        name, _, rest = s.partition("=")
        python, _, provider = rest.rpartition(":")
        sides.append((name, python, provider))
    results: dict = {"content": str(args.content), "style": str(args.style), "size": args.size,
                     "iterations": args.iterations, "sides": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, python, provider in sides:
            r = {opt: run_side(python, provider, opt, args, tmp, name) for opt in ("lbfgs", "adam")}
            if provider != "CPUExecutionProvider":
                split = subprocess.run([python, "-c", _SPLIT, str(ROOT), str(tmp / f"{name}_profile"), provider],
                                       capture_output=True, text=True, cwd=ROOT)
                r["split"] = json.loads(split.stdout) if split.returncode == 0 else {"error": split.stderr[-800:]}
            results["sides"][name] = {"provider": provider, **r}
        if args.strip:
            write_strip(Path(args.strip), tmp, results["sides"])
    first = next(iter(results["sides"].values()))
    print(f"{args.size} px, {args.iterations} iterations, {Path(args.content).name} / {Path(args.style).name}, 1 thread")
    print("| side | onnxruntime | provider | L-BFGS loss | vs first | Adam loss | vs first | train.onnx split |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results["sides"].items():
        dl = r["lbfgs"]["loss"] / first["lbfgs"]["loss"] - 1
        da = r["adam"]["loss"] / first["adam"]["loss"] - 1
        split = r.get("split", {})
        where = (f"{split['subgraphs']} OpenVINO node(s), {split['cpu_nodes']} on the CPU provider" if "subgraphs" in split
                 else split.get("error", "-")[:80] if split else "-")
        print(f"| {name} | {r['lbfgs']['onnxruntime']} | {r['provider']} | {r['lbfgs']['loss']:.8g} | {dl:+.3%} | "
              f"{r['adam']['loss']:.8g} | {da:+.3%} | {where} |")
        r["lbfgs_vs_first"], r["adam_vs_first"] = dl, da
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
