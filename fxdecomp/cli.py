"""The ``fxdecomp`` command: ``fxdecomp COMMAND --help`` for each.

Every failure a user can cause ends in one line on stderr naming the problem and the fix, and exit
code 2: argparse's own errors (without its usage block), fxdecomp's errors, and what the system
says about a path (a full disk, a folder one may not write in, a file gone). Anything else is a
bug, and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys

from . import __version__

EPILOG = """the path from a folder of images to a report:
  fxdecomp decompose world-vit world:1000 --out runs/vit    # or timm:NAME / open_clip:NAME and a folder
  fxdecomp align runs/vit --clip world-clip                 # or open_clip:ViT-L-14:laion2b_s32b_b82k
  fxdecomp explain runs/vit --out reports/vit               # then open reports/vit/index.html
  fxdecomp verify runs/vit                                  # every file checked against the manifest"""


class OneLineParser(argparse.ArgumentParser):
    """An argument error is one line naming the argument and where to read more (not the usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    from .commands import COMMANDS
    from .commands.common import formatter

    p = OneLineParser(
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
    import torch

    from .errors import FxDecompError

    def fail(message: str) -> int:
        print(f"fxdecomp {args.command}: error: {message}", file=sys.stderr)
        return 2

    try:
        return args.handler(args)
    except FxDecompError as err:
        return fail(" ".join(str(err).split()))  # one line, even for a message of several
    except (torch.OutOfMemoryError, MemoryError) as err:
        first = str(err).split(".")[0] or "out of memory"
        if args.command == "demo":  # the demo's images are its one batch
            return fail(f"{first}; lower --images (or use a smaller model)")
        return fail(f"{first}; lower --batch (or use a smaller model or --dtype bfloat16)")
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        return fail(f"{err.strerror or err}{where}: check that the path exists, that you may write there and "
                    "that the disk has space, then run the same command again")
    except KeyboardInterrupt:
        print(f"fxdecomp {args.command}: interrupted; run the same command again to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
