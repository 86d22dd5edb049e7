"""Runs read through a readout: [N, C, K] shards equal to a full run's contributions @ R, recorded in
the manifest, refused on a rerun with another readout, and refused by everything that needs the
output's width."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fxdecomp.align import run_aligner
from fxdecomp.data import open_data
from fxdecomp.errors import InputError
from fxdecomp.hashing import tensors_digest
from fxdecomp.models_registry import load
from fxdecomp.store import decompose_to_store, open_run
from fxdecomp.store.verify import verify_run

DATA = "world:12:5"


def _r(d: int, k: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(d, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(a full token run, a token run of the same images read through R, R), both stored in float64."""
    root = tmp_path_factory.mktemp("readout-runs")
    model = load("world-vit")
    kw = dict(model_name="world-vit", granularity="token", batch=4, dtype="float64", shard_mb=1, progress=False)
    decompose_to_store(model, open_data(DATA), root / "full", **kw)
    full = open_run(root / "full")
    r = _r(full.d_model)
    decompose_to_store(model, open_data(DATA), root / "read", readout=r, readout_spec="R.pt",
                       readout_names=["a", "b", "c"], **kw)
    return full, open_run(root / "read"), r


def test_a_readout_run_is_the_full_run_read_through_r(runs):
    full, read, r = runs
    assert full.readout is None and full.width == full.d_model
    assert read.width == 3 and read.d_model == full.d_model and read.names == full.names
    a, b = full.decomposition(), read.decomposition()
    assert b.contributions.shape == (12, len(full.components), 3)
    want = a.contributions.double() @ r
    scale = float(want.abs().max())
    assert float((b.contributions.double() - want).abs().max()) <= 1e-6 * scale
    # each image's sum is the model's output read through R (the outputs the full run stored)
    out = full.outputs().double() @ r
    assert float((b.contributions.double().sum(1) - out).abs().max()) <= 1e-6 * float(out.abs().max())
    assert float((b.output.double() - out).abs().max()) <= 1e-6 * float(out.abs().max())
    assert read.error() < 1e-5  # the recorded reconstruction error (summed in float32, as readers sum)
    # the shards hold K numbers per component, not the output's width
    assert sum(s["bytes"] for s in read.manifest["shards"]) * 30 < sum(s["bytes"] for s in full.manifest["shards"])


def test_the_manifest_records_the_readout(runs):
    _, read, r = runs
    rec = read.manifest["readout"]
    assert rec == {"spec": "R.pt", "k": 3, "sha256": tensors_digest([("R", r)]), "names": ["a", "b", "c"],
                   "per_component": False}
    assert read.column(text="b") == 1 and read.column(2) == 2
    with pytest.raises(InputError, match="--column 0..2"):
        read.column()
    with pytest.raises(InputError, match="no readout column .* named 'z'"):
        read.column(text="z")
    with pytest.raises(InputError, match="out of range"):
        read.column(3)


def test_verify_checks_a_readout_run(runs, tmp_path):
    import shutil

    _, read, _ = runs
    checked, problems = verify_run(read.path)
    assert problems == [] and [s["file"] for s in read.manifest["shards"]] == checked[:len(read.manifest["shards"])]
    copy = tmp_path / "copy"
    shutil.copytree(read.path, copy)
    shard = copy / read.manifest["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    _, problems = verify_run(copy)
    assert [p.file for p in problems] == [read.manifest["shards"][0]["file"]]


def test_a_rerun_with_another_readout_is_refused_naming_both(runs):
    full, read, r = runs
    model = load("world-vit")
    kw = dict(model_name="world-vit", granularity="token", batch=4, dtype="float64", shard_mb=1, progress=False)
    again = decompose_to_store(model, open_data(DATA), read.path, readout=r, readout_spec="R.pt",
                               readout_names=["a", "b", "c"], **kw)
    assert again.written == 0 and again.skipped == len(read.manifest["shards"])
    with pytest.raises(InputError, match=r"'R.pt' \(K = 3.*'other.pt' \(K = 3.*another --out"):
        decompose_to_store(model, open_data(DATA), read.path, readout=_r(full.d_model, seed=1),
                           readout_spec="other.pt", **kw)
    with pytest.raises(InputError, match=r"'R.pt'.*no readout.*another --out"):
        decompose_to_store(model, open_data(DATA), read.path, **kw)
    with pytest.raises(InputError, match=r"no readout.*'R.pt'.*another --out"):
        decompose_to_store(model, open_data(DATA), full.path, readout=r, readout_spec="R.pt", **kw)


@pytest.mark.parametrize("bad, match", [
    (lambda d: torch.randn(d + 1, 2), "shape"),
    (lambda d: torch.full((d, 2), float("nan")), "non-finite"),
    (lambda d: torch.ones(d, 2, dtype=torch.int64), "floating-point"),
])
def test_a_bad_readout_is_refused(tmp_path, bad, match):
    with pytest.raises(InputError, match=match):
        decompose_to_store(load("world-vit"), open_data("world:2"), tmp_path / "x", model_name="world-vit",
                           readout=bad(128), progress=False)


def test_readout_names_of_the_wrong_length_are_refused(tmp_path):
    with pytest.raises(InputError, match="one name per column"):
        decompose_to_store(load("world-vit"), open_data("world:2"), tmp_path / "x", model_name="world-vit",
                           readout=torch.randn(128, 2), readout_names=["a"], progress=False)


def _everything_that_needs_the_full_width(run):
    from fxdecomp.report.build import write_report
    from fxdecomp.retrieval.over_run import component_sum_of_run, variance_shares
    from fxdecomp.spurious.over_run import from_run, logit_contributions
    from fxdecomp.align import align_run, run_aligner, run_batches, run_features, run_shared_aligner
    from fxdecomp.align.over_run import shared_aligned

    return {
        "features": lambda: run_features(run),
        "batches": lambda: run_batches(run, "world-clip"),
        "aligner": lambda: run_aligner(run),
        "shared_aligner": lambda: run_shared_aligner(run),
        "align_run": lambda: align_run(run, clip=None),
        "scores": lambda: shared_aligned(run),
        "retrieval shares": lambda: variance_shares(run, None, {"p": torch.eye(4)[:, :1]}),
        "retrieval sum": lambda: component_sum_of_run(run, None, run.names[:1]),
        "spurious": lambda: from_run(run, clip=None, spurious_words=["x"]),
        "logits": lambda: logit_contributions(run, torch.nn.Linear(run.d_model, 2), np.arange(2)),
        "report": lambda: write_report(run, run.path / "report"),
    }


@pytest.mark.parametrize("what", list(_everything_that_needs_the_full_width(None)))
def test_a_readout_run_is_refused_where_the_full_width_is_needed(runs, what):
    _, read, _ = runs
    with pytest.raises(InputError, match="is a readout run.*without --readout into another --out"):
        _everything_that_needs_the_full_width(read)[what]()


# -- the command line -----------------------------------------------------------------------------------
def _cli(capsys, *args):
    from conftest import cli

    return cli(capsys, *args)


def test_decompose_reads_a_matrix_file(runs, tmp_path, capsys):
    from safetensors.torch import save_file

    full, _, r = runs
    path = tmp_path / "R.safetensors"
    save_file({"R": r.float().contiguous()}, str(path))
    code, out, err = _cli(capsys, "decompose", "world-vit", DATA, "--granularity", "token", "--readout", path,
                          "--out", tmp_path / "run", "--batch", "4", "--workers", "0")
    assert code == 0, err
    got = open_run(tmp_path / "run")
    assert got.readout["spec"] == str(path.resolve()) and got.readout["k"] == 3 and got.readout["names"] is None
    assert "--readout" in got.manifest["command"] and str(path.resolve()) in got.manifest["command"]
    want = full.decomposition().contributions.double() @ r.float().double()
    scale = float(want.abs().max())
    assert float((got.decomposition().contributions.double() - want).abs().max()) <= 1e-5 * scale
    # the same command resumes; another readout into the folder is refused, naming both
    other = tmp_path / "other.pt"
    torch.save(torch.randn(128, 3), other)
    code, _, err = _cli(capsys, "decompose", "world-vit", DATA, "--granularity", "token", "--readout", other,
                        "--out", tmp_path / "run", "--batch", "4", "--workers", "0")
    assert code == 2 and "R.safetensors" in err and "other.pt" in err and "another --out" in err


def test_decompose_reads_the_models_classifier_rows(tmp_path, capsys):
    base = ["decompose", "world-vit", "world:6:3", "--batch", "3", "--workers", "0", "--dtype", "float32"]
    assert _cli(capsys, *base, "--out", tmp_path / "full")[0] == 0
    code, _, err = _cli(capsys, *base, "--readout", "classes", "--out", tmp_path / "cls")
    assert code == 0, err
    full, cls = open_run(tmp_path / "full"), open_run(tmp_path / "cls")
    head = full.head()
    assert cls.readout["k"] == head.out_features and cls.readout["spec"] == "classes"
    assert cls.readout["names"][:2] == ["shape=circle", "shape=square"]
    want = full.decomposition().contributions.double() @ head.weight.detach().double().T
    got = cls.decomposition()
    assert float((got.contributions.double() - want).abs().max()) <= 1e-5 * float(want.abs().max())
    # each image's sum is its logits without the classifier's bias
    logits = (head(full.outputs()) - head.bias).detach().double()
    assert float((got.contributions.double().sum(1) - logits).abs().max()) <= 1e-4 * float(logits.abs().max())


def test_decompose_reads_texts_through_an_aligned_runs_maps(tmp_path, capsys):
    from fxdecomp.align.clip_space import ClipSpace

    base = ["decompose", "world-vit", "world:8:2", "--batch", "4", "--workers", "0"]
    assert _cli(capsys, *base, "--out", tmp_path / "heads")[0] == 0
    assert _cli(capsys, "align", tmp_path / "heads", "--clip", "world-clip", "--epochs", "1", "--workers", "0")[0] == 0
    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\n\na blue square\n")
    code, _, err = _cli(capsys, *base, "--granularity", "token", "--readout", f"texts:{texts}", "--clip", "world-clip",
                        "--aligner", tmp_path / "heads", "--out", tmp_path / "tokens")
    assert code == 0, err
    assert _cli(capsys, *base, "--granularity", "token", "--out", tmp_path / "full")[0] == 0
    got, full, heads = open_run(tmp_path / "tokens"), open_run(tmp_path / "full"), open_run(tmp_path / "heads")
    assert got.readout["names"] == ["a red circle", "a blue square"] and got.readout["per_component"]
    aligner = run_aligner(heads)
    t = torch.nn.functional.normalize(ClipSpace.by_name("world-clip").encode_texts(["a red circle", "a blue square"])
                                      .double(), dim=1)
    c = full.decomposition().contributions.double()
    w = aligner.weight.detach().double()
    maps = w[aligner.maps_for(full.components)]  # each token read through its head's map
    want = torch.einsum("ncd,cde,ke->nck", c, maps, t)
    assert float((got.decomposition().contributions.double() - want).abs().max()) <= 1e-4 * float(want.abs().max())
    # an aligner made from another model is refused, naming both
    code, _, err = _cli(capsys, "decompose", "world-ssl", "world:2", "--readout", f"texts:{texts}", "--clip",
                        "world-clip", "--aligner", tmp_path / "heads", "--out", tmp_path / "ssl", "--workers", "0")
    assert code == 2 and "was decomposed from world-vit, not world-ssl" in err


@pytest.mark.parametrize("args, match", [
    (["--readout", "R.npy"], "is not a readout"),
    (["--readout", "missing.safetensors"], "no such file"),
    (["--readout", "texts:missing.txt"], "no file"),
    (["--clip", "world-clip"], "--clip and --aligner go with --readout texts:FILE"),
])
def test_bad_readout_specs_get_one_line(tmp_path, capsys, args, match):
    from conftest import one_line

    code, _, err = _cli(capsys, "decompose", "world-vit", "world:2", "--out", tmp_path / "x", *args)
    assert code == 2 and match in one_line(err)


def test_classes_of_a_model_without_a_classifier_and_texts_without_clip_are_refused(tmp_path, capsys):
    from conftest import one_line

    code, _, err = _cli(capsys, "decompose", "world-ssl", "world:2", "--readout", "classes", "--out", tmp_path / "x",
                        "--workers", "0")
    assert code == 2 and "has no linear classifier" in one_line(err)
    texts = tmp_path / "t.txt"
    texts.write_text("a circle\n")
    code, _, err = _cli(capsys, "decompose", "world-vit", "world:2", "--readout", f"texts:{texts}", "--out",
                        tmp_path / "y")
    assert code == 2 and "needs --clip NAME" in one_line(err)
    several = tmp_path / "two.safetensors"
    from safetensors.torch import save_file

    save_file({"a": torch.ones(128, 1), "b": torch.ones(128, 1)}, str(several))
    code, _, err = _cli(capsys, "decompose", "world-vit", "world:2", "--readout", several, "--out", tmp_path / "z",
                        "--workers", "0")
    assert code == 2 and "name the readout 'R'" in one_line(err)


# -- heatmaps and segmentation -------------------------------------------------------------------------
def _drawn(monkeypatch) -> list:
    import fxdecomp.heatmaps

    made, real = [], fxdecomp.heatmaps.heatmap

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(fxdecomp.heatmaps, "heatmap", spy)
    return made


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The images of DATA as PNG files, in the same order."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    data = open_data(DATA)
    for i in range(len(data)):
        Image.fromarray(data[i]["image"].permute(1, 2, 0).numpy()).save(root / f"{i:03d}.png")
    return root


def test_a_heatmap_of_a_readout_column_is_the_full_runs_along_it(runs, tmp_path, capsys, monkeypatch, folder):
    from fxdecomp.heatmaps import heatmap

    full, read, r = runs
    picture = full.data()[2]["image"].permute(1, 2, 0).numpy()
    want = heatmap(full.decomposition([2]), picture, direction=r[:, 1]).array
    drawn = _drawn(monkeypatch)
    code, _, err = _cli(capsys, "heatmap", read.path, "--image", "2", "--column", "1", "--out", tmp_path / "c1.png")
    assert code == 0, err
    code, _, err = _cli(capsys, "heatmap", read.path, "--image", "2", "--text", "b", "--out", tmp_path / "b.png")
    assert code == 0, err
    scale = float(np.abs(want).max())
    for shown in drawn:
        np.testing.assert_allclose(shown.array, want, rtol=0, atol=1e-6 * scale)
    assert (tmp_path / "c1.png").is_file() and "'b'" in drawn[1].title
    # from the images directly, through the compiled readout: the same map, with no stored token run
    path = tmp_path / "R.pt"
    torch.save(r.float(), path)
    code, _, err = _cli(capsys, "heatmap", "--model", "world-vit", "--data", folder, "--image", "2", "--readout",
                        path, "--column", "1", "--out", tmp_path / "direct.png")
    assert code == 0, err
    np.testing.assert_allclose(drawn[-1].array, want, rtol=0, atol=1e-5 * scale)
    # a component's tokens alone
    code, _, err = _cli(capsys, "heatmap", read.path, "--image", "2", "--column", "0", "--component",
                        "blocks.5.attn[h1]", "--out", tmp_path / "h1.png")
    assert code == 0, err
    want = heatmap(full.decomposition([2]), picture, direction=r[:, 0], component="blocks.5.attn[h1]").array
    np.testing.assert_allclose(drawn[-1].array, want, rtol=0, atol=1e-6 * float(np.abs(want).max()))


@pytest.mark.parametrize("args, match", [
    (["--image", "0", "--out", "x.png"], "--column 0..2"),
    (["--image", "0", "--column", "5", "--out", "x.png"], "out of range"),
    (["--image", "0", "--text", "zz", "--out", "x.png"], "named 'zz'"),
    (["--image", "0", "--column", "0", "--model", "world-vit", "--out", "x.png"], "not both"),
])
def test_bad_heatmap_arguments_on_a_readout_run(runs, tmp_path, capsys, args, match):
    from conftest import one_line

    _, read, _ = runs
    args = [tmp_path / a if a == "x.png" else a for a in args]
    code, _, err = _cli(capsys, "heatmap", read.path, *args)
    assert code == 2 and match in one_line(err)


def test_heatmap_from_images_needs_a_readout_or_a_text(folder, tmp_path, capsys):
    from conftest import one_line

    code, _, err = _cli(capsys, "heatmap", "--model", "world-vit", "--data", folder, "--image", "0", "--out",
                        tmp_path / "x.png")
    assert code == 2 and "through a compiled readout" in one_line(err)
    code, _, err = _cli(capsys, "heatmap", "--data", folder, "--image", "0", "--out", tmp_path / "x.png")
    assert code == 2 and "--model and --data go together" in one_line(err)


def _maps(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "maps.safetensors"))["maps"].double()


def _close(got, want, tol=1e-5):
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= tol * float(want.abs().max())


def test_segment_reads_a_readout_column_as_the_full_run_along_it(runs, tmp_path, capsys):
    from fxdecomp.segment import position_maps

    full, read, r = runs
    size = tuple(full.data()[0]["image"].shape[-2:])
    fd = full.decomposition()
    code, out, err = _cli(capsys, "segment", read.path, "--column", "1", "--out", tmp_path / "c1")
    assert code == 0, err
    _close(_maps(tmp_path / "c1"), position_maps(fd, size=size, direction=r[:, 1], reduce="signed"))
    assert "pixel accuracy" in out  # world images: scored against their masks
    code, _, err = _cli(capsys, "segment", read.path, "--text", "c", "--reduce", "abs", "--out", tmp_path / "c")
    assert code == 0, err
    _close(_maps(tmp_path / "c"), position_maps(fd, size=size, direction=r[:, 2], reduce="abs"))
    # without a column: the size of the K readings, the full run's maps of its contributions @ R
    from fxdecomp.decomposition import Decomposition

    code, _, err = _cli(capsys, "segment", read.path)
    assert code == 0, err
    _close(_maps(read.path / "segment"), position_maps(Decomposition(fd.contributions.double() @ r, fd.components),
                                                       size=size))


def test_segment_reads_each_image_along_its_own_column(runs):
    from fxdecomp.commands.segment import readout_maps
    from fxdecomp.segment import position_maps

    full, read, r = runs
    size = (64, 64)
    cols = np.arange(12) % 3
    got = readout_maps(read.decomposition(), size, columns=cols, reduce=None)
    _close(got.double(), position_maps(full.decomposition(), size=size, direction=r[:, cols].T, reduce="signed"))


def test_segment_from_images_is_the_full_token_runs(runs, tmp_path, capsys):
    from fxdecomp.segment import position_maps

    full, _, r = runs
    size = tuple(full.data()[0]["image"].shape[-2:])
    fd = full.decomposition()
    code, _, err = _cli(capsys, "segment", "--model", "world-vit", "--data", DATA, "--out", tmp_path / "pos",
                        "--batch", "5")
    assert code == 0, err
    _close(_maps(tmp_path / "pos"), position_maps(fd, size=size))
    path = tmp_path / "R.pt"
    torch.save({"R": r.float()}, path)
    code, _, err = _cli(capsys, "segment", "--model", "world-vit", "--data", DATA, "--readout", path, "--column", "1",
                        "--out", tmp_path / "ro")
    assert code == 0, err
    _close(_maps(tmp_path / "ro"), position_maps(fd, size=size, direction=r[:, 1].float().double(), reduce="signed"))
    assert (tmp_path / "ro" / "examples.png").is_file()


@pytest.mark.parametrize("args, match", [
    (["--reduce", "signed"], "reads one column"),
    (["--column", "1", "--reduce", "norm"], "use --reduce abs"),
    (["--column", "1", "--text", "a"], "give one"),
    (["--column-by", "nothing"], "no label 'nothing'"),
    (["--column", "7"], "out of range"),
])
def test_bad_segment_arguments_on_a_readout_run(runs, tmp_path, capsys, args, match):
    from conftest import one_line

    _, read, _ = runs
    code, _, err = _cli(capsys, "segment", read.path, *args, "--out", tmp_path / "x")
    assert code == 2 and match in one_line(err)


def test_segment_of_a_full_run_refuses_columns_and_images_need_out(runs, tmp_path, capsys):
    from conftest import one_line

    full, _, _ = runs
    code, _, err = _cli(capsys, "segment", full.path, "--column", "0")
    assert code == 2 and "is a full run" in one_line(err)
    code, _, err = _cli(capsys, "segment", "--model", "world-vit", "--data", DATA)
    assert code == 2 and "give --out FOLDER" in one_line(err)


@pytest.mark.parametrize("args", [
    ["align", "{run}", "--clip", "world-clip"],
    ["retrieve", "{run}", "--text", "sea", "--out", "{tmp}/x.png"],
    ["spurious", "{run}", "--spurious-words", "water"],
    ["explain", "{run}", "--out", "{tmp}/report"],
])
def test_commands_that_need_the_full_width_refuse_a_readout_run(runs, tmp_path, capsys, args):
    from conftest import one_line

    _, read, _ = runs
    args = [a.format(run=read.path, tmp=tmp_path) for a in args]
    code, _, err = _cli(capsys, *args)
    assert code == 2
    line = one_line(err)
    assert "is a readout run" in line and "without --readout into another --out" in line


def test_a_neuron_readout_run_is_the_full_neuron_run_read_through_r(tmp_path):
    model = load("world-vit")
    kw = dict(model_name="world-vit", granularity="neuron", batch=3, dtype="float64", progress=False)
    decompose_to_store(model, open_data("world:3:1"), tmp_path / "full", **kw)
    full = open_run(tmp_path / "full")
    r = _r(full.d_model, k=2, seed=4)
    decompose_to_store(model, open_data("world:3:1"), tmp_path / "read", readout=r, readout_spec="R", **kw)
    read = open_run(tmp_path / "read")
    assert read.names == full.names and sum(c.kind == "mlp" and "[n" in c.name for c in read.components) > 100
    want = full.decomposition().contributions.double() @ r
    assert float((read.decomposition().contributions.double() - want).abs().max()) <= 1e-6 * float(want.abs().max())


def test_a_low_precision_readout_run_is_checked_on_the_float32_forward_read_through_r(tmp_path):
    model = load("world-vit")
    r = _r(128, k=4, seed=2).float()
    decompose_to_store(model, open_data("world:4"), tmp_path / "bf16", model_name="world-vit", dtype="bfloat16",
                       readout=r, progress=False)
    rec = open_run(tmp_path / "bf16").manifest["reconstruction"]
    assert rec["max_relative_error_vs_float32"] is not None and 1e-4 < rec["max_relative_error_vs_float32"] < 0.1


def test_a_run_of_positions_segments_as_the_full_token_run(runs, tmp_path, capsys):
    from fxdecomp.segment import position_maps

    full, _, r = runs
    base = ["decompose", "world-vit", DATA, "--granularity", "token", "--batch", "4", "--workers", "0"]
    code, _, err = _cli(capsys, *base, "--group", "token", "--out", tmp_path / "pos")
    assert code == 0, err
    pos = open_run(tmp_path / "pos")
    assert pos.manifest["group"] == "token" and "--group" in pos.manifest["command"]
    assert len(pos.components) < len(full.components) / 5 and all(c.layer is None for c in pos.components
                                                                    if c.token is not None)
    size = tuple(full.data()[0]["image"].shape[-2:])
    code, _, err = _cli(capsys, "segment", pos.path)
    assert code == 0, err
    _close(_maps(pos.path / "segment"), position_maps(full.decomposition(), size=size))
    # the same folder without the grouping is another run: refused
    code, _, err = _cli(capsys, *base, "--out", tmp_path / "pos")
    assert code == 2 and "group" in err and "new --out" in err
    # positions and a readout together: each position read through R
    path = tmp_path / "R.pt"
    torch.save(r.float(), path)
    code, _, err = _cli(capsys, *base, "--group", "token", "--readout", path, "--out", tmp_path / "pos-r")
    assert code == 0, err
    code, _, err = _cli(capsys, "segment", tmp_path / "pos-r", "--column", "2")
    assert code == 0, err
    _close(_maps(tmp_path / "pos-r" / "segment"),
           position_maps(full.decomposition(), size=size, direction=r[:, 2].float().double(), reduce="signed"))
