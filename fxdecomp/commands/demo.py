"""``fxdecomp demo``: the whole idea on the synthetic world, offline."""
from __future__ import annotations

from .common import add_random_weights, check_weights, formatter, positive, renamed, writable_folder

HELP = "decompose a model on synthetic-world images and show its components, in numbers and in words"
EPILOG = """examples:
  fxdecomp demo
  fxdecomp demo --report demo_report          # also a run store and its HTML report
  fxdecomp demo --model world-swin --granularity token --top 20
  fxdecomp demo --images 8 --dtype float64"""


def add(sub) -> None:
    from ..models_registry import DEFAULT, presets

    p = sub.add_parser("demo", help=HELP, description=HELP, epilog=EPILOG, formatter_class=formatter)
    names = ", ".join(pr.name for pr in presets())
    p.add_argument("--model", default=DEFAULT, help=f"preset ({names}), timm:<arch> or open_clip:<arch> "
                                                    f"(default: {DEFAULT})")
    p.add_argument("--checkpoint", help="local weights file (.safetensors, .pth, .bin) for the model")
    p.add_argument("--pretrained", action="store_true", help="download the library's pretrained weights")
    add_random_weights(p)
    p.add_argument("--granularity", choices=("block", "head", "token", "neuron"), default="head")
    p.add_argument("--images", type=positive(), default=4, help="images to decompose (default: 4)")
    renamed(p, "--batch", "--images", dest="images", type=positive())
    p.add_argument("--top", type=positive(), default=12, help="components to list (default: 12)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="the precision the model is decomposed in (default: float32)")
    renamed(p, "--float64", "--dtype float64", dest="dtype", flag_value="float64")
    p.add_argument("--report", help="also write a run store and its HTML report into this folder")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..demo import run as demo

    check_weights(args.model, args)
    if args.report is not None:
        writable_folder(args.report, "--report")
    demo(args.model, args.granularity, args.images, args.top, args.dtype, args.checkpoint, args.pretrained,
         args.report)
    return 0
