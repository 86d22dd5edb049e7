"""Each compiler pass on its own, on a small ViT whose structure is known."""
from __future__ import annotations

import torch

from conftest import small_vit
from fxdecomp.compiler import PASSES
from fxdecomp.core.state import CompileState, run_passes
from fxdecomp.core.step import Step
from fxdecomp.passes.dataflow import CONST, INPUT, PARAM, SHAPE, VARYING, classify_values
from fxdecomp.passes.granularity import component_table, plan_groups
from fxdecomp.passes.labels import label, majority_module
from fxdecomp.core.shape import shape_of
from fxdecomp.passes.shapes import propagate
from fxdecomp.passes.stream import find_stream
from fxdecomp.passes.trace import trace

aten = torch.ops.aten


def _state(model, x, upto: str, granularity="head") -> CompileState:
    """The compile state after the passes up to and including ``upto`` (a pass's file name)."""
    names = [p.__module__.rsplit(".", 1)[-1] for p in PASSES]
    state = CompileState(model=model, example=x, granularity=granularity, layers=None, linearize=False,
                         plan_batch=32, dtype=x.dtype, device=x.device, model_name=type(model).__name__)
    return run_passes(state, PASSES[:names.index(upto) + 1])


def _traced(**kw):
    model = small_vit(**kw)
    x = torch.randn(2, 3, 32, 32)
    gm, dynamic = trace(model, x)
    propagate(gm, x)
    return model, gm, dynamic


def _run(upto="affinity", **kw):
    model = small_vit(**kw)
    return _state(model, torch.randn(2, 3, 32, 32), upto)


def _nodes(gm, target):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target == target]


def test_trace_keeps_batch_dynamic_and_attention_whole():
    _, gm, dynamic = _traced(depth=2)
    assert dynamic
    assert len(_nodes(gm, aten.scaled_dot_product_attention.default)) == 2
    assert not [n for n in gm.graph.nodes if n.op == "call_module"]  # guards stripped


def test_dataflow_separates_image_parameters_and_shapes():
    _, gm, _ = _traced(depth=1)
    flow, inp = classify_values(gm)
    assert flow[inp] == INPUT
    assert {flow[n] for n in gm.graph.nodes if n.op == "get_attr"} == {PARAM}
    assert all(flow[n] == SHAPE for n in _nodes(gm, aten.sym_size.int))
    expand = _nodes(gm, aten.expand.default)[0]  # the class token broadcast to the batch
    assert flow[expand] == CONST
    assert flow[_nodes(gm, aten.linear.default)[0]] == VARYING


def test_axes_tie_heads_and_tokens_together():
    state = _run("axes", depth=1, num_heads=4, embed_dim=32)
    gm, axes = state.gm, state.axes
    table = axes.table
    sdpa = _nodes(gm, aten.scaled_dot_product_attention.default)[0]
    q, k, v = sdpa.args[:3]
    b, h, n, e = axes.of(v)
    assert b == (table.batch,) and [a.size for a in h + n + e] == [4, 17, 8]
    assert axes.of(q) == axes.of(v)  # same heads, tokens and head dims
    stream_tokens = axes.of(_nodes(gm, aten.layer_norm.default)[0])[1]
    assert n == stream_tokens
    assert table.coordinates(n)[0] == {"prefix": "cls_token"}
    assert table.coordinates(n)[16] == {"row": 3, "col": 3, "rows": 4, "cols": 4}


def test_stream_is_the_chain_of_residual_adds():
    state = _run("stream", depth=3)
    gm, flow, inp, stream = state.gm, state.flow, state.inp, state.stream
    adds = [n for n in stream.nodes if n.target == aten.add.Tensor and len(n.all_input_nodes) == 2
            and all(flow[a] == VARYING for a in n.all_input_nodes)]
    assert len(adds) == 6  # attention and MLP joins of three blocks
    assert stream.nodes[0] is inp
    norms = _nodes(gm, aten.layer_norm.default)
    assert [n in stream for n in norms] == [False] * 6 + [True]  # only the final norm is on the stream


class _ShapeOnlyUse(torch.nn.Module):
    """``bn(y.flatten(0, 1)).reshape_as(y)``: ``y`` feeds reshape_as for its shape only."""

    def __init__(self):
        super().__init__()
        self.linear, self.bn = torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8)

    def forward(self, x):
        y = self.linear(x.flatten(2).transpose(1, 2))
        return self.bn(y.flatten(0, 1)).reshape_as(y).mean(1)


def test_a_shape_only_use_keeps_the_stream_on_the_data_path():
    model = _ShapeOnlyUse().eval()
    x = torch.randn(2, 8, 4, 4)
    gm, _ = trace(model, x)
    propagate(gm, x)
    flow, inp = classify_values(gm)
    stream = find_stream(gm, flow, inp)
    flat = [n for n in gm.graph.nodes if n.op == "call_function" and "flatten" in str(n.target)]
    assert flat and all(n in stream for n in flat)  # not bypassed through reshape_as's shape argument


def test_affinity_marks_values_shallower_than_weights():
    state = _run(depth=1)
    gm, aff = state.gm, state.affinity
    lin = _nodes(gm, aten.linear.default)
    qkv, fc1 = lin[0], lin[2]
    assert not aff.affine[qkv]  # behind the norm that starts the branch
    norm1 = _nodes(gm, aten.layer_norm.default)[0]
    assert not aff.linear_reach[norm1] and aff.step[norm1] is Step.NORM
    assert aff.depth[fc1] == 1 and aff.depth[_nodes(gm, aten.gelu.default)[0]] == 2


def test_expand_finds_branches_leaves_and_biases():
    state = _run("expand", depth=2)
    gm, terms, specs = state.gm, state.terms, state.specs
    roles = [s.category for s in specs]
    # a class-token readout: the patch embedding reaches the output only through attention
    assert roles.count("branch") == 4 and roles.count("embed") == 0
    sdpas = _nodes(gm, aten.scaled_dot_product_attention.default)
    attn = [s for s in specs if s.mixing is not None]
    assert [s.mixing for s in attn] == sdpas and [s.leaf for s in attn] == [n.args[2] for n in sdpas]
    assert all(len(s.slicing["head"]) == 1 and len(s.slicing["token"]) == 1 for s in attn)
    gelus = _nodes(gm, aten.gelu.default)
    assert [s.leaf for s in specs if s.category == "branch" and s.mixing is None] == gelus
    biases = {s.label for s in specs if s.category == "bias"}
    assert {"cls_token", "pos_embed", "norm.bias", "blocks.1.mlp.fc2.bias"} <= biases
    assert "patch_embed.proj.bias" not in biases
    assert {t.component.id for t in terms} <= {s.id for s in specs}


def test_labels_and_granularity():
    state = _run("expand", depth=2)
    specs, stream, axes = state.specs, state.stream, state.axes
    labels = label(specs, stream, axes)
    names = [lab.name for lab in labels]
    assert "blocks.1.attn" in names and "blocks.0.mlp" in names
    attn = labels[names.index("blocks.1.attn")]
    assert attn.kind == "attn" and attn.layer == 1 and attn.module_type == "Attention"
    groups = plan_groups(specs, labels, "token", layers={1})
    comps = component_table(groups, axes.table)
    fine = [c for c in comps if c.layer == 1 and c.kind == "attn"]
    assert len(fine) == 4 * 17 and fine[0].split == "head+token"
    assert [c.index for c in comps] == list(range(len(comps)))


def test_majority_module_prefers_the_attention_over_its_block():
    class FakeNode:
        op = "call_function"

        def __init__(self, path):
            self.meta = {"nn_module_stack": {"k": (path, "T")}}

    nodes = [FakeNode(p) for p in ["b.0.norm1", "b.0.attn.qkv", "b.0.attn", "b.0.attn", "b.0.attn.proj", "b.0.ls"]]
    assert majority_module(nodes) == "b.0.attn"


def test_shapes_are_concrete():
    _, gm, _ = _traced(depth=1)
    ln = _nodes(gm, aten.layer_norm.default)[0]
    assert shape_of(ln) == (2, 17, 32)
