"""fxdecomp.store: runs on disk, resumed after a kill, split over processes, read lazily."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fxdecomp
from fxdecomp import InputError
from fxdecomp.align import Batches, ClipSpace, CompAlign, ImageBatches, RunBatches, RunStream, collect, materialise
from fxdecomp.align.runs import run_aligner, run_batches, run_clip_space, run_features, run_shared_aligner
from fxdecomp.align.train_run import align_run, embed_images
from fxdecomp.data import open_data
from fxdecomp.decomposition import group_contributions
from fxdecomp.models_registry import load, transform_for
from fxdecomp.store import decompose_to_store, differences, open_run
from fxdecomp.world import World

#: One thread count for every process compared byte for byte: CPU BLAS kernels split a product
#: differently (and round its last bit differently) over another number of threads. The hash seed
#: is left to vary: nothing written may depend on it.
NUMERICS = {**os.environ, "OMP_NUM_THREADS": "1"}
#: world-vit at head granularity: 45 components x 128 floats = 23 kB per image; 0.25 MB -> 10 images per shard
SHARD_MB = 0.25


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_store(a: Path, b: Path) -> None:
    """The same files, byte for byte: contributions, checksums and errors included."""
    fa, fb = files_of(a), files_of(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        assert fa[name] == fb[name], f"{name} differs"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "vit"
    decompose_to_store(load("world-vit"), open_data("world:48:5"), out, model_name="world-vit", batch=10,
                       shard_mb=SHARD_MB, progress=False)
    return open_run(out)


def test_a_run_holds_every_image_exactly(small_run):
    r = small_run
    assert r.n == 48 and len(r.manifest["shards"]) == 5 and r.manifest["shard_images"] == 10
    assert [s["start"] for s in r.manifest["shards"]] == [0, 10, 20, 30, 40]
    model = load("world-vit")
    rep = fxdecomp.align.representation(model)
    images = torch.from_numpy(World(48, 5).arrays()["images"]).permute(0, 3, 1, 2)
    with torch.no_grad():
        ref = rep(transform_for(rep)(images))
    everything = r.images(range(48))
    torch.testing.assert_close(everything.sum(1), ref, rtol=1e-5, atol=1e-5)
    assert r.error() < 1e-5
    torch.testing.assert_close(r.outputs(), ref, rtol=1e-5, atol=1e-6)
    # lazy reads agree with each other, in any order
    name = "blocks.3.attn[h2]"
    torch.testing.assert_close(r.component(name), everything[:, r.names.index(name)])
    torch.testing.assert_close(r.images([47, 3, 12]), everything[[47, 3, 12]])
    assert r.ids[:2] == ["world:5:0", "world:5:1"] and r.labels["shape"][7] == World(48, 5).attributes(7).labels()[
        "shape"]
    assert r.head() is not None and r.head().weight.shape == (27, 128)
    # the manifest's checksums are those of the files
    import hashlib

    for s in r.manifest["shards"]:
        assert hashlib.sha256((r.path / s["file"]).read_bytes()).hexdigest() == s["sha256"]


def test_a_runs_decomposition_has_the_stored_outputs(small_run):
    """``run.decomposition`` pairs the stored contributions with the model's stored outputs, so its error is
    the recorded one (not 0 by construction, as a decomposition whose output is its own sum would be)."""
    r = small_run
    dec = r.decomposition()
    torch.testing.assert_close(dec.output, r.outputs(), rtol=0, atol=0)
    assert 0 < dec.error() < 1e-5
    assert dec.error() == pytest.approx(r.error(), rel=1e-3)  # the store summed on its device, in float32
    some = r.decomposition([47, 3, 12])
    torch.testing.assert_close(some.contributions, r.images([47, 3, 12]), rtol=0, atol=0)
    torch.testing.assert_close(some.output, r.outputs()[[47, 3, 12]], rtol=0, atol=0)
    torch.testing.assert_close(dec.take([47, 3, 12]).output, some.output, rtol=0, atol=0)
    per_shard = [(a, b, d) for a, b, d in r.decompositions()]
    assert [(a, b) for a, b, _ in per_shard] == [(s["start"], s["stop"]) for s in r.manifest["shards"]]
    for (a, b, d), info in zip(per_shard, r.manifest["shards"]):
        torch.testing.assert_close(d.output, r.outputs()[a:b], rtol=0, atol=0)
        assert d.error() == pytest.approx(info["error"], rel=1e-3)
    grouped = dec.group("layer")
    summed, labels = group_contributions(dec.contributions, dec.components, "layer")
    torch.testing.assert_close(summed, grouped.contributions, rtol=0, atol=0)
    assert labels.names == grouped.components.names and len(labels) < len(dec.components)


def test_a_corrupted_output_shows_in_the_runs_decomposition(small_run, tmp_path):
    """An output that no longer matches its contributions (its checksum updated to match, so only the error can
    tell) makes ``run.decomposition(...).error()`` large, for that image only."""
    import hashlib
    import json
    import shutil
    import struct

    copy = tmp_path / "run"
    shutil.copytree(small_run.path, copy)
    info = small_run.manifest["shards"][0]
    shard = copy / info["file"]
    raw = bytearray(shard.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert header["output"]["dtype"] == "F32"
    start = 8 + n + header["output"]["data_offsets"][0]
    width = small_run.d_model
    values = torch.frombuffer(bytearray(raw[start:start + 4 * width]), dtype=torch.float32) * 1.5  # image 0
    raw[start:start + 4 * width] = values.numpy().tobytes()
    shard.write_bytes(bytes(raw))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = hashlib.sha256(bytes(raw)).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    r = open_run(copy)
    assert r.decomposition([0]).error() == pytest.approx(1 / 3, rel=1e-4)  # |y - 1.5 y| / |1.5 y|
    assert r.decomposition([1, 2]).error() < 1e-5


def test_a_rerun_skips_finished_shards_and_a_different_one_is_refused(small_run, tmp_path):
    r = small_run
    again = decompose_to_store(load("world-vit"), open_data("world:48:5"), r.path, model_name="world-vit", batch=10,
                               shard_mb=SHARD_MB, progress=False)
    assert again.written == 0 and again.skipped == 5
    with pytest.raises(InputError, match="granularity"):
        decompose_to_store(load("world-vit"), open_data("world:48:5"), r.path, model_name="world-vit",
                           granularity="block", batch=10, shard_mb=SHARD_MB, progress=False)
    with pytest.raises(InputError, match="data.ids"):
        decompose_to_store(load("world-vit"), open_data("world:48:6"), r.path, model_name="world-vit", batch=10,
                           shard_mb=SHARD_MB, progress=False)
    assert differences({"dtype": "float32"}, {"dtype": "bfloat16"}) == ['dtype: "float32" -> "bfloat16"']
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        decompose_to_store(load("world-vit"), open_data("world:4"), tmp_path / "junk", model_name="world-vit",
                           progress=False)
    with pytest.raises(InputError, match="not a complete fxdecomp run"):
        open_run(tmp_path / "junk")


def test_killed_with_sigkill_and_resumed_gives_the_same_store(tmp_path):
    cmd = [sys.executable, "-m", "fxdecomp", "decompose", "world-vit", "world:120:3", "--batch", "10", "--shard-mb",
           str(SHARD_MB), "--workers", "0", "--device", "cpu"]
    env = NUMERICS
    whole = tmp_path / "whole"
    subprocess.run(cmd + ["--out", str(whole)], check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "shards" / "00002.json").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = files_of(killed)
    assert "manifest.json" not in partial and 0 < sum(k.endswith(".json") for k in partial) - 1 < 12
    with pytest.raises(InputError, match="not complete"):
        open_run(killed)
    res = subprocess.run(cmd + ["--out", str(killed)], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "were already complete" in res.stdout
    assert_same_store(killed, whole)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_write_the_same_store_as_one(tmp_path):
    args = ["decompose", "world-vit", "world:50:4", "--batch", "10", "--shard-mb", str(SHARD_MB), "--workers", "0",
            "--device", "cpu"]
    env = NUMERICS
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "fxdecomp", *args, "--out", str(one)], check=True, env=env,
                   capture_output=True)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          f"--master-port={free_port()}", "-m", "fxdecomp", *args, "--out", str(two)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_store(two, one)
    assert res.stdout.count("reconstruction max relative error") == 1  # rank 0 reports


def test_compalign_trains_from_the_store_shard_by_shard(small_run):
    r = small_run
    clip = ClipSpace.world()
    emb = embed_images(r, clip, progress=False)
    assert emb.shape == (48, 64) and r.has_clip("world-clip")
    # the same embeddings collect() computes for the same images
    images = World(48, 5).arrays()["images"]
    dm = fxdecomp.decompose(fxdecomp.align.representation(load("world-vit")), "head")
    feats = collect(dm, images, preprocess=transform_for(load("world-vit")), clip=clip, progress=False)
    torch.testing.assert_close(emb, feats.clip, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(run_features(r).contributions, feats.contributions, rtol=1e-5, atol=1e-5)
    stream = run_batches(r, "world-clip", batch_size=8, shuffle_seed=0)
    seen = torch.cat([t for _, t in stream])
    assert len(seen) == 48 and len(stream) == 4 * 2 + 1  # batches never cross a shard: 10, 10, 10, 10, 8
    # every image exactly once per epoch, contributions paired with their own CLIP target
    order = [int(torch.nonzero((emb == t).all(1))[0]) for t in seen]
    assert sorted(order) == list(range(48))
    first = next(iter(run_batches(r, "world-clip", batch_size=48, shuffle_seed=1)))
    rows = [int(torch.nonzero((emb == t).all(1))[0]) for t in first[1]]
    torch.testing.assert_close(first[0], r.images(rows))
    trained = align_run(r, clip, epochs=2, progress=False)
    loaded = run_aligner(r)
    assert isinstance(loaded, CompAlign) and torch.equal(loaded.weight, trained.per_component.weight)
    assert torch.equal(run_shared_aligner(r).weight, trained.shared.weight)
    assert run_clip_space(r).name == "world-clip"


def test_a_run_and_decomposed_images_are_two_backends_of_one_batches(small_run):
    """``RunBatches`` and ``ImageBatches`` answer the same interface; ``materialise`` keeps either, exactly
    what the run stores and exactly what ``collect`` computes; the old name ``RunStream`` warns and gives the
    same batches."""
    r, clip = small_run, ClipSpace.world()
    embed_images(r, clip, progress=False)
    images = World(48, 5).arrays()["images"]
    dm = fxdecomp.decompose(fxdecomp.align.representation(load("world-vit")), "head")
    pre = transform_for(load("world-vit"))
    from_run = RunBatches(r, "world-clip", batch_size=8)
    from_images = ImageBatches(dm, images, preprocess=pre, clip=clip, batch_size=16)
    assert isinstance(from_run, Batches) and isinstance(from_images, Batches)
    assert from_run.names == from_images.names == r.names
    assert (len(from_run), len(from_images)) == (9, 3) == (len(list(from_run)), len(list(from_images)))
    kept = materialise(from_run)
    assert torch.equal(kept.contributions, torch.cat([c for _, _, c in r.shards()]))
    assert torch.equal(kept.clip, r.clip_embeddings("world-clip")) and torch.equal(kept.output, r.outputs())
    assert kept.meta == {"model": r.model_name, "granularity": r.granularity, "clip": "world-clip"}
    assert torch.equal(run_features(r, "world-clip").contributions, kept.contributions)
    computed = materialise(from_images)
    want = collect(dm, images, preprocess=pre, clip=clip, batch_size=16, progress=False)
    for name in ("contributions", "clip", "output"):
        assert torch.equal(getattr(computed, name), getattr(want, name)), name
    assert computed.meta == want.meta
    torch.testing.assert_close(computed.contributions, kept.contributions, rtol=1e-5, atol=1e-5)
    with pytest.warns(DeprecationWarning, match="RunBatches"):
        old = RunStream(r, "world-clip", 8, 3)
    for (c0, t0), (c1, t1) in zip(old, RunBatches(r, "world-clip", 8, 3), strict=True):
        assert torch.equal(c0, c1) and torch.equal(t0, t1)


def test_low_precision_runs_report_both_errors(tmp_path):
    out = tmp_path / "bf16"
    decompose_to_store(load("world-vit"), open_data("world:8"), out, model_name="world-vit", dtype="bfloat16",
                       batch=8, progress=False)
    r = open_run(out)
    rec = r.manifest["reconstruction"]
    assert 0 < rec["max_relative_error"] < 0.05 and 0 < rec["max_relative_error_vs_float32"] < 0.05
    assert r.images([0]).dtype == torch.float32 and r.manifest["dtype"] == "bfloat16"
    with pytest.raises(InputError, match="dtype"):
        decompose_to_store(load("world-vit"), open_data("world:8"), out, model_name="world-vit", dtype="int8",
                           progress=False)
