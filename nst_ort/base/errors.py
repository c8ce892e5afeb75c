"""Errors the CLI turns into one line on stderr and an exit code (docs/errors.md, "Errors")."""
from __future__ import annotations

import errno
import os
import sys
import traceback


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


class StdoutError(OutputError):
    """stdout cannot be written (`nst-ort --info > /dev/full`): exit 8 like any output, one line."""


class GuardedStdout:
    """sys.stdout as the command sees it: a write or flush that fails (other than a closed pipe,
    which stays BrokenPipeError: errors.stdout_closed) raises StdoutError, so that every command's
    handler reports it as one line and exit 8 instead of an internal error or a traceback."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise StdoutError(f"stdout: cannot write ({e.strerror or e})") from None

    def flush(self):
        try:
            return self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise StdoutError(f"stdout: cannot write ({e.strerror or e})") from None

    def __getattr__(self, name):
        return getattr(self._stream, name)


def too_many_files(e: BaseException) -> str | None:
    """The line for a process out of file descriptors (`ulimit -n`), which is a resource limit like
    memory (exit 6), not a damaged input or a bug; None for any other error."""
    if not isinstance(e, OSError) or e.errno not in (errno.EMFILE, errno.ENFILE):
        return None
    try:
        import resource  # Unix only: the ImportError on Windows is caught below

        limit = f" (ulimit -n is {resource.getrlimit(resource.RLIMIT_NOFILE)[0]})"
    except (ImportError, OSError, ValueError):
        limit = ""
    return f"out of resources: too many open files{limit} while opening {e.filename or 'a file'}; raise the limit"


def stdout_closed() -> int:
    """stdout's reader went away (`nst-ort check | head -1`, `nst-ort --info | true`): stop quietly with
    EXIT_BROKEN_PIPE, as a Unix tool that SIGPIPE ends. The signal itself stays ignored (Python's
    default), so that a run is never killed while it writes a file. stdout is pointed at /dev/null,
    so that the interpreter's last flush of what is buffered cannot print a second error."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError):  # stdout already closed, or not a file
        pass
    return EXIT_BROKEN_PIPE


def exit_for(e: BaseException, debug: bool, prog: str = "nst-ort") -> int:
    """One line on stderr and the documented exit code for an error that reached the top of a command
    (nst-ort, nst-ort video, nst-ort check); the traceback only with --debug."""
    if debug:
        traceback.print_exc()
    if isinstance(e, MemoryError):  # numpy or Python itself; onnxruntime's failures are mapped in session.py
        print(f"{prog}: error: out of memory (MemoryError); try a smaller --size", file=sys.stderr)
        return OutOfMemory.exit_code
    if isinstance(e, ImportError) and ("failed to map segment" in str(e) or "Cannot allocate memory" in str(e)):
        # a module's shared library that does not fit under `ulimit -v`: memory, not a broken install
        print(f"{prog}: error: out of memory while loading a library ({str(e)[:160]}); raise the address-space "
              "limit (ulimit -v)", file=sys.stderr)
        return OutOfMemory.exit_code
    if too_many_files(e):
        print(f"{prog}: error: {too_many_files(e)}", file=sys.stderr)
        return OutOfMemory.exit_code
    if isinstance(e, NstError):
        # One line even when a path holds a newline: shown escaped, as repr would.
        msg = str(e).replace("\r", "\\r").replace("\n", "\\n")
        print(f"{prog}: {'' if isinstance(e, Interrupted) else 'error: '}{msg}", file=sys.stderr)
        return e.exit_code
    # last resort: still one line unless --debug
    print(f"{prog}: internal error: {type(e).__name__}: {e} (rerun with --debug for a traceback)", file=sys.stderr)
    return 1
