"""``fxdecomp retrieve RUN``: images that share a property with a query image, or that match a text."""
from __future__ import annotations

from .common import figure_suffixes, formatter, positive, renamed, text, writable_file

HELP = "retrieve a run's images by example (in a property's component subspace) or by text"
EPILOG = """examples (after fxdecomp align):
  fxdecomp retrieve runs/vit --image 7 --property colour --out colour.png
  fxdecomp retrieve runs/vit --text sea --against lake marsh forest desert city --out sea.png

--property names one of the report's properties (the world's attributes, the paper's lists, or
--properties FILE); its components are the --top that score for it and not for the others. A text
is read from the --top components with the largest share of the variance along it (centred
against --against, the other descriptions of its property). Components are chosen through the
run's shared map (the aligner whose rankings hold); images are compared through the
per-component maps. Prints the retrieved image ids. The run is read shard by shard: memory holds
one shard, never the whole run."""


def add(sub) -> None:
    p = sub.add_parser("retrieve", help=HELP, description=HELP, epilog=EPILOG, formatter_class=formatter)
    p.add_argument("run", help="a run folder with an aligner")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", help="query image index or id")
    what.add_argument("--text", type=text, help="query text")
    p.add_argument("--property", help="with --image: the property to match on")
    p.add_argument("--against", type=text, nargs="*", default=(),
                   help="with --text: the other descriptions of its property")
    p.add_argument("--properties", help="JSON file of properties and their descriptions")
    p.add_argument("--top", type=positive(), default=5, help="components to search with (default: 5)")
    renamed(p, "--components", "--top", dest="top", type=positive())
    p.add_argument("--images", type=positive(), default=10, help="images to retrieve (default: 10)")
    renamed(p, "--k", "--images", dest="images", type=positive())
    p.add_argument("--out", required=True, help="PNG file for the grid of retrieved images")
    p.add_argument("--clip-checkpoint", help="local weights of the run's CLIP, if it was loaded from a file")
    p.set_defaults(handler=run)


def run(args) -> int:
    import numpy as np

    from ..align.runs import run_shared_aligner
    from ..errors import InputError
    from ..report.build import aligned_space
    from ..report.vocabulary import properties_for
    from ..retrieval import image_grid, text_direction_against
    from ..retrieval.over_run import by_image_over_run, by_text_over_run
    from ..store import open_run
    from .heatmap import image_index

    if args.property is not None and args.image is None:
        raise InputError("--property goes with --image (images like it in that property); a --text query takes "
                         "--against instead")
    if args.against and args.text is None:
        raise InputError("--against goes with --text (the other descriptions of its property)")
    if args.properties is not None and args.image is None:
        raise InputError("--properties goes with --image (the property to match on); a --text query reads none")
    writable_file(args.out, suffixes=figure_suffixes())
    r = open_run(args.run)
    r.require_full("retrieval (fxdecomp retrieve maps every component through CompAlign)")
    aligner, clip = aligned_space(r, args.clip_checkpoint)
    if aligner is None:
        raise InputError(f"retrieval reads components in CLIP space: run fxdecomp align {r.path} first")
    ranking = run_shared_aligner(r)  # components are chosen through the shared map (refuses a run without one)
    data = r.data()
    if args.image is not None:
        props = properties_for(r, args.properties)
        if args.property not in props:
            raise InputError(f"--image needs --property, one of {sorted(props)}")
        q = image_index(r, args.image)
        chosen, found = by_image_over_run(r, aligner, props, args.property, q, clip=clip, top=args.top,
                                          k=args.images, ranking=ranking)
        rows, queries, title = [(args.property, found)], [q], f"images like {r.ids[q]} in its {args.property}"
    else:
        texts = clip.encode_texts([args.text, *args.against])
        direction = text_direction_against(texts, 0)
        chosen, found = by_text_over_run(r, aligner, direction, top=args.top, k=args.images, ranking=ranking)
        rows, queries, title = [(f"'{args.text}'", found)], None, f"images for '{args.text}'"
    need = list(dict.fromkeys([*(queries or []), *found]))  # only the images the figure shows
    pictures = np.stack([data[i]["image"].permute(1, 2, 0).numpy() for i in need])
    at = {i: k for k, i in enumerate(need)}
    rows = [(label, [at[i] for i in idx]) for label, idx in rows]
    queries = [at[q] for q in queries] if queries else None
    from pathlib import Path

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    image_grid(pictures, rows, queries=queries, path=args.out, title=title + f" (components: {', '.join(chosen)})")
    print("components: " + ", ".join(chosen))
    print("retrieved: " + ", ".join(r.ids[i] for i in found))
    print(f"wrote {args.out}")
    return 0
