"""``fxdecomp decompose MODEL DATA --out RUN``: a data set decomposed into a run store."""
from __future__ import annotations

import os

import torch

from .common import add_model_args, device_of, formatter, load_model, positive

HELP = "decompose every image of a data set into a run store (resumable; many GPUs with torchrun)"
EPILOG = """examples:
  fxdecomp decompose world-vit world:2000 --out runs/vit
  fxdecomp decompose timm:deit_base_patch16_224 ~/imagenet/val --pretrained --out runs/deit --device cuda --batch 256
  fxdecomp decompose timm:vit_base_patch16_224 ~/waterbirds --checkpoint wb.pth --num-classes 2 --out runs/wb
  fxdecomp decompose hf:~/models/dinov2-small ~/images --out runs/dinov2
  torchrun --nproc-per-node 8 -m fxdecomp decompose timm:deit_base_patch16_224 ~/imagenet/val --out runs/deit

MODEL: a preset (world-vit, world-swin, world-ssl, world-clip, world-spurious, ...), timm:NAME,
open_clip:NAME[:TAG] or hf:FOLDER (a Hugging Face save_pretrained folder). Images are resized and
cropped once, as the model's library does it for evaluation (timm's crop_pct and interpolation,
open_clip's preprocess, the folder's preprocessor_config.json); run.json records the steps. DATA: an image folder (flat, or one subfolder per class), a Waterbirds-layout
folder (metadata.csv), or world:N[:SEED]. Killed runs continue where they stopped when the same
command is run again; a different model, granularity or preprocessing into the same folder is refused."""


def add(sub) -> None:
    p = sub.add_parser("decompose", help=HELP, description=HELP, epilog=EPILOG, formatter_class=formatter)
    p.add_argument("model", help="preset, timm:NAME, open_clip:NAME[:TAG] or hf:FOLDER")
    p.add_argument("data", help="image folder, Waterbirds-layout folder or world:N[:SEED]")
    p.add_argument("--out", required=True, help="the run folder to write (or to resume)")
    p.add_argument("--granularity", choices=("block", "head", "token"), default="head")
    p.add_argument("--layers", type=int, nargs="+", help="split finer than blocks only in these layers")
    p.add_argument("--batch", type=positive(), default=64, help="images per batch (default: 64)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--shard-mb", type=positive(float), default=256, help="largest shard size in MB (default: 256)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="DataLoader processes decoding images (default: up to 8)")
    p.add_argument("--size", type=positive(), default=None,
                   help="folders: first bring images to this square size (short side, bicubic, centre crop), "
                        "before the model's own resize and crop (default: none, the files as they are)"),
    add_model_args(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..data import open_data
    from ..store import decompose_to_store
    from .distributed import process_group

    device = device_of(args.device)
    with process_group(device):
        model = load_model(args.model, args)
        data = open_data(args.data, size=args.size)  # the model's own resize and crop comes once, in the loader
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        done = decompose_to_store(model, data, args.out, model_name=args.model, checkpoint=args.checkpoint,
                                  granularity=args.granularity, layers=args.layers, batch=args.batch, device=device,
                                  dtype=args.dtype, shard_mb=args.shard_mb, workers=args.workers)
        if rank == 0:
            from ..store import open_run

            r = open_run(args.out)
            rec = r.manifest["reconstruction"]
            line = (f"{r}: wrote {done.written} shards ({done.images} images, {done.images_per_s:.1f} images/s), "
                    f"{done.skipped} were already complete; reconstruction max relative error "
                    f"{rec['max_relative_error']:.2e}")
            if rec.get("max_relative_error_vs_float32") is not None:
                line += f" ({args.dtype}; against a float32 forward: {rec['max_relative_error_vs_float32']:.2e})"
            print(line)
    return 0
