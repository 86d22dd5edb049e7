"""Writing files so that nothing half-written is ever visible: a temporary name, then a rename."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import InputError

TMP = ".tmp"
#: The files of a run folder: its settings (written first), its manifest (written last, once every
#: shard is complete), a classifier's head, what ``fxdecomp align`` adds (CLIP embeddings, the
#: per-component maps and the shared map), and the lock a writer holds.
RUN = "run.json"
MANIFEST = "manifest.json"
HEAD = "head.safetensors"
ALIGNER = "aligner.safetensors"
ALIGNER_RECORD = "aligner.json"
#: The shared map (one map for every component, λ = 0) that rankings read; ``fxdecomp align`` trains it
#: beside the per-component maps, which descriptions read (docs/ALIGN.md: only the shared map ranks right).
SHARED = "shared_aligner.safetensors"
SHARED_RECORD = "shared_aligner.json"
LOCK = ".lock"


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


def write_json(path: Path, obj) -> None:
    tmp = tmp_path(path)
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    publish(tmp, path)


class DamagedFile(InputError):
    """A file of a run that cannot be read as what it should be (garbage, truncated, edited)."""


def read_json(path: Path, what: str = "object", fix: str | None = None):
    """The JSON in ``path``; a file that is not valid JSON (or not a JSON ``what``) is a
    ``DamagedFile`` whose message ends with ``fix``."""
    tail = f"; {fix}" if fix else ""
    try:
        value = json.loads(Path(path).read_text())
    except UnicodeDecodeError as err:
        raise DamagedFile(f"{path} is damaged: not text ({err.reason}){tail}") from None
    except json.JSONDecodeError as err:
        raise DamagedFile(f"{path} is damaged: not valid JSON ({err.msg} at line {err.lineno}){tail}") from None
    kinds = {"object": dict, "list": list}
    if what in kinds and not isinstance(value, kinds[what]):
        raise DamagedFile(f"{path} is damaged: it holds a JSON {type(value).__name__}, not a JSON {what}{tail}")
    return value


def sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def clean_partials(folder: Path) -> int:
    """Remove temporary files a killed writer left behind; returns how many. Call it only while
    holding the run's lock (``store.lock``): a live writer's temporary files look the same."""
    n = 0
    if folder.is_dir():
        for pattern in (f".*{TMP}", f".*{TMP}.*"):
            for p in folder.glob(pattern):
                p.unlink(missing_ok=True)
                n += 1
    return n
