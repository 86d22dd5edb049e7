"""Decompositions agree with each other and with the model's linear structure."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import fxdecomp
from conftest import bound, images, jitter_, rel_err, small_vit


class PreLogits(nn.Module):
    """The same network, returning the features its classifier reads."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, x):
        return self.vit.forward_head(self.vit.forward_features(x), pre_logits=True)


def test_logits_are_the_head_applied_to_feature_components():
    torch.set_default_dtype(torch.float64)
    try:
        vit = small_vit(num_classes=7, depth=3)
    finally:
        torch.set_default_dtype(torch.float32)
    x = images((3, 32, 32), dtype=torch.float64)
    logits = fxdecomp.decompose(vit, "token")(x)
    feats = fxdecomp.decompose(PreLogits(vit).eval(), "token", input_size=(3, 32, 32))(x)
    assert len(logits) == len(feats) + 1
    assert logits.components[-1].name == "head.bias" and logits.components[-1].kind == "bias"
    for a, b in zip(logits.components, feats.components):
        assert a.name == b.name.removeprefix("vit.") or (a.kind == b.kind == "embed")
    w, bias = vit.head.weight, vit.head.bias
    mapped = feats.contributions @ w.T
    torch.testing.assert_close(logits.contributions[:, :-1], mapped, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logits.contributions[:, -1], bias.expand(x.shape[0], -1), rtol=1e-10, atol=1e-12)


def test_token_head_block_output_chain():
    vit = small_vit(depth=3, num_heads=4, embed_dim=32).double()
    x = images((3, 32, 32), dtype=torch.float64, batch=4)
    token = fxdecomp.decompose(vit, "token")(x)
    head = fxdecomp.decompose(vit, "head")(x)
    block = fxdecomp.decompose(vit, "block")(x)
    torch.testing.assert_close(token.group("head").contributions, head.contributions, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(head.group("block").contributions, block.contributions, rtol=1e-10, atol=1e-12)
    assert rel_err(block.total(), vit(x)) < 1e-12
    # every token component of one head carries that head's index and a distinct source token
    first = [c for c in token.components if c.kind == "attn" and c.layer == 0 and c.head == 2]
    assert [c.token for c in first] == list(range(1 + 16))
    assert first[0].prefix == "cls_token" and (first[5].row, first[5].col) == (1, 0)


def test_grouping_by_layer_kind_and_function():
    vit = small_vit(depth=2)
    dm = fxdecomp.decompose(vit, "head")
    out = dm(images(dm))
    for by in ("layer", "kind", "module", lambda c: c.kind == "attn"):
        grouped = out.group(by)
        assert rel_err(grouped.total(), out.total()) < 1e-6
        assert len(grouped) < len(out)
    layers = out.group("layer")
    assert {c.name for c in layers.components} >= {"layer0", "layer1"}


def test_selection_and_ranking():
    vit = small_vit(depth=2)
    dm = fxdecomp.decompose(vit, "head")
    out = dm(images(dm))
    name = "blocks.1.attn[h3]"
    one = out[name]
    assert one.shape == (3, 32)
    assert torch.equal(one, out.contributions[:, dm.components.index(name)])
    sub = out.select(kind="attn", layer=1)
    assert len(sub) == 4 and all(c.layer == 1 for c in sub.components)
    assert [c.index for c in sub.components] == [0, 1, 2, 3]
    top = out.top(3)
    norms = out.norms().detach().mean(0)
    assert [round(v, 6) for _, v in top] == [round(float(v), 6) for v in norms.sort(descending=True).values[:3]]
    text = out.table(k=5)
    assert text.count("\n") == 6 and "mean_norm" in text


def test_batch_size_is_free():
    vit = small_vit()
    dm = fxdecomp.decompose(vit, "token")
    for b in (1, 2, 5):
        x = images(dm, batch=b)
        with torch.no_grad():
            assert rel_err(dm(x).total(), vit(x)) < 1e-5


def _grads(f, x, v, params):
    """The gradient of <f(x), v> with respect to ``x`` and to each of ``params`` (zeros where unused)."""
    x = x.clone().requires_grad_(True)
    got = torch.autograd.grad((f(x) * v).sum(), [x, *params], allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(got, [x, *params])]


def _vit():
    return small_vit(depth=2).double(), (3, 32, 32), False


def _group_norm():
    from test_group_norm import GroupNet

    torch.manual_seed(0)
    return jitter_(GroupNet(4).eval(), scale=0.3).double(), (3, 16, 16), False


def _gated():
    from test_stream_nonlinearities import tower

    return tower(nn.GELU()).double(), (3, 16, 16), True


def _hand_written():
    from test_symbolic import hand_written

    return hand_written(torch.float64), (3, 16, 16), False


@pytest.mark.parametrize("make", [_vit, _group_norm, _gated, _hand_written],
                         ids=["layer_norm+attention", "group_norm", "linearised_gelu", "symbolic_norm"])
def test_the_sum_of_the_contributions_has_the_models_gradient(make):
    """Norm statistics, attention weights, gates and slopes are frozen at their actual values
    *for each batch*: the decomposing forward computes them from the images, as the model
    does. So the contributions sum to the model's output at every input, and their sum has
    the model's own gradient, with respect to the images and to every parameter (shared with
    the model): a LayerNorm's frozen scale on the stream included, a GroupNorm's, a frozen
    gate's (a linearised GELU on the stream) and a slope read from a symbolic form."""
    model, shape, linearize = make()
    dm = fxdecomp.decompose(model, "token", input_size=shape, linearize=linearize)
    x = images(shape, dtype=torch.float64)
    with torch.no_grad():
        v = torch.randn(model(x).shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    params = list(model.parameters())
    want = _grads(model, x, v, params)
    got = _grads(lambda t: dm(t).total(), x, v, params)
    assert want[0].abs().max() > 0
    for g, w, name in zip(got, want, ["images"] + [n for n, _ in model.named_parameters()]):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12 * float(w.abs().max().clamp_min(1)), msg=name)


def test_a_components_gradient_is_that_of_its_frozen_formula_with_the_actual_statistics():
    """The class token's component is ``(cls − mean(cls)) · γ / σ(x)``: a constant, centred and
    scaled by the final norm's γ and its actual scale σ, which the images set. Its value and
    its gradient are those of that formula computed independently from the norm's actual input."""
    vit = small_vit(depth=2).double()
    dm = fxdecomp.decompose(vit, "head")
    x = images(dm, dtype=torch.float64).requires_grad_(True)
    seen = {}
    hook = vit.norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("z", a[0]))
    try:
        vit(x)
    finally:
        hook.remove()
    z = seen["z"][:, 0]  # the final norm's input at the class token
    cls = vit.cls_token.reshape(-1)
    want = (cls - cls.mean()) * vit.norm.weight / torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + vit.norm.eps)
    got = dm(x)["cls_token"]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    v = torch.randn(want.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    (g_want,) = torch.autograd.grad((want * v).sum(), x, retain_graph=True)
    (g_got,) = torch.autograd.grad((got * v).sum(), x)
    assert g_want.abs().max() > 1e-3  # the constant moves with the images, through the norm's scale
    torch.testing.assert_close(g_got, g_want, rtol=1e-9, atol=1e-14)


def test_generated_code_is_readable():
    dm = fxdecomp.decompose(small_vit(), "token")
    code = dm.code
    assert "def forward" in code and "einsum" in code and "attention_weights" in code
    assert "blocks_1_attn" in code


def test_heads_are_read_from_the_attention_output_and_tokens_need_the_weights():
    """At head granularity a head's term is the attention's own per-head output: the
    ``[B, heads, T, T]`` weights are never formed; at token granularity they are."""
    model, x = small_vit(), torch.randn(2, 3, 32, 32)
    head, token = fxdecomp.decompose(model, "head"), fxdecomp.decompose(model, "token")
    assert "attention_weights" not in head.code and "attention_weights" in token.code
    with torch.no_grad():
        h, t = head(x), token(x)
        ref = model(x)
    assert rel_err(h.total(), ref) <= bound(torch.float32)
    # each head is the sum of its source tokens, computed the other way
    torch.testing.assert_close(t.group("head").contributions, h.group("head").contributions, rtol=1e-4, atol=1e-6)
