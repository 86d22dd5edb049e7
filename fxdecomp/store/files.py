"""Writing files so that nothing half-written is ever visible: a temporary name, then a rename."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

TMP = ".tmp"
#: The files of a run folder: its settings (written first), its manifest (written last, once every
#: shard is complete), a classifier's head, and what ``fxdecomp align`` adds.
RUN = "run.json"
MANIFEST = "manifest.json"
HEAD = "head.safetensors"
ALIGNER = "aligner.safetensors"
ALIGNER_RECORD = "aligner.json"


def tmp_path(path: Path) -> Path:
    """The name a file is written under before it is complete (same folder, so the rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP}")


def publish(tmp: Path, path: Path) -> None:
    """Make a fully written ``tmp`` file visible as ``path`` (atomic on POSIX)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    tmp = tmp_path(path)
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    publish(tmp, path)


def read_json(path: Path):
    return json.loads(path.read_text())


def sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def clean_partials(folder: Path) -> int:
    """Remove temporary files a killed writer left behind; returns how many."""
    n = 0
    if folder.is_dir():
        for p in folder.glob(f".*{TMP}"):
            p.unlink(missing_ok=True)
            n += 1
    return n
