"""How closely the browser's first L-BFGS iterations follow the Python runtime's, and how much of the
difference any two float32 implementations of the loop show on the same settings.

For each case (content, style, size; PNG inputs made with the runtime's loader, so both sides start
from the same pixels) the first N iterations' total loss of:
- the page (onnxruntime-web, wasm, train_cpu.onnx), against
- the Python runtime, CPU provider, device loop (the reference);
and, for scale, two other implementations of the same loop in the runtime itself: its host loop
(optim.py's two-loop L-BFGS) and its device loop on train.onnx instead of train_cpu.onnx. Also the
first evaluation term by term (the same image on both sides: no optimizer involved).

    python benchmarks/web_parity.py [--iterations 10] [--cases default]

Prints a markdown table; writes it and the raw numbers to benchmarks/results/web_parity.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_web import EXAMPLES, MODEL, drive, save_png, serve  # noqa: E402

CASES = {  # name: content, its PNG's long side, style, its PNG's long side, size
    "tuebingen/starry 128": ("tuebingen_neckarfront.jpg", 160, "starry_night.jpg", 150, 128),
    "cat/wave 128": ("chelsea_cat.jpg", 160, "great_wave.jpg", 154, 128),
    "cat/wave 64 (the test)": ("chelsea_cat.jpg", 80, "great_wave.jpg", 76, 64),
    "tuebingen/starry 64": ("tuebingen_neckarfront.jpg", 80, "starry_night.jpg", 76, 64),
    "astronaut/scream 64": ("astronaut.jpg", 80, "the_scream.jpg", 76, 64),
    "coffee/composition 64": ("coffee.jpg", 80, "composition_vii.jpg", 76, 64),
}


def python_run(content: Path, style: Path, size: int, iterations: int, loop: str, graph: str) -> list:
    from nst_ort import Config, StyleInput, Stylizer
    from nst_ort.engine.config import OptimConfig

    os.environ["NST_ORT_TRAIN_GRAPH"] = graph  # train: force train.onnx on the CPU (artifacts.py)
    try:
        cfg = Config(content=content, styles=[StyleInput(style)], size=size, model=MODEL, device="cpu", threads=2,
                     loop=loop, optim=OptimConfig(name="lbfgs", iterations=iterations))
        return [r.as_dict() for r in Stylizer(cfg).run()]
    finally:
        os.environ.pop("NST_ORT_TRAIN_GRAPH", None)


def max_rel(a: list, b: list, key: str = "loss") -> float:
    x, y = np.array([r[key] for r in a]), np.array([r[key] for r in b])
    return float(np.max(np.abs(x / y - 1)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), metavar="CASE")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "web_parity")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="nst-ort-web-parity-"))
    rows = ["| case | page vs runtime (device loop) | runtime host loop vs device loop | runtime train.onnx vs train_cpu.onnx | "
            "first evaluation, page vs runtime: total / worst style layer / TV |", "| --- | --- | --- | --- | --- |"]
    raw = {}
    with serve() as url:
        for name in args.cases:
            c, cl, s, sl, size = CASES[name]
            stem = name.split()[0].replace("/", "_")
            content = save_png(EXAMPLES / c, cl, tmp / f"{stem}_{cl}_c.png")
            style = save_png(EXAMPLES / s, sl, tmp / f"{stem}_{sl}_s.png")
            ref = python_run(content, style, size, args.iterations, "device", "train_cpu")
            host = python_run(content, style, size, args.iterations, "host", "train_cpu")
            other = python_run(content, style, size, args.iterations, "device", "train")
            out = drive({"url": url + "?backend=wasm", "steps": [
                {"upload": "#content-file", "files": [str(content)]}, {"upload": "#style-files", "files": [str(style)]},
                {"set": {"size": size, "iterations": args.iterations, "optimizer": "lbfgs", "history": 100}},
                {"click": "#start"}, {"until": "['done', 'error'].includes(a.state)"}]}, timeout=1800)
            web = out["records"]
            first = (abs(web[0]["loss"] / ref[0]["loss"] - 1),
                     max(abs(w / r - 1) for w, r in zip(web[0]["style_layers"], ref[0]["style_layers"])),
                     abs(web[0]["tv"] / ref[0]["tv"] - 1))
            raw[name] = {"runtime_device": ref, "runtime_host": host, "runtime_train_onnx": other, "page": web}
            rows.append(f"| {name} ({web[0]['width']}x{web[0]['height']}) | {max_rel(web, ref):.1e} | {max_rel(host, ref):.1e} | "
                        f"{max_rel(other, ref):.1e} | {first[0]:.0e} / {first[1]:.0e} / {first[2]:.0e} |")
            print(rows[-1], file=sys.stderr, flush=True)
    table = "\n".join(rows)
    head = (f"max relative difference of the total loss over the first {args.iterations} L-BFGS iterations "
            "(history 100, default weights, content init), 2 threads")
    print(head + "\n\n" + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(head + "\n\n" + table + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
