"""Rankings read the shared map, descriptions the per-component maps (docs/ALIGN.md: a ranking of
components by a property holds against the readout ground truth on a shared map, not on per-component
maps). ``fxdecomp align`` trains and stores both; every ranking over a run (the report, ``spurious``,
``retrieve``, ``property_scores_over``) reads the shared one; a run aligned without one is refused."""
from __future__ import annotations

import html
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import cli, one_line, write_waterbirds
from fxdecomp import InputError
from fxdecomp.align import ClipSpace, CompAlign, describe, property_scores
from fxdecomp.cli import main
from fxdecomp.data import open_data
from fxdecomp.models_registry import load
from fxdecomp.report import write_report, world_properties
from fxdecomp.spurious import find_and_remove, ranked, spurious_scores
from fxdecomp.spurious.over_run import from_run
from fxdecomp.align.over_run import property_scores_over, shared_aligned
from fxdecomp.align.runs import run_aligner, run_batches, run_clip_space, run_features, run_shared_aligner
from fxdecomp.align.train_run import align_run
from fxdecomp.store import decompose_to_store, open_run, verify_run
from fxdecomp.store.files import ALIGNER_RECORD, SHARED, SHARED_RECORD, read_json, sha256, write_json

EPOCHS, LR = 5, 1e-2  # a few steps on 40 images: a high rate, so the maps move far from where they start


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """world-vit at head granularity on 40 world images, aligned (both maps) into the world CLIP."""
    out = tmp_path_factory.mktemp("ranking") / "run"
    decompose_to_store(load("world-vit"), open_data("world:40:5"), out, model_name="world-vit", batch=20,
                       shard_mb=0.5, progress=False)
    align_run(open_run(out), ClipSpace.world(), epochs=EPOCHS, lr=LR, progress=False)
    return out


@pytest.fixture
def run_dir(pristine, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(pristine, dst)
    return dst


def install(run_dir: Path, aligner: CompAlign, shared: bool) -> None:
    """Replace one of the run's aligners by ``aligner``, its record updated (as align writes it)."""
    r = open_run(run_dir)
    path, record = (r.shared_aligner_path(), SHARED_RECORD) if shared else (r.aligner_path(), ALIGNER_RECORD)
    aligner.save(path)
    rec = read_json(run_dir / record)
    write_json(run_dir / record, {**rec, "bytes": path.stat().st_size, "sha256": sha256(path)})


def random_maps(r, variant: str, seed: int) -> CompAlign:
    lam = 0.0 if variant == "shared" else 1.0
    return CompAlign(r.components, r.d_model, 64, variant=variant, lam=lam, seed=seed, clip_name="world-clip",
                     model_name=r.model_name)


def test_align_trains_and_stores_the_shared_map_beside_the_per_component_maps(pristine):
    r = open_run(pristine)
    shared, maps = run_shared_aligner(r), run_aligner(r)
    assert shared.variant == "shared" and shared.lam == 0.0 and tuple(shared.weight.shape) == (1, 128, 64)
    assert maps.variant == "per_component" and maps.lam == 1.0 and tuple(maps.weight.shape) == (45, 128, 64)
    assert shared.names == r.names == maps.names
    rec = read_json(pristine / SHARED_RECORD)
    assert rec["variant"] == "shared" and rec["lam"] == 0.0 and rec["clip"] == "world-clip" and rec["epochs"] == EPOCHS
    assert rec["lr"] == LR
    assert rec["sha256"] == sha256(pristine / SHARED) and rec["bytes"] == (pristine / SHARED).stat().st_size
    # the stored map is exactly CompAlign(variant="shared", lam=0) trained on the run with align's settings
    again = CompAlign(r.components, r.d_model, 64, variant="shared", lam=0.0, seed=0)
    history = again.fit(run_batches(r, "world-clip", 32, shuffle_seed=0), epochs=EPOCHS, lr=LR, progress=False)
    torch.testing.assert_close(again.weight, shared.weight, rtol=0, atol=0)
    torch.testing.assert_close(again.bias, shared.bias, rtol=0, atol=0)
    assert rec["final_cosine"] == pytest.approx(1 - history["cos"][-1])
    # it is trained: it maps the run's representation much closer to CLIP than where it started
    feats = run_features(r, "world-clip")
    cos = lambda a: float(torch.nn.functional.cosine_similarity(a.map(feats).total(), feats.clip).mean())  # noqa: E731
    assert cos(shared) > cos(CompAlign(r.components, r.d_model, 64, variant="shared", lam=0.0, seed=0)) + 0.1
    assert verify_run(pristine)[1] == [] and SHARED in verify_run(pristine)[0]


def test_property_scores_over_a_run_read_the_shared_map(run_dir):
    r = open_run(run_dir)
    clip, props = ClipSpace.world(), world_properties()
    scores = property_scores_over(r, props, clip=clip)
    contributions = r.images(range(r.n))
    for p, words in props.items():  # the same as property_scores on the shared map's mapped contributions
        want = property_scores(run_shared_aligner(r).map(contributions), words, clip=clip)
        assert scores[p].keys() == want.keys()
        np.testing.assert_allclose([scores[p][n] for n in r.names], [want[n] for n in r.names], rtol=1e-9, atol=1e-12)
        assert sum(scores[p].values()) == pytest.approx(1.0, abs=1e-6)  # shares add up to 1
    torch.testing.assert_close(shared_aligned(r, [3, 17]).mapped, shared_aligned(r).mapped[[3, 17]])
    # other per-component maps: the same scores; another shared map: other scores
    install(run_dir, random_maps(r, "per_component", 7), shared=False)
    same = property_scores_over(open_run(run_dir), props, clip=clip)
    assert all(same[p][n] == pytest.approx(scores[p][n], abs=1e-12) for p in props for n in r.names)
    install(run_dir, random_maps(r, "shared", 7), shared=True)
    other = property_scores_over(open_run(run_dir), props, clip=clip)
    assert max(abs(other[p][n] - scores[p][n]) for p in props for n in r.names) > 0.05


def report_facts(page: str) -> tuple[dict[str, tuple[str, float]], dict[str, list[str]]]:
    """{component: (property it scores highest on, score)} and {component: its top descriptions} of a report."""
    best, words = {}, {}
    for card in page.split('<div class="card" id="c-')[1:]:
        name = html.unescape(re.search(r"<h3>(.*?)</h3>", card).group(1))
        m = re.search(r"scores highest on <strong>(\w+)</strong> \(([-\d.e]+), shared map\)", card)
        best[name] = (m.group(1), float(m.group(2)))
        words[name] = re.findall(r"<span>(\w+) <em>", card)
    return best, words


def test_the_report_ranks_through_the_shared_map_and_describes_through_the_per_component_maps(run_dir):
    r = open_run(run_dir)
    page = write_report(r, run_dir.parent / "a", top=6, images=40).read_text()
    assert "descriptions read the per-component maps" in page and "read the shared map" in page
    best, words = report_facts(page)
    assert len(best) == 6
    scores = property_scores_over(r, world_properties(), images=range(40))
    for name, (prop, value) in best.items():
        top = max(scores, key=lambda p: scores[p][name])
        assert prop == top and value == pytest.approx(scores[top][name], abs=5e-4)
    clip = run_clip_space(r)
    vocab = list(dict.fromkeys(w for ws in world_properties().values() for w in ws))
    aligned = run_aligner(r).map(r.images(range(40)))
    for name, said in words.items():
        assert said == [w for w, _ in describe(aligned, name, vocab, 5, clip=clip)]
    install(run_dir, random_maps(r, "per_component", 3), shared=False)
    best2, words2 = report_facts(write_report(open_run(run_dir), run_dir.parent / "b", top=6, images=40).read_text())
    assert best2 == best and words2 != words
    install(run_dir, random_maps(r, "shared", 3), shared=True)
    best3, words3 = report_facts(write_report(open_run(run_dir), run_dir.parent / "c", top=6, images=40).read_text())
    assert best3 != best and words3 == words2


def test_a_run_aligned_without_a_shared_map_is_refused_until_align_adds_it(run_dir, capsys):
    (run_dir / SHARED).unlink()
    (run_dir / SHARED_RECORD).unlink()
    before = (run_dir / "aligner.safetensors").read_bytes()
    r = open_run(run_dir)
    assert run_aligner(r) is not None  # descriptions could still be read, rankings not
    for call in (lambda: run_shared_aligner(r), lambda: property_scores_over(r, world_properties()),
                 lambda: write_report(r, run_dir.parent / "report")):
        with pytest.raises(InputError, match=rf"no shared map.*fxdecomp align {run_dir} --clip world-clip "
                                             "--shared-only"):
            call()
    for args in (["explain", run_dir, "--out", run_dir.parent / "r"],
                 ["retrieve", run_dir, "--image", "0", "--property", "colour", "--out", run_dir.parent / "r.png"],
                 ["retrieve", run_dir, "--text", "red", "--against", "blue", "--out", run_dir.parent / "t.png"]):
        code, out, err = cli(capsys, *args)
        assert code == 2 and "--shared-only" in one_line(err), (args, err)
    code, out, err = cli(capsys, "align", run_dir, "--epochs", "1", "--workers", "0")
    assert code == 2 and "already has an aligner" in one_line(err) and "--shared-only adds the shared map" in err
    code, out, err = cli(capsys, "align", run_dir, "--clip", "world-clip-l", "--shared-only", "--workers", "0")
    assert code == 2 and "go into world-clip, not world-clip-l" in one_line(err)  # into their CLIP only
    code, out, err = cli(capsys, "align", run_dir, "--shared-only", "--epochs", str(EPOCHS), "--lr", str(LR),
                         "--workers", "0")
    assert code == 0, err
    assert "per-component maps are kept" in out and (run_dir / "aligner.safetensors").read_bytes() == before
    code, out, err = cli(capsys, "align", run_dir, "--shared-only", "--workers", "0")
    assert code == 2 and "already has a shared map" in one_line(err)
    assert verify_run(run_dir)[1] == []
    assert report_facts(write_report(open_run(run_dir), run_dir.parent / "ok", top=3, images=40).read_text())[0]


def test_align_shared_only_needs_the_per_component_maps(tmp_path, capsys):
    out = tmp_path / "bare"
    decompose_to_store(load("world-vit"), open_data("world:8"), out, model_name="world-vit", batch=8, progress=False)
    code, _, err = cli(capsys, "align", out, "--shared-only", "--workers", "0")
    assert code == 2 and "has no aligner yet" in one_line(err) and "without --shared-only" in err
    assert not (out / SHARED).exists()
    with pytest.raises(InputError, match="has no aligner yet"):
        run_shared_aligner(open_run(out))


def flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_verify_finds_a_damaged_shared_map_and_names_the_command_that_trains_it_again(run_dir, capsys):
    flip_bit(run_dir / SHARED, (run_dir / SHARED).stat().st_size - 100)
    with pytest.raises(InputError, match=r"shared_aligner.safetensors is damaged.*--shared-only --overwrite"):
        run_shared_aligner(open_run(run_dir))
    with pytest.raises(InputError, match="shared_aligner.safetensors is damaged"):
        open_run(run_dir, verify=True)
    checked, problems = verify_run(run_dir)
    assert [p.file for p in problems] == [SHARED] and "SHA-256" in problems[0].what
    code, out, err = cli(capsys, "verify", run_dir)
    assert code == 2 and SHARED in out + err and "--shared-only --overwrite" in out + err
    code, out, err = cli(capsys, "align", run_dir, "--shared-only", "--overwrite", "--epochs", "1", "--workers", "0")
    assert code == 0, err
    assert cli(capsys, "verify", run_dir)[0] == 0
    # a per-component file put where the shared map belongs is refused too, not read as one
    r = open_run(run_dir)
    install(run_dir, random_maps(r, "per_component", 1), shared=True)
    with pytest.raises(InputError, match="per_component maps, not the shared map"):
        run_shared_aligner(open_run(run_dir))


def test_spurious_ranks_through_the_shared_map(tmp_path):
    write_waterbirds(tmp_path / "wb", ((32, 0.95, 41), (16, 0.5, 42), (16, 0.5, 43)))
    ckpt = tmp_path / "spurious.safetensors"
    save_file({k: v.contiguous() for k, v in load("world-spurious").state_dict().items()}, str(ckpt))
    run_dir = tmp_path / "run"
    assert main(["decompose", "world-spurious", str(tmp_path / "wb"), "--checkpoint", str(ckpt), "--out",
                 str(run_dir), "--batch", "32", "--workers", "0"]) == 0
    align_run(open_run(run_dir), ClipSpace.world(), epochs=1, progress=False)
    clip = ClipSpace.world()
    places, shapes = ["sea", "lake", "forest", "desert"], ["circle", "square", "star"]
    r = open_run(run_dir)
    removal, ranking, _ = from_run(r, clip=clip, spurious_words=places, label_words=shapes, max_k=3, random_draws=2)
    train = r.images(np.nonzero(r.labels["split"] == 0)[0])
    want = ranked(spurious_scores(run_shared_aligner(r).map(train), places, shapes, clip=clip))
    varying = [n for n in want if n in set(ranking)]
    assert ranking == varying and len(ranking) >= 40
    install(run_dir, random_maps(r, "per_component", 5), shared=False)
    assert from_run(open_run(run_dir), clip=clip, spurious_words=places, label_words=shapes, max_k=3,
                    random_draws=2)[1] == ranking
    install(run_dir, random_maps(r, "shared", 5), shared=True)
    assert from_run(open_run(run_dir), clip=clip, spurious_words=places, label_words=shapes, max_k=3,
                    random_draws=2)[1] != ranking


def test_find_and_remove_ranks_through_a_shared_map_only():
    model = load("world-spurious")
    maps = CompAlign(45, 128, 64)
    with pytest.raises(InputError, match="variant='shared'"):
        find_and_remove(model, None, None, None, clip=ClipSpace.world(), spurious_words=["sea"], aligner=maps)


def test_the_demo_ranks_through_its_shipped_shared_map(tmp_path):
    from fxdecomp.demo import write_demo_report
    from fxdecomp.align.shipped import aligner_path, load_aligner

    shared = load_aligner("world-vit", variant="shared")
    maps = load_aligner("world-vit")
    assert shared.variant == "shared" and shared.lam == 0.0 and maps.variant == "per_component"
    assert shared.names == maps.names and len(shared.names) == 45 and shared.clip_name == "world-clip"
    write_demo_report("world-vit", tmp_path)
    r = open_run(tmp_path / "run")
    assert (tmp_path / "run" / SHARED).read_bytes() == aligner_path("world-vit", "shared").read_bytes()
    assert verify_run(tmp_path / "run")[1] == []
    best, _ = report_facts((tmp_path / "index.html").read_text())
    scores = property_scores_over(r, world_properties(), images=range(r.n))
    assert best and all(prop == max(scores, key=lambda p: scores[p][n]) for n, (prop, _) in best.items())


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("FXDECOMP_RETRAIN") != "1",
                    reason="retrains a shipped aligner from 4,000 images (about 4 CPU-minutes); FXDECOMP_RETRAIN=1 "
                           "runs it")
def test_the_shipped_shared_map_is_what_its_command_trains():
    """fxdecomp/assets/world/world-vit.shared.compalign.safetensors comes from
    ``python -m fxdecomp.align.shipped --out fxdecomp/assets/world --variants shared`` (equal within
    float32 noise: the shipped file was trained single-threaded)."""
    from fxdecomp.align.shipped import load_aligner, train

    torch.manual_seed(0)
    again = train("world-vit", variant="shared", progress=False)
    shipped = load_aligner("world-vit", variant="shared")
    assert again.names == shipped.names
    torch.testing.assert_close(again.weight, shipped.weight, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(again.bias, shipped.bias, rtol=1e-3, atol=1e-4)
