"""``decompose(model)``: trace once, run the passes, return a decomposing module.

The compiler is the list of passes below; each is ``run(state) -> state`` in its own file of
``fxdecomp/passes/`` and reads and fills fields of one :class:`~fxdecomp.core.state.CompileState`.
"""
from __future__ import annotations

import operator
import warnings
from typing import Iterable

import torch

from .adapters import Selected, select, unwrap
from .core.state import CompileState, Pass, run_passes
from .errors import AxisWarning, CollapseWarning, InputError
from .models_registry.preprocess import input_size_of
from .module import DecomposedModel
from .passes import (
    affinity,
    axes,
    batch,
    codegen,
    dataflow,
    demand,
    expand,
    granularity,
    grouping,
    hoist,
    labels,
    readout,
    route,
    shapes,
    stream,
    trace,
)
from .decomposition import GROUPINGS
from .passes.granularity import GRANULARITIES
from .shared_weights import SharedWeights

#: the passes, in order (each numbered so in its file's docstring)
PASSES: tuple[Pass, ...] = (
    trace.run,         # 1  torch.export -> ATen graph                          gm, dynamic
    shapes.run,        # 2  concrete shapes on the example                     (tensor_meta)
    dataflow.run,      # 3  image-dependent, constant or shape values          flow, inp
    axes.run,          # 4  every axis labelled with atoms                     axes
    stream.run,        # 5  the residual stream (post-dominators)              out, stream
    affinity.run,      # 6  what is affine in the stream (symbolic inside)     affinity
    route.run,         # 7  where the walk goes through, where it stops        route
    demand.run,        # 8  which indices of each value the output reads       demand
    expand.run,        # 9  the output as a sum of component terms             terms, specs, joins, ...
    batch.run,         # 10 the output's first axis is the batch               -
    labels.run,        # 11 names, kinds and layers from the module tree       labels
    granularity.run,   # 12 how finely each component is split                 groups, components
    grouping.run,      # 13 components summed at compile time (group=)          targets, components
    readout.run,       # 14 the readout every term ends with (readout=)         readout_plan
    codegen.run,       # 15 the decomposing GraphModule                        forward, model_nodes, ...
    hoist.run,         # 16 products of weights alone made once                forward, hoisted
)


def decompose(model: torch.nn.Module, granularity: str = "head", *, layers: Iterable[int] | None = None,
              input_size: tuple[int, ...] | None = None, example: torch.Tensor | None = None,
              plan_batch: int = 32, linearize: bool = False, output: str | int | None = None,
              readout=None, group=None) -> DecomposedModel:
    """Compile ``model`` into a module that returns its output as a sum of components.

    Args:
        model: any image model in eval mode whose ``forward(images)`` returns one tensor
            (e.g. a timm model with ``num_classes=0`` for pre-logits features, or with its
            classifier for logits; an open_clip ``model.visual`` tower).
        granularity: ``"block"`` (one component per residual branch), ``"head"``
            (attention branches split per head), ``"token"`` (per head and source token) or
            ``"neuron"`` (attention per head, every MLP branch per hidden unit: the input axis
            of its last linear layer; a branch that cannot be split so is listed in
            ``dm.notes``).
        layers: if given, only these layers (see ``Component.layer``) are split finer than
            ``"block"``.
        input_size: (C, H, W) of the images; read from the model's config when omitted.
        example: an example batch instead of random images of ``input_size``.
        plan_batch: batch size assumed when choosing contraction orders.
        linearize: write elementwise nonlinearities that lie *on* the residual stream (a
            ResNet's ReLU after each join, a tanh pre-logits layer, an activation after a
            final conv) as ``f(x) = x · (f(x)/x)`` with the gate frozen at its actual value,
            as softmax weights are frozen, instead of collapsing everything before them into
            one component. ``dm.linearised`` lists the ops so treated. Without it such an op
            raises a :class:`CollapseWarning` (also in ``dm.notes``); a nonlinear stem before
            any branch is just the embedding and never warns.
        output: for a model returning several tensors, the one to decompose: a Hugging Face
            model's ``"image_embeds"``, ``"logits"``, ``"pooler"``, ``"cls"``, ``"mean"`` or
            ``"last_hidden_state"``; an open_clip tower's ``"pooled"`` or ``"tokens"``; a tuple's
            index. The default is the representation people use (``fxdecomp.adapters``); the
            first line of ``dm.notes`` says which was decomposed.
        readout: read the output and every contribution through ``R``, a ``[D, K]`` (or
            ``[*out, K]``) tensor: ``dm(x).contributions`` is then ``[B, C, K]`` and
            ``dm(x).output`` is ``model(x) @ R``. ``R`` is a factor of every term, so it is
            contracted inside each component's product and nothing of size ``[B, C, D]`` is
            built; ``dm.set_readout(R2)`` (same K) changes it without compiling again. Also a
            mapping from component names (a branch's, or each of its heads' at head or token
            granularity) to one ``[D, K]`` each: every component read through its own (a token
            through its head's); ``output`` is then the sum of the readings.
        group: sum components at compile time as ``Decomposition.group(group)`` would afterwards
            (``"token"``: one component per source position, over heads and layers; ``"layer"``,
            ``"kind"``, ...): same components, same names, and the fine slices never exist.

    Norm statistics, attention weights and activations are frozen at their actual values
    for each batch, so the decomposition is exact: ``dm(x).total() == model(x)``.
    """
    if not isinstance(model, torch.nn.Module):
        hint = (f": load it first, e.g. fxdecomp.models_registry.load({model!r})" if isinstance(model, str) else
                "")
        raise InputError(f"decompose() takes a torch.nn.Module, got {type(model).__name__} {model!r:.60}{hint}")
    if granularity not in GRANULARITIES:
        raise InputError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    layers = _layer_numbers(layers, granularity)
    if group is not None and not callable(group) and group not in GROUPINGS:
        raise InputError(f"group={group!r} is not a grouping: use one of {GROUPINGS} (as Decomposition.group "
                         "takes), or a function from a Component to a group key")
    param = next(iter(model.parameters()), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    device = param.device if param is not None else torch.device("cpu")
    if example is None:
        if input_size is None:
            input_size = input_size_of(model)
        # a private generator: compiling must not move the caller's random stream
        gen = torch.Generator().manual_seed(0)
        example = torch.randn(2, *input_size, generator=gen, dtype=dtype).to(device)
    elif example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:]).clone()
    name = type(unwrap(model)).__name__
    model = select(model, example, output)  # several outputs: the one to decompose (adapters/)
    chosen = [model.note] if isinstance(model, Selected) else []
    state = CompileState(model=model, example=example, granularity=granularity,
                         layers=None if layers is None else {int(i) for i in layers}, linearize=linearize,
                         plan_batch=plan_batch, dtype=dtype, device=device, model_name=name, readout=readout,
                         group=group)
    state = run_passes(state, PASSES)
    for n in state.axes.notes:
        warnings.warn(n, AxisWarning, stacklevel=2)
    for n in state.collapses:
        warnings.warn(n, CollapseWarning, stacklevel=2)
    return DecomposedModel(state.forward, state.components, dtype_buffer=state.dtype_buffer,
                           input_shape=tuple(example.shape[1:]), dtype=dtype, granularity=granularity,
                           layers=state.layers, dynamic_batch=state.dynamic, example_batch=example.shape[0],
                           model_name=state.model_name, notes=chosen + state.notes, linearised=state.linearised,
                           shared=SharedWeights(model, state.forward), readout=state.readout_plan, group=group)


def _layer_numbers(layers, granularity: str) -> set[int] | None:
    """``layers`` as a set of ints; floats (5.5 would become 5), booleans (True would become 1) and
    strings are refused, as is ``layers`` at block granularity, where it would change nothing."""
    if layers is None:
        return None
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise InputError(f"layers must be a list of layer numbers, got {layers!r}")
    out = set()
    for i in layers:
        if isinstance(i, bool) or not hasattr(i, "__index__"):
            raise InputError(f"layers must be whole layer numbers, got {i!r} in {list(layers)!r}")
        out.add(operator.index(i))
    if granularity == "block":
        raise InputError(f"layers={sorted(out)} splits those layers finer than blocks, so it has no effect at block "
                         "granularity: drop it, or choose granularity 'head', 'token' or 'neuron'")
    return out
