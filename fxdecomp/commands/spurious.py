"""``fxdecomp spurious RUN``: find the components behind a shortcut and remove them."""
from __future__ import annotations

import json

from .common import formatter, positive, text

HELP = "rank a classifier's components by words for a spurious attribute and mean-ablate the top k"
EPILOG = """example (a Waterbirds-layout folder, every split decomposed into one run, then aligned):
  fxdecomp decompose timm:vit_base_patch16_224 ~/waterbirds --checkpoint wb.pth --num-classes 2 --out runs/wb
  fxdecomp align runs/wb --clip open_clip:ViT-L-14:laion2b_s32b_b82k
  fxdecomp spurious runs/wb --spurious-words water ocean lake forest bamboo --label-words "land bird" "water bird"

Means come from the train split, k is chosen on the validation split, accuracies are reported on
the test split, next to as many random components and the oracle ranking by readout effect.
Writes RUN/spurious/result.json and RUN/spurious/curves.png."""


def add(sub) -> None:
    p = sub.add_parser("spurious", help=HELP, description=HELP, epilog=EPILOG, formatter_class=formatter)
    p.add_argument("run", help="a run of a Waterbirds-layout folder, with an aligner")
    p.add_argument("--spurious-words", type=text, nargs="+", required=True,
                   help="descriptions of the spurious attribute")
    p.add_argument("--label-words", type=text, nargs="*", default=(),
                   help="descriptions of the label (subtracted)")
    p.add_argument("--max-k", type=positive(), default=20, help="largest number of components tried (default: 20)")
    p.add_argument("--clip-checkpoint", help="local weights of the run's CLIP, if it was loaded from a file")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..align.runs import run_clip_space
    from ..store import open_run
    from ..store.files import publish, tmp_path, write_json
    from ..store.lock import RunLock
    from ..spurious.over_run import from_run

    r = open_run(args.run)
    r.require_full("the spurious-feature experiment (fxdecomp spurious)")
    clip = run_clip_space(r, args.clip_checkpoint)
    if clip is None:
        from ..errors import InputError

        raise InputError(f"{r.path} has no aligner yet: run fxdecomp align {r.path} --clip ... first")
    removal, ranking, oracle = from_run(r, clip=clip, spurious_words=args.spurious_words,
                                        label_words=args.label_words, max_k=args.max_k)
    folder = r.path / "spurious"
    with RunLock(r.path, what="spurious"):
        folder.mkdir(exist_ok=True)
        write_json(folder / "result.json", json.loads(json.dumps({**removal.summary(), "ablated": removal.ablated,
                                                                  "ranking": ranking, "oracle": oracle,
                                                                  "curves": removal.curves}, default=float)))
        figure = folder / "curves.png"
        tmp = tmp_path(figure, keep_suffix=True)
        removal.figure(tmp, title=f"{r.model_name}: worst-group accuracy as components are ablated")
        publish(tmp, figure)
    print(removal.table())
    print(f"ablated (k={removal.k}, chosen on validation): {', '.join(removal.ablated) or 'none'}")
    print(f"wrote {folder / 'result.json'} and {folder / 'curves.png'}")
    return 0
