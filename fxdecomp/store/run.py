"""Reading a run lazily: one component over all images, or some images over all components,
without loading the rest; shard by shard for training in bounded memory."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from ..components import Component, ComponentTable
from ..errors import InputError
from ..hashing import safe_name
from .files import ALIGNER, ALIGNER_RECORD, HEAD, MANIFEST, RUN, read_json



def open_run(path) -> "Run":
    """The complete run stored in ``path`` (what ``fxdecomp decompose`` wrote)."""
    return Run(path)


class Run:
    """A run store, read on demand.

    ``components`` labels the contributions; ``ids`` and ``labels`` describe the images in
    order; ``component(name)`` is [N, D], ``images(idx)`` [k, C, D], ``shards()`` yields
    (start, stop, contributions) one shard at a time. Tensors come back as float32.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not (self.path / MANIFEST).is_file():
            hint = (" (a decomposition was started there but is not complete: run the same fxdecomp decompose "
                    "command again to finish it)") if (self.path / RUN).is_file() else ""
            raise InputError(f"{self.path} is not a complete fxdecomp run{hint}")
        self.manifest = read_json(self.path / MANIFEST)
        self.components = ComponentTable(Component(**c) for c in self.manifest["component_table"])
        self.n = int(self.manifest["data"]["n"])
        self.d_model = int(self.manifest["d_model"])
        self._shards = self.manifest["shards"]

    # -- description --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        m = self.manifest
        return (f"Run({str(self.path)!r}: {m['model']['name']} at {m['granularity']} granularity, {self.n} images, "
                f"{len(self.components)} components, d_model={self.d_model})")

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

    def data(self):
        """The run's images again, from where they were read (checked to be the same images), as the
        model saw them: through the run's recorded resize and crop (``fxdecomp.preprocessing.ModelView``)."""
        from ..data.folder import ImageFolder
        from ..data.waterbirds import WaterbirdsFolder
        from ..data.world import WorldImages
        from ..hashing import json_digest

        src = self.manifest["source"]
        kind = src["kind"]
        if kind == "world":
            data = WorldImages(src["n"], src["seed"])
        elif kind == "waterbirds":
            data = WaterbirdsFolder(src["root"], split=src["split"], size=src["size"])
        elif kind == "folder":
            data = ImageFolder(src["root"], size=src["size"])
        else:
            raise InputError(f"{self.path}: unknown data kind {kind!r}")
        if json_digest(data.ids()) != self.manifest["data"]["ids"]:
            raise InputError(f"the images at {src.get('root', kind)} are not the ones this run decomposed (files were "
                             "added, removed or renamed); decompose them again into a new run")
        from ..preprocessing import EvalTransform, ModelView

        return ModelView(data, EvalTransform.from_description(self.manifest["preprocess"]))

    # -- reading --------------------------------------------------------------------------------------
    def _file(self, info: dict) -> str:
        return str(self.path / info["file"])

    def _index(self, component) -> int:
        if isinstance(component, str):
            return self.components.index(component)
        return self.components.resolve(int(component))[0]

    def component(self, component) -> torch.Tensor:
        """[N, D] one component's contributions for every image."""
        j = self._index(component)
        parts = []
        for info in self._shards:
            with safe_open(self._file(info), "pt") as f:
                parts.append(f.get_slice("contributions")[:, j].float())
        return torch.cat(parts)

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        """[k, C, D] every component's contributions for the images ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64).ravel()
        if len(idx) and (idx.min() < 0 or idx.max() >= self.n):
            raise InputError(f"image indices must be in 0..{self.n - 1}")
        out = torch.empty(len(idx), len(self.components), self.d_model)
        for info in self._shards:
            start, stop = info["start"], info["stop"]
            hit = np.nonzero((idx >= start) & (idx < stop))[0]
            if len(hit):
                with safe_open(self._file(info), "pt") as f:
                    block = f.get_tensor("contributions")
                out[torch.as_tensor(hit)] = block[torch.as_tensor(idx[hit] - start)].float()
        return out

    def outputs(self) -> torch.Tensor:
        """[N, D] the model's own output for every image."""
        parts = []
        for info in self._shards:
            with safe_open(self._file(info), "pt") as f:
                parts.append(f.get_tensor("output").float())
        return torch.cat(parts)

    def shards(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(start, stop, contributions [stop - start, C, D]) for each shard in order, one in memory at a time."""
        for info in self._shards:
            with safe_open(self._file(info), "pt") as f:
                yield info["start"], info["stop"], f.get_tensor("contributions").float()

    def features(self, clip: str | None = None):
        """Everything in memory as ``fxdecomp.align.Features`` (with the CLIP embeddings named ``clip``)."""
        from ..align.features import Features

        contributions = torch.cat([c for _, _, c in self.shards()])
        emb = self.clip_embeddings(clip) if clip is not None else None
        return Features(contributions, emb, self.components, {"model": self.model_name,
                                                              "granularity": self.granularity, "clip": clip})

    # -- what later commands add ------------------------------------------------------------------------
    def clip_folder(self, clip: str) -> Path:
        return self.path / "clip" / safe_name(clip)

    def has_clip(self, clip: str) -> bool:
        return (self.clip_folder(clip) / "complete.json").is_file()

    def clip_embeddings(self, clip: str) -> torch.Tensor:
        """[N, d_clip] normalised CLIP image embeddings of the run's images (``fxdecomp align`` adds them)."""
        folder = self.clip_folder(clip)
        if not self.has_clip(clip):
            raise InputError(f"{self.path} has no embeddings by CLIP {clip!r}: run fxdecomp align {self.path} "
                             f"--clip {clip}")
        with safe_open(str(folder / "embeddings.safetensors"), "pt") as f:
            return f.get_tensor("clip").float()

    def aligner_path(self) -> Path:
        return self.path / ALIGNER

    def aligner(self):
        """The CompAlign ``fxdecomp align`` trained for this run."""
        from ..align.compalign import CompAlign

        if not self.aligner_path().is_file():
            raise InputError(f"{self.path} has no aligner yet: run fxdecomp align {self.path} --clip ...")
        return CompAlign.load(self.aligner_path(), components=self.components, d_model=self.d_model)

    def clip_space(self, checkpoint=None):
        """The CLIP space the run's aligner maps into (None before ``fxdecomp align``); ``checkpoint``
        overrides the local weights file recorded when it was aligned."""
        from ..align.clip_space import ClipSpace

        info = self.path / ALIGNER_RECORD
        if not info.is_file():
            return None
        rec = read_json(info)
        return ClipSpace.by_name(rec["clip"], checkpoint=checkpoint or rec.get("checkpoint"))

    def head(self) -> torch.nn.Linear | None:
        """The model's linear classifier, if it had one (logits = head(representation))."""
        path = self.path / HEAD
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        state = load_file(str(path))
        lin = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0], bias="bias" in state)
        lin.load_state_dict(state)
        return lin.eval()

    def stream(self, clip: str, batch_size: int = 32, shuffle_seed: int | None = 0) -> "RunStream":
        """Re-iterable (contributions, CLIP targets) batches for training CompAlign in bounded memory."""
        return RunStream(self, clip, batch_size, shuffle_seed)


class RunStream:
    """Batches for ``train_aligner``: shards in a seeded order, images shuffled inside each shard,
    so memory holds one shard, not the run."""

    def __init__(self, run: Run, clip: str, batch_size: int, shuffle_seed: int | None):
        self.run, self.batch_size, self.seed = run, batch_size, shuffle_seed
        self.targets = run.clip_embeddings(clip)
        self.components = run.components
        self.epoch = 0

    def __len__(self) -> int:
        return sum(-(-(s["stop"] - s["start"]) // self.batch_size) for s in self.run._shards)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch]) if self.seed is not None else None
        self.epoch += 1
        order = rng.permutation(len(self.run._shards)) if rng is not None else range(len(self.run._shards))
        for k in order:
            info = self.run._shards[int(k)]
            with safe_open(self.run._file(info), "pt") as f:
                block = f.get_tensor("contributions").float()
            start = info["start"]
            inner = rng.permutation(len(block)) if rng is not None else np.arange(len(block))
            for s in range(0, len(block), self.batch_size):
                sel = torch.as_tensor(inner[s:s + self.batch_size])
                yield block[sel], self.targets[start + sel]
