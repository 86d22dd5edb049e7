"""A run store's numbers can be trusted: every shard is checked against its checksum (by readers, by a
resume and by ``fxdecomp verify``) and recomputed by the command that wrote it, the images are
identified by their contents, the manifest must cover every image exactly once, one process writes a
folder at a time, and an aligner is replaced only on purpose and only by a finite one."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import cli, one_line
from fxdecomp import InputError
from fxdecomp.align import ClipSpace, CompAlign
from fxdecomp.cli import main
from fxdecomp.data import open_data
from fxdecomp.models_registry import load
from fxdecomp.align.runs import run_aligner, run_batches
from fxdecomp.store import decompose_to_store, open_run
from fxdecomp.store.files import FILE_MODE, LOCK
from fxdecomp.store.lock import RunLock
from fxdecomp.world import World

#: world-vit at head granularity: 45 components x 128 floats = 23 kB per image; 0.2 MB -> 8 images per shard
ARGS = ["world-vit", "world:24:5", "--batch", "8", "--shard-mb", "0.2", "--workers", "0", "--device", "cpu"]


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def named_command(message: str) -> list[str]:
    """The command a message names between backticks, as arguments of ``main``."""
    cmd = shlex.split(message.split("`")[1])
    assert cmd[:2] == ["fxdecomp", "decompose"], cmd
    return cmd[1:]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    out = tmp_path_factory.mktemp("verified") / "run"
    assert main(["decompose", *ARGS, "--out", str(out)]) == 0
    assert main(["align", str(out), "--epochs", "1", "--workers", "0"]) == 0
    return out


@pytest.fixture
def run_dir(pristine, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(pristine, dst)
    return dst


def flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


DAMAGE = {
    "a bit in the data": (lambda p: flip_bit(p, p.stat().st_size // 2), "SHA-256 differs"),
    "the header": (lambda p: p.write_bytes(b"\xff" * 8 + p.read_bytes()[8:]), "header is damaged"),
    "a truncated file": (lambda p: p.write_bytes(p.read_bytes()[:-64]), "bytes, the run recorded"),
    "a missing file": (lambda p: p.unlink(), "is missing"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_shard_is_refused_and_recomputed_by_the_command_it_names(damage, run_dir, pristine, capsys):
    """One bit flipped in a shard used to be read by every reader (a component's mean norm inf), and a resume
    counted the shard complete; a damaged header made the store unreadable for good."""
    hurt, says = DAMAGE[damage]
    hurt(run_dir / "shards" / "00001.safetensors")
    try:
        r = open_run(run_dir)
    except InputError as err:  # size or presence: checked on opening
        message = str(err)
    else:
        assert r.images([0, 7]).shape == (2, 45, 128)  # shard 0 is intact
        with pytest.raises(InputError) as info:
            r.images([9])
        message = str(info.value)
        for read in (r.shards, r.outputs, lambda: run_batches(r, "world-clip", 8)):
            with pytest.raises(InputError, match="00001.safetensors"):
                list(read())
    assert "00001.safetensors" in message and says in message, message
    with pytest.raises(InputError, match=says):
        open_run(run_dir, verify=True)
    code, out, err = cli(capsys, "verify", run_dir)
    assert code == 2 and "00001.safetensors" in one_line(err) and "fxdecomp decompose world-vit" in err
    code, out, err = cli(capsys, "explain", run_dir, "--out", run_dir.parent / "report")
    assert code == 2 and "00001.safetensors" in one_line(err)
    code, out, err = cli(capsys, *named_command(message))
    assert code == 0, err
    assert "2 were already complete" in out and "recomputed 1 damaged shard(s): [1]" in out
    assert files_of(run_dir) == files_of(pristine)  # byte for byte, checksums and manifest included
    code, out, err = cli(capsys, "verify", run_dir, "--check-images")
    assert code == 0 and "intact" in out and not err


def test_a_resume_checks_every_checksum_before_counting_a_shard(run_dir):
    flip_bit(run_dir / "shards" / "00002.safetensors", 200)
    (run_dir / "manifest.json").unlink()  # as a run killed before its end leaves it
    done = decompose_to_store(load("world-vit"), open_data("world:24:5"), run_dir, model_name="world-vit", batch=8,
                              shard_mb=0.2, progress=False)
    assert (done.written, done.skipped, done.repaired) == (1, 2, [2])
    open_run(run_dir, verify=True)


def test_the_files_align_adds_are_checked_too(run_dir, capsys):
    flip_bit(run_dir / "aligner.safetensors", 300)
    with pytest.raises(InputError, match=r"aligner.safetensors is damaged.*--overwrite"):
        run_aligner(open_run(run_dir))
    flip_bit(run_dir / "clip" / "world-clip" / "embeddings.safetensors", 300)
    with pytest.raises(InputError, match=r"embeddings.safetensors is damaged.*--overwrite"):
        open_run(run_dir).clip_embeddings("world-clip")
    flip_bit(run_dir / "head.safetensors", 400)
    with pytest.raises(InputError, match=r"head.safetensors is damaged.*fxdecomp decompose world-vit") as info:
        open_run(run_dir).head()
    code, out, err = cli(capsys, "verify", run_dir)
    assert code == 2 and "3 of" in one_line(err) and "aligner.safetensors" in out and "embeddings" in out
    assert "head.safetensors" in out
    assert cli(capsys, "align", run_dir, "--epochs", "1", "--workers", "0", "--overwrite")[0] == 0
    assert cli(capsys, *named_command(str(info.value)))[0] == 0  # the head written again
    assert cli(capsys, "verify", run_dir)[0] == 0  # the embeddings were computed again, the aligner trained again


MANIFEST_EDITS = {
    "a shard left out": (lambda m: m["shards"].pop(), "cover images 0..15, not 0..23"),
    "overlapping ranges": (lambda m: m["shards"][1].update(start=4), "shard 1 holds images 4..16"),
    "a gap": (lambda m: m["shards"][0].update(stop=6), "shard 0 holds images 0..6"),
    "more images than shards": (lambda m: m["data"].update(n=30), "30 images"),
    "another size": (lambda m: m["shards"][2].update(bytes=12), "bytes, the run recorded 12"),
    "a component removed": (lambda m: m["component_table"].pop(3), "component table"),
    "a field removed": (lambda m: m.pop("d_model"), "lacks 'd_model'"),
    "not a number": (lambda m: m.update(d_model="128"), "d_model is '128'"),
}


@pytest.mark.parametrize("edit", MANIFEST_EDITS)
def test_a_hand_edited_manifest_is_refused(edit, run_dir):
    """Such manifests used to hand back other images' data, or uninitialised memory for images no shard covers."""
    change, says = MANIFEST_EDITS[edit]
    m = json.loads((run_dir / "manifest.json").read_text())
    change(m)
    (run_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InputError, match="manifest.json is damaged" if "size" not in edit else "shards") as info:
        open_run(run_dir).images(range(24))
    assert says in str(info.value) and ("fxdecomp decompose world-vit" in str(info.value))


@pytest.mark.parametrize("text", ["", "{", "garbage", "[1, 2]", '{"shards": 3}'])
def test_a_garbage_manifest_is_refused_and_written_again_by_a_rerun(text, run_dir, pristine, capsys):
    (run_dir / "manifest.json").write_text(text)
    with pytest.raises(InputError, match="manifest.json is damaged") as info:
        open_run(run_dir)
    if text == "garbage":
        assert cli(capsys, *named_command(str(info.value)))[0] == 0
        assert files_of(run_dir) == files_of(pristine)


def test_garbage_settings_are_refused_on_a_resume(run_dir, capsys):
    (run_dir / "run.json").write_text("{not json")
    code, out, err = cli(capsys, "decompose", *ARGS, "--out", run_dir)
    assert code == 2 and "run.json is damaged: not valid JSON" in one_line(err) and "delete" in err


def write_images(folder: Path, world: World, which=None) -> None:
    arrays = world.arrays()["images"]
    folder.mkdir(parents=True, exist_ok=True)
    for i in which if which is not None else range(len(arrays)):
        Image.fromarray(arrays[i]).save(folder / f"{i:03d}.png")


def test_images_changed_under_their_names_are_refused(tmp_path, capsys):
    """Contents replaced between a kill and the resume: the finished store held outputs of the old files and
    of the new ones, exit 0. Each image's content digest is recorded and checked."""
    folder, run = tmp_path / "images", tmp_path / "run"
    write_images(folder, World(24, 2))
    args = ["decompose", "world-vit", folder, "--out", run, "--batch", "8", "--shard-mb", "0.2", "--workers", "0"]
    assert cli(capsys, *args)[0] == 0
    r = open_run(run)
    from fxdecomp.data.identity import file_digest

    assert r.digests() == [file_digest(folder / f"{i:03d}.png") for i in range(24)]
    originals = files_of(folder)
    # killed after the first shard: its sidecar and file are all that is left
    (run / "manifest.json").unlink()
    for i in (1, 2):
        (run / "shards" / f"{i:05d}.safetensors").unlink()
        (run / "shards" / f"{i:05d}.json").unlink()
    write_images(folder, World(24, 3), which=[5])  # an image of the finished shard, same name
    code, out, err = cli(capsys, *args)
    assert code == 2 and "image 005.png has changed" in one_line(err) and "new --out folder" in err
    assert not (run / "shards" / "00001.json").exists()  # nothing computed
    (folder / "005.png").write_bytes(originals["005.png"])
    assert cli(capsys, *args)[0] == 0
    # after the run: readers going back to the images check each as it is read
    write_images(folder, World(24, 3), which=[20, 21])
    data = open_run(run).data()
    assert data[19]["image"].shape == (3, 64, 64)
    with pytest.raises(InputError, match="image 020.png has changed"):
        data[20]
    with pytest.raises(InputError, match="image 020.png has changed"):
        open_run(run).data(verify=True)
    code, out, err = cli(capsys, "verify", run, "--check-images")
    assert code == 2 and "020.png" in out and "images" in one_line(err)


def test_a_second_writer_waits_or_is_refused_with_the_holders_pid(run_dir, capsys):
    """A rerun's clean-up used to delete another live process's temporary files."""
    partial = run_dir / "shards" / ".00003.safetensors.424242.tmp"  # what a live writer is writing
    with RunLock(run_dir, what="decompose"):
        partial.write_bytes(b"half a shard")
        for timeout, says in ((0, "being written by another process"), (0.3, "still being written")):
            with pytest.raises(InputError, match=f"{says}.*pid {os.getpid()}, fxdecomp decompose"):
                decompose_to_store(load("world-vit"), open_data("world:24:5"), run_dir, model_name="world-vit",
                                   batch=8, shard_mb=0.2, progress=False, lock_timeout=timeout)
        assert partial.read_bytes() == b"half a shard"
    capsys.readouterr()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir / LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.perf_counter()
        code, out, err = cli(capsys, "decompose", *ARGS, "--out", run_dir)
        waited = time.perf_counter() - start
    finally:
        holder.wait(timeout=60)
    assert code == 0 and "3 were already complete" in out
    assert f"waiting for another process writing {run_dir} (pid {holder.pid}, fxdecomp holder)" in one_line(err)
    assert waited > 0.5 and not partial.exists()  # the holder gone, the clean-up removed what it left
    assert (run_dir / LOCK).read_bytes() == b""


HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, f"{os.getpid()} holder\\n".encode())
print("locked", flush=True)
time.sleep(1.5)
"""


def test_every_file_gets_the_usual_permissions(pristine):
    """safetensors writes 0600; the store's files are 0644 under the usual umask, like any other file."""
    assert FILE_MODE == 0o666 & ~_umask()
    modes = {name: (pristine / name).stat().st_mode & 0o777 for name in files_of(pristine)}
    assert set(modes.values()) == {FILE_MODE}, modes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_clip_of_random_weights_is_refused(pristine, capsys):
    """``--clip open_clip:ViT-B-16`` (no tag, no checkpoint) trained against a random CLIP, and replaced the run's
    aligner."""
    with pytest.raises(InputError, match=r"open_clip:ViT-B-16:TAG.*--clip-checkpoint FILE"):
        ClipSpace.by_name("open_clip:ViT-B-16")
    with pytest.raises(InputError, match="random weights"):
        ClipSpace.from_open_clip("ViT-B-16")
    before = (pristine / "aligner.safetensors").read_bytes()
    code, out, err = cli(capsys, "align", pristine, "--clip", "open_clip:ViT-B-16", "--overwrite")
    assert code == 2 and ":TAG" in one_line(err) and "--clip-checkpoint" in err
    junk = pristine.parent / "junk.bin"
    junk.write_bytes(b"not weights")
    code, out, err = cli(capsys, "align", pristine, "--clip", "open_clip:ViT-B-16", "--clip-checkpoint", junk,
                         "--overwrite", "--workers", "0")
    assert code == 2 and "cannot be loaded" in one_line(err)
    assert (pristine / "aligner.safetensors").read_bytes() == before


def test_an_aligner_is_replaced_only_on_purpose_and_only_by_a_finite_one(run_dir, capsys):
    before = (run_dir / "aligner.safetensors").read_bytes()
    code, out, err = cli(capsys, "align", run_dir, "--epochs", "1", "--workers", "0")
    assert code == 2 and "already has an aligner (into world-clip, lam=1.0, 1 epochs)" in one_line(err)
    for bad in (["--lam", "nan"], ["--lam", "-1"], ["--lr", "nan"], ["--lr", "inf"], ["--lr", "0"]):
        with pytest.raises(SystemExit) as info:
            main(["align", str(run_dir), "--overwrite", *bad])
        assert info.value.code == 2 and bad[0] in one_line(capsys.readouterr().err)
    code, out, err = cli(capsys, "align", run_dir, "--epochs", "1", "--workers", "0", "--overwrite", "--lr", "1e30")
    assert code == 2 and "loss became non-finite" in one_line(err)  # the maps overflow: nothing is written
    assert (run_dir / "aligner.safetensors").read_bytes() == before
    code, out, err = cli(capsys, "align", run_dir, "--epochs", "1", "--workers", "0", "--overwrite", "--seed", "3")
    assert code == 0 and (run_dir / "aligner.safetensors").read_bytes() != before
    assert cli(capsys, "verify", run_dir)[0] == 0
    # the Python API refuses the same values, and stops on a non-finite loss
    r = open_run(run_dir)
    with pytest.raises(InputError, match="lam must be a finite number"):
        CompAlign(r.components, 128, 64, lam=float("nan"))
    aligner = CompAlign(r.components, 128, 64)
    contributions = r.images(range(8))
    contributions[3, 2, 5] = float("nan")
    with pytest.raises(InputError, match="non-finite"):
        aligner.fit(contributions, r.clip_embeddings("world-clip")[:8], epochs=1, progress=False)
    with pytest.raises(InputError, match="batch_size must be a whole number"):
        run_batches(r, "world-clip", batch_size=0)
    with pytest.raises(InputError, match="whole numbers"):
        r.images([1.5])
    assert torch.equal(r.images([2]), r.images(range(2, 3)))
