"""``--model M --data DATA``: heatmaps and segmentation computed from images directly, through a
compiled readout (or sums over positions), with no stored full token run: a token readout of K
columns costs K numbers per token, where a full token run stores the output's width for each."""
from __future__ import annotations

import argparse

import torch

from ..errors import InputError
from .common import add_model_args, positive


def add(p: argparse.ArgumentParser) -> None:
    """The options of the images mode (``run`` becomes optional: a run, or ``--model`` with ``--data``)."""
    g = p.add_argument_group("from images (instead of a RUN)")
    g.add_argument("--model", help="the model to decompose (as fxdecomp decompose names it), with --data")
    g.add_argument("--data", metavar="DATA", help="with --model: the images to compute from, as fxdecomp decompose "
                                                  "reads DATA (an image folder, a Waterbirds-layout folder or world:N[:SEED])")
    g.add_argument("--size", type=positive(), default=None, help="folders: first bring images to this square size")
    g.add_argument("--readout", metavar="SPEC",
                   help="with --model: read every token through this readout (as fxdecomp decompose takes it: "
                        "FILE.safetensors, FILE.pt, classes, or texts:FILE with --clip and --aligner)")
    g.add_argument("--clip", help="with --model: the CLIP that embeds --text or --readout texts:FILE")
    g.add_argument("--aligner", metavar="RUN", help="with --model: an aligned head-granularity run of the model, "
                                                    "whose CompAlign maps read texts")
    add_model_args(g)


def chosen(args) -> bool:
    """Whether the command computes from images (``--model``/``--data``) rather than reading a run; refuses both
    or neither."""
    images = args.model is not None or args.data is not None
    if images and args.run is not None:
        raise InputError(f"give a RUN or --model with --data, not both (got {args.run} and --model/--data)")
    if not images and args.run is None:
        raise InputError("give a RUN (a token-granularity run), or --model M --data DATA to compute from images")
    if images and (args.model is None or args.data is None):
        raise InputError("--model and --data go together: the model to decompose and the images it reads")
    if not images:
        used = [o for o, v in (("--readout", args.readout), ("--clip", args.clip), ("--aligner", args.aligner),
                               ("--checkpoint", args.checkpoint), ("--num-classes", args.num_classes),
                               ("--size", args.size), ("--pretrained", args.pretrained or None),
                               ("--random-weights", args.random_weights or None)) if v is not None]
        if used:
            raise InputError(f"{', '.join(used)} go with --model and --data; a run already holds what it read")
    return images


class Source:
    """The model (its representation, as a run decomposes it), its preprocessing and the images."""

    def __init__(self, args):
        from ..adapters.representation import representation
        from ..data import open_data
        from ..preprocessing import transform_for
        from .common import check_weights, load_model

        check_weights(args.model, args)
        self.name = args.model
        self.model = load_model(args.model, args)
        self.rep = representation(self.model).eval()
        self.preprocess = transform_for(self.rep)
        self.data = open_data(args.data, size=args.size)
        if len(self.data) == 0:
            raise InputError(f"{args.data} holds no images")

    def __len__(self) -> int:
        return len(self.data)

    @property
    def ids(self) -> list[str]:
        return self._described()["ids"]

    @property
    def labels(self) -> dict:
        return self._described()["labels"]

    def _described(self) -> dict:
        if not hasattr(self, "_description"):
            from ..data.source import describe_source

            self._description = describe_source(self.data)
        return self._description

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """(model input [B, 3, H, W], the images as the model sees them, uint8 [B, 3, H, W])."""
        raw = torch.stack([torch.as_tensor(self.preprocess.resize_crop(self.data[int(i)]["image"])) for i in indices])
        return self.preprocess.normalize(raw), raw


def column_of(readout, names, column, text, spec: str) -> tuple[object, int]:
    """(the readout's one column ``column`` or the one named ``text``, as a [D, 1] matrix or one per
    component; its index)."""
    from ..store.readouts import column_index

    k = next(iter(readout.values())).shape[-1] if isinstance(readout, dict) else readout.shape[-1]
    column = column_index(k, names, column, text, where=f"--readout {spec}")
    if isinstance(readout, dict):
        return {n: r[..., column:column + 1] for n, r in readout.items()}, column
    return readout[..., column:column + 1], column


def aligner_of(args, model_name: str):
    """The CompAlign of ``--aligner RUN`` (made from the same model), or None."""
    if args.aligner is None:
        return None
    from ..store import open_run

    run = open_run(args.aligner)
    if run.model_name != model_name:
        raise InputError(f"--aligner {args.aligner} was decomposed from {run.model_name}, not {model_name}: align a "
                         f"run of {model_name} and give it")
    from ..align import run_aligner

    return run_aligner(run)
