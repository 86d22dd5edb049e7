"""``fxdecomp heatmap RUN --image I``: where in an image a component or a text gets its value."""
from __future__ import annotations

from .common import figure_suffixes, formatter, text, writable_file

HELP = "draw a token heatmap of a component or a text on one image of a token-granularity run"
EPILOG = """examples:
  fxdecomp decompose world-vit world:200 --granularity token --out runs/vit-tokens
  fxdecomp heatmap runs/vit-tokens --image 3 --component "blocks.5.attn[h1]" --out h1.png
  fxdecomp align runs/vit-tokens --clip world-clip
  fxdecomp heatmap runs/vit-tokens --image 3 --text sea --out sea.png

IMAGE: an index, or an image id as the run lists it (a path relative to the folder)."""


def add(sub) -> None:
    p = sub.add_parser("heatmap", help=HELP, description=HELP, epilog=EPILOG, formatter_class=formatter)
    p.add_argument("run", help="a run decomposed at token granularity")
    p.add_argument("--image", required=True, help="image index or id")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--component", help="a head or branch name (its tokens are drawn)")
    what.add_argument("--text", type=text, help="a description (needs fxdecomp align first)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--clip-checkpoint", help="local weights of the run's CLIP, if it was loaded from a file")
    p.set_defaults(handler=run)


def image_index(r, image: str) -> int:
    from ..errors import InputError

    if image.isdigit():
        i = int(image)
        if not 0 <= i < r.n:
            raise InputError(f"image {i} is out of range: the run holds {r.n} images (0..{r.n - 1})")
        return i
    try:
        return r.ids.index(image)
    except ValueError:
        raise InputError(f"no image {image!r} in the run; give an index (0..{r.n - 1}) or an id such as "
                         f"{r.ids[0]!r}") from None


def run(args) -> int:
    from ..heatmaps import heatmap
    from ..report.build import aligned_space
    from ..store import open_run

    writable_file(args.out, suffixes=figure_suffixes())
    r = open_run(args.run)
    i = image_index(r, args.image)
    dec = r.decomposition([i])
    picture = r.data()[i]["image"].permute(1, 2, 0).numpy()
    aligner = clip = None
    if args.text is not None:
        aligner, clip = aligned_space(r, args.clip_checkpoint)
        if aligner is None:
            from ..errors import InputError

            raise InputError(f"a text heatmap needs the run's components in CLIP space: fxdecomp align {r.path} first")
    hm = heatmap(dec, picture, component=args.component, text=args.text, clip=clip, aligner=aligner,
                 title=f"{r.ids[i]}: " + (f"'{args.text}'" if args.text else args.component or "all tokens"))
    from pathlib import Path

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    hm.figure.savefig(args.out, dpi=150, bbox_inches="tight")
    print(f"wrote {args.out}")
    return 0
