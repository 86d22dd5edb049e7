"""``fxdecomp demo``: the whole idea on the synthetic world, offline."""
from __future__ import annotations

from .common import add_random_weights, check_weights, formatter, positive, writable_folder

HELP = "decompose a model on synthetic-world images and show its components, in numbers and in words"
EPILOG = """examples:
  fxdecomp demo
  fxdecomp demo --report demo_report          # also a run store and its HTML report
  fxdecomp demo --model world-swin --granularity token --top 20"""


def add(sub) -> None:
    from ..models_registry import DEFAULT, presets

    p = sub.add_parser("demo", help=HELP, description=HELP, epilog=EPILOG, formatter_class=formatter)
    names = ", ".join(pr.name for pr in presets())
    p.add_argument("--model", default=DEFAULT, help=f"preset ({names}), timm:<arch> or open_clip:<arch> "
                                                    f"(default: {DEFAULT})")
    p.add_argument("--checkpoint", help="local weights file (.safetensors, .pth, .bin) for the model")
    p.add_argument("--pretrained", action="store_true", help="download the library's pretrained weights")
    add_random_weights(p)
    p.add_argument("--granularity", choices=("block", "head", "token"), default="head")
    p.add_argument("--batch", type=positive(), default=4, help="number of images (default: 4)")
    p.add_argument("--top", type=positive(), default=12, help="components to list (default: 12)")
    p.add_argument("--float64", action="store_true", help="decompose in double precision")
    p.add_argument("--report", help="also write a run store and its HTML report into this folder")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..demo import run as demo

    check_weights(args.model, args)
    if args.report is not None:
        writable_folder(args.report, "--report")
    demo(args.model, args.granularity, args.batch, args.top, args.float64, args.checkpoint, args.pretrained,
         args.report)
    return 0
