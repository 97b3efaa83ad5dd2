"""The output folder of a training run: one run at a time (a lock file), no silent replacement of
an earlier run, and no temporary files left from interrupted saves."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import List, Optional

from ..errors import InputError, OutputError, output_error

LOCK_NAME = ".cpcsam.lock"
RUN_FILES = ("model_best.pt", "model_last.pt")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


class OutputFolder:
    """Holds ``folder`` for one training run.

    :meth:`acquire` creates the folder if needed and the lock file ``.cpcsam.lock`` (pid, host,
    start time; created exclusively). A lock of a process that no longer runs on this host is taken
    over; a live one is refused, naming its holder. Under the lock, temporary files of interrupted
    saves (``*.tmp``, ``.*.tmp.*``) are removed: no other process can be writing them.
    :meth:`release` removes the lock, and the folder too when this run created it and left it empty.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.lock = self.folder / LOCK_NAME
        self.created = False
        self.held = False
        self.removed_temporaries: List[str] = []

    def existing_run(self) -> List[str]:
        return [n for n in RUN_FILES if (self.folder / n).is_file()]

    def check_not_a_run(self, resume: bool, overwrite: bool) -> None:
        """Refuses a folder that holds a run unless resuming or overwriting."""
        found = self.existing_run()
        if found and not (resume or overwrite):
            raise InputError(f"{self.folder} holds a training run ({', '.join(found)}); pass --resume to continue "
                             "it, --overwrite to replace it, or choose another --output")

    def holder(self) -> Optional[dict]:
        try:
            data = json.loads(self.lock.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"--output {self.folder} is a file; give a folder")
        try:
            self.created = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(exc, f"the output folder {self.folder}") from exc
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
        for _ in range(3):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_stale()
                continue
            except OSError as exc:
                self._remove_created()
                raise output_error(exc, f"into the output folder {self.folder}") from exc
            try:
                os.write(fd, record.encode())
            finally:
                os.close(fd)
            self.held = True
            self._remove_temporaries()
            return
        raise OutputError(f"{self.folder} is in use by another training (lock {self.lock})")

    def _take_over_stale(self) -> None:
        info = self.holder()
        if info is None:  # being written right now, or unreadable
            time.sleep(0.2)
            info = self.holder() or {}
        pid, host = info.get("pid"), info.get("host")
        if isinstance(pid, int) and host == socket.gethostname() and not pid_alive(pid):
            self.lock.unlink(missing_ok=True)
            return
        if not info:  # an empty or damaged lock file from a crash during its creation
            self.lock.unlink(missing_ok=True)
            return
        self._remove_created()
        raise OutputError(f"{self.folder} is in use by another training (pid {pid} on {host}, started "
                          f"{info.get('started')}); wait for it to end or stop it, or choose another --output")

    def _remove_temporaries(self) -> None:
        for path in list(self.folder.glob("*.tmp")) + list(self.folder.glob(".*.tmp.*")):
            try:
                path.unlink()
                self.removed_temporaries.append(path.name)
            except OSError:
                pass

    def _remove_created(self) -> None:
        if self.created:
            try:
                self.folder.rmdir()
            except OSError:
                pass

    def release(self) -> None:
        if self.held:
            self.lock.unlink(missing_ok=True)
            self.held = False
            self._remove_created()
