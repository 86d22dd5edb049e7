"""``fxdecomp align RUN --clip CLIP``: CompAlign trained from a run store."""
from __future__ import annotations

import os

from .common import at_least, device_of, formatter, positive, renamed

HELP = "map a run's components into a CLIP space (CompAlign), trained from the store"
EPILOG = """examples:
  fxdecomp align runs/vit --clip world-clip
  fxdecomp align runs/deit --clip open_clip:ViT-L-14:laion2b_s32b_b82k --device cuda
  fxdecomp align runs/deit --clip open_clip:ViT-B-16 --clip-checkpoint clip.bin --lam 0

CLIP embeddings of the run's images are computed once and kept in the run. Two aligners are
trained and saved: the per-component maps (RUN/aligner.safetensors, --lam), which put each
component into words, and the shared map (RUN/shared_aligner.safetensors, one map for every
component, lam 0), which every ranking of components reads (the report's property scores,
spurious, retrieve). Memory holds one shard at a time, whatever the run's size. A run that has
them keeps them unless --overwrite is given; --shared-only adds the shared map to a run aligned
before align trained one. open_clip CLIPs need a pretrained tag or --clip-checkpoint (random weights
would describe nothing)."""


def add(sub) -> None:
    p = sub.add_parser("align", help=HELP, description=HELP, epilog=EPILOG, formatter_class=formatter)
    p.add_argument("run", help="a run folder written by fxdecomp decompose")
    p.add_argument("--clip", default="world-clip",
                   help="world-clip, world-clip-l or open_clip:NAME[:TAG] (default: world-clip)")
    p.add_argument("--clip-checkpoint", help="local weights file for an open_clip CLIP (or world-clip-l's trained file)")
    renamed(p, "--checkpoint", "--clip-checkpoint", dest="clip_checkpoint")
    p.add_argument("--lam", type=at_least(0, float), default=1.0,
                   help="weight of the orthogonality penalty (default: 1)")
    p.add_argument("--epochs", type=positive(), default=10)
    p.add_argument("--batch", type=positive(), default=32, help="aligner batch size (default: 32)")
    p.add_argument("--lr", type=positive(float), default=3e-4)
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--workers", type=at_least(0), default=min(8, os.cpu_count() or 1))
    p.add_argument("--overwrite", action="store_true", help="replace the run's aligners if it has them")
    p.add_argument("--shared-only", action="store_true",
                   help="train only the shared map (for a run aligned without one); its per-component maps stay")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..align import ClipSpace
    from ..align.clip_space import check_spec
    from ..align.train_run import align_run, check_same_clip, refuse_replacing
    from ..store import open_run

    device = device_of(args.device)
    check_spec(args.clip, args.clip_checkpoint)
    run_ = open_run(args.run)
    run_.require_full("CompAlign (fxdecomp align)")
    refuse_replacing(run_, args.overwrite, args.shared_only)
    if args.shared_only:
        check_same_clip(run_, args.clip)
    clip = ClipSpace.by_name(args.clip, checkpoint=args.clip_checkpoint)
    trained = align_run(run_, clip, lam=args.lam, epochs=args.epochs, batch_size=args.batch, lr=args.lr,
                        device=device, seed=args.seed, workers=args.workers, checkpoint=args.clip_checkpoint,
                        overwrite=args.overwrite, shared_only=args.shared_only)
    shared = trained.shared
    if trained.per_component is not None:
        print(f"aligned {len(shared.names)} components of {run_.model_name} into {clip.name} (d_clip={shared.d_clip}): "
              f"per-component maps (descriptions) in {run_.aligner_path()}, the shared map (rankings) in "
              f"{run_.shared_aligner_path()}")
    else:
        print(f"trained the shared map (rankings) of {len(shared.names)} components of {run_.model_name} into "
              f"{clip.name}; saved {run_.shared_aligner_path()} (the per-component maps are kept)")
    return 0
