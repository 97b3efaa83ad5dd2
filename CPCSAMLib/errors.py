"""Error types raised by the engine. Messages name the file and say what to do."""


class CPCSAMError(Exception):
    """Base class of every error the engine raises on purpose (bad input, bad checkpoint...)."""


class InputError(CPCSAMError, ValueError):
    """An input image, label, manifest or option is invalid. Nothing has been written."""


class CheckpointError(CPCSAMError, ValueError):
    """A checkpoint is unreadable or does not match the requested backbone or classes."""


class Cancelled(CPCSAMError):
    """Work was stopped on request (SIGTERM/SIGINT or a cancel callback)."""
