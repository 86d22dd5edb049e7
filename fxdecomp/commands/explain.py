"""``fxdecomp explain RUN --out REPORT``: a self-contained HTML report of a run."""
from __future__ import annotations

from .common import formatter, positive, writable_folder

HELP = "write an HTML report of a run: largest components, their words, images, heatmaps and scores"
EPILOG = """examples:
  fxdecomp explain runs/vit --out reports/vit
  fxdecomp explain runs/deit --out reports/deit --top 20 --properties my_properties.json

Descriptions and property scores appear once the run has been aligned (fxdecomp align): descriptions
read the per-component maps, property scores and rankings the shared map. Properties:
a JSON file {"property": ["description", ...]}; default: the world's attribute words for world
runs, the paper's property lists otherwise. Open REPORT/index.html in a browser."""


def add(sub) -> None:
    p = sub.add_parser("explain", help=HELP, description=HELP, epilog=EPILOG, formatter_class=formatter)
    p.add_argument("run", help="a run folder written by fxdecomp decompose")
    p.add_argument("--out", required=True, help="folder for index.html")
    p.add_argument("--top", type=positive(), default=12, help="components to explain (default: 12)")
    p.add_argument("--images", type=positive(), default=400, help="images the report reads (default: 400)")
    p.add_argument("--properties", help="JSON file of properties and their descriptions")
    p.add_argument("--clip-checkpoint", help="local weights of the run's CLIP, if it was loaded from a file")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..report import write_report

    writable_folder(args.out)
    path = write_report(args.run, args.out, top=args.top, images=args.images, properties=args.properties,
                        clip_checkpoint=args.clip_checkpoint)
    print(f"wrote {path}")
    return 0
