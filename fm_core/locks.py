"""One writer per output directory: ``with DirectoryLock(out, what="fm-embed output"): ...``.

The lock is an ``fcntl.flock`` on ``<dir>/.fm-lock``, a file that also holds a JSON record of the
holder (pid, host, start time, command). The kernel drops the flock when its holder exits, however
it exits, so a second writer is refused only while the first is alive: it fails at once with
:class:`DirectoryBusyError` naming the holder. A normal release deletes the lock file, so a record
found by a new holder is the trace of one that died (SIGKILL, power loss): it is taken over and a
note says whose lock it was. The lock is re-entrant within one process (a tool that locks a
directory may call a function that locks it again).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shlex
import socket
import sys
from pathlib import Path
from typing import Any

from fm_core.errors import UserError

LOCK_NAME = ".fm-lock"
_HELD: dict[Path, int] = {}  # directories this process holds -> nesting depth


class DirectoryBusyError(UserError):
    """Another live process is writing to the directory."""


def launcher_rank() -> int:
    """This process's rank as a distributed launcher (Lightning, torchrun, SLURM) set it before
    any process group exists; 0 for a plain run. Only rank 0 locks a run directory."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        value = os.environ.get(key)
        if value is not None and value.strip().isdigit() and int(value) != 0:
            return int(value)
    return 0


def _describe(record: dict[str, Any]) -> str:
    return (f"pid {record.get('pid', '?')} on {record.get('host', '?')}, started {record.get('started', '?')}"
            f" ({record.get('command', '?')})")


def _read_record(fd: int) -> dict[str, Any] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 65536)
    if not raw.strip():
        return None
    try:
        record = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"command": "unreadable lock record"}
    return record if isinstance(record, dict) else {"command": "unreadable lock record"}


class DirectoryLock:
    """Exclusive use of ``path`` (created when missing) for the length of a ``with`` block.

    ``what`` names the writer in messages ("fm-pretrain run", "fm-embed output"). After entering,
    ``took_over`` is the record of a dead holder whose lock was taken over (else ``None``). A
    directory the lock created and the block left empty is removed again on exit.
    """

    def __init__(self, path: str | os.PathLike, what: str = "output directory"):
        self.path = Path(path)
        self.what = what
        self.took_over: dict[str, Any] | None = None
        self._fd: int | None = None
        self._created = False
        self._key: Path | None = None

    def __enter__(self) -> DirectoryLock:
        self._created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"{self.path}: cannot create the {self.what} directory: "
                            f"{err.strerror or err}; choose a writable location") from err
        self._key = self.path.resolve()
        if _HELD.get(self._key):
            _HELD[self._key] += 1
            return self
        self._fd = self._acquire()
        _HELD[self._key] = 1
        return self

    def _acquire(self) -> int:
        lock_path = self.path / LOCK_NAME
        while True:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise UserError(f"{self.path}: cannot write the {self.what} directory: "
                                f"{err.strerror or err}; choose a writable location") from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_record(fd) or {}
                os.close(fd)
                raise DirectoryBusyError(
                    f"{self.path}: another {holder.get('what', self.what)} is writing here ({_describe(holder)}); "
                    f"wait for it to finish or write somewhere else") from None
            # the previous holder may have deleted the file between our open and our lock: retry on the new one
            try:
                same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._note_stale(_read_record(fd))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                  "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "command": shlex.join(sys.argv) or sys.executable}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        return fd

    def _note_stale(self, record: dict[str, Any] | None) -> None:
        if record is None:
            return
        self.took_over = record
        print(f"note: {self.path}: took over the lock of {_describe(record)}, which is no longer running; "
              f"its output may be incomplete", file=sys.stderr)

    def __exit__(self, *exc: object) -> None:
        assert self._key is not None
        _HELD[self._key] -= 1
        if _HELD[self._key]:
            return
        del _HELD[self._key]
        if self._fd is not None:
            # delete while still holding the lock: a waiter on the old file sees it is gone and retries
            (self.path / LOCK_NAME).unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
        if self._created:
            try:
                self.path.rmdir()  # only succeeds when the block wrote nothing
            except OSError:
                pass
