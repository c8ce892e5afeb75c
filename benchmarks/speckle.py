"""Fine colour speckle: the output's high-frequency chroma energy against its inputs' (issue 21).

    python benchmarks/speckle.py [--size 256] [--iterations 500] [--pairs C:S,...] [--threads 1]

Runs each content/style pair from examples/ at the defaults (L-BFGS, content init, one scale) and
writes a table (benchmarks/results/speckle_SIZE.md) and JSON (speckle_SIZE.json): the speckle measure and the
final style loss per pair, for the runtime as it is ("after") and with the settings before the fix
("before"; see BEFORE), side by side in one run on one machine.

The measure (`speckle`), exactly:

1. Each image is float RGB in [0, 1] (the output as saved: rounded to 8 bits). The content image is
   resized (Lanczos, images.resize) to the output's width x height; the style image to the long side
   the run itself sees it at (the output's long side, aspect kept: Targets.style_at at --style-scale 1).
2. Chroma: YCbCr's Cb = -0.168736 R - 0.331264 G + 0.5 B and Cr = 0.5 R - 0.418688 G - 0.081312 B
   (ITU-R BT.601, full range, in [0, 1] units; the offset 0.5 cancels below).
3. High frequency: each chroma plane minus its 3x3 box mean, on the interior pixels only (those whose
   3x3 window lies inside the image: no padding rule enters).
4. Energy: the mean of its square over the interior pixels and both planes (`chroma_energy`).
5. speckle = energy(output) / max(energy(content), energy(style)).

A colour texture the style itself has, or edges the content has, count in the denominator: a score
of 1 means the output has no more fine colour detail than the richer of its two inputs; single-pixel
coloured dots on flat areas push it above that.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EX = HERE.parent / "examples"

_CB = np.array([-0.168736, -0.331264, 0.5], np.float64)
_CR = np.array([0.5, -0.418688, -0.081312], np.float64)


def chroma_highpass(img: np.ndarray) -> np.ndarray:
    """[2, H-2, W-2]: Cb and Cr of a float RGB [H, W, 3] image minus their 3x3 box mean (interior)."""
    img = np.asarray(img, np.float64)
    if img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 3:
        raise ValueError(f"expected RGB [H, W, 3] with H, W >= 3, got {img.shape}")
    planes = np.stack([img @ _CB, img @ _CR])  # [2, H, W]
    h, w = img.shape[:2]
    box = sum(planes[:, i:h - 2 + i, j:w - 2 + j] for i in range(3) for j in range(3)) / 9.0
    return planes[:, 1:-1, 1:-1] - box


def chroma_energy(img: np.ndarray) -> float:
    """The mean squared high-frequency chroma (steps 2-4 of the module docstring)."""
    return float(np.mean(chroma_highpass(img) ** 2))


def speckle(output: np.ndarray, content: np.ndarray | None, style: np.ndarray) -> float:
    """energy(output) / max(energy(content), energy(style)); content and style already at the
    output's size (step 1: `inputs_at`). content None (a texture): the style alone."""
    ref = max(chroma_energy(style), chroma_energy(content) if content is not None else 0.0)
    return chroma_energy(output) / max(ref, 1e-30)


def inputs_at(content_path: Path, style_path: Path, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Step 1: the content at the output's (width, height), the style at its long side."""
    from nst_ort.media.images import fit_size, load_image, resize

    content = resize(load_image(content_path), size)
    style = load_image(style_path)
    style = resize(style, fit_size(style.shape[1], style.shape[0], max(size)))
    return content, style


def run_pair(content: str, style: str, size: int, iterations: int, threads: int, patch: dict | None = None,
             scales: list[int] | None = None, loss: dict | None = None) -> dict:
    """One run at the defaults but for `loss` (LossConfig fields, e.g. {"tv_weight": 1e5}) and
    `patch` (module attributes set for this run only, e.g. {"nst_ort.engine.optim.MAX_QN_STEP": 0.05});
    its output, speckle and final losses (the last iteration's record: weighted terms)."""
    import importlib

    from nst_ort import Config, StyleInput, Stylizer

    saved = []
    for key, value in (patch or {}).items():
        mod, attr = key.rsplit(".", 1)
        m = importlib.import_module(mod)
        saved.append((m, attr, getattr(m, attr)))
        setattr(m, attr, value)
    try:
        cfg = Config(content=EX / content, styles=[StyleInput(EX / style)], size=size, scales=scales,
                     device="cpu", threads=threads)
        cfg.optim.iterations = iterations
        for field, value in (loss or {}).items():
            setattr(cfg.loss, field, value)
        s = Stylizer(cfg)
        t0 = time.perf_counter()
        last = None
        for last in s.run():
            pass
        seconds = time.perf_counter() - t0
        out = np.round(s.result() * 255.0) / 255.0  # as saved (8 bits)
    finally:
        for m, attr, value in reversed(saved):
            setattr(m, attr, value)
    c, st = inputs_at(EX / content, EX / style, (out.shape[1], out.shape[0]))
    return {"pair": f"{content}:{style}", "size": size, "iterations": iterations, "scales": scales,
            "speckle": speckle(out, c, st), "energy": chroma_energy(out), "content_energy": chroma_energy(c),
            "style_energy": chroma_energy(st), "loss": last.loss, "style": last.style, "content": last.content,
            "tv": last.tv, "seconds": seconds, "loop": s.runtime().get("loop"), "image": out}


# What the defaults were before issue 21's fix: the model's TV weight (manifest.json "defaults").
BEFORE = {"tv_weight": 1e5}
PAIRS = ("tuebingen_neckarfront.jpg:starry_night.jpg:500,chelsea_cat.jpg:turner_shipwreck.jpg:300,"
         "astronaut.jpg:the_scream.jpg:300,coffee.jpg:great_wave.jpg:300")


def _job(job: tuple) -> dict:
    variant, content, style, size, iterations, threads = job
    r = run_pair(content, style, size, iterations, threads, loss=BEFORE if variant == "before" else None)
    from nst_ort.media.images import save_image

    out = HERE / "results" / "speckle"
    save_image(r.pop("image"), out / f"{size}_{variant}_{Path(content).stem}_{Path(style).stem}.png")
    print(f"{variant:6s} {r['pair']:45s} speckle {r['speckle']:.2f} style {r['style']:.4g} "
          f"({r['seconds']:.0f} s)", flush=True)
    return {"variant": variant, **r}


def main() -> None:
    import sys
    from concurrent.futures import ProcessPoolExecutor

    sys.path.insert(0, str(HERE.parent))  # benchmarks.machine, when run as a script

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--pairs", default=PAIRS, help="CONTENT:STYLE:ITERATIONS,... from examples/")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (each --threads threads)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    (HERE / "results" / "speckle").mkdir(parents=True, exist_ok=True)
    pairs = [p.split(":") for p in args.pairs.split(",")]
    jobs = [(v, c, s, args.size, int(n), args.threads) for c, s, n in pairs for v in ("before", "after")]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(_job, jobs))
    lines = [f"speckle at {args.size} px, defaults (L-BFGS, content init, one scale), {args.threads} thread(s) "
             f"per run; before = tv_weight {BEFORE['tv_weight']:g} (the old default), after = the defaults now",
             "", "| pair | iterations | speckle before | speckle after | style before | style after | style change |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for c, s, n in pairs:
        b, a = (next(r for r in rows if r["variant"] == v and r["pair"] == f"{c}:{s}") for v in ("before", "after"))
        lines.append(f"| {Path(c).stem} / {Path(s).stem} | {n} | {b['speckle']:.2f} | {a['speckle']:.2f} | "
                     f"{b['style']:.4g} | {a['style']:.4g} | {100 * (a['style'] / b['style'] - 1):+.1f}% |")
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    from benchmarks.machine import cpu_info, row_stamp

    (args.out / f"speckle_{args.size}.md").write_text(table)
    (args.out / f"speckle_{args.size}.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "before": BEFORE, "machine": row_stamp(cpu_info()),
         "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
