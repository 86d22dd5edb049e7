"""The compiled decomposing module users call on images."""
from __future__ import annotations

from collections import Counter

import torch
import torch.fx as fx

from .components import ComponentTable
from .decomposition import Decomposition
from .errors import InputError
from .graphs import GraphedForward
from .passes.codegen import READOUT
from .readout import readout_matrix
from .shared_weights import SharedWeights


class DecomposedModel(torch.nn.Module):
    """Calling it on images returns a :class:`Decomposition` of the model's output.

    It runs the model's own (traced) forward once and, alongside, the generated
    code that splits the output into component contributions; ``print(dm.code)``
    shows that code.
    """

    def __init__(self, forward_module: fx.GraphModule, components: ComponentTable, *, dtype_buffer: str,
                 input_shape: tuple, dtype: torch.dtype, granularity: str, layers, dynamic_batch: bool,
                 example_batch: int, model_name: str, notes: list[str], linearised: list[str] = (),
                 shared: SharedWeights | None = None, readout=None, group=None):
        super().__init__()
        self.graph_module = forward_module
        #: what the compiled module shares with the model, checked on every call (see ``shared_weights``)
        self.shared = shared
        #: the buffer of ``forward_module`` whose dtype (and device) is the module's compute dtype
        self._dtype_buffer = dtype_buffer
        if not isinstance(getattr(forward_module, dtype_buffer, None), torch.Tensor):
            forward_module.register_buffer(dtype_buffer, torch.empty(0, dtype=dtype), persistent=False)
        self.components = components
        self.input_shape = tuple(input_shape)
        self.granularity = granularity
        self.layers = layers
        self.dynamic_batch = dynamic_batch
        self.example_batch = example_batch
        self.model_name = model_name
        self.notes = notes
        #: Stream nonlinearities written as frozen gates (``decompose(..., linearize=True)``).
        self.linearised = list(linearised)
        self._graphed: GraphedForward | None = None
        #: the grouping summed at compile time (``decompose(..., group=...)``), or None
        self.group = group
        #: the readout's output shape and width (None: contributions have the output's shape)
        self._readout = None if readout is None else (tuple(readout.out_shape), readout.k, len(readout.matrix))
        if readout is not None and len(readout.matrix) > 1:
            self.notes = list(self.notes) + [
                "each component is read through its own map (readout= per component), so output is the sum of "
                "the readings, not a map of the model's output: error() checks only their sum"]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the module computes in (follows ``dm.to(...)``, ``dm.double()``)."""
        return self._ref().dtype

    @property
    def device(self) -> torch.device:
        return self._ref().device

    def _ref(self) -> torch.Tensor:
        return getattr(self.graph_module, self._dtype_buffer)

    def _apply(self, fn, recurse=True):
        """``to``/``double``/``float``/``cuda`` convert everything the module holds: the parameters
        (the model's own, shared), the model's buffers and every constant of the generated
        code (kept as buffers). Devices that the traced forward fixed (``torch.zeros(...,
        device=x.device)`` traced on the CPU) move with it; dtypes the model's code fixes
        (``torch.arange(..., dtype=torch.float32)``) stay, as they do in the model."""
        before = self.device
        out = super()._apply(fn, recurse)
        after = self.device
        if after != before:
            _move_fixed_devices(self.graph_module, before, after)
        if self.shared is not None:
            self.shared.adopt_converted(self.graph_module)
        if self._graphed is not None:  # captured graphs hold the old buffers: recapture
            self._graphed = GraphedForward(self.graph_module)
        return out

    @property
    def collapsed(self) -> bool:
        """Whether a nonlinearity on the stream merged earlier components into one."""
        return any(c.kind == "collapsed" for c in self.components)

    @property
    def code(self) -> str:
        """The generated Python of the decomposing forward."""
        return self.graph_module.code

    def cuda_graphs(self, enabled: bool = True) -> "DecomposedModel":
        """Replay the decomposing forward as CUDA graphs, one captured per batch size (for
        inference on a CUDA device; at batch 1-8 the forward is bound by kernel launches).
        Returns the module. Call it after ``dm.cuda()``; images must then be CUDA tensors,
        passed under ``torch.no_grad()`` or ``torch.inference_mode()``."""
        if enabled and self.device.type != "cuda":
            raise InputError(f"CUDA graphs need the compiled module on a CUDA device, but it is on {self.device}; "
                             "call dm.cuda() first")
        self._graphed = GraphedForward(self.graph_module) if enabled else None
        return self

    @property
    def readout(self) -> torch.Tensor | None:
        """The readout matrix [D, K] (a copy; [M, D, K] with one per component group), or None."""
        if self._readout is None:
            return None
        r = getattr(self.graph_module, READOUT).detach().clone()
        return r[0] if len(r) == 1 else r

    def set_readout(self, readout) -> "DecomposedModel":
        """Read through another matrix of the same shape ([D, K] or [*out, K], the K compiled for),
        without compiling again: it is written into the module's readout buffer (products of it
        with weights are recomputed on the next call). Returns the module."""
        if self._readout is None:
            raise InputError("this module was compiled without a readout: decompose the model with "
                             "fxdecomp.decompose(model, granularity, readout=R) to read its contributions through R")
        out_shape, k, m = self._readout
        if m > 1:
            raise InputError("this module reads each component through its own map (readout= per component); "
                             "decompose again with the new maps")
        buf = getattr(self.graph_module, READOUT)
        mat = readout_matrix(readout, out_shape, k)
        with torch.no_grad():
            buf[0].copy_(mat.to(device=buf.device, dtype=buf.dtype))
        return self

    def forward(self, images: torch.Tensor) -> Decomposition:
        self._check(images)
        run = self._graphed if self._graphed is not None else self.graph_module
        output, stored = run(images)
        return Decomposition(stored.transpose(0, 1), self.components, output)

    def _check(self, images) -> None:
        if not isinstance(images, torch.Tensor):
            raise InputError(f"expected a tensor of images, got {type(images).__name__}")
        want = self.input_shape
        if images.dim() != len(want) + 1 or tuple(images.shape[1:]) != want:
            raise InputError(self._shape_message(images))
        self._check_converted()
        if self.shared is not None:
            self.shared.check()
        if images.dtype != self.dtype:
            if not images.is_floating_point():
                raise InputError(
                    f"images are {images.dtype}, but {self.model_name} takes preprocessed {self.dtype} images: "
                    f"preprocess them with fxdecomp.models_registry.transform_for(model)(images).to({self.dtype}).")
            raise InputError(
                f"images are {images.dtype} but {self.model_name} was compiled for {self.dtype}; convert them "
                f"with images.to({self.dtype}) (or decompose a {images.dtype} copy of the model).")
        dev = self.device
        if images.device != dev:
            raise InputError(f"images are on {images.device} but the compiled module is on {dev}; move them "
                             f"with images.to('{dev}').")
        if not self.dynamic_batch and images.shape[0] != self.example_batch:
            raise InputError(f"this model could only be compiled for batch size {self.example_batch}; got "
                             f"{images.shape[0]} images.")

    def _shape_message(self, images: torch.Tensor) -> str:
        """What is wrong with the shape of ``images``, and a fix that works for it."""
        want = self.input_shape
        head = (f"{self.model_name} was compiled for images of shape [B, {', '.join(map(str, want))}]; got "
                f"{list(images.shape)}. ")
        got = tuple(images.shape)
        if got == want:
            return head + "That is one image: add the batch axis with images.unsqueeze(0)."
        if images.dim() != len(want) + 1:
            return head + f"Pass a batch of {len(want)}-axis images."
        if len(want) == 3 and got[1] != want[0]:
            c, need = got[1], want[0]
            if c == 1 and need == 3:
                fix = "repeat the grey channel with images.expand(-1, 3, -1, -1)"
            elif c == 4 and need == 3:
                fix = "drop the alpha channel with images[:, :3]"
            else:
                fix = f"give it {need}-channel images"
            return head + f"The model takes {need}-channel images: {fix}."
        return head + ("Resize/crop the raw images with the model's preprocessing: "
                       "fxdecomp.models_registry.transform_for(model)(images) (uint8 or 0..1 float images of any "
                       "size). Only a model built for other sizes can be compiled for this one "
                       f"(fxdecomp.decompose(model, input_size={got[1:]})).")

    def _check_converted(self) -> None:
        """The model converted or moved under the compiled module (its parameters are shared,
        the module's own constants are not): say so, and how to follow."""
        ref = self._ref()
        param = next((p for p in self.graph_module.parameters() if p.is_floating_point()), None)
        if param is None or (param.dtype == ref.dtype and param.device == ref.device):
            return
        dev = "cuda" if param.device.type == "cuda" else str(param.device)
        short = {torch.float64: "dm.double()", torch.float32: "dm.float()", torch.float16: "dm.half()"}
        hint = f"dm.to('{dev}', {param.dtype})"
        if param.device == ref.device and param.dtype in short:
            hint += f" (or {short[param.dtype]})"
        elif param.dtype == ref.dtype:
            hint = f"dm.to('{dev}')" + (" (or dm.cuda())" if param.device.type == "cuda" else "")
        raise InputError(
            f"the model's parameters are {param.dtype} on {param.device}, but {self.model_name}'s compiled "
            f"module still holds its own constants as {ref.dtype} on {ref.device}: the model was converted or "
            f"moved after decompose(). Convert the compiled module the same way: call {hint}.")

    def summary(self) -> str:
        counts = Counter(c.kind for c in self.components)
        kinds = ", ".join(f"{k}: {v}" for k, v in counts.items())
        lines = [f"{self.model_name} decomposed at {self.granularity} granularity"
                 + (f" (fine only in layers {sorted(self.layers)})" if self.layers is not None else ""),
                 f"{len(self.components)} components ({kinds}); input [B, {', '.join(map(str, self.input_shape))}]"]
        if self.linearised:
            lines.append(f"linearised (gate frozen): {', '.join(self.linearised)}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def extra_repr(self) -> str:
        return f"{self.model_name}, granularity={self.granularity!r}, components={len(self.components)}"


def _move_fixed_devices(gm: fx.GraphModule, before: torch.device, after: torch.device) -> None:
    """Rewrite device arguments the trace fixed (factory calls such as ``aten.zeros(...,
    device=cpu)``) from ``before`` to ``after``."""
    def swap(v):
        if isinstance(v, torch.device) and v == before:
            return after
        if isinstance(v, (list, tuple)):
            return type(v)(swap(x) for x in v)
        return v

    changed = False
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        args, kwargs = swap(node.args), {k: swap(v) for k, v in node.kwargs.items()}
        if args != node.args or kwargs != node.kwargs:
            node.args, node.kwargs = args, kwargs
            changed = True
    if changed:
        gm.recompile()
