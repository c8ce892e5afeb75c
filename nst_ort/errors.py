"""Errors the CLI turns into one line on stderr and an exit code (README, "Errors")."""
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


EXIT_BATCH_PARTIAL = 9
EXIT_INTERRUPTED = 130
