"""nst-ort: Gatys neural style transfer whose loop runs on ONNX Runtime (no torch at run time)."""
__version__ = "0.1.0"

from .artifacts import Artifacts  # noqa: E402
from .config import Config, LossConfig, OptimConfig, StyleInput  # noqa: E402
from .stylize import IterationRecord, Stylizer  # noqa: E402

__all__ = ["Artifacts", "Config", "IterationRecord", "LossConfig", "OptimConfig", "StyleInput", "Stylizer", "__version__"]
