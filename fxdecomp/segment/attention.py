"""Recording every attention's probabilities during a forward, whatever the model's code.

Models compute attention three ways: ``F.scaled_dot_product_attention`` (fused, the
weights never exist), an explicit softmax over query x key scores, or
``F.multi_head_attention_forward`` (``nn.MultiheadAttention``, open_clip). A torch
function mode sees all three: the fused call is recomputed explicitly so the weights
exist (and can carry gradients); the others are recorded as they are made.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_SOFTMAX = {F.softmax, torch.softmax, torch.Tensor.softmax}


def _dim_of(args, kwargs):
    return kwargs.get("dim", args[1] if len(args) > 1 else None)


def _is_attention_softmax(x: torch.Tensor, dim) -> bool:
    """A softmax over the last axis of [..., queries, keys] scores with as many queries as keys."""
    return (isinstance(x, torch.Tensor) and x.dim() >= 3 and dim in (-1, x.dim() - 1)
            and x.shape[-1] == x.shape[-2])


def explicit_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """``F.scaled_dot_product_attention`` written out: (output, attention probabilities)."""
    if dropout_p:
        raise ValueError("attention with dropout: put the model in eval mode")
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        rep = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    if is_causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    probs = scores.softmax(-1)
    return probs @ v, probs


class AttentionRecorder(TorchFunctionMode):
    """``with AttentionRecorder() as rec: model(x)``; then ``rec.maps()`` gives each attention's
    probabilities [B', heads, queries, keys] in the order they were computed (B' is the batch,
    or the batch times the windows for windowed attention). With ``grads=True`` every map keeps
    its gradient: ``rec.grads()`` after a backward pass."""

    def __init__(self, grads: bool = False):
        super().__init__()
        self.keep_grads = grads
        self._raw: list[tuple[torch.Tensor, int]] = []  # (the tensor the model used, its heads)

    def __len__(self) -> int:
        return len(self._raw)

    def _keep(self, probs: torch.Tensor, heads: int) -> None:
        if self.keep_grads and probs.requires_grad:
            probs.retain_grad()
        self._raw.append((probs, heads))

    @staticmethod
    def _shaped(t: torch.Tensor, heads: int) -> torch.Tensor:
        if t.dim() == 4:
            return t
        return t.reshape(-1, heads, *t.shape[-2:])

    def maps(self) -> list[torch.Tensor]:
        return [self._shaped(t.detach(), h) for t, h in self._raw]

    def grads(self) -> list[torch.Tensor]:
        out = []
        for t, h in self._raw:
            if t.grad is None:
                raise RuntimeError("no gradient reached an attention map: record with grads=True and call "
                                   "backward() on a score that depends on the model's output")
            out.append(self._shaped(t.grad, h))
        return out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            out, probs = explicit_sdpa(*args, **kwargs)
            self._keep(probs, probs.shape[1])
            return out
        if func in _SOFTMAX and _is_attention_softmax(args[0], _dim_of(args, kwargs)):
            probs = func(*args, **kwargs)
            self._keep(probs, probs.shape[1] if probs.dim() == 4 else 1)
            return probs
        if func is F.multi_head_attention_forward:
            return self._multi_head(func, args, kwargs)
        return func(*args, **kwargs)

    def _multi_head(self, func, args, kwargs):
        out, probs, heads = explicit_mha(*args, **kwargs)
        self._keep(probs, heads)
        return out


_MHA_ARGS = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias", "bias_k",
             "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
             "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
             "k_proj_weight", "v_proj_weight", "static_k", "static_v", "average_attn_weights", "is_causal")


def explicit_mha(*args, **kwargs):
    """``F.multi_head_attention_forward`` written out for the usual case (no extra key/value biases,
    no padding masks): ((output, weights or None), probabilities [B, heads, L, S], heads)."""
    a = dict(zip(_MHA_ARGS, args))
    a.update(kwargs)
    if any(a.get(k) is not None for k in ("bias_k", "bias_v", "static_k", "static_v", "key_padding_mask")) \
            or a.get("add_zero_attn"):
        raise NotImplementedError("attention maps of nn.MultiheadAttention with bias_k/bias_v, static keys, "
                                  "add_zero_attn or a key padding mask are not supported")
    if a.get("training", True) and a.get("dropout_p", 0.0):
        raise ValueError("attention with dropout: put the model in eval mode")
    query, key, value, heads = a["query"], a["key"], a["value"], a["num_heads"]
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
    if a.get("use_separate_proj_weight"):
        wq, wk, wv = a["q_proj_weight"], a["k_proj_weight"], a["v_proj_weight"]
    else:
        wq, wk, wv = a["in_proj_weight"].chunk(3)
    bq = bk = bv = None
    if a.get("in_proj_bias") is not None:
        bq, bk, bv = a["in_proj_bias"].chunk(3)
    n_q, batch, width = query.shape

    def split(x, w, b):  # (L, N, E) -> (N, heads, L, head_dim)
        y = F.linear(x, w, b)
        return y.reshape(y.shape[0], batch, heads, -1).permute(1, 2, 0, 3)

    q, k, v = split(query, wq, bq), split(key, wk, bk), split(value, wv, bv)
    mask = a.get("attn_mask")
    if mask is not None:
        if mask.dtype == torch.bool:
            mask = ~mask  # True marks a masked pair here, an allowed one in scaled_dot_product_attention
        mask = mask.reshape(batch, heads, *mask.shape[-2:]) if mask.dim() == 3 else mask
    out, probs = explicit_sdpa(q, k, v, attn_mask=mask, is_causal=bool(a.get("is_causal")) and mask is None)
    out = out.permute(2, 0, 1, 3).reshape(n_q, batch, width)
    out = F.linear(out, a["out_proj_weight"], a.get("out_proj_bias"))
    weights = None
    if a.get("need_weights", True):
        weights = probs.mean(1) if a.get("average_attn_weights", True) else probs
        weights = weights.squeeze(0) if unbatched else weights
    return (out.squeeze(1) if unbatched else out, weights), probs, heads
