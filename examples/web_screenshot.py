"""The README's screenshot of the web app mid-run (docs/images/web.png), taken with headless Chromium.

    python examples/web_screenshot.py [--size 256] [--iterations 100] [--at 40] [--out docs/images/web.png]

Starts `nst-ort web`, loads Tübingen and The Starry Night through the page's file inputs, starts the
run from the page's Start button and takes the screenshot after --at iterations. Needs node, Chromium
and `npm ci` (as tests/test_web.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_web import EXAMPLES, drive, serve  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--at", type=int, default=40, help="iteration at which to take the screenshot")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "web.png")
    p.add_argument("--viewport", type=int, nargs=2, default=[1280, 800])
    p.add_argument("--full-page", action="store_true")
    args = p.parse_args(argv)
    with serve() as url:
        out = drive({"url": url + "?backend=wasm", "viewport": args.viewport, "steps": [
            {"upload": "#content-file", "files": [str(EXAMPLES / "tuebingen_neckarfront.jpg")]},
            {"upload": "#style-files", "files": [str(EXAMPLES / "starry_night.jpg")]},
            {"set": {"size": args.size, "iterations": args.iterations}},
            {"click": "#start"},
            {"until": f"a.records.length >= {args.at} || ['done', 'error'].includes(a.state)"},
            {"until": "a.hasImage"},
            {"screenshot": str(args.out), "fullPage": args.full_page},
            {"click": "#stop"},
            {"until": "['stopped', 'done', 'error'].includes(a.state)"}]}, timeout=7200)
    recs = out["records"]
    print(f"wrote {args.out}: {out['backend']['label']}, {len(recs)} iterations of {args.size} px, "
          f"{sum(r['seconds'] for r in recs) / max(1, len(recs)):.2f} s per iteration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
