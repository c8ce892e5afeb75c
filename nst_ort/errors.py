"""Errors the CLI turns into one line on stderr and an exit code (docs/errors.md, "Errors")."""
from __future__ import annotations


class NstError(Exception):
    """Base: message is the whole user-facing line; exit_code is documented."""

    exit_code = 1


class UsageError(NstError):
    exit_code = 2


class ImageError(NstError):
    exit_code = 3


class ArtifactError(NstError):
    exit_code = 4


class DeviceError(NstError):
    exit_code = 5


class OutOfMemory(NstError):
    exit_code = 6


class NumericalError(NstError):
    exit_code = 7


class OutputError(NstError):
    exit_code = 8


EXIT_BATCH_PARTIAL = 9  # a batch went on past failed images; each was reported on its own line
EXIT_CHECK_FAILED = 10  # `nst-ort check`: a graph differs from the CPU provider's beyond its limit, or fails to run
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C; SIGTERM gives the same


class Interrupted(NstError):
    """Ctrl-C or SIGTERM: the current image was written (when there was one) before exiting."""

    exit_code = EXIT_INTERRUPTED
