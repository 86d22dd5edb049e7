"""The run store's file names and JSON records; files are written through ``fxdecomp.atomic`` (a temporary name, then a rename)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..atomic import FILE_MODE, TMP, publish, tmp_path  # noqa: F401  (the store's names for them)
from ..errors import InputError

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
