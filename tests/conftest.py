"""Shared fixtures. Exports happen once per test session (each takes ~1-2 minutes)."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DEFAULT_MODEL = ROOT / "models" / "vgg16"
HAS_TORCH = importlib.util.find_spec("torch") is not None

needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs the [export] extra (torch)")


@pytest.fixture(scope="session")
def examples() -> Path:
    return EXAMPLES


@pytest.fixture(scope="session")
def default_model() -> Path:
    return DEFAULT_MODEL


def _export(tmp_path_factory, name: str, **kw):
    from nst_ort_export.artifacts import write_artifacts
    from nst_ort_export.backbones import REGISTRY

    arch = kw.pop("arch")
    backbone = REGISTRY[arch](**kw)
    out = tmp_path_factory.mktemp("models") / name
    write_artifacts(backbone, out)
    return backbone, out


@pytest.fixture(scope="session")
def vgg16_random(tmp_path_factory):
    """(backbone, artifact folder): VGG16, max pooling, seeded random weights."""
    if not HAS_TORCH:
        pytest.skip("needs torch")
    return _export(tmp_path_factory, "vgg16-random", arch="vgg16", weights="random", pool="max", seed=0)


@pytest.fixture(scope="session")
def vgg19_avg_random(tmp_path_factory):
    """(backbone, artifact folder): VGG19 with average pooling (the paper's choice), random weights."""
    if not HAS_TORCH:
        pytest.skip("needs torch")
    return _export(tmp_path_factory, "vgg19-avg-random", arch="vgg19", weights="random", pool="avg", seed=1)


def cli_command(args: list, block_torch: bool = True, prelude: str = "") -> list[str]:
    """The argv of an `nst-ort` subprocess; with block_torch, `import torch` fails there.

    prelude: Python statements run before the CLI (tests use it to stand in for hardware).
    """
    start = "import sys; sys.modules['torch'] = None; " if block_torch else "import sys; "
    code = start + prelude + "from nst_ort.commands.cli import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *map(str, args)]


def cli_env(env=None) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}


def run_cli(args: list[str], block_torch: bool = True, cwd: Path | None = None, timeout: int = 900, env=None,
            prelude: str = "", **kwargs):
    """Run `nst-ort` in a subprocess; with block_torch, `import torch` fails there.

    kwargs go to subprocess.run (e.g. preexec_fn to set resource limits).
    """
    import subprocess

    return subprocess.run(cli_command(args, block_torch, prelude), capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout, env=cli_env(env), **kwargs)


def without_tile_graphs(model: Path, dest: Path) -> Path:
    """A copy of a model folder as exported before the tile graphs existed (no tile_* files, no
    manifest "tiling" entry): what `--tile N` refuses and `--tile auto` runs untiled."""
    import json
    import shutil

    shutil.copytree(model, dest, ignore=shutil.ignore_patterns("tile_*"))
    manifest = json.loads((dest / "manifest.json").read_text())
    del manifest["tiling"]
    manifest["files"] = {f: v for f, v in manifest["files"].items() if not f.startswith("tile_")}
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def without_keep_graphs(model: Path, dest: Path) -> Path:
    """A copy of a model folder as exported before the keep graphs (tile_grams + tile_train only, no
    tile_grams_keep / tile_train_kept, no kept_bytes_per_pixel): tiled runs run pass 1's forward again."""
    import json
    import shutil

    shutil.copytree(model, dest, ignore=shutil.ignore_patterns("tile_*_keep*", "tile_*_kept*"))
    manifest = json.loads((dest / "manifest.json").read_text())
    for role in ("grams_keep", "train_kept", "grams_keep_cpu", "train_kept_cpu", "kept_bytes_per_pixel"):
        del manifest["tiling"][role]
    manifest["files"] = {f: v for f, v in manifest["files"].items() if "_keep" not in f and "_kept" not in f}
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest
