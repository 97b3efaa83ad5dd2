"""Machine-readable progress: one JSON object per line, flushed after each line."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import IO, Any, Callable, List, Optional


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class EventWriter:
    """Appends events to a JSON-lines file and forwards them to optional callbacks."""

    def __init__(self, path: Optional[str | Path] = None) -> None:
        self.path = Path(path) if path else None
        self._file: Optional[IO[str]] = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self.callbacks: List[Callable[[dict], None]] = []

    def emit(self, event: str, **fields: Any) -> dict:
        record = {"event": event, "time": round(time.time(), 3), **_clean(fields)}
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        for cb in self.callbacks:
            cb(record)
        return record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
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
