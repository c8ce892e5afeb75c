"""The browser tab's memory against web/js/memory.js's count (the wasm heap plus the page's own arrays).

For each L-BFGS history the page runs history + 3 iterations (every history slot written, so every
page of the history arrays is touched) at one size in headless Chromium (wasm), started from its
controls (tests/web/drive.mjs), while this script polls the resident memory (VmRSS) of Chromium's
renderer processes, which hold the page, its worker and the wasm heap. Beside the peak it prints
what memory.js counts for that run: heapParts (the heap) and jsParts (the page's own arrays), and
their sum, which memory.plan holds against the tab's budget.

    python benchmarks/web_tab_memory.py --size 640 --histories 5 25

Needs node, Chromium and `npm ci` (as tests/test_web.py). Prints one JSON line per run and a
markdown table; the load average at the start is recorded beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_web import EXAMPLES, MODEL, NODE, WEB, drive, save_png, serve  # noqa: E402

MIB = 2 ** 20


def renderer_rss() -> int:
    """Bytes resident in Chromium's renderer processes now."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"--type=renderer" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass  # a process that ended meanwhile
    return total


def counted(size: int, history: int, content: tuple[int, int], style: tuple[int, int]) -> dict:
    """memory.js's count for the run (node): heap and page arrays, bytes."""
    manifest = json.loads((MODEL / "manifest.json").read_text())
    script = f"""
import {{ heapParts, jsParts }} from {json.dumps((WEB / 'js' / 'memory.js').as_uri())};
import {{ fitSize, pyRound }} from {json.dumps((WEB / 'js' / 'images.js').as_uri())};
const info = {{ layers: {json.dumps(manifest['layers'])}, gradient: {json.dumps(manifest.get('gradient', 'autograd'))},
  optimizer: 'lbfgs', history: {history}, ep: 'wasm', contentLayers: {json.dumps(manifest['content_layers'])},
  contentLayerWeights: {json.dumps(manifest['defaults']['content_layer_weights'])} }};
const [w, h] = fitSize({content[0]}, {content[1]}, {size});
const st = [fitSize({style[0]}, {style[1]}, Math.max(w, h))];
const heap = heapParts(info, w, h, st).total, js = jsParts(info, w, h, 0, {history}, [[{content[0]}, {content[1]}], [{style[0]}, {style[1]}]]).total;
console.log(JSON.stringify({{ width: w, height: h, heap, js }}));
"""
    with tempfile.NamedTemporaryFile("w", suffix=".mjs", delete=False) as f:
        f.write(script)
    try:
        return json.loads(subprocess.run([NODE, f.name], capture_output=True, text=True, check=True).stdout)
    finally:
        os.unlink(f.name)


def run(size: int, history: int, content: Path, style: Path) -> dict:
    peak, stop = [0], threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], renderer_rss())
            time.sleep(0.3)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    with serve() as url:
        out = drive({"url": url + "?backend=wasm", "steps": [
            {"upload": "#content-file", "files": [str(content)]}, {"upload": "#style-files", "files": [str(style)]},
            {"set": {"size": size, "iterations": history + 3, "optimizer": "lbfgs", "history": history}},
            {"click": "#start"}, {"until": "['done', 'error'].includes(a.state)"}]}, timeout=1800)
    stop.set()
    thread.join()
    if out["state"] != "done":
        raise SystemExit(f"the page did not finish: {out.get('message') or out.get('error')}")
    return {"iterations": history + 3, "peak_renderer_rss": peak[0], "plan": out.get("plan")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=640, help="long side of the run (default 640)")
    p.add_argument("--histories", type=int, nargs="+", default=[5, 25], help="L-BFGS histories to run (default 5 25)")
    args = p.parse_args()
    from PIL import Image

    work = Path(tempfile.mkdtemp(prefix="web_tab_memory_"))
    content = save_png(EXAMPLES / "chelsea_cat.jpg", 80, work / "content.png")
    style = save_png(EXAMPLES / "great_wave.jpg", 76, work / "style.png")
    rows = []
    for history in args.histories:
        load = os.getloadavg()[0]
        got = run(args.size, history, content, style)
        count = counted(args.size, history, Image.open(content).size, Image.open(style).size)
        row = {"size": args.size, "history": history, "load": round(load, 2), **got, **count}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| run | iterations | renderer peak RSS | counted: heap + page arrays = total | load |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['width']}x{r['height']}, history {r['history']} | {r['iterations']} | {r['peak_renderer_rss'] / MIB:.0f} MiB | "
              f"{r['heap'] / MIB:.0f} + {r['js'] / MIB:.0f} = {(r['heap'] + r['js']) / MIB:.0f} MiB | {r['load']} |")


if __name__ == "__main__":
    main()
