"""The `nst-ort` command's entry point: is an ONNX Runtime installed? Then the CLI.

onnxruntime, onnxruntime-gpu and onnxruntime-openvino all install the module `onnxruntime`, so
none of them is a base dependency: exactly one comes from an extra ([cpu], [gpu], [openvino]).
This check runs before the CLI imports anything that needs onnxruntime, so that a missing or
broken one is one line and exit 5 (docs/errors.md), not a traceback.
"""
from __future__ import annotations

import importlib.metadata
import sys

from .errors import DeviceError

INSTALL = "pip install 'nst-ort[cpu]' (or [gpu] for CUDA, [openvino] for OpenVINO; in a checkout: pip install '.[cpu]')"
# Distributions that provide the module `onnxruntime` (each overwrites the others' files).
DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml", "onnxruntime-qnn")


def installed_runtimes() -> list[str]:
    found = []
    for name in DISTRIBUTIONS:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def onnxruntime_problem() -> str | None:
    """One line saying why onnxruntime cannot be used, or None when it imports whole."""
    try:
        import onnxruntime
    except ImportError as e:
        return f"no ONNX Runtime is installed ({e}): {INSTALL}"
    if not hasattr(onnxruntime, "InferenceSession"):
        # What is left when one of two distributions sharing the module was uninstalled.
        have = ", ".join(installed_runtimes()) or "none"
        return (f"the onnxruntime module in {list(onnxruntime.__path__)[0]} is incomplete (installed: {have}); "
                "reinstall exactly one: pip uninstall -y onnxruntime onnxruntime-gpu onnxruntime-openvino, then "
                + INSTALL)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["web"]:
        # The page runs the graphs, not this process: no onnxruntime import (slow, and it writes under
        # the user's cache), none needed installed.
        from .web import main as web_main

        return web_main(argv[1:])
    problem = onnxruntime_problem()
    if problem:
        print(f"nst-ort: error: {problem}", file=sys.stderr)
        return DeviceError.exit_code
    runtimes = installed_runtimes()
    if len(runtimes) > 1:
        print(f"nst-ort: warning: {' and '.join(runtimes)} are installed together; they share the module onnxruntime "
              "(the last one installed wins): keep one", file=sys.stderr)
    from .cli import main as cli_main

    return cli_main(argv)
