"""nst-ort: Gatys neural style transfer whose loop runs on ONNX Runtime (no torch at run time)."""
import importlib

from .base.extras import INSTALL
from .base.version import __version__

# Loaded on first use (PEP 562): `import nst_ort` itself needs no onnxruntime, so the `nst-ort`
# command can say in one line that none is installed (entry.py) instead of failing on an import.
_EXPORTS = {"Artifacts": "artifacts", "Config": "config", "LossConfig": "config", "OptimConfig": "config",
            "StyleInput": "config", "IterationRecord": "stylize", "Stylizer": "stylize"}

__all__ = ["Artifacts", "Config", "IterationRecord", "LossConfig", "OptimConfig", "StyleInput", "Stylizer", "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nst_ort' has no attribute {name!r}")
    try:
        module = importlib.import_module(f".engine.{_EXPORTS[name]}", __name__)
    except ModuleNotFoundError as e:
        if e.name != "onnxruntime":
            raise
        raise ImportError(f"nst-ort needs an ONNX Runtime: {INSTALL}") from e
    value = getattr(module, name)
    globals()[name] = value
    return value
