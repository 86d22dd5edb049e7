"""Small tensor functions the generated decomposing code calls at run time."""
from __future__ import annotations

import math

import torch


def attention_weights(q, k, attn_mask=None, scale=None, is_causal=False, row=None):
    """The softmax weights of ``scaled_dot_product_attention(q, k, v, ...)``.

    With ``row`` set, only that query position is computed and the query axis
    is dropped: a class-token readout never needs the full attention matrix.
    """
    L = q.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    qr = q if row is None else q.narrow(-2, row, 1)
    scores = torch.matmul(qr, k.transpose(-2, -1)) * scale
    if is_causal:
        causal = torch.ones(L, k.shape[-2], dtype=torch.bool, device=q.device).tril()
        if row is not None:
            causal = causal.narrow(0, row, 1)
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        m = attn_mask
        if row is not None and m.dim() >= 2 and m.shape[-2] == L:
            m = m.narrow(-2, row, 1)
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m
    w = torch.softmax(scores, dim=-1)
    return w if row is None else w.squeeze(-2)


def gate(y, x):
    """``y / x`` where ``x`` is not tiny, else 0: with it, ``y == x * gate(y, x)`` elementwise
    (a linearised nonlinearity ``y = f(x)``, its gate frozen at the actual input). The threshold
    keeps the quotient finite; elements below it go to :func:`gate_offset`."""
    tiny = torch.finfo(x.dtype).tiny ** 0.5
    ok = x.abs() > tiny
    if not (torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)):
        # the quotient's inf/nan where x is tiny are never selected: one pass fewer each way
        return torch.where(ok, y / x, 0.0)
    # for autograd both branches must be finite: the unselected one's gradient is 0·(d/dx), not nan
    return torch.where(ok, y / torch.where(ok, x, torch.ones_like(x)), torch.zeros_like(x))


def gate_offset(y, x, g):
    """What ``x * g`` (``g = gate(y, x)``) leaves of ``y``: ``f(x)`` where ``x`` is (nearly) zero."""
    return y - x * g


def bn_scale(weight, running_var, eps):
    s = torch.rsqrt(running_var + eps)
    return s if weight is None else s * weight


def bn_shift(weight, bias, running_mean, running_var, eps):
    shift = -running_mean * bn_scale(weight, running_var, eps)
    return shift if bias is None else shift + bias


def layer_norm_rstd(rstd, x, ndim, eps):
    """LayerNorm's reciprocal standard deviation, bit for bit as ``native_layer_norm`` returned
    it, but differentiable in ``x`` as the model's own norm is (that output of
    ``native_layer_norm`` carries no gradient): with autograd recording, the gradient of
    ``1/sqrt(var(x) + eps)`` is added, its value (exactly 0) adds nothing."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return rstd
    r = torch.rsqrt(x.var(tuple(range(-ndim, 0)), unbiased=False, keepdim=True) + eps)
    return rstd + (r - r.detach())


def rms_inverse(x, ndim, eps):
    dims = tuple(range(-ndim, 0))
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    return torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)


def group_rstd(x, groups, eps):
    """GroupNorm's reciprocal standard deviation per (sample, channel), shaped [B, C, 1, ...]:
    each channel gets the statistic of its group, over the group's channels and all positions."""
    b, c = x.shape[:2]
    var = x.reshape(b, groups, -1).var(dim=-1, unbiased=False, keepdim=True)
    r = torch.rsqrt(var + eps).expand(b, groups, c // groups).reshape(b, c)
    return r.reshape(b, c, *([1] * (x.dim() - 2)))


def tap_gather(x, dim, n_out, k, stride, pad, dilation):
    """``x`` with axis ``dim`` (length n_in) replaced by (n_out, k): element [o, t] is
    ``x[o·stride − pad + t·dilation]``, zero outside — a convolution's taps as an unfold."""
    dim = dim % x.dim()
    n_in = x.shape[dim]
    idx = (torch.arange(n_out, device=x.device)[:, None] * stride
           + torch.arange(k, device=x.device)[None, :] * dilation)
    hi = max(int(idx.max()) + 1 - pad - n_in, 0)
    if pad or hi:
        shape = list(x.shape)
        parts = []
        if pad:
            shape[dim] = pad
            parts.append(x.new_zeros(shape))
        parts.append(x)
        if hi:
            shape[dim] = hi
            parts.append(x.new_zeros(shape))
        x = torch.cat(parts, dim)
    return x.index_select(dim, idx.reshape(-1)).unflatten(dim, (n_out, k))


def window_sum(x, dim, n_out, k, scale):
    """``x`` times a :class:`~fxdecomp.core.terms.Window` along ``dim``: each run of ``k``
    elements summed (a trailing remainder dropped, as a pool's floor mode does), times ``scale``."""
    dim = dim % x.dim()
    if x.shape[dim] != n_out * k:
        x = x.narrow(dim, 0, n_out * k)
    taps = x.unflatten(dim, (n_out, k))
    # k strided slices added: a reduction over a short axis is tens of times slower on the CPU
    y = taps.select(dim + 1, 0) + taps.select(dim + 1, 1) if k > 1 else taps.select(dim + 1, 0).clone()
    for t in range(2, k):
        y += taps.select(dim + 1, t)
    return y if scale == 1.0 else y.mul_(scale)


def conv_weight(w, perm, groups, out_per_group, in_per_group, n_taps):
    """A term's kernel laid out for ``conv_apply``: ``perm`` orders its one dim per atom as
    (groups, outputs, summed inputs, taps), or (outputs, groups, ...) for a split depthwise
    convolution, reshaped to [groups·outputs, inputs, *taps]."""
    w = w.permute(perm)
    return w.reshape(groups * out_per_group, in_per_group, *w.shape[w.dim() - n_taps:])


_CONV = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d, 3: torch.nn.functional.conv3d}


def conv_apply(x, w, perm, n_lead, groups, geometry, kept, split=1):
    """A term through a convolution, at the model's own cost per term: ``perm`` orders ``x``'s
    dims as (lead, groups, summed inputs, input positions); the lead dims (the batch and every
    atom the kernel does not hold) are one batch, the result [*lead, *kept, *outputs] (``kept``:
    the sizes of the group and output atoms). ``geometry``: per spatial axis (n_out, k, n_in,
    stride, pad, dilation), the taps' own; padding past the input's end is added where the
    taps read further than a symmetric padding reaches, and outputs past ``n_out`` dropped.
    ``split``: a depthwise convolution with that many outputs per channel runs as that many
    one-output ones (``w`` ordered outputs first), which oneDNN computes several times faster."""
    x = x.permute(perm)
    nsp = len(geometry)
    lead = x.shape[:n_lead]
    x = _as_conv_input(x, n_lead, w.shape[1] * groups, nsp)
    lo = [g[4] for g in geometry]
    hi = [max(0, (n_out - 1) * s + d * (k - 1) + 1 - p - n_in) for n_out, k, n_in, s, p, d in geometry]
    padding = lo
    if any(h > p for h, p in zip(hi, lo)):
        pads = []
        for a, b in zip(reversed(lo), reversed(hi)):
            pads += [a, b]
        x = torch.nn.functional.pad(x, pads)
        padding = [0] * nsp
    conv = _CONV[nsp]
    stride, dilation = [g[3] for g in geometry], [g[5] for g in geometry]
    if split > 1:
        y = _interleave([conv(x, part, None, stride, padding, dilation, groups) for part in w.chunk(split)])
    else:
        y = conv(x, w, None, stride, padding, dilation, groups)
    for i, g in enumerate(geometry):
        if y.shape[2 + i] != g[0]:
            y = y.narrow(2 + i, 0, g[0])
    return y.reshape(*lead, *kept, *y.shape[2:])


def _as_conv_input(x, n_lead, channels, nsp):
    """``x`` (lead, channel dims, positions) as [N, channels, *positions] for a convolution: a
    view where its layout allows, else a copy laid out channels-last (the channels innermost).
    A copy is made either way, and oneDNN computes a depthwise convolution on a channels-last
    input several times faster (a stack of heads through MobileCLIP's last 3x3: 17 ms against
    75 ms), while a dense one takes about as long either way."""
    d = x.dim()
    spatial = x.shape[d - nsp:]
    try:
        return x.view(-1, channels, *spatial)
    except RuntimeError:
        dims = tuple(range(n_lead, d - nsp))
        last = x.movedim(dims, tuple(range(d - len(dims), d)))
        return last.reshape(-1, *spatial, channels).movedim(-1, 1)


def _interleave(parts):
    """``split`` one-output convolutions' results as one [N, C·split, *positions], output
    ``c·split + s`` from part ``s``, in the parts' own layout (channels-first or -last)."""
    if parts[0].is_contiguous():
        return torch.stack(parts, 2).flatten(1, 2)
    return torch.stack([p.movedim(1, -1) for p in parts], -1).flatten(-2).movedim(-1, 1)


def _slot(out, start, count, view_shape):
    """The slice of the component-major contributions a group owns, one dim per atom."""
    shape = [out.shape[1] if d == -1 else d for d in view_shape]
    return out.narrow(0, start, count).view(shape)


def write_(out, start, count, view_shape, present, value, coef=1.0, accumulate=False):
    """Copy (or add) a term into its group's slot of the component-major contributions.

    ``value`` has one dim per wanted atom it carries (``present``); it is
    broadcast over the others.
    """
    dst = _slot(out, start, count, view_shape)
    for i, p in enumerate(present):
        if not p:
            value = value.unsqueeze(i)
    if coef != 1.0:
        value = value * coef
    if accumulate:
        dst.add_(value)
    else:
        dst.copy_(value)
    return out


def contract_into(out, start, count, view_shape, present, equation, x, y, coef=1.0, accumulate=False):
    """``einsum(equation, x, y)`` written straight into the group's slot.

    When the slot's layout is that of a batched matmul of x and y, ``torch.bmm``
    writes into it directly (no temporary the size of the output); otherwise the
    einsum result is copied in.
    """
    dst = _slot(out, start, count, view_shape)
    if coef != 1.0:
        if x.numel() <= y.numel():
            x = x * coef
        else:
            y = y * coef
    grad = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad or out.requires_grad)
    if not accumulate and not grad and all(present) and dst.is_contiguous():
        ins, res = equation.split("->")
        sx, sy = ins.split(",")
        for a, b, sa, sb in ((x, y, sx, sy), (y, x, sy, sx)):
            plan = _bmm_plan(sa, sb, res, a, b)
            if plan is not None:
                pa, pb, (nb, m, k, n) = plan
                lhs = a.permute(pa).reshape(nb, m, k)
                rhs = b.permute(pb).reshape(nb, k, n)
                torch.bmm(lhs, rhs, out=dst.view(nb, m, n))
                return out
    value = torch.einsum(equation, x, y)
    for i, p in enumerate(present):
        if not p:
            value = value.unsqueeze(i)
    if accumulate:
        dst.add_(value)
    else:
        dst.copy_(value)
    return out


def _bmm_plan(sa: str, sb: str, res: str, a, b):
    """Permutations making ``einsum(f"{sa},{sb}->{res}", a, b)`` one bmm with output order ``res``."""
    if len(set(sa)) != len(sa) or len(set(sb)) != len(sb):
        return None
    batch = [c for c in res if c in sa and c in sb]
    a_only = [c for c in res if c in sa and c not in sb]
    b_only = [c for c in res if c in sb and c not in sa]
    contracted = [c for c in sa if c in sb and c not in res]
    if any(c not in res and c not in sb for c in sa) or any(c not in res and c not in sa for c in sb):
        return None  # an index summed within one operand: leave it to einsum
    if list(res) != batch + a_only + b_only:
        return None
    size = {c: a.shape[i] for i, c in enumerate(sa)}
    size.update({c: b.shape[i] for i, c in enumerate(sb)})
    if any(a.shape[sa.index(c)] != b.shape[sb.index(c)] for c in batch + contracted):
        return None  # broadcasting: leave it to einsum
    prod = lambda cs: math.prod(size[c] for c in cs)  # noqa: E731
    pa = [sa.index(c) for c in batch + a_only + contracted]
    pb = [sb.index(c) for c in batch + contracted + b_only]
    return pa, pb, (prod(batch), prod(a_only), prod(contracted), prod(b_only))


#: functions a pointwise program may call, by sympy name: the ones the rules' symbolic forms
#: hold, each registered by its form (``rules.base.SympyForm``), so that every expression the
#: symbolic pass may accept can be evaluated, and nothing else is listed
POINTWISE_FUNCTIONS: dict = {}


def register_pointwise(name: str, fn) -> None:
    """Let pointwise programs call ``fn`` as the sympy function ``name``."""
    have = POINTWISE_FUNCTIONS.get(name)
    if have is not None and have is not fn:
        raise ValueError(f"the sympy function {name!r} is already evaluated by {have!r}, not {fn!r}: "
                         "give the new one another name")
    POINTWISE_FUNCTIONS[name] = fn


def pointwise(program, like, *values):
    """Evaluate a pointwise expression (a nested tuple, see ``passes/symbolic.py``) on actual
    values, broadcast to ``like``'s shape and dtype: a slope or offset read from the
    symbolic form of a run of pointwise ops."""
    def ev(p):
        op = p[0]
        if op == "arg":
            v = values[p[1]]
            return v.to(like.dtype) if not v.is_floating_point() else v
        if op == "num":
            return p[1]
        args = [ev(a) for a in p[1 + (op == "fn"):]]
        if op == "add":
            out = args[0]
            for a in args[1:]:
                out = out + a
            return out
        if op == "mul":
            out = args[0]
            for a in args[1:]:
                out = out * a
            return out
        if op == "pow":
            base, exp = args
            if not isinstance(base, torch.Tensor) and not isinstance(exp, torch.Tensor):
                return float(base) ** float(exp)
            return torch.pow(base, exp)
        return POINTWISE_FUNCTIONS[p[1]](*args)

    out = ev(program)
    if not isinstance(out, torch.Tensor):
        out = torch.tensor(out, dtype=like.dtype, device=like.device)
    return out.to(like.dtype).expand_as(like)


def partial_sum(like, shape, layout, *values):
    """A component's terms at a stream node, summed: ``like`` (the node's value) viewed with one
    axis per atom gives the shape; ``layout`` holds, per value, which of those axes it has
    (it is broadcast over the others) and its coefficient."""
    full = like.reshape(shape).shape
    out = None
    for (mask, coef), v in zip(layout, values):
        for i, present in enumerate(mask):
            if not present:
                v = v.unsqueeze(i)
        v = v * coef if coef != 1.0 else v
        out = v if out is None else out + v
    if out is None:
        return like.new_zeros(full)
    return out.expand(full) if out.shape != full else out


def less(value, partial):
    """A node's value less a sum of terms at that node, with one axis per atom (the value is
    viewed so; the sum, often broadcast, is not copied to the value's shape)."""
    return value.reshape(partial.shape) - partial


def as_dtype(x, like):
    """``x`` in the dtype of ``like`` (the compiled module's dtype buffer)."""
    return x if x.dtype == like.dtype else x.to(like.dtype)


def atomize(x, shape):
    """View a factor with one axis per atom (``shape`` uses -1 for the batch)."""
    return x.reshape(shape)


def new_contributions(images, count, out_shape, like):
    """Uninitialised component-major [count, B, *out_shape] tensor in ``like``'s dtype; every
    slot is written.

    Component-major storage makes each component group's slot contiguous, so
    the last contraction of a term can write into it directly.
    """
    return images.new_empty((count, images.shape[0]) + tuple(out_shape), dtype=like.dtype)


def zero_(out, start, count):
    """Zero a slot of the component-major contributions (a component that is identically zero)."""
    out.narrow(0, start, count).zero_()
    return out



def new_zeroed_contributions(images, count, out_shape, like):
    """Zeroed component-major [count, B, *out_shape] tensor: groups summed at compile time add
    their pieces into slots they share."""
    return images.new_zeros((count, images.shape[0]) + tuple(out_shape), dtype=like.dtype)


def add_at_(out, index, pieces):
    """Add a group's pieces [n, B, ...] to the slots ``index`` [n] of the contributions (slots
    that are not consecutive, or that several pieces share)."""
    return out.index_add_(0, index, pieces)


def read_out(output, matrix):
    """The model's output read through the readout: ``output.flatten(1) @ R`` (R: [1, D, K])."""
    return output.reshape(output.shape[0], -1).to(matrix.dtype) @ matrix[0]


def readout_rows(matrix, start, count, shape):
    """Maps ``start .. start + count`` of the readout [M, D, K], viewed as ``shape`` (one axis per
    axis of the output, the count dropped when it is one)."""
    return matrix.narrow(0, start, count).reshape(shape)


def total_of(contributions):
    """[B, ...]: the sum over components of the component-major contributions (the output of a
    per-component readout, which no one map of the model's output gives)."""
    return contributions.sum(0)
