"""Optional dependencies: imported when a feature needs them, with the extra to install when missing.

The runtime itself needs only onnxruntime, numpy and pillow; video needs PyAV and OpenCV
(`pip install 'nst-ort[video]'`), scale-out needs Ray (`nst-ort[ray]`). onnxruntime too comes from an
extra ([cpu], [gpu], [openvino]): which distributions of it are installed is here as well.
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


INSTALL = "pip install 'nst-ort[cpu]' (or [gpu] for CUDA, [openvino] for OpenVINO; in a checkout: pip install '.[cpu]')"
# Distributions that provide the module `onnxruntime` (each overwrites the others' files).
DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml", "onnxruntime-qnn")


def installed_runtimes() -> list[str]:
    # Here, not at the top: importlib.metadata costs ~15 ms, and `import nst_ort` (which imports this
    # module for INSTALL) should not pay it (start-up, benchmarks/results/layout_startup.md).
    import importlib.metadata

    found = []
    for name in DISTRIBUTIONS:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found
