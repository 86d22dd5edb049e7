"""Decompositions agree with each other and with the model's linear structure."""
from __future__ import annotations

import torch
import torch.nn as nn

import fxdecomp
from conftest import images, rel_err, small_vit


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


def test_gradients_flow_through_contributions():
    vit = small_vit()
    dm = fxdecomp.decompose(vit, "head")
    x = images(dm).requires_grad_(True)
    out = dm(x)
    out.contributions[:, 5].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_generated_code_is_readable():
    dm = fxdecomp.decompose(small_vit(), "head")
    code = dm.code
    assert "def forward" in code and "einsum" in code and "attention_weights" in code
    assert "blocks_1_attn" in code
