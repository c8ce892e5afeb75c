"""Optional dependencies: imported when a feature needs them, with the extra to install when missing.

The runtime itself needs only onnxruntime, numpy and pillow; video needs PyAV and OpenCV
(`pip install 'nst-ort[video]'`), scale-out needs Ray (`nst-ort[ray]`).
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import UsageError

# module -> (PyPI package, extra)
PACKAGES = {
    "av": ("av", "video"),
    "cv2": ("opencv-python-headless", "video"),
    "ray": ("ray", "ray"),
}


def require(module: str, what: str) -> ModuleType:
    """Import `module` or raise a one-line UsageError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package, extra = PACKAGES[module]
        raise UsageError(f"{what} needs the {package} package, which is not installed: "
                         f"pip install 'nst-ort[{extra}]'") from None
