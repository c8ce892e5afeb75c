"""The command line of the tools that add a graph to an existing artifact folder in place
(`python -m nst_ort_export.temporal MODEL`, `python -m nst_ort_export.mixed_precision MODEL`): one
parser, and bad input as one line with exit 2 (docs/errors.md), never a traceback."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable


def main(prog: str, what: str, add_to_folder: Callable[[Path], dict], argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {prog}", description=f"Adds {what} to an artifact folder in "
                                "place (manifest.json gets its entry and sha256; the manifest is replaced atomically).")
    p.add_argument("folder", metavar="MODEL_FOLDER", help="an artifact folder written by nst-ort-export")
    args = p.parse_args(argv)
    folder = Path(args.folder)
    manifest = folder / "manifest.json"
    try:
        if not folder.is_dir():
            raise ValueError("not a folder")
        data = json.loads(manifest.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict) or "graphs" not in data:
            raise ValueError("manifest.json is not an nst-ort artifact manifest")
        print(json.dumps(add_to_folder(folder)))
    except (OSError, ValueError, KeyError) as e:
        detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        print(f"{prog}: error: {folder}: {detail}", file=sys.stderr)
        return 2
    return 0
