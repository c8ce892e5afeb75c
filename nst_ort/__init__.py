"""nst-ort: Gatys neural style transfer whose loop runs on ONNX Runtime (no torch at run time)."""
import importlib

from .base.extras import INSTALL
from .base.version import __version__

# Loaded on first use (PEP 562): `import nst_ort` itself needs no onnxruntime, so the `nst-ort`
# command can say in one line that none is installed (commands/entry.py) instead of failing on an import.
# Name -> the engine module that defines it; `checkpoint` is that module itself (save, load, fingerprint:
# docs/architecture.md's Python caller).
_EXPORTS = {"Artifacts": "artifacts", "Config": "config", "LossConfig": "config", "OptimConfig": "config",
            "StyleInput": "config", "IterationRecord": "stylize", "Stylizer": "stylize", "checkpoint": "checkpoint"}

__all__ = ["Artifacts", "Config", "IterationRecord", "LossConfig", "OptimConfig", "StyleInput", "Stylizer", "checkpoint",
           "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nst_ort' has no attribute {name!r}")
    try:
        module = importlib.import_module(f".engine.{_EXPORTS[name]}", __name__)
    except ModuleNotFoundError as e:
        if e.name != "onnxruntime":
            raise
        raise ImportError(f"nst-ort needs an ONNX Runtime: {INSTALL}") from e
    value = module if name == _EXPORTS[name] else getattr(module, name)
    globals()[name] = value
    return value
