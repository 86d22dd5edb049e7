"""Reading a run lazily: one component over all images, or some images over all components,
without loading the rest; shard by shard for training in bounded memory."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from ..components import Component, ComponentTable
from ..data.identity import CheckedData
from ..data.registry import reopen
from ..decomposition import Decomposition
from ..errors import InputError
from ..hashing import json_digest, safe_name
from ..preprocessing import EvalTransform, ModelView
from .files import (ALIGNER, ALIGNER_RECORD, HEAD, MANIFEST, RUN, SHARED, SHARED_RECORD, DamagedFile, read_json,
                    sha256)
from .readouts import column_index, describe, refuse_readout_run, width_of
from .verify import check_manifest, file_problem, repair, settings_of, shard_problem

CLIP_EMBEDDINGS = "embeddings.safetensors"
CLIP_RECORD = "complete.json"


def open_run(path, verify: bool = False) -> "Run":
    """The complete run stored in ``path`` (what ``fxdecomp decompose`` wrote).

    Opening checks the manifest (its shards cover every image exactly once) and every shard's size;
    a reader checks a shard's header when it opens it and its SHA-256 when it first reads it whole.
    ``verify=True`` checks every file's SHA-256 now (what ``fxdecomp verify RUN`` does)."""
    return Run(path, verify=verify)


class Run:
    """A run store, read on demand.

    ``components`` labels the contributions; ``ids`` and ``labels`` describe the images in
    order; ``component(name)`` is [N, D], ``images(idx)`` [k, C, D], ``shards()`` yields
    (start, stop, contributions) one shard at a time. Tensors come back as float32.
    """

    def __init__(self, path, verify: bool = False):
        self.path = Path(path)
        if not (self.path / MANIFEST).is_file():
            if self.path.exists() and not self.path.is_dir():
                raise InputError(f"{self.path} is a file, not a run folder (fxdecomp decompose writes one)")
            hint = (" (a decomposition was started there but is not complete: run the same fxdecomp decompose "
                    "command again to finish it)") if (self.path / RUN).is_file() else ""
            raise InputError(f"{self.path} is not a complete fxdecomp run{hint}")
        self.manifest = read_json(self.path / MANIFEST, fix=f"{self.repair()} to write it again")
        check_manifest(self.manifest, self.path)
        try:
            self.components = _with_grids(ComponentTable(Component(**c) for c in self.manifest["component_table"]))
        except TypeError as err:
            raise DamagedFile(f"{self.path / MANIFEST} is damaged (its component table: {err}); run "
                              f"{self.repair()} to write it again") from None
        self.n = int(self.manifest["data"]["n"])
        self.d_model = int(self.manifest["d_model"])
        #: the readout every contribution was read through (its record: spec, k, sha256, names), or None
        self.readout = self.manifest.get("readout")
        #: what the shards hold per component: K for a readout run, else d_model
        self.width = width_of(self.manifest)
        self._shards = self.manifest["shards"]
        self._opened: set[int] = set()  # shards whose header was checked
        self._hashed: set[int] = set()  # shards whose SHA-256 was checked
        self._files_ok: set[Path] = set()  # other recorded files whose SHA-256 was checked
        bad = [(s, p) for s in self._shards if (p := file_problem(self.path / s["file"], s["bytes"], None,
                                                                  checksum=False))]
        if verify:
            bad = [(s, p) for s in self._shards if (p := shard_problem(self.path, self.manifest, s, checksum=True))]
            intact = {s["shard"] for s in self._shards} - {s["shard"] for s, _ in bad}
            self._opened, self._hashed = set(intact), set(intact)
        if bad:
            (first, why), more = bad[0], len(bad) - 1
            state = "is missing" if why == "missing" else f"is damaged ({why})"
            raise InputError(f"{self.path / first['file']} {state}" + (f", and {more} more shards are missing or "
                             "damaged" if more else "") + f"; {self.repair()} to recompute "
                             + ("them" if more else "it"))
        if verify:
            for name, size, digest, fix in self.recorded_files():
                problem = file_problem(self.path / name, size, digest)
                if problem is not None:
                    raise InputError(f"{self.path / name} is damaged ({problem}); {fix}")

    def repair(self) -> str:
        """How to recompute the run's missing or damaged shards: run the command that wrote it."""
        return repair(settings_of(self.path) or getattr(self, "manifest", None), self.path)

    def recorded_files(self) -> list[tuple[str, int | None, str | None, str]]:
        """(file, size, SHA-256, how to repair it) of what the run holds beside its shards."""
        out = []
        head = self.manifest.get("head")
        if isinstance(head, dict):
            out.append((HEAD, head.get("bytes"), head.get("sha256"), f"{self.repair()} to write it again"))
        folder = self.path / "clip"
        for record in sorted(folder.glob(f"*/{CLIP_RECORD}")) if folder.is_dir() else ():
            rec = self._record(record)
            clip = rec.get("clip", record.parent.name)
            out.append((str(record.parent.relative_to(self.path) / CLIP_EMBEDDINGS), rec.get("bytes"),
                        rec.get("sha256"), f"run fxdecomp align {self.path} --clip {clip} --overwrite to compute them "
                                           "again"))
        if (self.path / ALIGNER_RECORD).is_file():
            rec = self._record(self.path / ALIGNER_RECORD)
            out.append((ALIGNER, rec.get("bytes"), rec.get("sha256"),
                        f"run fxdecomp align {self.path} --clip {rec.get('clip', '...')} --overwrite to train it "
                        "again"))
        if (self.path / SHARED_RECORD).is_file():
            rec = self._record(self.path / SHARED_RECORD)
            out.append((SHARED, rec.get("bytes"), rec.get("sha256"),
                        f"run fxdecomp align {self.path} --clip {rec.get('clip', '...')} --shared-only --overwrite "
                        "to train it again"))
        return out

    def _record(self, path: Path) -> dict:
        return read_json(path, fix=f"run fxdecomp align {self.path} --clip ... --overwrite to write it again")

    # -- description --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Run({str(self.path)!r}: {m['model']['name']} at {m['granularity']} granularity, {self.n} images, "
                f"{len(self.components)} components, d_model={self.d_model}"
                + (f", read through {describe(self.readout)}" if self.readout is not None else "") + ")")

    def column(self, column=None, text: str | None = None) -> int:
        """The index of one of a readout run's K columns: ``column`` (a number), or the column whose
        name is ``text``."""
        if self.readout is None:
            raise InputError(f"{self.path} is a full run (no readout): it has no readout columns to choose; "
                             "choose a component, a text or a direction instead")
        return column_index(self.readout["k"], self.readout.get("names"), column, text, where=str(self.path))

    def require_full(self, what: str) -> None:
        """Refuse a readout run for ``what``, which needs the contributions at the output's width."""
        refuse_readout_run(self, what)

    @property
    def names(self) -> list[str]:
        return self.components.names

    @property
    def ids(self) -> list[str]:
        return self.manifest["images"]["ids"]

    @property
    def labels(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.manifest["images"]["labels"].items()}

    @property
    def model_name(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def granularity(self) -> str:
        return self.manifest["granularity"]

    def error(self) -> float:
        """Largest relative reconstruction error over every image (Σ components vs the model's output)."""
        return float(self.manifest["reconstruction"]["max_relative_error"])

    def data(self, verify: bool = False, progress: bool = False):
        """The run's images again, from where they were read, as the model saw them (through the run's
        recorded resize and crop, ``fxdecomp.preprocessing.ModelView``): the same names (checked now)
        and the same contents (each image checked as it is read; ``verify=True`` reads every file now
        and names the first that changed)."""
        src = self.manifest["source"]
        try:
            data = reopen(src, run=str(self.path))
        except KeyError as err:
            raise DamagedFile(f"{self.path / MANIFEST} is damaged (its source lacks {err}); "
                              f"{self.repair()} to write it again") from None
        if json_digest(data.ids()) != self.manifest["data"]["ids"]:
            where = src.get("root", src.get("kind"))
            raise InputError(f"the images at {where} are not the ones this run decomposed (files were "
                             "added, removed or renamed); decompose them again into a new run")
        view = EvalTransform.from_description(self.manifest["preprocess"])
        digests = self.digests()
        if all(d is None for d in digests):
            return ModelView(data, view)
        checked = CheckedData(data, digests, self.ids)
        if verify:
            err = checked.first_changed(progress=progress)
            if err is not None:
                raise err
        return ModelView(checked, view)

    def digests(self) -> list[str | None]:
        """Each image's content digest as decomposed (None where the data set gave none)."""
        out: list[str | None] = []
        for s in self._shards:
            out += s.get("digests") or [None] * (s["stop"] - s["start"])
        return out

    # -- reading --------------------------------------------------------------------------------------
    def _file(self, info: dict) -> str:
        return str(self.path / info["file"])

    def _damaged(self, info: dict, why: str) -> InputError:
        return InputError(f"{self._file(info)} is damaged ({why}); {self.repair()} to recompute it")

    @contextmanager
    def _open(self, info: dict, whole: bool = False):
        """The shard's file, opened after its size and header were checked (once per ``Run``); when it is
        to be read ``whole``, after its SHA-256 was checked too (once)."""
        i = info["shard"]
        if i not in self._opened:
            problem = shard_problem(self.path, self.manifest, info, checksum=False)
            if problem is not None:
                raise self._damaged(info, problem)
            self._opened.add(i)
        if whole and i not in self._hashed:
            if sha256(Path(self._file(info))) != info["sha256"]:
                raise self._damaged(info, "its SHA-256 differs from the manifest's: its data changed")
            self._hashed.add(i)
        try:
            f = safe_open(self._file(info), "pt")
        except Exception as err:  # noqa: BLE001 - safetensors' own error types
            raise self._damaged(info, f"{type(err).__name__}: {err}") from None
        with f:
            yield f

    def _whole(self, info: dict, name: str) -> torch.Tensor:
        with self._open(info, whole=True) as f:
            t = f.get_tensor(name)
            if name == "contributions":
                index = f.get_tensor("index")
                if not torch.equal(index, torch.arange(info["start"], info["stop"])):
                    raise self._damaged(info, "its images' index is not its range")
        return t

    def _index(self, component) -> int:
        if isinstance(component, str):
            return self.components.index(component)
        return self.components.resolve(component)[0]

    def component(self, component) -> torch.Tensor:
        """[N, D] one component's contributions for every image (one slice read per shard)."""
        j = self._index(component)
        parts = []
        for info in self._shards:
            with self._open(info) as f:
                parts.append(f.get_slice("contributions")[:, j].float())
        return torch.cat(parts)

    def _indices(self, indices) -> np.ndarray:
        raw = np.asarray(list(indices) if isinstance(indices, range) else indices)
        if raw.size and raw.dtype.kind not in "iu":  # 1.5 would be read as image 1
            raise InputError(f"image indices must be whole numbers, got {indices!r:.60}")
        idx = raw.astype(np.int64).ravel()
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n):
            raise InputError(f"image indices must be in 0..{self.n - 1}")
        return idx

    def _gather(self, idx: np.ndarray, name: str, shape: tuple) -> torch.Tensor:
        """``name`` ("contributions" or "output") of the images ``idx``, in that order, read shard by shard."""
        out = torch.empty(len(idx), *shape)
        written = np.zeros(len(idx), dtype=bool)
        for info in self._shards:
            start, stop = info["start"], info["stop"]
            hit = np.nonzero((idx >= start) & (idx < stop))[0]
            if len(hit):
                block = self._whole(info, name)
                out[torch.as_tensor(hit)] = block[torch.as_tensor(idx[hit] - start)].float()
                written[hit] = True
        if not written.all():  # the manifest's coverage was checked on opening: this would be a bug
            raise RuntimeError(f"images {idx[~written][:5].tolist()} are in no shard of {self.path}")
        return out

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        """[k, C, D] every component's contributions for the images ``indices`` (in that order)."""
        return self._gather(self._indices(indices), "contributions", (len(self.components), self.width))

    def outputs(self, indices: Sequence[int] | None = None) -> torch.Tensor:
        """[N, D] the model's own output for every image (or [k, D] for the images ``indices``)."""
        if indices is None:
            return torch.cat([self._whole(info, "output").float() for info in self._shards])
        return self._gather(self._indices(indices), "output", (self.width,))

    def decomposition(self, indices: Sequence[int] | None = None) -> Decomposition:
        """The images ``indices`` (default: all) as a ``Decomposition`` whose ``output`` is the model's own
        output as stored, so its ``error()`` is the run's recorded reconstruction error for those images."""
        if indices is None:
            indices = range(self.n)
        idx = self._indices(indices)
        return Decomposition(self._gather(idx, "contributions", (len(self.components), self.width)),
                             self.components, self._gather(idx, "output", (self.width,)))

    def shards(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(start, stop, contributions [stop - start, C, D]) for each shard in order, one in memory at a time."""
        for info in self._shards:
            yield info["start"], info["stop"], self._whole(info, "contributions").float()

    def shard_ranges(self) -> list[tuple[int, int]]:
        """(start, stop) of each shard, in order: which images ``shard(k)`` holds."""
        return [(info["start"], info["stop"]) for info in self._shards]

    def shard(self, k: int) -> torch.Tensor:
        """[stop - start, C, D] contributions of the ``k``-th shard alone (for reading shards in another order)."""
        return self._whole(self._shards[k], "contributions").float()

    def decompositions(self) -> Iterator[tuple[int, int, Decomposition]]:
        """(start, stop, the shard's images as a ``Decomposition`` with their stored outputs), shard by shard."""
        for info in self._shards:
            yield (info["start"], info["stop"],
                   Decomposition(self._whole(info, "contributions").float(), self.components,
                                 self._whole(info, "output").float()))

    # -- what later commands add ------------------------------------------------------------------------
    def clip_folder(self, clip: str) -> Path:
        return self.path / "clip" / safe_name(clip)

    def has_clip(self, clip: str) -> bool:
        """Whether the run holds whole embeddings by CLIP ``clip`` (their record, and a file of the recorded size)."""
        record = self.clip_folder(clip) / CLIP_RECORD
        if not record.is_file():
            return False
        try:
            rec = read_json(record)
        except DamagedFile:
            return False
        return file_problem(self.clip_folder(clip) / CLIP_EMBEDDINGS, rec.get("bytes"), None, checksum=False) is None

    def clip_embeddings(self, clip: str) -> torch.Tensor:
        """[N, d_clip] normalised CLIP image embeddings of the run's images (``fxdecomp align`` adds them)."""
        folder = self.clip_folder(clip)
        if not self.has_clip(clip):
            raise InputError(f"{self.path} has no embeddings by CLIP {clip!r}: run fxdecomp align {self.path} "
                             f"--clip {clip}")
        path = folder / CLIP_EMBEDDINGS
        rec = self._record(folder / CLIP_RECORD)
        self._check_file(path, rec, f"run fxdecomp align {self.path} --clip {clip} --overwrite to compute them again")
        emb = _tensor(path, "clip", f"run fxdecomp align {self.path} --clip {clip} --overwrite")
        if emb.dim() != 2 or emb.shape[0] != self.n:
            raise InputError(f"{path} holds {list(emb.shape)} embeddings for a run of {self.n} images; run fxdecomp "
                             f"align {self.path} --clip {clip} --overwrite to compute them again")
        return emb.float()

    def _check_file(self, path: Path, rec: dict, fix: str) -> None:
        """A file the run records the size and SHA-256 of (older runs recorded none: not checked)."""
        if path in self._files_ok:
            return
        problem = file_problem(path, rec.get("bytes"), rec.get("sha256"))
        if problem is not None:
            raise InputError(f"{path} is damaged ({problem}); {fix}")
        self._files_ok.add(path)

    def aligner_record(self, shared: bool = False) -> dict:
        """What ``fxdecomp align`` recorded of the per-component maps (or of the ``shared`` map): its CLIP,
        settings, size and SHA-256; {} where the run holds no record."""
        path = self.path / (SHARED_RECORD if shared else ALIGNER_RECORD)
        return self._record(path) if path.is_file() else {}

    def check_recorded(self, path: Path, rec: dict, fix: str) -> None:
        """Refuse ``path`` when its size or SHA-256 differ from ``rec`` (checked once per ``Run``), naming ``fix``."""
        self._check_file(path, rec, fix)

    def aligner_path(self) -> Path:
        return self.path / ALIGNER

    def shared_aligner_path(self) -> Path:
        return self.path / SHARED

    def head(self) -> torch.nn.Linear | None:
        """The model's linear classifier, if it had one (logits = head(representation))."""
        path = self.path / HEAD
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        fix = f"{self.repair()} to write it again"
        rec = self.manifest.get("head")
        if isinstance(rec, dict):
            self._check_file(path, rec, fix)
        try:
            state = load_file(str(path))
            lin = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0], bias="bias" in state)
            lin.load_state_dict(state)
        except Exception as err:  # noqa: BLE001 - safetensors' and torch's own error types
            raise InputError(f"{path} cannot be read as a linear classifier ({type(err).__name__}); {fix}") from None
        return lin.eval()


def _with_grids(components: ComponentTable) -> ComponentTable:
    """Components of a run written before the compiler recorded each token's grid size: a branch's grid is
    then the extent of the positions its tokens take (the whole table is there, so every row and column is)."""
    placed = [c for c in components if c.row is not None and c.col is not None]
    if all(c.grid is not None for c in placed):
        return components
    extent: dict[int, tuple[int, int]] = {}
    for c in placed:
        rows, cols = extent.get(c.branch, (0, 0))
        extent[c.branch] = (max(rows, c.row + 1), max(cols, c.col + 1))
    return ComponentTable(replace(c, grid=extent[c.branch]) if c.grid is None and c in placed else c
                          for c in components)


def _tensor(path: Path, name: str, fix: str) -> torch.Tensor:
    try:
        with safe_open(str(path), "pt") as f:
            return f.get_tensor(name)
    except Exception as err:  # noqa: BLE001 - safetensors' own error types
        raise InputError(f"{path} cannot be read ({type(err).__name__}: {err}); {fix}") from None
