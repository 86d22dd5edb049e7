"""Retrieval over a run store, shard by shard: the same components and images as with the whole run in
memory, each shard read twice and never more than one at a time."""
from __future__ import annotations

import collections

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fxdecomp.align import property_scores
from fxdecomp.cli import main
from fxdecomp.report.vocabulary import properties_for
from fxdecomp.retrieval import component_sum, description_components, text_direction_against
from fxdecomp.retrieval.over_run import (CoMoments, component_sum_of_run, description_components_of_run,
                                         property_scores_of_run)
from fxdecomp.align.runs import run_aligner, run_clip_space, run_features
from fxdecomp.store import open_run
from fxdecomp.store.run import Run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """world-vit at head granularity on 50 images in shards of unequal sizes, aligned."""
    out = tmp_path_factory.mktemp("retrieval") / "run"
    assert main(["decompose", "world-vit", "world:50:5", "--out", str(out), "--batch", "4", "--shard-mb", "0.25",
                 "--workers", "0", "--device", "cpu"]) == 0
    assert main(["align", str(out), "--epochs", "1", "--workers", "0", "--device", "cpu"]) == 0
    return out


def test_the_run_has_several_uneven_shards(run_dir):
    sizes = [s["stop"] - s["start"] for s in open_run(run_dir)._shards]
    assert len(sizes) >= 3 and len(set(sizes)) > 1, sizes


def test_scores_choices_and_sums_equal_the_whole_run_in_memory(run_dir):
    r = open_run(run_dir)
    aligner, clip = run_aligner(r), run_clip_space(r)
    aligned = aligner.map(run_features(r))
    props = properties_for(r, None)
    got = property_scores_of_run(r, aligner, props, clip=clip)
    for prop, words in props.items():
        want = property_scores(aligned, words, clip=clip, method="share")
        assert got[prop].keys() == want.keys()
        # shares add up to 1; the aligner maps in float32, a shard of images at a time or all at once
        assert max(abs(got[prop][n] - want[n]) for n in want) < 1e-7, prop
    for texts in (["red", "green", "blue"], ["sea", "lake", "city"], ["circle"]):
        direction = text_direction_against(clip.encode_texts(texts), 0)
        assert description_components_of_run(r, aligner, direction, 7) == description_components(aligned, direction, 7)
    names = ["blocks.5.mlp", "blocks.1.attn[h3]", "embed"][: len(r.names)]
    names = [n for n in names if n in r.names] or r.names[:3]
    torch.testing.assert_close(component_sum_of_run(r, aligner, names), component_sum(aligned, names), rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("query", [["retrieve", "--image", "3", "--property", "colour"],
                                   ["retrieve", "--text", "sea", "--against", "lake", "city"]])
def test_retrieve_reads_each_shard_twice_and_one_at_a_time(run_dir, tmp_path, monkeypatch, capsys, query):
    """What loads the whole run is refused; every shard read is counted, and so is what the aligner maps."""
    reads, mapped = collections.Counter(), []
    real_whole = Run._whole

    def whole(self, info, name):
        reads[info["shard"], name] += 1
        return real_whole(self, info, name)

    def refuse(self, *a, **k):
        raise AssertionError("the whole run was loaded")

    from fxdecomp.align.compalign import CompAlign

    real_map = CompAlign.map

    def map_(self, data, *a, **k):
        mapped.append(len(data))
        return real_map(self, data, *a, **k)

    monkeypatch.setattr(Run, "_whole", whole)
    monkeypatch.setattr("fxdecomp.align.runs.run_features", refuse)
    monkeypatch.setattr("fxdecomp.align.run_features", refuse)
    monkeypatch.setattr(Run, "images", refuse)
    monkeypatch.setattr(CompAlign, "map", map_)
    argv = [query[0], str(run_dir), *query[1:], "--images", "5", "--out", str(tmp_path / "r.png")]
    assert main(argv) == 0, capsys.readouterr().err
    r = open_run(run_dir)
    shards = [s["shard"] for s in r._shards]
    assert {k: v for k, v in reads.items() if k[1] == "contributions"} == {(s, "contributions"): 2 for s in shards}
    assert max(mapped) == max(s["stop"] - s["start"] for s in r._shards) < r.n
    assert len(mapped) == len(shards)  # the second read maps only the chosen components


@given(st.lists(st.integers(1, 9), min_size=2, max_size=6), st.integers(0, 2 ** 16))
def test_co_moments_merged_shard_by_shard_equal_the_direct_ones(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(sum(sizes), 4, 3, generator=g, dtype=torch.float64) * 3 + torch.randn(4, 3, generator=g) * 10
    acc = CoMoments()
    for part in torch.split(s, sizes):
        acc.add(part)
    t = s.sum(1)
    sc, tc = s - s.mean(0), t - t.mean(0)
    for cols in (slice(None), slice(0, 1), slice(1, 3)):
        want = (sc * tc.unsqueeze(1)).sum(0)[:, cols].sum(-1) / tc.pow(2).sum(0)[cols].sum()
        torch.testing.assert_close(acc.shares(cols), want, rtol=1e-10, atol=1e-12)


def test_co_moments_of_one_image_are_zero_shares_not_nan():
    acc = CoMoments()
    acc.add(torch.randn(1, 4, 2, dtype=torch.float64))
    assert acc.shares().tolist() == [0.0] * 4
