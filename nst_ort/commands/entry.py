"""The `nst-ort` command's entry point: is an ONNX Runtime installed? Then the CLI.

onnxruntime, onnxruntime-gpu and onnxruntime-openvino all install the module `onnxruntime`, so
none of them is a base dependency: exactly one comes from an extra ([cpu], [gpu], [openvino]).
This check runs before the CLI imports anything that needs onnxruntime, so that a missing or
broken one is one line and exit 5 (docs/errors.md), not a traceback.
"""
from __future__ import annotations

import sys

from ..base.errors import DeviceError, GuardedStdout, OutOfMemory, StdoutError, stdout_closed, too_many_files
from ..base.extras import INSTALL, installed_runtimes
from ..engine.memory import address_limit, startup_problem


def onnxruntime_problem() -> str | None:
    """One line saying why onnxruntime cannot be used, or None when it imports whole."""
    try:
        import onnxruntime  # the check itself: does it import whole?
    except ModuleNotFoundError as e:
        return f"no ONNX Runtime is installed ({e}): {INSTALL}"
    except (ImportError, MemoryError) as e:
        if _memory_limited():
            raise OutOfMemory(f"out of memory: onnxruntime failed to load under the address-space limit (ulimit -v "
                              f"{_memory_limited() >> 20} MiB): {str(e)[:120] or type(e).__name__}; raise the limit") from None
        return f"the ONNX Runtime installed cannot be imported ({e}): reinstall it: {INSTALL}"
    if not hasattr(onnxruntime, "InferenceSession"):
        # What is left when one of two distributions sharing the module was uninstalled.
        have = ", ".join(installed_runtimes()) or "none"
        return (f"the onnxruntime module in {list(onnxruntime.__path__)[0]} is incomplete (installed: {have}); "
                "reinstall exactly one: pip uninstall -y onnxruntime onnxruntime-gpu onnxruntime-openvino, then "
                + INSTALL)
    return None


def _memory_limited() -> int | None:
    return address_limit()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["web"]:
        # The page runs the graphs, not this process: no onnxruntime import (slow, and it writes under
        # the user's cache), none needed installed.
        from .web import main as web_main

        return web_main(argv[1:])
    problem = startup_problem()  # before numpy: OpenBLAS exits the process when its buffers do not fit
    if problem:
        print(f"nst-ort: error: {problem}", file=sys.stderr)
        return OutOfMemory.exit_code
    try:
        problem = onnxruntime_problem()
    except OutOfMemory as e:
        print(f"nst-ort: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # the import itself ran out of file descriptors (ulimit -n)
        if not too_many_files(e):
            raise
        print(f"nst-ort: error: {too_many_files(e)}", file=sys.stderr)
        return OutOfMemory.exit_code
    if problem:
        print(f"nst-ort: error: {problem}", file=sys.stderr)
        return DeviceError.exit_code
    runtimes = installed_runtimes()
    if len(runtimes) > 1:
        print(f"nst-ort: warning: {' and '.join(runtimes)} are installed together; they share the module onnxruntime "
              "(the last one installed wins): keep one", file=sys.stderr)
    from .cli import main as cli_main  # after the checks above: numpy (OpenBLAS) loads with the CLI

    if sys.stdout is not None:
        sys.stdout = GuardedStdout(sys.stdout)
    try:
        code = cli_main(argv)
        if sys.stdout is not None:
            sys.stdout.flush()  # here, not at the interpreter's exit, where a failure would be a stray line
        return code
    except BrokenPipeError:  # `nst-ort --help | head -1` (argparse prints before the CLI's own handler)
        return stdout_closed()
    except StdoutError as e:  # the last flush (a full disk, an I/O error)
        print(f"nst-ort: error: {e}", file=sys.stderr)
        stdout_closed()  # what stays buffered is dropped, not reported twice at exit
        return e.exit_code
