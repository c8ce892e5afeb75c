"""Does iterate averaging help? Same run with and without --average, losses of the *output* image.

    python benchmarks/quality_aids.py [--size 256] [--iterations 200] [--optimizer lbfgs]

Prints a table and writes JSON (--json; default benchmarks/results/quality_aids_OPTIMIZER.json).
The record losses are those of the iterate;
here the output image (the average, when averaging) is evaluated by the training graph itself.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from nst_ort import Config, StyleInput, Stylizer
from nst_ort.engine.contract import Losses
from nst_ort.engine.session import TrainStep

HERE = Path(__file__).resolve().parent
EX = HERE.parent / "examples"


def output_losses(s: Stylizer) -> dict:
    img = s.result()
    x = np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32)
    size = (x.shape[3], x.shape[2])
    *outputs, _ = TrainStep(s.graphs, s.targets.feeds(size, x), x.shape)(x)
    losses = Losses(*outputs)
    content, style, _ = s.weights.weighted(losses)
    return {"total": losses.loss, "content": content, "style": style}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--optimizer", default="lbfgs")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--pairs", default="tuebingen_neckarfront.jpg:starry_night.jpg,chelsea_cat.jpg:great_wave.jpg")
    args = ap.parse_args()
    rows = []
    for pair in args.pairs.split(","):
        content, style = pair.split(":")
        for average in (False, True):
            cfg = Config(content=EX / content, styles=[StyleInput(EX / style)], size=args.size, device="cpu", threads=2)
            cfg.optim.iterations, cfg.optim.name, cfg.optim.average = args.iterations, args.optimizer, average
            s = Stylizer(cfg)
            for _ in s.run():
                pass
            rows.append({"pair": pair, "average": average, **output_losses(s)})
            print(rows[-1], flush=True)
    print(f"\n{'pair':50s} {'average':8s} {'content':>12s} {'style':>12s} {'total':>12s}")
    for r in rows:
        print(f"{r['pair']:50s} {str(r['average']):8s} {r['content']:12.4g} {r['style']:12.4g} {r['total']:12.4g}")
    out = args.json or HERE / "results" / f"quality_aids_{args.optimizer}.json"
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
