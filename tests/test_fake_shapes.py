"""Shapes read on fake tensors (``core.fake_run``) are those of a real run, a graph fake
tensors cannot run falls back to a real run, a fake tensor left on a module is put back, and a
model's output structure is read from a real call, so a cache it keeps stays real."""
from __future__ import annotations

import copy
import functools

import timm
import torch
import torch.fx as fx
from hypothesis import given, settings
from torch._subclasses.fake_tensor import FakeTensor

import fxdecomp
from conftest import bound, rel_err
from fxdecomp.adapters import Selected, select
from fxdecomp.core.fake_run import fake_call
from fxdecomp.passes.shapes import propagate
from fxdecomp.passes.trace import trace
from test_properties import build, vit_configs


def _metas(gm: fx.GraphModule) -> dict:
    out = {}
    for n in gm.graph.nodes:
        tm = n.meta.get("tensor_meta")
        items = tm if isinstance(tm, (list, tuple)) else [tm]
        out[n.name] = [None if t is None or not hasattr(t, "shape") else
                       (tuple(t.shape), t.dtype, tuple(t.stride)) for t in items]
    return out


def _fake_and_real(model, x) -> tuple[dict, dict, bool]:
    gm, _ = trace(model, x)
    faked = propagate(gm, x)
    fake = _metas(gm)
    propagate(gm, x, fake=False)
    return fake, _metas(gm), faked


@settings(max_examples=8, deadline=None)
@given(vit_configs())
def test_fake_shapes_equal_real_ones_on_drawn_vits(drawn):
    model = build(*drawn).eval()
    size = drawn[0]["img_size"]
    for dtype in (torch.float32, torch.float64):
        fake, real, faked = _fake_and_real(copy.deepcopy(model).to(dtype), torch.randn(2, 3, size, size, dtype=dtype))
        assert faked, "fake tensors ran the whole graph"
        assert fake == real
        assert any(v and v[0] and v[0][1] == dtype for v in fake.values())


def test_fake_shapes_equal_real_ones_on_conv_towers():
    for name in ("resnet18", "convnext_atto", "mobilevitv2_050"):
        model = timm.create_model(name, pretrained=False).eval()
        fake, real, faked = _fake_and_real(model, torch.randn(2, 3, 64, 64))
        assert faked and fake == real, name
        assert len(fake) > 50


class _Item(torch.nn.Module):
    """``.item()`` has no value on a fake tensor."""

    def forward(self, x):
        return x * 2 + x.sum().item()


def test_a_graph_fake_tensors_cannot_run_is_run_for_real():
    gm = fx.symbolic_trace(_Item())
    x = torch.randn(2, 3)
    assert propagate(gm, x) is False
    assert [tuple(n.meta["tensor_meta"].shape) for n in gm.graph.nodes if "tensor_meta" in n.meta][-1] == (2, 3)


class _Cache(torch.nn.Module):
    """Keeps a table computed in its forward, as rotary embeddings do."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.table = None

    def forward(self, x):
        if self.table is None or self.table.shape != x.shape[1:]:
            self.table = torch.ones(x.shape[1:]) * 3
        return self.lin(x) + self.table, self.lin(x)


def test_a_fake_tensor_left_on_the_model_is_put_back_and_the_call_counts_as_failed():
    m = _Cache()
    ok, out = fake_call(m, m, torch.randn(2, 4))
    assert not ok and out is None and m.table is None
    m.table = torch.zeros(4)
    m.lin.register_buffer("extra", torch.ones(1))
    ok, _ = fake_call(m, lambda x: (setattr(m, "table", torch.ones(5)), m.lin.register_buffer("extra", x[0, :1]),
                                    m(x))[-1], torch.randn(2, 4))
    assert not ok and torch.equal(m.table, torch.zeros(4)) and torch.equal(m.lin.extra, torch.ones(1))
    assert not any(isinstance(v, FakeTensor) for v in m.state_dict().values())


@functools.lru_cache(maxsize=4)
def _table(n: int) -> torch.Tensor:
    """A position table kept by a function's cache, as transformers' BEiT keeps its index."""
    return torch.arange(n, dtype=torch.float32) / n


class _Cached(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x) + _table(x.shape[-1]), x


def test_select_runs_the_model_for_real_on_one_image_and_a_cached_table_stays_real():
    """What a model returns is read from a real call (a fake one would leave a fake tensor in a
    cache no guard sees), on one image."""
    seen = []

    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            seen.append((isinstance(x, FakeTensor), x.shape[0]))
            return self.lin(x), x

    chosen = select(Pair().eval(), torch.randn(2, 4), output=0)
    assert isinstance(chosen, Selected) and seen == [(False, 1)]
    _table.cache_clear()
    model, x = _Cached().eval(), torch.randn(3, 4)
    with torch.no_grad():
        dm = fxdecomp.decompose(model, example=x, output=0)
        ref = model(x)[0]  # the model still runs: its cached table is real
        assert not isinstance(_table(4), FakeTensor)
        assert rel_err(dm(x).total(), ref) <= bound(torch.float32)
    cache = _Cache().eval()
    with torch.no_grad():
        dm = fxdecomp.decompose(cache, example=x, output=0)
        assert rel_err(dm(x).total(), cache(x)[0]) <= bound(torch.float32)
    assert isinstance(cache.table, torch.Tensor) and not isinstance(cache.table, FakeTensor)


def test_a_dict_filled_in_place_by_a_fake_call_is_put_back():
    """A forward that fills a dict attribute in place (LeViT's attention-bias cache)."""

    class Biases(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = torch.nn.Parameter(torch.randn(4))
            self.cache = {}

        def forward(self, x):
            if "b" not in self.cache:
                self.cache["b"] = self.bias * 2
            return x + self.cache["b"]

    m = Biases()
    ok, _ = fake_call(m, m, torch.randn(2, 4))
    assert not ok and m.cache == {}
