"""Error types raised by the engine. Messages name the file and say what to do."""
from __future__ import annotations

import errno


class CPCSAMError(Exception):
    """Base class of every error the engine raises on purpose (bad input, bad checkpoint...)."""


class InputError(CPCSAMError, ValueError):
    """An input image, label, manifest or option is invalid. Nothing has been written."""


class CheckpointError(CPCSAMError, ValueError):
    """A checkpoint is unreadable or does not match the requested backbone or classes."""


class OutputError(CPCSAMError):
    """An output could not be written (full disk, read-only folder, a folder in use).
    Files written before stay as they were."""


class Cancelled(CPCSAMError):
    """Work was stopped on request (SIGTERM/SIGINT or a cancel callback)."""


_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def output_error(exc: BaseException, what: str) -> OutputError:
    """One line for a failed write of ``what``: the reason in words (full disk, read-only...)."""
    reason = _REASONS.get(getattr(exc, "errno", None) or -1)
    if reason is None:
        lines = str(exc).strip().splitlines()
        reason = getattr(exc, "strerror", None) or (lines[0] if lines else type(exc).__name__)
    return OutputError(f"cannot write {what}: {reason}")
