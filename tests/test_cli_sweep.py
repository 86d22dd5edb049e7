"""Every command's every argument, given a bad value of each kind that applies to it (non-finite,
negative, zero, not a number, a path that is a file, a path that does not exist, a read-only place, a
junk file where weights go, garbage JSON in a run, an empty text), ends in one line on stderr naming
the argument or the problem, and exit code 2: never a traceback, never a silent result.

Each case is checked before any expensive work where it can be (arguments before models are loaded,
--out before anything is compiled), so the whole sweep takes seconds."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fxdecomp.cli import _parser, main
from fxdecomp.commands import COMMANDS
from fxdecomp.commands.common import renamed_options

INT_POSITIVE = {"nan": "expected a whole number", "inf": "expected a whole number", "-1": "must be positive",
                "0": "must be positive", "1.5": "expected a whole number", "many": "expected a whole number"}
INT_NON_NEGATIVE = {"nan": "expected a whole number", "-1": "must be >= 0", "2.5": "expected a whole number"}
FLOAT_POSITIVE = {"nan": "must be a finite number", "inf": "must be a finite number",
                  "-1": "must be positive", "0": "must be positive", "abc": "expected a number"}
FLOAT_NON_NEGATIVE = {"nan": "must be a finite number", "inf": "must be a finite number", "-0.5": "must be >= 0"}

#: the arguments each command is given, valid, for the sweep to make one of them bad at a time
BASE = {
    "demo": ["demo"],
    "decompose": ["decompose", "world-vit", "world:4", "--out", "{new}", "--workers", "0", "--device", "cpu"],
    "align": ["align", "{run}", "--overwrite", "--workers", "0", "--device", "cpu"],
    "explain": ["explain", "{run}", "--out", "{new}"],
    "spurious": ["spurious", "{run}", "--spurious-words", "sea"],
    "segment": ["segment", "{run}"],
    "retrieve": ["retrieve", "{run}", "--text", "sea", "--out", "{new}/r.png"],
    "heatmap": ["heatmap", "{run}", "--image", "0", "--component", "blocks.5.attn[h1]", "--out", "{new}/h.png"],
    "verify": ["verify", "{run}"],
}
NUMBERS = {
    "demo": {"--images": INT_POSITIVE, "--top": INT_POSITIVE},
    "decompose": {"--batch": INT_POSITIVE, "--shard-mb": FLOAT_POSITIVE, "--workers": INT_NON_NEGATIVE,
                  "--size": INT_POSITIVE, "--fine-layers": INT_NON_NEGATIVE, "--num-classes": INT_NON_NEGATIVE},
    "align": {"--lam": FLOAT_NON_NEGATIVE, "--epochs": INT_POSITIVE, "--batch": INT_POSITIVE,
              "--lr": FLOAT_POSITIVE, "--seed": INT_NON_NEGATIVE, "--workers": INT_NON_NEGATIVE},
    "explain": {"--top": INT_POSITIVE, "--images": INT_POSITIVE},
    "spurious": {"--max-k": INT_POSITIVE},
    "segment": {"--layers": INT_NON_NEGATIVE, "--examples": INT_POSITIVE, "--column": INT_NON_NEGATIVE,
                "--batch": INT_POSITIVE, "--size": INT_POSITIVE, "--num-classes": INT_NON_NEGATIVE},
    "heatmap": {"--column": INT_NON_NEGATIVE, "--size": INT_POSITIVE, "--num-classes": INT_NON_NEGATIVE},
    "retrieve": {"--top": INT_POSITIVE, "--images": INT_POSITIVE},
}
#: deprecated spellings that take a number are swept too: a bad value is refused before they warn
for command, option in (("demo", "--batch"), ("decompose", "--layers"), ("retrieve", "--components"),
                        ("retrieve", "--k")):
    NUMBERS[command][option] = INT_NON_NEGATIVE if option == "--layers" else INT_POSITIVE
RUN_KINDS = {"{file}": "is a file, not a run folder", "{missing}": "not a complete fxdecomp run",
             "{garbage_manifest}": "manifest.json is damaged: not valid JSON",
             "{started}": "not a complete fxdecomp run (a decomposition was started there"}
#: (command, argument, bad value) -> what the one line must say; "{...}" are the places below
OTHERS = {
    ("demo", "--model", "no-such-model"): "unknown model",
    ("demo", "--checkpoint", "{junk}"): "cannot be read as weights",
    ("demo", "--checkpoint", "{missing}"): "does not exist",
    ("demo", "--granularity", "atom"): "invalid choice",
    ("demo", "--dtype", "float16"): "invalid choice",
    ("demo", "--report", "{file}"): "is a file, not a folder",
    ("demo", "--report", "{read_only}"): "cannot write in",
    ("decompose", "model", "no-such-model"): "unknown model",
    ("decompose", "model", "timm:no_such_net"): "timm has no model",
    ("decompose", "model", "timm:vit_tiny_patch16_224"): "would be decomposed with random ones",
    ("decompose", "model", "open_clip:ViT-B-16"): "would be decomposed with random ones",
    ("demo", "--model", "timm:vit_tiny_patch16_224"): "--random-weights",
    ("decompose", "model", "open_clip:no-such-clip"): "open_clip cannot load",
    ("decompose", "data", "{missing}"): "neither world:N[:SEED] nor an existing folder",
    ("decompose", "data", "{file}"): "is not a folder of images",
    ("decompose", "data", "world:0"): "world:N needs N >= 1",
    ("decompose", "data", "world:-3"): "world:N needs N >= 1",
    ("decompose", "data", "world:many"): "bad world data",
    ("decompose", "data", "{empty_folder}"): "no images",
    ("decompose", "data", "{broken_images}"): "cannot read image",
    ("decompose", "--out", "{file}"): "is a file, not a folder",
    ("decompose", "--out", "{file}/run"): "is a file",
    ("decompose", "--out", "{read_only}"): "cannot write in",
    ("decompose", "--out", "{garbage_settings}"): "run.json is damaged: not valid JSON",
    ("decompose", "--out", "{not_a_run}"): "is not empty and holds no run",
    ("decompose", "--checkpoint", "{junk}"): "cannot be read as weights",
    ("decompose", "--checkpoint", "{missing}"): "does not exist",
    ("decompose", "--checkpoint", "{empty_folder}"): "is a folder, not a weights file",
    ("decompose", "--num-classes", "3"): "--num-classes applies to timm models only",
    ("decompose", "--fine-layers", "99"): "no layer(s) [99]",
    ("decompose", "--granularity", "block --fine-layers 2"): "no effect with --granularity block",
    ("decompose", "--granularity", "atom"): "invalid choice",
    ("decompose", "--dtype", "int8"): "invalid choice",
    ("decompose", "--device", "tpu"): "device",
    ("decompose", "--device", "cuda:x"): "device",
    ("align", "--clip", "tensorflow:clip"): "unknown CLIP",
    ("align", "--clip", "open_clip:ViT-B-16"): "open_clip:ViT-B-16:TAG",
    ("align", "--clip", "open_clip:no-such-clip:tag"): "open_clip has no model",
    ("align", "--clip", "world-clip --clip-checkpoint {junk}"): "takes no --clip-checkpoint",
    ("align", "--clip", "world-clip-l --clip-checkpoint {junk}"): "not a weights file written by fxdecomp.world.train",
    ("align", "--clip", "world-clip-l --clip-checkpoint {missing}"): "is not a file",
    ("align", "--clip", "open_clip:ViT-B-16 --clip-checkpoint {junk}"): "cannot be loaded into open_clip",
    ("align", "--clip-checkpoint", "{empty_folder}"): "takes no --clip-checkpoint",
    ("align", "--device", "tpu"): "device",
    ("explain", "--out", "{file}"): "is a file, not a folder",
    ("explain", "--out", "{read_only}"): "cannot write in",
    ("explain", "--properties", "{missing}"): "cannot read properties",
    ("explain", "--properties", "{garbage_json}"): "cannot read properties",
    ("explain", "--properties", "{wrong_json}"): "must map each property",
    ("explain", "--clip-checkpoint", "{junk}"): "takes no --clip-checkpoint",
    ("explain", "run", "{garbage_aligner}"): "aligner.json is damaged: not valid JSON",
    ("spurious", "--spurious-words", ""): "argument --spurious-words: must not be empty",
    ("spurious", "--label-words", " "): "argument --label-words: must not be empty",
    ("spurious", "--clip-checkpoint", "{junk}"): "takes no --clip-checkpoint",
    ("segment", "--layers", "99"): "no layer(s) [99]",
    ("retrieve", "--text", ""): "argument --text: must not be empty",
    ("retrieve", "--against", ""): "argument --against: must not be empty",
    ("retrieve", "--image", "999 --property colour"): "out of range",
    ("retrieve", "--image", "no-such-id --property colour"): "no image 'no-such-id'",
    ("retrieve", "--property", "no-such-property"): "--property goes with --image",
    ("retrieve", "--property", "no-such-property --image 0"): "--image needs --property, one of",
    ("retrieve", "--properties", "{garbage_json}"): "--properties goes with --image",
    ("retrieve", "--properties", "{wrong_json} --image 0 --property colour"): "must map each property",
    ("retrieve", "--out", "{empty_folder}"): "is a folder",
    ("retrieve", "--out", "{read_only}/r.png"): "cannot write in",
    ("retrieve", "--out", "{new}/r.notanimage"): "must end in one of",
    ("retrieve", "--out", "{file}/r.png"): "is a file",
    ("retrieve", "--clip-checkpoint", "{junk}"): "takes no --clip-checkpoint",
    ("heatmap", "--image", "999"): "out of range",
    ("heatmap", "--image", "-1"): "no image '-1'",
    ("heatmap", "--component", "blocks.9.attn[h1]"): "no component",
    ("heatmap", "--text", ""): "argument --text: must not be empty",
    ("heatmap", "--out", "{empty_folder}"): "is a folder",
    ("heatmap", "--out", "{read_only}/h.png"): "cannot write in",
    ("heatmap", "--out", "{new}/h.txt"): "must end in one of",
    ("heatmap", "--clip-checkpoint", "{junk} --text sea"): "takes no --clip-checkpoint",
    ("decompose", "--group", "atom"): "invalid choice",
    ("decompose", "--readout", "R.npy"): "is not a readout",
    ("decompose", "--readout", "{missing}.safetensors"): "no such file",
    ("decompose", "--readout", "texts:{missing}"): "no file",
    ("decompose", "--readout", "{junk}"): "cannot be read as safetensors",
    ("decompose", "--clip", "world-clip"): "--clip and --aligner go with --readout texts:FILE",
    ("decompose", "--aligner", "{run}"): "--clip and --aligner go with --readout texts:FILE",
    ("decompose", "--clip-checkpoint", "{junk}"): "--clip-checkpoint gives the weights of --clip",
    ("heatmap", "--column", "0"): "is a full run (no readout)",
    ("heatmap", "--model", "world-vit"): "not both",
    ("heatmap", "--data", "world:4"): "not both",
    ("heatmap", "--readout", "{junk}"): "go with --model and --data",
    ("heatmap", "--clip", "world-clip"): "go with --model and --data",
    ("heatmap", "--aligner", "{run}"): "go with --model and --data",
    ("heatmap", "--checkpoint", "{junk}"): "go with --model and --data",
    ("heatmap", "--num-classes", "3"): "go with --model and --data",
    ("heatmap", "--size", "64"): "go with --model and --data",
    ("segment", "--column", "0"): "is a full run",
    ("segment", "--text", ""): "argument --text: must not be empty",
    ("segment", "--column-by", "shape"): "is a full run",
    ("segment", "--reduce", "signed"): "reads along a direction",
    ("segment", "--reduce", "atom"): "invalid choice",
    ("segment", "--out", "{file}"): "is a file, not a folder",
    ("segment", "--out", "{read_only}"): "cannot write in",
    ("segment", "--model", "world-vit"): "not both",
    ("segment", "--data", "world:4"): "not both",
    ("segment", "--readout", "{junk}"): "go with --model and --data",
    ("segment", "--clip", "world-clip"): "go with --model and --data",
    ("segment", "--aligner", "{run}"): "go with --model and --data",
    ("segment", "--checkpoint", "{junk}"): "go with --model and --data",
    ("segment", "--num-classes", "3"): "go with --model and --data",
    ("segment", "--size", "64"): "go with --model and --data",
    ("segment", "--batch", "4"): "--batch goes with --model and --data",
}


def cases():
    """(command, argument, bad value, what the line must say), for every command."""
    out = []
    for command, options in NUMBERS.items():
        for option, bad in options.items():
            for value, says in bad.items():
                out.append((command, option, value, f"argument {option}: {says}"))
    for command in BASE:
        if "{run}" in BASE[command]:
            out += [(command, "run", value, says) for value, says in RUN_KINDS.items()]
    out += [(c, a, v, says) for (c, a, v), says in OTHERS.items()]
    return out


def test_the_sweep_reaches_every_command_and_argument():
    """Every argument of every command has at least one bad value in the sweep (flags excepted)."""
    import argparse

    from fxdecomp.cli import _parser

    swept = {(c, a) for c, a, _, _ in cases()}
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {c.__name__.rsplit(".", 1)[1] for c in COMMANDS}
    missing = []
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._StoreTrueAction)):
                continue
            if action.option_strings and action.option_strings[0] in dict(renamed_options(parser)):
                continue  # a deprecated spelling: RENAMED below tests each one
            arg = action.option_strings[0] if action.option_strings else action.dest
            if (name, arg) not in swept:
                missing.append((name, arg))
    assert missing == [], missing


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """The paths the bad values name: a token run with an aligner, and broken things of every kind."""
    root = tmp_path_factory.mktemp("sweep")
    run = root / "run"
    assert main(["decompose", "world-vit", "world:6:9", "--granularity", "token", "--out", str(run), "--batch", "6",
                 "--workers", "0", "--device", "cpu"]) == 0
    assert main(["align", str(run), "--epochs", "1", "--workers", "0", "--device", "cpu"]) == 0
    (root / "file.txt").write_text("a regular file")
    (root / "junk.safetensors").write_bytes(b"\x00junk, not weights" * 10)
    (root / "garbage.json").write_text("{garbage")
    (root / "wrong.json").write_text(json.dumps(["colour", "red"]))
    (root / "empty").mkdir()
    (root / "broken").mkdir()
    (root / "broken" / "a.png").write_bytes(b"\x89PNG not really")
    (root / "garbage_manifest").mkdir()
    (root / "garbage_manifest" / "manifest.json").write_text("}{")
    (root / "started").mkdir()
    (root / "started" / "run.json").write_text("{")
    (root / "garbage_settings").mkdir()
    (root / "garbage_settings" / "run.json").write_text("[not json")
    (root / "not_a_run").mkdir()
    (root / "not_a_run" / "notes.txt").write_text("x")
    shutil.copytree(run, root / "garbage_aligner")
    (root / "garbage_aligner" / "aligner.json").write_text("{")
    return {"run": run, "file": root / "file.txt", "missing": root / "no" / "such", "junk": root / "junk.safetensors",
            "garbage_json": root / "garbage.json", "wrong_json": root / "wrong.json", "empty_folder": root / "empty",
            "broken_images": root / "broken", "garbage_manifest": root / "garbage_manifest",
            "started": root / "started", "garbage_settings": root / "garbage_settings",
            "not_a_run": root / "not_a_run", "garbage_aligner": root / "garbage_aligner",
            "read_only": read_only_place(root), "root": root}


def read_only_place(root: Path) -> Path | None:
    """A folder this process cannot write in: a read-only folder, or for the superuser (whom permissions do
    not stop) sysfs, which refuses new files to everyone."""
    folder = root / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except OSError:
        return folder / "out"
    for candidate in (Path("/sys"),):
        try:
            (candidate / "fxdecomp-probe").touch()
        except OSError:
            return candidate / "fxdecomp-read-only" / "out"
    return None


def argv_for(command: str, arg: str, value: str, places: dict, tmp_path: Path) -> list[str]:
    base = list(BASE[command])
    bad = value.split(" ") if " " in value and arg != "--label-words" else [value]
    if arg in ("run", "model", "data"):
        slot = {"run": 1, "model": 1, "data": 2}[arg]
        base[slot:slot + 1] = bad
    elif arg in base:
        i = base.index(arg)
        base[i + 1:i + 2] = bad
    else:
        base += [arg, *bad]
    given = [arg, *bad]
    for cmd, query, drop in (("retrieve", "--image", "--text"), ("heatmap", "--text", "--component")):
        if command == cmd and query in given and drop in base:  # the two exclude each other
            i = base.index(drop)
            del base[i:i + 2]
    subs = {f"{{{k}}}": str(v) for k, v in places.items() if v is not None}
    subs["{new}"] = str(tmp_path / "new")
    out = []
    for a in base:
        for k, v in subs.items():
            a = a.replace(k, v)
        out.append(a)
    return out


@pytest.mark.parametrize("command,arg,value,says", cases(), ids=lambda v: str(v)[:40])
def test_a_bad_value_is_one_line_and_exit_code_2(command, arg, value, says, places, tmp_path, capsys):
    if "{read_only}" in value and places["read_only"] is None:
        pytest.skip("no place here that this process cannot write in")
    argv = argv_for(command, arg, value, places, tmp_path)
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (argv, err)
    assert "Traceback" not in err and len(lines) == 1, (argv, err)
    assert says in lines[0], (argv, lines[0])
    assert lines[0].startswith(f"fxdecomp {command}: error: "), lines[0]


#: every deprecated spelling, kept for one release: (command, old) -> (arguments with the old spelling,
#: the same with the new one); both must parse to the same arguments, the old one warning once
RENAMED = {
    ("demo", "--batch"): (["demo", "--batch", "3"], ["demo", "--images", "3"]),
    ("demo", "--float64"): (["demo", "--float64"], ["demo", "--dtype", "float64"]),
    ("decompose", "--layers"): (["decompose", "world-vit", "world:4", "--out", "r", "--granularity", "token",
                                 "--layers", "4", "5"],
                                ["decompose", "world-vit", "world:4", "--out", "r", "--granularity", "token",
                                 "--fine-layers", "4", "5"]),
    ("align", "--checkpoint"): (["align", "r", "--clip", "open_clip:ViT-B-16", "--checkpoint", "clip.bin"],
                                ["align", "r", "--clip", "open_clip:ViT-B-16", "--clip-checkpoint", "clip.bin"]),
    ("retrieve", "--components"): (["retrieve", "r", "--text", "sea", "--out", "r.png", "--components", "3"],
                                   ["retrieve", "r", "--text", "sea", "--out", "r.png", "--top", "3"]),
    ("retrieve", "--k"): (["retrieve", "r", "--text", "sea", "--out", "r.png", "--k", "4"],
                          ["retrieve", "r", "--text", "sea", "--out", "r.png", "--images", "4"]),
    ("verify", "--images"): (["verify", "r", "--images"], ["verify", "r", "--check-images"]),
}


def test_every_deprecated_spelling_is_tested():
    import argparse

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    found = {(name, old): new for name, parser in sub.choices.items() for old, new in renamed_options(parser)}
    assert set(found) == set(RENAMED)
    for (command, old), new in found.items():  # the table's new spelling is the one the warning names
        assert new.split()[0] in RENAMED[command, old][1], (command, old, new)


@pytest.mark.parametrize("command,old", sorted(RENAMED), ids=lambda v: str(v))
def test_a_deprecated_spelling_works_and_names_the_new_one(command, old, capsys):
    """The old spelling gives the command exactly what the new one gives it, and one line on stderr
    naming the new spelling; the new spelling says nothing."""
    with_old, with_new = RENAMED[command, old]
    got = vars(_parser().parse_args(with_old))
    warned = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    want = vars(_parser().parse_args(with_new))
    assert capsys.readouterr().err == ""
    assert got == want
    new = dict(renamed_options(next(p for n, p in _subparsers() if n == command)))[old]
    assert warned == [f"fxdecomp {command}: DeprecationWarning: {old} is deprecated and goes in the next release; "
                      f"use {new}"]


def _subparsers():
    import argparse

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices.items())


@pytest.mark.parametrize("command,argv,fix", [
    ("demo", ["demo"], "lower --images (or use a smaller model)"),
    ("decompose", ["decompose", "world-vit", "world:4", "--out", "r"], "lower --batch (or use a smaller model or "
                                                                      "--dtype bfloat16)")])
def test_out_of_memory_names_the_option_that_lowers_it(command, argv, fix, monkeypatch, capsys):
    import importlib

    def out_of_memory(args):
        raise MemoryError("out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(importlib.import_module(f"fxdecomp.commands.{command}"), "run", out_of_memory)
    assert main(argv) == 2
    assert capsys.readouterr().err == f"fxdecomp {command}: error: out of memory; {fix}\n"
