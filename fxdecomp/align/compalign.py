"""CompAlign: one linear map per component from the model's representation into CLIP space.

A decomposed model writes its representation as Σ_i c_i(x). Mapping every
component with its own matrix W_i keeps that sum structure in CLIP space,
Σ_i c_i(x) W_i + b ≈ CLIP_image(x), so each component can be read with CLIP's
text embeddings. Fitting only the sum leaves the individual maps free;
the orthogonality penalty makes each one an isometry, so a component's CLIP
vector keeps the geometry (and the size) of what it writes.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..checks import finite_number, whole_number
from ..components import ComponentTable
from ..decomposition import Decomposition
from ..errors import InputError
from .aligned import Aligned
from .features import Features

VARIANTS = ("per_component", "shared")
#: Starting maps: an independent random (semi-)orthogonal map per component; one random
#: orthogonal map shared by every component at the start (they then differ only where the data
#: pulls them apart); or small Gaussian entries (std 0.02), as in the paper's released code.
INITS = ("orthogonal", "common", "small")
FORMAT = "fxdecomp.compalign/1"


def _names(components) -> list[str]:
    if isinstance(components, int):
        return [f"c{i}" for i in range(components)]
    if isinstance(components, ComponentTable):
        return components.names
    return [c if isinstance(c, str) else c.name for c in components]


class CompAlign(torch.nn.Module):
    """Linear maps W_i [d_model, d_clip] (one per component, or one ``shared``) plus a bias b.

    Args:
        components: the component names (a ``ComponentTable``, names, or a count).
        d_model: width of the decomposed representation.
        d_clip: width of the CLIP space.
        variant: ``"per_component"`` (the method) or ``"shared"`` (one map for all
            components, i.e. a linear map of the whole representation: the baseline).
        lam: weight λ of the orthogonality penalty (``0``: the unconstrained baseline).
        clip_name, model_name: recorded when saved, checked by ``load``.
        seed: for the initialisation.
        init: the starting maps, one of ``INITS`` (default ``"orthogonal"``).
    """

    def __init__(self, components, d_model: int, d_clip: int, *, variant: str = "per_component", lam: float = 1.0,
                 clip_name: str | None = None, model_name: str | None = None, seed: int = 0,
                 init: str = "orthogonal"):
        super().__init__()
        if variant not in VARIANTS:
            raise InputError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if init not in INITS:
            raise InputError(f"init must be one of {INITS}, got {init!r}")
        check_training(lam=lam)
        self.names = _names(components)
        if len(set(self.names)) != len(self.names):
            raise InputError("component names must be unique")
        self.d_model, self.d_clip = int(d_model), int(d_clip)
        self.variant, self.lam = variant, float(lam)
        self.clip_name, self.model_name = clip_name, model_name
        n = 1 if variant == "shared" else len(self.names)
        weight = torch.empty(n, self.d_model, self.d_clip)
        g = torch.Generator().manual_seed(seed)
        if init == "small":
            weight.normal_(0.0, 0.02, generator=g)
        elif init == "common":
            _orthogonal_(weight[0], g)
            weight[1:] = weight[0]
        else:
            _orthogonal_(weight, g)
        self.weight = torch.nn.Parameter(weight)
        self.bias = torch.nn.Parameter(torch.zeros(self.d_clip))

    @classmethod
    def for_features(cls, features: Features, clip_dim: int | None = None, **kwargs) -> CompAlign:
        """An aligner shaped for ``features`` (and a CLIP of width ``clip_dim``, default: theirs)."""
        if clip_dim is None:
            if features.clip is None:
                raise InputError("features carry no CLIP embeddings; pass clip_dim=clip.dim")
            clip_dim = features.clip.shape[1]
        kwargs.setdefault("model_name", features.meta.get("model"))
        kwargs.setdefault("clip_name", features.meta.get("clip"))
        return cls(features.components, features.contributions.shape[2], clip_dim, **kwargs)

    @property
    def n_components(self) -> int:
        return len(self.names)

    def extra_repr(self) -> str:
        return (f"{self.n_components} components, d_model={self.d_model}, d_clip={self.d_clip}, "
                f"variant={self.variant!r}, lam={self.lam}")

    # -- the maps -----------------------------------------------------------------------------------
    def ortho_penalty(self) -> torch.Tensor:
        """Σ_i ‖G_i − I‖²_F / (n · r): zero exactly when every map is a (semi-)orthogonal isometry.

        G_i is the Gram matrix of W_i on its *smaller* side, r = min(d_model, d_clip):
        WᵀW (d_clip × d_clip) when d_model ≥ d_clip, as in the paper, so the columns of W
        are orthonormal; W Wᵀ (d_model × d_model) when d_model < d_clip, because there
        WᵀW has rank at most d_model and ‖WᵀW − I‖² ≥ d_clip − d_model > 0 for every W, a
        penalty no map can meet — orthonormal rows instead make W an isometry of the
        model's space into CLIP's. In both cases ‖x W‖ = ‖x‖ on the map's row space.
        """
        w = self.weight
        gram = w.transpose(1, 2) @ w if self.d_model >= self.d_clip else w @ w.transpose(1, 2)
        r = gram.shape[-1]
        eye = torch.eye(r, dtype=w.dtype, device=w.device)
        return ((gram - eye) ** 2).sum() / (w.shape[0] * r)

    def forward(self, contributions) -> torch.Tensor:
        """Mapped contributions [B, C, d_clip] from [B, C, d_model] (a tensor, a ``Decomposition``
        or ``Features``; the last two are matched to the aligner's components by name)."""
        c = self._contributions(contributions)
        w = self.weight.to(c.dtype)
        if self.variant == "shared":
            return torch.einsum("bcd,de->bce", c, w[0])
        return torch.einsum("bcd,cde->bce", c, w)

    def aligned(self, contributions) -> torch.Tensor:
        """[B, d_clip] the aligned image vector Σ_i c_i W_i + b."""
        return self(contributions).sum(1) + self.bias

    def loss(self, contributions, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total, 1 − mean cosine, orthogonality penalty) for CLIP image embeddings ``targets``."""
        pred = self.aligned(contributions)
        self.check_targets(targets, len(pred))
        cos = 1 - F.cosine_similarity(pred, targets.to(pred), dim=-1).mean()
        pen = self.ortho_penalty()
        return cos + self.lam * pen, cos, pen

    @torch.no_grad()
    def map(self, data, batch_size: int = 1024, *, finer: bool = False) -> Aligned:
        """Every component of every image of ``data`` (``Features`` or [N, C, d_model]) in CLIP space.

        With ``finer``, ``data`` (``Features`` or a ``Decomposition``) may be at a finer granularity
        than the aligner's: each component is read with its own map or its head's or branch's
        (:meth:`maps_for`), so tokens take their head's map and neurons their MLP's, and the
        result keeps the data's own components (``describe``, ``property_scores`` on neurons)."""
        clip = data.clip if isinstance(data, Decomposition) else None
        if clip is not None:
            self.check_clip_dim(clip.shape[1])
        bias = self.bias.detach().float().cpu()
        meta = {**data.meta, "clip": self.clip_name or data.meta.get("clip")} if isinstance(data, Decomposition) else None
        if finer:
            if not isinstance(data, Decomposition):
                raise InputError("map(..., finer=True) needs the data's components: pass a Decomposition (or Features)")
            dev = self.weight.device
            c = data.contributions
            mapped = torch.cat([self.map_finer(c[i:i + batch_size].to(dev), data.components).float().cpu()
                                for i in range(0, len(c), batch_size)])
            return Aligned(mapped, data.components, clip, bias, meta)
        contributions = self._contributions(data)
        dev = self.weight.device
        mapped = torch.cat([self(contributions[i:i + batch_size].to(dev)).float().cpu()
                            for i in range(0, len(contributions), batch_size)])
        components = list(self.names)
        if isinstance(data, Decomposition):  # the data's own labels, in the aligner's order
            components = ComponentTable(replace(data.components[n], index=i) for i, n in enumerate(self.names))
        return Aligned(mapped, components, clip, bias, meta)

    def maps_for(self, components) -> list[int]:
        """Which map applies to each of ``components``: its own, or for a component finer than the
        aligner's (a token of a head the aligner maps), its head's or else its branch's map, the way
        the paper reads a token's contribution with its head's map."""
        own = {n: i for i, n in enumerate(self.names)}
        out = []
        for c in components:
            hit = next((own[n] for n in (c.name, *c.ancestors()) if n in own), None)
            if hit is None:
                raise InputError(f"the aligner has no map for component {c.name!r} nor for a coarser one containing "
                                 f"it ({', '.join(c.ancestors()) or 'none'}): align the same model at this "
                                 "granularity or a coarser one")
            out.append(0 if self.variant == "shared" else hit)
        return out

    @torch.no_grad()
    def map_finer(self, contributions, components=None, batch_size: int = 256) -> torch.Tensor:
        """[B, C, d_clip]: contributions at the aligner's granularity or a finer one (``Decomposition``,
        or a tensor [B, C, d_model] with its ``components``), each mapped by :meth:`maps_for`."""
        if isinstance(contributions, Decomposition):
            components = contributions.components if components is None else components
            contributions = contributions.contributions
        if components is None:
            raise InputError("map_finer needs the components of the contributions")
        if contributions.dim() != 3 or contributions.shape[1] != len(components):
            raise InputError(f"contributions {list(contributions.shape)} do not fit {len(components)} components")
        self.check(d_model=contributions.shape[2])
        dtype = torch.promote_types(contributions.dtype, self.weight.dtype)
        w = self.weight[self.maps_for(components)].to(dtype)
        outs = [torch.einsum("bcd,cde->bce", contributions[i:i + batch_size].to(w), w)
                for i in range(0, len(contributions), batch_size)]
        return torch.cat(outs) if outs else contributions.new_zeros(0, len(components), self.d_clip)

    @torch.no_grad()
    def readout(self, descriptions: Sequence[str], clip=None, text_embeddings: torch.Tensor | None = None) -> dict:
        """One [d_model, K] readout per component, ``W_i tᵀ`` for the K descriptions' unit text
        embeddings ``t``: ``decompose(model, g, readout=aligner.readout(texts, clip=clip))`` gives
        every component's (a token's through its head's map) similarity to each text, compiled
        in, without any contribution of the model's width (the bias, a constant, is not read)."""
        from .text import text_matrix

        t = text_matrix(descriptions, clip, text_embeddings, dim=self.d_clip).to(self.weight)
        w = self.weight.detach()
        return {n: w[0 if self.variant == "shared" else i] @ t.T for i, n in enumerate(self.names)}

    # -- checks -------------------------------------------------------------------------------------
    def _contributions(self, data) -> torch.Tensor:
        if isinstance(data, Decomposition):
            names = data.components.names
            if names != self.names:
                missing = [n for n in self.names if n not in set(names)]
                if missing or len(names) != len(self.names):
                    extra = [n for n in names if n not in set(self.names)]
                    raise InputError(
                        f"the data's components do not match the aligner's ({len(names)} vs {self.n_components}; "
                        f"missing {missing[:3]}, unknown {extra[:3]}): decompose the model the aligner was "
                        "trained for, at the same granularity and layers, or train a new aligner")
                data_c = data.contributions[:, [names.index(n) for n in self.names]]
            else:
                data_c = data.contributions
        else:
            data_c = data
        if not isinstance(data_c, torch.Tensor) or data_c.dim() != 3:
            shape = list(data_c.shape) if isinstance(data_c, torch.Tensor) else type(data_c).__name__
            raise InputError(f"expected contributions [B, C, d_model], got {shape}; decompose a model whose output "
                             "is one vector per image (fxdecomp.align.representation(model))")
        self.check(n_components=data_c.shape[1], d_model=data_c.shape[2])
        return data_c

    def check(self, *, n_components: int | None = None, d_model: int | None = None,
              d_clip: int | None = None, components: Sequence | ComponentTable | None = None) -> None:
        """Raise ``InputError`` naming the fix when a model, data or CLIP does not fit this aligner."""
        if components is not None:
            names = _names(components)
            if names != self.names:
                raise InputError(f"the aligner was trained on other components ({self.n_components}, e.g. "
                                 f"{self.names[:2]}) than these ({len(names)}, e.g. {names[:2]}); decompose the same "
                                 "model at the same granularity, or train a new aligner")
        if n_components is not None and n_components != self.n_components:
            raise InputError(f"contributions have {n_components} components but the aligner maps "
                             f"{self.n_components}: decompose at the granularity (and layers) the aligner was "
                             "trained for, or build CompAlign(dm.components, ...) for this decomposition")
        if d_model is not None and d_model != self.d_model:
            raise InputError(f"contributions have width d_model={d_model} but the aligner maps d_model="
                             f"{self.d_model}: decompose the model's representation the aligner was trained on "
                             "(fxdecomp.align.representation(model)), or build CompAlign(..., d_model="
                             f"{d_model}, ...)")
        if d_clip is not None:
            self.check_clip_dim(d_clip)

    def check_clip_dim(self, d_clip: int) -> None:
        if d_clip != self.d_clip:
            raise InputError(f"the CLIP space has width {d_clip} but the aligner maps into d_clip={self.d_clip}: "
                             f"use the CLIP it was trained for ({self.clip_name or 'unrecorded'}), or build "
                             f"CompAlign(..., d_clip=clip.dim)")

    def check_targets(self, targets: torch.Tensor, batch: int) -> None:
        if targets.dim() != 2:
            raise InputError(f"CLIP targets must be [B, d_clip], got {list(targets.shape)}")
        self.check_clip_dim(targets.shape[1])
        if targets.shape[0] != batch:
            raise InputError(f"{batch} contributions but {targets.shape[0]} CLIP targets: they must be the same images")

    # -- training -------------------------------------------------------------------------------------
    def fit(self, data, targets: torch.Tensor | None = None, **kwargs) -> dict:
        """Train on ``data`` (see :func:`train_aligner`); returns the per-epoch history."""
        return train_aligner(self, data, targets, **kwargs)

    # -- files --------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Weights and everything needed to check a later use (safetensors)."""
        meta = {"format": FORMAT, "names": json.dumps(self.names), "d_model": str(self.d_model),
                "d_clip": str(self.d_clip), "lam": repr(self.lam), "variant": self.variant,
                "clip_name": json.dumps(self.clip_name), "model_name": json.dumps(self.model_name)}
        save_file({"weight": self.weight.detach().cpu().contiguous(), "bias": self.bias.detach().cpu().contiguous()},
                  str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path, *, device="cpu", components=None, d_model: int | None = None,
             d_clip: int | None = None, clip_name: str | None = None) -> CompAlign:
        """An aligner saved with :meth:`save`; whatever is given (components, widths, CLIP name)
        is checked against what it was trained for."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"no aligner file {path}")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise InputError(f"{path} is not a CompAlign file (format {meta.get('format')!r})")
            weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
        aligner = cls(json.loads(meta["names"]), int(meta["d_model"]), int(meta["d_clip"]), variant=meta["variant"],
                      lam=float(meta["lam"]), clip_name=json.loads(meta["clip_name"]),
                      model_name=json.loads(meta["model_name"]), init="small")  # overwritten just below
        with torch.no_grad():
            aligner.weight.copy_(weight)
            aligner.bias.copy_(bias)
        aligner.check(components=components, d_model=d_model, d_clip=d_clip)
        if clip_name is not None and aligner.clip_name is not None and clip_name != aligner.clip_name:
            raise InputError(f"the aligner was trained for CLIP {aligner.clip_name!r}, not {clip_name!r}")
        return aligner.to(device)


def _orthogonal_(w: torch.Tensor, generator: torch.Generator) -> None:
    """Fill ``w`` (a matrix, or a stack of them) with random (semi-)orthogonal matrices, one QR
    for the whole stack: thousands of token maps start in a second, not a minute."""
    rows, cols = w.shape[-2:]
    a = torch.randn(*w.shape[:-2], max(rows, cols), min(rows, cols), generator=generator)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small factorisations: threads only wait on each other (badly, on a busy CPU)
    try:
        q, r = torch.linalg.qr(a)
    finally:
        torch.set_num_threads(threads)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    with torch.no_grad():
        w.copy_(q if rows >= cols else q.transpose(-2, -1))


def check_training(*, lam: float | None = None, epochs: int | None = None, batch_size: int | None = None,
                   lr: float | None = None) -> None:
    """Training settings that would silently give a useless aligner (a NaN penalty weight, a NaN step)
    or crash deep inside the optimiser, refused with the range each must be in."""
    if lam is not None:
        finite_number("lam", lam, 0)
    if lr is not None:
        finite_number("lr", lr, 0, inclusive=False)
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if v is not None:
            whole_number(name, v)


def train_aligner(aligner: CompAlign, data, targets: torch.Tensor | None = None, *, epochs: int = 10,
                  batch_size: int = 32, lr: float = 3e-4, device=None, progress: bool = True, seed: int = 0,
                  desc: str | None = None) -> dict:
    """Adam on 1 − cos(Σ_i c_i W_i + b, CLIP(x)) + λ · penalty.

    ``data``: ``Features`` (targets: their CLIP embeddings), a contributions tensor
    [N, C, d_model] with ``targets`` [N, d_clip] (shuffled together each epoch, seeded), or a
    re-iterable of (contributions, targets) batches, a :class:`~fxdecomp.align.Batches`
    (``ImageBatches`` decomposing on the fly, ``RunBatches`` reading a run). Returns ``{"loss", "cos", "penalty"}``: per-epoch means.
    On the CPU, subnormal floats are flushed to zero while training (and the flag is then
    reset to PyTorch's default, off). A loss that goes non-finite stops training with an
    ``InputError`` (the aligner's weights are then not to be used).
    """
    check_training(epochs=epochs, batch_size=batch_size, lr=lr)
    if device is not None:
        aligner.to(device)
    dev = aligner.weight.device
    if isinstance(data, (Decomposition, torch.Tensor)):
        contributions = aligner._contributions(data)
        if targets is None:
            if not isinstance(data, Decomposition) or data.clip is None:
                raise InputError("no CLIP targets: pass targets=[N, d_clip] or Features collected with clip=...")
            targets = data.clip
        aligner.check_targets(targets, len(contributions))
        gen = torch.Generator().manual_seed(seed)
        n = len(contributions)

        def epoch_batches():
            order = torch.randperm(n, generator=gen)
            for i in range(0, n, batch_size):
                sel = order[i:i + batch_size]
                yield contributions[sel], targets[sel]

        n_batches = math.ceil(n / batch_size)
    else:
        if targets is not None:
            raise InputError("targets are taken from the batches when data is an iterable of (contributions, targets)")
        components = getattr(data, "components", None)
        if components is not None:
            aligner.check(components=components)

        def epoch_batches():
            return iter(data)

        n_batches = len(data) if hasattr(data, "__len__") else None
    opt = torch.optim.Adam(aligner.parameters(), lr=lr)
    history: dict[str, list[float]] = {"loss": [], "cos": [], "penalty": []}
    total = n_batches * epochs if n_batches is not None else None
    bar = tqdm(total=total, disable=None if progress else True, desc=desc or f"CompAlign {aligner.variant} lam={aligner.lam:g}",
               unit="step", leave=False)
    aligner.train()
    # Near-orthogonal maps make the penalty's gradients (and Adam's second moments) subnormal
    # floats, which CPUs process ~10x slower; they are far below anything that matters.
    flushed = dev.type == "cpu" and torch.set_flush_denormal(True)
    try:
        for _ in range(epochs):
            sums, steps = torch.zeros(3, dtype=torch.float64, device=dev), 0
            for c, t in epoch_batches():
                loss, cos, pen = aligner.loss(c.to(dev), t.to(dev))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sums += torch.stack([loss.detach(), cos.detach(), pen.detach()]).double()
                steps += 1
                bar.update(1)
                if steps % 50 == 0:
                    mean = (sums / steps).tolist()
                    bar.set_postfix(cos=f"{1 - mean[1]:.4f}", pen=f"{mean[2]:.3g}")
            if not torch.isfinite(sums).all():  # one check per epoch: no wait for the device per step
                raise InputError(f"CompAlign's loss became non-finite (loss, 1 - cos, penalty summed over epoch "
                                 f"{len(history['loss']) + 1}: {sums.tolist()}): lower the learning rate (lr={lr:g}) "
                                 "or the penalty weight (lam), or check the contributions and CLIP targets for "
                                 "non-finite values")
            for j, k in enumerate(history):
                history[k].append(float(sums[j]) / max(steps, 1))
    finally:
        if flushed:
            torch.set_flush_denormal(False)  # PyTorch's default
        bar.close()
        aligner.eval()
    return history
