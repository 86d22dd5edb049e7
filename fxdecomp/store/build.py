"""Decomposing a data set into a run store: every image once, in shards, resumable, on one or many processes.

``decompose_to_store(model, data, out)`` compiles ``representation(model)`` (what CompAlign
maps and the applications read), writes each shard under a temporary name then renames it,
skips shards a killed run already completed (after checking their checksums, and that their
images are still the same files), recomputes damaged ones, and lets a ``torch.distributed``
process group split the shards by rank; rank 0 holds the folder's lock and writes the manifest
once every shard is there.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..adapters import unwrap
from ..adapters.representation import representation
from ..checks import finite_number, whole_number
from ..compiler import decompose
from ..reconstruction import max_relative_error
from ..data.source import describe_source
from ..errors import InputError
from ..groups import GROUPINGS
from ..preprocessing import transform_for
from ..data.identity import changed_image, digest_of
from ..hashing import json_digest, module_digest
from .files import HEAD, LOCK, MANIFEST, RUN, clean_partials, read_json, sha256, write_json
from .loader import loader
from .lock import RunLock
from .manifest import FORMAT, check_same, versions
from .readouts import check_same_readout, readout_record
from .shards import SHARDS, ShardPlan, ShardWriter, complete, images_per_shard, sidecar

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@dataclass
class Progress:
    """What a call did: shards written here, shards found complete, images per second of this call,
    and the shards it recomputed because they were damaged (their sidecar existed, their file did not
    match it)."""

    written: int
    skipped: int
    images: int
    seconds: float
    repaired: list[int] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def _dist():
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d.get_rank(), d.get_world_size(), d.barrier
    return 0, 1, lambda: None


def classifier_of(model: torch.nn.Module):
    """The model's final linear classifier (timm's ``get_classifier()``), or None."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    return head if isinstance(head, torch.nn.Linear) else None


def settings(model_name: str, checkpoint, rep, dm, width: int, data, granularity, layers, dtype_name, shard_images,
             batch, preprocess, command: list[str] | None = None, readout: dict | None = None,
             group: str | None = None) -> dict:
    """What ``run.json`` records: the identity settings first (``manifest.IDENTITY``), then the description.
    ``preprocess`` is what is done to every image (``EvalTransform.describe``): the library, its
    config and the resize and crop steps; ``source_size`` the square a data source made first, if any."""
    source = describe_source(data)
    return {
        "format": FORMAT,
        "model": {"name": model_name, "checkpoint": str(checkpoint) if checkpoint else None,
                  "class": type(unwrap(rep)).__name__, "weights": module_digest(rep)},
        "granularity": granularity, "layers": sorted(layers) if layers is not None else None,
        "dtype": dtype_name,
        "preprocess": {**preprocess.describe(), "source_size": source.get("size")},
        "data": {"kind": source["kind"], "n": len(source["ids"]), "ids": json_digest(source["ids"]),
                 "labels": json_digest(source["labels"])},
        "components": json_digest(dm.components.names),
        "shard_images": shard_images, "batch": batch,
        # what every contribution is read through (None: stored at the output's width, d_model)
        "readout": readout,
        # the grouping summed at compile time (decompose(group=...)), or None
        "group": group,
        # description (not compared): where the images are, what each one is, what the components are
        "source": {k: v for k, v in source.items() if k not in ("ids", "labels")},
        "images": {"ids": source["ids"], "labels": source["labels"]},
        "component_table": [c.to_dict() for c in dm.components],
        "d_model": width, "versions": versions(),
        # the command that writes the run (and so repairs it), "{run}" standing for the run folder
        "command": list(command) if command else None,
    }


def decompose_to_store(model: torch.nn.Module, data, out, *, model_name: str, checkpoint=None,
                       granularity: str = "head", layers=None, batch: int = 64, device="cpu",
                       dtype: str = "float32", shard_mb: float = 256, workers: int = 0,
                       progress: bool = True, command: list[str] | None = None,
                       lock_timeout: float | None = None, readout=None, readout_spec: str | None = None,
                       readout_names=None, group: str | None = None) -> Progress:
    """Decompose every image of ``data`` with ``model``'s representation and store it in ``out``.

    ``readout``: store every contribution read through ``R`` (a [D, K] tensor, or a mapping from
    component names to one each, as ``decompose(readout=)`` takes): [N, C, K] shards, the outputs
    [N, K]; ``readout_spec`` says how it was given (recorded, with K, the matrix's hash and
    ``readout_names``, the columns' names), and a rerun must give the same readout. ``group``: one of
    ``fxdecomp.groups.GROUPINGS``, summed at compile time (``group="token"``: one component per image
    position, what segmentation reads: 236 components instead of 28,407 for a DeiT-B token run).

    ``command``: the command line that does this, as arguments, with ``"{run}"`` for ``out`` (recorded, and
    named to repair the run); ``lock_timeout``:
    seconds to wait for another process writing ``out`` (None: as long as it takes, 0: refuse at once)."""
    check_options(dtype=dtype, batch=batch, shard_mb=shard_mb, workers=workers)
    record = readout_record(readout, readout_spec, readout_names) if readout is not None else None
    if record is None and (readout_spec is not None or readout_names is not None):
        raise InputError("readout_spec and readout_names describe a readout: give readout= too")
    if group is not None and group not in GROUPINGS:
        raise InputError(f"group={group!r} is not a grouping a run can record: use one of {GROUPINGS}")
    if len(data) == 0:
        raise InputError("the data set has no images")
    out = Path(out)
    device = torch.device(device)
    rank, world, barrier = _dist()
    if rank == 0:
        prepare_folder(out)
    lock = RunLock(out, what="decompose", timeout=lock_timeout) if rank == 0 else contextlib.nullcontext()
    with lock:
        return _decompose(model, data, out, model_name=model_name, checkpoint=checkpoint, granularity=granularity,
                          layers=layers, batch=batch, device=device, dtype=dtype, shard_mb=shard_mb,
                          workers=workers, progress=progress, command=command, rank=rank, world=world,
                          barrier=barrier, readout=readout, record=record, group=group)


def check_options(*, dtype: str, batch: int, shard_mb: float, workers: int) -> None:
    """The options' values, checked before anything is loaded or compiled."""
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    whole_number("batch", batch)
    finite_number("shard_mb", shard_mb, 0, inclusive=False)
    whole_number("workers", workers, 0)


def prepare_folder(out: Path) -> None:
    """Create the run folder (or find it), and make sure this process can write in it."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file, not a folder: choose a new --out folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"{out} cannot be created: a file is in the way ({_blocking_file(out)}); choose "
                         "another --out folder") from None
    except OSError as err:
        raise InputError(f"cannot create the folder {out} ({err.strerror}); choose a place you can write to") \
            from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"cannot write in {out} (permission denied); choose a place you can write to")


def _blocking_file(out: Path) -> Path:
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            return parent
    return out


def _decompose(model, data, out: Path, *, model_name, checkpoint, granularity, layers, batch, device, dtype,
               shard_mb, workers, progress, command, rank, world, barrier, readout=None, record=None,
               group=None) -> Progress:
    if rank == 0 and not (out / RUN).is_file() and _holds_other_files(out):
        raise InputError(f"{out} is not empty and holds no run; choose a new --out folder")
    if rank == 0 and (out / RUN).is_file():  # a damaged one, or another readout, is refused before compiling
        old = read_json(out / RUN, fix=f"delete {out} and decompose into it again")
        check_same_readout(old.get("readout"), record, out)
    rep = representation(model).eval()
    head = classifier_of(model)
    low = DTYPES[dtype] in (torch.bfloat16, torch.float16)
    ref32 = _copy(rep).float().to(device) if low else None  # the float32 forward a low-precision run is checked on
    rep = rep.to(device=device, dtype=DTYPES[dtype])
    dm = decompose(rep, granularity, layers=layers, readout=_as_dtype(readout, DTYPES[dtype], device), group=group)
    preprocess = transform_for(rep)
    probe = next(iter(loader(data, ShardPlan(len(data), 1), [0], 1, transform=preprocess.resize_crop))).images
    with torch.no_grad():
        width = int(rep(preprocess.normalize(probe.to(device)).to(DTYPES[dtype])).shape[-1])
    stored = width if record is None else record["k"]
    bytes_per_image = len(dm.components) * stored * torch.finfo(DTYPES[dtype]).bits // 8
    plan = ShardPlan(len(data), images_per_shard(bytes_per_image, shard_mb, batch, len(data)))
    config = settings(model_name, checkpoint, rep, dm, width, data, granularity, layers, dtype, plan.size, batch,
                      preprocess, command, record, group)

    if rank == 0:
        if (out / RUN).is_file():
            check_same(read_json(out / RUN, fix=f"delete {out} and decompose into it again"), config, out)
        else:
            write_json(out / RUN, config)
        if head is not None:  # written again by every call: the same bytes, or a damaged one repaired
            _save_head(head, out / HEAD)
        clean_partials(out)
        clean_partials(out / SHARDS)
    barrier()
    if rank != 0:
        check_same(read_json(out / RUN), config, out)

    mine = plan.mine(rank, world)
    found = {i: complete(out, i, plan.bounds(i), checksum=True)
             for i in _bar(mine, progress and rank == 0, "check complete shards")}
    done = {i: info for i, info in found.items() if info is not None}
    todo = [i for i in mine if i not in done]
    repaired = [i for i in todo if sidecar(out, i).is_file()]
    _check_same_images(data, done, config["images"]["ids"], progress=progress and rank == 0)
    start_time, images = time.perf_counter(), 0
    if todo:
        (out / MANIFEST).unlink(missing_ok=True)  # the run is incomplete until its shards are whole again
        if ref32 is not None and readout is not None:  # the float32 forward, read through the same readout
            ref32 = _read_through(ref32, readout)
        images = _run(dm, ref32, preprocess, data, plan, todo, out, width=stored, batch=batch, device=device,
                      dtype=DTYPES[dtype], workers=workers, progress=progress and rank == 0)
    seconds = time.perf_counter() - start_time
    barrier()
    if rank == 0:
        _finish(out, config, plan)
    barrier()
    return Progress(len(todo), len(mine) - len(todo), images, seconds, repaired)


def _holds_other_files(out: Path) -> bool:
    return any(p.name != LOCK for p in out.iterdir())


def _bar(items, progress: bool, desc: str):
    return tqdm(items, disable=None if progress else True, desc=desc, unit="shard", leave=False)


def _check_same_images(data, done: dict, ids: list[str], *, progress: bool) -> None:
    """Refuse to continue a run whose finished shards were decomposed from other files (same names, other
    contents): the finished run would mix outputs of the old files and the new ones."""
    items = [(i, d) for info in done.values() for i, d in zip(range(info["start"], info["stop"]),
                                                                info.get("digests") or ())]
    if not any(d is not None for _, d in items):
        return
    for i, recorded in tqdm(items, disable=None if progress else True, desc="check the images of complete shards",
                            unit="img", leave=False):
        err = changed_image(recorded, digest_of(data, i), ids[i],
                            fix="decompose into a new --out folder (a run cannot mix images from before and after)")
        if err is not None:
            raise err


def _as_dtype(readout, dtype: torch.dtype, device):
    """The readout in the run's dtype and on its device (each matrix, for a per-component one)."""
    if readout is None:
        return None
    if isinstance(readout, dict):
        return {n: _as_dtype(r, dtype, device) for n, r in readout.items()}
    return readout.detach().to(device=device, dtype=dtype) if isinstance(readout, torch.Tensor) else readout


def _read_through(ref32: torch.nn.Module, readout):
    """What a low-precision readout run is checked on: the float32 forward read through ``R``; None for a
    per-component readout, whose output (the sum of the readings) is no map of the model's output."""
    if isinstance(readout, dict):
        return None
    r = readout.detach().float().to(next(iter(ref32.parameters())).device)

    def forward(x):
        y = ref32(x)
        return y.reshape(len(y), -1) @ r.reshape(-1, r.shape[-1])

    return forward


def _copy(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module)


def _save_head(head: torch.nn.Linear, path: Path) -> None:
    from safetensors.torch import save_file

    from .files import publish, tmp_path

    tmp = tmp_path(path)
    tensors = {"weight": head.weight.detach().float().cpu().contiguous()}
    if head.bias is not None:
        tensors["bias"] = head.bias.detach().float().cpu().contiguous()
    save_file(tensors, str(tmp))
    publish(tmp, path)


@torch.no_grad()
def _run(dm, ref32, preprocess, data, plan, todo, out, *, width, batch, device, dtype, workers, progress) -> int:
    cuda = device.type == "cuda"
    feed = loader(data, plan, todo, batch, workers=workers, pin=cuda, transform=preprocess.resize_crop)
    writer = ShardWriter(out, depth=1)
    bar = tqdm(total=sum(b - a for a, b in (plan.bounds(i) for i in todo)), disable=None if progress else True,
               desc=f"decompose {dm.model_name}", unit="img", smoothing=0.1)
    shards, done = iter(todo), 0
    current, filled, n, bufs, errs, digests = None, 0, 0, None, {}, []
    try:
        for raw, names in feed:
            if current is None or filled == n:
                current = next(shards)
                start, stop = plan.bounds(current)
                n = stop - start
                bufs = {"contributions": torch.empty((n, len(dm.components), width), dtype=dtype, pin_memory=cuda),
                        "output": torch.empty((n, width), dtype=dtype, pin_memory=cuda)}
                filled, errs, digests = 0, {"output": None, "float32": None}, []  # device tensors: no wait per batch
            x32 = preprocess.normalize(raw.to(device, non_blocking=True))
            x = x32.to(dtype)
            dec = dm(x)
            b = x.shape[0]
            bufs["contributions"][filled:filled + b].copy_(dec.contributions, non_blocking=True)
            bufs["output"][filled:filled + b].copy_(dec.output, non_blocking=True)
            errs["output"] = _running_max(errs["output"], _rel_error(dec.contributions, dec.output))
            if ref32 is not None and filled == 0:
                errs["float32"] = _running_max(errs["float32"], _rel_error(dec.contributions, ref32(x32)))
            digests += names
            filled += b
            done += b
            bar.update(b)
            if filled == n:
                ready = None
                if cuda:
                    ready = torch.cuda.Event()
                    ready.record()
                info = {"shard": current, "start": start, "stop": stop, "error": float(errs["output"]),
                        "error_vs_float32": None if errs["float32"] is None else float(errs["float32"]),
                        "digests": digests}
                writer.put(current, {**bufs, "index": torch.arange(start, stop)}, info, ready)
    finally:
        bar.close()
        writer.close()
    return done


def _rel_error(contributions: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """The largest relative error of the batch, a 0-d tensor on the batch's device: the components summed in
    float32, as a reader's ``Decomposition.total()`` sums what the store holds."""
    return max_relative_error(contributions.float().sum(1), output.float())


def _running_max(old: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    return new if old is None else torch.maximum(old, new)


def _finish(out: Path, config: dict, plan: ShardPlan) -> None:
    infos = []
    missing = []
    for i in range(plan.count):
        info = complete(out, i, plan.bounds(i))
        if info is None:
            missing.append(i)
        else:
            infos.append(info)
    if missing:
        raise InputError(f"shards {missing[:5]} of {out} are missing after every process finished; run the same "
                         "command again to complete them")
    errors = [s["error"] for s in infos]
    vs32 = [s["error_vs_float32"] for s in infos if s.get("error_vs_float32") is not None]
    head = out / HEAD
    recorded = {"head": {"file": HEAD, "bytes": head.stat().st_size, "sha256": sha256(head)}} if head.is_file() else {}
    manifest = {**config, **recorded, "shards": infos, "complete": True,
                "reconstruction": {"max_relative_error": max(errors),
                                   "max_relative_error_vs_float32": max(vs32) if vs32 else None}}
    write_json(out / MANIFEST, manifest)
