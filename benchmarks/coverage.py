"""Which architectures decompose exactly: a table over timm and open_clip models.

    python benchmarks/coverage.py                    # the whole list, 2 at a time
    python benchmarks/coverage.py --only swin maxvit  # names containing any of these
    python benchmarks/coverage.py --out coverage.md   # also write the table to a file

Every architecture is built with random weights (every parameter and BatchNorm
statistic perturbed, so zero-initialised biases and unit norm weights cannot
hide mistakes), compiled at every granularity, and run on a batch of two random
images in float32; the finest granularity that compiled is also checked in
float64. A row is *exact* when every granularity compiled, float32 relative
error ≤ 1e-5, float64 ≤ 1e-10, and nothing collapsed (a collapse is retried with
``linearize=True`` and marked; such a row still counts as exact, with its
linearised ops named). Each architecture runs in its own process with a time
limit, so a crash or a hang is a row with its reason, never a missing row.
Compile time is a column of its own with a target (``COMPILE_TARGET_S`` per
granularity; a time over it is marked ``!``). The last lines printed are
"N of M compile within T s" and "N of M exact".
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

F32, F64 = 1e-5, 1e-10
GRANULARITIES = ("block", "head", "token")
#: seconds one compilation (one granularity, linearised where it had to be) may take
COMPILE_TARGET_S = 30.0

def timm_(arch: str, **kwargs) -> tuple:
    return (arch, "timm", arch, kwargs)


def open_clip_(arch: str) -> tuple:
    return (f"open_clip {arch}", "open_clip", arch, {})


#: (name, library, architecture, keyword arguments). Image sizes are reduced where
#: the architecture allows it (``img_size``, or ``input_size`` for CNNs, which take any
#: size), to keep the run short; the graph is the same.
ARCHITECTURES = [
    # plain ViTs and their training recipes
    timm_("vit_tiny_patch16_224", img_size=64),
    timm_("vit_base_patch16_224", img_size=64),
    timm_("vit_base_patch32_clip_224", img_size=64),
    timm_("vit_medium_patch16_gap_256", img_size=64),
    timm_("vit_little_patch16_reg4_gap_256", img_size=64),
    timm_("vit_relpos_small_patch16_224", img_size=64),
    timm_("vit_srelpos_small_patch16_224", img_size=64),
    timm_("flexivit_small", img_size=64),
    timm_("deit_small_patch16_224", img_size=64),
    timm_("deit_base_distilled_patch16_224", img_size=64),
    timm_("deit_tiny_distilled_patch16_224", img_size=64),
    timm_("deit3_small_patch16_224", img_size=64),
    timm_("vit_base_patch16_224.dino", img_size=64),
    timm_("vit_small_patch14_dinov2", img_size=56),
    timm_("vit_small_patch14_reg4_dinov2", img_size=56),
    # relative positions, rotary embeddings, gated MLPs, late class tokens
    timm_("beit_base_patch16_224", img_size=64),
    timm_("beitv2_base_patch16_224", img_size=64),
    timm_("eva02_tiny_patch14_224", img_size=56),
    timm_("eva02_small_patch14_224", img_size=56),
    timm_("vit_betwixt_patch16_rope_reg4_gap_256", img_size=64),
    timm_("cait_xxs24_224", img_size=64),
    timm_("cait_s24_224", img_size=64),
    timm_("xcit_nano_12_p16_224", img_size=64),
    timm_("xcit_tiny_12_p16_224", img_size=64),
    # hierarchical transformers
    timm_("swin_tiny_patch4_window7_224"),
    timm_("swin_base_patch4_window7_224"),
    timm_("swinv2_tiny_window8_256"),
    timm_("maxvit_tiny_tf_224"),
    timm_("maxvit_small_tf_224"),
    timm_("maxxvit_rmlp_nano_rw_256"),
    timm_("coatnet_0_rw_224"),
    timm_("pit_ti_224"),
    timm_("pit_s_224"),
    timm_("pit_s_distilled_224"),
    timm_("twins_svt_small"),
    timm_("pvt_v2_b0"),
    timm_("davit_tiny"),
    timm_("tiny_vit_5m_224"),
    timm_("levit_128s"),
    timm_("crossvit_tiny_240"),
    timm_("tnt_s_patch16_224", img_size=64, input_size=64),
    timm_("coat_tiny"),
    timm_("fastvit_t8", input_size=128),
    # MLP mixers
    timm_("mixer_b16_224", img_size=64),
    timm_("resmlp_12_224", img_size=64),
    timm_("gmlp_s16_224", img_size=64),
    # residual CNNs
    timm_("resnet18", input_size=112),
    timm_("resnet50", input_size=112),
    timm_("convnext_nano", input_size=112),
    timm_("convnext_tiny", input_size=112),
    timm_("regnety_002", input_size=112),
    timm_("efficientnet_b0", input_size=112),
    timm_("poolformer_s12", input_size=112),
    # CLIP image towers
    open_clip_("ViT-B-32"),
    open_clip_("ViT-B-16"),
    open_clip_("ViT-L-14"),
]


def build(library: str, arch: str, kwargs: dict, seed: int = 0):
    import torch

    from fxdecomp.models_registry import perturb_

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if library == "timm":
            import timm

            model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
        else:
            import open_clip

            model = open_clip.create_model(arch, pretrained=None, **kwargs).visual
    return perturb_(model.eval(), scale=0.02)


def measure(library: str, arch: str, kwargs: dict, report=lambda row: None, seed: int = 0) -> dict:
    """One architecture, in this process: a row of the table. ``report`` sees the row as
    it grows (before each step, with ``running`` naming it), so a process killed midway
    still leaves what it measured."""
    import copy

    import torch

    import fxdecomp
    from fxdecomp.models_registry import input_size_of

    kwargs = dict(kwargs)
    size = kwargs.pop("input_size", None)  # CNNs take any image size
    row = {"traced": False, "exact": [], "components": {}, "compile_s": {}, "err32": {}, "err64": None,
           "linearised": [], "collapsed": False, "reason": ""}
    model = build(library, arch, kwargs, seed)
    shape = (3, size, size) if size else input_size_of(model)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1 + 1000 * seed))
    with torch.no_grad():
        ref = model(x)
    finest = None
    for g in GRANULARITIES:
        row["running"] = g
        report(row)
        try:
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", fxdecomp.CollapseWarning)
                dm = fxdecomp.decompose(model, g, input_size=shape)
            if any(issubclass(w.category, fxdecomp.CollapseWarning) for w in caught):
                row["collapsed"] = True
                t0 = time.perf_counter()  # the compilation that counts is the linearised one
                dm = fxdecomp.decompose(model, g, input_size=shape, linearize=True)
            row["compile_s"][g] = round(time.perf_counter() - t0, 1)
            row["traced"] = True
            row["linearised"] = sorted(set(row["linearised"]) | set(getattr(dm, "linearised", ())))
            with torch.no_grad():
                err = _rel(dm(x).total(), ref)
            row["components"][g] = len(dm.components)
            row["err32"][g] = err
            if err <= F32:
                row["exact"].append(g)
                finest = g
            elif not row["reason"]:
                row["reason"] = f"{g}: float32 relative error {err:.2g}"
            del dm
        except Exception as err:  # recorded in the table: the point is to see every failure
            if not row["reason"]:
                row["reason"] = f"{g}: {type(err).__name__}: {_first_line(err)}"
    if finest is not None:
        row["running"] = "float64"
        report(row)
        try:
            m64 = copy.deepcopy(model).double()
            dm = fxdecomp.decompose(m64, finest, input_size=shape, linearize=row["collapsed"])
            with torch.no_grad():
                row["err64"] = _rel(dm(x.double()).total(), m64(x.double()))
            if row["err64"] > F64 and not row["reason"]:
                row["reason"] = f"{finest}: float64 relative error {row['err64']:.2g}"
        except Exception as err:
            if not row["reason"]:
                row["reason"] = f"float64: {type(err).__name__}: {_first_line(err)}"
    row.pop("running")
    row["ok"] = (len(row["exact"]) == len(GRANULARITIES) and row["err64"] is not None and row["err64"] <= F64)
    return row


def _rel(a, b) -> float:
    n = b.shape[0]
    d = (a - b).detach().reshape(n, -1).double().norm(dim=1)
    r = b.detach().reshape(n, -1).double().norm(dim=1).clamp_min(1e-300)
    return float((d / r).max())


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else "")[:300]


def run_one(entry, timeout: int, seed: int = 0) -> dict:
    name, library, arch, kwargs = entry
    cmd = [sys.executable, __file__, "--one", json.dumps([library, arch, kwargs]), "--seed", str(seed)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        out, rc = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as err:
        out, rc = err.stdout or "", None
    if isinstance(out, bytes):
        out = out.decode(errors="replace")
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    row = json.loads(lines[-1]) if lines else {"traced": None}
    where = row.pop("running", None)
    if rc != 0 or where is not None:
        if rc is None:
            why = f"timed out after {timeout} s"
        elif rc < 0:
            sig = signal.Signals(-rc).name
            why = f"killed by {sig}" + (" (out of memory, most likely)" if sig == "SIGKILL" else "")
        else:
            why = "process failed: " + (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        why = f"{where}: {why}" if where else why
        row.update(ok=False, reason="; ".join(r for r in (row.get("reason"), why) if r))
    row["name"] = name
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    return row


def table(rows: list[dict]) -> str:
    head = ("| architecture | traced | exact at | components (block/head/token) | "
            f"compile s (b/h/t; target ≤ {COMPILE_TARGET_S:g}) | f32 error (max) | f64 error | linearised | reason |")
    out = [head, "|" + "---|" * 9]
    for r in rows:
        comps = "/".join(str(r.get("components", {}).get(g, "-")) for g in GRANULARITIES)
        secs = "/".join(_secs(r.get("compile_s", {}).get(g)) for g in GRANULARITIES)
        e32 = max(r.get("err32", {}).values(), default=None)
        e64 = r.get("err64")
        traced = {True: "yes", False: "no", None: "?"}[r.get("traced")]
        out.append(f"| {r['name']} | {traced} | {', '.join(r.get('exact', [])) or '-'} | {comps} | {secs} | "
                   f"{_fmt(e32)} | {_fmt(e64)} | {', '.join(r.get('linearised', [])) or '-'} | "
                   f"{r.get('reason', '') or ('' if r['ok'] else '-')} |")
    return "\n".join(out)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.1e}"


def _secs(v) -> str:
    """A compile time, marked ``!`` when over the target."""
    if v is None:
        return "-"
    return f"{v}!" if v > COMPILE_TARGET_S else str(v)


def within_target(row: dict) -> bool:
    """Every granularity compiled, each within ``COMPILE_TARGET_S``."""
    secs = row.get("compile_s", {})
    return len(secs) == len(GRANULARITIES) and all(v <= COMPILE_TARGET_S for v in secs.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=None, help="run architectures whose name contains any of these")
    ap.add_argument("--jobs", type=int, default=2, help="architectures measured at once")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per architecture")
    ap.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    ap.add_argument("--rows", type=Path, default=None, help="append each row (JSON lines) here as it finishes")
    ap.add_argument("--seed", type=int, default=0,
                    help="random weights and input: S = 0 gives the documented table (weights seed S, input 1 + 1000 S)")
    ap.add_argument("--json", type=Path, default=None, help="also write every row and the summary counts here")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        import torch

        torch.set_num_threads(1)
        library, arch, kwargs = json.loads(args.one)
        print(json.dumps(measure(library, arch, kwargs, lambda row: print(json.dumps(row), flush=True), args.seed)))
        return
    entries = [e for e in ARCHITECTURES if not args.only or any(s in e[0] for s in args.only)]
    from tqdm import tqdm

    rows: dict = {}
    with ThreadPoolExecutor(args.jobs) as pool, tqdm(total=len(entries), desc="architectures") as bar:
        futures = {pool.submit(run_one, e, args.timeout, args.seed): e[0] for e in entries}
        for fut in as_completed(futures):
            row = fut.result()
            rows[row["name"]] = row
            if args.rows:
                with args.rows.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            bar.set_postfix_str(f"{row['name']}: {'exact' if row['ok'] else 'FAILED'}")
            bar.update()
    ordered = [rows[e[0]] for e in entries]
    text = table(ordered)
    print(text)
    n_ok = sum(r["ok"] for r in ordered)
    n_fast = sum(within_target(r) for r in ordered)
    summary = (f"{n_fast} of {len(ordered)} compile within {COMPILE_TARGET_S:g} s at every granularity\n"
               f"{n_ok} of {len(ordered)} exact")
    if args.out:
        args.out.write_text(text + "\n\n" + summary + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"seed": args.seed, "compile_target_s": COMPILE_TARGET_S, "rows": ordered,
                                         "exact": n_ok, "within_compile_target": n_fast, "total": len(ordered)},
                                        indent=1))
    print(summary)


if __name__ == "__main__":
    main()
