"""``fxdecomp segment RUN``: zero-shot segmentation maps from a token-granularity run (full, or read
through a readout), or from images directly with ``--model M --data DATA``."""
from __future__ import annotations

from .common import at_least, formatter, positive, text

HELP = "segment every image of a token-granularity run from its position maps (scored where masks are known)"
EPILOG = """examples:
  fxdecomp decompose world-vit world:300 --granularity token --out runs/vit-tokens
  fxdecomp segment runs/vit-tokens
  fxdecomp decompose world-vit world:300 --granularity token --readout texts:shapes.txt --clip world-clip --aligner runs/vit --out runs/vit-shapes
  fxdecomp segment runs/vit-shapes --column-by shape
  fxdecomp segment --model world-vit --data world:300 --out seg/

Each image's map is the size of every position's direct contribution (over all heads and layers,
or --layers), thresholded at its mean. Writes RUN/segment/maps.safetensors (maps and masks) and
RUN/segment/examples.png (or into --out); for world runs, whose object masks are known, prints
pixel accuracy, mIoU and mAP.

A readout run (fxdecomp decompose --readout) holds K readings per token: the map of an image is
one column read as it is (--reduce signed, the default, or abs), chosen by --column K, by --text
NAME, or per image by --column-by LABEL (the column numbered by the image's label, e.g. per-class
texts listed in class order); these are the full run's maps along that column of the readout.
Without a column, --reduce norm takes the size of the K readings. --model M --data DATA
computes the maps from the images with positions summed at compile time (group="token"), through
--readout SPEC when given: no token run is stored."""


def add(sub) -> None:
    p = sub.add_parser("segment", help=HELP, description=HELP, epilog=EPILOG, formatter_class=formatter)
    p.add_argument("run", nargs="?", help="a run decomposed at token granularity; or give --model and --data")
    p.add_argument("--layers", type=at_least(0), nargs="+", help="read only the tokens of these layers (default: every "
                                                                  "layer)")
    p.add_argument("--examples", type=positive(), default=6, help="images in the figure (default: 6)")
    p.add_argument("--column", type=at_least(0), help="a readout's column to read (readout runs, --readout)")
    p.add_argument("--text", type=text, help="the name of the readout's column to read")
    p.add_argument("--column-by", metavar="LABEL", help="read each image along the readout column its LABEL numbers")
    p.add_argument("--reduce", choices=("norm", "signed", "abs"), default=None,
                   help="how a position's reading becomes one number (default: norm for a full run, signed for a "
                        "readout's column)")
    p.add_argument("--out", help="the folder to write maps.safetensors and examples.png in (default: RUN/segment; "
                                 "needed with --model)")
    p.add_argument("--batch", type=positive(), default=None, help="with --model: images per batch (default: 16)")
    from . import from_images

    from_images.add(p)
    p.set_defaults(handler=run)


def readout_maps(dec, size, *, columns, reduce: str | None, layers=None):
    """[B, H, W] position maps of a readout decomposition ``dec`` ([B, C, K]): along each image's column
    (``columns``: one index, or one per image) read as it is, or (``columns`` None, ``reduce`` norm) the
    size of the K readings."""
    import torch

    from ..decomposition import Decomposition
    from ..errors import InputError
    from ..heatmaps.compiled import ONE
    from ..segment import position_maps

    if columns is None:
        if reduce not in (None, "norm"):
            raise InputError(f"--reduce {reduce} reads one column: choose it with --column, --text or --column-by "
                             "(without one, --reduce norm takes the size of every column's reading)")
        return position_maps(dec, size=size, layers=layers, reduce="norm")
    if reduce == "norm":
        raise InputError("--reduce norm of one column is its absolute value: use --reduce abs (or drop the column to "
                         "take the size of every column's reading)")
    idx = torch.as_tensor(columns).long().reshape(-1)
    idx = idx.expand(len(dec.contributions)) if len(idx) == 1 else idx
    picked = torch.gather(dec.contributions, 2, idx.view(-1, 1, 1).expand(-1, dec.contributions.shape[1], 1))
    one = Decomposition(picked, dec.components, None)
    return position_maps(one, size=size, layers=layers, direction=ONE, reduce=reduce or "signed")


def columns_of(args, names, k: int, labels: dict, where: str):
    """The column(s) the maps read: one index, one per image (``--column-by``), or None (all, by norm)."""
    import numpy as np

    from ..errors import InputError

    given = [o for o, v in (("--column", args.column), ("--text", args.text), ("--column-by", args.column_by))
             if v is not None]
    if len(given) > 1:
        raise InputError(f"{' and '.join(given)} each choose the column: give one")
    if args.column_by is not None:
        if args.column_by not in labels:
            raise InputError(f"{where} has no label {args.column_by!r}; its labels are {sorted(labels)}")
        values = np.asarray(labels[args.column_by])
        if values.dtype.kind not in "iu" or values.min() < 0 or values.max() >= k:
            raise InputError(f"label {args.column_by!r} must number the readout's {k} columns (0..{k - 1}), got "
                             f"values {sorted(set(values.tolist()))[:6]}")
        return values
    if args.text is None and args.column is None:
        return 0 if k == 1 else None  # several columns, none chosen: the size of every reading
    from ..store.readouts import column_index

    return column_index(k, names, args.column, args.text, where=where)


def run(args) -> int:
    from ..errors import InputError
    from . import from_images

    if args.out is not None:  # checked before any work
        from .common import writable_folder

        writable_folder(args.out)
    if from_images.chosen(args):
        return _from_images(args)
    if args.batch is not None:
        raise InputError("--batch goes with --model and --data (a run is read shard by shard); drop it")
    from ..store import open_run

    r = open_run(args.run)
    if r.readout is None:
        used = [o for o, v in (("--column", args.column), ("--text", args.text), ("--column-by", args.column_by))
                if v is not None]
        if used:
            raise InputError(f"{used[0]} chooses a readout's column, but {r.path} is a full run; drop it")
    data = r.data()
    size = tuple(data[0]["image"].shape[-2:])
    columns = None
    if r.readout is not None:
        columns = columns_of(args, r.readout.get("names"), r.width, r.labels, str(r.path))
    maps = []
    for start, stop, dec in r.decompositions():
        if r.readout is None:
            maps.append(_full_maps(dec, size, args))
        else:
            cols = columns[start:stop] if columns is not None and not isinstance(columns, int) else columns
            maps.append(readout_maps(dec, size, columns=cols, reduce=args.reduce, layers=args.layers).float())
    folder = _folder(args.out, r.path / "segment")
    pictures = lambda n: [data[i]["image"] for i in range(n)]  # noqa: E731
    world = data.masks() if hasattr(data, "masks") else None  # rendered once: the world's exact masks
    import torch

    return _write(torch.cat(maps), size, folder, pictures, world, args.examples, r.model_name,
                  lock=r.path)


def _full_maps(dec, size, args):
    from ..errors import InputError
    from ..segment import position_maps

    if args.reduce not in (None, "norm"):
        raise InputError(f"--reduce {args.reduce} reads along a direction, which a full run's segmentation does not "
                         "choose: decompose with --readout (a direction per column) and pick its column")
    return position_maps(dec, size=size, layers=args.layers).float()


def _from_images(args) -> int:
    import torch

    import fxdecomp

    from ..errors import InputError
    from .from_images import Source

    if args.out is None:
        raise InputError("with --model and --data, give --out FOLDER for the maps and the figure")
    src = Source(args)
    if args.readout is not None:
        from .readout_spec import resolve

        ro = resolve(args.readout, src.model, src.name, args)
        dtype = next(iter(src.rep.parameters())).dtype
        r = {n: m.to(dtype) for n, m in ro.matrix.items()} if isinstance(ro.matrix, dict) else ro.matrix.to(dtype)
        k = next(iter(r.values())).shape[-1] if isinstance(r, dict) else r.shape[-1]
        columns = columns_of(args, ro.names, k, src.labels, str(args.data))
        dm = fxdecomp.decompose(src.rep, "token", layers=args.layers, readout=r, group="token")
    else:
        if any(v is not None for v in (args.column, args.text, args.column_by)):
            raise InputError("--column, --text and --column-by choose a column of --readout: give --readout SPEC")
        if args.reduce not in (None, "norm"):
            raise InputError(f"--reduce {args.reduce} reads along a direction: give --readout SPEC and its column")
        from ..segment import position_decomposition

        dm, columns = position_decomposition(src.rep, layers=args.layers), None
    maps, size = [], None
    batch = args.batch or 16
    for s in range(0, len(src), batch):
        idx = list(range(s, min(len(src), s + batch)))
        x, raw = src.batch(idx)
        size = tuple(raw.shape[-2:])
        with torch.no_grad():
            dec = dm(x.to(dm.dtype))
        if args.readout is None:
            from ..segment import position_maps

            maps.append(position_maps(dec, size=size).float())
        else:
            cols = columns[idx[0]:idx[-1] + 1] if columns is not None and not isinstance(columns, int) else columns
            maps.append(readout_maps(dec, size, columns=cols, reduce=args.reduce).float())
    masks_of = getattr(src.data, "masks", None)
    world = masks_of() if callable(masks_of) else None
    folder = _folder(args.out, None)
    return _write(torch.cat(maps), size, folder, lambda n: list(src.batch(range(n))[1]), world, args.examples,
                  src.name, lock=folder)


def _folder(out, default):
    from pathlib import Path

    from .common import writable_folder

    return writable_folder(out) if out is not None else Path(default)


def _write(maps, size, folder, pictures, world, examples: int, model_name: str, *, lock) -> int:
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from ..figure import pyplot
    from ..segment import segmentation_figure, segmentation_scores
    from ..segment.metrics import foreground
    from ..store.files import publish, tmp_path
    from ..store.lock import RunLock

    _, masks = foreground(maps, size)
    n = min(examples, len(maps))
    shown = np.stack([p.permute(1, 2, 0).numpy() for p in pictures(n)])
    truth = world[:n] if world is not None else masks[:n].numpy()
    path = folder / "maps.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    with RunLock(lock, what="segment"):
        tmp = tmp_path(path)
        save_file({"maps": maps.contiguous(), "masks": masks.to(torch.uint8).contiguous()}, str(tmp))
        publish(tmp, path)
        figure = folder / "examples.png"
        tmp = tmp_path(figure, keep_suffix=True)
        fig = segmentation_figure(shown, truth, {"decompose": maps[:n]}, n=n, path=tmp,
                                  title=f"{model_name}: position maps and their foreground")
        pyplot().close(fig)  # written; a command run in a long process (a notebook, the tests) keeps no figure
        publish(tmp, figure)
    print(f"wrote {path} ({len(maps)} maps and masks) and {folder / 'examples.png'}")
    if world is not None:
        s = segmentation_scores(maps, world)
        print(f"against the world's object masks: pixel accuracy {s['pixel_acc']:.3f}, mIoU {s['miou']:.3f}, "
              f"mAP {s['map']:.3f}")
    return 0
