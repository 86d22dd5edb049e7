"""Content hashes that name what was computed from what: cache keys, run manifests, file names."""
from __future__ import annotations

import hashlib
import json

import torch


def json_digest(obj) -> str:
    """SHA-256 of ``obj`` as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def tensors_digest(tensors) -> str:
    """SHA-256 of (name, tensor) pairs: each name, dtype, shape and raw bytes, in the order given."""
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(name.encode())
        t = t.detach().cpu().contiguous()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def module_digest(module: torch.nn.Module) -> str:
    """A hash of every parameter and buffer of ``module`` (names, dtypes, shapes, bytes)."""
    return tensors_digest(sorted(module.state_dict().items()))


def bytes_digest(data: bytes | memoryview) -> str:
    """What names a file's content: the first 128 bits of the SHA-256 of its bytes, in hex (a run records
    one per image, so they are kept short)."""
    return hashlib.sha256(data).hexdigest()[:32]


def safe_name(name: str) -> str:
    """``name`` with every character but letters, digits and ``-_.`` replaced by ``_`` (for file names)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
