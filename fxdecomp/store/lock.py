"""One writer per run folder: an exclusive ``fcntl.flock`` on ``RUN/.lock``, held while a process
writes the run (decompose, align, segment, spurious).

Without it, a second process started on the same folder would delete the first one's temporary
files when it cleans up what a killed run left, or replace a file the first is writing. The lock
file holds the writer's pid, so the one that waits (or is refused) can say whom it waits for. The
kernel releases the lock when its holder dies, SIGKILL included, so a killed run never leaves its
folder locked. Under ``torchrun`` only rank 0 takes it: the ranks of one run are one writer.
"""
from __future__ import annotations

import errno
import fcntl
import os
import sys
import time
from pathlib import Path

from ..errors import InputError
from .files import FILE_MODE, LOCK


class RunLock:
    """``with RunLock(folder, what="decompose"):`` holds the folder's lock.

    ``timeout``: seconds to wait for another writer (None: as long as it takes; 0: refuse at once).
    A refusal is an ``InputError`` naming the holder's pid. The folder must exist.
    """

    def __init__(self, folder, *, what: str = "write", timeout: float | None = None, quiet: bool = False):
        self.folder, self.what, self.timeout, self.quiet = Path(folder), what, timeout, quiet
        self.fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK

    def __enter__(self) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as err:
            raise InputError(f"cannot write in {self.folder} ({err.strerror}); choose a folder you can write to") \
                from None
        try:
            self._acquire(fd)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {self.what}\n".encode())
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def _acquire(self, fd: int) -> None:
        if _try_lock(fd):
            return
        holder = self.holder()
        if self.timeout == 0:
            raise InputError(f"{self.folder} is being written by another process ({holder}); wait for it to finish "
                             "(or stop it), then run the command again")
        if not self.quiet:
            print(f"waiting for another process writing {self.folder} ({holder}) to finish; Ctrl-C to stop",
                  file=sys.stderr, flush=True)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while not _try_lock(fd):
            if deadline is not None and time.monotonic() > deadline:
                raise InputError(f"{self.folder} is still being written by another process ({self.holder()}) after "
                                 f"{self.timeout:g} s; wait for it to finish (or stop it), then run the command again")
            time.sleep(0.2)

    def holder(self) -> str:
        """'pid N, WHAT' of the process holding the lock, as it wrote it."""
        try:
            text = self.path.read_text().split(maxsplit=1)
        except OSError:
            text = []
        if not text:
            return "pid unknown"
        return f"pid {text[0]}" + (f", fxdecomp {text[1].strip()}" if len(text) > 1 else "")

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)  # an idle run's lock file is empty: two finished runs have the same files
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
                os.close(self.fd)
                self.fd = None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
