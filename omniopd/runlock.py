"""One owner per run folder: rank 0 holds an OS file lock on `<log.dir>/.omniopd.lock` for the whole run.

Two trainers writing one folder interleave `metrics.jsonl` and overwrite each other's checkpoints, and
nothing says so. The lock is `fcntl.flock` (the kernel drops it when the process dies, kill -9 included);
the file also records the holder's pid and host, so a refusal can name it. A file left behind by a dead
process on this host is taken over, and says so. A file naming another host is refused: flock is not
reliable across hosts on network filesystems, so only a person can tell whether that run is gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from omniopd.faults import RunFault

LOCK_NAME = ".omniopd.lock"


class RunLockError(RunFault):
    """Another trainer owns the run folder (or may: a lock from another host)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_holder(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (since {holder.get('since', '?')})"


class RunLock:
    """Held from `acquire()` to `release()` (or the process's end); `notice` says what was taken over."""

    def __init__(self, log_dir: Path):
        self.path = Path(log_dir) / LOCK_NAME
        self.notice = ""
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        host = socket.gethostname()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(self.path)
                os.close(fd)
                raise RunLockError(f"{self.path.parent}: another trainer is using this run folder: "
                                   f"{_describe(holder)}; stop it or choose another --log.dir") from None
            # The holder may have unlinked the file between our open and our lock: then we locked a
            # file nobody else will see. Only a lock on the file the path names now counts.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_holder(self.path)
        if previous.get("pid") is not None:
            if previous.get("host") != host:
                os.close(fd)
                raise RunLockError(f"{self.path}: the run folder is locked by {_describe(previous)}; if no "
                                   f"trainer on {previous.get('host')} uses it any more, delete {self.path}")
            state = "no longer running" if not _alive(int(previous["pid"])) else "running, but not holding it"
            self.notice = (f"took over the run folder's lock from pid {previous['pid']} ({state}; it did not "
                           "exit cleanly)")
        record = {"pid": os.getpid(), "host": host, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """A clean exit removes the file (while still holding the lock), so the next run starts silently."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
