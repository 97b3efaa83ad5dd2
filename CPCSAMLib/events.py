"""Machine-readable progress: one JSON object per line, flushed after each line.

The training's events are one stream: the file and every listener (checkpointing, validation,
history, progress bar, a caller's ``on_event``) receive each event in order.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import IO, Any, Callable, List, Optional

from .errors import output_error


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class EventWriter:
    """Appends events to a JSON-lines file (``fresh``: starts it empty) and forwards them to listeners.

    A failed write (full disk, ``/dev/full``, read-only folder) raises :class:`OutputError` once;
    later events still reach the listeners but no longer the file.
    """

    def __init__(self, path: Optional[str | Path] = None, fresh: bool = False) -> None:
        self.path = Path(path) if path else None
        self._file: Optional[IO[str]] = None
        self.broken = False
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "w" if fresh and self.path.is_file() else "a", encoding="utf-8")
            except OSError as exc:
                self.broken = True
                raise output_error(exc, f"events to {self.path}") from exc
        self.callbacks: List[Callable[[dict], None]] = []

    def emit(self, event: str, **fields: Any) -> dict:
        record = {"event": event, "time": round(time.time(), 3), **_clean(fields)}
        if self._file is not None:
            try:
                self._file.write(json.dumps(record) + "\n")
                self._file.flush()
            except OSError as exc:
                self._abandon_file()
                raise output_error(exc, f"events to {self.path}") from exc
        for cb in list(self.callbacks):
            cb(record)
        return record

    def _abandon_file(self) -> None:
        self.broken = True
        file, self._file = self._file, None
        try:
            file.close()
        except OSError:
            pass

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None


def read_events(path: str | Path) -> List[dict]:
    """All complete events of a JSON-lines file (a partly written last line is ignored)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
