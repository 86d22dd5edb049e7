"""``fxdecomp segment RUN``: zero-shot segmentation maps from a token-granularity run."""
from __future__ import annotations

from .common import at_least, formatter, positive

HELP = "segment every image of a token-granularity run from its position maps (scored where masks are known)"
EPILOG = """examples:
  fxdecomp decompose world-vit world:300 --granularity token --out runs/vit-tokens
  fxdecomp segment runs/vit-tokens

Each image's map is the size of every position's direct contribution (over all heads and layers,
or --layers), thresholded at its mean. Writes RUN/segment/maps.safetensors (maps and masks) and
RUN/segment/examples.png; for world runs, whose object masks are known, prints pixel accuracy,
mIoU and mAP."""


def add(sub) -> None:
    p = sub.add_parser("segment", help=HELP, description=HELP, epilog=EPILOG, formatter_class=formatter)
    p.add_argument("run", help="a run decomposed at token granularity")
    p.add_argument("--layers", type=at_least(0), nargs="+", help="read only the tokens of these layers (default: every "
                                                                  "layer)")
    p.add_argument("--examples", type=positive(), default=6, help="images in the figure (default: 6)")
    p.set_defaults(handler=run)


def run(args) -> int:
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from ..segment import position_maps, segmentation_figure, segmentation_scores
    from ..segment.metrics import foreground
    from ..store import open_run
    from ..store.files import publish, tmp_path
    from ..store.lock import RunLock

    r = open_run(args.run)
    data = r.data()
    size = tuple(data[0]["image"].shape[-2:])
    maps = []
    for _, _, dec in r.decompositions():
        maps.append(position_maps(dec, size=size, layers=args.layers).float())
    maps = torch.cat(maps)
    _, masks = foreground(maps, size)
    folder = r.path / "segment"
    n = min(args.examples, r.n)
    pictures = np.stack([data[i]["image"].permute(1, 2, 0).numpy() for i in range(n)])
    world = data.masks() if hasattr(data, "masks") else None  # rendered once: the world's exact masks
    truth = world[:n] if world is not None else masks[:n].numpy()
    path = folder / "maps.safetensors"
    with RunLock(r.path, what="segment"):
        folder.mkdir(exist_ok=True)
        tmp = tmp_path(path)
        save_file({"maps": maps.contiguous(), "masks": masks.to(torch.uint8).contiguous()}, str(tmp))
        publish(tmp, path)
        figure = folder / "examples.png"
        tmp = tmp_path(figure, keep_suffix=True)
        segmentation_figure(pictures, truth, {"decompose": maps[:n]}, n=n, path=tmp,
                            title=f"{r.model_name}: position maps and their foreground")
        publish(tmp, figure)
    print(f"wrote {path} ({r.n} maps and masks) and {folder / 'examples.png'}")
    if world is not None:
        s = segmentation_scores(maps, world)
        print(f"against the world's object masks: pixel accuracy {s['pixel_acc']:.3f}, mIoU {s['miou']:.3f}, "
              f"mAP {s['map']:.3f}")
    return 0
