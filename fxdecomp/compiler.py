"""``decompose(model)``: trace once, run the passes, return a decomposing module."""
from __future__ import annotations

import warnings
from typing import Iterable

import torch

from .adapters import Selected, select, unwrap
from .errors import AxisWarning, CollapseWarning, InputError
from .models_registry.preprocess import input_size_of
from .module import DecomposedModel
from .passes.affinity import analyse
from .passes.axes import AxisAnalysis
from .passes.codegen import CodeGen
from .passes.dataflow import classify_values
from .passes.expand import Expander
from .passes.granularity import GRANULARITIES, component_table, plan_groups
from .passes.hoist import hoist_weight_products
from .passes.labels import label
from .passes.shapes import propagate
from .passes.stream import find_stream, output_node
from .passes.trace import trace


def decompose(model: torch.nn.Module, granularity: str = "head", *, layers: Iterable[int] | None = None,
              input_size: tuple[int, ...] | None = None, example: torch.Tensor | None = None,
              plan_batch: int = 32, linearize: bool = False, output: str | int | None = None) -> DecomposedModel:
    """Compile ``model`` into a module that returns its output as a sum of components.

    Args:
        model: any image model in eval mode whose ``forward(images)`` returns one tensor
            (e.g. a timm model with ``num_classes=0`` for pre-logits features, or with its
            classifier for logits; an open_clip ``model.visual`` tower).
        granularity: ``"block"`` (one component per residual branch), ``"head"``
            (attention branches split per head) or ``"token"`` (per head and source token).
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

    Norm statistics, attention weights and activations are frozen at their actual values
    for each batch, so the decomposition is exact: ``dm(x).total() == model(x)``.
    """
    if granularity not in GRANULARITIES:
        raise InputError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
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

    # the passes, in order (each in fxdecomp/passes/, numbered so in its docstring)
    gm, dynamic = trace(model, example)                          # 1 trace
    propagate(gm, example)                                       # 2 shapes
    flow, inp = classify_values(gm)                              # 3 dataflow
    axis_pass = AxisAnalysis(gm, flow)
    axes = axis_pass.run()                                       # 4 axes
    stream = find_stream(gm, flow, inp)                          # 5 stream
    aff = analyse(gm, flow, stream)                              # 6 affinity (symbolic runs inside)
    expander = Expander(gm, flow, inp, stream, aff, axes, linearize=linearize)
    terms, specs = expander.run()                                # 7 expand (7a demand first)
    axis_pass.check_output(output_node(gm))  # after expand: an op no rule covers on the stream is named there
    labels = label(specs, stream, axes, expander.joins())        # 8 labels
    for n in axes.notes:
        warnings.warn(n, AxisWarning, stacklevel=2)
    for n in expander.notes:
        warnings.warn(n, CollapseWarning, stacklevel=2)
    notes = chosen + axes.notes + expander.notes

    known_layers = sorted({lab.layer for lab in labels if lab.layer is not None})
    if layers is not None:
        layers = set(int(i) for i in layers)
        bad = layers - set(known_layers)
        if bad:
            raise InputError(f"no layer(s) {sorted(bad)} in {name}; its layers are "
                             f"{known_layers[0]}..{known_layers[-1]}" if known_layers else
                             f"{name} has no layers to split")
    groups = plan_groups(specs, labels, granularity, layers)       # 9 granularity
    total = groups[-1].start + groups[-1].count if groups else 0
    by_spec: dict = {}
    for t in terms:
        by_spec.setdefault(t.component.id, []).append(t)
    cg = CodeGen(gm, inp, output_node(gm), axes.table, dtype, device, nominal_batch=plan_batch)
    components = component_table(groups, axes.table)
    fwd = cg.build(groups, by_spec, total)                       # 10 codegen
    hoist_weight_products(fwd, cg.forward_names)                 # 11 hoist
    return DecomposedModel(fwd, components, input_shape=tuple(example.shape[1:]), dtype=dtype,
                           granularity=granularity, layers=layers, dynamic_batch=dynamic,
                           example_batch=example.shape[0], model_name=name, notes=notes,
                           linearised=expander.linearised)
