"""Run a traced graph on fake tensors: the shapes and dtypes of its values, no arithmetic.

Compiling needs every node's shape, never the numbers; on a large tower the numbers are much
of the compile time (running an EVA02-L graph on two images is seconds on a CPU). A fake tensor
carries shape, dtype and device and skips the kernels. Only for traced graphs (pure ATen ops):
a model's own Python may keep what it computed where no guard can see it (a function's
``lru_cache``, as transformers' BEiT and DINOv3 position tables do), and a fake tensor kept
there would break the model's next real call, so models themselves are run for real.

An op without a fake implementation, or one whose output shape depends on values (``nonzero``,
``.item()``), raises under fake tensors: ``fake_call`` then says so and the caller runs for
real, the same result, slower. A fake tensor left on the module (an attribute, a buffer, an
entry of a dict or list it holds) is put back as it was, and the call counts as failed.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

_MISSING = object()


def fake_call(module: torch.nn.Module, fn: Callable, *tensors: torch.Tensor) -> tuple[bool, Any]:
    """``(True, fn(*fakes))`` with ``tensors`` made fake and no autograd; ``(False, None)`` when fake
    execution fails or leaves a fake tensor on ``module`` or any of its submodules."""
    before = {m: {k: (v.copy() if isinstance(v, (dict, list)) else v) for k, v in vars(m).items()}
              for m in module.modules()}  # containers copied: a forward may fill one in place
    buffers = {m: dict(m._buffers) for m in module.modules()}
    mode = FakeTensorMode(allow_non_fake_inputs=True)  # parameters and buffers become fake as met
    try:
        with torch.no_grad(), mode:
            out = fn(*[mode.from_tensor(t) for t in tensors])
    except Exception:  # any failure under fake tensors: the caller runs it for real
        out = _MISSING
    if _restore(module, before, buffers):
        out = _MISSING
    return (False, None) if out is _MISSING else (True, out)


def _holds_fake(v) -> bool:
    if isinstance(v, FakeTensor):
        return True
    if isinstance(v, (list, tuple)):
        return any(isinstance(x, FakeTensor) for x in v)
    if isinstance(v, dict):
        return any(isinstance(x, FakeTensor) for x in v.values())
    return False


def _restore(module: torch.nn.Module, before: dict, buffers: dict) -> bool:
    """Put back every attribute or buffer the fake call left fake; True if there was one."""
    found = False
    for m in module.modules():
        old = before.get(m)
        if old is None:  # a module created during the call: the real run makes it again
            found = True
            continue
        for k, v in list(vars(m).items()):
            if k not in ("_buffers", "_parameters", "_modules") and _holds_fake(v):
                found = True
                if k in old:
                    m.__dict__[k] = old[k]
                else:
                    del m.__dict__[k]
        for k, v in list(m._buffers.items()):
            if isinstance(v, FakeTensor):
                found = True
                if k in buffers[m]:
                    m._buffers[k] = buffers[m][k]
                else:
                    del m._buffers[k]
    return found
