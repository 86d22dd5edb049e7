"""What the commands share: loading a model by name, choosing a device, argument types that refuse
what would give a silent wrong result (NaN, infinities, negative counts, empty texts), and checks of
output paths made before any expensive work."""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch

from ..errors import InputError


def formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


class _Renamed(argparse.Action):
    """An option's old spelling, kept for one release: it sets the new option's value and says on
    stderr, once per use, which spelling replaces it (so scripts keep working while they are updated)."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: DeprecationWarning: {option_string} is deprecated and goes in the next release; "
              f"use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def renamed(p: argparse.ArgumentParser, old: str, new: str, *, dest: str, flag_value=None, **kwargs) -> None:
    """Keep ``old`` as a deprecated spelling of ``new`` (whose value lives in ``dest``). ``flag_value``:
    the old option took no value and stands for ``new`` set to this; otherwise it takes what ``new``
    takes (``type``, ``nargs`` in ``kwargs``). Listed in ``docs/CLI.md``."""
    if flag_value is not None:
        kwargs.update(nargs=0, const=flag_value)
    p.add_argument(old, dest=dest, action=_Renamed, new=new, default=argparse.SUPPRESS,
                   help=f"deprecated spelling of {new}", **kwargs)


def renamed_options(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(old, new) for every deprecated spelling ``parser`` accepts."""
    return [(a.option_strings[0], a.new) for a in parser._actions if isinstance(a, _Renamed)]


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="local weights file (.safetensors, .pth, .bin) for the model")
    p.add_argument("--pretrained", action="store_true", help="download the library's pretrained weights")
    p.add_argument("--num-classes", type=at_least(0), default=None,
                   help="timm models: classes of the checkpoint's classifier (default: none, features only)")
    add_random_weights(p)


def add_random_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--random-weights", action="store_true",
                   help="timm/open_clip models: decompose randomly initialised weights on purpose (without it, a "
                        "model given neither --pretrained nor --checkpoint is refused)")


def load_model(name: str, args) -> torch.nn.Module:
    from ..models_registry import load

    check_weights(name, args)
    kwargs = {}
    if getattr(args, "num_classes", None) is not None:
        check_num_classes(name)
        kwargs["num_classes"] = args.num_classes
    return load(name, checkpoint=args.checkpoint, pretrained=args.pretrained, **kwargs)


def check_weights(name: str, args) -> None:
    """A library model named without weights would be randomly initialised: its decomposition, exact as
    it is, would explain nothing. Refused unless asked for (``--random-weights``)."""
    library = name.startswith(("timm:", "open_clip:")) or (":" not in name and not _is_preset(name))
    tagged = name.startswith("open_clip:") and len(name.split(":")) > 2
    if not library or tagged or args.pretrained or args.checkpoint is not None:
        return
    if getattr(args, "random_weights", False) or not _known(name):
        return  # an unknown name: loading it says so
    raise InputError(f"{name} is given no weights, so it would be decomposed with random ones: add --pretrained "
                     "(the library's weights), --checkpoint FILE, or --random-weights to decompose random weights "
                     "on purpose")


def check_num_classes(name: str) -> None:
    """``--num-classes`` shapes a timm model's classifier; any other model would ignore it."""
    if not (name.startswith("timm:") or ":" not in name and not _is_preset(name)):
        raise InputError(f"--num-classes applies to timm models only; {name} has the classifier it was built with "
                         "(drop --num-classes)")


def _known(name: str) -> bool:
    """Whether timm or open_clip has the architecture ``name`` names."""
    lib, _, arch = name.partition(":") if ":" in name else ("timm", "", name)
    arch = arch.split(":")[0]
    if lib == "timm":
        import timm

        return timm.is_model(arch.split(".")[0])
    if lib == "open_clip":
        import open_clip

        return arch in open_clip.list_models()
    return False


def _is_preset(name: str) -> bool:
    from ..models_registry import presets

    return name in {p.name for p in presets()}


def device_of(name: str | None) -> torch.device:
    """The requested device (default: CUDA when there is one); under torchrun, this process's GPU."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device {name!r} is not supported here: use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda but no GPU is visible here; use --device cpu")
        if dev.index is None and "LOCAL_RANK" in os.environ:
            dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), "
                             f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("--device mps but MPS is not available here; use --device cpu")
    return dev


def _number(kind, text: str):
    try:
        v = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def positive(kind=int):
    """An argument type: a number > 0 (finite, for floats)."""
    def parse(text: str):
        v = _number(kind, text)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return v

    return parse


def at_least(low, kind=int):
    """An argument type: a number >= ``low`` (finite, for floats)."""
    def parse(text: str):
        v = _number(kind, text)
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low:g}, got {text}")
        return v

    return parse


def text(value: str) -> str:
    """An argument type: a text that is not empty (an empty description reads nothing)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty: an empty description reads nothing")
    return value


def writable_folder(path, option: str = "--out") -> Path:
    """``path`` as a folder this process can create or write in; refused before any work if not."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path} is a file, not a folder: choose another {option}")
    _check_writable(path, option)
    return path


def writable_file(path, option: str = "--out", suffixes: tuple[str, ...] | None = None) -> Path:
    """``path`` as a file this process can write (its folder is created if missing); refused before any work."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name, e.g. {path / 'figure.png'}")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise InputError(f"{option} {path} must end in one of {', '.join(suffixes)}")
    _check_writable(path.parent, option)
    return path


def _check_writable(folder: Path, option: str) -> None:
    """The folder, or the nearest folder above it that exists, must be one this process may write in."""
    here = folder
    while not here.exists():
        if here.is_symlink():
            raise InputError(f"{option}: {here} is a symbolic link to nothing; fix or remove it")
        here = here.parent
    if not here.is_dir():
        raise InputError(f"{option} {folder} cannot be created: {here} is a file")
    if not os.access(here, os.W_OK | os.X_OK) or _read_only(here):
        raise InputError(f"{option} {folder}: cannot write in {here} (permission denied); choose a place you can "
                         "write to")


def _read_only(folder: Path) -> bool:
    """A folder the superuser may still not write in (a read-only file system, sysfs): try it."""
    probe = folder / f".fxdecomp-probe-{os.getpid()}"
    try:
        probe.touch()
    except OSError:
        return True
    probe.unlink(missing_ok=True)
    return False


def figure_suffixes() -> tuple[str, ...]:
    """File endings matplotlib can write a figure as."""
    from ..figure import pyplot

    fig = pyplot().figure()
    try:
        return tuple(sorted(f".{k}" for k in fig.canvas.get_supported_filetypes()))
    finally:
        pyplot().close(fig)
