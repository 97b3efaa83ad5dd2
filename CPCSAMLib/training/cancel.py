"""Stop requests: SIGTERM/SIGINT or a cancel callback, checked between slices, batches and iterations."""
from __future__ import annotations

import signal
import threading
from typing import Callable, Optional

from ..errors import Cancelled


class StopFlag:
    """Set by SIGTERM/SIGINT (while installed) or by ``cancel()`` returning True."""

    def __init__(self, cancel: Optional[Callable[[], bool]] = None) -> None:
        self.signal: Optional[int] = None
        self.cancel = cancel
        self._old: dict = {}

    def install(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.signal = signum

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    @property
    def stop(self) -> bool:
        return self.signal is not None or bool(self.cancel and self.cancel())

    def check(self, where: str) -> None:
        """Raises :class:`Cancelled` when a stop was requested."""
        if self.stop:
            by = f"signal {signal.Signals(self.signal).name}" if self.signal else "request"
            raise Cancelled(f"stopped by {by} during {where}")
