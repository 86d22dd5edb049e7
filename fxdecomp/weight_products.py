"""Products of weights alone, computed once and kept until a weight changes.

A decomposition multiplies weights by weights: an output projection by a norm's centring matrix,
a head's value map by the readout. Those products do not depend on the images, so the decomposing
forward reads them from here instead of computing them again for every batch (the ``hoist`` pass
puts them here). They are computed in float64 and rounded once to the dtype they would have had:
fewer kernels per batch, and products that no longer depend on the summation order a float32
BLAS kernel picks.
"""
from __future__ import annotations

import torch
import torch.fx as fx


class WeightProducts(torch.nn.Module):
    """``forward(*weights) -> tuple of products``, cached on the weights' identity, version and content.

    The cache is used only without autograd (under ``torch.no_grad()`` or
    ``torch.inference_mode()``); with autograd on, the products are computed on every call in
    the module's own dtype, so gradients reach the weights as before. An in-place change to a
    weight (its version counter), a new tensor in its place, or ``dm.to(...)`` recomputes them, and
    so does a change that moves no version counter (``w.data.mul_(2)``: ``.data`` is a view with a
    counter of its own): every call also takes a fingerprint of each weight's values, ``uᵀ W v``
    for fixed random ``u`` and ``v``, one read of the weights (about 0.4% of a DeiT-B forward at
    batch 8 on a CPU; one wait for the device on a GPU).
    """

    def __init__(self, graph: fx.Graph):
        super().__init__()
        self.products = fx.GraphModule(torch.nn.Module(), graph, class_name="WeightProductsGraph")
        self._key: tuple | None = None
        self._values: tuple | None = None
        self._prints: torch.Tensor | None = None
        self._probes: dict = {}

    def forward(self, *weights: torch.Tensor) -> tuple:
        if torch.is_grad_enabled():
            return tuple(self.products(*weights))
        if _capturing(weights):  # values recorded in a CUDA graph exist only on replay: keep nothing
            return self._compute(weights)
        key = tuple(_identity(w) for w in weights)
        prints = self._fingerprints(weights)
        if key != self._key or self._prints is None or not torch.equal(prints, self._prints):
            self._values = self._compute(weights)
            self._key, self._prints = key, prints
        return self._values

    def _compute(self, weights) -> tuple:
        native = tuple(self.products(*weights))  # the dtypes the products have in the module
        floats = [w for w in weights if w.is_floating_point()]
        if not floats or all(w.dtype == torch.float64 for w in floats) or floats[0].device.type == "mps":
            return native  # already float64, or a device without it
        wide = tuple(Widened(self.products).run(*weights))
        return tuple(v.to(n.dtype) if v.is_floating_point() else n for v, n in zip(wide, native))

    def _fingerprints(self, weights) -> torch.Tensor:
        """[n] float64: ``uᵀ W v`` of each weight (viewed as a matrix [first axis, the rest])."""
        mats = [w.reshape(w.shape[0] if w.dim() else 1, -1) for w in weights if isinstance(w, torch.Tensor)]
        size = (max((m.shape[0] for m in mats), default=1), max((m.shape[1] for m in mats), default=1))
        out = []
        for m in mats:
            if not m.is_floating_point():
                m = m.to(torch.float64)
            u, v = self._probe(m.dtype, m.device, size)
            out.append(torch.dot(torch.mv(m, v[:m.shape[1]]), u[:m.shape[0]]).to(torch.float64))
        return torch.stack(out) if out else torch.zeros(0, dtype=torch.float64)

    def _probe(self, dtype, device, size) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed random vectors (u, v) of lengths ``size``, per dtype and device."""
        have = self._probes.get((dtype, device))
        if have is None or (len(have[0]), len(have[1])) != size:
            g = torch.Generator().manual_seed(0)
            u = torch.randn(size[0], generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
            v = torch.randn(size[1], generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
            have = self._probes[(dtype, device)] = (u, v)
        return have

    def _apply(self, fn, recurse=True):
        # products on the old device or dtype: recompute on the next call
        self._key = self._values = self._prints = None
        self._probes = {}
        return super()._apply(fn, recurse)


def _identity(w: torch.Tensor) -> tuple:
    try:
        version = w._version
    except RuntimeError:  # an inference tensor: no version counter, not changed in place outside inference mode
        version = None
    return w.data_ptr(), version, w.dtype, w.device, tuple(w.shape), tuple(w.stride())


def _capturing(weights) -> bool:
    return any(w.is_cuda for w in weights) and torch.cuda.is_current_stream_capturing()


class Widened(fx.Interpreter):
    """Runs the products with every floating-point operand in float64 (a weight's copy is made
    where it is used and freed after its last use, as the interpreter frees values)."""

    def call_function(self, target, args, kwargs):
        return super().call_function(target, _wide(args), _wide(kwargs))

    def call_method(self, target, args, kwargs):
        return super().call_method(target, _wide(args), _wide(kwargs))


def _wide(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64:
        return value.double()
    if isinstance(value, (list, tuple)):
        return type(value)(_wide(v) for v in value)
    if isinstance(value, dict):
        return {k: _wide(v) for k, v in value.items()}
    return value
