"""The ``fxdecomp`` command: ``fxdecomp COMMAND --help`` for each."""
from __future__ import annotations

import argparse
import sys

from . import __version__

EPILOG = """the path from a folder of images to a report:
  fxdecomp decompose world-vit world:1000 --out runs/vit    # or timm:NAME / open_clip:NAME and a folder
  fxdecomp align runs/vit --clip world-clip                 # or open_clip:ViT-L-14:laion2b_s32b_b82k
  fxdecomp explain runs/vit --out reports/vit               # then open reports/vit/index.html"""


def _parser() -> argparse.ArgumentParser:
    from .commands import COMMANDS
    from .commands.common import formatter

    p = argparse.ArgumentParser(
        prog="fxdecomp", formatter_class=formatter, epilog=EPILOG,
        description="Decompose a vision model's output into an exact sum of component contributions, and "
                    "explain the components in words.")
    p.add_argument("--version", action="version", version=f"fxdecomp {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from .errors import FxDecompError

    try:
        return args.handler(args)
    except FxDecompError as err:
        print(f"fxdecomp {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fxdecomp {args.command}: interrupted; run the same command again to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
