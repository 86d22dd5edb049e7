"""Which architectures decompose exactly, how fast: tables over timm, open_clip and Hugging Face models.

    python benchmarks/coverage.py                          # --suite timm: the timm list below
    python benchmarks/coverage.py --suite open_clip        # every open_clip vision tower up to 400M parameters
    python benchmarks/coverage.py --suite hf               # transformers vision classes, small random configs
    python benchmarks/coverage.py --only swin maxvit       # names containing any of these
    python benchmarks/coverage.py --suite open_clip --rows rows.jsonl --resume   # continue a long run

Every architecture is built with random weights (every parameter and BatchNorm statistic
perturbed, so zero-initialised biases and unit norm weights cannot hide mistakes), compiled at
every granularity, and run on a batch of two random images in float32; the finest granularity
that compiled is also checked in float64. What is decomposed is what ``fxdecomp.decompose``
takes by default (a Hugging Face model's ``image_embeds`` / ``pooler_output`` / class token, CoCa's
pooled embedding; the ``output`` column). A row is *exact* when every granularity compiled,
float32 relative error ≤ 1e-5, float64 ≤ 1e-10, and nothing collapsed (a collapse is retried with
``linearize=True`` and marked; such a row still counts as exact, with its linearised ops named).

Three checks look for what exactness cannot show:

* compile time per granularity, target ``COMPILE_TARGET_S`` (a time over it is marked ``!``);
* the decomposed forward at head granularity against the model's own, at batch ``TIMING_BATCH``
  on the CPU (one thread, each timed once after a warm-up), target ≤ ``FORWARD_TARGET`` × (``!``);
* blocks without a component: the repeated blocks of the model (the elements of its
  ``ModuleList``/``Sequential`` stacks) of which no component is named: with no
  ``CollapseWarning`` that is a *silent collapse* (``collapse?``), unless the architecture reaches
  its output from those blocks only through attention (CaiT's trunk, CrossViT's branches);
* components of kind attn/mlp named after a norm module (``labels``);
* attention components with no head at head granularity (``heads not split``).

Each architecture runs in its own process with a time limit, so a crash or a hang is a row with
its reason, never a missing row. The last lines printed count each target.
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
SUITES = ("timm", "open_clip", "hf")
#: seconds one compilation (one granularity, linearised where it had to be) may take
COMPILE_TARGET_S = 30.0
#: the decomposed forward (head granularity) over the model's own forward, at TIMING_BATCH on the CPU
FORWARD_TARGET = 2.0
TIMING_BATCH = 8
#: seconds of the first decomposed forward on two images beyond which timing at TIMING_BATCH is skipped
SLOW_CALL_S = 30.0
#: open_clip towers up to this many parameters are in the open_clip suite
OPEN_CLIP_MAX_PARAMS = 400e6


def timm_(arch: str, **kwargs) -> tuple:
    return (arch, "timm", arch, kwargs, "")


def hf_(name: str, model: str, config: str, about: str = "", **args) -> tuple:
    return (name, "hf", model, {"config": config, "args": args}, about)


#: (name, library, architecture, keyword arguments, note). Image sizes are reduced where
#: the architecture allows it (``img_size``, or ``input_size`` for CNNs, which take any
#: size), to keep the run short; the graph is the same.
TIMM = [
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
]

_V = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32,
          patch_size=8)
#: transformers vision classes, small random configurations; eager and sdpa attention where both exist.
HF = [
    hf_("ViTModel", "ViTModel", "ViTConfig", attn_implementation="eager", **_V),
    hf_("ViTModel sdpa", "ViTModel", "ViTConfig", attn_implementation="sdpa", **_V),
    hf_("ViTForImageClassification", "ViTForImageClassification", "ViTConfig", num_labels=10, **_V),
    hf_("DeiTModel", "DeiTModel", "DeiTConfig", **_V),
    hf_("DeiTForImageClassificationWithTeacher", "DeiTForImageClassificationWithTeacher", "DeiTConfig",
        num_labels=10, **_V),
    hf_("Dinov2Model", "Dinov2Model", "Dinov2Config", **_V),
    hf_("Dinov2Model SwiGLU", "Dinov2Model", "Dinov2Config", use_swiglu_ffn=True, **_V),
    hf_("Dinov2WithRegistersModel", "Dinov2WithRegistersModel", "Dinov2WithRegistersConfig",
        num_register_tokens=4, **_V),
    hf_("DINOv3ViTModel", "DINOv3ViTModel", "DINOv3ViTConfig", num_register_tokens=4, **_V),
    hf_("BeitModel", "BeitModel", "BeitConfig", use_relative_position_bias=True, use_mean_pooling=True, **_V),
    hf_("BeitModel shared rel. pos.", "BeitModel", "BeitConfig", use_shared_relative_position_bias=True,
        use_mean_pooling=False, **_V),
    hf_("Data2VecVisionModel", "Data2VecVisionModel", "Data2VecVisionConfig", use_relative_position_bias=True, **_V),
    hf_("ViTMSNModel", "ViTMSNModel", "ViTMSNConfig", **_V),
    hf_("IJepaModel", "IJepaModel", "IJepaConfig", **_V),
    hf_("ViTMAEModel mask_ratio=0", "ViTMAEModel", "ViTMAEConfig", mask_ratio=0.0, **_V),
    hf_("CLIPVisionModel", "CLIPVisionModel", "CLIPVisionConfig", attn_implementation="eager", **_V),
    hf_("CLIPVisionModelWithProjection sdpa", "CLIPVisionModelWithProjection", "CLIPVisionConfig",
        attn_implementation="sdpa", projection_dim=32, **_V),
    hf_("SiglipVisionModel", "SiglipVisionModel", "SiglipVisionConfig", attn_implementation="eager", **_V),
    hf_("SiglipVisionModel sdpa", "SiglipVisionModel", "SiglipVisionConfig", attn_implementation="sdpa", **_V),
    hf_("MLCDVisionModel", "MLCDVisionModel", "MLCDVisionConfig", **_V),
    hf_("Aimv2VisionModel", "Aimv2VisionModel", "Aimv2VisionConfig", **_V),
    hf_("SwinModel", "SwinModel", "SwinConfig", image_size=64, patch_size=4, embed_dim=32, depths=[2, 2],
        num_heads=[2, 4], window_size=4),
    hf_("Swinv2Model", "Swinv2Model", "Swinv2Config", image_size=64, patch_size=4, embed_dim=32, depths=[2, 2],
        num_heads=[2, 4], window_size=4),
    hf_("FocalNetModel", "FocalNetModel", "FocalNetConfig", image_size=64, patch_size=4, embed_dim=32,
        depths=[1, 1], hidden_sizes=[32, 64]),
    hf_("HieraModel", "HieraModel", "HieraConfig", image_size=[64, 64], patch_size=[7, 7], embed_dim=32,
        depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], masked_unit_size=[8, 8], patch_stride=[4, 4],
        patch_padding=[3, 3]),
    hf_("PvtV2Model", "PvtV2Model", "PvtV2Config", image_size=[64, 64], hidden_sizes=[16, 32, 48, 64],
        depths=[1, 1, 1, 1], num_attention_heads=[1, 2, 2, 4]),
    hf_("SegformerModel", "SegformerModel", "SegformerConfig", hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1],
        num_attention_heads=[1, 2, 2, 4], image_size=64),
    hf_("CvtModel", "CvtModel", "CvtConfig", embed_dim=[16, 32, 48], num_heads=[1, 2, 2], depth=[1, 2, 3],
        image_size=64),
    hf_("LevitModel", "LevitModel", "LevitConfig", image_size=64, hidden_sizes=[32, 48, 64],
        num_attention_heads=[2, 3, 4], depths=[1, 1, 1], key_dim=[8, 8, 8]),
    hf_("MobileViTModel", "MobileViTModel", "MobileViTConfig", image_size=64, hidden_sizes=[32, 48, 64],
        neck_hidden_sizes=[8, 16, 24, 24, 32, 40, 160], num_attention_heads=2),
    hf_("ConvNextModel", "ConvNextModel", "ConvNextConfig", image_size=64, hidden_sizes=[16, 32, 48, 64],
        depths=[1, 1, 2, 1]),
    hf_("ConvNextV2Model", "ConvNextV2Model", "ConvNextV2Config", image_size=64, hidden_sizes=[16, 32, 48, 64],
        depths=[1, 1, 2, 1]),
    hf_("ResNetModel", "ResNetModel", "ResNetConfig", image_size=64, embedding_size=16, hidden_sizes=[16, 32, 48, 64],
        depths=[1, 1, 1, 1]),
    hf_("RegNetModel", "RegNetModel", "RegNetConfig", image_size=64, embedding_size=16, hidden_sizes=[16, 32, 48, 64],
        depths=[1, 1, 1, 1], groups_width=8),
    hf_("BitModel", "BitModel", "BitConfig", image_size=64, embedding_size=32, hidden_sizes=[32, 64, 96, 128],
        num_groups=4, depths=[1, 1, 1, 1]),
    hf_("PoolFormerModel", "PoolFormerModel", "PoolFormerConfig", image_size=64, hidden_sizes=[16, 32, 48, 64],
        depths=[1, 1, 1, 1]),
    hf_("EfficientNetModel", "EfficientNetModel", "EfficientNetConfig", image_size=64, width_coefficient=0.25,
        depth_coefficient=0.3, hidden_dim=320),
]


def open_clip_suite(max_params: float = OPEN_CLIP_MAX_PARAMS) -> list[tuple]:
    """Every open_clip vision tower (``open_clip.list_models()``), once per distinct tower config,
    up to ``max_params`` parameters (counted on the meta device), smallest first."""
    import open_clip
    import torch
    from open_clip.model import _build_vision_tower

    towers: dict = {}
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name)
        if not cfg or "vision_cfg" not in cfg:
            continue
        key = json.dumps([cfg["embed_dim"], cfg["vision_cfg"], cfg.get("quick_gelu", False)], sort_keys=True)
        towers.setdefault(key, []).append(name)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for names in towers.values():
            cfg = open_clip.get_model_config(names[0])
            try:
                with torch.device("meta"):
                    v = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=cfg.get("quick_gelu", False))
                params = sum(p.numel() for p in v.parameters())
            except Exception as err:  # noqa: BLE001 - a row says why
                params, names = 0, names + [f"(meta build failed: {type(err).__name__})"]
            if params <= max_params:
                first = min(names, key=lambda n: (len(n), n))  # ViT-B-32, not mt5-base-ViT-B-32
                others = [n for n in names if n != first]
                also = f"same tower: {', '.join(others)}" if others else ""
                out.append((first, "open_clip", first, {"_params": params}, also))
    return sorted(out, key=lambda e: (e[3]["_params"], e[0]))


def entries(suite: str) -> list[tuple]:
    return {"timm": lambda: TIMM, "hf": lambda: HF, "open_clip": open_clip_suite}[suite]()


def build(library: str, arch: str, kwargs: dict, seed: int = 0):
    import torch

    from fxdecomp.models_registry import perturb_

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if library == "timm":
            import timm

            model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
        elif library == "open_clip":
            import open_clip
            from open_clip.model import _build_vision_tower

            cfg = open_clip.get_model_config(arch)  # the image tower alone: no text tower to build or download
            model = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=cfg.get("quick_gelu", False))
        elif library == "hf":
            import transformers

            config = getattr(transformers, kwargs["config"])(**kwargs["args"])
            model = getattr(transformers, arch)(config)
        else:
            raise ValueError(f"unknown library {library!r}")
    return perturb_(model.eval(), scale=0.02)


def blocks_of(model) -> list[str]:
    """The model's repeated blocks: elements of a ModuleList/Sequential of two or more modules of one
    class that hold parameters and submodules. The outermost such stacks (``blocks``, ``stages``),
    and the stacks held directly by their elements (``stages.2.blocks``), where the finer ones are
    the blocks; not the stacks inside a block (a bottleneck's convs, FocalNet's focal layers)."""
    import torch

    stacks = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, (torch.nn.ModuleList, torch.nn.Sequential)):
            continue
        kids = list(mod.named_children())
        if len(kids) < 2 or len({type(c) for _, c in kids}) != 1:
            continue
        if not all(any(True for _ in c.children()) and any(True for _ in c.parameters()) for _, c in kids):
            continue
        stacks[name] = [f"{name}.{k}" if name else k for k, _ in kids]

    def inside(path, outer):
        return outer == "" or path.startswith(outer + ".")

    outermost = [n for n in stacks if not any(o != n and inside(n, o) for o in stacks)]
    elements = {e for n in outermost for e in stacks[n]}
    kept = outermost + [n for n in stacks if n not in outermost and n.rsplit(".", 1)[0] in elements]
    blocks = [b for n in kept for b in stacks[n]]
    return [b for b in blocks if not any(o != b and o.startswith(b + ".") for o in blocks)]


def uncovered(model, components) -> list[str]:
    """Blocks of which no component is named (its module is the block or inside it)."""
    mods = [c.module for c in components if c.module]
    return [b for b in blocks_of(model) if not any(m == b or m.startswith(b + ".") for m in mods)]


def measure(library: str, arch: str, kwargs: dict, report=lambda row: None, seed: int = 0) -> dict:
    """One architecture, in this process: a row of the table. ``report`` sees the row as
    it grows (before each step, with ``running`` naming it), so a process killed midway
    still leaves what it measured."""
    import copy

    import torch

    import fxdecomp
    from fxdecomp.adapters import select, unwrap
    from fxdecomp.models_registry import input_size_of

    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_")}
    size = kwargs.pop("input_size", None)  # CNNs take any image size
    row = {"traced": False, "exact": [], "components": {}, "compile_s": {}, "err32": {}, "err64": None,
           "linearised": [], "collapsed": False, "reason": "", "output": None, "params": None,
           "forward_s": None, "decomposed_s": None, "uncovered": None, "blocks": None, "norm_labels": []}
    row["running"] = "build"
    report(row)
    model = build(library, arch, kwargs, seed)
    row["params"] = sum(p.numel() for p in model.parameters())
    shape = (3, size, size) if size else input_size_of(model)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(1 + 1000 * seed))
    with torch.no_grad():
        fwd = select(model, x)  # what decompose takes by default: the tensor checked against
        ref = fwd(x)
    row["output"] = getattr(fwd, "output", None)
    finest, kept = None, None
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
                t1 = time.perf_counter()
                err = _rel(dm(x).total(), ref)
                first_call_s = time.perf_counter() - t1
            row["components"][g] = len(dm.components)
            row["err32"][g] = err
            if err <= F32:
                row["exact"].append(g)
                finest = g
            elif not row["reason"]:
                row["reason"] = f"{g}: float32 relative error {err:.2g}"
            if g == "head":
                miss = uncovered(unwrap(model), dm.components)
                row["uncovered"], row["blocks"] = len(miss), len(blocks_of(unwrap(model)))
                row["uncovered_names"] = miss[:6]
                row["norm_labels"] = sorted({c.name for c in dm.components if c.kind in ("attn", "mlp")
                                             and "norm" in c.module_type.lower()})[:4]
                mods = dict(unwrap(model).named_modules())
                row["unsplit_attn"] = [c.name for c in dm.components if c.kind == "attn" and c.head is None
                                       and _heads(mods.get(c.module)) != 1][:4]
                kept, kept_first_s = dm, first_call_s
            else:
                del dm
        except Exception as err:  # recorded in the table: the point is to see every failure
            if not row["reason"]:
                row["reason"] = f"{g}: {type(err).__name__}: {_first_line(err)}"
    if kept is not None:
        row["running"] = "timing"
        report(row)
        # a decomposed forward that took over SLOW_CALL_S on two images is timed on those two, by
        # one more call (the first, which made the weight products, was its warm-up)
        small = kept_first_s > SLOW_CALL_S
        xb = x if small else torch.randn(TIMING_BATCH, *shape, generator=torch.Generator().manual_seed(2))
        row["timing_batch"] = int(xb.shape[0])
        if small:
            row["first_call"] = False  # rows before this was measured so are marked "first call"
        with torch.no_grad():
            row["forward_s"] = _time(fwd, xb)
            row["decomposed_s"] = _time(kept, xb, warm=False) if small else _time(kept, xb)
        del kept
    if finest is not None:
        row["running"] = "float64"
        report(row)
        try:
            m64 = copy.deepcopy(model).double()
            dm = fxdecomp.decompose(m64, finest, input_size=shape, linearize=row["collapsed"])
            with torch.no_grad():
                row["err64"] = _rel(dm(x.double()).total(), select(m64, x.double())(x.double()))
            if row["err64"] > F64 and not row["reason"]:
                row["reason"] = f"{finest}: float64 relative error {row['err64']:.2g}"
        except Exception as err:
            if not row["reason"]:
                row["reason"] = f"float64: {type(err).__name__}: {_first_line(err)}"
    row.pop("running")
    row["ok"] = (len(row["exact"]) == len(GRANULARITIES) and row["err64"] is not None and row["err64"] <= F64)
    return row


def _heads(module) -> int | None:
    """The number of heads an attention module says it has (None when it does not say)."""
    for attr in ("num_heads", "num_attention_heads", "heads", "n_head"):
        v = getattr(module, attr, None)
        if isinstance(v, int):
            return v
    return None


def _time(fn, x, budget: float = 1.0, most: int = 20, warm: bool = True) -> float:
    """Seconds of one call: the fastest of repeated calls after a warm-up (as many as fit in
    ``budget`` seconds, at least one, at most ``most``), so small models are not timed by noise.
    ``warm=False``: ``fn`` has already run on ``x``'s shape."""
    if warm:
        fn(x)
    best, spent, n = float("inf"), 0.0, 0
    while n < 1 or (spent < budget and n < most):
        t0 = time.perf_counter()
        fn(x)
        dt = time.perf_counter() - t0
        best, spent, n = min(best, dt), spent + dt, n + 1
    return round(best, 4)


def _rel(a, b) -> float:
    from fxdecomp.reconstruction import max_relative_error

    return float(max_relative_error(a, b))


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else "")[:300]


def run_one(entry, timeout: int, seed: int = 0) -> dict:
    name, library, arch, kwargs, about = entry
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
    row["about"] = about
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    return row


def ratio(row: dict) -> float | None:
    f, d = row.get("forward_s"), row.get("decomposed_s")
    return d / f if f and d is not None else None


def flags(row: dict) -> list[str]:
    """What exactness does not show: a silent collapse, labels after norms, slow compile or forward."""
    out = []
    if row.get("uncovered") and not row.get("collapsed"):
        out.append("collapse?")
    if row.get("norm_labels"):
        out.append("labels")
    if row.get("unsplit_attn"):
        out.append("heads not split")
    if any(v > COMPILE_TARGET_S for v in row.get("compile_s", {}).values()):
        out.append("slow compile")
    r = ratio(row)
    if r is not None and r > FORWARD_TARGET:
        out.append("slow forward")
    return out


def table(rows: list[dict]) -> str:
    head = ("| architecture | params (M) | output | exact at | components (block/head/token) | "
            f"compile s (b/h/t; ≤ {COMPILE_TARGET_S:g}) | forward ×, head, batch {TIMING_BATCH} (≤ {FORWARD_TARGET:g}) | "
            "f32 error | f64 error | blocks w/o component | flags | linearised | reason |")
    out = [head, "|" + "---|" * 13]
    for r in rows:
        comps = "/".join(str(r.get("components", {}).get(g, "-")) for g in GRANULARITIES)
        secs = "/".join(_secs(r.get("compile_s", {}).get(g)) for g in GRANULARITIES)
        e32 = max(r.get("err32", {}).values(), default=None)
        rt = ratio(r)
        fwd = "-" if rt is None else f"{rt:.1f}{'!' if rt > FORWARD_TARGET else ''} ({r['forward_s']:.2g} s)"
        if rt is not None and r.get("timing_batch", TIMING_BATCH) != TIMING_BATCH:
            fwd += f" at batch {r['timing_batch']}" + (", first call" if r.get("first_call", True) else "")
        blocks = "-" if r.get("uncovered") is None else f"{r['uncovered']} of {r['blocks']}"
        if r.get("uncovered"):
            blocks += " (" + ", ".join(r.get("uncovered_names", [])[:3]) + (", ..." if r["uncovered"] > 3 else "") + ")"
        fl = flags(r)
        if r.get("norm_labels"):
            fl[fl.index("labels")] = "labels: " + ", ".join(r["norm_labels"][:2])
        if r.get("unsplit_attn"):
            fl[fl.index("heads not split")] = "heads not split: " + ", ".join(r["unsplit_attn"][:2])
        params = "-" if not r.get("params") else f"{r['params'] / 1e6:.1f}"
        reason = "; ".join(t for t in (r.get("reason", ""), r.get("about", "")) if t)
        out.append(f"| {r['name']} | {params} | {r.get('output') or '-'} | {', '.join(r.get('exact', [])) or '-'} | "
                   f"{comps} | {secs} | {fwd} | {_fmt(e32)} | {_fmt(r.get('err64'))} | {blocks} | "
                   f"{', '.join(fl) or '-'} | {', '.join(r.get('linearised', [])) or '-'} | {reason} |")
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


def summary(rows: list[dict]) -> str:
    n = len(rows)
    timed = [r for r in rows if ratio(r) is not None]
    return "\n".join([
        f"{sum(within_target(r) for r in rows)} of {n} compile within {COMPILE_TARGET_S:g} s at every granularity",
        f"{sum(ratio(r) <= FORWARD_TARGET for r in timed)} of {len(timed)} timed decompose within "
        f"{FORWARD_TARGET:g}x of the model's forward (head, batch {TIMING_BATCH})",
        f"{sum(1 for r in rows if 'collapse?' in flags(r))} with blocks that have no component and no CollapseWarning",
        f"{sum(1 for r in rows if r.get('norm_labels'))} with components named after a norm",
        f"{sum(1 for r in rows if r.get('unsplit_attn'))} with attention not split by head at head granularity",
        f"{sum(r['ok'] for r in rows)} of {n} exact"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=SUITES, default="timm", help="which list of architectures (default: timm)")
    ap.add_argument("--only", nargs="*", default=None, help="run architectures whose name contains any of these")
    ap.add_argument("--names", nargs="*", default=None, help="run exactly these architectures, in this order")
    ap.add_argument("--max-params", type=float, default=OPEN_CLIP_MAX_PARAMS,
                    help="open_clip: towers up to this many parameters (default: 400e6)")
    ap.add_argument("--list", action="store_true", help="print the suite's entries and stop")
    ap.add_argument("--jobs", type=int, default=2, help="architectures measured at once")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per architecture")
    ap.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    ap.add_argument("--rows", type=Path, default=None, help="append each row (JSON lines) here as it finishes")
    ap.add_argument("--resume", action="store_true", help="with --rows: skip entries already there, keep their rows")
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
    suite = open_clip_suite(args.max_params) if args.suite == "open_clip" else entries(args.suite)
    chosen = [e for e in suite if not args.only or any(s in e[0] for s in args.only)]
    if args.names:
        known = {e[0]: e for e in chosen}
        missing = [n for n in args.names if n not in known]
        if missing:
            sys.exit(f"not in the {args.suite} suite: {', '.join(missing)} (see --list)")
        chosen = [known[n] for n in args.names]
    if args.list:
        for e in chosen:
            print(e[0], f"{e[3]['_params'] / 1e6:.1f}M" if "_params" in e[3] else "", e[4])
        return
    rows: dict = {}
    if args.resume and args.rows and args.rows.is_file():
        for line in args.rows.read_text().splitlines():
            r = json.loads(line)
            rows[r["name"]] = r
    todo = [e for e in chosen if e[0] not in rows]
    from tqdm import tqdm

    with ThreadPoolExecutor(args.jobs) as pool, tqdm(total=len(todo), desc="architectures", disable=None) as bar:
        futures = {pool.submit(run_one, e, args.timeout, args.seed): e[0] for e in todo}
        for fut in as_completed(futures):
            row = fut.result()
            rows[row["name"]] = row
            if args.rows:
                with args.rows.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            bar.set_postfix_str(f"{row['name']}: {'exact' if row['ok'] else 'FAILED'}")
            bar.update()
    ordered = [rows[e[0]] for e in chosen if e[0] in rows]
    text = table(ordered)
    print(text)
    counts = summary(ordered)
    if args.out:
        args.out.write_text(text + "\n\n" + counts + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"suite": args.suite, "seed": args.seed, "compile_target_s": COMPILE_TARGET_S,
                                         "forward_target": FORWARD_TARGET, "timing_batch": TIMING_BATCH,
                                         "rows": ordered, "exact": sum(r["ok"] for r in ordered),
                                         "within_compile_target": sum(within_target(r) for r in ordered),
                                         "total": len(ordered)}, indent=1))
    print(counts)


if __name__ == "__main__":
    main()
