"""``fxdecomp heatmap RUN --image I``: where in an image a component or a text gets its value."""
from __future__ import annotations

from .common import at_least, figure_suffixes, formatter, text, writable_file

HELP = "draw a token heatmap of a component or a text on one image of a token-granularity run (or from images)"
EPILOG = """examples:
  fxdecomp decompose world-vit world:200 --granularity token --out runs/vit-tokens
  fxdecomp heatmap runs/vit-tokens --image 3 --component "blocks.5.attn[h1]" --out h1.png
  fxdecomp align runs/vit-tokens --clip world-clip
  fxdecomp heatmap runs/vit-tokens --image 3 --text sea --out sea.png

  fxdecomp decompose world-vit world:200 --granularity token --readout classes --out runs/vit-classes
  fxdecomp heatmap runs/vit-classes --image 3 --text shape=circle --out circle.png
  fxdecomp heatmap --model world-vit --data ~/pictures --image 0 --readout R.safetensors --column 2 --out r2.png
  fxdecomp heatmap --model world-vit --data ~/pictures --image 0 --text sea --clip world-clip --aligner runs/vit --out sea.png

IMAGE: an index, or an image id as the run lists it (a path relative to the folder).

A readout run (fxdecomp decompose --readout) holds K numbers per token: the heatmap draws one
column, --column K or the one whose name is --text (each token's value as stored; the same map
as the full run's along that column of the readout). With --model M --data DATA instead of a
RUN, the tokens are read from the images directly through a compiled readout (--readout SPEC
and --column/--text, or --text with --clip and --aligner): no full token run is stored."""


def add(sub) -> None:
    p = sub.add_parser("heatmap", help=HELP, description=HELP, epilog=EPILOG, formatter_class=formatter)
    p.add_argument("run", nargs="?", help="a run decomposed at token granularity (full, or through --readout); "
                                          "or give --model and --data")
    p.add_argument("--image", required=True, help="image index or id")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--component", help="a head or branch name (its tokens are drawn)")
    what.add_argument("--text", type=text, help="a description (needs fxdecomp align first); of a readout run: "
                                                "the name of the column to draw")
    p.add_argument("--column", type=at_least(0), help="a readout's column to draw (readout runs, --readout)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--clip-checkpoint", help="local weights of the run's CLIP, if it was loaded from a file")
    from . import from_images

    from_images.add(p)
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


def column(dec, k: int):
    """The decomposition ``dec`` of a readout, its column ``k`` alone (one number per token)."""
    from ..decomposition import Decomposition

    return Decomposition(dec.contributions[:, :, k:k + 1], dec.components, dec.output[:, k:k + 1])


def run(args) -> int:
    from . import from_images

    writable_file(args.out, suffixes=figure_suffixes())
    if from_images.chosen(args):
        return _from_images(args)
    from ..store import open_run

    r = open_run(args.run)
    if r.readout is not None:
        return _readout_run(args, r)
    if args.column is not None:
        from ..errors import InputError

        raise InputError(f"--column chooses a readout's column, but {r.path} is a full run (no readout); drop it")
    return _full_run(args, r)


def _readout_run(args, r) -> int:
    from ..heatmaps import heatmap
    from ..heatmaps.compiled import ONE

    i = image_index(r, args.image)
    k = r.column(args.column, text=args.text)
    dec = column(r.decomposition([i]), k)
    picture = r.data()[i]["image"].permute(1, 2, 0).numpy()
    name = (r.readout.get("names") or [None] * r.width)[k]
    what = f"'{name}'" if name is not None else f"column {k} of {r.readout['spec']}"
    hm = heatmap(dec, picture, component=args.component, direction=ONE,
                 title=f"{r.ids[i]}: {what}" + (f" from {args.component}" if args.component else ""))
    return _save(hm, args.out)


def _from_images(args) -> int:
    from ..errors import InputError
    from ..heatmaps import heatmap
    from ..heatmaps.compiled import ONE, token_reader
    from .from_images import Source, aligner_of, column_of

    src = Source(args)
    i = image_index(_Listed(src.ids), args.image)
    if args.readout is not None:
        import fxdecomp

        from .readout_spec import resolve

        ro = resolve(args.readout, src.model, src.name, args)
        r, k = column_of(ro.matrix, ro.names, args.column, args.text, args.readout)
        dtype = next(iter(src.rep.parameters())).dtype
        r = {n: m.to(dtype) for n, m in r.items()} if isinstance(r, dict) else r.to(dtype)
        reader = fxdecomp.decompose(src.rep, "token", readout=r)
        what = f"'{ro.names[k]}'" if ro.names else f"column {k} of {args.readout}"
    elif args.text is not None:
        if args.clip is None:
            raise InputError("--text from images needs --clip NAME to embed it (and --aligner RUN, an aligned run of "
                             "the model, unless its output already is that CLIP's embedding)")
        from ..align.clip_space import ClipSpace

        clip = ClipSpace.by_name(args.clip, checkpoint=args.clip_checkpoint)
        reader = token_reader(src.rep, text=args.text, clip=clip, aligner=aligner_of(args, src.name))
        what = f"'{args.text}'"
    else:
        raise InputError("from images, the heatmap reads the tokens through a compiled readout: give --readout SPEC "
                         "(with --column or --text), or --text with --clip and --aligner; for a component's tokens at "
                         "the output's width, decompose a token run first")
    if args.column is not None and args.readout is None:
        raise InputError("--column chooses a column of --readout; drop it, or give --readout SPEC")
    import torch

    x, raw = src.batch([i])
    with torch.no_grad():
        dec = reader(x.to(reader.dtype))
    hm = heatmap(dec, raw[0].permute(1, 2, 0).numpy(), component=args.component, direction=ONE,
                 title=f"{src.ids[i]}: {what}" + (f" from {args.component}" if args.component else ""))
    return _save(hm, args.out)


class _Listed:
    """What ``image_index`` reads of a run (its images' count and ids), for a folder of images."""

    def __init__(self, ids):
        self.ids, self.n = ids, len(ids)


def _save(hm, out) -> int:
    from pathlib import Path

    from ..figure import pyplot

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    hm.figure.savefig(out, dpi=150, bbox_inches="tight")
    pyplot().close(hm.figure)  # written; a command run in a long process (a notebook, the tests) keeps no figure
    print(f"wrote {out}")
    return 0


def _full_run(args, r) -> int:
    from ..heatmaps import heatmap
    from ..report.build import aligned_space

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
    return _save(hm, args.out)
