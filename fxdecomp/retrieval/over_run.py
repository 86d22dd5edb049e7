"""Retrieval over a run store, read shard by shard.

A query chooses components by their share of the representation's variance along a property's
text basis (or along one description's direction), then searches with the sum of the chosen
components' mapped contributions. Over a run both are sums over images, so each is gathered one
shard at a time: memory holds one shard and its mapped contributions [n, C, d_clip], statistics
[C, r] per component, and the chosen sum [N, d_clip] — never the run's [N, C, d]. Each shard is
read twice, once to choose and once to sum what was chosen. The results are those of the
in-memory functions (``property_scores(method="share")``, ``description_components``,
``component_sum`` on ``aligner.map(run_features(run))``) up to rounding (tested).

``run`` is anything with ``shards()`` (start, stop, contributions [n, C, d_model]) and
``components``, as ``fxdecomp.store.open_run`` gives.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

from ..align.scores import text_basis
from ..align.text import text_matrix
from ..errors import InputError
from ..store.readouts import refuse_readout_run
from .choose import property_components
from .search import by_text, nearest


class CoMoments:
    """Means and centred co-moments of readings s [n, C, r] (component, direction) and of their
    total t = Σ_C s [n, r], merged batch by batch with the pairwise update of Chan et al., so the
    result does not depend on how the images are split into shards."""

    def __init__(self):
        self.n = 0
        self.mean_s = self.mean_t = self.m_st = self.m_tt = None

    def add(self, s: torch.Tensor) -> None:
        s = s.double()
        t = s.sum(1)
        n_b = len(s)
        if n_b == 0:
            return
        mean_s, mean_t = s.mean(0), t.mean(0)
        tc = t - mean_t
        m_st = ((s - mean_s) * tc.unsqueeze(1)).sum(0)  # [C, r]
        m_tt = tc.pow(2).sum(0)  # [r]
        if self.n == 0:
            self.n, self.mean_s, self.mean_t, self.m_st, self.m_tt = n_b, mean_s, mean_t, m_st, m_tt
            return
        n = self.n + n_b
        d_s, d_t = mean_s - self.mean_s, mean_t - self.mean_t
        f = self.n * n_b / n
        self.m_st = self.m_st + m_st + d_s * d_t * f
        self.m_tt = self.m_tt + m_tt + d_t * d_t * f
        self.mean_s = self.mean_s + d_s * (n_b / n)
        self.mean_t = self.mean_t + d_t * (n_b / n)
        self.n = n

    def shares(self, columns: slice = slice(None)) -> torch.Tensor:
        """[C] Σ_j Cov(s_ij, t_j) / Σ_j Var(t_j) over the directions ``columns`` (0 where t does not vary)."""
        if self.n == 0:
            raise InputError("no images were read: the run is empty")
        var = self.m_tt[columns].sum()
        if var <= 0:
            return torch.zeros(self.m_st.shape[0], dtype=torch.float64)
        return self.m_st[:, columns].sum(-1) / var


def _aligner_order(run, aligner) -> list[int] | None:
    """Indices that put the run's components in the aligner's order (None: already in it)."""
    names = run.components.names
    if names == list(aligner.names):
        return None
    missing = [n for n in aligner.names if n not in set(names)]
    if missing or len(names) != len(aligner.names):
        raise InputError(f"the run's components do not match its aligner's ({len(names)} vs {len(aligner.names)}); "
                         f"train the aligner again: fxdecomp align {getattr(run, 'path', 'RUN')} --overwrite")
    return [names.index(n) for n in aligner.names]


def mapped_shards(run, aligner) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(start, stop, mapped [n, C, d_clip]) for each shard, components in the aligner's order."""
    refuse_readout_run(run, "retrieval (it maps every component through CompAlign)")
    order = _aligner_order(run, aligner)
    for start, stop, block in run.shards():
        yield start, stop, aligner.map(block if order is None else block[:, order]).mapped


def variance_shares(run, aligner, bases: Mapping[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """{key: {component: share}}: each component's share of the aligned representation's variance
    along each basis [d_clip, r] (orthonormal columns), all of them in one read of the run."""
    if not bases:
        return {}
    keys = list(bases)
    sizes = [bases[k].shape[1] for k in keys]
    stacked = torch.cat([bases[k].double() for k in keys], 1)  # [d, R]
    acc = CoMoments()
    for _, _, mapped in mapped_shards(run, aligner):
        acc.add(mapped.double() @ stacked)
    out, at = {}, 0
    for k, r in zip(keys, sizes):
        out[k] = dict(zip(aligner.names, acc.shares(slice(at, at + r)).tolist()))
        at += r
    return out


def property_scores_of_run(run, aligner, properties: Mapping[str, Sequence[str]], *, clip) -> dict:
    """{property: {component: score}}: ``property_scores(method="share")`` of each property over the
    whole run, in one read."""
    bases = {}
    for prop, words in properties.items():
        t = text_matrix(words, clip, None, aligner.d_clip)
        if len(t) > aligner.d_clip:
            raise InputError(f"{len(t)} descriptions span at most {aligner.d_clip} directions in a "
                             f"{aligner.d_clip}-d space")
        bases[prop] = text_basis(t, center=True)
    return variance_shares(run, aligner, bases)


def description_components_of_run(run, aligner, direction: torch.Tensor, k: int = 5) -> list[str]:
    """``description_components``: the k components with the largest share of the variance along
    ``direction`` [d_clip], over the whole run."""
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    d = direction.double().reshape(-1, 1)
    share = torch.tensor(list(variance_shares(run, aligner, {"d": d})["d"].values()), dtype=torch.float64)
    return [aligner.names[int(i)] for i in torch.argsort(share, descending=True, stable=True)][:k]


def component_sum_of_run(run, aligner, names: Sequence[str]) -> torch.Tensor:
    """[N, d_clip] ``component_sum``: Σ_{i ∈ names} f_i(c_i(x)) for every image of the run, reading
    one shard at a time and mapping only the chosen components."""
    if not names:
        raise InputError("choose at least one component to search with")
    table = {c.name: (i, c) for i, c in enumerate(run.components)}
    unknown = [n for n in names if n not in table]
    if unknown:
        raise InputError(f"no component {unknown[0]!r} in the run")
    refuse_readout_run(run, "retrieval (it maps every component through CompAlign)")
    idx = torch.tensor([table[n][0] for n in names])
    components = [table[n][1] for n in names]
    parts = []
    for _, _, block in run.shards():
        parts.append(aligner.map_finer(block[:, idx], components).double().sum(1))
    return torch.cat(parts)


def by_image_over_run(run, aligner, properties: Mapping[str, Sequence[str]], prop: str, query: int, *, clip,
                      top: int = 5, k: int = 10, ranking=None) -> tuple[list[str], list[int]]:
    """(the ``top`` components of ``prop``, the k images nearest to image ``query`` in their subspace).
    ``ranking``: the aligner the components are chosen through (the run's shared map; default
    ``aligner``, which maps the images compared)."""
    scores = property_scores_of_run(run, ranking or aligner, properties, clip=clip)
    chosen = property_components(scores, prop, top)
    found = nearest(component_sum_of_run(run, aligner, chosen), [query], k)[0].tolist()
    return chosen, found


def by_text_over_run(run, aligner, direction: torch.Tensor, *, top: int = 5, k: int = 10, ranking=None) \
        -> tuple[list[str], list[int]]:
    """(the ``top`` components along ``direction``, the k images furthest along it in their sum);
    ``ranking`` as in :func:`by_image_over_run`."""
    chosen = description_components_of_run(run, ranking or aligner, direction, top)
    found = by_text(component_sum_of_run(run, aligner, chosen), direction, k).tolist()
    return chosen, found
