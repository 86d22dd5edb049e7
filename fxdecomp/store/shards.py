"""Shards: fixed, contiguous image ranges, each written whole by a background thread.

Boundaries depend only on the number of images and the shard size, so a resumed run,
or several processes each writing their share, produce the very same files. A shard
is complete when its sidecar (``NNNNN.json``: range, size, checksum, the images' digests,
reconstruction errors) exists and the shard file matches it; the sidecar is written after
the shard itself, both under temporary names first.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .files import DamagedFile, publish, read_json, sha256, tmp_path, write_json

SHARDS = "shards"


@dataclass(frozen=True)
class ShardPlan:
    n: int
    size: int

    @property
    def count(self) -> int:
        return -(-self.n // self.size)

    def bounds(self, i: int) -> tuple[int, int]:
        return i * self.size, min(self.n, (i + 1) * self.size)

    def mine(self, rank: int, world: int) -> list[int]:
        """Shards of process ``rank`` of ``world``: every world-th one, as a distributed sampler deals them."""
        return list(range(rank, self.count, world))


def images_per_shard(bytes_per_image: int, shard_mb: float, batch: int, n: int) -> int:
    """As many whole batches as fit in ``shard_mb`` (at least one batch, at most all images)."""
    fit = int(shard_mb * 2**20 // max(1, bytes_per_image))
    size = max(batch, fit // batch * batch)
    return max(1, min(size, n))


def shard_file(root: Path, i: int) -> Path:
    return root / SHARDS / f"{i:05d}.safetensors"


def sidecar(root: Path, i: int) -> Path:
    return root / SHARDS / f"{i:05d}.json"


def complete(root: Path, i: int, bounds: tuple[int, int] | None = None, *, checksum: bool = False) -> dict | None:
    """The sidecar of shard ``i`` if the shard is completely written (its sidecar readable, for the range
    ``bounds``, and the file of the size it records; with ``checksum``, of the SHA-256 too), else None."""
    side, data = sidecar(root, i), shard_file(root, i)
    if not side.is_file() or not data.is_file():
        return None
    try:
        info = read_json(side)
    except DamagedFile:
        return None
    if info.get("shard") != i or info.get("file") != f"{SHARDS}/{data.name}":
        return None
    if bounds is not None and (info.get("start"), info.get("stop")) != tuple(bounds):
        return None
    if info.get("bytes") != data.stat().st_size:
        return None
    if checksum and sha256(data) != info.get("sha256"):
        return None
    return info


class ShardWriter:
    """Writes (shard index, tensors, info) items on a background thread, so the device keeps computing.

    The queue holds at most ``depth`` shards: memory stays bounded by a few shards, not the run.
    """

    def __init__(self, root: Path, depth: int = 1):
        self.root = root
        (root / SHARDS).mkdir(parents=True, exist_ok=True)
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="fxdecomp-shard-writer", daemon=True)
        self.thread.start()

    def put(self, i: int, tensors: dict[str, torch.Tensor], info: dict, ready=None) -> None:
        """Queue shard ``i``; ``ready`` (a CUDA event) is waited on before its host copies are read."""
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put((i, tensors, info, ready), timeout=1.0)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            try:
                self._write(*item)
            except BaseException as err:  # reported to the producer on its next put() or close()
                self.error = err
                return

    def _write(self, i: int, tensors: dict, info: dict, ready) -> None:
        if ready is not None:
            ready.synchronize()
        path = shard_file(self.root, i)
        tmp = tmp_path(path)
        # no metadata: its keys would be written in a different order by every process, and the
        # range is in the sidecar (and in the "index" tensor) anyway
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        publish(tmp, path)
        write_json(sidecar(self.root, i), {**info, "file": f"{SHARDS}/{path.name}", "bytes": path.stat().st_size,
                                            "sha256": sha256(path)})

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
