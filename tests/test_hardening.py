"""Nothing fails silently: rule bugs raise, known limits are noted, conversions follow the
model, compiling leaves the caller's random stream alone, and a collapse says whether
``linearize=True`` would avoid it."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxdecomp
from conftest import bound, images, jitter_, rel_err, small_vit
from fxdecomp.core.atoms import RefineError
from fxdecomp.errors import AxisWarning, RuleError
from fxdecomp.rules.elementwise import UnaryNonlinear

GELU = torch.ops.aten.gelu.default  # shadows the rule registered for the packet aten.gelu


class RaisingRule(UnaryNonlinear):
    def axes(self, node, ctx):
        raise TypeError("an argument was read from the wrong position")


class MisfitRule(UnaryNonlinear):
    def axes(self, node, ctx):
        return ctx.raw_axes(node.args[0])[:-1]  # one axis short


class LimitRule(UnaryNonlinear):
    def axes(self, node, ctx):
        raise RefineError("the batch axis would be split")


def _with_rule(rule, fn):
    fxdecomp.register_rule(GELU, rule)
    try:
        return fn()
    finally:
        fxdecomp.unregister_rule(GELU)


@pytest.mark.parametrize("rule,what", [(RaisingRule(), "raised TypeError: an argument was read"),
                                       (MisfitRule(), "do not fit the output's shape")])
def test_a_failing_rule_is_an_error_naming_node_module_and_rule(rule, what):
    model = small_vit(depth=1)
    with pytest.raises(RuleError) as info:
        _with_rule(rule, lambda: fxdecomp.decompose(model, "head"))
    msg = str(info.value)
    assert "node 'gelu'" in msg and "module 'blocks.0.mlp.act' (GELU)" in msg
    assert type(rule).__name__ in msg and what in msg
    assert "bug in the rule" in msg and "register_rule(torch.ops.aten.gelu.default" in msg


def test_a_rule_written_for_the_old_contract_is_refused_naming_the_fix():
    with pytest.raises(TypeError, match=r"step = Step.LINEAR, Step.MIXING \(was 'bilinear'\)"):
        type("OldLinearity", (fxdecomp.Rule,), {"linearity": "bilinear"})
    with pytest.raises(TypeError, match=r"linearize must take \(self, node, ctx, carried\)"):
        type("OldLinearize", (fxdecomp.Rule,), {"linearize": lambda self, node, ctx: None})
    with pytest.raises(ValueError, match="rule.step must be one of"):
        fxdecomp.register_rule(GELU, type("Unknown", (fxdecomp.Rule,), {"step": fxdecomp.rules.Step.UNKNOWN})())


def test_a_known_limit_is_noted_and_warned_and_stays_exact():
    model = small_vit(depth=1)
    with pytest.warns(AxisWarning, match="node 'gelu'.*batch axis would be split"):
        dm = _with_rule(LimitRule(), lambda: fxdecomp.decompose(model, "head"))
    assert any("node 'gelu'" in n and "not followed" in n for n in dm.notes)
    x = images(dm)
    with torch.no_grad():
        assert rel_err(dm(x).total(), model(x)) <= 1e-5


class Reductions(nn.Module):
    """Reductions whose arguments sit at different positions per overload: a normalised
    query/key attention (``F.normalize``: linalg_vector_norm(x, ord, dim, keepdim)), and
    ``var(dim, unbiased, keepdim)`` / ``var_mean`` in a gate."""

    def __init__(self, d=8, heads=2):
        super().__init__()
        self.embed = nn.Conv2d(3, d, 4, stride=4)
        self.heads = heads
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.gate = nn.Linear(d, d)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        w = (q @ k.transpose(-2, -1)).softmax(-1)
        x = x + self.proj((w @ v).transpose(1, 2).reshape(b, n, d))
        var, mean = torch.var_mean(x, dim=-1, keepdim=True)
        spread = torch.var(x, -1, True, False)  # var.dim: dim, unbiased, keepdim by position
        x = x + self.gate(x) * torch.sigmoid(spread[..., None] - var - mean)
        return x.mean(1)


def test_reductions_read_their_arguments_by_name():
    torch.manual_seed(0)
    model = jitter_(Reductions().eval(), scale=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no note, no collapse
        dm = fxdecomp.decompose(model, "token", input_size=(3, 16, 16))
    assert not dm.notes
    heads = {c.head for c in dm.components if c.kind == "attn"}
    assert heads == {0, 1}  # the heads were followed through the normalised q and k
    x = images(dm)
    with torch.no_grad():
        assert rel_err(dm(x).total(), model(x)) <= 1e-5


class WithBuffers(nn.Module):
    """BatchNorm statistics (buffers the model owns) and a tensor constant made in forward
    (torch.export lifts it into the graph module)."""

    def __init__(self, d=8):
        super().__init__()
        self.embed = nn.Conv2d(3, d, 4, stride=4)
        self.bn = nn.BatchNorm1d(d)
        self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        x = self.embed(x).flatten(2)
        x = self.bn(x).transpose(1, 2)
        x = x + self.mlp(x) * torch.tensor([0.5, 1.5, 0.25, 2.0, 1.0, 0.75, 1.25, 0.5])
        return x.mean(1)


def _models():
    torch.manual_seed(0)
    extra = jitter_(WithBuffers().eval(), scale=0.2)
    extra.bn.running_mean.uniform_(-0.5, 0.5)
    extra.bn.running_var.uniform_(0.5, 1.5)
    return {"vit": (small_vit(depth=2), (3, 32, 32)), "buffers": (extra, (3, 16, 16))}


@pytest.mark.parametrize("name", ["vit", "buffers"])
def test_double_float_and_to_carry_every_constant(name):
    model, shape = _models()[name]
    dm = fxdecomp.decompose(model, "token", input_size=shape)
    x = images(shape, batch=2)
    model.double()
    with pytest.raises(fxdecomp.InputError, match=r"converted or moved after decompose.*dm\.double\(\)"):
        dm(x.double())
    dm.double()
    assert dm.dtype == torch.float64
    with torch.no_grad():
        out, ref = dm(x.double()), model(x.double())
    assert out.contributions.dtype == torch.float64
    assert rel_err(out.total(), ref) <= bound(torch.float64)
    dm.to(torch.float32)  # the model's parameters follow: they are shared
    assert dm.dtype == torch.float32 and next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        assert rel_err(dm(x).total(), model.float()(x)) <= bound(torch.float32)


def test_images_of_the_old_dtype_are_refused_after_conversion():
    model = small_vit(depth=1)
    dm = fxdecomp.decompose(model, "head").double()
    with pytest.raises(fxdecomp.InputError, match="compiled for torch.float64"):
        dm(images(dm))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_and_back_carry_every_constant():
    torch.backends.cuda.matmul.allow_tf32 = False
    model, shape = _models()["buffers"]
    dm = fxdecomp.decompose(model, "token", input_size=shape)
    model.cuda()
    with pytest.raises(fxdecomp.InputError, match=r"dm\.cuda\(\)"):
        dm(images(shape).cuda())
    dm.cuda()
    x = images(shape).cuda()
    with torch.no_grad():
        assert rel_err(dm(x).total(), model(x)) <= 1e-5
    dm.cpu()
    with torch.no_grad():
        assert rel_err(dm(x.cpu()).total(), model.cpu()(x.cpu())) <= 1e-5


def test_decompose_leaves_the_global_random_stream_alone():
    model = small_vit(depth=1)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    fxdecomp.decompose(model, "token")
    assert torch.equal(torch.random.get_rng_state(), state)


def test_collapse_warning_offers_linearize_where_it_helps():
    import timm

    model = timm.create_model("resnet18", num_classes=0).eval()
    with pytest.warns(fxdecomp.CollapseWarning) as caught:
        dm = fxdecomp.decompose(model, "block", input_size=(3, 32, 32))
    msgs = [str(w.message) for w in caught if issubclass(w.category, fxdecomp.CollapseWarning)]
    assert len(msgs) == 1 and "layer4.1.act2" in msgs[0] and "Pass linearize=True" in msgs[0]
    assert dm.notes == msgs


class PoolOnStream(nn.Module):
    """A max-pool that halves the token grid on the stream, between two residual blocks: not
    elementwise, so no frozen gate can stand in for it."""

    def __init__(self, d=8):
        super().__init__()
        self.embed = nn.Conv2d(3, d, 2, stride=2)
        self.mlp1 = nn.Sequential(nn.Conv2d(d, d, 1), nn.GELU(), nn.Conv2d(d, d, 1))
        self.pool = nn.MaxPool2d(2)
        self.mlp2 = nn.Sequential(nn.Conv2d(d, d, 1), nn.GELU(), nn.Conv2d(d, d, 1))

    def forward(self, x):
        x = self.embed(x)
        x = self.pool(x + self.mlp1(x))
        x = x + self.mlp2(x)
        return x.mean((2, 3))


def test_collapse_warning_does_not_offer_linearize_where_it_cannot_help():
    torch.manual_seed(0)
    model = jitter_(PoolOnStream().eval(), scale=0.2)
    for linearize in (False, True):
        with pytest.warns(fxdecomp.CollapseWarning) as caught:
            dm = fxdecomp.decompose(model, "block", input_size=(3, 16, 16), linearize=linearize)
        msg = " ".join(str(w.message) for w in caught)
        assert "max_pool2d" in msg and "linearize=True cannot avoid this" in msg
        assert "Pass linearize=True" not in msg and "shape" in msg
        x = images(dm)
        with torch.no_grad():
            assert rel_err(dm(x).total(), model(x)) <= 1e-5


def test_cuda_graphs_are_refused_off_a_cuda_device_naming_the_fix():
    from fxdecomp.graphs import check_replayable

    dm = fxdecomp.decompose(small_vit(depth=1), "head")
    with pytest.raises(fxdecomp.InputError, match=r"dm\.cuda\(\) first"):
        dm.cuda_graphs()
    assert dm.cuda_graphs(False) is dm  # turning them off is always allowed; the eager forward stays exact
    x = images(dm, batch=2)
    with torch.no_grad():
        assert torch.equal(dm(x).contributions, dm.graph_module(x)[1].transpose(0, 1))
    with pytest.raises(fxdecomp.InputError, match=r"images\.cuda\(\)"):
        check_replayable(x)


SAME_IN_EVERY_PROCESS = """
import hashlib, torch, timm, fxdecomp
torch.manual_seed(0)
m = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, window_size=7, embed_dim=24,
                      depths=(1, 1), num_heads=(2, 4), num_classes=5).eval()
dm = fxdecomp.decompose(m, "head")
x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    c = dm(x).contributions
print(hashlib.sha256(dm.code.encode()).hexdigest(), hashlib.sha256(c.numpy().tobytes()).hexdigest())
"""


def test_every_process_compiles_the_same_code_and_computes_the_same_bits():
    """The generated code depends on the model alone, never on where objects sit in memory or
    on the hash seed: a contraction's atom order once followed object addresses, so the same
    Swin compiled in another process could get other einsum layouts and other last bits."""
    import os
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-c", SAME_IN_EVERY_PROCESS], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True,
                              env={**os.environ, "PYTHONHASHSEED": str(seed), "OMP_NUM_THREADS": "1"})
             for seed in (0, 1, 2, 3)]
    outs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(len(o) == 2 for o in outs), outs
    assert len({o[0] for o in outs}) == 1, "the generated code differs between processes"
    assert len({o[1] for o in outs}) == 1, "the contributions differ between processes"


class _Deep(nn.Module):
    """400 residual blocks ``x + tanh(x)``: a walk one node deeper per block."""

    def __init__(self, depth: int = 400):
        super().__init__()
        self.depth = depth
        self.stem = nn.Conv2d(3, 4, 4, 4)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)
        for _ in range(self.depth):
            x = x + torch.tanh(x)
        return x.mean(1)


@pytest.mark.slow
def test_a_model_deeper_than_the_default_recursion_limit_decomposes():
    """The walk recurses along the stream; 400 blocks pass Python's default limit of 1,000
    frames (a RecursionError before), and every block's component is its own ``tanh`` (token
    mean), computed here independently."""
    torch.manual_seed(0)
    model = _Deep().eval()
    x = images((3, 8, 8), batch=3)
    dm = fxdecomp.decompose(model, "block", example=x[:2])
    with torch.no_grad():
        out = dm(x)
        ref = model(x)
        h = model.stem(x).flatten(2).transpose(1, 2)
        want = []
        for _ in range(model.depth):
            t = torch.tanh(h)
            want.append(t.mean(1))
            h = h + t
    assert rel_err(out.total(), ref) <= bound(torch.float32)
    blocks = out.contributions[:, -model.depth:]
    torch.testing.assert_close(blocks, torch.stack(want, 1), rtol=1e-5, atol=1e-6)
