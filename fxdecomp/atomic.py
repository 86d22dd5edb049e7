"""Writing files so that nothing half-written is ever visible: a temporary name of this process's own in the
same folder, then an atomic rename. Every file fxdecomp writes goes through ``tmp_path`` and ``publish``
(the run store, collect's cache, the figures and reports)."""
from __future__ import annotations

import os
from pathlib import Path

TMP = ".tmp"


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``os.umask`` sets it,
    for every thread at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Permissions of every file the store writes: what ``open()`` would give (0644 under the usual umask).
#: Some writers (safetensors) create files 0600; ``publish`` gives them these.
FILE_MODE = 0o666 & ~_umask()


def tmp_path(path: Path, keep_suffix: bool = False) -> Path:
    """The name a file is written under before it is complete (same folder, so the rename is atomic);
    ``keep_suffix`` ends it in the file's own suffix too, for writers that choose a format by it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP}")
    return tmp.with_name(tmp.name + path.suffix) if keep_suffix else tmp


def publish(tmp: Path, path: Path) -> None:
    """Make a fully written ``tmp`` file visible as ``path`` (atomic on POSIX), with ``FILE_MODE``."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
        os.fchmod(f.fileno(), FILE_MODE)
    os.replace(tmp, path)
