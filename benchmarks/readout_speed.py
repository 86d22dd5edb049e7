"""Readouts and sums compiled in, against the plain forward and the full-width decomposition.

    python benchmarks/readout_speed.py                       # DeiT-B batch 8 + ViT-L/14 batch 2, CPU
    python benchmarks/readout_speed.py --only deit --json readout.json --seed 0
    python benchmarks/readout_speed.py --only deit --granularity neuron   # the neuron case alone

For each case (model, granularity, readout width K or full width, group=) it times the model's
own forward and the decomposing forward alternately in one run (median of --repeats), and
reports their ratio, the contributions' size per image, and the peak memory of each forward
(CUDA: the allocator's peak; CPU: the process's peak RSS, reset before each, and what it rose
above the resident size before the call). Each case runs in a fresh process, its plain forward
measured before anything is compiled, freed memory handed back to the system before each
measurement (``malloc_trim``): otherwise one case's retained heap is the next one's peak.
Weights are random (timm, open_clip): speed and memory do not depend on them. The targets are
checked at the end.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import torch

from fxdecomp.peak_memory import DeviceMeter

#: (model, granularity, K, group) -> (ratio at most, contributions MB per image at most, peak ÷ plain at most)
TARGETS = {
    ("deit_base_patch16_224", "token", 16, None): (1.15, 2.0, 1.5),
    ("deit_base_patch16_224", "token", 16, "token"): (1.10, None, None),
}


def _deit(seed):
    import timm
    torch.manual_seed(seed)
    return timm.create_model("deit_base_patch16_224", pretrained=False, num_classes=0).eval()


def _vit_l14(seed):
    import open_clip
    torch.manual_seed(seed)
    return open_clip.create_model("ViT-L-14", pretrained=None).visual.eval()


MODELS = {"deit_base_patch16_224": (_deit, 8), "ViT-L-14": (_vit_l14, 2)}


def bench(name, device, batch, granularity, k, group, repeats, seed) -> dict:
    import fxdecomp

    device = torch.device(device)
    build, _ = MODELS[name]
    model = build(seed).to(device)
    x = torch.randn(batch, *fxdecomp.models_registry.input_size_of(model),
                    generator=torch.Generator().manual_seed(seed)).to(device)
    meter = DeviceMeter(device)
    with torch.inference_mode():
        d = model(x[:1]).shape[-1]
        model(x)
        plain_peak, plain_rise = meter.peak(lambda: model(x))  # before anything is compiled
    r = None if k is None else torch.randn(d, k, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    t0 = time.perf_counter()
    dm = fxdecomp.decompose(model, granularity, readout=r, group=group)
    compile_s = time.perf_counter() - t0
    with torch.inference_mode():
        dm(x)  # warm-up (weight products)
        dec_peak, dec_rise = meter.peak(lambda: dm(x))
        for _ in range(2):  # warm-up (allocator, kernels)
            model(x)
            dm(x)
        plain, decomposed = [], []
        for _ in range(repeats):  # alternating, so load from elsewhere hits both alike
            meter.sync()
            t = time.perf_counter()
            model(x)
            meter.sync()
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            out = dm(x)
            meter.sync()
            decomposed.append(time.perf_counter() - t)
            del out
        out = dm(x)
        err = out.error()
        mb = out.contributions.numel() * out.contributions.element_size() / 2**20 / batch
        n = len(out)
        del out
    del dm
    tp, td = statistics.median(plain), statistics.median(decomposed)
    return dict(model=name, device=str(device), batch=batch, granularity=granularity, k=k, group=group,
                components=n, compile_s=round(compile_s, 1), plain_s=tp, decomposed_s=td, ratio=td / tp,
                contributions_mb_per_image=mb, plain_peak_mb=plain_peak, decomposed_peak_mb=dec_peak,
                plain_rise_mb=plain_rise, decomposed_rise_mb=dec_rise, rel_error=err)


def cases(only):
    """The targets' cases first (a run on a loaded machine may be cut short), then the table's."""
    deit = "deit_base_patch16_224"
    out = []
    if only in (None, "deit"):
        out += [(deit, "token", 16, None), (deit, "token", None, None), (deit, "token", 16, "token")]
        out += [(deit, g, kk, None) for g in ("head", "block") for kk in (16, None)]
        out += [(deit, "token", None, "token"), (deit, "neuron", 16, None)]
    if only in (None, "vitl"):
        out += [("ViT-L-14", "token", 16, None), ("ViT-L-14", "token", 16, "token"), ("ViT-L-14", "head", 16, None),
                ("ViT-L-14", "head", None, None), ("ViT-L-14", "block", 16, None), ("ViT-L-14", "block", None, None),
                ("ViT-L-14", "neuron", 16, None)]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--only", choices=["deit", "vitl"], default=None, help="one model's cases only")
    p.add_argument("--granularity", choices=["block", "head", "token", "neuron"], default=None,
                   help="only the cases of this granularity")
    p.add_argument("--first", type=int, default=None, help="only the first N of the cases (targets' cases first)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="random weights and input images")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device available", file=sys.stderr)
        return 1
    device = args.device
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {device}, seed {args.seed}")
    head = (f"{'model':22s} {'B':>2s} {'gran':5s} {'K':>4s} {'group':5s} {'C':>6s} {'ratio':>6s} {'MB/img':>7s} "
            f"{'peak MB':>8s} {'plain MB':>8s} {'rise MB':>8s} {'plain rise':>10s} {'rel err':>8s} {'compile s':>9s}")
    print(head + "\n" + "-" * len(head))
    rows = []
    spawn = multiprocessing.get_context("spawn")
    chosen = [c for c in cases(args.only) if args.granularity in (None, c[1])]
    for name, g, k, group in chosen[:args.first]:
        batch = MODELS[name][1]
        with spawn.Pool(1) as pool:  # a fresh process: its peak memory is its own
            r = pool.apply(bench, (name, args.device, batch, g, k, group, args.repeats, args.seed))
        rows.append(r)
        print(f"{name:22s} {batch:2d} {g:5s} {str(k or 'D'):>4s} {str(group or '-'):5s} {r['components']:6d} "
              f"{r['ratio']:6.2f} {r['contributions_mb_per_image']:7.2f} {r['decomposed_peak_mb']:8.0f} "
              f"{r['plain_peak_mb']:8.0f} {r['decomposed_rise_mb']:8.0f} {r['plain_rise_mb']:10.0f} "
              f"{r['rel_error']:8.1e} {r['compile_s']:9.1f}", flush=True)
        if args.json:  # written as it goes: a long run interrupted keeps what it measured
            args.json.write_text(json.dumps(rows, indent=2))
    print()
    for (name, g, k, group), (ratio, mb, peak) in TARGETS.items():
        for r in rows:
            if (r["model"], r["granularity"], r["k"], r["group"]) != (name, g, k, group):
                continue
            checks = [("ratio", r["ratio"], ratio), ("MB/image", r["contributions_mb_per_image"], mb),
                      ("peak / plain peak", r["decomposed_peak_mb"] / r["plain_peak_mb"], peak)]
            for what, got, want in checks:
                if want is not None:
                    verdict = "meets" if got <= want else "MISSES"
                    print(f"target {name} {g} K={k} group={group}: {what} {got:.2f} {verdict} <= {want}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
