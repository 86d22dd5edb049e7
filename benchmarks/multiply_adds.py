"""The multiply-adds of the decomposed forward against the model's own: the floor under its time.

    python benchmarks/multiply_adds.py                      # open_clip RN50/RN101, MobileCLIP-S1/S2, MobileCLIP2-S0, ViT-B-16
    python benchmarks/multiply_adds.py --names open_clip:RN50 timm:resnet50d --json macs.json --seed 0

Counted by ``torch.utils.flop_counter`` (matrix products and convolutions; elementwise ops are
not counted) at head granularity on two images, the model's own as ``torch.export`` traces it (the
ops the decomposed graph runs for the model's forward: eager PyTorch takes fused paths the counter
does not see, such as ``nn.MultiheadAttention``'s), linearised where a nonlinearity on the stream
needs it (as ``coverage.py`` compiles). Where the ratio is over 2, no schedule of these
operations meets the 2x forward target of ``coverage.py``: only fewer multiplications would.
With ``--time`` the decomposed forward is also timed against the model's at batch 8 on one
thread (the best of three calls each). Peak memory is the process's peak resident size while
each model is counted. Weights are random (``--seed`` draws them and the images): the count does
not depend on them.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT = ("open_clip:RN50", "open_clip:RN101", "open_clip:MobileCLIP-S1", "open_clip:MobileCLIP-S2",
           "open_clip:MobileCLIP2-S0", "open_clip:ViT-B-16")


def _flops(fn, x) -> tuple[int, dict]:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as count:
        fn(x)
    by_op = {str(op).split(".")[1] if "." in str(op) else str(op): n
             for op, n in count.get_flop_counts().get("Global", {}).items()}
    return count.get_total_flops(), by_op


def measure(name: str, seed: int, timed: bool) -> dict:
    import coverage

    import fxdecomp
    from fxdecomp.models_registry import input_size_of
    from fxdecomp.passes.trace import trace
    from fxdecomp.peak_memory import peak_rss_mb, reset_peak_rss, trim_heap

    library, arch = name.split(":", 1)
    trim_heap()
    reset_peak_rss()
    model = coverage.build(library, arch, {}, seed)
    shape = input_size_of(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", fxdecomp.CollapseWarning)
        dm = fxdecomp.decompose(model, "head", input_size=shape)
    linearised = any(issubclass(w.category, fxdecomp.CollapseWarning) for w in caught)
    if linearised:
        dm = fxdecomp.decompose(model, "head", input_size=shape, linearize=True)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1 + 1000 * seed))
    with torch.no_grad():
        dm(x)  # the weight products, made once, are not the forward's work
        plain, _ = _flops(trace(model, x)[0], x)  # the ops the decomposed graph runs as the model's forward
        decomposed, by_op = _flops(dm, x)
        row = {"name": name, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
               "components": len(dm.components), "linearised": linearised,
               "model_gmac": round(plain / 2 / 2e9, 3), "decomposed_gmac": round(decomposed / 2 / 2e9, 3),
               "ratio": round(decomposed / plain, 3),
               "share": {op: round(n / decomposed, 3) for op, n in sorted(by_op.items(), key=lambda kv: -kv[1])}}
        if timed:
            torch.set_num_threads(1)
            xb = torch.randn(8, *shape, generator=torch.Generator().manual_seed(2 + 1000 * seed))
            t_model = coverage._time(model, xb, budget=float("inf"), most=3)  # the best of three
            t_dm = coverage._time(dm, xb, budget=float("inf"), most=3)
            row.update(model_s=round(t_model, 3), decomposed_s=round(t_dm, 3), time_ratio=round(t_dm / t_model, 2))
    row["peak_mb"] = round(peak_rss_mb())
    return row


def line(row: dict) -> str:
    share = ", ".join(f"{op} {v:.2f}" for op, v in row["share"].items())
    timing = f"  time {row['time_ratio']:.2f}x ({row['decomposed_s']:.2f} s / {row['model_s']:.2f} s)" if "time_ratio" in row else ""
    return (f"{row['name']:<28} {row['components']:>4} comp  model {row['model_gmac']:7.2f} GMAC/img  "
            f"decomposed {row['decomposed_gmac']:7.2f}  ratio {row['ratio']:.2f}{timing}  peak {row['peak_mb']} MB"
            f"{'  (linearised)' if row['linearised'] else ''}  [{share}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--names", nargs="+", default=list(DEFAULT), help="library:architecture (open_clip, timm)")
    ap.add_argument("--time", action="store_true", help="also time both forwards at batch 8 on one thread")
    ap.add_argument("--seed", type=int, default=0, help="draws the random weights and images")
    ap.add_argument("--json", type=Path, help="write every printed figure here")
    args = ap.parse_args()
    rows = []
    for name in args.names:
        if ":" not in name:
            ap.error(f"{name!r}: name a tower as library:architecture, e.g. open_clip:RN50 or timm:resnet50d")
        row = measure(name, args.seed, args.time)
        print(line(row), flush=True)
        rows.append(row)
    over = [r["name"] for r in rows if r["ratio"] > 2]
    print(f"{len(over)} of {len(rows)} need over 2x the model's multiply-adds" + (f": {', '.join(over)}" if over else ""))
    if args.json:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps({"seed": args.seed, "rows": rows}, indent=1))
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
