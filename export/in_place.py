"""Adding graphs to an existing artifact folder in place (`python -m nst_ort_export.temporal MODEL`,
`.mixed_precision`, `.optim_graphs`): the manifest update they share, and one command line (bad input
as one line with exit 2, docs/errors.md, never a traceback)."""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Callable


def update_manifest(folder: Path, files: list[str], edit: Callable[[dict], None]) -> dict:
    """manifest.json of `folder` with `edit(manifest)` applied and `files` (written already) listed with
    their sha256 and size; replaced atomically. Returns the new manifest."""
    mpath = folder / "manifest.json"
    manifest = json.loads(mpath.read_text())
    edit(manifest)
    for name in files:
        data = (folder / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest["files"] = dict(sorted(manifest["files"].items()))
    tmp = mpath.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(mpath)
    return manifest


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
