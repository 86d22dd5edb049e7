"""Speed and memory of a decomposing forward against the plain forward, measured in one run.

    python benchmarks/decompose_speed.py                      # deit_base_patch16_224, CPU (+ GPU if present)
    python benchmarks/decompose_speed.py --device cuda --batches 64
    python benchmarks/decompose_speed.py --device cuda --batches 1 8 --granularities head --cuda-graphs
    python benchmarks/decompose_speed.py --device cpu --batches 1 2 8 --granularities head neuron

For every (device, batch, granularity) it times the model's own forward and the
decomposing forward alternately (median of --repeats), and reports the ratio,
decomposed images/s, the contributions' size per image and peak memory of each
(GPU: allocator peak; CPU: the process's peak RSS, reset before each
measurement). Weights are random: speed does not depend on them. Its targets are
checked at the end. Neuron granularity at full width is [B, 37035, 768] on DeiT-B
(108 MB per image in float32); its 1.5x target (all 12 layers) is for a compiled
readout of K = 16 columns, so none is checked here.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from fxdecomp.peak_memory import peak_rss_mb, reset_peak_rss

TARGETS = {("cpu", "head"): 1.5, ("cuda", "head"): 1.3}
#: small batches on CUDA (head granularity), where kernel launches dominate: batch -> ratio
SMALL_BATCH_TARGETS = {1: 1.5, 8: 1.2}


class Meter:
    def __init__(self, device: torch.device):
        self.device = device

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset(self):
        self.sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss()

    def peak_mb(self) -> float:
        self.sync()
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return peak_rss_mb()


def bench(model_name: str, device: torch.device, batch: int, granularity: str, repeats: int, seed: int = 0,
          cuda_graphs: bool = False) -> dict:
    import timm

    import fxdecomp

    torch.manual_seed(seed)  # weights and input
    model = timm.create_model(model_name, pretrained=False, num_classes=0).eval().to(device)
    t0 = time.perf_counter()
    dm = fxdecomp.decompose(model, granularity)
    compile_s = time.perf_counter() - t0
    if cuda_graphs and device.type == "cuda":
        dm.cuda_graphs()  # one graph per batch size, captured in the warm-up below
    x = torch.randn(batch, *dm.input_shape, device=device)
    meter = Meter(device)
    with torch.inference_mode():
        for _ in range(2):  # warm-up (allocator, kernels)
            model(x)
            dm(x)
        plain, decomposed = [], []
        for _ in range(repeats):
            meter.sync()
            t = time.perf_counter()
            ref = model(x)
            meter.sync()
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            out = dm(x)
            meter.sync()
            decomposed.append(time.perf_counter() - t)
            del out
        meter.reset()
        ref = model(x)
        plain_peak = meter.peak_mb()
        del ref
        meter.reset()
        out = dm(x)
        dec_peak = meter.peak_mb()
        err = out.error()
        n_components = len(out)
        mb_per_image = out.contributions[0].numel() * out.contributions.element_size() / 2**20
        del out
    tp, td = statistics.median(plain), statistics.median(decomposed)
    return dict(model=model_name, device=str(device), batch=batch, granularity=granularity,
                components=n_components, compile_s=round(compile_s, 2), plain_s=tp, decomposed_s=td,
                ratio=td / tp, images_per_s=batch / td, contributions_mb_per_image=mb_per_image,
                plain_peak_mb=plain_peak, decomposed_peak_mb=dec_peak,
                rel_error=err, cuda_graphs=bool(cuda_graphs and device.type == "cuda"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deit_base_patch16_224")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CPU, and CUDA too when available")
    p.add_argument("--batches", type=int, nargs="+", default=None,
                   help="default: 8 32 on CPU, 8 32 64 on GPU")
    p.add_argument("--granularities", nargs="+", default=["block", "head", "token"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.add_argument("--seed", type=int, default=0, help="random weights and input images")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="on CUDA, replay the decomposing forward as CUDA graphs (dm.cuda_graphs())")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "auto" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    if args.device == "cuda" and not devices:
        print("no CUDA device available", file=sys.stderr)
        return 1
    rows = []
    header = (f"{'device':6s} {'batch':>5s} {'granularity':11s} {'C':>6s} {'plain s':>8s} {'decomp s':>8s} "
              f"{'ratio':>6s} {'img/s':>7s} {'MB/img':>7s} {'plain MB':>9s} {'decomp MB':>9s} {'rel err':>8s}")
    print(f"model: {args.model} (random weights); torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(header)
    print("-" * len(header))
    for dev in devices:
        batches = args.batches or ([8, 32] if dev == "cpu" else [8, 32, 64])
        for b in batches:
            for g in args.granularities:
                r = bench(args.model, torch.device(dev), b, g, args.repeats, args.seed, args.cuda_graphs)
                rows.append(r)
                print(f"{dev:6s} {b:5d} {g:11s} {r['components']:6d} {r['plain_s']:8.4f} {r['decomposed_s']:8.4f} "
                      f"{r['ratio']:6.2f} {r['images_per_s']:7.1f} {r['contributions_mb_per_image']:7.1f} "
                      f"{r['plain_peak_mb']:9.0f} "
                      f"{r['decomposed_peak_mb']:9.0f} {r['rel_error']:8.1e}", flush=True)
    print()
    for (dev, g), target in TARGETS.items():
        hits = [r for r in rows if r["device"].startswith(dev) and r["granularity"] == g]
        if dev == "cuda":
            hits = [r for r in hits if r["batch"] == 64] or hits
        for r in hits:
            verdict = "meets" if r["ratio"] <= target else "MISSES"
            print(f"target {dev} {g} batch {r['batch']}: ratio {r['ratio']:.2f} {verdict} <= {target}")
    for r in rows:
        target = SMALL_BATCH_TARGETS.get(r["batch"])
        if r["device"].startswith("cuda") and r["granularity"] == "head" and target is not None:
            verdict = "meets" if r["ratio"] <= target else "MISSES"
            how = "CUDA graphs" if r["cuda_graphs"] else "eager"
            print(f"target cuda head small batch {r['batch']} ({how}): ratio {r['ratio']:.2f} {verdict} <= {target}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
