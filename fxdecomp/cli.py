"""The ``fxdecomp`` command."""
from __future__ import annotations

import argparse
import sys

from . import __version__


def _parser() -> argparse.ArgumentParser:
    from .models_registry import DEFAULT, presets

    p = argparse.ArgumentParser(
        prog="fxdecomp",
        description="Decompose a vision model's output into an exact sum of component contributions.")
    p.add_argument("--version", action="version", version=f"fxdecomp {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser("demo", help="decompose a model on synthetic-world images and print the components",
                       description="Compile a model (by default the shipped world-vit), decompose a few images of "
                                   "the synthetic world and print the largest components and the reconstruction "
                                   "error.")
    names = ", ".join(pr.name for pr in presets())
    d.add_argument("--model", default=DEFAULT,
                   help=f"preset ({names}), timm:<arch> or open_clip:<arch> (default: {DEFAULT})")
    d.add_argument("--checkpoint", help="local weights file (.safetensors, .pth, .bin) for the model")
    d.add_argument("--pretrained", action="store_true", help="download the library's pretrained weights")
    d.add_argument("--granularity", choices=("block", "head", "token"), default="head")
    d.add_argument("--batch", type=int, default=4, help="number of images (default: 4)")
    d.add_argument("--top", type=int, default=12, help="components to list (default: 12)")
    d.add_argument("--float64", action="store_true", help="decompose in double precision")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "demo":
        from .demo import run
        from .errors import FxDecompError

        try:
            run(args.model, args.granularity, args.batch, args.top, args.float64, args.checkpoint, args.pretrained)
        except FxDecompError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
