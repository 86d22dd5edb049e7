"""What the weight-fingerprint check costs the decomposing forward, measured in one run.

    python benchmarks/weight_check_speed.py                   # deit_base_patch16_224, head, batch 8, CPU
    python benchmarks/weight_check_speed.py --device cuda --batch 64

The kept products of weights alone (the hoist pass) are recomputed when a weight changes; a change
through ``w.data`` moves no version counter, so every inference call takes a fingerprint of each
weight. This times the same compiled module with the check and with it skipped (the module's own
fingerprints handed back), alternating, and prints the ratio of the medians, the median of the
per-round ratios, the fingerprint alone, and peak memory. Weights and images are random.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from fxdecomp.peak_memory import peak_rss_mb


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deit_base_patch16_224")
    p.add_argument("--granularity", default="head", choices=("block", "head", "token"))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="random weights and images")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    import timm

    import fxdecomp
    from fxdecomp.passes.hoist import SUBMODULE, _fetch
    from fxdecomp.weight_products import WeightProducts

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(args.seed)
    model = timm.create_model(args.model, pretrained=False, num_classes=0).eval().to(device)
    dm = fxdecomp.decompose(model, args.granularity)
    x = torch.randn(args.batch, *dm.input_shape, device=device)
    products = getattr(dm.graph_module, SUBMODULE)
    real = WeightProducts._fingerprints

    def skipped(self, weights):  # the check left out: the fingerprints the module holds
        return self._prints if self._prints is not None else real(self, weights)

    computed = [0]
    compute = products._compute
    products._compute = lambda w: computed.__setitem__(0, computed[0] + 1) or compute(w)
    times = {"with": [], "without": []}
    try:
        with torch.inference_mode():
            for mode in ("with", "without"):  # warm-up
                WeightProducts._fingerprints = real if mode == "with" else skipped
                dm(x)
            for r in range(args.rounds):
                for mode in (("with", "without") if r % 2 == 0 else ("without", "with")):
                    WeightProducts._fingerprints = real if mode == "with" else skipped
                    sync()
                    t = time.perf_counter()
                    dm(x)
                    sync()
                    times[mode].append(time.perf_counter() - t)
            WeightProducts._fingerprints = real
            (call,) = [n for n in dm.graph_module.graph.nodes if n.op == "call_module" and n.target == SUBMODULE]
            leaves = [_fetch(dm.graph_module, a.target) for a in call.args]
            alone = []
            for _ in range(15):
                sync()
                t = time.perf_counter()
                products._fingerprints(leaves)
                sync()
                alone.append(time.perf_counter() - t)
    finally:
        WeightProducts._fingerprints = real
    w, wo = statistics.median(times["with"]), statistics.median(times["without"])
    pairs = [a / b for a, b in zip(times["with"], times["without"])]
    res = {"model": args.model, "granularity": args.granularity, "batch": args.batch, "device": str(device),
           "threads": torch.get_num_threads(), "rounds": args.rounds, "with_s": w, "without_s": wo,
           "ratio_of_medians": w / wo, "median_round_ratio": statistics.median(pairs),
           "fingerprint_s": statistics.median(alone), "weights": len(leaves),
           "values": sum(t.numel() for t in leaves), "products_computed": computed[0],
           "peak_host_mb": peak_rss_mb()}
    print(f"{args.model}, {args.granularity} granularity, batch {args.batch}, {device} ({res['threads']} threads), "
          f"{args.rounds} rounds alternating")
    print(f"decomposing forward with the check:    {w:.4f} s (median)")
    print(f"decomposing forward without the check: {wo:.4f} s (median)")
    print(f"ratio {w / wo:.4f} (median of the per-round ratios {res['median_round_ratio']:.4f})")
    print(f"the fingerprint alone: {res['fingerprint_s'] * 1000:.1f} ms for {len(leaves)} weights "
          f"({res['values'] / 1e6:.1f} M values), {res['fingerprint_s'] / wo:.2%} of the forward")
    print(f"products computed {computed[0]} time(s) (1: the check never recomputed them needlessly)")
    print(f"peak host memory {res['peak_host_mb']:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
