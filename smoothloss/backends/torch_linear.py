"""The chunked linear cross-entropy's closed-form gradient as a ``torch.autograd.Function``."""

from __future__ import annotations

from typing import Any

import torch

from smoothloss._core import Options
from smoothloss._linear import chunked_backward, chunked_forward


class LinearCrossEntropyFunction(torch.autograd.Function):
    """Forward saves hidden, weight, bias, labels and the per-row log-sum-exp (O(N));
    backward makes each chunk's logits again. No N×V tensor is saved."""

    @staticmethod
    def forward(ctx: Any, hidden: Any, weight: Any, bias: Any, labels: Any, opts: Options, chunk: int) -> Any:
        loss, lse, scale = chunked_forward(hidden, weight, bias, labels, opts, chunk)
        ctx.opts, ctx.chunk, ctx.scale = opts, chunk, scale
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        return loss

    @staticmethod
    def backward(ctx: Any, cotangent: Any) -> Any:
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:3])
        d_hidden, d_weight, d_bias = chunked_backward(
            hidden, weight, bias, labels, ctx.opts, ctx.chunk, lse, ctx.scale, cotangent, needs
        )
        return d_hidden, d_weight, d_bias, None, None, None


def linear_cross_entropy(hidden: Any, weight: Any, bias: Any, labels: Any, opts: Options, chunk: int) -> Any:
    wants_grad = torch.is_grad_enabled() and any(
        a is not None and a.requires_grad for a in (hidden, weight, bias)
    )
    if not wants_grad:  # inference: the forward alone
        return chunked_forward(hidden, weight, bias, labels, opts, chunk)[0]
    return LinearCrossEntropyFunction.apply(hidden, weight, bias, labels, opts, chunk)
