"""A print-size run in the browser page: 2048x1536 in headless Chromium (wasm), planned by the page itself.

The page (web/, served by `nst-ort web`'s server as the tests serve it) is given Tübingen and The Starry
Night from its own controls, a long side of 2048 and a few L-BFGS iterations, with the default history,
which the page's memory plan (web/js/memory.js) lowers and tiles until the run fits the wasm heap and
the tab's budget. The script records the plan the page chose, each iteration's time and loss, the wasm
heap the page reports, the peak resident memory of Chromium's renderer processes, and downloads the
result through the page's own Download button (checked: a 2048x1536 PNG, not a flat image).

    python benchmarks/web_print.py --size 2048 --iterations 2

Needs node, Chromium and `npm ci` (as tests/test_web.py). Writes results/web_print.{md,json} and the
downloaded image beside them (a reduced JPEG; the full PNG stays in a temporary folder).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from test_web import EXAMPLES, drive, serve  # noqa: E402
from web_tab_memory import renderer_rss  # noqa: E402

MIB = 2 ** 20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=2048, help="long side (default 2048)")
    p.add_argument("--iterations", type=int, default=2, help="L-BFGS iterations (default 2)")
    p.add_argument("--tile", type=int, default=None, help="force this tile (the page's ?tile=); default: the page's plan")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "web_print")
    args = p.parse_args()
    import numpy as np
    from PIL import Image

    work = Path(tempfile.mkdtemp(prefix="web_print_"))
    downloads = work / "downloads"
    downloads.mkdir()
    peak, stop = [0], threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], renderer_rss())
            time.sleep(0.5)

    load_before = os.getloadavg()
    started = time.time()
    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    query = "?backend=wasm" + (f"&tile={args.tile}" if args.tile else "")
    with serve() as url:
        out = drive({"url": url + query, "steps": [
            {"upload": "#content-file", "files": [str(EXAMPLES / "tuebingen_neckarfront.jpg")]},
            {"upload": "#style-files", "files": [str(EXAMPLES / "starry_night.jpg")]},
            {"set": {"size": args.size, "iterations": args.iterations, "optimizer": "lbfgs"}},
            {"click": "#start"}, {"until": "['done', 'error'].includes(a.state)"},
            {"screenshot": str(work / "page.png")},
            {"download": str(downloads)}]}, timeout=7200)
    stop.set()
    thread.join()
    wall = time.time() - started
    if out["state"] != "done":
        raise SystemExit(f"the page did not finish: {out.get('message')}")
    pngs = sorted(downloads.glob("*.png"))
    if out.get("download") != "completed" or not pngs:
        raise SystemExit(f"the page's download did not complete: {out.get('download')}")
    img = np.asarray(Image.open(pngs[0]).convert("RGB"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    preview = args.out.with_name(args.out.name + "_preview.jpg")
    Image.fromarray(img).resize((img.shape[1] // 4, img.shape[0] // 4), Image.LANCZOS).save(preview, quality=88)
    records = out["records"]
    row = {
        "size": args.size, "iterations": args.iterations, "query": query, "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()], "wall_s": round(wall, 1),
        "plan": out.get("plan"), "heap": out.get("heap"), "peak_renderer_rss_mib": round(peak[0] / MIB),
        "seconds": [round(r["seconds"], 1) for r in records], "loss": [r["loss"] for r in records],
        "tile": [r.get("tile") for r in records], "image": list(img.shape), "image_std": float(img.std()),
        "page_errors": out.get("pageErrors"), "console_errors": out.get("consoleErrors"),
        "message": out.get("message"), "screenshot": str(work / "page.png"), "png": str(pngs[0]),
    }
    print(json.dumps(row), flush=True)
    args.out.with_suffix(".json").write_text(json.dumps(row, indent=1) + "\n")
    h, w = img.shape[:2]
    flags = f"--size {args.size} --iterations {args.iterations}" + (f" --tile {args.tile}" if args.tile else "")
    md = [f"# The page at {w}x{h} (`python benchmarks/web_print.py {flags}`)", "",
          f"load average before {row['load_before']}, after {row['load_after']}; whole run (page load to download) {wall:.0f} s", "",
          f"- plan: {json.dumps(row['plan'])}", f"- page's message: {row['message']}",
          f"- per iteration: {', '.join(f'{s} s' for s in row['seconds'])}; loss {', '.join(f'{x:.4g}' for x in row['loss'])}",
          f"- wasm heap reported by the page: {json.dumps(row['heap'])}",
          f"- Chromium renderers' peak resident memory: {row['peak_renderer_rss_mib']} MiB",
          f"- downloaded PNG: {w}x{h}, pixel standard deviation {row['image_std']:.1f}; page errors {row['page_errors']}, "
          f"console errors {row['console_errors']}", f"- preview (1/4): {preview.name}", ""]
    args.out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
