"""Errors the CLI turns into one line on stderr and an exit code (docs/errors.md, "Errors")."""
from __future__ import annotations


class NstError(Exception):
    """Base: message is the whole user-facing line; exit_code is documented."""

    exit_code = 1


# One line each, as the table in docs/errors.md: exit code and what causes it.
class UsageError(NstError): exit_code = 2  # a bad flag value, no style image, a checkpoint from other settings
class ImageError(NstError): exit_code = 3  # missing, damaged, not an image, an image bomb, too small
class ArtifactError(NstError): exit_code = 4  # the model folder: a file missing, a sha256 mismatch, a foreign graph
class DeviceError(NstError): exit_code = 5  # no usable CUDA provider, an unknown provider
class OutOfMemory(NstError): exit_code = 6  # estimated before the run, or an allocation that failed
class NumericalError(NstError): exit_code = 7  # the loss became NaN or Inf
class OutputError(NstError): exit_code = 8  # the output cannot be written, or is one of the inputs


EXIT_BATCH_PARTIAL = 9  # a batch went on past failed images; each was reported on its own line
EXIT_CHECK_FAILED = 10  # `nst-ort check`: a graph differs from the CPU provider's beyond its limit, or fails to run
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C; SIGTERM gives the same
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: stdout was closed by its reader (`nst-ort --info | head`)


class Interrupted(NstError):
    """Ctrl-C or SIGTERM: the current image was written (when there was one) before exiting."""

    exit_code = EXIT_INTERRUPTED


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt: no `except Exception` on the way may swallow it."""


def on_sigterm(signum, frame):
    raise Terminated()


def exit_for(e: BaseException, debug: bool) -> int:
    """One line on stderr and the documented exit code for an error that reached the top of a command
    (nst-ort, nst-ort video); the traceback only with --debug."""
    import sys
    import traceback

    if debug:
        traceback.print_exc()
    if isinstance(e, MemoryError):  # numpy or Python itself; onnxruntime's failures are mapped in session.py
        print("nst-ort: error: out of memory (MemoryError); try a smaller --size", file=sys.stderr)
        return OutOfMemory.exit_code
    if isinstance(e, NstError):
        # One line even when a path holds a newline: shown escaped, as repr would.
        msg = str(e).replace("\r", "\\r").replace("\n", "\\n")
        print(f"nst-ort: {'' if isinstance(e, Interrupted) else 'error: '}{msg}", file=sys.stderr)
        return e.exit_code
    # last resort: still one line unless --debug
    print(f"nst-ort: internal error: {type(e).__name__}: {e} (rerun with --debug for a traceback)", file=sys.stderr)
    return 1
