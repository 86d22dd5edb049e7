"""Products of weights alone (pass 11, hoist): made once in float64, kept until a weight
changes, and never in the way of autograd."""
from __future__ import annotations

import pytest
import torch

import fxdecomp
from conftest import bound, images, rel_err, small_vit
from fxdecomp.passes.hoist import SUBMODULE, _fetch, _image_independent
from fxdecomp.weight_products import Widened


def hoisted(dm):
    return getattr(dm.graph_module, SUBMODULE)


def test_no_product_of_weights_alone_is_left_in_the_per_batch_code():
    dm = fxdecomp.decompose(small_vit(), "head")
    g = dm.graph_module.graph
    fixed = _image_independent(g)
    left = [n for n in g.nodes if n in fixed and n.target is torch.einsum]
    assert left == []
    n_products = len(hoisted(dm).products.graph.output_node().args[0])
    assert n_products >= 2 * 2  # per layer at least: a head's value-to-output map, the MLP's readout


def test_products_are_rounded_once_from_float64():
    """Each hoisted product is the float64 product rounded: at least as close to it as the float32
    product, and within half a unit in the last place of float32."""
    model = small_vit()
    dm = fxdecomp.decompose(model, "head")
    x = images(dm)
    with torch.no_grad():
        dm(x)
    (call,) = [n for n in dm.graph_module.graph.nodes if n.op == "call_module" and n.target == SUBMODULE]
    leaves = [_fetch(dm.graph_module, a.target) for a in call.args]
    products = hoisted(dm).products
    kept = hoisted(dm)._values
    native = products(*leaves)
    wide = Widened(products).run(*leaves)
    for k, n, w in zip(kept, native, wide):
        assert k.dtype == torch.float32
        assert torch.equal(k, w.float())
        assert (k.double() - w).abs().max() <= (n.double() - w).abs().max()
        assert ((k.double() - w).abs() <= w.abs() * 2.0 ** -24 + 1e-45).all()


def test_products_are_made_once_and_again_after_a_weight_changes():
    model = small_vit()
    dm = fxdecomp.decompose(model, "head")
    x = images(dm)
    module = hoisted(dm)
    calls = []
    original = module._compute
    module._compute = lambda w: calls.append(1) or original(w)
    with torch.no_grad():
        dm(x), dm(x)
        assert len(calls) == 1
        model.blocks[1].attn.proj.weight.mul_(1.7)  # in place: the version counter moves
        out, ref = dm(x), model(x)
        assert len(calls) == 2 and rel_err(out.total(), ref) <= bound(torch.float32)
        model.blocks[0].attn.proj.weight.data = torch.randn_like(model.blocks[0].attn.proj.weight)  # a new tensor
        out, ref = dm(x), model(x)
        assert len(calls) == 3 and rel_err(out.total(), ref) <= bound(torch.float32)
    with torch.inference_mode():
        assert rel_err(dm(x).total(), model(x)) <= bound(torch.float32)
    assert len(calls) == 3


def test_conversion_recomputes_them_in_the_new_dtype():
    model = small_vit()
    dm = fxdecomp.decompose(model, "head")
    x = images(dm)
    with torch.no_grad():
        dm(x)
        model.double()
        dm.double()
        assert hoisted(dm)._values is None
        out, ref = dm(x.double()), model(x.double())
    assert all(v.dtype == torch.float64 for v in hoisted(dm)._values)
    assert rel_err(out.total(), ref) <= 1e-7  # constants made at float32 and then widened: float32's 1/d


@pytest.mark.parametrize("granularity", ["head", "token"])
def test_gradients_flow_through_the_products(granularity):
    """With autograd on, the products are computed on every call, inside the graph: a weight
    that meets the images only through them still gets its gradient, and nothing is cached."""
    model = small_vit().double()
    dm = fxdecomp.decompose(model, granularity)
    x = images(dm, dtype=torch.float64)
    weight = model.blocks[1].attn.proj.weight
    (through,) = torch.autograd.grad(dm(x).contributions.square().sum(), weight)
    assert hoisted(dm)._values is None
    module = hoisted(dm)
    module.forward = lambda *w: tuple(t.detach() for t in module.products(*w))
    (cut,) = torch.autograd.grad(dm(x).contributions.square().sum(), weight, allow_unused=True)
    assert torch.isfinite(through).all() and through.abs().max() > 0
    assert cut is None or rel_err(cut, through) > 1e-3  # the products carried part of it


def test_a_change_through_data_is_followed():
    """``w.data`` is a view with a version counter of its own: ``w.data.mul_(2)`` moves no counter the
    module can see, and the kept products went stale (relative error 0.45). The values' fingerprint sees it."""
    model = small_vit()
    dm = fxdecomp.decompose(model, "head")
    x = images(dm)
    with torch.no_grad():
        dm(x)
        for change in (lambda w: w.data.mul_(2), lambda w: w.data[:, :3].zero_(),
                       lambda w: w.data.copy_(w.data.flip(1))):  # a permutation: same sum, same norm
            weight = model.blocks[1].attn.proj.weight
            version = weight._version
            change(weight)
            assert weight._version == version
            out, ref = dm(x), model(x)
            assert rel_err(out.total(), ref) <= bound(torch.float32) and out.error() <= bound(torch.float32)


def test_a_replaced_parameter_buffer_or_submodule_is_refused():
    """A new object in the model's place (not an in-place change): the compiled module would still compute
    the old model (its output 30-50% off the model's, with error() 1e-6). It says so, naming decompose()."""
    from test_hardening import _models

    model, shape = _models()["buffers"]
    x = images(shape, batch=2)

    def fresh():
        return fxdecomp.decompose(model, "head", input_size=shape)

    dm = fresh()
    old = model.mlp[1].weight
    model.mlp[1].weight = torch.nn.Parameter(old.detach() * 2)
    with pytest.raises(fxdecomp.InputError, match=r"parameter 'mlp.1.weight' was replaced.*decompose\(model\) again"):
        dm(x)
    dm = fresh()
    with torch.no_grad():
        model.mlp[1].weight.copy_(old)  # in place: followed
        assert rel_err(dm(x).total(), model(x)) <= bound(torch.float32)
    model.bn.running_mean = model.bn.running_mean + 1
    with pytest.raises(fxdecomp.InputError, match=r"buffer 'bn.running_mean' was replaced"):
        dm(x)
    dm = fresh()
    model.mlp[3] = torch.nn.Linear(16, 8)
    with pytest.raises(fxdecomp.InputError, match=r"submodule 'mlp.3' was replaced"):
        dm(x)
    dm = fresh()
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
    with pytest.raises(fxdecomp.InputError, match="was replaced"):
        dm(x)
    with torch.no_grad():
        dm = fresh()
        assert rel_err(dm(x).total(), model(x)) <= bound(torch.float32)
