"""``fxdecomp decompose MODEL DATA --out RUN``: a data set decomposed into a run store."""
from __future__ import annotations

import os

import torch

from ..groups import GROUPINGS

from .common import add_model_args, at_least, check_num_classes, check_weights, device_of, formatter, load_model, positive, \
    renamed, writable_folder

HELP = "decompose every image of a data set into a run store (resumable; many GPUs with torchrun)"
EPILOG = """examples:
  fxdecomp decompose world-vit world:2000 --out runs/vit
  fxdecomp decompose timm:deit_base_patch16_224 ~/imagenet/val --pretrained --out runs/deit --device cuda --batch 256
  fxdecomp decompose timm:vit_base_patch16_224 ~/waterbirds --checkpoint wb.pth --num-classes 2 --out runs/wb
  fxdecomp decompose hf:~/models/dinov2-small ~/images --out runs/dinov2
  torchrun --nproc-per-node 8 -m fxdecomp decompose timm:deit_base_patch16_224 ~/imagenet/val --pretrained --out runs/deit
  fxdecomp decompose world-vit world:1000 --granularity token --readout classes --out runs/vit-class-tokens
  fxdecomp decompose timm:deit_base_patch16_224 ~/images --pretrained --granularity token --readout R.safetensors --out runs/deit-r
  fxdecomp decompose world-vit world:500 --granularity token --readout texts:classes.txt --clip world-clip --aligner runs/vit --out runs/vit-texts

MODEL: a preset (world-vit, world-swin, world-ssl, world-clip, world-spurious, ...), timm:NAME,
open_clip:NAME[:TAG] or hf:FOLDER (a Hugging Face save_pretrained folder). Images are resized and
cropped once, as the model's library does it for evaluation (timm's crop_pct and interpolation,
open_clip's preprocess, the folder's preprocessor_config.json); run.json records the steps. DATA: an image folder (flat, or one subfolder per class), a Waterbirds-layout
folder (metadata.csv), or world:N[:SEED]. Killed runs continue where they stopped when the same
command is run again (shards are checked against their checksums, images against their contents);
a different model, granularity or preprocessing into the same folder is refused, and a second
process writing the same folder waits for the first. The same command also recomputes the shards
fxdecomp verify finds damaged or missing.

--readout SPEC stores every contribution read through a [D, K] readout: K numbers per component
instead of the output's width (a DeiT-B token run: 16 instead of 768), exactly the full run's
contributions @ R. SPEC: FILE.safetensors (one tensor, or the key R) or FILE.pt holding R;
classes (the model's own classifier rows, columns named by class when known; refused for a model
without a classifier); texts:FILE (one description per line) with --clip and --aligner RUN (an
aligned head-granularity run of the same model: each component read through its CompAlign map
and the texts' embeddings). The run records the readout and its hash; resuming it with another
readout is refused. fxdecomp heatmap, segment and verify read such runs; align, retrieve,
spurious and explain need the full width and refuse them. --group token sums the components at
compile time into one per image position (what fxdecomp segment reads); it combines with
--readout."""


def add(sub) -> None:
    p = sub.add_parser("decompose", help=HELP, description=HELP, epilog=EPILOG, formatter_class=formatter)
    p.add_argument("model", help="preset, timm:NAME, open_clip:NAME[:TAG] or hf:FOLDER")
    p.add_argument("data", help="image folder, Waterbirds-layout folder or world:N[:SEED]")
    p.add_argument("--out", required=True, help="the run folder to write (or to resume)")
    p.add_argument("--granularity", choices=("block", "head", "token", "neuron"), default="head",
                   help="neuron: attention per head, every MLP per hidden unit (default: head)")
    p.add_argument("--fine-layers", type=at_least(0), nargs="+", metavar="LAYER",
                   help="split at --granularity head, token or neuron only in these layers, the others by block "
                        "(default: every layer)")
    renamed(p, "--layers", "--fine-layers", dest="fine_layers", type=at_least(0), nargs="+", metavar="LAYER")
    p.add_argument("--batch", type=positive(), default=64, help="images per batch (default: 64)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--shard-mb", type=positive(float), default=256, help="largest shard size in MB (default: 256)")
    p.add_argument("--workers", type=at_least(0), default=min(8, os.cpu_count() or 1),
                   help="DataLoader processes decoding images (default: up to 8)")
    p.add_argument("--size", type=positive(), default=None,
                   help="folders: first bring images to this square size (short side, bicubic, centre crop), "
                        "before the model's own resize and crop (default: none, the files as they are)")
    p.add_argument("--group", choices=GROUPINGS,
                   help="sum the components at compile time, one per group (token: one per image position, what "
                        "fxdecomp segment reads; default: none)")
    p.add_argument("--readout", metavar="SPEC",
                   help="store every contribution read through a readout, [N, C, K] instead of the output's width: "
                        "FILE.safetensors or FILE.pt (a [D, K] matrix), classes (the model's classifier rows), or "
                        "texts:FILE (one description per line, with --clip and --aligner)")
    p.add_argument("--clip", help="with --readout texts:FILE: the CLIP that embeds the texts (the aligner's)")
    p.add_argument("--clip-checkpoint", help="with --clip: local weights of that CLIP")
    p.add_argument("--aligner", metavar="RUN",
                   help="with --readout texts:FILE: an aligned head-granularity run of the same model, whose "
                        "CompAlign maps read the texts")
    add_model_args(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..data import open_data
    from ..errors import InputError
    from ..store import decompose_to_store
    from ..store.build import check_options
    from .distributed import process_group
    from .readout_spec import check_spec as check_readout, resolve

    # everything that can be checked without the model, before it is loaded and compiled
    if args.fine_layers is not None and args.granularity == "block":
        raise InputError("--fine-layers splits those layers finer than blocks, so it has no effect with "
                         "--granularity block: drop --fine-layers, or choose --granularity head, token or neuron")
    if args.num_classes is not None:
        check_num_classes(args.model)
    check_weights(args.model, args)
    check_readout(args.readout, args)
    check_options(dtype=args.dtype, batch=args.batch, shard_mb=args.shard_mb, workers=args.workers)
    writable_folder(args.out)
    device = device_of(args.device)
    with process_group(device):
        model = load_model(args.model, args)
        data = open_data(args.data, size=args.size)  # the model's own resize and crop comes once, in the loader
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        readout = resolve(args.readout, model, args.model, args) if args.readout is not None else None
        done = decompose_to_store(model, data, args.out, model_name=args.model, checkpoint=args.checkpoint,
                                  granularity=args.granularity, layers=args.fine_layers, batch=args.batch, device=device,
                                  dtype=args.dtype, shard_mb=args.shard_mb, workers=args.workers,
                                  command=recorded_command(args), group=args.group,
                                  readout=None if readout is None else readout.matrix,
                                  readout_spec=None if readout is None else readout.spec,
                                  readout_names=None if readout is None else readout.names)
        if rank == 0:
            from ..store import open_run

            r = open_run(args.out)
            rec = r.manifest["reconstruction"]
            line = (f"{r}: wrote {done.written} shards ({done.images} images, {done.images_per_s:.1f} images/s), "
                    f"{done.skipped} were already complete; reconstruction max relative error "
                    f"{rec['max_relative_error']:.2e}")
            if rec.get("max_relative_error_vs_float32") is not None:
                line += f" ({args.dtype}; against a float32 forward: {rec['max_relative_error_vs_float32']:.2e})"
            if done.repaired:
                line += f"; recomputed {len(done.repaired)} damaged shard(s): {done.repaired[:10]}"
            print(line)
    return 0


def recorded_command(args) -> list[str]:
    """The command a run records: what decides its numbers, with absolute paths and ``{run}`` for the
    folder, so that it repairs the run from anywhere (devices and workers are left to the one who runs it)."""
    from pathlib import Path

    from ..store.verify import RUN_PLACEHOLDER

    data = args.data if args.data.startswith("world:") else str(Path(args.data).resolve())
    cmd = ["fxdecomp", "decompose", args.model, data, "--out", RUN_PLACEHOLDER, "--granularity", args.granularity,
           "--batch", str(args.batch), "--dtype", args.dtype, "--shard-mb", repr(args.shard_mb)]
    if args.fine_layers is not None:
        cmd += ["--fine-layers", *map(str, args.fine_layers)]
    if args.size is not None:
        cmd += ["--size", str(args.size)]
    if args.checkpoint is not None:
        cmd += ["--checkpoint", str(Path(args.checkpoint).resolve())]
    if args.pretrained:
        cmd.append("--pretrained")
    if args.num_classes is not None:
        cmd += ["--num-classes", str(args.num_classes)]
    if args.random_weights:
        cmd.append("--random-weights")
    if args.group is not None:
        cmd += ["--group", args.group]
    if args.readout is not None:
        spec = args.readout
        if spec.startswith("texts:"):
            spec = "texts:" + str(Path(spec[len("texts:"):]).resolve())
        elif spec != "classes":
            spec = str(Path(spec).resolve())
        cmd += ["--readout", spec]
        if args.clip is not None:
            cmd += ["--clip", args.clip, "--aligner", str(Path(args.aligner).resolve())]
        if args.clip_checkpoint is not None:
            cmd += ["--clip-checkpoint", str(Path(args.clip_checkpoint).resolve())]
    return cmd
